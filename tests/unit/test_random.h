/* Deterministic random inputs for the kernel tests, CPU and GPU alike: a xorshift64 stream of
 * floats uniform in [-amp, amp). Each test binary has its own stream. */
#ifndef FOCUS_TESTS_TEST_RANDOM_H
#define FOCUS_TESTS_TEST_RANDOM_H

#include <stdint.h>
#include <stdlib.h>

static uint64_t test_rng_state = 0x9e3779b97f4a7c15ull;

static inline float urand(void)
{
    test_rng_state ^= test_rng_state << 13;
    test_rng_state ^= test_rng_state >> 7;
    test_rng_state ^= test_rng_state << 17;
    return (float)((double)(test_rng_state >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

/* n values times amp, from malloc (the caller frees). */
static inline float *rand_buf(int64_t n, float amp)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        p[i] = urand() * amp;
    return p;
}

#endif
