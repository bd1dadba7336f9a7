/* Tests of the CPU backend's ops (kn_ops.h, kn_image.h) against straightforward double
 * precision references on random inputs: odd sizes, single rows, sizes that are not multiples
 * of the backend's panel and block sizes, every weight dtype, 16-bit activations (the F32 op
 * rounded once), and the shape and dtype errors of the front-ends. Tolerances are stated per test,
 * relative to the magnitude of the sum being computed where one is involved. */
#include "kernels/kn_convert.h"
#include "kernels/kn_image.h"
#include "kernels/kn_ops.h"

#include "common/err.h"
#include "tests/unit/check.h"
#include "tests/unit/ref_conv.h"
#include "tests/unit/test_random.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static kn_ctx *ctx;

/* A tensor of dtype dt holding vals rounded to dt; vals is updated to the rounded values so
 * that references see exactly what the op sees. F8_E4M3 draws random non-NaN codes instead. */
static kn_tensor make(kn_dtype dt, int ndim, const int64_t *shape, float *vals)
{
    kn_tensor t;
    CHECK(kn_alloc(ctx, &t, dt, ndim, shape) == 0);
    size_t n = (size_t)kn_numel(&t);
    if (dt == KN_F8_E4M3) {
        uint8_t *raw = t.data;
        for (size_t i = 0; i < n; i++) {
            uint8_t v;
            do
                v = (uint8_t)(urand() * 127.0f + 128.0f);
            while ((v & 0x7f) == 0x7f || (v & 0x78) > 0x48); /* no NaN; |v| <= 2^2 */
            raw[i] = v;
        }
    } else {
        kn_convert_from_f32(t.data, vals, dt, n);
    }
    kn_convert_to_f32(vals, t.data, dt, n);
    return t;
}

static kn_tensor make_f32(int ndim, const int64_t *shape, float *vals)
{
    return make(KN_F32, ndim, shape, vals);
}

static kn_tensor zeros(int ndim, const int64_t *shape)
{
    kn_tensor t;
    CHECK(kn_alloc(ctx, &t, KN_F32, ndim, shape) == 0);
    CHECK(kn_fill(ctx, &t, 0.0f) == 0);
    return t;
}

/* Frees the n tensors of ts. */
static void free_tensors(kn_tensor *const *ts, int n)
{
    for (int i = 0; i < n; i++)
        kn_free(ctx, ts[i]);
}

/* max over i of |got - ref| / (abs_tol + rel_tol * scale[i]) must stay <= 1. */
static int close_all(const float *got, const double *ref, const double *scale, int64_t n,
                     double abs_tol, double rel_tol, const char *what)
{
    double worst = 0.0;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++) {
        double s = scale ? scale[i] : fabs(ref[i]);
        double e = fabs((double)got[i] - ref[i]) / (abs_tol + rel_tol * s);
        if (!(e <= worst)) {
            worst = e;
            at = i;
        }
    }
    if (!(worst <= 1.0))
        fprintf(stderr, "  %s: element %lld is %.9g, reference %.9g (%.3g of tolerance)\n", what,
                (long long)at, (double)got[at], ref[at], worst);
    return worst <= 1.0;
}

/* ---- kn_linear ---- */

/* matmul: what the context's products multiply in. In bf16 the reference takes x and w
 * rounded to bf16, whose products float32 holds exactly: the bound stays float32's. */
static void linear_case_in(kn_dtype matmul, kn_dtype wdt, int64_t M, int64_t K, int64_t N,
                           int with_bias, kn_dtype bdt)
{
    int64_t xs[3] = {1, M, K}, ws[2] = {N, K}, ys[3] = {1, M, N}, bs[1] = {N};
    float *xv = rand_buf(M * K, 1.0f), *wv = rand_buf(N * K, 0.5f), *bv = rand_buf(N, 1.0f);
    kn_tensor x = make_f32(3, xs, xv), w = make(wdt, 2, ws, wv), b = make(bdt, 1, bs, bv);
    kn_tensor y = zeros(3, ys);
    CHECK(kn_ctx_set_matmul(ctx, matmul) == 0);
    int rc = kn_linear(ctx, &y, &x, &w, with_bias ? &b : NULL);
    CHECK(kn_ctx_set_matmul(ctx, KN_F32) == 0);
    CHECKF(rc == 0, "%s", err_msg());
    if (matmul == KN_BF16) {
        for (int64_t i = 0; i < M * K; i++)
            xv[i] = kn_bf16_to_f32(kn_f32_to_bf16(xv[i]));
        for (int64_t i = 0; i < N * K; i++)
            wv[i] = kn_bf16_to_f32(kn_f32_to_bf16(wv[i]));
    }
    double *ref = malloc((size_t)(M * N) * sizeof(double));
    double *mag = malloc((size_t)(M * N) * sizeof(double));
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = with_bias ? bv[j] : 0.0, a = with_bias ? fabs(bv[j]) : 0.0;
            for (int64_t k = 0; k < K; k++) {
                s += (double)xv[i * K + k] * wv[j * K + k];
                a += fabs((double)xv[i * K + k] * wv[j * K + k]);
            }
            ref[i * N + j] = s;
            mag[i * N + j] = a;
        }
    /* float32 accumulation over K terms: a few ulp of the sum of magnitudes. */
    char what[96];
    snprintf(what, sizeof what, "linear %s in %s %lldx%lldx%lld", kn_dtype_name(wdt),
             kn_dtype_name(matmul), (long long)M, (long long)K, (long long)N);
    CHECK(close_all(y.data, ref, mag, M * N, 1e-30, 1e-5, what));
    free(ref);
    free(mag);
    free(xv);
    free(wv);
    free(bv);
    kn_free(ctx, &x);
    kn_free(ctx, &w);
    kn_free(ctx, &b);
    kn_free(ctx, &y);
}

static void linear_shapes(kn_dtype matmul)
{
    static const kn_dtype dts[] = {KN_F32, KN_F16, KN_BF16, KN_F8_E4M3};
    for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++) {
        linear_case_in(matmul, dts[i], 1, 37, 53, 1, KN_F32);     /* one row */
        linear_case_in(matmul, dts[i], 5, 300, 1000, 1, KN_F16);  /* 4 column chunks, the last short */
        linear_case_in(matmul, dts[i], 33, 1100, 1000, 0, KN_F32);
        linear_case_in(matmul, dts[i], 20, 2100, 2100, 1, KN_F32);
        linear_case_in(matmul, dts[i], 100, 64, 512, 1, KN_F32); /* a whole tile and a partial one */
        linear_case_in(matmul, dts[i], 3, 1, 7, 1, KN_BF16);
    }
}

static void test_linear_dtypes(void)
{
    linear_shapes(KN_F32);
}

