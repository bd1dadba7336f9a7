/* The running costs of the FOCUS test-time controller (ericbill21/FOCUS, src/losses.py and
 * Controller.return_storage in src/controller.py): from the image-to-text attention maps of
 * the transformer's joint blocks to one scalar per image, and that scalar's gradient with
 * respect to every block's maps, computed analytically in float32 so that the transformer's
 * backward pass can start from it.
 *
 * The maps arrive as the kernels' kn_attention_maps writes them: [blocks, tokens, gh * gw],
 * token j's map over the image tokens r * gw + s of the latent's patch grid. The reference
 * reshapes to a square; here the grid is gh x gw, which on a square grid is the same. */
#ifndef FOCUS_ENGINE_FOCUS_COST_H
#define FOCUS_ENGINE_FOCUS_COST_H

#include <stdint.h>

#define FOCUS_MAX_SUBJECTS 8
#define FOCUS_MAX_TOKENS 256 /* selected text tokens over all subjects */

typedef enum focus_heuristic {
    FOCUS_HEURISTIC_FOCUS,             /* controller_loss: generalised Jensen-Shannon terms */
    FOCUS_HEURISTIC_ATTEND_AND_EXCITE, /* attend_and_excite_loss */
    FOCUS_HEURISTIC_DIVIDE_AND_BIND,   /* divide_and_bind_loss */
} focus_heuristic;

/* The subjects as token groups of the joint text sequence: subject k owns the selected tokens
 * [first[k], first[k + 1]), each tok[i] an index into the text rows of the transformer's
 * context (CLIP position p as p, T5 position p as clip_len + p), in the order the reference's
 * Controller.process_ids lists them (a subject's T5 tokens, then its CLIP tokens). */
typedef struct focus_groups {
    int n_subjects, n_tok;
    int first[FOCUS_MAX_SUBJECTS + 1];
    int32_t tok[FOCUS_MAX_TOKENS];
} focus_groups;

/* The heuristic's name as a request spells it ("focus", "attend_and_excite",
 * "divide_and_bind"); ERR_INVALID naming the accepted ones otherwise. */
int focus_heuristic_parse(const char *name, focus_heuristic *out);
const char *focus_heuristic_name(focus_heuristic h);

/* The cost of one image from its maps [blocks, g->n_tok, gh * gw] (host float32): the block
 * mean, the 3 x 3 sigma-1 Gaussian blur with reflect padding over the gh x gw grid, then the
 * heuristic. When dmaps is not NULL it receives d cost / d maps, of the maps' shape. gh and gw
 * must be at least 2 (the blur's reflection). Returns 0 or ERR_INVALID / ERR_NOMEM. */
int focus_cost(const focus_groups *g, focus_heuristic h, const float *maps, int blocks, int64_t gh,
               int64_t gw, float *cost, float *dmaps);

#endif
