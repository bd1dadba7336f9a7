/* Helpers shared by the benchmark programs of tests/bench/: a monotonic clock, the peak
 * resident memory, option values, deterministic input tensors, the BLAS baseline and the FLOP
 * count of one MMDiT forward pass. Header-only (static inline)
 * because the Makefile makes one program of each C file directly in tests/bench and links
 * nothing else from this folder. Not for tests: nothing here checks a result. */
#ifndef FOCUS_TESTS_BENCH_UTIL_H
#define FOCUS_TESTS_BENCH_UTIL_H

#include "common/err.h"
#include "engine/model_config.h"
#include "kernels/kn.h"

#include <cblas.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Seconds on the monotonic clock. */
static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* VmHWM of this process (the peak resident set), bytes; 0 where /proc cannot tell. */
static inline double bench_peak_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kb = atof(line + 6);
    if (f) fclose(f);
    return kb * 1024;
}

/* A decimal integer in [lo, hi], the whole of s; -1 otherwise (callers print their usage). */
static inline int bench_parse_count(const char *s, int lo, int hi)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi) return -1;
    return (int)v;
}

/* A comma-separated list of integers in [lo, hi], each a multiple of `multiple` ("512,1024"),
 * into out[0..max). Returns how many, or -1 for a malformed or too long list. */
static inline int bench_parse_list(const char *s, int lo, int hi, int multiple, int *out, int max)
{
    char buf[128];
    if (snprintf(buf, sizeof buf, "%s", s) >= (int)sizeof buf) return -1;
    int n = 0;
    for (char *save, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int v = bench_parse_count(tok, lo, hi);
        if (n == max || v < 0 || v % multiple != 0) return -1;
        out[n++] = v;
    }
    return n > 0 ? n : -1;
}

/* Image sides: multiples of 16 (whole patches of whole latent cells) up to 4096. */
static inline int bench_parse_sizes(const char *s, int *sides, int max)
{
    return bench_parse_list(s, 16, 4096, 16, sides, max);
}

/* y[M, N] = x[M, K] . w[N, K]^T by cblas_sgemm with OpenBLAS threaded over every core: the
 * baseline each benchmark states its figures against. (The engine runs BLAS single-threaded
 * inside its own worker threads and switches OpenBLAS back to one thread by itself.) */
static inline void bench_sgemm_all_cores(int M, int N, int K, const float *x, const float *w,
                                         float *y)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    openblas_set_num_threads(cores > 0 ? (int)cores : 1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, 0.0f, y, N);
}

/* Allocates an F32 tensor on ctx and fills it with a deterministic pattern in [-1, 1).
 * Returns 0 or a negative code from common/err.h (message set). */
static inline int bench_random_tensor(kn_ctx *ctx, kn_tensor *t, int ndim, const int64_t *shape)
{
    int rc = kn_alloc(ctx, t, KN_F32, ndim, shape);
    if (rc < 0) return rc;
    size_t n = (size_t)kn_numel(t);
    float *h = malloc(n * sizeof *h);
    if (!h) {
        kn_free(ctx, t);
        return err_set(ERR_NOMEM, "bench input of %zu floats: out of memory", n);
    }
    uint32_t s = 12345;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        h[i] = (float)(s >> 8) / 8388608.0f - 1.0f;
    }
    rc = kn_write(ctx, t, h, n * sizeof *h);
    free(h);
    if (rc < 0) kn_free(ctx, t);
    return rc;
}

/* Floating-point operations of one forward pass (2 per multiply-add) in the linear layers and
 * the attention products (q.k^T and p.v), following diffusers' SD3Transformer2DModel: every
 * block but the last updates the context stream; dual-attention blocks add a self-attention
 * over the image tokens. Norms, activations and softmax are left out (a few percent).
 * B: batch rows, N: image tokens (patches), S: text rows. */
static inline double bench_mmdit_flops(const mmdit_config *c, double B, double N, double S)
{
    const double D = (double)c->num_attention_heads * c->attention_head_dim;
    const double patch = (double)c->patch_size * c->patch_size;
    double f = 0;
#define BENCH_LINEAR(rows, in, out) (f += 2.0 * (rows) * (in) * (out))
    BENCH_LINEAR(B * N, c->in_channels * patch, D); /* patch embedding */
    BENCH_LINEAR(B, 256, D);                        /* timestep embedder */
    BENCH_LINEAR(B, D, D);
    BENCH_LINEAR(B, c->pooled_projection_dim, D); /* pooled text embedder */
    BENCH_LINEAR(B, D, D);
    BENCH_LINEAR(B * S, c->joint_attention_dim, c->caption_projection_dim); /* context */
    for (int i = 0; i < c->num_layers; i++) {
        bool last = i == c->num_layers - 1, dual = false;
        for (int k = 0; k < c->num_dual_attention_layers; k++)
            dual = dual || c->dual_attention_layers[k] == i;
        BENCH_LINEAR(B, D, (dual ? 9 : 6) * D); /* adaLN of the image stream */
        BENCH_LINEAR(B, D, (last ? 2 : 6) * D); /* adaLN of the context stream */
        BENCH_LINEAR(B * N, D, 3 * D);          /* q, k, v */
        BENCH_LINEAR(B * S, D, 3 * D);
        f += 4.0 * B * (N + S) * (N + S) * D; /* joint attention */
        BENCH_LINEAR(B * N, D, D);            /* output projections */
        if (!last) BENCH_LINEAR(B * S, D, D);
        if (dual) {
            BENCH_LINEAR(B * N, D, 3 * D);
            f += 4.0 * B * N * N * D;
            BENCH_LINEAR(B * N, D, D);
        }
        BENCH_LINEAR(B * N, D, 4 * D); /* feed-forward */
        BENCH_LINEAR(B * N, 4 * D, D);
        if (!last) {
            BENCH_LINEAR(B * S, D, 4 * D);
            BENCH_LINEAR(B * S, 4 * D, D);
        }
    }
    BENCH_LINEAR(B, D, 2 * D); /* norm_out */
    BENCH_LINEAR(B * N, D, patch * c->out_channels);
#undef BENCH_LINEAR
    return f;
}

#endif
