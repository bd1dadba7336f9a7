/* Subjects of a controlled request to token groups (focus_subjects.h). A phrase's tokens are
 * found by tokenizing the prompt up to the phrase's start and up to its end: both CLIP's BPE
 * (words split by its regex) and T5's Metaspace pre-tokenizer treat words on their own, so the
 * tokens of a prefix that ends at a word boundary are a prefix of the prompt's, which the code
 * checks rather than assumes. */
#include "engine/focus_subjects.h"

#include "common/err.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* ---- explicit positions ---- */

static int parse_list(const char *what, const char *s, const char *end, int32_t *out, int *n)
{
    *n = 0;
    while (s < end) {
        while (s < end && *s == ' ')
            s++;
        char *stop;
        long v = strtol(s, &stop, 10);
        if (stop == s || stop > end || v < 0 || v > 100000)
            return err_set(ERR_INVALID,
                           "focus tokens: %s positions must be non-negative "
                           "integers separated by commas",
                           what);
        if (*n == FOCUS_MAX_POSITIONS)
            return err_set(ERR_INVALID, "focus tokens: more than %d %s positions",
                           FOCUS_MAX_POSITIONS, what);
        out[(*n)++] = (int32_t)v;
        for (s = stop; s < end && *s == ' '; s++)
            ;
        if (s < end && *s++ != ',')
            return err_set(ERR_INVALID, "focus tokens: %s positions must be separated by commas",
                           what);
    }
    return *n ? 0 : err_set(ERR_INVALID, "focus tokens: no %s positions after '%s='", what, what);
}

int focus_positions_parse(const char *text, focus_subject *s)
{
    memset(s, 0, sizeof *s);
    bool seen_t5 = false, seen_clip = false;
    for (const char *p = text; *p;) {
        const char *end = strchr(p, ';');
        if (!end) end = p + strlen(p);
        while (*p == ' ')
            p++;
        int rc;
        if (!strncmp(p, "t5=", 3) && !seen_t5)
            seen_t5 = true, rc = parse_list("t5", p + 3, end, s->t5, &s->n_t5);
        else if (!strncmp(p, "clip=", 5) && !seen_clip)
            seen_clip = true, rc = parse_list("clip", p + 5, end, s->clip, &s->n_clip);
        else
            rc = err_set(ERR_INVALID,
                         "focus tokens '%s': expected 't5=1,2;clip=2' (each part "
                         "once)",
                         text);
        if (rc < 0) return rc;
        p = *end ? end + 1 : end;
    }
    if (!seen_t5 && !seen_clip)
        return err_set(ERR_INVALID, "focus tokens '%s': no t5= or clip= positions", text);
    return 0;
}

/* ---- phrases ---- */

static bool word_byte(unsigned char c)
{
    return isalnum(c) || c >= 0x80;
}

static bool matches_at(const char *prompt, size_t at, const char *phrase, size_t len, bool fold)
{
    if (fold ? strncasecmp(prompt + at, phrase, len) : strncmp(prompt + at, phrase, len))
        return false;
    return (at == 0 || !word_byte((unsigned char)prompt[at - 1])) &&
           !word_byte((unsigned char)prompt[at + len]);
}

/* The byte offset of the phrase's first occurrence at word boundaries, exact case first. */
static int find_phrase(const char *prompt, const char *phrase, size_t *at)
{
    const size_t n = strlen(prompt), len = strlen(phrase);
    for (int fold = 0; len && fold < 2; fold++)
        for (size_t i = 0; i + len <= n; i++)
            if (matches_at(prompt, i, phrase, len, fold)) {
                *at = i;
                return 0;
            }
    return err_set(ERR_INVALID, "focus subject '%s' is not a phrase of the prompt", phrase);
}

/* One tokenizer seen through its content ids: CLIP-L or T5. */
typedef struct tokenizer_view {
    const char *name;
    const clip_tokenizer *clip;
    const t5_tokenizer *t5;
    int cap;    /* content ids the encoder reads */
    int before; /* ids ahead of the content (CLIP's BOS) */
} tokenizer_view;

static int content(const tokenizer_view *v, const char *text, size_t len, int32_t *ids)
{
    return v->clip ? clip_tokenize_content(v->clip, text, len, ids, v->cap + 1)
                   : t5_tokenize_content(v->t5, text, len, ids, v->cap + 1);
}

