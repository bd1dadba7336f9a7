/* Unigram model of tokenizer.json (see t5_tok_unigram.h): the vocabulary trie, scores read
 * as tokenizers reads them, and the Viterbi segmentation of one piece. Training, lattice
 * sampling and n-best are not needed for inference and are absent. */
#include "engine/t5_tok_unigram.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "common/err.h"
#include "common/xalloc.h"

/* tokenizers' K_UNK_PENALTY: an unknown char scores min_score - 10. */
#define UNK_PENALTY 10.0

typedef struct {
    int32_t id; /* vocabulary id of the piece ending here (the last one listed), or -1 */
    double score;
} trie_node;

struct t5_unigram {
    trie_node *nodes;
    size_t n_nodes, cap_nodes;
    /* Edges as an open-addressing table: key (parent << 8 | byte) + 1, value child. */
    uint64_t *edge_key;
    int32_t *edge_child;
    size_t edge_mask, n_edges;
    int32_t unk_id;
    double unk_score;
};

void t5_ids_push(t5_ids *ids, int32_t id)
{
    if (ids->n == ids->cap) {
        ids->cap = ids->cap ? ids->cap * 2 : 64;
        ids->v = xrealloc(ids->v, ids->cap * sizeof *ids->v);
    }
    ids->v[ids->n++] = id;
}

void t5_viterbi_scratch_free(t5_viterbi_scratch *s)
{
    free(s->score);
    free(s->start);
    free(s->id);
    memset(s, 0, sizeof *s);
}

static size_t edge_slot(const t5_unigram *u, uint64_t key)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    size_t i = (size_t)(h >> 20) & u->edge_mask;
    while (u->edge_key[i] && u->edge_key[i] != key)
        i = (i + 1) & u->edge_mask;
    return i;
}

static int32_t trie_child(const t5_unigram *u, int32_t node, unsigned char b)
{
    uint64_t key = ((uint64_t)node << 8 | b) + 1;
    size_t i = edge_slot(u, key);
    return u->edge_key[i] ? u->edge_child[i] : -1;
}

static void trie_insert(t5_unigram *u, const unsigned char *s, size_t n, int32_t id, double score)
{
    int32_t node = 0;
    for (size_t j = 0; j < n; j++) {
        uint64_t key = ((uint64_t)node << 8 | s[j]) + 1;
        size_t i = edge_slot(u, key);
        if (!u->edge_key[i]) {
            if (u->n_nodes == u->cap_nodes) {
                u->cap_nodes *= 2;
                u->nodes = xrealloc(u->nodes, u->cap_nodes * sizeof *u->nodes);
            }
            u->nodes[u->n_nodes] = (trie_node){-1, 0.0};
            u->edge_key[i] = key;
            u->edge_child[i] = (int32_t)u->n_nodes++;
            u->n_edges++;
        }
        node = u->edge_child[i];
    }
    /* HashMap insertion in tokenizers: a repeated piece maps to its last id. */
    u->nodes[node].id = id;
    u->nodes[node].score = score;
}

/* serde_json (without float_roundtrip, as tokenizers builds it) reads a decimal number as
 * (digits as u64) then one multiply or divide by a power of ten, which is not always
 * correctly rounded. jansson gives the correctly rounded value; tokenizer.json writers
 * (serde's ryu, Python's repr) emit shortest round-trip digits, so those digits are
 * recovered from it and serde's arithmetic is redone on them. */
static double serde_json_f64(double v)
{
    if (v == 0.0 || !isfinite(v))
        return v;
    char buf[48];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*e", p - 1, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    const char *c = buf;
    int neg = *c == '-';
    c += neg;
    uint64_t sig = 0;
    int frac = 0, seen_point = 0;
    for (; *c && *c != 'e'; c++) {
        if (*c == '.') {
            seen_point = 1;
            continue;
        }
        sig = sig * 10 + (uint64_t)(*c - '0');
        frac += seen_point;
    }
    int e10 = (*c == 'e' ? atoi(c + 1) : 0) - frac;
    double f = (double)sig;
    char pw[16];
    while (e10 < -308) {
        f /= 1e308;
        e10 += 308;
    }
    snprintf(pw, sizeof pw, "1e%d", e10 < 0 ? -e10 : e10);
    double pow10 = strtod(pw, NULL);
    f = e10 >= 0 ? f * pow10 : f / pow10;
    return neg ? -f : f;
}

