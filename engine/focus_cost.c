/* FOCUS running costs and their gradients with respect to the attention maps (focus_cost.h).
 * Forward values follow src/losses.py and Controller.return_storage of the reference step by
 * step; each gradient is the analytic adjoint of those steps, in the reverse order. Values are
 * float32 as the reference's (its maps are cast to float32 before the cost); sums run in
 * double, in a fixed order. */
#include "engine/focus_cost.h"

#include "common/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define JSD_EPS 1e-10f /* src/losses.py: eps of the normalisation clamp and of the logs */

static const char *const heuristic_names[] = {
    [FOCUS_HEURISTIC_FOCUS] = "focus",
    [FOCUS_HEURISTIC_ATTEND_AND_EXCITE] = "attend_and_excite",
    [FOCUS_HEURISTIC_DIVIDE_AND_BIND] = "divide_and_bind",
};
enum { N_HEURISTICS = sizeof heuristic_names / sizeof heuristic_names[0] };

int focus_heuristic_parse(const char *name, focus_heuristic *out)
{
    for (int i = 0; i < N_HEURISTICS; i++)
        if (name && !strcmp(name, heuristic_names[i])) {
            *out = (focus_heuristic)i;
            return 0;
        }
    return err_set(ERR_INVALID,
                   "focus heuristic '%s' is not one of focus, attend_and_excite, divide_and_bind",
                   name ? name : "(none)");
}

const char *focus_heuristic_name(focus_heuristic h)
{
    return (unsigned)h < N_HEURISTICS ? heuristic_names[h] : "?";
}

/* ---- the blur: torchvision gaussian_blur(kernel_size 3, sigma 1), reflect padding ---- */

static int64_t reflect(int64_t i, int64_t n)
{
    return i < 0 ? -i : i >= n ? 2 * (n - 1) - i : i;
}

/* The 3 x 3 kernel as torchvision builds it: exp(-x^2 / 2) for x = -1, 0, 1, normalised, and
 * the outer product of that with itself, in float32. */
static void blur_kernel(float k[3][3])
{
    const float e = expf(-0.5f), sum = e + 1.0f + e;
    const float k1[3] = {e / sum, 1.0f / sum, e / sum};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            k[i][j] = k1[i] * k1[j];
}

/* out = blur(in) over each of `maps` gh x gw grids, or with `adjoint` its transpose:
 * out = blur^T(in) (the gradient of the input from the output's). */
static void blur(float *out, const float *in, int64_t maps, int64_t gh, int64_t gw, int adjoint)
{
    float k[3][3];
    blur_kernel(k);
    const int64_t n = gh * gw;
    if (adjoint) memset(out, 0, (size_t)(maps * n) * sizeof *out);
    for (int64_t m = 0; m < maps; m++) {
        const float *src = in + m * n;
        float *dst = out + m * n;
        for (int64_t y = 0; y < gh; y++)
            for (int64_t x = 0; x < gw; x++) {
                double acc = 0;
                for (int dy = 0; dy < 3; dy++)
                    for (int dx = 0; dx < 3; dx++) {
                        const int64_t at = reflect(y + dy - 1, gh) * gw + reflect(x + dx - 1, gw);
                        if (adjoint)
                            dst[at] += k[dy][dx] * src[y * gw + x];
                        else
                            acc += (double)k[dy][dx] * src[at];
                    }
                if (!adjoint) dst[y * gw + x] = (float)acc;
            }
    }
}

/* ---- the normalised generalised Jensen-Shannon divergence of T maps ---- */

/* JSD_n of the T rows q[i] (n values each), and when gq is not NULL, gq[i] += w * d JSD / d q[i].
 * scratch holds 2 * T * n + n floats, sums T doubles. */
