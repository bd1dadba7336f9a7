/* FlowMatchEulerDiscreteScheduler schedule (see scheduler.h), following diffusers 0.31.0's
 * schedulers/scheduling_flow_match_euler_discrete.py and numpy 1.26's linspace.
 *
 * Rounding is the point of this file: the constructor's sigmas are torch float32 tensors (a
 * Python-float scalar operand is rounded to float32 first), set_timesteps works in numpy
 * float64, and its result is rounded to float32 once. Products that feed an addition go
 * through mul_rn()/mul_rnf() so that no compiler contracts them into an FMA that Python never
 * performs. */
#include "engine/scheduler.h"

#include "common/err.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

_Static_assert(FLT_EVAL_METHOD == 0, "the scheduler needs float/double arithmetic evaluated as written");

static double mul_rn(double a, double b)
{
    volatile double p = a * b;
    return p;
}

static float mul_rnf(float a, float b)
{
    volatile float p = a * b;
    return p;
}

/* The constructor's sigma for training timestep t (1..num_train), in float32:
 * sigmas = t / num_train, then shift * sigmas / (1 + (shift - 1) * sigmas) unless dynamic. */
static float train_sigma(const scheduler_config *cfg, int t)
{
    float s = (float)t / (float)cfg->num_train_timesteps;
    if (cfg->use_dynamic_shifting)
        return s;
    double shift = cfg->shift;
    return mul_rnf((float)shift, s) / (1.0f + mul_rnf((float)(shift - 1.0), s));
}

/* numpy.linspace(start, stop, n)[i] for float64: y = i * step + start with step = delta/(n-1),
 * i / (n-1) * delta when step underflows to 0, and the last element forced to stop. */
static double linspace_at(double start, double stop, int n, int i)
{
    if (n > 1 && i == n - 1)
        return stop;
    double delta = stop - start;
    if (n <= 1)
        return mul_rn(0.0, delta) + start;
    double div = (double)(n - 1);
    double step = delta / div;
    if (step == 0.0)
        return mul_rn((double)i / div, delta) + start;
    return mul_rn((double)i, step) + start;
}

int fm_set_timesteps(const scheduler_config *cfg, int num_steps, double mu, fm_schedule *out)
{
    out->num_steps = 0;
    out->sigmas = out->timesteps = NULL;
    if (num_steps < 1)
        return err_set(ERR_RANGE, "scheduler: num_inference_steps %d is not positive", num_steps);
    if (cfg->num_train_timesteps < 1)
        return err_set(ERR_RANGE, "scheduler: num_train_timesteps %d is not positive", cfg->num_train_timesteps);
    if (!cfg->use_dynamic_shifting && !(cfg->shift > 0.0f && isfinite(cfg->shift)))
        return err_set(ERR_RANGE, "scheduler: shift %g is not a positive number", (double)cfg->shift);
    if (cfg->use_dynamic_shifting && !isfinite(mu))
        return err_set(ERR_RANGE, "scheduler: use_dynamic_shifting needs a finite mu, got %g", mu);

    float *sigmas = malloc(((size_t)num_steps + 1) * sizeof *sigmas);
    float *timesteps = malloc((size_t)num_steps * sizeof *timesteps);
    if (!sigmas || !timesteps) {
        free(sigmas);
        free(timesteps);
        return err_set(ERR_NOMEM, "scheduler: no memory for %d steps", num_steps);
    }

    int n_train = cfg->num_train_timesteps;
    /* sigma_max / sigma_min are .item() of the float32 tensor; _sigma_to_t multiplies in
     * float64. */
    double t_max = (double)train_sigma(cfg, n_train) * n_train;
    double t_min = (double)train_sigma(cfg, 1) * n_train;
    double shift = cfg->shift;
    double exp_mu = exp(mu);
    for (int i = 0; i < num_steps; i++) {
        double s = linspace_at(t_max, t_min, num_steps, i) / n_train;
        if (cfg->use_dynamic_shifting)
            s = exp_mu / (exp_mu + (1.0 / s - 1.0)); /* time_shift(mu, 1.0, s); x ** 1.0 is x */
        else
            s = mul_rn(shift, s) / (1.0 + mul_rn(shift - 1.0, s)); /* the shift, applied again */
        sigmas[i] = (float)s;
        timesteps[i] = sigmas[i] * (float)n_train;
    }
    sigmas[num_steps] = 0.0f;

    out->num_steps = num_steps;
    out->sigmas = sigmas;
    out->timesteps = timesteps;
    return 0;
}

void fm_schedule_free(fm_schedule *s)
{
    free(s->sigmas);
    free(s->timesteps);
    s->sigmas = s->timesteps = NULL;
    s->num_steps = 0;
}

float fm_step_dt(const fm_schedule *s, int i)
{
    return s->sigmas[i + 1] - s->sigmas[i];
}

double fm_calculate_shift(int image_seq_len, int base_seq_len, int max_seq_len, double base_shift,
                          double max_shift)
{
    /* (max_seq_len - base_seq_len) is a Python int, so a zero divisor raises there. */
    if (max_seq_len == base_seq_len)
        return NAN;
    double m = (max_shift - base_shift) / (double)(max_seq_len - base_seq_len);
    double b = base_shift - mul_rn(m, (double)base_seq_len);
    return mul_rn((double)image_seq_len, m) + b;
}

bool fm_slg_active(int i, int num_steps, double start, double stop)
{
    return (double)i > (double)num_steps * start && (double)i < (double)num_steps * stop;
}
