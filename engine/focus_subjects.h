/* The subjects of a FOCUS-controlled request, from what a user writes to the token groups of
 * the transformer's text sequence (focus_groups): either phrases of the prompt ("a horse",
 * "red car"), found in the prompt and mapped to every CLIP and T5 token they become, or
 * explicit position lists in the reference's dataset format (T5 positions 0-based without a
 * BOS, CLIP positions counting BOS as 0), as the datasets of ericbill21/FOCUS list them. */
#ifndef FOCUS_ENGINE_FOCUS_SUBJECTS_H
#define FOCUS_ENGINE_FOCUS_SUBJECTS_H

#include "engine/focus_cost.h"
#include "engine/text_encode.h"

/* Positions one subject may list per tokenizer. */
#define FOCUS_MAX_POSITIONS 32

typedef struct focus_subject {
    const char *phrase; /* a phrase of the prompt; NULL when the positions are given */
    int n_t5, n_clip;
    int32_t t5[FOCUS_MAX_POSITIONS], clip[FOCUS_MAX_POSITIONS];
} focus_subject;

/* Parses "t5=1,2,3;clip=2,3" (either part may be absent, not both; spaces allowed) into the
 * positions of s. ERR_INVALID naming what is wrong. */
int focus_positions_parse(const char *text, focus_subject *s);

/* The token groups of n subjects of `prompt` for max_seq T5 tokens. A phrase must occur in the
 * prompt (its first occurrence, case-sensitive first then ignoring ASCII case, at word
 * boundaries) and end on token boundaries; its positions are the tokens of the text up to its
 * end that the text before it does not have, in CLIP (CLIP-L's tokens; CLIP-G's positions are
 * the same) and in T5 (when the model has one). Errors (ERR_INVALID or ERR_RANGE, naming the
 * subject): more than FOCUS_MAX_SUBJECTS subjects, a phrase not found or beyond the tokens the
 * encoders read (77 CLIP, max_seq T5), a position out of range, a subject without tokens, and
 * two subjects sharing a token. */
int focus_subjects_resolve(const text_tokenizers *tok, const char *prompt, int max_seq,
                           const focus_subject *subjects, int n, focus_groups *out);

#endif
