/* Tests of the CUDA backend against its CPU twin: every op runs on the same random inputs on
 * both backends and the results are compared with stated tolerances (relative to the magnitude
 * of the sum computed where a reduction is involved; exact where the CPU twin's formula is
 * reproduced operation by operation). GPU outputs are poisoned with NaN first, so an element
 * the kernel never writes fails. Shapes are the CPU tests' (tests/unit/test_kernels.c) plus the
 * GPU paths' own boundaries: head size 64 (the fused attention kernel), 16-bit activations and
 * a weight larger than the upload staging buffers.
 * Without a usable CUDA device this prints a SKIP line and reports no tests, never a pass. */
#include "kernels/kn_convert.h"
#include "kernels/kn_grad.h"
#include "kernels/kn_image.h"
#include "kernels/kn_ops.h"
#include "kernels/kn_patch.h"
#ifdef FOCUS_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

#include "common/err.h"
#include "tests/unit/check.h"
#include "tests/unit/ref_conv.h"
#include "tests/unit/test_random.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static kn_ctx *cpu, *gpu;

/* One tensor on each backend holding the same bytes. */
typedef struct pair {
    kn_tensor c, g;
} pair;

/* A pair of dtype dt holding vals rounded to dt (F8_E4M3: random non-NaN codes of magnitude at
 * most 4); vals is updated to what the ops see. `weight` uploads the GPU side with kn_weight,
 * the path models take, instead of kn_write. */
static pair make_pair(kn_dtype dt, int ndim, const int64_t *shape, float *vals, int weight)
{
    pair p;
    CHECK(kn_alloc(cpu, &p.c, dt, ndim, shape) == 0);
    size_t n = (size_t)kn_numel(&p.c);
    if (dt == KN_F8_E4M3) {
        uint8_t *raw = p.c.data;
        for (size_t i = 0; i < n; i++) {
            uint8_t v;
            do
                v = (uint8_t)(urand() * 127.0f + 128.0f);
            while ((v & 0x7f) == 0x7f || (v & 0x78) > 0x48);
            raw[i] = v;
        }
    } else {
        kn_convert_from_f32(p.c.data, vals, dt, n);
    }
    if (vals) kn_convert_to_f32(vals, p.c.data, dt, n);
    if (weight) {
        kn_tensor host = kn_host_tensor(p.c.data, dt, ndim, shape);
        CHECKF(kn_weight(gpu, &p.g, &host) == 0, "%s", err_msg());
    } else {
        CHECK(kn_alloc(gpu, &p.g, dt, ndim, shape) == 0);
        CHECKF(kn_write(gpu, &p.g, p.c.data, kn_nbytes(&p.c)) == 0, "%s", err_msg());
    }
    return p;
}

static pair rand_pair(kn_dtype dt, int ndim, const int64_t *shape, float amp)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    float *v = rand_buf(n, amp);
    pair p = make_pair(dt, ndim, shape, v, 0);
    free(v);
    return p;
}

/* An output pair: zeros on the CPU, NaN on the GPU. */
static pair out_pair(kn_dtype cdt, kn_dtype gdt, int ndim, const int64_t *shape)
{
    pair p;
    CHECK(kn_alloc(cpu, &p.c, cdt, ndim, shape) == 0);
    CHECK(kn_alloc(gpu, &p.g, gdt, ndim, shape) == 0);
    CHECK(kn_fill(cpu, &p.c, 0.0f) == 0);
    CHECKF(kn_fill(gpu, &p.g, NAN) == 0, "%s", err_msg());
    return p;
}

static void free_pair(pair *p)
{
    kn_free(cpu, &p->c);
    kn_free(gpu, &p->g);
}

/* max over i of |gpu - cpu| / (abs_tol + rel_tol * scale[i]) must stay <= 1, scale[i] being
 * |cpu[i]| when no scale is given; NaN fails. */
static int close_pair(const pair *p, const double *scale, double abs_tol, double rel_tol,
                      const char *what)
{
    int64_t n = kn_numel(&p->c);
    float *c = malloc((size_t)(n ? n : 1) * sizeof(float)), *g = malloc((size_t)(n ? n : 1) * 4);
    int ok = kn_read_f32(cpu, &p->c, c) == 0;
    int rc = kn_read_f32(gpu, &p->g, g);
    CHECKF(rc == 0, "%s: %s", what, err_msg());
    double worst = 0.0;
    int64_t at = 0;
    for (int64_t i = 0; ok && rc == 0 && i < n; i++) {
        double s = scale ? scale[i] : fabs((double)c[i]);
        double e = fabs((double)g[i] - c[i]) / (abs_tol + rel_tol * s);
        if (!(e <= worst)) {
            worst = e;
            at = i;
        }
    }
    ok = ok && rc == 0 && worst <= 1.0;
    if (!ok && n)
        fprintf(stderr, "  %s: element %lld is %.9g on CUDA, %.9g on the CPU (%.3g of tolerance)\n",
                what, (long long)at, (double)g[at], (double)c[at], worst);
    free(c);
    free(g);
    return ok;
}

static int exact_pair(const pair *p, const char *what)
{
    return close_pair(p, NULL, 0.0, 0.0, what);
}

/* ---- linear ---- */

/* Sum of |x_ik w_jk| (+ |b_j|) per output of x [M, K] times w, the scale of a float32 dot
 * product's rounding; w_jk is element j wj + k wk of w's N K values (wj = K, wk = 1 for
 * kn_linear's w [N, K]; wj = 1, wk = N for a product by w [K, N]). */
static double *product_mag(const pair *x, const pair *w, const pair *b, int64_t M, int64_t K,
                           int64_t N, int64_t wj, int64_t wk)
{
    float *xv = malloc((size_t)(M * K + 1) * 4), *wv = malloc((size_t)(N * K + 1) * 4);
    float *bv = malloc((size_t)(N + 1) * 4);
    double *mag = malloc((size_t)(M * N + 1) * sizeof(double));
    kn_read_f32(cpu, &x->c, xv);
    kn_read_f32(cpu, &w->c, wv);
    if (b) kn_read_f32(cpu, &b->c, bv);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double a = b ? fabs((double)bv[j]) : 0.0;
            for (int64_t k = 0; k < K; k++)
                a += fabs((double)xv[i * K + k] * wv[j * wj + k * wk]);
            mag[i * N + j] = a;
        }
    free(xv);
    free(wv);
    free(bv);
    return mag;
}

static double *linear_mag(const pair *x, const pair *w, const pair *b, int64_t M, int64_t K,
                          int64_t N)
{
    return product_mag(x, w, b, M, K, N, K, 1);
}

/* Which front-end linear_op_case calls. */
enum linear_kind { LINEAR, LINEAR_ROWS, LINEAR_GELU };

static int linear_gelu(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                       const kn_tensor *b)
{
    return kn_linear_act(ctx, y, x, w, b, KN_ACT_GELU_TANH);
}

/* x in activation dtype adt, w in wdt: the GPU result against the CPU's float32 result on the
 * same (rounded) values, through kn_linear, kn_linear_rows or kn_linear_act with tanh-GELU
 * (cuBLASLt's GELU epilogue in 16-bit; GELU's slope is at most 1.13, so the bound of the
 * product holds for its output). 16-bit outputs allow two roundings of the output dtype. */