/* bf16 products (weights packed once, the bias added by the product): every weight dtype. */
static void test_linear_bf16(void)
{
    linear_shapes(KN_BF16);
}

/* kn_linear_act is kn_linear then kn_activate: bit for bit where the columns are whole
 * vectors (N a multiple of 8), within a few ulps of tanh elsewhere (a column may take the
 * scalar tanhf in one and the vector tanh in the other), in both product dtypes. */
static void linear_act_case(kn_dtype matmul, kn_act act, int64_t M, int64_t K, int64_t N)
{
    int64_t xs[2] = {M, K}, ws[2] = {N, K}, ys[2] = {M, N}, bs[1] = {N};
    float *xv = rand_buf(M * K, 1.0f), *wv = rand_buf(N * K, 0.5f), *bv = rand_buf(N, 1.0f);
    kn_tensor x = make_f32(2, xs, xv), w = make(KN_BF16, 2, ws, wv), b = make_f32(1, bs, bv);
    kn_tensor y = zeros(2, ys), ref = zeros(2, ys);
    CHECK(kn_ctx_set_matmul(ctx, matmul) == 0);
    CHECKF(kn_linear_act(ctx, &y, &x, &w, &b, act) == 0, "%s", err_msg());
    CHECKF(kn_linear(ctx, &ref, &x, &w, &b) == 0 && kn_activate(ctx, &ref, &ref, act) == 0, "%s",
           err_msg());
    CHECK(kn_ctx_set_matmul(ctx, KN_F32) == 0);
    const float *got = y.data, *want = ref.data;
    int bad = 0;
    for (int64_t i = 0; i < M * N; i++) {
        float tol = N % 8 ? 4e-7f * (1.0f + fabsf(want[i])) : 0.0f;
        if (!(fabsf(got[i] - want[i]) <= tol) && bad++ < 3)
            fprintf(stderr, "  linear_act %d in %s %lldx%lldx%lld: [%lld] %.9g, want %.9g\n",
                    (int)act, kn_dtype_name(matmul), (long long)M, (long long)K, (long long)N,
                    (long long)i, got[i], want[i]);
    }
    CHECK(bad == 0);
    free(xv);
    free(wv);
    free(bv);
    free_tensors((kn_tensor *[]){&x, &w, &b, &y, &ref}, 5);
}

static void test_linear_act(void)
{
    static const kn_act acts[] = {KN_ACT_SILU, KN_ACT_GELU_ERF, KN_ACT_GELU_TANH,
                                  KN_ACT_QUICK_GELU};
    static const kn_dtype modes[] = {KN_F32, KN_BF16};
    for (size_t m = 0; m < 2; m++)
        for (size_t a = 0; a < sizeof acts / sizeof acts[0]; a++) {
            linear_act_case(modes[m], acts[a], 70, 96, 600);
            linear_act_case(modes[m], acts[a], 5, 40, 37);
        }
    kn_tensor x = zeros(2, (int64_t[]){2, 4}), y = zeros(2, (int64_t[]){2, 3});
    kn_tensor w = zeros(2, (int64_t[]){3, 4});
    CHECK(kn_linear_act(ctx, &y, &x, &w, NULL, (kn_act)99) == ERR_INVALID);
    kn_free(ctx, &x);
    kn_free(ctx, &y);
    kn_free(ctx, &w);
}

/* ---- kn_embedding ---- */

static void test_embedding(void)
{
    int64_t ts[2] = {50, 19}, ys[2] = {4, 19};
    float *tv = rand_buf(50 * 19, 2.0f);
    kn_tensor table = make(KN_F16, 2, ts, tv), y = zeros(2, ys);
    int32_t ids[4] = {49, 0, 7, 7};
    CHECKF(kn_embedding(ctx, &y, &table, ids, 4) == 0, "%s", err_msg());
    const float *yd = y.data;
    for (int i = 0; i < 4; i++)
        CHECK(memcmp(yd + i * 19, tv + ids[i] * 19, 19 * sizeof(float)) == 0);
    ids[2] = 50;
    CHECK(kn_embedding(ctx, &y, &table, ids, 4) == ERR_RANGE);
    free(tv);
    kn_free(ctx, &table);
    kn_free(ctx, &y);
}

/* ---- norms ---- */

static void ref_layer_norm(double *out, const float *x, int64_t D, const float *w, const float *b,
                           double eps)
{
    double m = 0, v = 0;
    for (int64_t j = 0; j < D; j++)
        m += x[j];
    m /= (double)D;
    for (int64_t j = 0; j < D; j++)
        v += (x[j] - m) * (x[j] - m);
    v /= (double)D;
    for (int64_t j = 0; j < D; j++)
        out[j] = (x[j] - m) / sqrt(v + eps) * (w ? w[j] : 1.0) + (b ? b[j] : 0.0);
}

static void test_layer_norm(void)
{
    enum { R = 7, D = 333 };
    int64_t xs[2] = {R, D}, vs[1] = {D};
    static const kn_dtype dts[] = {KN_F32, KN_F16};
    for (int affine = 0; affine < 3; affine++) {
        float *xv = rand_buf(R * D, 3.0f), *wv = rand_buf(D, 1.5f), *bv = rand_buf(D, 1.0f);
        for (int64_t i = 0; i < R * D; i++)
            xv[i] += 5.0f; /* a large mean exercises the two-pass variance */
        kn_dtype dt = dts[affine % 2];
        kn_tensor x = make_f32(2, xs, xv), w = make(dt, 1, vs, wv), b = make(dt, 1, vs, bv);
        kn_tensor y = zeros(2, xs);
        int rc = kn_layer_norm(ctx, &y, &x, affine ? &w : NULL, affine ? &b : NULL, 1e-5f);
        CHECKF(rc == 0, "%s", err_msg());
        double ref[R * D];
        for (int r = 0; r < R; r++)
            ref_layer_norm(ref + r * D, xv + r * D, D, affine ? wv : NULL, affine ? bv : NULL,
                           1e-5);
        CHECK(close_all(y.data, ref, NULL, R * D, 2e-6, 2e-6, "layer_norm"));
        /* in place */
        CHECK(kn_layer_norm(ctx, &x, &x, affine ? &w : NULL, affine ? &b : NULL, 1e-5f) == 0);
        CHECK(memcmp(x.data, y.data, sizeof(float) * R * D) == 0);
        free(xv);
        free(wv);
        free(bv);
        kn_free(ctx, &x);
        kn_free(ctx, &w);
        kn_free(ctx, &b);
        kn_free(ctx, &y);
    }
}

