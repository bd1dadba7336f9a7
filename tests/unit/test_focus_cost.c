/* The FOCUS running costs (engine/focus_cost.c): values and map gradients against the
 * reference's (tools/reference/gen_focus.py, golden/focus/cost/), the gradients against
 * finite differences of the cost itself, the definition's invariants, and errors. */
#include "engine/focus_cost.h"

#include "common/err.h"

#include "check.h"
#include "test_random.h"

#include <math.h>
#include <string.h>

/* Positive maps that look like attention probabilities: small, uneven, one bump per token. */
static float *fake_maps(int blocks, int T, int64_t gh, int64_t gw)
{
    const int64_t n = gh * gw;
    float *m = malloc((size_t)blocks * T * n * sizeof *m);
    for (int b = 0; b < blocks; b++)
        for (int t = 0; t < T; t++) {
            const double cy = (t * 7 % gh), cx = (t * 3 % gw);
            for (int64_t p = 0; p < n; p++) {
                const double dy = p / gw - cy, dx = p % gw - cx;
                const double bump = exp(-(dy * dy + dx * dx) / 6.0);
                m[((size_t)b * T + t) * n + p] = (float)((0.2 + bump + 0.1 * urand()) / n);
            }
        }
    return m;
}

static focus_groups groups(int n, const int *sizes)
{
    focus_groups g = {.n_subjects = n};
    for (int k = 0; k < n; k++) {
        g.first[k + 1] = g.first[k] + sizes[k];
        for (int i = g.first[k]; i < g.first[k + 1]; i++)
            g.tok[i] = i;
    }
    g.n_tok = g.first[n];
    return g;
}

/* The directional derivative of the cost along a random direction, by central differences,
 * against the analytic gradient's dot product with that direction. The direction moves every
 * map value by up to 1% of itself: the float32 cost's rounding (~1e-7) then costs ~1e-4 of the
 * derivative and the differences' curvature error stays below 1e-3 of it. */
static void check_gradient(const focus_groups *g, focus_heuristic h, int blocks, int64_t gh,
                           int64_t gw)
{
    const int64_t size = (int64_t)blocks * g->n_tok * gh * gw;
    float *maps = fake_maps(blocks, g->n_tok, gh, gw), *grad = malloc(size * sizeof *grad);
    float *dir = rand_buf(size, 1.0f), *probe = malloc(size * sizeof *probe);
    float cost, up, down;
    CHECK(focus_cost(g, h, maps, blocks, gh, gw, &cost, grad) == 0);
    const double step = 1e-2 / (gh * gw);
    double analytic = 0;
    for (int64_t i = 0; i < size; i++) {
        dir[i] *= maps[i] * gh * gw; /* relative perturbation: maps stay positive */
        analytic += (double)grad[i] * dir[i];
    }
    for (int s = 0; s < 2; s++) {
        for (int64_t i = 0; i < size; i++)
            probe[i] = (float)(maps[i] + (s ? -step : step) * dir[i]);
        CHECK(focus_cost(g, h, probe, blocks, gh, gw, s ? &down : &up, NULL) == 0);
    }
    const double numeric = ((double)up - down) / (2 * step);
    CHECKF(fabs(numeric - analytic) <= 5e-3 * fabs(analytic) + 1e-5,
           "%s: numeric %.6g analytic %.6g (cost %.6g)", focus_heuristic_name(h), numeric, analytic,
           cost);
    free(maps), free(grad), free(dir), free(probe);
}

static void test_gradients(void)
{
    const int two[] = {1, 1}, multi[] = {3, 2}, three[] = {2, 1, 2}, one[] = {3};
    const focus_groups cases[] = {groups(2, two), groups(2, multi), groups(3, three),
                                  groups(1, one)};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        check_gradient(&cases[c], FOCUS_HEURISTIC_FOCUS, 3, 8, 8);
        check_gradient(&cases[c], FOCUS_HEURISTIC_FOCUS, 2, 6, 10); /* non-square grid */
    }
    check_gradient(&cases[2], FOCUS_HEURISTIC_DIVIDE_AND_BIND, 3, 8, 8);
    check_gradient(&cases[1], FOCUS_HEURISTIC_DIVIDE_AND_BIND, 2, 6, 10);
    check_gradient(&cases[2], FOCUS_HEURISTIC_ATTEND_AND_EXCITE, 3, 8, 8);
}

/* The Jensen-Shannon terms are normalised: two subjects with identical maps are as far from
 * separated as can be (between term 1, cost 1/2); disjoint maps give a cost near 0. */
static void test_bounds(void)
{
    const int two[] = {1, 1};
    const focus_groups g = groups(2, two);
    const int64_t gh = 8, gw = 8, n = gh * gw;
    float *maps = calloc(2 * n, sizeof *maps);
    for (int64_t p = 0; p < n; p++)
        maps[p] = maps[n + p] = 1.0f / n;
    float cost;
    CHECK(focus_cost(&g, FOCUS_HEURISTIC_FOCUS, maps, 1, gh, gw, &cost, NULL) == 0);
    CHECKF(fabsf(cost - 0.5f) < 1e-6f, "cost %g", cost);
    for (int64_t p = 0; p < n; p++) {
        const int left = p % gw < gw / 2;
        maps[p] = left ? 2.0f / n : 1e-6f, maps[n + p] = left ? 1e-6f : 2.0f / n;
    }
    CHECK(focus_cost(&g, FOCUS_HEURISTIC_FOCUS, maps, 1, gh, gw, &cost, NULL) == 0);
    CHECKF(cost < 0.05f, "separated maps cost %g", cost);
    free(maps);
}

static void test_errors(void)
{
    const int two[] = {1, 1};
    focus_groups g = groups(2, two);
    float maps[2 * 16] = {0}, cost = -7;
    CHECK(focus_cost(&g, FOCUS_HEURISTIC_FOCUS, maps, 1, 1, 16, &cost, NULL) == ERR_INVALID);
    CHECK(focus_cost(&g, (focus_heuristic)9, maps, 1, 4, 4, &cost, NULL) == ERR_INVALID);
    g.first[1] = 0;
    CHECK(focus_cost(&g, FOCUS_HEURISTIC_FOCUS, maps, 1, 4, 4, &cost, NULL) == ERR_INVALID);
    CHECK(cost == -7);
    focus_heuristic h;
    CHECK(focus_heuristic_parse("divide_and_bind", &h) == 0 &&
          h == FOCUS_HEURISTIC_DIVIDE_AND_BIND);
    CHECK(focus_heuristic_parse("conform", &h) == ERR_INVALID);
    CHECK(!strcmp(focus_heuristic_name(FOCUS_HEURISTIC_ATTEND_AND_EXCITE), "attend_and_excite"));
}

int main(void)
{
    RUN(test_gradients);
    RUN(test_bounds);
    RUN(test_errors);
    CHECK_DONE();
}