static void linear_op_case(enum linear_kind kind, kn_dtype adt, kn_dtype wdt, int64_t M,
                           int64_t K, int64_t N, int bias, kn_dtype bdt)
{
    const int rows = kind == LINEAR_ROWS;
    int64_t xs[3] = {1, M, K}, ws[2] = {N, K}, ys[3] = {1, M, N}, bs[1] = {N};
    float *xv = rand_buf(M * K, 1.0f), *wv = rand_buf(N * K, 0.5f), *bv = rand_buf(N, 1.0f);
    pair x = make_pair(adt, 3, xs, xv, 0), w = make_pair(wdt, 2, ws, wv, 1);
    pair b = make_pair(bdt, 1, bs, bv, 1), y = out_pair(KN_F32, adt, 3, ys);
    if (adt != KN_F32) { /* the CPU computes in float32 on the same rounded values */
        kn_free(cpu, &x.c);
        CHECK(kn_alloc(cpu, &x.c, KN_F32, 3, xs) == 0);
        kn_convert_from_f32(x.c.data, xv, KN_F32, (size_t)(M * K));
    }
    int (*op)(kn_ctx *, kn_tensor *, const kn_tensor *, const kn_tensor *, const kn_tensor *) =
        rows ? kn_linear_rows : kind == LINEAR_GELU ? linear_gelu : kn_linear;
    CHECKF(op(cpu, &y.c, &x.c, &w.c, bias ? &b.c : NULL) == 0, "%s", err_msg());
    CHECKF(op(gpu, &y.g, &x.g, &w.g, bias ? &b.g : NULL) == 0, "%s", err_msg());
    double *mag = linear_mag(&x, &w, bias ? &b : NULL, M, K, N);
    char what[96];
    snprintf(what, sizeof what, "linear%s %s x %s %lldx%lldx%lld",
             rows ? "_rows" : kind == LINEAR_GELU ? "_act" : "", kn_dtype_name(adt),
             kn_dtype_name(wdt), (long long)M, (long long)K, (long long)N);
    double eps = adt == KN_BF16 ? 1.0 / 256 : adt == KN_F16 ? 1.0 / 2048 : 1e-5;
    CHECK(close_pair(&y, mag, 1e-30, eps * (kind == LINEAR_GELU ? 2.5 : 2), what));
    free(mag);
    free(xv);
    free(wv);
    free(bv);
    free_pair(&x);
    free_pair(&w);
    free_pair(&b);
    free_pair(&y);
}

static void linear_case(kn_dtype adt, kn_dtype wdt, int64_t M, int64_t K, int64_t N, int bias,
                        kn_dtype bdt)
{
    linear_op_case(LINEAR, adt, wdt, M, K, N, bias, bdt);
}

/* kn_linear_rows: the conditioning rows' product (on CUDA the same kernel as kn_linear). */
static void test_linear_rows(void)
{
    linear_op_case(LINEAR_ROWS, KN_F32, KN_BF16, 2, 1536, 2000, 1, KN_F32);
    linear_op_case(LINEAR_ROWS, KN_F32, KN_F16, 5, 300, 700, 0, KN_F32);
    linear_op_case(LINEAR_ROWS, KN_BF16, KN_BF16, 3, 256, 300, 1, KN_BF16);
}

/* kn_linear_act with tanh-GELU (the feed-forward's first product): float32 (product, bias
 * pass, activation kernel) and 16-bit (cuBLASLt's GELU_BIAS and GELU epilogues). */
static void test_linear_act(void)
{
    static const kn_dtype adts[] = {KN_F32, KN_BF16, KN_F16};
    for (size_t i = 0; i < 3; i++) {
        linear_op_case(LINEAR_GELU, adts[i], KN_BF16, 70, 1536, 600, 1, KN_F32);
        linear_op_case(LINEAR_GELU, adts[i], KN_F16, 5, 300, 37, 0, KN_F32);
    }
}

static void test_linear(void)
{
    static const kn_dtype dts[] = {KN_F32, KN_F16, KN_BF16, KN_F8_E4M3};
    for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++) {
        linear_case(KN_F32, dts[i], 1, 37, 53, 1, KN_F32);
        linear_case(KN_F32, dts[i], 5, 300, 1000, 1, KN_F16);
        linear_case(KN_F32, dts[i], 33, 1100, 1000, 0, KN_F32);
        linear_case(KN_F32, dts[i], 20, 2100, 2100, 1, KN_F32);
        linear_case(KN_F32, dts[i], 3, 1, 7, 1, KN_BF16);
    }
}

/* 16-bit activations: cuBLASLt with the bias epilogue, weights of the same or another dtype. */
static void test_linear_16bit(void)
{
    static const kn_dtype adts[] = {KN_BF16, KN_F16};
    for (size_t i = 0; i < 2; i++) {
        linear_case(adts[i], adts[i], 5, 300, 1000, 1, adts[i]);
        linear_case(adts[i], adts[i], 33, 1100, 1000, 0, KN_F32);
        linear_case(adts[i], KN_F32, 1, 37, 53, 1, KN_F32);
        linear_case(adts[i], KN_F8_E4M3, 7, 64, 96, 1, KN_F16);
    }
}

/* A weight of about 100 MB: three staging buffers' worth and a partial one. */
static void test_weight_upload_large(void)
{
    linear_case(KN_F32, KN_F16, 2, 12289, 4096, 1, KN_F32);
}

#ifdef FOCUS_HAVE_CUDA
/* TF32 is off by default (the checks above hold to float32 accuracy); switched on, products
 * keep 10 mantissa bits of each operand. */
static void test_tf32(void)
{
    cuda_set_tf32(gpu, 1);
    int64_t xs[2] = {33, 1100}, ws[2] = {1000, 1100}, ys[2] = {33, 1000};
    pair x = rand_pair(KN_F32, 2, xs, 1.0f), w = rand_pair(KN_F32, 2, ws, 0.5f);
    pair y = out_pair(KN_F32, KN_F32, 2, ys);
    CHECK(kn_linear(cpu, &y.c, &x.c, &w.c, NULL) == 0);
    CHECKF(kn_linear(gpu, &y.g, &x.g, &w.g, NULL) == 0, "%s", err_msg());
    double *mag = linear_mag(&x, &w, NULL, 33, 1100, 1000);
    CHECK(close_pair(&y, mag, 1e-30, 2e-3, "linear TF32"));
    cuda_set_tf32(gpu, 0);
    free(mag);
    free_pair(&x);
    free_pair(&w);
    free_pair(&y);
}
#endif

static void test_embedding(void)
{
    int64_t ts[2] = {50, 19}, ys[2] = {4, 19};
    float *tv = rand_buf(50 * 19, 2.0f);
    pair table = make_pair(KN_F16, 2, ts, tv, 1), y = out_pair(KN_F32, KN_F32, 2, ys);
    pair yb = out_pair(KN_F32, KN_BF16, 2, ys);
    int32_t ids[4] = {49, 0, 7, 7};
    CHECK(kn_embedding(cpu, &y.c, &table.c, ids, 4) == 0);
    CHECKF(kn_embedding(gpu, &y.g, &table.g, ids, 4) == 0, "%s", err_msg());
    CHECK(exact_pair(&y, "embedding"));
    /* to BF16: one rounding of the F16 value */
    CHECK(kn_embedding(cpu, &yb.c, &table.c, ids, 4) == 0);
    CHECKF(kn_embedding(gpu, &yb.g, &table.g, ids, 4) == 0, "%s", err_msg());
    CHECK(close_pair(&yb, NULL, 0.0, 1.0 / 256, "embedding to BF16"));
    free(tv);
    free_pair(&table);
    free_pair(&y);
    free_pair(&yb);
}

/* ---- norms ---- */

