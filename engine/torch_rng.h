/* PyTorch's CPU random generator, bit for bit: `torch.Generator("cpu").manual_seed(seed)` and
 * `torch.randn(shape, generator=g, dtype=dt)` as torch 2.5.1's x86 build computes them, so that a
 * seed means what it means in diffusers. This covers the MT19937 engine with PyTorch's seeding,
 * the AVX2 float32 Box-Muller fill (with the FMA contractions GCC made in that build), the scalar
 * fp16/bf16 fills and the double path for fewer than 16 elements, including the cached second
 * normal that the double path keeps in the generator between calls.
 *
 * Not covered: CUDA (Philox) generators, other distributions, and the non-AVX2 (ARM) build of
 * PyTorch, whose float32 noise differs in the last bits. */
#ifndef FOCUS_ENGINE_TORCH_RNG_H
#define FOCUS_ENGINE_TORCH_RNG_H

#include "kernels/kn.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TORCH_MT_N 624

/* Plain data, so a job can keep its generator by value and copy it to replay a draw. */
typedef struct torch_gen {
    uint32_t state[TORCH_MT_N];
    int left, next;
    bool has_next_double; /* the r*sin(theta) that normal_distribution<double> cached */
    double next_double;
} torch_gen;

/* manual_seed(seed): only the low 32 bits of the seed reach the engine, as in PyTorch. */
void torch_gen_seed(torch_gen *g, uint64_t seed);
/* One 32-bit engine output (CPUGeneratorImpl::random). */
uint32_t torch_gen_random(torch_gen *g);
/* Two outputs, the first in the high half (CPUGeneratorImpl::random64). */
uint64_t torch_gen_random64(torch_gen *g);

/* torch.randn(numel, generator=g, dtype=dtype) for a contiguous tensor, continuing g's state.
 * dtype is KN_F32, KN_F16 or KN_BF16; out receives float32 values, which for F16/BF16 are the
 * exact 16-bit values torch returns. ERR_INVALID for another dtype. */
int torch_randn(torch_gen *g, float *out, size_t numel, kn_dtype dtype);

#endif
