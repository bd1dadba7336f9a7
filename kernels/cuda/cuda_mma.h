/* Internal to kernels/cuda/: the tensor-core pieces of the head-64 attention kernels (forward
 * and gradient). A warp multiplies 16 rows by 64 columns with mma.sync m16n8k16 (16-bit
 * operands, float32 accumulators): the rows' A fragments live in registers, the other operand
 * is a 64 x 64 tile of T in shared memory. A C fragment (float c[8][4]: n-tile n of 8 columns,
 * element e at row g + 8 (e >> 1), column 8 n + 2 t4 + (e & 1), with g = lane / 4 and
 * t4 = lane % 4) is laid out as the A fragment of the next product, so products chain without
 * leaving registers. */
#ifndef FOCUS_KERNELS_CUDA_CUDA_MMA_H
#define FOCUS_KERNELS_CUDA_CUDA_MMA_H

#include "kernels/cuda/cuda_common.h"

#include <string.h>

#include <type_traits>

#define MMA_D 64           /* columns of a tile: the head size */
#define MMA_LD (MMA_D + 8) /* shared row stride in elements: rows 4 banks apart, no conflicts */

/* c += a . b for a 16x16 A fragment and a 16x8 B fragment (PTX ISA, mma.m16n8k16). */
template <typename T>
static __device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0,
                                                uint32_t b1)
{
    if constexpr (std::is_same<T, __half>::value)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two T values in one register, the first in the low half (the lower column of a fragment). */
template <typename T> static __device__ __forceinline__ uint32_t pack_raw(T lo, T hi)
{
    uint16_t l, h;
    memcpy(&l, &lo, 2);
    memcpy(&h, &hi, 2);
    return (uint32_t)l | (uint32_t)h << 16;
}

template <typename T> static __device__ __forceinline__ uint32_t pack2(float lo, float hi)
{
    return pack_raw(from_f<T>(lo), from_f<T>(hi));
}

template <typename T> static __device__ __forceinline__ float half_of(uint32_t r, int hi)
{
    uint16_t bits = (uint16_t)(hi ? r >> 16 : r);
    T x;
    memcpy(&x, &bits, 2);
    return to_f(x);
}

/* The A fragments of rows row0 + [0, 16) of x (rows HD apart, 64 columns), 4 k-steps of 16
 * columns: register r holds row g + 8 (r & 1), columns 16 kk + 8 (r >> 1) + 2 t4 and + 1.
 * Rows past S are zeros. */
template <typename T>
static __device__ __forceinline__ void mma_load_a(uint32_t (&fa)[4][4], const T *x, int64_t row0,
                                                  int64_t S, int64_t HD)
{
    const int g = threadIdx.x % 32 / 4, t4 = threadIdx.x % 4;
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int64_t i = row0 + g + 8 * (r & 1);
            int d = 16 * kk + 8 * (r >> 1) + 2 * t4;
            fa[kk][r] = i < S ? *(const uint32_t *)(x + i * HD + d) : 0u;
        }
}

/* Rows [r0, r0 + 64) of x (rows HD apart, 64 columns, 16-byte aligned) into the shared tile t
 * by 16-byte copies of the whole block; rows past S are zeros. */
template <typename T>
static __device__ void mma_load_tile(T *t, const T *x, int64_t r0, int64_t S, int64_t HD)
{
    for (int c = threadIdx.x; c < MMA_D * MMA_D / 8; c += blockDim.x) {
        int row = c / (MMA_D / 8), col = c % (MMA_D / 8) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r0 + row < S) v = *(const uint4 *)(x + (r0 + row) * HD + col);
        *(uint4 *)(t + row * MMA_LD + col) = v;
    }
}

/* c = a . B^T: the warp's 16 rows times the 64 rows of the shared tile B (8 per n-tile). */
template <typename T>
static __device__ __forceinline__ void mma_abt(float (&c)[8][4], const uint32_t (&a)[4][4],
                                               const T *B)
{
    const int g = threadIdx.x % 32 / 4, t4 = threadIdx.x % 4;
#pragma unroll
    for (int n = 0; n < 8; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++)
            c[n][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            const T *br = B + (n * 8 + g) * MMA_LD + 16 * kk + 2 * t4;
            mma16816<T>(c[n], a[kk], *(const uint32_t *)br, *(const uint32_t *)(br + 8));
        }
    }
}

/* acc += p . B: a C fragment p (rounded to T: n-tiles 2 kc and 2 kc + 1 are the A fragment of
 * k-step kc) times the shared tile B, whose rows are the inner index. */
template <typename T>
static __device__ __forceinline__ void mma_ab(float (&acc)[8][4], const float (&p)[8][4],
                                              const T *B)
{
    const int g = threadIdx.x % 32 / 4, t4 = threadIdx.x % 4;
#pragma unroll
    for (int kc = 0; kc < 4; kc++) {
        uint32_t pa[4] = {pack2<T>(p[2 * kc][0], p[2 * kc][1]),
                          pack2<T>(p[2 * kc][2], p[2 * kc][3]),
                          pack2<T>(p[2 * kc + 1][0], p[2 * kc + 1][1]),
                          pack2<T>(p[2 * kc + 1][2], p[2 * kc + 1][3])};
#pragma unroll
        for (int n = 0; n < 8; n++) {
            const T *br = B + (16 * kc + 2 * t4) * MMA_LD + n * 8 + g;
            mma16816<T>(acc[n], pa, pack_raw(br[0], br[MMA_LD]),
                        pack_raw(br[8 * MMA_LD], br[9 * MMA_LD]));
        }
    }
}

#endif
