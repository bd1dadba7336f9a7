/* PyTorch CPU generator and torch.randn, bit-exact with torch 2.5.1 on x86 (see torch_rng.h).
 *
 * Sources followed: ATen's MT19937RNGEngine.h and CPUGeneratorImpl.cpp (engine, seeding,
 * random64), TransformationHelper.h and DistributionsHelper.h (uniform and normal
 * distributions), native/cpu/DistributionTemplates.h (normal_kernel and its fills) and
 * native/cpu/avx_mathfun.h (log256_ps, sincos256_ps). Each AVX2 lane is computed here in scalar
 * float32 in the header's operation order.
 *
 * FMA: the AVX2 kernel is built by GCC with -mfma and C++'s default -ffp-contract=fast, so GCC
 * fused some of the header's separate mul/add intrinsics. Its widening-mul pass walks the
 * statements in order and fuses a product into the add/sub that is its only use, so where two
 * products meet in one add it is the first-computed one that fuses. Those fusions are written
 * out below with fmaf(); every other product is consumed by something that is not an add, so no
 * compiler contraction can change the result. This variant matches 4M float32 values dumped
 * from torch 2.5.1 exactly; no fusion, or fusing the other product of each pair, does not. */
#include "engine/torch_rng.h"

#include "common/err.h"
#include "kernels/kn_convert.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* Every float32 operation below must round to float32 on its own. */
_Static_assert(FLT_EVAL_METHOD == 0, "torch_rng needs float arithmetic evaluated in float");

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UPPER 0x80000000u
#define MT_LOWER 0x7fffffffu

static const double torch_pi = 3.14159265358979323846;

void torch_gen_seed(torch_gen *g, uint64_t seed)
{
    g->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (uint32_t j = 1; j < TORCH_MT_N; j++)
        g->state[j] = 1812433253u * (g->state[j - 1] ^ (g->state[j - 1] >> 30)) + j;
    /* left = 1 makes the first draw regenerate the whole state, like genrand_int32. */
    g->left = 1;
    g->next = 0;
    g->has_next_double = false;
    g->next_double = 0.0;
}

static void mt_twist(torch_gen *g)
{
    uint32_t *s = g->state;
    for (int i = 0; i < TORCH_MT_N; i++) {
        uint32_t y = (s[i] & MT_UPPER) | (s[(i + 1) % TORCH_MT_N] & MT_LOWER);
        s[i] = s[(i + MT_M) % TORCH_MT_N] ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
    }
    g->left = TORCH_MT_N;
    g->next = 0;
}

