/* CPU backend: the NCHW image ops of the VAE and the patch embedding: convolution by im2col and
 * matrix products, nearest 2x upsampling and the tokens <-> channels transpose. The im2col matrix is built
 * a few output rows at a time, so a 1024x1024 image with 128 channels needs tens of megabytes
 * of scratch, not the gigabytes of a whole-image im2col. */
#include "kernels/cpu/cpu_matmul.h"

#include <string.h>

/* im2col block budget in floats (32 MiB). */
#define CONV_COL_FLOATS ((int64_t)8 << 20)

struct conv_geom {
    int64_t C, H, W, kh, kw, Ho, Wo, stride, pad;
};

/* Columns of output rows [oy0, oy0 + nr) of one image: col[(c, ky, kx)][(oy, ox)]. */
static void im2col_rows(float *col, const float *x, const struct conv_geom *g, int64_t oy0,
                        int64_t nr)
{
    int64_t np = nr * g->Wo;
    for (int64_t c = 0; c < g->C; c++) {
        for (int64_t ky = 0; ky < g->kh; ky++) {
            for (int64_t kx = 0; kx < g->kw; kx++) {
                float *dst = col + ((c * g->kh + ky) * g->kw + kx) * np;
                /* Output columns whose input column kx + ox * stride - pad lies in the image. */
                int64_t off = kx - g->pad;
                int64_t lo = off >= 0 ? 0 : (-off + g->stride - 1) / g->stride;
                int64_t hi = g->W - 1 - off < 0 ? -1 : (g->W - 1 - off) / g->stride;
                if (hi > g->Wo - 1) hi = g->Wo - 1;
                for (int64_t r = 0; r < nr; r++) {
                    float *d = dst + r * g->Wo;
                    int64_t iy = (oy0 + r) * g->stride - g->pad + ky;
                    if (iy < 0 || iy >= g->H || lo > hi) {
                        memset(d, 0, (size_t)g->Wo * sizeof(float));
                        continue;
                    }
                    const float *src = x + (c * g->H + iy) * g->W;
                    for (int64_t ox = 0; ox < lo; ox++)
                        d[ox] = 0.0f;
                    if (g->stride == 1)
                        memcpy(d + lo, src + lo + off, (size_t)(hi - lo + 1) * sizeof(float));
                    else
                        for (int64_t ox = lo; ox <= hi; ox++)
                            d[ox] = src[ox * g->stride + off];
                    for (int64_t ox = hi + 1; ox < g->Wo; ox++)
                        d[ox] = 0.0f;
                }
            }
        }
    }
}

int cpu_conv2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
               const kn_tensor *b, int stride, int pad)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_conv2d(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x), w, b, stride, pad));
    struct conv_geom g = {.C = x->shape[1],
                          .H = x->shape[2],
                          .W = x->shape[3],
                          .kh = w->shape[2],
                          .kw = w->shape[3],
                          .Ho = y->shape[2],
                          .Wo = y->shape[3],
                          .stride = stride,
                          .pad = pad};
    int64_t B = x->shape[0], O = w->shape[0], CK = g.C * g.kh * g.kw, P = g.Ho * g.Wo;
    if (B == 0 || O == 0 || P == 0) return 0;
    /* Conv weights are at most a few million elements, so the whole of one is widened. */
    const float *wd = cpu_f32_span(ctx, CPU_SLOT_WEIGHT, w, 0, O * CK);
    int rc, direct = g.kh == 1 && g.kw == 1 && stride == 1 && pad == 0;
    int64_t rows = CONV_COL_FLOATS / (CK * g.Wo > 0 ? CK * g.Wo : 1);
    if (rows < 1) rows = 1;
    if (rows > g.Ho) rows = g.Ho;
    float *col =
        direct ? NULL : cpu_scratch(ctx, CPU_SLOT_WORK, (size_t)(rows * g.Wo * CK) * sizeof(float));
    if (!wd || (!direct && !col)) return -1;
    for (int64_t n = 0; n < B; n++) {
        const float *xn = (const float *)x->data + n * g.C * g.H * g.W;
        float *yn = (float *)y->data + n * O * P;
        if (direct) {
            rc = cpu_mm_run(&(cpu_mm){.M = O,
                                      .N = P,
                                      .K = g.C,
                                      .a = wd,
                                      .lda = g.C,
                                      .b = xn,
                                      .ldb = P,
                                      .b_form = MM_PLAIN_KN,
                                      .c = yn,
                                      .ldc = P},
                            1);
            if (rc < 0) return rc;
            continue;
        }
        for (int64_t oy0 = 0; oy0 < g.Ho; oy0 += rows) {
            int64_t nr = g.Ho - oy0 < rows ? g.Ho - oy0 : rows;
            int64_t np = nr * g.Wo;
            im2col_rows(col, xn, &g, oy0, nr);
            rc = cpu_mm_run(&(cpu_mm){.M = O,
                                      .N = np,
                                      .K = CK,
                                      .a = wd,
                                      .lda = CK,
                                      .b = col,
                                      .ldb = np,
                                      .b_form = MM_PLAIN_KN,
                                      .c = yn + oy0 * g.Wo,
                                      .ldc = P},
                            1);
            if (rc < 0) return rc;
        }
    }
    if (b) {
        const float *bd = cpu_f32_span(ctx, CPU_SLOT_PARAM, b, 0, O);
        if (!bd) return -1;
        for (int64_t n = 0; n < B; n++)
            for (int64_t o = 0; o < O; o++) {
                float *yc = (float *)y->data + (n * O + o) * P;
                for (int64_t i = 0; i < P; i++)
                    yc[i] += bd[o];
            }
    }
    return 0;
}

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