static void test_rms_norm(void)
{
    enum { R = 6, D = 64 * 3 };
    int64_t xs[2] = {R, D}, hs[2] = {R * 3, 64}, ws[1] = {64};
    float *xv = rand_buf(R * D, 2.0f), *wv = rand_buf(64, 1.0f);
    kn_tensor x = make_f32(2, xs, xv), w = make(KN_BF16, 1, ws, wv), y = zeros(2, xs);
    /* per head: viewed as [R * heads, 64] */
    kn_tensor xh = kn_reshape(&x, 2, hs), yh = kn_reshape(&y, 2, hs);
    for (int with_w = 0; with_w < 2; with_w++) {
        CHECKF(kn_rms_norm(ctx, &yh, &xh, with_w ? &w : NULL, 1e-6f) == 0, "%s", err_msg());
        double ref[R * D];
        for (int r = 0; r < R * 3; r++) {
            double s = 0;
            for (int j = 0; j < 64; j++)
                s += (double)xv[r * 64 + j] * xv[r * 64 + j];
            double rs = 1.0 / sqrt(s / 64 + 1e-6);
            for (int j = 0; j < 64; j++)
                ref[r * 64 + j] = xv[r * 64 + j] * rs * (with_w ? wv[j] : 1.0);
        }
        CHECK(close_all(y.data, ref, NULL, R * D, 1e-6, 2e-6, "rms_norm"));
    }
    free(xv);
    free(wv);
    kn_free(ctx, &x);
    kn_free(ctx, &w);
    kn_free(ctx, &y);
}

/* kn_qkv_split: rows [row0, row0 + n) of q, k and v are the joined product's thirds, the heads
 * of q and k exactly as kn_rms_norm normalises them; the other rows are left alone. */
static void test_qkv_split(void)
{
    enum { B = 3, n = 5, L = 9, row0 = 4, H = 3, Dh = 64, D = H * Dh };
    int64_t js[3] = {B, n, 3 * D}, os[3] = {B, L, D}, ws[1] = {Dh};
    float *jv = rand_buf(B * n * 3 * D, 2.0f), *qw = rand_buf(Dh, 1.0f), *kw = rand_buf(Dh, 1.0f);
    kn_tensor qkv = make_f32(3, js, jv), nq = make(KN_BF16, 1, ws, qw),
              nk = make(KN_BF16, 1, ws, kw);
    kn_tensor out[3] = {zeros(3, os), zeros(3, os), zeros(3, os)};
    kn_tensor head = zeros(2, (int64_t[]){H, Dh});
    for (int normed = 0; normed < 2; normed++) {
        for (int i = 0; i < 3; i++)
            CHECK(kn_fill(ctx, &out[i], 7.0f) == 0);
        CHECKF(kn_qkv_split(ctx, &out[0], &out[1], &out[2], row0, &qkv, H, normed ? &nq : NULL,
                            normed ? &nk : NULL, 1e-6f) == 0,
               "%s", err_msg());
        int bad = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t r = 0; r < L; r++)
                for (int i = 0; i < 3; i++) {
                    const float *got = (const float *)out[i].data + (b * L + r) * D;
                    float want[D];
                    if (r < row0 || r >= row0 + n) {
                        for (int j = 0; j < D; j++)
                            want[j] = 7.0f;
                    } else {
                        kn_tensor src =
                            kn_view(&qkv, ((b * n + r - row0) * 3 + i) * D, 2, (int64_t[]){H, Dh});
                        const kn_tensor *w = i == 0 ? &nq : &nk;
                        if (normed && i < 2)
                            CHECK(kn_rms_norm(ctx, &head, &src, w, 1e-6f) == 0);
                        else
                            CHECK(kn_copy(ctx, &head, &src) == 0);
                        memcpy(want, head.data, sizeof want);
                    }
                    bad += memcmp(got, want, sizeof want) != 0;
                }
        CHECKF(bad == 0, "%d rows differ (qk norm %d)", bad, normed);
    }
    CHECK(kn_qkv_split(ctx, &out[0], &out[1], &out[2], L - n + 1, &qkv, H, NULL, NULL, 1e-6f) ==
          ERR_SHAPE);
    CHECK(kn_qkv_split(ctx, &out[0], &out[1], &out[2], 0, &qkv, 5, NULL, NULL, 1e-6f) == ERR_SHAPE);
    CHECK(kn_qkv_split(ctx, &out[0], &out[1], &out[2], 0, &qkv, H, &nq, NULL, 1e-6f) ==
          ERR_INVALID);
    free(jv);
    free(qw);
    free(kw);
    kn_free(ctx, &qkv);
    kn_free(ctx, &nq);
    kn_free(ctx, &nk);
    kn_free(ctx, &head);
    for (int i = 0; i < 3; i++)
        kn_free(ctx, &out[i]);
}

/* kn_weight_rows: one product with the stacked weight gives each part's product, in both
 * product dtypes, within float32 rounding (oneDNN may sum a tile that writes rows of another
 * stride in another order), with whole and partial column chunks. Parts that do not stack are
 * refused. */
static void weight_rows_case(int64_t N)
{
    const int64_t M = 37, K = 96;
    int64_t ws[2] = {N, K}, bs[1] = {N}, xs[2] = {M, K};
    float *xv = rand_buf(M * K, 1.0f), *wv[3], *bv[3];
    kn_tensor w[3], b[3], x = make_f32(2, xs, xv);
    for (int i = 0; i < 3; i++) {
        wv[i] = rand_buf(N * K, 0.5f), bv[i] = rand_buf(N, 1.0f);
        w[i] = make(KN_BF16, 2, ws, wv[i]), b[i] = make(KN_BF16, 1, bs, bv[i]);
    }
    const kn_tensor *wp[3] = {&w[0], &w[1], &w[2]}, *bp[3] = {&b[0], &b[1], &b[2]};
    kn_tensor wj, bj, yj = zeros(2, (int64_t[]){M, 3 * N}), y = zeros(2, (int64_t[]){M, N});
    CHECKF(kn_weight_rows(ctx, &wj, wp, 3) == 0 && kn_weight_rows(ctx, &bj, bp, 3) == 0, "%s",
           err_msg());
    CHECK(wj.shape[0] == 3 * N && wj.shape[1] == K && bj.shape[0] == 3 * N);
    static const kn_dtype modes[] = {KN_F32, KN_BF16};
    const float tol = 1e-5f;
    for (size_t m = 0; m < 2; m++) {
        CHECK(kn_ctx_set_matmul(ctx, modes[m]) == 0);
        CHECKF(kn_linear(ctx, &yj, &x, &wj, &bj) == 0, "%s", err_msg());
        int bad = 0;
        for (int i = 0; i < 3; i++) {
            CHECK(kn_linear(ctx, &y, &x, &w[i], &b[i]) == 0);
            for (int64_t r = 0; r < M; r++)
                for (int64_t c = 0; c < N; c++) {
                    float got = ((const float *)yj.data)[r * 3 * N + i * N + c];
                    float want = ((const float *)y.data)[r * N + c];
                    bad += !(fabsf(got - want) <= tol * (1.0f + fabsf(want)));
                }
        }
        CHECKF(bad == 0, "%d values of the joined product differ in %s, N %lld", bad,
               kn_dtype_name(modes[m]), (long long)N);
    }
    CHECK(kn_ctx_set_matmul(ctx, KN_F32) == 0);
    const kn_tensor *mixed[2] = {&w[0], &x};
    kn_tensor none;
    CHECK(kn_weight_rows(ctx, &none, mixed, 2) == ERR_SHAPE);
    free(xv);
    for (int i = 0; i < 3; i++) {
        free(wv[i]);
        free(bv[i]);
        free_tensors((kn_tensor *[]){&w[i], &b[i]}, 2);
    }
    free_tensors((kn_tensor *[]){&x, &wj, &bj, &yj, &y}, 5);
}

