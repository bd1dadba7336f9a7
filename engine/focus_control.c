/* The FOCUS controller's step (focus_control.h): capture, cost, gradient, control term. */
#include "engine/focus_control.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "kernels/kn_ops.h"

#include <math.h>
#include <stdlib.h>

struct focus_control {
    mmdit *dit;
    focus_groups groups;
    focus_heuristic heuristic;
    float lambda;
    mmdit_focus *capture;
    kn_tensor grad; /* [1, C, h, w] F32: d cost / d latent of the last step */
    float *dmaps, *costs;
    int steps;
};

bool focus_request_active(const focus_request *r)
{
    return r->n_subjects > 0 && r->lambda != 0.0f;
}

int focus_request_check(const focus_request *r, const text_tokenizers *tok, const char *prompt,
                        int max_seq, int images, int64_t gh, int64_t gw, focus_groups *g)
{
    if (!isfinite(r->lambda)) return err_set(ERR_RANGE, "focus_lambda: not a finite number");
    if ((unsigned)r->heuristic > FOCUS_HEURISTIC_DIVIDE_AND_BIND)
        return err_set(ERR_INVALID, "focus_heuristic: %d is not a heuristic", r->heuristic);
    if (images != 1)
        return err_set(ERR_RANGE,
                       "count: %d images, but the FOCUS control steers one latent "
                       "(count 1)",
                       images);
    if (gh < 2 || gw < 2)
        return err_set(ERR_RANGE,
                       "width x height: a %lld x %lld patch grid is too small for "
                       "the FOCUS maps' blur (2 x 2 at least)",
                       (long long)gw, (long long)gh);
    int rc = focus_subjects_resolve(tok, prompt, max_seq, r->subjects, r->n_subjects, g);
    return rc < 0 ? err_prefix(rc, "subjects: ") : 0;
}

int focus_control_create(mmdit *dit, const focus_groups *g, const focus_request *r, int steps,
                         int64_t h, int64_t w, focus_control **out)
{
    const mmdit_config *mc = mmdit_get_config(dit);
    const int64_t p = mc->patch_size, N = (h / p) * (w / p);
    focus_control *c = xcalloc(1, sizeof *c);
    c->dit = dit, c->groups = *g, c->heuristic = r->heuristic, c->lambda = r->lambda;
    c->steps = steps;
    c->dmaps = xmalloc((size_t)mc->num_layers * g->n_tok * N * sizeof *c->dmaps);
    c->costs = xmalloc((size_t)steps * sizeof *c->costs);
    for (int i = 0; i < steps; i++)
        c->costs[i] = NAN;
    int rc = mmdit_focus_create(dit, g->tok, g->n_tok, 0, &c->capture);
    if (rc == 0)
        rc = kn_alloc(mmdit_ctx(dit), &c->grad, KN_F32, 4, (int64_t[]){1, mc->in_channels, h, w});
    if (rc < 0) {
        focus_control_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void focus_control_free(focus_control *c)
{
    if (!c) return;
    kn_free(mmdit_ctx(c->dit), &c->grad);
    mmdit_focus_free(c->capture);
    free(c->dmaps);
    free(c->costs);
    free(c);
}

int focus_control_forward(focus_control *c, const kn_tensor *x, const float *t,
                          const kn_tensor *ctx_in, const kn_tensor *pooled, kn_tensor *out,
                          int sample, int step)
{
    if (step < 0 || step >= c->steps)
        return err_set(ERR_RANGE, "focus control: step %d of %d", step, c->steps);
    int64_t gh, gw;
    int rc = mmdit_focus_set_sample(c->capture, sample);
    if (rc == 0) rc = mmdit_forward_focus(c->dit, x, t, ctx_in, pooled, out, c->capture);
    if (rc < 0) return rc;
    const float *maps = mmdit_focus_maps(c->capture, &gh, &gw);
    const int blocks = mmdit_get_config(c->dit)->num_layers;
    if ((rc = focus_cost(&c->groups, c->heuristic, maps, blocks, gh, gw, &c->costs[step],
                         c->dmaps)) < 0)
        return err_prefix(rc, "focus cost: ");
    return mmdit_focus_grad(c->dit, c->capture, c->dmaps, &c->grad);
}

float focus_control_weight(float lambda, float t)
{
    /* t_nom = (1000 - t) / 1000; sigma = 2 * (1 - t_nom + 1e-3) / (t_nom + 1e-3);
     * lambda * sigma * (1 - t_nom): each op one float32 rounding, left to right. */
    const float eps = 1e-3f;
    const float t_nom = (1000.0f - t) / 1000.0f;
    const float sigma = 2.0f * ((1.0f - t_nom) + eps) / (t_nom + eps);
    const float scaled = lambda * sigma;
    return scaled * (1.0f - t_nom);
}

int focus_control_apply(focus_control *c, kn_tensor *v, float t)
{
    return kn_add_scaled(mmdit_ctx(c->dit), v, v, focus_control_weight(c->lambda, t), &c->grad);
}

int focus_control_grad(const focus_control *c, float *out, size_t n)
{
    if (n != (size_t)kn_numel(&c->grad))
        return err_set(ERR_INVALID, "focus gradient: room for %zu floats, it holds %lld", n,
                       (long long)kn_numel(&c->grad));
    return kn_read_f32(mmdit_ctx(c->dit), &c->grad, out);
}

const float *focus_control_costs(const focus_control *c)
{
    return c->costs;
}