/* Positions [before + n0, before + n1) of the phrase at prompt[start, end) in v. */
static int phrase_positions(const tokenizer_view *v, const char *prompt, size_t start, size_t end,
                            const char *phrase, int32_t *pos, int *n)
{
    int32_t *ids = malloc(3 * ((size_t)v->cap + 1) * sizeof *ids);
    if (!ids) return err_set(ERR_NOMEM, "focus subjects: out of memory");
    int32_t *head = ids + v->cap + 1, *whole = head + v->cap + 1;
    int rc, n0 = 0, n1 = 0, nw = 0;
    if ((rc = n0 = content(v, prompt, start, head)) >= 0 &&
        (rc = n1 = content(v, prompt, end, ids)) >= 0 &&
        (rc = nw = content(v, prompt, strlen(prompt), whole)) >= 0) {
        rc = 0;
        if (n1 > v->cap)
            rc = err_set(ERR_RANGE,
                         "focus subject '%s' lies beyond the %d %s tokens the model "
                         "reads",
                         phrase, v->cap, v->name);
        else if (n1 <= n0 || nw < n1 || memcmp(ids, whole, (size_t)n1 * sizeof *ids) ||
                 memcmp(ids, head, (size_t)n0 * sizeof *ids))
            rc = err_set(ERR_INVALID,
                         "focus subject '%s' does not fall on %s token boundaries "
                         "of the prompt",
                         phrase, v->name);
        else if (n1 - n0 > FOCUS_MAX_POSITIONS)
            rc = err_set(ERR_RANGE, "focus subject '%s' is more than %d %s tokens", phrase,
                         FOCUS_MAX_POSITIONS, v->name);
    }
    free(ids);
    if (rc < 0) return rc;
    *n = n1 - n0;
    for (int i = 0; i < *n; i++)
        pos[i] = v->before + n0 + i;
    return 0;
}

static int resolve_phrase(const text_tokenizers *tok, const char *prompt, int max_seq,
                          const char *phrase, focus_subject *s)
{
    size_t at = 0;
    int rc = find_phrase(prompt, phrase, &at);
    if (rc < 0) return rc;
    const size_t end = at + strlen(phrase);
    const tokenizer_view clip = {.name = "CLIP",
                                 .clip = tok->clip_l,
                                 .cap = clip_tokenizer_max_length(tok->clip_l) - 2,
                                 .before = 1};
    if ((rc = phrase_positions(&clip, prompt, at, end, phrase, s->clip, &s->n_clip)) < 0 ||
        !tok->t5)
        return rc;
    int before, after;
    t5_tokenizer_specials(tok->t5, &before, &after);
    const tokenizer_view t5 = {
        .name = "T5", .t5 = tok->t5, .cap = max_seq - before - after, .before = before};
    return phrase_positions(&t5, prompt, at, end, phrase, s->t5, &s->n_t5);
}

/* ---- groups ---- */

static int add_tokens(focus_groups *g, int k, const int32_t *pos, int n, int limit, int offset,
                      const char *what)
{
    for (int i = 0; i < n; i++) {
        if (pos[i] < 0 || pos[i] >= limit)
            return err_set(ERR_RANGE, "focus subject %d: %s position %d outside 0..%d", k + 1, what,
                           pos[i], limit - 1);
        const int32_t joint = offset + pos[i];
        for (int j = 0; j < g->n_tok; j++)
            if (g->tok[j] == joint) {
                int owner = 0;
                while (g->first[owner + 1] <= j && owner < k)
                    owner++;
                return owner == k
                           ? err_set(ERR_INVALID, "focus subject %d lists %s position %d twice",
                                     k + 1, what, pos[i])
                           : err_set(ERR_INVALID, "focus subjects %d and %d share %s position %d",
                                     owner + 1, k + 1, what, pos[i]);
            }
        if (g->n_tok == FOCUS_MAX_TOKENS)
            return err_set(ERR_RANGE, "focus subjects: more than %d tokens in all",
                           FOCUS_MAX_TOKENS);
        g->tok[g->n_tok++] = joint;
    }
    return 0;
}

int focus_subjects_resolve(const text_tokenizers *tok, const char *prompt, int max_seq,
                           const focus_subject *subjects, int n, focus_groups *out)
{
    memset(out, 0, sizeof *out);
    if (n < 1 || n > FOCUS_MAX_SUBJECTS)
        return err_set(ERR_RANGE, "focus: %d subjects (1 to %d)", n, FOCUS_MAX_SUBJECTS);
    const int clip_len = clip_tokenizer_max_length(tok->clip_l);
    for (int k = 0; k < n; k++) {
        focus_subject s = subjects[k];
        int rc = 0;
        if (s.phrase) rc = resolve_phrase(tok, prompt, max_seq, s.phrase, &s);
        if (rc == 0 && s.n_t5 && !tok->t5)
            rc = err_set(ERR_INVALID,
                         "focus subject %d: T5 positions, but the model has no T5 "
                         "encoder",
                         k + 1);
        /* The reference's order: a subject's T5 tokens, then its CLIP tokens. */
        if (rc == 0) rc = add_tokens(out, k, s.t5, s.n_t5, max_seq, clip_len, "T5");
        if (rc == 0) rc = add_tokens(out, k, s.clip, s.n_clip, clip_len, 0, "CLIP");
        if (rc == 0 && out->n_tok == out->first[k])
            rc = err_set(ERR_INVALID, "focus subject %d has no tokens", k + 1);
        if (rc < 0) {
            memset(out, 0, sizeof *out);
            return rc;
        }
        out->first[k + 1] = out->n_tok;
    }
    out->n_subjects = n;
    return 0;
}