static void test_weight_rows(void)
{
    weight_rows_case(256);
    weight_rows_case(200);
}

static void test_group_norm(void)
{
    enum { B = 2, C = 12, H = 5, W = 7 };
    int64_t xs[4] = {B, C, H, W}, vs[1] = {C};
    for (int groups = 3; groups <= 4; groups++) {
        float *xv = rand_buf(B * C * H * W, 2.0f), *wv = rand_buf(C, 1.0f), *bv = rand_buf(C, 1.0f);
        kn_tensor x = make_f32(4, xs, xv), w = make(KN_F16, 1, vs, wv), b = make(KN_F16, 1, vs, bv);
        kn_tensor y = zeros(4, xs);
        CHECKF(kn_group_norm(ctx, &y, &x, &w, &b, groups, 1e-6f) == 0, "%s", err_msg());
        double ref[B * C * H * W];
        int64_t cg = C / groups, n = cg * H * W;
        for (int bi = 0; bi < B; bi++)
            for (int g = 0; g < groups; g++) {
                const float *xg = xv + (bi * C + g * cg) * H * W;
                double m = 0, v = 0;
                for (int64_t i = 0; i < n; i++)
                    m += xg[i];
                m /= (double)n;
                for (int64_t i = 0; i < n; i++)
                    v += (xg[i] - m) * (xg[i] - m);
                v /= (double)n;
                for (int64_t i = 0; i < n; i++) {
                    int64_t c = g * cg + i / (H * W);
                    ref[(bi * C + g * cg) * H * W + i] =
                        (xg[i] - m) / sqrt(v + 1e-6) * wv[c] + bv[c];
                }
            }
        CHECK(close_all(y.data, ref, NULL, B * C * H * W, 2e-6, 2e-6, "group_norm"));
        free(xv);
        free(wv);
        free(bv);
        kn_free(ctx, &x);
        kn_free(ctx, &w);
        kn_free(ctx, &b);
        kn_free(ctx, &y);
    }
}

/* ---- activations and elementwise ops ---- */

static double ref_act(kn_act a, double x)
{
    switch (a) {
    case KN_ACT_SILU:
        return x / (1.0 + exp(-x));
    case KN_ACT_GELU_ERF:
        return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case KN_ACT_GELU_TANH:
        return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case KN_ACT_QUICK_GELU:
        return x / (1.0 + exp(-1.702 * x));
    }
    return 0.0;
}

static void test_activations(void)
{
    enum { N = 1001 };
    int64_t s[2] = {7, 143};
    static const kn_act acts[] = {KN_ACT_SILU, KN_ACT_GELU_ERF, KN_ACT_GELU_TANH,
                                  KN_ACT_QUICK_GELU};
    float *xv = rand_buf(N, 8.0f);
    kn_tensor x = make_f32(2, s, xv), y = zeros(2, s);
    for (size_t a = 0; a < 4; a++) {
        CHECKF(kn_activate(ctx, &y, &x, acts[a]) == 0, "%s", err_msg());
        double ref[N];
        for (int i = 0; i < N; i++)
            ref[i] = ref_act(acts[a], xv[i]);
        /* a handful of float roundings of the formula's steps */
        CHECK(close_all(y.data, ref, NULL, N, 1e-6, 4e-6, "activation"));
    }
    CHECK(kn_activate(ctx, &y, &x, KN_ACT_SILU) == 0);
    CHECK(kn_activate(ctx, &x, &x, KN_ACT_SILU) == 0); /* in place */
    CHECK(memcmp(x.data, y.data, N * sizeof(float)) == 0);
    free(xv);
    kn_free(ctx, &x);
    kn_free(ctx, &y);
}

static void test_elementwise(void)
{
    enum { N = 257 };
    int64_t s[3] = {1, 1, N};
    float *av = rand_buf(N, 3.0f), *bv = rand_buf(N, 3.0f);
    kn_tensor a = make_f32(3, s, av), b = make_f32(3, s, bv), y = zeros(3, s);
    const float *yd = y.data;
    int ok = kn_add(ctx, &y, &a, &b) == 0;
    for (int i = 0; i < N; i++)
        ok &= yd[i] == av[i] + bv[i];
    CHECK(ok);
    ok = kn_sub(ctx, &y, &a, &b) == 0;
    for (int i = 0; i < N; i++)
        ok &= yd[i] == av[i] - bv[i];
    CHECK(ok);
    ok = kn_mul(ctx, &y, &a, &b) == 0;
    for (int i = 0; i < N; i++)
        ok &= yd[i] == av[i] * bv[i];
    CHECK(ok);
    ok = kn_scale(ctx, &y, &a, -0.37f) == 0;
    for (int i = 0; i < N; i++)
        ok &= yd[i] == av[i] * -0.37f;
    CHECK(ok);
    /* s * b rounds to float before the add: exactly torch's `a + s * b` */
    ok = kn_add_scaled(ctx, &a, &a, 0.3f, &b) == 0; /* in place on a */
    const float *ad = a.data;
    for (int i = 0; i < N; i++) {
        volatile float t = 0.3f * bv[i];
        ok &= ad[i] == av[i] + t;
    }
    CHECK(ok);
    free(av);
    free(bv);
    kn_free(ctx, &a);
    kn_free(ctx, &b);
    kn_free(ctx, &y);
}

/* ---- adaLN modulation ---- */

