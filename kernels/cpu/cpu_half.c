/* CPU backend: 16-bit (F16, BF16) activations. The CPU ops compute in float32; an op given
 * 16-bit activations runs on float32 twins of them (inputs widened exactly) and its outputs are
 * rounded back to the tensor's dtype, once per op, as a GPU kernel that accumulates in float32
 * and stores 16 bits does. This is the precision reference the CUDA backend's 16-bit modes are
 * checked against and what lets the engine's bf16 and fp16 modes run anywhere; it is not fast
 * (two conversions per op). */
#include "kernels/cpu/cpu_ops.h"
#include "kernels/kn_convert.h"

#include "common/err.h"

#include <stdlib.h>

static __thread cpu_half half;

cpu_half *cpu_half_begin(void)
{
    half.n = 0;
    return &half;
}

static kn_tensor *new_twin(cpu_half *h, const kn_tensor *t)
{
    size_t n = (size_t)kn_numel(t);
    void *data = malloc(n * sizeof(float) + sizeof(float));
    if (!data) {
        err_set(ERR_NOMEM, "no memory for a float32 copy of %zu %s values", n,
                kn_dtype_name(t->dtype));
        longjmp(h->no_memory, 1);
    }
    kn_tensor *w = &h->twin[h->n];
    *w = *t;
    w->dtype = KN_F32;
    w->data = data;
    h->dst[h->n++] = NULL;
    return w;
}

const kn_tensor *cpu_half_in(cpu_half *h, const kn_tensor *t)
{
    if (!t || t->dtype == KN_F32) return t;
    kn_tensor *w = new_twin(h, t);
    kn_convert_to_f32(w->data, t->data, t->dtype, (size_t)kn_numel(t));
    return w;
}

kn_tensor *cpu_half_out(cpu_half *h, kn_tensor *t, int load)
{
    if (t->dtype == KN_F32) return t;
    kn_tensor *w = new_twin(h, t);
    if (load) kn_convert_to_f32(w->data, t->data, t->dtype, (size_t)kn_numel(t));
    h->dst[h->n - 1] = t;
    return w;
}

int cpu_half_finish(cpu_half *h, int rc)
{
    for (int i = 0; i < h->n; i++) {
        if (rc == 0 && h->dst[i])
            kn_convert_from_f32(h->dst[i]->data, h->twin[i].data, h->dst[i]->dtype,
                                (size_t)kn_numel(h->dst[i]));
        free(h->twin[i].data);
    }
    return rc;
}
