/* Scalar conversions between float32 and the storage dtypes (F16, BF16, F8_E4M3, F8_E5M2),
 * with round-to-nearest-even in the narrowing direction, as PyTorch converts. Host code only:
 * the CPU backend and tests use them; the CUDA backend has its own device twins. */
#ifndef FOCUS_KERNELS_KN_CONVERT_H
#define FOCUS_KERNELS_KN_CONVERT_H

#include "kernels/kn.h"

#include <stdint.h>
#include <string.h>

static inline float kn_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t kn_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float kn_f16_to_f32(uint16_t h);
uint16_t kn_f32_to_f16(float f);
float kn_f8e4m3_to_f32(uint8_t v);
float kn_f8e5m2_to_f32(uint8_t v);

/* Converts n elements of float dtype `dt` at src into float32 at dst. */
void kn_convert_to_f32(float *dst, const void *src, kn_dtype dt, size_t n);
/* Converts n float32 values into float dtype `dt` (F32, F16 or BF16). */
void kn_convert_from_f32(void *dst, const float *src, kn_dtype dt, size_t n);

#endif
