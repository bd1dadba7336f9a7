/* PNG text chunks from generation parameters (see gen_text.h). */
#include "engine/gen_text.h"

#include <stdio.h>

static void add(gen_text *t, const char *key, const char *value)
{
    t->kv[t->n++] = (png_out_kv){key, value};
}

static void add_slg(gen_text *t, const gen_params *p)
{
    size_t n = 0;
    for (int i = 0; i < p->slg_count && n < sizeof t->slg; i++)
        n +=
            (size_t)snprintf(t->slg + n, sizeof t->slg - n, "%s%d", i ? "," : "", p->slg_layers[i]);
    if (n < sizeof t->slg)
        snprintf(t->slg + n, sizeof t->slg - n, " scale %g window %g..%g", (double)p->slg_scale,
                 p->slg_start, p->slg_stop);
    add(t, "skip_layer_guidance", t->slg);
}

/* The subjects as "horse | bear", or by their positions ("t5=1;clip=2 | t5=5;clip=5"). */
static void add_focus(gen_text *t, const focus_request *r)
{
    size_t n = 0;
    const size_t cap = sizeof t->focus_subjects;
    t->focus_subjects[0] = 0;
    for (int k = 0; k < r->n_subjects && n < cap; k++) {
        const focus_subject *s = &r->subjects[k];
        n += (size_t)snprintf(t->focus_subjects + n, cap - n, "%s", k ? " | " : "");
        if (n >= cap) break;
        if (s->phrase) {
            n += (size_t)snprintf(t->focus_subjects + n, cap - n, "%s", s->phrase);
            continue;
        }
        const int32_t *pos[2] = {s->t5, s->clip};
        const int count[2] = {s->n_t5, s->n_clip};
        for (int w = 0; w < 2; w++)
            for (int i = 0; i < count[w] && n < cap; i++)
                n += (size_t)snprintf(t->focus_subjects + n, cap - n, "%s%s%d",
                                      i               ? ","
                                      : w && count[0] ? ";"
                                                      : "",
                                      i   ? ""
                                      : w ? "clip="
                                          : "t5=",
                                      pos[w][i]);
    }
    snprintf(t->focus_lambda, sizeof t->focus_lambda, "%g", (double)r->lambda);
    add(t, "focus_subjects", t->focus_subjects);
    add(t, "focus_lambda", t->focus_lambda);
    add(t, "focus_heuristic", focus_heuristic_name(r->heuristic));
}

void gen_text_fill(gen_text *t, const gen_params *p, const char *model, const char *software,
                   int index)
{
    t->n = 0;
    snprintf(t->seed, sizeof t->seed, "%llu", (unsigned long long)p->seed);
    snprintf(t->steps, sizeof t->steps, "%d", p->steps);
    snprintf(t->guidance, sizeof t->guidance, "%g", (double)p->guidance);
    snprintf(t->width, sizeof t->width, "%d", p->width);
    snprintf(t->height, sizeof t->height, "%d", p->height);
    snprintf(t->max_seq, sizeof t->max_seq, "%d", p->max_seq);
    snprintf(t->count, sizeof t->count, "%d", p->count);
    snprintf(t->index, sizeof t->index, "%d", index);
    add(t, "prompt", p->prompt);
    add(t, "negative_prompt", p->negative_prompt ? p->negative_prompt : "");
    add(t, "seed", t->seed);
    add(t, "steps", t->steps);
    add(t, "guidance", t->guidance);
    add(t, "width", t->width);
    add(t, "height", t->height);
    add(t, "max_seq", t->max_seq);
    add(t, "model", model);
    add(t, "sampler", ENGINE_SAMPLER_NAME);
    add(t, "Software", software);
    add(t, "count", t->count);
    add(t, "index", t->index);
    if (p->slg_count > 0) add_slg(t, p);
    if (focus_request_active(&p->focus)) add_focus(t, &p->focus);
}