int t5_unigram_load(const json_t *model, t5_unigram **out)
{
    json_t *vocab = json_object_get(model, "vocab");
    json_t *unk = json_object_get(model, "unk_id");
    json_t *bf = json_object_get(model, "byte_fallback");
    if (!json_is_array(vocab) || json_array_size(vocab) == 0)
        return err_set(ERR_FORMAT, "model.vocab: missing or empty array");
    if (!json_is_integer(unk))
        return err_set(ERR_FORMAT, "model.unk_id: missing (an unknown char needs an unk id)");
    if (bf && json_is_true(bf))
        return err_set(ERR_FORMAT, "model.byte_fallback: true is not supported");
    size_t n = json_array_size(vocab);
    if (n > INT32_MAX / 2)
        return err_set(ERR_FORMAT, "model.vocab: %zu pieces is too many", n);
    json_int_t unk_id = json_integer_value(unk);
    if (unk_id < 0 || (size_t)unk_id >= n)
        return err_set(ERR_FORMAT, "model.unk_id %lld is outside the vocab of %zu pieces",
                       (long long)unk_id, n);

    t5_unigram *u = xcalloc(1, sizeof *u);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *piece = json_array_get(json_array_get(vocab, i), 0);
        total += json_is_string(piece) ? json_string_length(piece) : 0;
    }
    size_t cap = 1024;
    while (cap < 2 * (total + 1))
        cap *= 2;
    u->edge_mask = cap - 1;
    u->edge_key = xcalloc(cap, sizeof *u->edge_key);
    u->edge_child = xmalloc(cap * sizeof *u->edge_child);
    u->cap_nodes = 1024;
    u->nodes = xmalloc(u->cap_nodes * sizeof *u->nodes);
    u->nodes[0] = (trie_node){-1, 0.0};
    u->n_nodes = 1;

    double min_score = INFINITY;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(vocab, i);
        json_t *piece = json_array_get(e, 0), *score = json_array_get(e, 1);
        if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_string(piece) || !json_is_number(score)) {
            t5_unigram_free(u);
            return err_set(ERR_FORMAT, "model.vocab[%zu]: expected [piece, score]", i);
        }
        double s = json_is_integer(score) ? (double)json_integer_value(score)
                                          : serde_json_f64(json_real_value(score));
        if (s < min_score)
            min_score = s;
        trie_insert(u, (const unsigned char *)json_string_value(piece), json_string_length(piece),
                    (int32_t)i, s);
    }
    u->unk_id = (int32_t)unk_id;
    u->unk_score = min_score - UNK_PENALTY;
    *out = u;
    return 0;
}

void t5_unigram_free(t5_unigram *u)
{
    if (!u)
        return;
    free(u->nodes);
    free(u->edge_key);
    free(u->edge_child);
    free(u);
}

int32_t t5_unigram_piece_id(const t5_unigram *u, const char *s, size_t n)
{
    int32_t node = 0;
    for (size_t j = 0; j < n && node >= 0; j++)
        node = trie_child(u, node, (unsigned char)s[j]);
    return node >= 0 ? u->nodes[node].id : -1;
}

static void scratch_reserve(t5_viterbi_scratch *w, size_t n)
{
    if (w->cap >= n)
        return;
    w->score = xrealloc(w->score, n * sizeof *w->score);
    w->start = xrealloc(w->start, n * sizeof *w->start);
    w->id = xrealloc(w->id, n * sizeof *w->id);
    w->cap = n;
}

static void relax(t5_viterbi_scratch *w, size_t key, int32_t start, int32_t id, double cand)
{
    if (w->start[key] < 0 || cand > w->score[key]) {
        w->score[key] = cand;
        w->start[key] = start;
        w->id[key] = id;
    }
}

/* Appends the id of a run of fused unknown chars: the run itself when it happens to be a
 * piece (tokenizers looks the fused string up), else unk. */
static void push_unk_run(const t5_unigram *u, const char *s, size_t a, size_t b, t5_ids *ids)
{
    int32_t id = t5_unigram_piece_id(u, s + a, b - a);
    t5_ids_push(ids, id >= 0 ? id : u->unk_id);
}

void t5_unigram_encode(const t5_unigram *u, const char *s, size_t n, t5_viterbi_scratch *w,
                       t5_ids *ids)
{
    if (n == 0)
        return;
    scratch_reserve(w, n + 1);
    w->score[0] = 0.0;
    w->start[0] = -1;
    for (size_t i = 1; i <= n; i++)
        w->start[i] = -1;
    const unsigned char *b = (const unsigned char *)s;
    for (size_t pos = 0; pos < n;) {
        double base = w->score[pos];
        size_t mblen = (size_t)utf8proc_utf8class[b[pos]];
        int has_single = 0;
        int32_t node = 0;
        for (size_t j = pos; j < n; j++) {
            node = trie_child(u, node, b[j]);
            if (node < 0)
                break;
            const trie_node *t = &u->nodes[node];
            if (t->id < 0)
                continue;
            size_t len = j + 1 - pos;
            relax(w, j + 1, (int32_t)pos, t->id, t->score + base);
            if (len == mblen)
                has_single = 1;
        }
        if (!has_single)
            relax(w, pos + mblen, (int32_t)pos, u->unk_id, u->unk_score + base);
        pos += mblen;
    }

    /* Walk back from the end; the ids come out reversed and are flipped afterwards. */
    size_t first = ids->n, end = n, run_end = 0;
    int in_run = 0;
    while (end > 0) {
        size_t start = (size_t)w->start[end];
        if (w->id[end] == u->unk_id) {
            if (!in_run)
                run_end = end;
            in_run = 1;
        } else {
            if (in_run)
                push_unk_run(u, s, end, run_end, ids);
            in_run = 0;
            t5_ids_push(ids, w->id[end]);
        }
        end = start;
    }
    if (in_run)
        push_unk_run(u, s, 0, run_end, ids);
    for (size_t i = first, j = ids->n - 1; i < j; i++, j--) {
        int32_t t = ids->v[i];
        ids->v[i] = ids->v[j];
        ids->v[j] = t;
    }
}