static void test_modulation(void)
{
    enum { B = 2, S = 5, D = 129, C = 6 };
    int64_t xs[3] = {B, S, D}, ms[3] = {B, C, D};
    float *xv = rand_buf(B * S * D, 2.0f), *mv = rand_buf(B * C * D, 1.0f);
    float *yv = rand_buf(B * S * D, 1.0f);
    kn_tensor x = make_f32(3, xs, xv), mod = make_f32(3, ms, mv), y = zeros(3, xs);
    CHECKF(kn_ln_modulate(ctx, &y, &x, &mod, 4, 1, 1e-6f) == 0, "%s", err_msg());
    double ref[B * S * D];
    for (int b = 0; b < B; b++)
        for (int s = 0; s < S; s++) {
            double *r = ref + (b * S + s) * D;
            ref_layer_norm(r, xv + (b * S + s) * D, D, NULL, NULL, 1e-6);
            for (int j = 0; j < D; j++)
                r[j] = r[j] * (1.0 + mv[(b * C + 1) * D + j]) + mv[(b * C + 4) * D + j];
        }
    CHECK(close_all(y.data, ref, NULL, B * S * D, 4e-6, 4e-6, "ln_modulate"));

    kn_tensor g = make_f32(3, xs, yv);
    CHECKF(kn_gate_add(ctx, &x, &g, &mod, 5) == 0, "%s", err_msg());
    const float *xd = x.data;
    int ok = 1;
    for (int b = 0; b < B; b++)
        for (int s = 0; s < S; s++)
            for (int j = 0; j < D; j++) {
                int64_t i = (b * S + s) * D + j;
                volatile float t = mv[(b * C + 5) * D + j] * yv[i];
                ok &= xd[i] == xv[i] + t;
            }
    CHECK(ok);
    CHECK(kn_gate_add(ctx, &x, &g, &mod, 6) == ERR_RANGE);
    free(xv);
    free(mv);
    free(yv);
    kn_free(ctx, &x);
    kn_free(ctx, &mod);
    kn_free(ctx, &y);
    kn_free(ctx, &g);
}

/* ---- 16-bit activations ---- */

/* A BF16 or F16 tensor of random values and its exact F32 twin. */
static void half_pair(kn_dtype dt, int ndim, const int64_t *shape, float amp, kn_tensor *h,
                      kn_tensor *f)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    float *v = rand_buf(n, amp);
    *h = make(dt, ndim, shape, v); /* rounds v to dt */
    *f = make_f32(ndim, shape, v);
    free(v);
}

/* The 16-bit result must be the F32 op's result on the same (exactly widened) inputs, rounded
 * once to the dtype: bit for bit. */
static int half_matches(const kn_tensor *h, const kn_tensor *f, const char *what)
{
    int64_t n = kn_numel(f);
    float *want = malloc((size_t)n * sizeof *want), *got = malloc((size_t)n * sizeof *got);
    uint16_t *r = malloc((size_t)n * sizeof *r);
    kn_convert_from_f32(r, f->data, h->dtype, (size_t)n);
    kn_convert_to_f32(want, r, h->dtype, (size_t)n);
    kn_convert_to_f32(got, h->data, h->dtype, (size_t)n);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += memcmp(&got[i], &want[i], sizeof(float)) != 0;
    if (bad)
        fprintf(stderr, "  %s %s: %lld of %lld differ\n", what, kn_dtype_name(h->dtype),
                (long long)bad, (long long)n);
    free(want);
    free(got);
    free(r);
    return bad == 0;
}

static void test_half_activations(void)
{
    const kn_dtype dts[2] = {KN_BF16, KN_F16};
    for (int d = 0; d < 2; d++) {
        kn_dtype dt = dts[d];
        int64_t xs[3] = {2, 7, 48}, ys[3] = {2, 7, 40}, ws[2] = {40, 48}, ms[3] = {2, 6, 48};
        kn_tensor xh, xf, yh, yf, wt, mh, mf;
        half_pair(dt, 3, xs, 2.0f, &xh, &xf);
        half_pair(dt, 3, ys, 1.0f, &yh, &yf);
        half_pair(dt, 3, ms, 0.5f, &mh, &mf);
        float *wv = rand_buf(40 * 48, 0.3f);
        wt = make(KN_BF16, 2, ws, wv);
        CHECKF(kn_linear(ctx, &yh, &xh, &wt, NULL) == 0, "%s", err_msg());
        CHECK(kn_linear(ctx, &yf, &xf, &wt, NULL) == 0);
        CHECK(half_matches(&yh, &yf, "linear"));
        /* In place, and an output the op also reads (the gated residual). */
        CHECK(kn_activate(ctx, &xh, &xh, KN_ACT_GELU_TANH) == 0);
        CHECK(kn_activate(ctx, &xf, &xf, KN_ACT_GELU_TANH) == 0);
        CHECK(half_matches(&xh, &xf, "gelu in place"));
        kn_tensor nh, nf;
        half_pair(dt, 3, xs, 1.0f, &nh, &nf);
        CHECK(kn_ln_modulate(ctx, &nh, &xh, &mh, 0, 1, 1e-6f) == 0);
        CHECK(kn_ln_modulate(ctx, &nf, &xh, &mh, 0, 1, 1e-6f) == ERR_INVALID); /* mixed */
        kn_tensor xw = make_f32(3, xs, (float[2 * 7 * 48]){0});
        CHECK(kn_copy(ctx, &xw, &xh) == 0);
        CHECK(kn_ln_modulate(ctx, &nf, &xw, &mf, 0, 1, 1e-6f) == 0);
        CHECK(half_matches(&nh, &nf, "ln_modulate"));
        CHECK(kn_gate_add(ctx, &xh, &nh, &mh, 2) == 0);
        CHECK(kn_copy(ctx, &nf, &nh) == 0);
        CHECK(kn_gate_add(ctx, &xw, &nf, &mf, 2) == 0);
        CHECK(half_matches(&xh, &xw, "gate_add"));
        CHECK(kn_copy(ctx, &xw, &xh) == 0);
        kn_attn_args args = {.heads = 3, .scale = 0.25f};
        kn_tensor oh, of;
        half_pair(dt, 3, xs, 1.0f, &oh, &of);
        CHECK(kn_attention(ctx, &oh, &xh, &nh, &nh, &args) == 0);
        CHECK(kn_attention(ctx, &of, &xw, &nf, &nf, &args) == 0);
        CHECK(half_matches(&oh, &of, "attention"));
        kn_tensor *all[] = {&xh, &xf, &yh, &yf, &wt, &mh, &mf, &nh, &nf, &xw, &oh, &of};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            kn_free(ctx, all[i]);
        free(wv);
    }
}

/* ---- kn_attention ---- */

struct attn_case {
    int64_t B, Sq, Sk, H, Dh;
    int causal, bias, lse;
    float scale;
};

/* Absolute for the outputs; absolute and relative for the log-sum-exps (whose error follows
 * the scores'). */