uint32_t torch_gen_random(torch_gen *g)
{
    if (--g->left <= 0)
        mt_twist(g);
    uint32_t y = g->state[g->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t torch_gen_random64(torch_gen *g)
{
    uint64_t hi = torch_gen_random(g);
    uint64_t lo = torch_gen_random(g);
    return (hi << 32) | lo;
}

static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* uniform_real_distribution<T>(0, 1) takes as many low bits of one 32-bit draw as T has
 * significand bits; the scaling by a power of two is exact. */
static float uniform_bits(torch_gen *g, int digits)
{
    uint32_t mask = (1u << digits) - 1u;
    return (float)(torch_gen_random(g) & mask) * ldexpf(1.0f, -digits);
}

static double uniform_double(torch_gen *g)
{
    return (double)(torch_gen_random64(g) & ((UINT64_C(1) << 53) - 1)) * 0x1p-53;
}

/* log256_ps for one lane (x > 0 here: the argument is 1 - u, u in [0, 1)). */
static float avx_log(float x)
{
    const float min_norm = bits_to_f32(0x00800000u);
    if (x < min_norm)
        x = min_norm;
    uint32_t b = f32_to_bits(x);
    float e = (float)((int32_t)(b >> 23) - 0x7f);
    x = bits_to_f32((b & ~0x7f800000u) | f32_to_bits(0.5f));
    e = e + 1.0f;

    /* The header's branch-free form of "if x < SQRTHF: e -= 1, x = x + x - 1 else x = x - 1". */
    bool below = x < 0.707106781186547524f;
    float tmp = below ? x : 0.0f;
    x = x - 1.0f;
    e = e - (below ? 1.0f : 0.0f);
    x = x + tmp;

    float z = x * x;
    float y = 7.0376836292E-2f;
    y = fmaf(y, x, -1.1514610310E-1f);
    y = fmaf(y, x, 1.1676998740E-1f);
    y = fmaf(y, x, -1.2420140846E-1f);
    y = fmaf(y, x, 1.4249322787E-1f);
    y = fmaf(y, x, -1.6668057665E-1f);
    y = fmaf(y, x, 2.0000714765E-1f);
    y = fmaf(y, x, -2.4999993993E-1f);
    y = fmaf(y, x, 3.3333331174E-1f);
    y = y * x;
    /* y*z is computed before e*q1, so it is y*z that GCC fused into the add. */
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    return fmaf(e, 0.693359375f, x);
}

/* sincos256_ps for one lane. */
static void avx_sincos(float x, float *s, float *c)
{
    uint32_t sign_sin = f32_to_bits(x) & 0x80000000u;
    x = fabsf(x);
    int32_t j = (int32_t)(x * 1.27323954473516f); /* cvttps: truncation */
    j = (j + 1) & ~1;
    float y = (float)j;
    sign_sin ^= ((uint32_t)j & 4u) << 29;
    uint32_t sign_cos = (~(uint32_t)(j - 2) & 4u) << 29;

    /* Extended-precision modular arithmetic: x = ((x - y*DP1) - y*DP2) - y*DP3. */
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;

    float yc = fmaf(2.443315711809948E-005f, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;

    float ys = fmaf(-1.9515295891E-4f, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);

    /* The header selects by masking and adding zero, which turns a -0 into +0. */
    float sv, cv;
    if ((j & 2) == 0) {
        sv = 0.0f + ys;
        cv = yc + 0.0f;
    } else {
        sv = yc + 0.0f;
        cv = 0.0f + ys;
    }
    *s = bits_to_f32(f32_to_bits(sv) ^ sign_sin);
    *c = bits_to_f32(f32_to_bits(cv) ^ sign_cos);
}

/* normal_fill_16_AVX2: lanes j and j+8 of a block of 16 uniforms make one Box-Muller pair. */
static void fill16_avx2(float *d)
{
    const float two_pi = (float)(2.0 * torch_pi);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * avx_log(u1));
        float s, c;
        avx_sincos(two_pi * u2, &s, &c);
        /* fmadd(n, std=1, mean=0): exact, except that it turns -0 into +0. */
        d[j] = radius * c + 0.0f;
        d[j + 8] = radius * s + 0.0f;
    }
}

/* Rounds to the 16-bit dtype and back: every Half/BFloat16 assignment and operator in c10. */
static float round16(float x, kn_dtype dt)
{
    return dt == KN_F16 ? kn_f16_to_f32(kn_f32_to_f16(x)) : kn_bf16_to_f32(kn_f32_to_bf16(x));
}

/* normal_fill_16<Half|BFloat16>. c10's overloads of std::log, std::sqrt, std::cos, std::sin
 * and of the arithmetic operators return the 16-bit type, so every intermediate is rounded;
 * theta goes through double, then float, then the 16-bit type. */
static void fill16_16bit(float *d, kn_dtype dt)
{
    for (int j = 0; j < 8; j++) {
        float u1 = round16(1.0f - d[j], dt);
        float u2 = d[j + 8];
        float radius = round16(sqrtf(round16(-2.0f * round16(logf(u1), dt), dt)), dt);
        float theta = round16((float)(2.0 * torch_pi * (double)u2), dt);
        /* `* std + mean` with std 1, mean 0: exact, except that -0 becomes +0. */
        d[j] = round16(round16(radius * round16(cosf(theta), dt), dt) + 0.0f, dt);
        d[j + 8] = round16(round16(radius * round16(sinf(theta), dt), dt) + 0.0f, dt);
    }
}

static void fill16(float *d, kn_dtype dt)
{
    if (dt == KN_F32)
        fill16_avx2(d);
    else
        fill16_16bit(d, dt);
}

/* normal_fill / normal_fill_AVX2: all uniforms first, then whole blocks of 16; a ragged end is
 * redone from 16 fresh uniforms over the last 16 elements. */
static void normal_fill(torch_gen *g, float *out, size_t n, kn_dtype dt)
{
    int digits = dt == KN_F32 ? 24 : dt == KN_F16 ? 11 : 8;
    for (size_t i = 0; i < n; i++)
        out[i] = uniform_bits(g, digits);
    for (size_t i = 0; i + 16 <= n; i += 16)
        fill16(out + i, dt);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = uniform_bits(g, digits);
        fill16(tail, dt);
    }
}

/* normal_distribution<double>(0, 1): one Box-Muller pair per two calls, the sine half cached in
 * the generator (until the next manual_seed). */
static double normal_double(torch_gen *g)
{
    double ret;
    if (g->has_next_double) {
        g->has_next_double = false;
        ret = g->next_double;
    } else {
        double u1 = uniform_double(g);
        double u2 = uniform_double(g);
        double r = sqrt(-2.0 * log1p(-u2));
        double theta = 2.0 * torch_pi * u1;
        g->next_double = r * sin(theta);
        g->has_next_double = true;
        ret = r * cos(theta);
    }
    return ret + 0.0; /* transformation::normal: val * std(1) + mean(0) */
}

int torch_randn(torch_gen *g, float *out, size_t numel, kn_dtype dtype)
{
    if (dtype != KN_F32 && dtype != KN_F16 && dtype != KN_BF16)
        return err_set(ERR_INVALID, "torch_randn: dtype %s is not F32, F16 or BF16", kn_dtype_name(dtype));
    if (numel >= 16) {
        normal_fill(g, out, numel, dtype);
        return 0;
    }
    /* static_cast<scalar_t>(double): c10's Half and BFloat16 convert through float. */
    for (size_t i = 0; i < numel; i++) {
        float v = (float)normal_double(g);
        out[i] = dtype == KN_F32 ? v : round16(v, dtype);
    }
    return 0;
}