static double jsd(const float *const *q, int T, int64_t n, float *const *gq, float w,
                  float *scratch, double *sums)
{
    float *cube = scratch, *qn = scratch + (size_t)T * n, *mix = qn + (size_t)T * n;
    for (int i = 0; i < T; i++) {
        double s = 0;
        for (int64_t p = 0; p < n; p++) {
            const float v = q[i][p];
            cube[i * n + p] = v * v * v;
            s += cube[i * n + p];
        }
        sums[i] = s < JSD_EPS ? JSD_EPS : s;
        for (int64_t p = 0; p < n; p++)
            qn[i * n + p] = (float)(cube[i * n + p] / sums[i]);
    }
    for (int64_t p = 0; p < n; p++) {
        double s = 0;
        for (int i = 0; i < T; i++)
            s += qn[i * n + p];
        mix[p] = (float)(s / T);
    }
    double kl = 0;
    for (int i = 0; i < T; i++)
        for (int64_t p = 0; p < n; p++) {
            const float v = qn[i * n + p];
            kl += (double)v * ((double)logf(v + JSD_EPS) - (double)logf(mix[p] + JSD_EPS));
        }
    const double scale = 1.0 / ((double)T * log((double)T));
    if (gq) {
        /* d/dqn[i,p] = scale (log(qn+e) + qn/(qn+e) - log(m+e) - m/(m+e)); then through the
         * normalisation (a clamped sum is a constant) and the cube. */
        for (int i = 0; i < T; i++) {
            float *g = cube + (size_t)i * n; /* the cube row is not needed any more */
            double dot = 0;
            for (int64_t p = 0; p < n; p++) {
                const double v = qn[i * n + p], m = mix[p];
                g[p] = (float)(scale * (log(v + JSD_EPS) + v / (v + JSD_EPS) - log(m + JSD_EPS) -
                                        m / (m + JSD_EPS)));
                dot += (double)g[p] * v;
            }
            const int clamped = sums[i] == JSD_EPS;
            for (int64_t p = 0; p < n; p++) {
                const double x = q[i][p];
                const double dcube = clamped ? g[p] / sums[i] : (g[p] - dot) / sums[i];
                gq[i][p] += (float)(w * dcube * 3.0 * x * x);
            }
        }
    }
    return kl * scale;
}

/* ---- the heuristics, on the blurred maps emb [T, n]; gemb (if not NULL) += d cost / d emb ---- */

static int focus_term(const focus_groups *g, const float *emb, int64_t n, float *gemb, double *cost)
{
    const int K = g->n_subjects;
    int widest = 0, n_within = 0;
    for (int k = 0; k < K; k++) {
        const int size = g->first[k + 1] - g->first[k];
        if (size > widest) widest = size;
        n_within += size > 1;
    }
    const int T = widest > K ? widest : K;
    float *scratch = malloc(((size_t)2 * T * n + n + (size_t)K * n * 2) * sizeof *scratch);
    double *sums = malloc((size_t)T * sizeof *sums);
    if (!scratch || !sums) {
        free(scratch);
        free(sums);
        return err_set(ERR_NOMEM, "focus cost: out of memory");
    }
    float *mix = scratch + (size_t)2 * T * n + n, *gmix = mix + (size_t)K * n;
    const float *rows[FOCUS_MAX_TOKENS];
    float *grows[FOCUS_MAX_TOKENS];
    double within = 0, between = 0;
    for (int k = 0; k < K; k++) {
        const int f = g->first[k], size = g->first[k + 1] - f;
        for (int i = 0; i < size; i++) {
            rows[i] = emb + (size_t)(f + i) * n;
            grows[i] = gemb ? gemb + (size_t)(f + i) * n : NULL;
        }
        if (size > 1)
            within += jsd(rows, size, n, gemb ? grows : NULL, 0.5f / n_within, scratch, sums);
        for (int64_t p = 0; p < n; p++) {
            double s = 0;
            for (int i = 0; i < size; i++)
                s += rows[i][p];
            mix[k * n + p] = (float)(s / size);
        }
    }
    if (K > 1) {
        memset(gmix, 0, (size_t)K * n * sizeof *gmix);
        for (int k = 0; k < K; k++) {
            rows[k] = mix + (size_t)k * n;
            grows[k] = gmix + (size_t)k * n;
        }
        between = 1.0 - jsd(rows, K, n, gemb ? grows : NULL, -0.5f, scratch, sums);
        for (int k = 0; gemb && k < K; k++) {
            const int f = g->first[k], size = g->first[k + 1] - f;
            for (int i = 0; i < size; i++)
                for (int64_t p = 0; p < n; p++)
                    gemb[(size_t)(f + i) * n + p] += gmix[k * n + p] / size;
        }
    }
    free(scratch);
    free(sums);
    if (n_within) within /= n_within;
    *cost = (within + between) / 2;
    return 0;
}

