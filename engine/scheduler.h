/* FlowMatchEulerDiscreteScheduler as diffusers 0.31.0 builds its schedule for
 * StableDiffusion3Pipeline: the sigmas and timesteps of set_timesteps(N), bit for bit, and the
 * Euler step size per step; plus two rules from later diffusers SD3 pipelines, the
 * dynamic-shifting mu and the skip-layer guidance window. The tensor update is the caller's.
 *
 * The Euler step, as diffusers computes it (scheduler.step):
 *   fp32 pipeline:  prev = sample + dt * v, with dt = fm_step_dt(s, i): a float32 multiply and
 *                   then a float32 add, each rounded (two torch kernels, never fused), i.e.
 *                   kn_add_scaled(prev, sample, dt, v) with no FMA.
 *   fp16/bf16:      dt * v is rounded to the 16-bit dtype (a 0-dim float32 tensor does not
 *                   promote a 16-bit one), the add runs in float32 against the float32-upcast
 *                   sample, and prev is rounded back to the 16-bit dtype.
 * Step i uses sigmas[i] and sigmas[i+1]; the transformer receives timesteps[i] unchanged (a
 * float such as 991.330872, neither divided by 1000 nor rounded).
 *
 * Not covered: custom sigma lists, img2img start indices, stochastic sampling. */
#ifndef FOCUS_ENGINE_SCHEDULER_H
#define FOCUS_ENGINE_SCHEDULER_H

#include "engine/model_config.h"

#include <stdbool.h>

typedef struct fm_schedule {
    int num_steps;
    float *sigmas;    /* num_steps + 1 values, from 1 (or the shifted start) down to a final 0 */
    float *timesteps; /* num_steps values: float32(sigma * num_train_timesteps) */
} fm_schedule;

/* set_timesteps(num_steps): the constructor's float32 sigmas give sigma_max and sigma_min, a
 * float64 numpy linspace between them is shifted again (or time-shifted with mu when
 * cfg->use_dynamic_shifting) and rounded to float32. mu is ignored without dynamic shifting.
 * Errors: ERR_RANGE for num_steps < 1 or a config value outside what diffusers accepts
 * (num_train_timesteps < 1, shift <= 0, mu not finite when it is needed). */
int fm_set_timesteps(const scheduler_config *cfg, int num_steps, double mu, fm_schedule *out);
void fm_schedule_free(fm_schedule *s);

/* sigmas[i+1] - sigmas[i] in float32 (negative): the Euler step of denoising step i. */
float fm_step_dt(const fm_schedule *s, int i);

/* calculate_shift() of the diffusers pipelines that pass mu (SD3 after 0.31, Flux), in
 * float64: the line through (base_seq_len, base_shift) and (max_seq_len, max_shift) at
 * image_seq_len = (latent_h / patch_size) * (latent_w / patch_size). The pipeline passes the
 * scheduler config's base_image_seq_len, max_image_seq_len, base_shift and max_shift; the
 * config always holds max_shift (diffusers default 1.15), so the pipeline's 1.16 fallback never
 * applies. diffusers 0.31.0's SD3 pipeline passes no mu at all (with use_dynamic_shifting,
 * set_timesteps raises). The shifts must be the config's float64 values: a max_shift rounded to
 * float32 moves some sigmas by one float32 ulp. */
double fm_calculate_shift(int image_seq_len, int base_seq_len, int max_seq_len, double base_shift,
                          double max_shift);

/* Skip-layer guidance runs on step i (0-based) of num_steps when
 * i > num_steps * start and i < num_steps * stop, in float64 as Python evaluates it; start and
 * stop are the user's values as float64 (0.01 and 0.2 by default: steps 1..5 of 28). A start
 * rounded to float32 first would change the window, e.g. step 1 of 100. */
bool fm_slg_active(int i, int num_steps, double start, double stop);

#endif