static void test_layer_norm(void)
{
    static const int64_t dims[][2] = {{7, 300}, {3, 4096}, {5, 17}};
    for (size_t c = 0; c < 3; c++)
        for (int affine = 0; affine < 2; affine++) {
            int64_t xs[2] = {dims[c][0], dims[c][1]}, vs[1] = {dims[c][1]};
            pair x = rand_pair(KN_F32, 2, xs, 3.0f), y = out_pair(KN_F32, KN_F32, 2, xs);
            pair w = rand_pair(KN_F16, 1, vs, 1.0f), b = rand_pair(KN_F32, 1, vs, 1.0f);
            CHECK(kn_layer_norm(cpu, &y.c, &x.c, affine ? &w.c : NULL, affine ? &b.c : NULL,
                                1e-5f) == 0);
            CHECKF(kn_layer_norm(gpu, &y.g, &x.g, affine ? &w.g : NULL, affine ? &b.g : NULL,
                                 1e-5f) == 0, "%s", err_msg());
            CHECK(close_pair(&y, NULL, 2e-6, 2e-6, "layer_norm"));
            /* in place */
            CHECKF(kn_layer_norm(gpu, &x.g, &x.g, affine ? &w.g : NULL, affine ? &b.g : NULL,
                                 1e-5f) == 0, "%s", err_msg());
            pair inplace = {y.c, x.g};
            CHECK(close_pair(&inplace, NULL, 2e-6, 2e-6, "layer_norm in place"));
            free_pair(&x);
            free_pair(&y);
            free_pair(&w);
            free_pair(&b);
        }
}

static void test_rms_norm(void)
{
    int64_t xs[2] = {6 * 4, 64}, vs[1] = {64}, big[2] = {3, 4096}, bv[1] = {4096};
    for (int c = 0; c < 2; c++)
        for (int with_w = 0; with_w < 2; with_w++) {
            pair x = rand_pair(KN_F32, 2, c ? big : xs, 2.0f);
            pair y = out_pair(KN_F32, KN_F32, 2, c ? big : xs);
            pair w = rand_pair(KN_BF16, 1, c ? bv : vs, 1.0f);
            CHECK(kn_rms_norm(cpu, &y.c, &x.c, with_w ? &w.c : NULL, 1e-6f) == 0);
            CHECKF(kn_rms_norm(gpu, &y.g, &x.g, with_w ? &w.g : NULL, 1e-6f) == 0, "%s",
                   err_msg());
            CHECK(close_pair(&y, NULL, 1e-6, 2e-6, "rms_norm"));
            free_pair(&x);
            free_pair(&y);
            free_pair(&w);
        }
}

/* kn_qkv_split: q, k and v rows with the heads of q and k normalised, in float32 (CUDA sums the
 * squares in double, the CPU in float32 lanes) and with bf16 activations (one rounding). */
static void test_qkv_split(void)
{
    enum { B = 2, n = 7, L = 12, row0 = 5, H = 4, Dh = 64, D = H * Dh };
    int64_t js[3] = {B, n, 3 * D}, os[3] = {B, L, D}, ws[1] = {Dh};
    static const kn_dtype adts[] = {KN_F32, KN_BF16};
    for (size_t a = 0; a < 2; a++)
        for (int normed = 0; normed < 2; normed++) {
            pair qkv = rand_pair(adts[a], 3, js, 2.0f);
            pair nq = rand_pair(KN_BF16, 1, ws, 1.0f), nk = rand_pair(KN_BF16, 1, ws, 1.0f);
            pair out[3] = {out_pair(KN_F32, adts[a], 3, os), out_pair(KN_F32, adts[a], 3, os),
                           out_pair(KN_F32, adts[a], 3, os)};
            kn_tensor qkv32;
            CHECK(kn_alloc(cpu, &qkv32, KN_F32, 3, js) == 0 && kn_copy(cpu, &qkv32, &qkv.c) == 0);
            for (int i = 0; i < 3; i++) {
                CHECK(kn_fill(cpu, &out[i].c, 7.0f) == 0);
                CHECK(kn_fill(gpu, &out[i].g, 7.0f) == 0);
            }
            CHECK(kn_qkv_split(cpu, &out[0].c, &out[1].c, &out[2].c, row0, &qkv32, H,
                               normed ? &nq.c : NULL, normed ? &nk.c : NULL, 1e-6f) == 0);
            CHECKF(kn_qkv_split(gpu, &out[0].g, &out[1].g, &out[2].g, row0, &qkv.g, H,
                                normed ? &nq.g : NULL, normed ? &nk.g : NULL, 1e-6f) == 0,
                   "%s", err_msg());
            const double rel = adts[a] == KN_F32 ? 2e-6 : 8e-3;
            for (int i = 0; i < 3; i++) {
                CHECK(close_pair(&out[i], NULL, 1e-6, rel, "qkv_split"));
                free_pair(&out[i]);
            }
            kn_free(cpu, &qkv32);
            free_pair(&qkv);
            free_pair(&nq);
            free_pair(&nk);
        }
}

/* kn_weight_rows on CUDA: the stacked upload holds each host part's bytes in order. */
static void test_weight_rows(void)
{
    int64_t ws[2][2] = {{3, 40}, {5, 40}};
    pair parts[2] = {rand_pair(KN_BF16, 2, ws[0], 1.0f), rand_pair(KN_BF16, 2, ws[1], 1.0f)};
    kn_tensor h[2] = {kn_host_tensor(parts[0].c.data, KN_BF16, 2, ws[0]),
                      kn_host_tensor(parts[1].c.data, KN_BF16, 2, ws[1])};
    const kn_tensor *hp[2] = {&h[0], &h[1]};
    kn_tensor joined;
    CHECKF(kn_weight_rows(gpu, &joined, hp, 2) == 0, "%s", err_msg());
    CHECK(joined.shape[0] == 8 && joined.shape[1] == 40);
    uint16_t got[8 * 40];
    CHECK(kn_read(gpu, &joined, got, sizeof got) == 0);
    CHECK(memcmp(got, h[0].data, 3 * 40 * 2) == 0 &&
          memcmp(got + 3 * 40, h[1].data, 5 * 40 * 2) == 0);
    kn_free(gpu, &joined);
    free_pair(&parts[0]);
    free_pair(&parts[1]);
}

static void test_group_norm(void)
{
    static const int64_t cases[][5] = {{2, 12, 5, 7, 4}, {1, 64, 128, 128, 32}, {2, 6, 1, 1, 3}};
    for (size_t c = 0; c < 3; c++) {
        int64_t xs[4] = {cases[c][0], cases[c][1], cases[c][2], cases[c][3]}, vs[1] = {cases[c][1]};
        pair x = rand_pair(KN_F32, 4, xs, 2.0f), y = out_pair(KN_F32, KN_F32, 4, xs);
        pair w = rand_pair(KN_F16, 1, vs, 1.0f), b = rand_pair(KN_F32, 1, vs, 1.0f);
        CHECK(kn_group_norm(cpu, &y.c, &x.c, &w.c, &b.c, (int)cases[c][4], 1e-6f) == 0);
        CHECKF(kn_group_norm(gpu, &y.g, &x.g, &w.g, &b.g, (int)cases[c][4], 1e-6f) == 0, "%s",
               err_msg());
        CHECK(close_pair(&y, NULL, 4e-6, 4e-6, "group_norm"));
        free_pair(&x);
        free_pair(&y);
        free_pair(&w);
        free_pair(&b);
    }
}

/* ---- elementwise ---- */

static void test_activations(void)
{
    static const kn_act acts[] = {KN_ACT_SILU, KN_ACT_GELU_ERF, KN_ACT_GELU_TANH,
                                  KN_ACT_QUICK_GELU};
    int64_t s[2] = {3, 4099};
    for (size_t a = 0; a < 4; a++) {
        pair x = rand_pair(KN_F32, 2, s, 6.0f), y = out_pair(KN_F32, KN_F32, 2, s);
        CHECK(kn_activate(cpu, &y.c, &x.c, acts[a]) == 0);
        CHECKF(kn_activate(gpu, &y.g, &x.g, acts[a]) == 0, "%s", err_msg());
        /* CUDA's expf, erff and tanhf are within 2 ulp of glibc's */
        CHECK(close_pair(&y, NULL, 1e-6, 4e-6, "activation"));
        free_pair(&x);
        free_pair(&y);
    }
}

