/* The FOCUS test-time controller inside the sampler (ericbill21/FOCUS, src/sd3/pipeline.py,
 * SD3ControllerPipeline.__call__): at every step the image-to-text maps of the conditional
 * sample are captured from the step's forward pass, the running cost is taken, its gradient
 * with respect to the latent computed by one reverse pass, and
 *
 *     v <- v + lambda * 2 (1 - tau + 1e-3) / (tau + 1e-3) * (1 - tau) * grad,  tau = (1000 - t) /
 * 1000
 *
 * is added to the guided velocity before the Euler step, in the reference's float32 op order.
 * The reference's separate batch-1 forward of the conditional prompt computes what the
 * conditional row of the guidance batch already computes (each row's result is independent of
 * the others here), so that row is captured instead. */
#ifndef FOCUS_ENGINE_FOCUS_CONTROL_H
#define FOCUS_ENGINE_FOCUS_CONTROL_H

#include "engine/focus_subjects.h"
#include "engine/mmdit.h"

#include <stdbool.h>

/* What a request asks of the controller. Off when n_subjects is 0 or lambda is 0: then the
 * sampler is the plain pipeline, bit for bit. */
typedef struct focus_request {
    focus_subject subjects[FOCUS_MAX_SUBJECTS];
    int n_subjects;
    float lambda;
    focus_heuristic heuristic;
} focus_request;

bool focus_request_active(const focus_request *r);

/* Checks a request for `prompt` at max_seq T5 tokens on a gh x gw patch grid, for `images`
 * images per prompt, and resolves its subjects into g: lambda finite, a known heuristic, one
 * image (the control steers one latent), a grid of at least 2 x 2, the subjects valid
 * (focus_subjects_resolve). The message names the field. */
int focus_request_check(const focus_request *r, const text_tokenizers *tok, const char *prompt,
                        int max_seq, int images, int64_t gh, int64_t gw, focus_groups *g);

typedef struct focus_control focus_control;

int focus_control_create(mmdit *dit, const focus_groups *g, const focus_request *r, int steps,
                         int64_t h, int64_t w, focus_control **out);
void focus_control_free(focus_control *c);

/* The step's forward pass (mmdit_forward's arguments, no skipped layers) capturing batch row
 * `sample`, then that row's cost (kept as step `step`'s) and its latent gradient. */
int focus_control_forward(focus_control *c, const kn_tensor *x, const float *t,
                          const kn_tensor *ctx_in, const kn_tensor *pooled, kn_tensor *out,
                          int sample, int step);

/* v += the control term at timestep t (v [1, C, h, w] F32, the guided velocity). */
int focus_control_apply(focus_control *c, kn_tensor *v, float t);

/* The control's factor lambda * 2 (1 - tau + 1e-3) / (tau + 1e-3) * (1 - tau) at timestep t,
 * rounded as torch's float32 ops round it. */
float focus_control_weight(float lambda, float t);

/* The latent gradient of the last step into out (n floats: its [1, C, h, w]). */
int focus_control_grad(const focus_control *c, float *out, size_t n);

/* The cost of each step done so far (steps values; NAN for a step not done). */
const float *focus_control_costs(const focus_control *c);

#endif