/* attend_and_excite_loss: emb normalised over the tokens at each pixel, each subject's mean
 * map, its maximum; cost = relu(1 - the smallest maximum). The gradient goes to the pixel of
 * that maximum (the first, on ties). */
static int attend_and_excite(const focus_groups *g, const float *emb, int64_t n, float *gemb,
                             double *cost)
{
    const int T = g->n_tok;
    double best = INFINITY;
    int64_t best_p = 0;
    int best_k = 0;
    for (int k = 0; k < g->n_subjects; k++) {
        const int f = g->first[k], size = g->first[k + 1] - f;
        double top = -INFINITY;
        int64_t top_p = 0;
        for (int64_t p = 0; p < n; p++) {
            double col = 0, grp = 0;
            for (int t = 0; t < T; t++)
                col += emb[(size_t)t * n + p];
            for (int i = 0; i < size; i++)
                grp += emb[(size_t)(f + i) * n + p] / col;
            grp /= size;
            if (grp > top) top = grp, top_p = p;
        }
        if (top < best) best = top, best_p = top_p, best_k = k;
    }
    *cost = best < 1.0 ? 1.0 - best : 0.0;
    if (!gemb || best >= 1.0) return 0;
    /* d cost / d A[t, p*] = -1/|S_k| for t in subject k; A = emb / colsum. */
    const int f = g->first[best_k], size = g->first[best_k + 1] - f;
    double col = 0, dot = 0;
    for (int t = 0; t < T; t++)
        col += emb[(size_t)t * n + best_p];
    for (int i = 0; i < size; i++)
        dot += -1.0 / size * emb[(size_t)(f + i) * n + best_p];
    for (int t = 0; t < T; t++) {
        const double ga = t >= f && t < f + size ? -1.0 / size : 0.0;
        gemb[(size_t)t * n + best_p] += (float)(ga / col - dot / (col * col));
    }
    return 0;
}

/* Total variation of one subject's mean map normalised to mean 1; with g not NULL, g += w *
 * d tv / d map, gu then being scratch of gh * gw doubles. */
static double total_variation(const float *map, int64_t gh, int64_t gw, float *g, double w,
                              double *gu)
{
    const int64_t n = gh * gw;
    double sum = 0, tv = 0;
    for (int64_t p = 0; p < n; p++)
        sum += map[p];
    const double to_unit = (double)n / sum, wh = 1.0 / ((gh - 1) * gw), ww = 1.0 / (gh * (gw - 1));
    if (g) memset(gu, 0, (size_t)n * sizeof *gu);
    for (int64_t y = 0; y < gh; y++)
        for (int64_t x = 0; x < gw; x++) {
            const int64_t p = y * gw + x;
            for (int dir = 0; dir < 2; dir++) {
                const int64_t q = dir ? p + 1 : p + gw;
                if (dir ? x + 1 >= gw : y + 1 >= gh) continue;
                const double d = (double)(float)(map[q] * to_unit) - (float)(map[p] * to_unit);
                const double wt = dir ? ww : wh, sgn = d > 0 ? 1.0 : d < 0 ? -1.0 : 0.0;
                tv += wt * fabs(d);
                if (g) gu[q] += wt * sgn, gu[p] -= wt * sgn;
            }
        }
    if (g) {
        double dot = 0;
        for (int64_t p = 0; p < n; p++)
            dot += gu[p] * map[p];
        for (int64_t p = 0; p < n; p++)
            g[p] += (float)(w * (to_unit * gu[p] - to_unit / sum * dot));
    }
    return tv;
}

