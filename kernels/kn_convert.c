/* Float format conversions for host code (see kn_convert.h). */
#include "kernels/kn_convert.h"

#include <math.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

static int have_avx2;

/* Run at load time, so that the threads only ever read the flag. */
__attribute__((constructor)) static void detect_avx2(void)
{
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
}

/* kn_f32_to_bf16 of eight floats, each result in the low half of its 32-bit lane. */
__attribute__((target("avx2"))) static __m256i bf16_of8(const float *src)
{
    __m256i u = _mm256_loadu_si256((const __m256i *)src);
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                     _mm256_set1_epi32(0x7f800000));
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd)), 16);
    __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    return _mm256_blendv_epi8(rounded, quiet, nan);
}

/* dst[0, m) for the largest m <= n that is a multiple of 16; returns m. The same bits as
 * kn_f32_to_bf16 element by element. */
__attribute__((target("avx2"))) static size_t bf16_narrow_avx2(uint16_t *dst, const float *src,
                                                               size_t n)
{
    size_t m = n / 16 * 16;
    for (size_t i = 0; i < m; i += 16) {
        /* packus interleaves the 128-bit halves; the permute puts them back in order. */
        __m256i packed = _mm256_packus_epi32(bf16_of8(src + i), bf16_of8(src + i + 8));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_permute4x64_epi64(packed, 0xd8));
    }
    return m;
}
#endif

float kn_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t kn_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7e00;
    if (a >= 0x477ff000u) /* rounds to or beyond 65520: infinity */
        return sign | 0x7c00;
    if (a < 0x38800000u) { /* below the smallest normal: subnormal or zero */
        float af;
        memcpy(&af, &a, 4);
        /* 2^-24 is the subnormal step; rint rounds half to even in the default mode. */
        return sign | (uint16_t)rintf(af * 16777216.0f);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return sign | (uint16_t)((r - 0x38000000u) >> 13);
}

float kn_f8e4m3_to_f32(uint8_t v)
{
    uint32_t sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
    float r;
    if (exp == 0xf && man == 7)
        r = NAN; /* e4m3fn has no infinities; S.1111.111 is NaN */
    else if (exp == 0)
        r = ldexpf((float)man, -9);
    else
        r = ldexpf((float)(8 + man), (int)exp - 10);
    return sign ? -r : r;
}

float kn_f8e5m2_to_f32(uint8_t v)
{
    return kn_f16_to_f32((uint16_t)((uint16_t)v << 8));
}

void kn_convert_to_f32(float *dst, const void *src, kn_dtype dt, size_t n)
{
    switch (dt) {
    case KN_F32:
        memcpy(dst, src, n * 4);
        break;
    case KN_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = kn_f16_to_f32(((const uint16_t *)src)[i]);
        break;
    case KN_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = kn_bf16_to_f32(((const uint16_t *)src)[i]);
        break;
    case KN_F8_E4M3:
        for (size_t i = 0; i < n; i++)
            dst[i] = kn_f8e4m3_to_f32(((const uint8_t *)src)[i]);
        break;
    case KN_F8_E5M2:
        for (size_t i = 0; i < n; i++)
            dst[i] = kn_f8e5m2_to_f32(((const uint8_t *)src)[i]);
        break;
    default:
        break;
    }
}

void kn_convert_from_f32(void *dst, const float *src, kn_dtype dt, size_t n)
{
    switch (dt) {
    case KN_F32:
        memcpy(dst, src, n * 4);
        break;
    case KN_F16:
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = kn_f32_to_f16(src[i]);
        break;
    case KN_BF16: {
        size_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
        if (have_avx2) i = bf16_narrow_avx2(dst, src, n);
#endif
        for (; i < n; i++)
            ((uint16_t *)dst)[i] = kn_f32_to_bf16(src[i]);
        break;
    }
    default:
        break;
    }
}