struct attn_tol {
    double out, lse_abs, lse_rel;
};

static void attention_case(const struct attn_case *c, struct attn_tol tol)
{
    int64_t HD = c->H * c->Dh;
    int64_t qs[3] = {c->B, c->Sq, HD}, ks[3] = {c->B, c->Sk, HD};
    int64_t bs[3] = {c->H, c->Sq, c->Sk}, ls[3] = {c->B, c->H, c->Sq};
    float *qv = rand_buf(c->B * c->Sq * HD, 1.5f), *kv = rand_buf(c->B * c->Sk * HD, 1.5f);
    float *vv = rand_buf(c->B * c->Sk * HD, 1.0f), *bv = rand_buf(c->H * c->Sq * c->Sk, 2.0f);
    kn_tensor q = make_f32(3, qs, qv), k = make_f32(3, ks, kv), v = make_f32(3, ks, vv);
    kn_tensor bias = make_f32(3, bs, bv), lse = zeros(3, ls), o = zeros(3, qs);
    kn_attn_args args = {.heads = (int)c->H,
                         .scale = c->scale,
                         .causal = c->causal,
                         .bias = c->bias ? &bias : NULL,
                         .lse = c->lse ? &lse : NULL};
    CHECKF(kn_attention(ctx, &o, &q, &k, &v, &args) == 0, "%s", err_msg());

    double *ref = malloc((size_t)(c->B * c->Sq * HD) * sizeof(double));
    double *lref = malloc((size_t)(c->B * c->H * c->Sq) * sizeof(double));
    double *sc = malloc((size_t)c->Sk * sizeof(double));
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->H; h++)
            for (int64_t i = 0; i < c->Sq; i++) {
                const float *qi = qv + (b * c->Sq + i) * HD + h * c->Dh;
                int64_t lim = c->causal && i + 1 < c->Sk ? i + 1 : c->Sk;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < lim; j++) {
                    const float *kj = kv + (b * c->Sk + j) * HD + h * c->Dh;
                    double s = 0;
                    for (int64_t d = 0; d < c->Dh; d++)
                        s += (double)qi[d] * kj[d];
                    s *= c->scale;
                    if (c->bias) s += bv[(h * c->Sq + i) * c->Sk + j];
                    sc[j] = s;
                    mx = s > mx ? s : mx;
                }
                for (int64_t j = 0; j < lim; j++)
                    sum += (sc[j] = exp(sc[j] - mx));
                lref[(b * c->H + h) * c->Sq + i] = mx + log(sum);
                double *r = ref + (b * c->Sq + i) * HD + h * c->Dh;
                for (int64_t d = 0; d < c->Dh; d++) {
                    double acc = 0;
                    for (int64_t j = 0; j < lim; j++)
                        acc += sc[j] * vv[(b * c->Sk + j) * HD + h * c->Dh + d];
                    r[d] = acc / sum;
                }
            }
    /* outputs are convex combinations of values in [-1, 1]: absolute tolerance */
    CHECK(close_all(o.data, ref, NULL, c->B * c->Sq * HD, tol.out, 0.0, "attention output"));
    if (c->lse)
        CHECK(close_all(lse.data, lref, NULL, c->B * c->H * c->Sq, tol.lse_abs, tol.lse_rel,
                        "attention lse"));
    free(ref);
    free(lref);
    free(sc);
    free(qv);
    free(kv);
    free(vv);
    free(bv);
    kn_free(ctx, &q);
    kn_free(ctx, &k);
    kn_free(ctx, &v);
    kn_free(ctx, &bias);
    kn_free(ctx, &lse);
    kn_free(ctx, &o);
}

static const struct attn_case small_cases[] = {
        {2, 13, 29, 3, 8, 0, 0, 1, 0.35355339f},
        {2, 17, 17, 3, 8, 1, 0, 1, 0.35355339f}, /* causal */
        {1, 5, 9, 2, 4, 1, 1, 0, 0.5f},          /* causal with more keys than queries */
        {2, 11, 11, 4, 6, 0, 1, 1, 1.0f},        /* T5: bias, no scaling */
        {1, 1, 1, 1, 64, 0, 0, 1, 0.125f},
};

/* More queries and keys than one task and one key tile take: block boundaries, causal key
 * limits per tile, tiles wholly masked, a last partial tile. */
static const struct attn_case long_cases[] = {
    {1, 5000, 5000, 1, 8, 1, 0, 1, 0.35355339f},
    {1, 3001, 5000, 2, 4, 0, 0, 1, 0.5f},
    {2, 70, 2100, 2, 64, 0, 1, 1, 0.125f}, /* T5-like bias over three key tiles */
};

static const struct attn_tol f32_tol = {2e-5, 1e-5, 1e-6};

static void test_attention_small(void)
{
    for (size_t i = 0; i < sizeof small_cases / sizeof small_cases[0]; i++)
        attention_case(&small_cases[i], f32_tol);
}

static void test_attention_long(void)
{
    for (size_t i = 0; i < sizeof long_cases / sizeof long_cases[0]; i++)
        attention_case(&long_cases[i], f32_tol);
}

/* bf16 products (bf16 q, k, v and probabilities, float32 accumulation and softmax): within what
 * bf16's 8 bits of mantissa allow (worst measured: outputs, values in [-1, 1], 4.0e-3 off; a
 * log-sum-exp of 6.0, 8.5e-3), the same with oneDNN held to AVX2, where the products run on
 * float32 rounded to bf16. */
static void test_attention_bf16(void)
{
    const struct attn_tol tol = {1e-2, 5e-3, 3e-3};
    CHECK(kn_ctx_set_matmul(ctx, KN_BF16) == 0);
    for (size_t i = 0; i < sizeof small_cases / sizeof small_cases[0]; i++)
        attention_case(&small_cases[i], tol);
    for (size_t i = 0; i < sizeof long_cases / sizeof long_cases[0]; i++)
        attention_case(&long_cases[i], tol);
    CHECK(kn_ctx_set_matmul(ctx, KN_F32) == 0);
}

/* ---- image ops ---- */