/* divide_and_bind_loss: cost = -(the smallest total variation of the subjects' mean maps). */
static int divide_and_bind(const focus_groups *g, const float *emb, int64_t gh, int64_t gw,
                           float *gemb, double *cost)
{
    const int64_t n = gh * gw;
    float *maps = malloc((size_t)(g->n_subjects + 1) * n * sizeof *maps);
    double *gu = malloc((size_t)n * sizeof *gu);
    if (!maps || !gu) {
        free(maps);
        free(gu);
        return err_set(ERR_NOMEM, "focus cost: out of memory");
    }
    float *gmap = maps + (size_t)g->n_subjects * n;
    double least = INFINITY;
    int least_k = 0;
    for (int k = 0; k < g->n_subjects; k++) {
        const int f = g->first[k], size = g->first[k + 1] - f;
        for (int64_t p = 0; p < n; p++) {
            double s = 0;
            for (int i = 0; i < size; i++)
                s += emb[(size_t)(f + i) * n + p];
            maps[k * n + p] = (float)(s / size);
        }
        const double tv = total_variation(maps + k * n, gh, gw, NULL, 0, NULL);
        if (tv < least) least = tv, least_k = k;
    }
    *cost = -least;
    if (gemb) {
        memset(gmap, 0, (size_t)n * sizeof *gmap);
        total_variation(maps + least_k * n, gh, gw, gmap, -1.0, gu);
        const int f = g->first[least_k], size = g->first[least_k + 1] - f;
        for (int i = 0; i < size; i++)
            for (int64_t p = 0; p < n; p++)
                gemb[(size_t)(f + i) * n + p] += gmap[p] / size;
    }
    free(maps);
    free(gu);
    return 0;
}

static int check_groups(const focus_groups *g, int blocks, int64_t gh, int64_t gw)
{
    if (g->n_subjects < 1 || g->n_subjects > FOCUS_MAX_SUBJECTS)
        return err_set(ERR_INVALID, "focus cost: %d subjects (1 to %d)", g->n_subjects,
                       FOCUS_MAX_SUBJECTS);
    if (g->first[0] != 0 || g->first[g->n_subjects] != g->n_tok || g->n_tok > FOCUS_MAX_TOKENS)
        return err_set(ERR_INVALID, "focus cost: token groups do not cover the %d tokens",
                       g->n_tok);
    for (int k = 0; k < g->n_subjects; k++)
        if (g->first[k + 1] <= g->first[k])
            return err_set(ERR_INVALID, "focus cost: subject %d has no tokens", k + 1);
    if (blocks < 1 || gh < 2 || gw < 2)
        return err_set(ERR_INVALID,
                       "focus cost: %d blocks of %lld x %lld maps (need 1 block "
                       "and 2 x 2)",
                       blocks, (long long)gh, (long long)gw);
    return 0;
}

int focus_cost(const focus_groups *g, focus_heuristic h, const float *maps, int blocks, int64_t gh,
               int64_t gw, float *cost, float *dmaps)
{
    int rc = check_groups(g, blocks, gh, gw);
    if (rc < 0) return rc;
    if ((unsigned)h >= N_HEURISTICS) return err_set(ERR_INVALID, "focus cost: heuristic %d", h);
    const int64_t n = gh * gw, size = (int64_t)g->n_tok * n;
    float *mean = malloc((size_t)size * 3 * sizeof *mean);
    if (!mean) return err_set(ERR_NOMEM, "focus cost: out of memory");
    float *emb = mean + size, *gemb = dmaps ? emb + size : NULL;
    for (int64_t i = 0; i < size; i++) {
        double s = 0;
        for (int b = 0; b < blocks; b++)
            s += maps[b * size + i];
        mean[i] = (float)(s / blocks);
    }
    blur(emb, mean, g->n_tok, gh, gw, 0);
    if (gemb) memset(gemb, 0, (size_t)size * sizeof *gemb);
    double c = 0;
    if (h == FOCUS_HEURISTIC_FOCUS)
        rc = focus_term(g, emb, n, gemb, &c);
    else if (h == FOCUS_HEURISTIC_ATTEND_AND_EXCITE)
        rc = attend_and_excite(g, emb, n, gemb, &c);
    else
        rc = divide_and_bind(g, emb, gh, gw, gemb, &c);
    if (rc == 0 && dmaps) {
        /* Back through the blur (into mean's storage) and the block mean. */
        blur(mean, gemb, g->n_tok, gh, gw, 1);
        for (int b = 0; b < blocks; b++)
            for (int64_t i = 0; i < size; i++)
                dmaps[b * size + i] = mean[i] / blocks;
    }
    free(mean);
    if (rc == 0) *cost = (float)c;
    return rc;
}