static void test_elementwise(void)
{
    int64_t s[3] = {2, 3, 1031};
    pair a = rand_pair(KN_F32, 3, s, 3.0f), b = rand_pair(KN_F32, 3, s, 3.0f);
    pair y = out_pair(KN_F32, KN_F32, 3, s);
    CHECK(kn_add(cpu, &y.c, &a.c, &b.c) == 0 && kn_add(gpu, &y.g, &a.g, &b.g) == 0);
    CHECK(exact_pair(&y, "add"));
    CHECK(kn_sub(cpu, &y.c, &a.c, &b.c) == 0 && kn_sub(gpu, &y.g, &a.g, &b.g) == 0);
    CHECK(exact_pair(&y, "sub"));
    CHECK(kn_mul(cpu, &y.c, &a.c, &b.c) == 0 && kn_mul(gpu, &y.g, &a.g, &b.g) == 0);
    CHECK(exact_pair(&y, "mul"));
    CHECK(kn_scale(cpu, &y.c, &a.c, -0.37f) == 0 && kn_scale(gpu, &y.g, &a.g, -0.37f) == 0);
    CHECK(exact_pair(&y, "scale"));
    /* in place, two roundings: exactly the CPU's */
    CHECK(kn_add_scaled(cpu, &a.c, &a.c, 0.3f, &b.c) == 0);
    CHECKF(kn_add_scaled(gpu, &a.g, &a.g, 0.3f, &b.g) == 0, "%s", err_msg());
    CHECK(exact_pair(&a, "add_scaled"));

    /* BF16: s * b rounds to bf16 before the add, as torch's `a + s * b` on bf16 tensors */
    enum { N = 4097 };
    int64_t n1[1] = {N};
    float *av = rand_buf(N, 3.0f), *bv = rand_buf(N, 3.0f);
    pair ab = make_pair(KN_BF16, 1, n1, av, 0), bb = make_pair(KN_BF16, 1, n1, bv, 0);
    CHECKF(kn_add_scaled(gpu, &ab.g, &ab.g, 0.3f, &bb.g) == 0, "%s", err_msg());
    for (int i = 0; i < N; i++) {
        float t = kn_bf16_to_f32(kn_f32_to_bf16(0.3f * bv[i]));
        ((uint16_t *)ab.c.data)[i] = kn_f32_to_bf16(av[i] + t);
    }
    CHECK(exact_pair(&ab, "add_scaled BF16"));
    free(av);
    free(bv);
    free_pair(&ab);
    free_pair(&bb);
    free_pair(&a);
    free_pair(&b);
    free_pair(&y);
}

static void test_modulation(void)
{
    int64_t xs[3] = {2, 5, 1536}, ms[3] = {2, 6, 1536};
    pair x = rand_pair(KN_F32, 3, xs, 2.0f), mod = rand_pair(KN_F32, 3, ms, 1.0f);
    pair g = rand_pair(KN_F32, 3, xs, 1.0f), y = out_pair(KN_F32, KN_F32, 3, xs);
    CHECK(kn_ln_modulate(cpu, &y.c, &x.c, &mod.c, 4, 1, 1e-6f) == 0);
    CHECKF(kn_ln_modulate(gpu, &y.g, &x.g, &mod.g, 4, 1, 1e-6f) == 0, "%s", err_msg());
    CHECK(close_pair(&y, NULL, 4e-6, 4e-6, "ln_modulate"));
    CHECK(kn_gate_add(cpu, &x.c, &g.c, &mod.c, 5) == 0);
    CHECKF(kn_gate_add(gpu, &x.g, &g.g, &mod.g, 5) == 0, "%s", err_msg());
    CHECK(exact_pair(&x, "gate_add"));
    free_pair(&x);
    free_pair(&mod);
    free_pair(&g);
    free_pair(&y);
}

/* ---- attention ---- */

struct attn_case {
    int64_t B, Sq, Sk, H, Dh;
    int causal, bias, lse;
    float scale;
};

/* norm: the q/k RMSNorm of kn_attn_args, weights of dtype dt (the GPU's tensor-core kernel folds
 * it, the CPU and the other GPU paths normalise first). */
static void attention_case(const struct attn_case *c, kn_dtype dt, int norm)
{
    int64_t HD = c->H * c->Dh;
    int64_t qs[3] = {c->B, c->Sq, HD}, ks[3] = {c->B, c->Sk, HD};
    int64_t bs[3] = {c->H, c->Sq, c->Sk}, ls[3] = {c->B, c->H, c->Sq};
    pair q = rand_pair(dt, 3, qs, 1.5f), k = rand_pair(dt, 3, ks, 1.5f);
    pair v = rand_pair(dt, 3, ks, 1.0f), bias = rand_pair(KN_F32, 3, bs, 2.0f);
    pair lse = out_pair(KN_F32, KN_F32, 3, ls), o = out_pair(KN_F32, dt, 3, qs);
    int64_t ws[1] = {c->Dh};
    float *wv = rand_buf(c->Dh, 1.0f);
    for (int64_t i = 0; i < c->Dh; i++)
        wv[i] += 1.0f; /* weights around 1, as trained qk_norm weights are */
    pair qw = make_pair(dt, 1, ws, wv, 1), kw = make_pair(dt, 1, ws, wv, 1);
    free(wv);
    pair qc = {q.c, q.g}, kc = {k.c, k.g}, vc = {v.c, v.g};
    if (dt != KN_F32) { /* the CPU reference runs in float32 on the rounded values */
        pair *ps[3] = {&qc, &kc, &vc};
        for (int i = 0; i < 3; i++) {
            kn_tensor f;
            CHECK(kn_alloc(cpu, &f, KN_F32, 3, ps[i]->c.shape) == 0);
            CHECK(kn_copy(cpu, &f, &ps[i]->c) == 0);
            ps[i]->c = f;
        }
    }
    kn_attn_args ca = {.heads = (int)c->H, .scale = c->scale, .causal = c->causal,
                       .bias = c->bias ? &bias.c : NULL, .lse = c->lse ? &lse.c : NULL,
                       .q_norm = norm ? &qw.c : NULL, .k_norm = norm ? &kw.c : NULL,
                       .norm_eps = 1e-6f};
    kn_attn_args ga = {.heads = (int)c->H, .scale = c->scale, .causal = c->causal,
                       .bias = c->bias ? &bias.g : NULL, .lse = c->lse ? &lse.g : NULL,
                       .q_norm = norm ? &qw.g : NULL, .k_norm = norm ? &kw.g : NULL,
                       .norm_eps = 1e-6f};
    CHECKF(kn_attention(cpu, &o.c, &qc.c, &kc.c, &vc.c, &ca) == 0, "%s", err_msg());
    CHECKF(kn_attention(gpu, &o.g, &q.g, &k.g, &v.g, &ga) == 0, "%s", err_msg());
    char what[128];
    snprintf(what, sizeof what, "attention %s B%lld Sq%lld Sk%lld H%lld Dh%lld%s%s%s",
             kn_dtype_name(dt), (long long)c->B, (long long)c->Sq, (long long)c->Sk,
             (long long)c->H, (long long)c->Dh, c->causal ? " causal" : "", c->bias ? " bias" : "",
             norm ? " qk-norm" : "");
    /* outputs are convex combinations of values in [-1, 1]: absolute tolerances */
    CHECK(close_pair(&o, NULL, dt == KN_F32 ? 2e-5 : 2e-2, 0.0, what));
    if (c->lse) CHECK(close_pair(&lse, NULL, dt == KN_F32 ? 1e-5 : 5e-2, 1e-6, what));
    if (dt != KN_F32)
        for (int i = 0; i < 3; i++)
            kn_free(cpu, i == 0 ? &qc.c : i == 1 ? &kc.c : &vc.c);
    free_pair(&q);
    free_pair(&k);
    free_pair(&v);
    free_pair(&bias);
    free_pair(&lse);
    free_pair(&o);
    free_pair(&qw);
    free_pair(&kw);
}