static void conv_case(const struct conv_case *c)
{
    int64_t Ho = conv_out_side(c, c->H), Wo = conv_out_side(c, c->W);
    int64_t xs[4] = {c->B, c->C, c->H, c->W}, ws[4] = {c->O, c->C, c->k, c->k};
    int64_t ys[4] = {c->B, c->O, Ho, Wo}, bs[1] = {c->O};
    float *xv = rand_buf(c->B * c->C * c->H * c->W, 1.0f);
    float *wv = rand_buf(c->O * c->C * c->k * c->k, 0.5f), *bv = rand_buf(c->O, 1.0f);
    kn_tensor x = make_f32(4, xs, xv), w = make(c->wdt, 4, ws, wv), b = make(KN_F16, 1, bs, bv);
    kn_tensor y = zeros(4, ys);
    CHECKF(kn_conv2d(ctx, &y, &x, &w, c->bias ? &b : NULL, c->stride, c->pad) == 0, "%s",
           err_msg());
    int64_t n = c->B * c->O * Ho * Wo;
    double *ref = malloc((size_t)n * sizeof(double)), *mag = malloc((size_t)n * sizeof(double));
    ref_conv2d(c, xv, wv, bv, ref, mag);
    CHECK(close_all(y.data, ref, mag, n, 1e-30, 1e-5, "conv2d"));
    free(ref);
    free(mag);
    free(xv);
    free(wv);
    free(bv);
    kn_free(ctx, &x);
    kn_free(ctx, &w);
    kn_free(ctx, &b);
    kn_free(ctx, &y);
}

static void test_conv2d(void)
{
    static const struct conv_case cases[] = {
        {2, 3, 11, 9, 5, 3, 1, 1, 1, KN_F32}, /* 3x3 pad 1 */
        {1, 4, 8, 10, 6, 3, 1, 1, 1, KN_F16},
        {2, 7, 5, 6, 3, 1, 1, 0, 1, KN_F32},      /* 1x1: direct GEMM */
        {1, 5, 8, 12, 7, 2, 2, 0, 1, KN_BF16},    /* 2x2 stride 2: patch embedding */
        {1, 3, 9, 11, 4, 3, 2, 1, 0, KN_F32},     /* 3x3 stride 2 pad 1 */
        {1, 2, 7, 7, 3, 3, 1, 0, 1, KN_F32},      /* no padding */
        {1, 3, 7, 6, 2, 5, 3, 2, 1, KN_F32},      /* 5x5 stride 3 pad 2 */
        {1, 64, 30, 1000, 4, 3, 1, 1, 1, KN_F16}, /* im2col split into row blocks */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        conv_case(&cases[i]);
}

static void test_upsample_transpose(void)
{
    int64_t xs[4] = {2, 3, 5, 7}, ys[4] = {2, 3, 10, 14};
    float *xv = rand_buf(2 * 3 * 5 * 7, 1.0f);
    kn_tensor x = make_f32(4, xs, xv), y = zeros(4, ys);
    CHECKF(kn_upsample_nearest2x(ctx, &y, &x) == 0, "%s", err_msg());
    const float *yd = y.data;
    int ok = 1;
    for (int p = 0; p < 6; p++)
        for (int i = 0; i < 10; i++)
            for (int j = 0; j < 14; j++)
                ok &= yd[(p * 10 + i) * 14 + j] == xv[(p * 5 + i / 2) * 7 + j / 2];
    CHECK(ok);

    int64_t as[3] = {2, 37, 45}, ts[3] = {2, 45, 37};
    float *av = rand_buf(2 * 37 * 45, 1.0f);
    kn_tensor a = make_f32(3, as, av), t = zeros(3, ts);
    CHECKF(kn_transpose(ctx, &t, &a) == 0, "%s", err_msg());
    const float *td = t.data;
    ok = 1;
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 37; i++)
            for (int j = 0; j < 45; j++)
                ok &= td[(b * 45 + j) * 37 + i] == av[(b * 37 + i) * 45 + j];
    CHECK(ok);
    free(xv);
    free(av);
    kn_free(ctx, &x);
    kn_free(ctx, &y);
    kn_free(ctx, &a);
    kn_free(ctx, &t);
}

/* ---- front-end errors ---- */

static int msg_has(const char *s)
{
    return strstr(err_msg(), s) != NULL;
}

static void test_shape_errors(void)
{
    int64_t xs[2] = {3, 5}, ws[2] = {4, 6}, ys[2] = {3, 4}, w4[2] = {4, 5}, bad[2] = {3, 5};
    kn_tensor x = zeros(2, xs), w = zeros(2, ws), y = zeros(2, ys), w5 = zeros(2, w4);
    kn_tensor yb = zeros(2, bad);
    CHECK(kn_linear(ctx, &y, &x, &w, NULL) == ERR_SHAPE);
    CHECKF(msg_has("[3, 5]") && msg_has("[4, 6]"), "%s", err_msg());
    CHECK(kn_linear(ctx, &yb, &x, &w5, NULL) == ERR_SHAPE);
    CHECKF(msg_has("[3, 5]") && msg_has("[3, 4]"), "%s", err_msg());
    CHECK(kn_linear(ctx, &y, &x, &w5, &x) == ERR_SHAPE); /* bias of the wrong shape */
    CHECK(kn_add(ctx, &y, &x, &x) == ERR_SHAPE);
    CHECKF(msg_has("[3, 4]") && msg_has("[3, 5]"), "%s", err_msg());

    kn_tensor h, i32;
    CHECK(kn_alloc(ctx, &h, KN_F16, 2, xs) == 0);
    CHECK(kn_activate(ctx, &h, &x, KN_ACT_SILU) == ERR_INVALID); /* mixed dtypes */
    CHECKF(msg_has("F16") && msg_has("F32"), "%s", err_msg());
    CHECK(kn_alloc(ctx, &i32, KN_I32, 2, xs) == 0);
    CHECK(kn_activate(ctx, &i32, &i32, KN_ACT_SILU) == ERR_INVALID);
    CHECKF(msg_has("I32"), "%s", err_msg());
    kn_free(ctx, &i32);
    kn_tensor xv = kn_reshape(&x, 2, xs);
    CHECK(kn_scale(ctx, &xv, &x, 2.0f) == 0); /* in place is fine for elementwise ops */
    int64_t sq[2] = {3, 3};
    kn_tensor alias = kn_view(&x, 0, 2, sq), w3 = kn_view(&w5, 0, 2, sq);
    CHECK(kn_linear(ctx, &alias, &alias, &w3, NULL) == ERR_INVALID);

    int64_t qs[3] = {1, 4, 6}, ks[3] = {1, 5, 8};
    kn_tensor q = zeros(3, qs), k = zeros(3, ks), o = zeros(3, qs);
    kn_attn_args args = {.heads = 4, .scale = 1.0f};
    CHECK(kn_attention(ctx, &o, &q, &q, &q, &args) == ERR_SHAPE); /* 4 heads into 6 */
    args.heads = 2;
    CHECK(kn_attention(ctx, &o, &q, &k, &k, &args) == ERR_SHAPE);
    CHECKF(msg_has("[1, 5, 8]") && msg_has("[1, 4, 6]"), "%s", err_msg());

    int64_t cx[4] = {1, 3, 8, 8}, cw[4] = {2, 4, 3, 3}, cy[4] = {1, 2, 8, 8};
    kn_tensor ix = zeros(4, cx), iw = zeros(4, cw), iy = zeros(4, cy);
    CHECK(kn_conv2d(ctx, &iy, &ix, &iw, NULL, 1, 1) == ERR_SHAPE);
    CHECKF(msg_has("[2, 4, 3, 3]") && msg_has("[1, 3, 8, 8]"), "%s", err_msg());
    CHECK(kn_group_norm(ctx, &ix, &ix, NULL, NULL, 2, 1e-6f) == ERR_SHAPE); /* 2 into 3 */
    CHECK(kn_upsample_nearest2x(ctx, &iy, &ix) == ERR_SHAPE);

    kn_tensor *all[] = {&x, &w, &y, &w5, &yb, &h, &q, &k, &o, &ix, &iw, &iy};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        kn_free(ctx, all[i]);
}

