/* CPU backend: the NCHW image ops of the VAE besides convolution (cpu_conv.c): nearest 2x
 * upsampling and the tokens <-> channels transpose. */
#include "kernels/cpu/cpu_ops.h"

#include <string.h>

int cpu_upsample_nearest2x(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_upsample_nearest2x(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x)));
    int64_t H = x->shape[2], W = x->shape[3], planes = x->shape[0] * x->shape[1];
    for (int64_t p = 0; p < planes; p++) {
        const float *xp = (const float *)x->data + p * H * W;
        float *yp = (float *)y->data + p * 4 * H * W;
        for (int64_t i = 0; i < H; i++) {
            float *r0 = yp + (2 * i) * 2 * W;
            for (int64_t j = 0; j < W; j++)
                r0[2 * j] = r0[2 * j + 1] = xp[i * W + j];
            memcpy(r0 + 2 * W, r0, (size_t)(2 * W) * sizeof(float));
        }
    }
    return 0;
}

/* Tiles keep both the reads and the writes within a few cache lines per row. */
#define TRANSPOSE_TILE 32

int cpu_transpose(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x)
{
    if (y->dtype != KN_F32) CPU_HALF(cpu_transpose(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x)));
    int64_t M = x->shape[x->ndim - 2], N = x->shape[x->ndim - 1];
    int64_t B = M > 0 && N > 0 ? kn_numel(x) / (M * N) : 0;
    for (int64_t n = 0; n < B; n++) {
        const float *xs = (const float *)x->data + n * M * N;
        float *ys = (float *)y->data + n * M * N;
        for (int64_t i0 = 0; i0 < M; i0 += TRANSPOSE_TILE)
            for (int64_t j0 = 0; j0 < N; j0 += TRANSPOSE_TILE) {
                int64_t i1 = i0 + TRANSPOSE_TILE < M ? i0 + TRANSPOSE_TILE : M;
                int64_t j1 = j0 + TRANSPOSE_TILE < N ? j0 + TRANSPOSE_TILE : N;
                for (int64_t i = i0; i < i1; i++)
                    for (int64_t j = j0; j < j1; j++)
                        ys[j * M + i] = xs[i * N + j];
            }
    }
    return 0;
}
