/* The text chunks a generated PNG carries: its generation parameters under the names the
 * protocol's submit request gives them (prompt, negative_prompt, seed, steps, guidance, width,
 * height, max_seq, model, count), then sampler, Software, index and, when used,
 * skip_layer_guidance and the FOCUS control's focus_subjects, focus_lambda and
 * focus_heuristic, so that the image documents itself. focus-run and focusd write the same
 * keys; only "model" and "Software" differ with the program. */
#ifndef FOCUS_ENGINE_GEN_TEXT_H
#define FOCUS_ENGINE_GEN_TEXT_H

#include "engine/pipeline.h"
#include "engine/png_out.h"

#define GEN_TEXT_MAX 17

typedef struct gen_text {
    png_out_kv kv[GEN_TEXT_MAX]; /* the values point into the buffers below and into p */
    int n;
    char seed[32], steps[16], guidance[32], width[16], height[16], max_seq[16], count[16];
    char index[16];
    char slg[192];
    char focus_subjects[1024], focus_lambda[32];
} gen_text;

/* Fills t for image `index` of a job with parameters p. p, model and software must outlive t;
 * t must not be copied (its pairs point into itself). */
void gen_text_fill(gen_text *t, const gen_params *p, const char *model, const char *software,
                   int index);

#endif