/* kn_attn_args' q/k RMSNorm is kn_rms_norm over each head of q and k, then the attention: on the
 * CPU the same ops run, so the results are identical. One of the two alone is refused. */
static void test_attention_qk_norm(void)
{
    int64_t qs[3] = {2, 9, 3 * 8}, ks[3] = {2, 11, 3 * 8}, hq[2] = {2 * 9 * 3, 8},
            hk[2] = {2 * 11 * 3, 8}, ws[1] = {8};
    float *vals[5] = {rand_buf(2 * 9 * 24, 1.5f), rand_buf(2 * 11 * 24, 1.5f),
                      rand_buf(2 * 11 * 24, 1.0f), rand_buf(8, 1.0f), rand_buf(8, 1.0f)};
    kn_tensor q = make_f32(3, qs, vals[0]), k = make_f32(3, ks, vals[1]), v = make_f32(3, ks, vals[2]);
    kn_tensor qw = make_f32(1, ws, vals[3]), kw = make_f32(1, ws, vals[4]);
    kn_tensor qn = zeros(3, qs), kn = zeros(3, ks), want = zeros(3, qs), got = zeros(3, qs);
    kn_tensor qh = kn_reshape(&q, 2, hq), kh = kn_reshape(&k, 2, hk);
    kn_tensor qnh = kn_reshape(&qn, 2, hq), knh = kn_reshape(&kn, 2, hk);
    CHECK(kn_rms_norm(ctx, &qnh, &qh, &qw, 1e-6f) == 0);
    CHECK(kn_rms_norm(ctx, &knh, &kh, &kw, 1e-6f) == 0);
    kn_attn_args plain = {.heads = 3, .scale = 0.35f};
    CHECK(kn_attention(ctx, &want, &qn, &kn, &v, &plain) == 0);
    kn_attn_args normed = {.heads = 3, .scale = 0.35f, .q_norm = &qw, .k_norm = &kw, .norm_eps = 1e-6f};
    CHECKF(kn_attention(ctx, &got, &q, &k, &v, &normed) == 0, "%s", err_msg());
    CHECK(memcmp(got.data, want.data, (size_t)kn_numel(&want) * sizeof(float)) == 0);
    normed.k_norm = NULL;
    CHECK(kn_attention(ctx, &got, &q, &k, &v, &normed) == ERR_INVALID);
    CHECKF(msg_has("q_norm and k_norm"), "%s", err_msg());
    normed.k_norm = &qn; /* not a [head_dim] vector */
    CHECK(kn_attention(ctx, &got, &q, &k, &v, &normed) < 0);
    kn_tensor *all[] = {&q, &k, &v, &qw, &kw, &qn, &kn, &want, &got};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        kn_free(ctx, all[i]);
    for (int i = 0; i < 5; i++)
        free(vals[i]);
}

/* kn_convert_from_f32 to BF16 (vectorised where the CPU allows) gives kn_f32_to_bf16's bits
 * for every kind of float: ties both ways, subnormals, the largest finite values that round
 * to infinity, infinities and NaNs of both signs, and random bit patterns; at every length
 * and offset, so that the vector part and the scalar tail meet anywhere. */
static void test_bf16_narrowing(void)
{
    enum { N = 4099 };
    static float src[N];
    static uint16_t got[N];
    const uint32_t special[] = {0x00000000u, 0x80000000u, 0x3f808000u, 0x3f818000u, 0x3f80ffffu,
                                0x00000001u, 0x807fffffu, 0x7f7fffffu, 0xff7fffffu, 0x7f800000u,
                                0xff800000u, 0x7fc00000u, 0xffc00001u, 0x7f800001u, 0xff812345u,
                                0x7fffffffu, 0xffffffffu, 0x3f7f8000u, 0x477fe000u};
    const size_t ns = sizeof special / sizeof special[0];
    for (size_t i = 0; i < N; i++) {
        test_rng_state ^= test_rng_state << 13;
        test_rng_state ^= test_rng_state >> 7;
        test_rng_state ^= test_rng_state << 17;
        uint32_t u = i % 3 == 0 ? special[i / 3 % ns] : (uint32_t)(test_rng_state >> 17);
        memcpy(&src[i], &u, 4);
    }
    int bad = 0;
    for (size_t off = 0; off < 17; off++)
        for (size_t n = 0; off + n <= N; n += n < 40 ? 1 : 997) {
            memset(got, 0xa5, sizeof got);
            kn_convert_from_f32(got + off, src + off, KN_BF16, n);
            for (size_t i = 0; i < N; i++) {
                uint16_t want = i >= off && i < off + n ? kn_f32_to_bf16(src[i]) : 0xa5a5;
                bad += got[i] != want;
            }
        }
    CHECKF(bad == 0, "%d elements differ from kn_f32_to_bf16", bad);
}

int main(void)
{
    if (kn_ctx_create(KN_CPU, 0, &ctx) != 0) {
        fprintf(stderr, "kn_ctx_create: %s\n", err_msg());
        return 1;
    }
    RUN(test_bf16_narrowing);
    RUN(test_linear_dtypes);
    RUN(test_linear_bf16);
    RUN(test_linear_act);
    RUN(test_embedding);
    RUN(test_layer_norm);
    RUN(test_rms_norm);
    RUN(test_qkv_split);
    RUN(test_weight_rows);
    RUN(test_group_norm);
    RUN(test_activations);
    RUN(test_elementwise);
    RUN(test_modulation);
    RUN(test_attention_small);
    RUN(test_attention_long);
    RUN(test_attention_bf16);
    RUN(test_attention_qk_norm);
    RUN(test_conv2d);
    RUN(test_upsample_transpose);
    RUN(test_shape_errors);
    RUN(test_half_activations);
    kn_ctx_destroy(ctx);
    CHECK_DONE();
}