static void test_attention(void)
{
    static const struct attn_case cases[] = {
        /* the CPU tests' shapes: the generic path, and one query of head size 64 */
        {2, 13, 29, 3, 8, 0, 0, 1, 0.35355339f},
        {2, 17, 17, 3, 8, 1, 0, 1, 0.35355339f},
        {1, 5, 9, 2, 4, 1, 1, 0, 0.5f},
        {2, 11, 11, 4, 6, 0, 1, 1, 1.0f},
        {1, 1, 1, 1, 64, 0, 0, 1, 0.125f},
        {1, 3001, 5000, 2, 4, 0, 0, 1, 0.5f},
        /* the fused kernel: partial query blocks and key tiles, causal, T5-style bias */
        {2, 130, 77, 3, 64, 0, 1, 1, 0.125f},
        {1, 200, 200, 2, 64, 1, 0, 1, 0.125f},
        {1, 70, 300, 4, 64, 1, 1, 1, 1.0f},
        {2, 333, 1024, 24, 64, 0, 0, 0, 0.125f},
        {1, 77, 77, 20, 64, 1, 0, 1, 0.125f},
        /* the VAE's single 512-wide head */
        {1, 1024, 1024, 1, 512, 0, 0, 1, 0.04419417f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        attention_case(&cases[i], KN_F32, 0);
    attention_case(&cases[7], KN_BF16, 0);
    attention_case(&cases[8], KN_F16, 0);
    attention_case(&cases[1], KN_BF16, 0);
    /* the normalise-first route on the GPU: float32, and 16-bit with a causal mask */
    attention_case(&cases[6], KN_F32, 1);
    attention_case(&cases[7], KN_BF16, 1);
}

/* The tensor-core kernel (16-bit, head size 64, no bias, no mask): one query and one key,
 * partial query blocks and key tiles, the transformer's 24 heads, with and without the folded
 * q/k RMSNorm, against the CPU in float32 on the same rounded inputs. */
static void test_attention_tensor_core(void)
{
    static const struct attn_case cases[] = {
        {1, 1, 1, 1, 64, 0, 0, 1, 0.125f},     {2, 130, 77, 3, 64, 0, 0, 1, 0.125f},
        {1, 200, 333, 2, 64, 0, 0, 1, 0.125f}, {1, 77, 77, 20, 64, 0, 0, 1, 0.125f},
        {2, 333, 1024, 24, 64, 0, 0, 0, 0.125f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        attention_case(&cases[i], KN_BF16, 0);
        attention_case(&cases[i], KN_F16, 0);
    }
    attention_case(&cases[1], KN_BF16, 1);
    attention_case(&cases[2], KN_F16, 1);
    attention_case(&cases[4], KN_BF16, 1);
}

/* A q/k norm must come in pairs: the op refuses one alone on either backend. */
static void test_attention_norm_pair(void)
{
    int64_t s3[3] = {1, 4, 64}, s1[1] = {64};
    pair q = rand_pair(KN_F32, 3, s3, 1.0f), o = out_pair(KN_F32, KN_F32, 3, s3);
    pair w = rand_pair(KN_F32, 1, s1, 1.0f);
    kn_attn_args ca = {.heads = 1, .scale = 0.125f, .q_norm = &w.c};
    kn_attn_args ga = {.heads = 1, .scale = 0.125f, .q_norm = &w.g};
    CHECK(kn_attention(cpu, &o.c, &q.c, &q.c, &q.c, &ca) == ERR_INVALID);
    CHECK(kn_attention(gpu, &o.g, &q.g, &q.g, &q.g, &ga) == ERR_INVALID);
    CHECK(strstr(err_msg(), "q_norm and k_norm") != NULL);
    free_pair(&q);
    free_pair(&o);
    free_pair(&w);
}

/* ---- image ops ---- */

static void conv_case(const struct conv_case *c)
{
    int64_t Ho = conv_out_side(c, c->H), Wo = conv_out_side(c, c->W);
    int64_t xs[4] = {c->B, c->C, c->H, c->W}, ws[4] = {c->O, c->C, c->k, c->k};
    int64_t ys[4] = {c->B, c->O, Ho, Wo}, bs[1] = {c->O};
    float *xv = rand_buf(c->B * c->C * c->H * c->W, 1.0f);
    float *wv = rand_buf(c->O * c->C * c->k * c->k, 0.5f), *bv = rand_buf(c->O, 1.0f);
    pair x = make_pair(KN_F32, 4, xs, xv, 0), w = make_pair(c->wdt, 4, ws, wv, 1);
    pair b = make_pair(KN_F32, 1, bs, bv, 1), y = out_pair(KN_F32, KN_F32, 4, ys);
    CHECK(kn_conv2d(cpu, &y.c, &x.c, &w.c, c->bias ? &b.c : NULL, c->stride, c->pad) == 0);
    CHECKF(kn_conv2d(gpu, &y.g, &x.g, &w.g, c->bias ? &b.g : NULL, c->stride, c->pad) == 0, "%s",
           err_msg());
    int64_t n = kn_numel(&y.c);
    double *mag = malloc((size_t)n * sizeof(double));
    ref_conv2d(c, xv, wv, bv, NULL, mag);
    CHECK(close_pair(&y, mag, 1e-30, 2e-5, "conv2d"));
    free(mag);
    free(xv);
    free(wv);
    free(bv);
    free_pair(&x);
    free_pair(&w);
    free_pair(&b);
    free_pair(&y);
}

static void test_conv2d(void)
{
    static const struct conv_case cases[] = {
        {2, 3, 11, 9, 5, 3, 1, 1, 1, KN_F32},     {1, 4, 8, 10, 6, 3, 1, 1, 1, KN_F16},
        {2, 7, 5, 6, 3, 1, 1, 0, 1, KN_F32},      {1, 5, 8, 12, 7, 2, 2, 0, 1, KN_BF16},
        {1, 3, 9, 11, 4, 3, 2, 1, 0, KN_F32},     {1, 2, 7, 7, 3, 3, 1, 0, 1, KN_F32},
        {1, 3, 7, 6, 2, 5, 3, 2, 1, KN_F32},      {1, 64, 30, 1000, 4, 3, 1, 1, 1, KN_F16},
        {1, 128, 64, 1024, 8, 3, 1, 1, 1, KN_F16}, /* im2col split into row blocks */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        conv_case(&cases[i]);
}

static void test_moves(void)
{
    int64_t xs[4] = {2, 3, 5, 7}, us[4] = {2, 3, 10, 14};
    pair x = rand_pair(KN_F32, 4, xs, 1.0f), u = out_pair(KN_F32, KN_F32, 4, us);
    CHECK(kn_upsample_nearest2x(cpu, &u.c, &x.c) == 0);
    CHECKF(kn_upsample_nearest2x(gpu, &u.g, &x.g) == 0, "%s", err_msg());
    CHECK(exact_pair(&u, "upsample"));

    int64_t as[3] = {2, 37, 45}, ts[3] = {2, 45, 37};
    pair a = rand_pair(KN_BF16, 3, as, 1.0f), t = out_pair(KN_BF16, KN_BF16, 3, ts);
    CHECK(kn_transpose(cpu, &t.c, &a.c) == ERR_INVALID); /* the CPU computes in F32 only */
    for (int64_t b = 0; b < 2; b++)
        for (int64_t i = 0; i < 37; i++)
            for (int64_t j = 0; j < 45; j++)
                ((uint16_t *)t.c.data)[(b * 45 + j) * 37 + i] =
                    ((const uint16_t *)a.c.data)[(b * 37 + i) * 45 + j];
    CHECKF(kn_transpose(gpu, &t.g, &a.g) == 0, "%s", err_msg());
    CHECK(exact_pair(&t, "transpose BF16"));

    int64_t ps[3] = {2, 12, 2 * 2 * 16}, is[4] = {2, 16, 6, 8};
    pair p = rand_pair(KN_F32, 3, ps, 1.0f), img = out_pair(KN_F32, KN_F32, 4, is);
    CHECK(kn_unpatchify(cpu, &img.c, &p.c, 2) == 0);
    CHECKF(kn_unpatchify(gpu, &img.g, &p.g, 2) == 0, "%s", err_msg());
    CHECK(exact_pair(&img, "unpatchify"));

    /* copy with conversion, copy_cols, fill */
    int64_t ms[2] = {9, 31}, ws[2] = {9, 50};
    pair m = rand_pair(KN_F32, 2, ms, 4.0f), h = out_pair(KN_F16, KN_F16, 2, ms);
    pair wide = out_pair(KN_F32, KN_F32, 2, ws);
    CHECK(kn_copy(cpu, &h.c, &m.c) == 0);
    CHECKF(kn_copy(gpu, &h.g, &m.g) == 0, "%s", err_msg());
    CHECK(exact_pair(&h, "copy F32 -> F16"));
    CHECK(kn_fill(cpu, &wide.c, 0.5f) == 0 && kn_fill(gpu, &wide.g, 0.5f) == 0);
    CHECK(kn_copy_cols(cpu, &wide.c, 11, &m.c) == 0);
    CHECKF(kn_copy_cols(gpu, &wide.g, 11, &m.g) == 0, "%s", err_msg());
    CHECK(exact_pair(&wide, "copy_cols"));
    CHECKF(kn_sync(gpu) == 0, "%s", err_msg());

    pair *all[] = {&x, &u, &a, &t, &p, &img, &m, &h, &wide};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free_pair(all[i]);
}

/* ---- gradients (kn_grad.h) ---- */

/* Replaces the CPU side of p by a float32 copy of its (rounded) values: the CPU reference of a
 * 16-bit product runs in float32 on what the GPU sees. */
static void cpu_to_f32(pair *p)
{
    kn_tensor f;
    CHECK(kn_alloc(cpu, &f, KN_F32, p->c.ndim, p->c.shape) == 0);
    CHECK(kn_copy(cpu, &f, &p->c) == 0);
    kn_free(cpu, &p->c);
    p->c = f;
}

/* close_pair with an absolute tolerance of tol times the largest |cpu| of the tensor: a
 * gradient sums terms of either sign, whose cancellations leave elements near zero. */
static int close_max(const pair *p, double tol, const char *what)
{
    int64_t n = kn_numel(&p->c);
    float *c = malloc((size_t)(n ? n : 1) * sizeof(float));
    double m = 0.0;
    CHECK(kn_read_f32(cpu, &p->c, c) == 0);
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)c[i]));
    free(c);
    return close_pair(p, NULL, tol * m + 1e-30, 0.0, what);
}

/* The output rounding of a float32 product in dtype dt, relative to the sum of |terms|. */
static double product_eps(kn_dtype dt)
{
    return 2 * (dt == KN_BF16 ? 1.0 / 256 : dt == KN_F16 ? 1.0 / 2048 : 1e-5);
}

/* dx = dy . w for w [N, K] of dtype wdt, activations adt (the CPU in float32 on the same
 * rounded values). */
static void linear_grad_case(kn_dtype adt, kn_dtype wdt, int64_t M, int64_t N, int64_t K)
{
    int64_t ys[3] = {1, M, N}, ws[2] = {N, K}, xs[3] = {1, M, K};
    float *wv = rand_buf(N * K, 0.5f);
    pair dy = rand_pair(adt, 3, ys, 1.0f), w = make_pair(wdt, 2, ws, wv, 1);
    pair dx = out_pair(KN_F32, adt, 3, xs);
    if (adt != KN_F32) cpu_to_f32(&dy);
    CHECKF(kn_linear_grad(cpu, &dx.c, &dy.c, &w.c) == 0, "%s", err_msg());
    CHECKF(kn_linear_grad(gpu, &dx.g, &dy.g, &w.g) == 0, "%s", err_msg());
    double *mag = product_mag(&dy, &w, NULL, M, N, K, 1, K);
    char what[96];
    snprintf(what, sizeof what, "linear_grad %s x %s %lldx%lldx%lld", kn_dtype_name(adt),
             kn_dtype_name(wdt), (long long)M, (long long)N, (long long)K);
    CHECK(close_pair(&dx, mag, 1e-30, product_eps(adt), what));
    free(mag);
    free(wv);
    free_pair(&dy);
    free_pair(&w);
    free_pair(&dx);
}

static void test_linear_grad(void)
{
    static const kn_dtype wdts[] = {KN_F32, KN_F16, KN_BF16, KN_F8_E4M3};
    for (size_t i = 0; i < 4; i++) {
        linear_grad_case(KN_F32, wdts[i], 5, 300, 1000);
        linear_grad_case(KN_F32, wdts[i], 33, 1100, 700);
        linear_grad_case(KN_F32, wdts[i], 1, 7, 3);
    }
    linear_grad_case(KN_F32, KN_F16, 2, 12289, 4096); /* a narrow weight widened in panels */
    linear_grad_case(KN_BF16, KN_BF16, 70, 1536, 600);
    linear_grad_case(KN_F16, KN_F32, 5, 300, 37);
    linear_grad_case(KN_BF16, KN_F8_E4M3, 7, 64, 96);
}

/* dx [B, C, gh p, gw p] from dtok [B, gh gw, D] and w [D, C, p, p]. */
static void patch_embed_grad_case(kn_dtype adt, kn_dtype wdt)
{
    enum { B = 2, C = 16, p = 2, gh = 5, gw = 7, D = 96, T = B * gh * gw, F = C * p * p };
    int64_t ts[3] = {B, gh * gw, D}, ws[4] = {D, C, p, p}, xs[4] = {B, C, gh * p, gw * p};
    float *wv = rand_buf(D * F, 0.5f);
    pair dtok = rand_pair(adt, 3, ts, 1.0f), w = make_pair(wdt, 4, ws, wv, 1);
    pair dx = out_pair(KN_F32, adt, 4, xs);
    if (adt != KN_F32) cpu_to_f32(&dtok);
    CHECKF(kn_patch_embed_grad(cpu, &dx.c, &dtok.c, &w.c, p) == 0, "%s", err_msg());
    CHECKF(kn_patch_embed_grad(gpu, &dx.g, &dtok.g, &w.g, p) == 0, "%s", err_msg());
    /* the magnitude of token t's feature (c, a, e), moved to its pixel */
    double *tmag = product_mag(&dtok, &w, NULL, T, D, F, 1, F);
    double *mag = malloc((size_t)kn_numel(&dx.c) * sizeof(double));
    for (int64_t i = 0; i < kn_numel(&dx.c); i++) {
        int64_t x = i % (gw * p), y = i / (gw * p) % (gh * p), c = i / (gw * p * gh * p) % C;
        int64_t b = i / (gw * p * gh * p * C), t = (b * gh + y / p) * gw + x / p;
        mag[i] = tmag[t * F + (c * p + y % p) * p + x % p];
    }
    char what[64];
    snprintf(what, sizeof what, "patch_embed_grad %s x %s", kn_dtype_name(adt), kn_dtype_name(wdt));
    CHECK(close_pair(&dx, mag, 1e-30, product_eps(adt), what));
    free(tmag);
    free(mag);
    free(wv);
    free_pair(&dtok);
    free_pair(&w);
    free_pair(&dx);
}

static void test_patch_embed_grad(void)
{
    patch_embed_grad_case(KN_F32, KN_F32);
    patch_embed_grad_case(KN_F32, KN_BF16);
    patch_embed_grad_case(KN_BF16, KN_BF16);
    patch_embed_grad_case(KN_F16, KN_F32);
}

/* Tolerances of an elementwise or row op computed in float32 on both sides: tight in F32, one
 * rounding of the output dtype otherwise. */
static double act_rel(kn_dtype dt, double f32)
{
    return dt == KN_BF16 ? 8e-3 : dt == KN_F16 ? 2e-3 : f32;
}

/* tanh-GELU's gradient, out of place and in place (dx = dy), on a row width with and without
 * the 16-byte path; other activations are refused. */
static void test_activate_grad(void)
{
    static const kn_dtype dts[] = {KN_F32, KN_BF16, KN_F16};
    static const int64_t widths[] = {4099, 1536};
    for (size_t d = 0; d < 3; d++)
        for (size_t c = 0; c < 2; c++) {
            int64_t s[2] = {3, widths[c]};
            pair x = rand_pair(dts[d], 2, s, 6.0f), dy = rand_pair(dts[d], 2, s, 1.0f);
            pair dx = out_pair(dts[d], dts[d], 2, s);
            CHECKF(kn_activate_grad(cpu, &dx.c, &dy.c, &x.c, KN_ACT_GELU_TANH) == 0, "%s",
                   err_msg());
            CHECKF(kn_activate_grad(gpu, &dx.g, &dy.g, &x.g, KN_ACT_GELU_TANH) == 0, "%s",
                   err_msg());
            CHECK(close_pair(&dx, NULL, 2e-6, act_rel(dts[d], 1e-5), "activate_grad"));
            CHECKF(kn_activate_grad(gpu, &dy.g, &dy.g, &x.g, KN_ACT_GELU_TANH) == 0, "%s",
                   err_msg());
            pair inplace = {dx.c, dy.g};
            CHECK(
                close_pair(&inplace, NULL, 2e-6, act_rel(dts[d], 1e-5), "activate_grad in place"));
            free_pair(&x);
            free_pair(&dy);
            free_pair(&dx);
        }
    int64_t s[1] = {8};
    pair x = rand_pair(KN_F32, 1, s, 1.0f), dx = out_pair(KN_F32, KN_F32, 1, s);
    CHECK(kn_activate_grad(cpu, &dx.c, &x.c, &x.c, KN_ACT_SILU) == ERR_INVALID);
    CHECK(kn_activate_grad(gpu, &dx.g, &x.g, &x.g, KN_ACT_SILU) == ERR_INVALID);
    free_pair(&x);
    free_pair(&dx);
}

/* The adaLN gradients on rows of D elements: gate_grad (one product rounded once, so exactly
 * the CPU's) and ln_modulate_grad, out of place and in place (dx = dy). */
static void modulation_grad_case(kn_dtype dt, int64_t D)
{
    int64_t xs[3] = {2, 5, D}, ms[3] = {2, 6, D};
    pair x = rand_pair(dt, 3, xs, 2.0f), mod = rand_pair(dt, 3, ms, 1.0f);
    pair dy = rand_pair(dt, 3, xs, 1.0f), dx = out_pair(dt, dt, 3, xs);
    CHECKF(kn_gate_grad(cpu, &dx.c, &dy.c, &mod.c, 5) == 0, "%s", err_msg());
    CHECKF(kn_gate_grad(gpu, &dx.g, &dy.g, &mod.g, 5) == 0, "%s", err_msg());
    CHECK(exact_pair(&dx, "gate_grad"));
    CHECKF(kn_ln_modulate_grad(cpu, &dx.c, &dy.c, &x.c, &mod.c, 1, 1e-6f) == 0, "%s", err_msg());
    CHECKF(kn_ln_modulate_grad(gpu, &dx.g, &dy.g, &x.g, &mod.g, 1, 1e-6f) == 0, "%s", err_msg());
    const double rel = act_rel(dt, 2e-5);
    CHECK(close_pair(&dx, NULL, 2e-5, rel, "ln_modulate_grad"));
    CHECKF(kn_ln_modulate_grad(gpu, &dy.g, &dy.g, &x.g, &mod.g, 1, 1e-6f) == 0, "%s", err_msg());
    pair inplace = {dx.c, dy.g};
    CHECK(close_pair(&inplace, NULL, 2e-5, rel, "ln_modulate_grad in place"));
    free_pair(&x);
    free_pair(&mod);
    free_pair(&dy);
    free_pair(&dx);
}

/* Rows of 1536 (the 16-byte path) and 17 elements. */
static void test_modulation_grad(void)
{
    static const kn_dtype dts[] = {KN_F32, KN_BF16, KN_F16};
    for (size_t d = 0; d < 3; d++) {
        modulation_grad_case(dts[d], 1536);
        modulation_grad_case(dts[d], 17);
    }
}

/* dqkv from dq, dk, dv through the per-head RMSNorms (or none): head size 64 (the 16-byte
 * path) and 12 (element by element in 16 bits). */
static void test_qkv_split_grad(void)
{
    enum { B = 2, n = 7, L = 12, row0 = 5 };
    static const int64_t heads[][2] = {{4, 64}, {3, 12}};
    static const kn_dtype dts[] = {KN_F32, KN_BF16};
    for (size_t c = 0; c < 2; c++)
        for (size_t d = 0; d < 2; d++)
            for (int normed = 0; normed < 2; normed++) {
                int H = (int)heads[c][0];
                int64_t Dh = heads[c][1], D = H * Dh;
                int64_t js[3] = {B, n, 3 * D}, os[3] = {B, L, D}, ws[1] = {Dh};
                pair qkv = rand_pair(dts[d], 3, js, 2.0f), dqkv = out_pair(dts[d], dts[d], 3, js);
                pair nq = rand_pair(KN_BF16, 1, ws, 1.0f), nk = rand_pair(KN_BF16, 1, ws, 1.0f);
                pair g[3] = {rand_pair(dts[d], 3, os, 1.0f), rand_pair(dts[d], 3, os, 1.0f),
                             rand_pair(dts[d], 3, os, 1.0f)};
                CHECKF(kn_qkv_split_grad(cpu, &dqkv.c, &g[0].c, &g[1].c, &g[2].c, row0, &qkv.c, H,
                                         normed ? &nq.c : NULL, normed ? &nk.c : NULL, 1e-6f) == 0,
                       "%s", err_msg());
                CHECKF(kn_qkv_split_grad(gpu, &dqkv.g, &g[0].g, &g[1].g, &g[2].g, row0, &qkv.g, H,
                                         normed ? &nq.g : NULL, normed ? &nk.g : NULL, 1e-6f) == 0,
                       "%s", err_msg());
                if (normed)
                    CHECK(close_pair(&dqkv, NULL, 2e-5, act_rel(dts[d], 2e-5), "qkv_split_grad"));
                else
                    CHECK(exact_pair(&dqkv, "qkv_split_grad without norms"));
                for (int i = 0; i < 3; i++)
                    free_pair(&g[i]);
                free_pair(&qkv);
                free_pair(&dqkv);
                free_pair(&nq);
                free_pair(&nk);
            }
}

struct attn_grad_case {
    int64_t B, Sq, Sk, H, Dh;
    int64_t rows; /* queries of the map term */
    int n_sel;    /* 0: no map term */
    int with_do;  /* 0: do_ NULL */
};

/* The forward on the CPU gives o and lse; both backends then take the same rounded q, k, v,
 * o and do (the CPU in float32), the same lse, dmaps and selection, which holds a key twice.
 * kn_attention_maps is checked on the same operands. */
static void attention_grad_case(const struct attn_grad_case *c, kn_dtype dt)
{
    int64_t HD = c->H * c->Dh, qs[3] = {c->B, c->Sq, HD}, ks[3] = {c->B, c->Sk, HD};
    /* without a map term, dmaps and maps are a placeholder of one element a sample */
    int64_t ls[3] = {c->B, c->H, c->Sq},
            ms[3] = {c->B, c->n_sel ? c->n_sel : 1, c->n_sel ? c->rows : 1};
    const float scale = 1.0f / sqrtf((float)c->Dh);
    pair q = rand_pair(dt, 3, qs, 1.5f), k = rand_pair(dt, 3, ks, 1.5f);
    pair v = rand_pair(dt, 3, ks, 1.0f), dout = rand_pair(dt, 3, qs, 1.0f);
    pair dmaps = rand_pair(KN_F32, 3, ms, 1.0f), maps = out_pair(KN_F32, KN_F32, 3, ms);
    pair lse = out_pair(KN_F32, KN_F32, 3, ls);
    pair dq = out_pair(KN_F32, dt, 3, qs), dk = out_pair(KN_F32, dt, 3, ks);
    pair dv = out_pair(KN_F32, dt, 3, ks);
    pair *in[] = {&q, &k, &v, &dout};
    for (int i = 0; dt != KN_F32 && i < 4; i++)
        cpu_to_f32(in[i]);
    kn_tensor o32;
    CHECK(kn_alloc(cpu, &o32, KN_F32, 3, qs) == 0);
    kn_attn_args ca = {.heads = (int)c->H, .scale = scale, .lse = &lse.c};
    CHECKF(kn_attention(cpu, &o32, &q.c, &k.c, &v.c, &ca) == 0, "%s", err_msg());
    CHECK(kn_write(gpu, &lse.g, lse.c.data, kn_nbytes(&lse.c)) == 0);
    float *ov = malloc((size_t)kn_numel(&o32) * sizeof(float));
    CHECK(kn_read_f32(cpu, &o32, ov) == 0);
    pair o = make_pair(dt, 3, qs, ov, 0);
    if (dt != KN_F32) cpu_to_f32(&o);
    int32_t sel[6] = {3, 0, (int32_t)c->Sk - 1, 3, (int32_t)(c->Sk / 2), 1};
    for (int i = 0; i < 6; i++)
        sel[i] %= (int32_t)c->Sk;
    kn_map_grad cm = {&dmaps.c, sel, c->n_sel, c->rows}, gm = {&dmaps.g, sel, c->n_sel, c->rows};
    kn_attn_args ga = {.heads = (int)c->H, .scale = scale, .lse = &lse.g};
    CHECKF(kn_attention_grad(cpu, &dq.c, &dk.c, &dv.c, c->with_do ? &dout.c : NULL, &q.c, &k.c,
                             &v.c, &o.c, &ca, c->n_sel ? &cm : NULL) == 0,
           "%s", err_msg());
    CHECKF(kn_attention_grad(gpu, &dq.g, &dk.g, &dv.g, c->with_do ? &dout.g : NULL, &q.g, &k.g,
                             &v.g, &o.g, &ga, c->n_sel ? &gm : NULL) == 0,
           "%s", err_msg());
    char what[160];
    snprintf(
        what, sizeof what, "attention_grad %s B%lld Sq%lld Sk%lld H%lld Dh%lld rows%lld sel%d%s",
        kn_dtype_name(dt), (long long)c->B, (long long)c->Sq, (long long)c->Sk, (long long)c->H,
        (long long)c->Dh, (long long)c->rows, c->n_sel, c->with_do ? "" : " do NULL");
    /* 16-bit: the GPU computes in float32 too and rounds each output once */
    const double tol = dt == KN_F32 ? 5e-5 : 1e-2;
    CHECK(close_max(&dq, tol, what));
    CHECK(close_max(&dk, tol, what));
    CHECK(close_max(&dv, tol, what));
    if (c->n_sel) {
        CHECKF(kn_attention_maps(cpu, &maps.c, &q.c, &k.c, &lse.c, sel, c->n_sel, c->rows,
                                 (int)c->H, scale) == 0,
               "%s", err_msg());
        CHECKF(kn_attention_maps(gpu, &maps.g, &q.g, &k.g, &lse.g, sel, c->n_sel, c->rows,
                                 (int)c->H, scale) == 0,
               "%s", err_msg());
        CHECK(close_pair(&maps, NULL, 2e-5, 0.0, what));
    }
    kn_free(cpu, &o32);
    free(ov);
    pair *all[] = {&q, &k, &v, &dout, &dmaps, &maps, &lse, &dq, &dk, &dv, &o};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free_pair(all[i]);
}

/* Set by --quick (the compute-sanitizer runs): leaves out the full-size attention gradient. */
static int quick;

static void test_attention_grad(void)
{
    static const struct attn_grad_case cases[] = {
        /* partial query and key tiles, map rows < Sq, a key selected twice */
        {2, 130, 77, 3, 64, 100, 4, 1},  {2, 130, 77, 3, 64, 50, 5, 0}, /* the map term alone */
        {2, 130, 77, 3, 64, 0, 0, 1},                                   /* no map term */
        {1, 13, 29, 3, 8, 13, 3, 1}, /* a small head, rows = Sq */
        {2, 1, 1, 1, 64, 1, 1, 1},   /* one query, one key */
        {1, 200, 333, 2, 40, 150, 6, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        attention_grad_case(&cases[i], KN_F32);
    /* 16-bit: head size 64 on tensor cores, head size 8 on CUDA cores */
    attention_grad_case(&cases[0], KN_BF16);
    attention_grad_case(&cases[0], KN_F16);
    attention_grad_case(&cases[1], KN_BF16);
    attention_grad_case(&cases[3], KN_F16);
    if (quick) return;
    /* SD3.5's joint attention at 1024 px: 1024 image and 154 text tokens, 24 heads */
    static const struct attn_grad_case full[] = {
        {1, 1178, 1178, 24, 64, 1024, 4, 1},
        {1, 1178, 1178, 24, 64, 1024, 4, 0},
    };
    attention_grad_case(&full[0], KN_BF16);
    attention_grad_case(&full[1], KN_F32);
}

int main(int argc, char **argv)
{
    quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    if (kn_ctx_create(KN_CPU, 0, &cpu) != 0) {
        fprintf(stderr, "kn_ctx_create: %s\n", err_msg());
        return 1;
    }
    if (kn_ctx_create(KN_CUDA, 0, &gpu) != 0) {
        printf("SKIP test_cuda_ops: skipped: %s\n", err_msg());
        kn_ctx_destroy(cpu);
        CHECK_DONE();
    }
    RUN(test_linear);
    RUN(test_linear_rows);
    RUN(test_linear_act);
    RUN(test_linear_16bit);
    RUN(test_weight_upload_large);
#ifdef FOCUS_HAVE_CUDA
    RUN(test_tf32);
#endif
    RUN(test_embedding);
    RUN(test_layer_norm);
    RUN(test_rms_norm);
    RUN(test_qkv_split);
    RUN(test_weight_rows);
    RUN(test_group_norm);
    RUN(test_activations);
    RUN(test_elementwise);
    RUN(test_modulation);
    RUN(test_attention);
    RUN(test_attention_tensor_core);
    RUN(test_attention_norm_pair);
    RUN(test_conv2d);
    RUN(test_moves);
    RUN(test_linear_grad);
    RUN(test_patch_embed_grad);
    RUN(test_activate_grad);
    RUN(test_modulation_grad);
    RUN(test_qkv_split_grad);
    RUN(test_attention_grad);
    CHECKF(kn_sync(gpu) == 0, "%s", err_msg());
    kn_ctx_destroy(gpu);
    kn_ctx_destroy(cpu);
    CHECK_DONE();
}
