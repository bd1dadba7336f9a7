/* CLIP BPE tokenizer: a C reimplementation of transformers 4.46-4.57's slow CLIPTokenizer as it
 * runs without ftfy (BasicTokenizer(strip_accents=False, do_split_on_punc=False) for cleanup),
 * which is what StableDiffusion3Pipeline loads, added tokens' lstrip/rstrip/single_word
 * included (transformers 5's CLIPTokenizer is another, tokenizers-based, pipeline). The ids must equal the reference exactly, so every
 * stage mirrors a reference step; comments name the step and the Python semantics kept.
 * Not for decoding ids back to text, and not for the ftfy variant.
 *
 * Unicode versions matter for exactness: the reference runs on Python 3.11 (Unicode 14.0).
 * Category-like decisions (control chars dropped, Zs, Cased, Case_Ignorable, \p{L}, \p{N})
 * come from PCRE2, whose tables are Unicode 14.0 in 10.40-10.42, so characters Python 3.11
 * does not know (Cn, dropped) are dropped here too. utf8proc does NFC and case mapping; it may
 * be newer, which only matters for characters the cleanup has already removed. */
#include "engine/clip_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "common/err.h"

#define UNI_MAX 0x110000u

/* ---- Unicode 14 property bitmaps, derived from PCRE2 once per process ---- */

enum { PROP_OTHER, PROP_ZS, PROP_CASED, PROP_CASE_IGNORABLE, PROP_COUNT };

static uint64_t uni_props[PROP_COUNT][UNI_MAX / 64];
static pthread_once_t uni_once = PTHREAD_ONCE_INIT;
static int uni_status;
static char uni_error[160];

static int uni_has(int prop, int32_t cp)
{
    return (uni_props[prop][(uint32_t)cp >> 6] >> ((uint32_t)cp & 63)) & 1;
}

/* Marks every code point of `all` (every scalar value, in order, as UTF-8) that `pattern`
 * matches. Matching runs instead of single characters keeps this to a few milliseconds. */
static int uni_fill(const char *pattern, uint64_t *bits, const uint8_t *all, size_t len)
{
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                   &ec, &eo, NULL);
    if (!re) {
        snprintf(uni_error, sizeof uni_error, "PCRE2 cannot compile %s (needs PCRE2 >= 10.40)", pattern);
        return ERR_FORMAT;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) {
        pcre2_code_free(re);
        snprintf(uni_error, sizeof uni_error, "out of memory");
        return ERR_NOMEM;
    }
    size_t off = 0;
    while (off < len && pcre2_match(re, all, len, off, PCRE2_NO_UTF_CHECK, md, NULL) > 0) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t p = ov[0];
        while (p < ov[1]) {
            utf8proc_int32_t cp;
            p += (size_t)utf8proc_iterate(all + p, (utf8proc_ssize_t)(ov[1] - p), &cp);
            bits[(uint32_t)cp >> 6] |= 1ull << ((uint32_t)cp & 63);
        }
        off = ov[1];
    }
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return 0;
}

static void uni_init(void)
{
    static const char *patterns[PROP_COUNT] = {"\\p{C}+", "\\p{Zs}+", "\\p{Cased}+",
                                               "\\p{Case_Ignorable}+"};
    uint8_t *all = malloc((size_t)UNI_MAX * 4);
    if (!all) {
        snprintf(uni_error, sizeof uni_error, "out of memory");
        uni_status = ERR_NOMEM;
        return;
    }
    size_t len = 0;
    for (int32_t cp = 1; cp < (int32_t)UNI_MAX; cp++)
        if (cp < 0xD800 || cp > 0xDFFF)
            len += (size_t)utf8proc_encode_char(cp, all + len);
    for (int i = 0; i < PROP_COUNT && !uni_status; i++)
        uni_status = uni_fill(patterns[i], uni_props[i], all, len);
    uni_props[PROP_OTHER][0] |= 1; /* NUL, left out of the subject string */
    free(all);
}

/* ---- string interning and the merge table ---- */

struct sym {
    const char *s;
    uint32_t len;
    int32_t vocab_id; /* -1 when the string is not in vocab.json */
    int32_t id;       /* what the reference's convert_tokens_to_ids gives for it */
};

struct merge_slot {
    uint64_t key; /* (left sym + 1) << 32 | (right sym + 1); 0 = empty */
    uint32_t rank;
    uint32_t result;
};

struct added_token {
    char *s;
    size_t len;
    int32_t id;
    int lstrip, rstrip, single_word;
};

struct clip_tokenizer {
    char **blocks; /* string storage for the symbols */
    size_t nblocks, block_used;
    struct sym *syms;
    size_t nsyms, syms_cap;
    uint32_t *sym_table; /* index + 1, 0 = empty */
    size_t sym_table_cap;
    struct merge_slot *merges;
    size_t merges_cap;
    uint32_t byte_sym[256], byte_sym_end[256]; /* byte char, and byte char + "</w>" */
    uint32_t start_sym, end_sym;               /* the two strings the reference's BPE cache holds */
    struct added_token *added;
    size_t nadded;
    int32_t bos_id, eos_id, pad_id, unk_id;
    int max_length;
    int split_special; /* split_special_tokens: no added token is matched */
    pcre2_code *pattern;
};

#define BLOCK_SIZE 65536

#define FNV_SEED 1469598103934665603ull

static uint64_t fnv(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static char *arena_copy(clip_tokenizer *t, const char *a, size_t na, const char *b, size_t nb)
{
    size_t n = na + nb + 1;
    if (n > BLOCK_SIZE)
        return NULL;
    if (!t->nblocks || t->block_used + n > BLOCK_SIZE) {
        char **nb2 = realloc(t->blocks, (t->nblocks + 1) * sizeof *nb2);
        if (!nb2)
            return NULL;
        t->blocks = nb2;
        if (!(t->blocks[t->nblocks] = malloc(BLOCK_SIZE)))
            return NULL;
        t->nblocks++;
        t->block_used = 0;
    }
    char *p = t->blocks[t->nblocks - 1] + t->block_used;
    memcpy(p, a, na);
    memcpy(p + na, b, nb);
    p[na + nb] = 0;
    t->block_used += n;
    return p;
}

static int sym_grow(clip_tokenizer *t)
{
    size_t cap = t->sym_table_cap ? t->sym_table_cap * 2 : 1 << 17;
    uint32_t *tab = calloc(cap, sizeof *tab);
    if (!tab)
        return ERR_NOMEM;
    for (size_t i = 0; i < t->nsyms; i++) {
        size_t h = fnv(FNV_SEED, t->syms[i].s, t->syms[i].len) & (cap - 1);
        while (tab[h])
            h = (h + 1) & (cap - 1);
        tab[h] = (uint32_t)i + 1;
    }
    free(t->sym_table);
    t->sym_table = tab;
    t->sym_table_cap = cap;
    return 0;
}

/* The symbol of the string a + b: found, or added when `create` (else -1 when absent). */
static int64_t sym_find(clip_tokenizer *t, const char *a, size_t na, const char *b, size_t nb, int create)
{
    if (create && (t->nsyms + 1) * 2 > t->sym_table_cap && sym_grow(t))
        return ERR_NOMEM;
    if (!t->sym_table_cap)
        return -1;
    size_t slot = fnv(fnv(FNV_SEED, a, na), b, nb) & (t->sym_table_cap - 1);
    for (; t->sym_table[slot]; slot = (slot + 1) & (t->sym_table_cap - 1)) {
        const struct sym *s = &t->syms[t->sym_table[slot] - 1];
        if (s->len == na + nb && !memcmp(s->s, a, na) && !memcmp(s->s + na, b, nb))
            return t->sym_table[slot] - 1;
    }
    if (!create)
        return -1;
    if (na + nb >= BLOCK_SIZE)
        return ERR_FORMAT;
    if (t->nsyms == t->syms_cap) {
        size_t cap = t->syms_cap ? t->syms_cap * 2 : 1 << 16;
        struct sym *ns = realloc(t->syms, cap * sizeof *ns);
        if (!ns)
            return ERR_NOMEM;
        t->syms = ns;
        t->syms_cap = cap;
    }
    char *copy = arena_copy(t, a, na, b, nb);
    if (!copy)
        return ERR_NOMEM;
    t->syms[t->nsyms] = (struct sym){copy, (uint32_t)(na + nb), -1, -1};
    t->sym_table[slot] = (uint32_t)t->nsyms + 1;
    return (int64_t)t->nsyms++;
}

static struct merge_slot *merge_slot(const clip_tokenizer *t, uint32_t left, uint32_t right)
{
    uint64_t key = ((uint64_t)left + 1) << 32 | ((uint64_t)right + 1);
    size_t i = hash_u64(key) & (t->merges_cap - 1);
    while (t->merges[i].key && t->merges[i].key != key)
        i = (i + 1) & (t->merges_cap - 1);
    t->merges[i].key = key;
    return &t->merges[i];
}

static const struct merge_slot *merge_find(const clip_tokenizer *t, uint32_t left, uint32_t right)
{
    uint64_t key = ((uint64_t)left + 1) << 32 | ((uint64_t)right + 1);
    size_t i = hash_u64(key) & (t->merges_cap - 1);
    for (; t->merges[i].key; i = (i + 1) & (t->merges_cap - 1))
        if (t->merges[i].key == key)
            return &t->merges[i];
    return NULL;
}

/* ---- loading ---- */

/* Offset of the first invalid UTF-8 sequence (overlong forms and surrogates included), or
 * n when there is none. */
static size_t utf8_invalid_at(const uint8_t *s, size_t n)
{
    for (size_t p = 0; p < n;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(s + p, (utf8proc_ssize_t)(n - p), &c);
        if (k < 0)
            return p;
        p += (size_t)k;
    }
    return n;
}

static int read_file(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(ERR_MISSING, "%s: cannot open", path);
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 65536 > cap) {
            char *nb = realloc(buf, cap = cap * 2 + 65536);
            if (!nb) {
                free(buf);
                fclose(f);
                return err_set(ERR_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return err_set(ERR_IO, "%s: read error", path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

/* A JSON file; a missing one is ERR_MISSING when required, else *out = NULL. */
static int load_json(const char *path, int required, json_t **out)
{
    *out = NULL;
    char *buf;
    size_t len;
    int rc = read_file(path, &buf, &len);
    if (rc == ERR_MISSING && !required)
        return 0;
    if (rc)
        return rc;
    json_error_t je;
    *out = json_loadb(buf, len, 0, &je);
    free(buf);
    if (!*out)
        return err_set(ERR_FORMAT, "%s: %s (line %d)", path, je.text, je.line);
    return 0;
}

static int load_vocab(clip_tokenizer *t, const char *path)
{
    json_t *root;
    int rc = load_json(path, 1, &root);
    if (rc)
        return rc;
    if (!json_is_object(root) || json_object_size(root) == 0) {
        rc = err_set(ERR_FORMAT, "%s: expected a non-empty object of token -> id", path);
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        if (id < 0 || id > INT32_MAX) {
            rc = err_set(ERR_FORMAT, "%s: token \"%s\" has no valid integer id", path, key);
            goto done;
        }
        int64_t s = sym_find(t, key, strlen(key), "", 0, 1);
        if (s < 0) {
            rc = err_set((int)s, "%s: cannot store token \"%s\"", path, key);
            goto done;
        }
        t->syms[s].vocab_id = (int32_t)id;
    }
done:
    json_decref(root);
    return rc;
}

/* Python's str.isspace() restricted to ASCII: the separators str.split() and strip() use. */
static int py_ascii_space(uint8_t c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* The reference reads merges.read().strip().split("\n")[1 : 49152-256-2+1], ranks them by
 * position (a repeated pair keeps its last rank) and splits each line on whitespace. The
 * heap-based BPE below equals the reference's pass-by-pass merging only when no merge uses a
 * symbol that a merge of equal or later rank creates; OpenAI's file satisfies that, and a file
 * that does not is refused rather than tokenized differently. */
static int load_merges(clip_tokenizer *t, const char *path)
{
    enum { MAX_MERGES = 49152 - 256 - 2 };
    size_t len = 0;
    char *buf = NULL;
    int rc = read_file(path, &buf, &len);
    if (rc)
        return rc;
    uint32_t *created = NULL;
    size_t bad = utf8_invalid_at((const uint8_t *)buf, len);
    if (bad < len) {
        rc = err_set(ERR_FORMAT, "%s: invalid UTF-8 at byte %zu", path, bad);
        goto done;
    }
    t->merges_cap = 1 << 17;
    t->merges = calloc(t->merges_cap, sizeof *t->merges);
    if (!t->merges) {
        rc = err_set(ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    char *p = buf, *end = buf + len;
    while (p < end && py_ascii_space((uint8_t)*p))
        p++;
    while (end > p && py_ascii_space((uint8_t)end[-1]))
        end--;
    char *nl = memchr(p, '\n', (size_t)(end - p));
    p = nl ? nl + 1 : end; /* line 0 is the "#version" header */
    uint32_t rank = 0;
    for (int line = 2; p < end && rank < MAX_MERGES; line++, rank++) {
        char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        const char *field[3];
        size_t flen[3];
        int nf = 0;
        for (char *q = p; q < eol;) {
            while (q < eol && py_ascii_space((uint8_t)*q))
                q++;
            if (q == eol)
                break;
            char *w = q;
            while (q < eol && !py_ascii_space((uint8_t)*q))
                q++;
            if (nf < 3) {
                field[nf] = w;
                flen[nf] = (size_t)(q - w);
            }
            nf++;
        }
        if (nf != 2) {
            rc = err_set(ERR_FORMAT, "%s: line %d has %d fields, expected two symbols", path, line, nf);
            goto done;
        }
        int64_t a = sym_find(t, field[0], flen[0], "", 0, 1);
        int64_t b = a < 0 ? a : sym_find(t, field[1], flen[1], "", 0, 1);
        int64_t ab = b < 0 ? b : sym_find(t, field[0], flen[0], field[1], flen[1], 1);
        if (ab < 0) {
            rc = err_set((int)ab, "%s: line %d: cannot store the merge", path, line);
            goto done;
        }
        struct merge_slot *m = merge_slot(t, (uint32_t)a, (uint32_t)b);
        m->rank = rank;
        m->result = (uint32_t)ab;
        p = eol + 1;
    }
    /* created[s] = 1 + the last rank that produces s, to check the ordering condition. */
    created = calloc(t->nsyms, sizeof *created);
    if (!created) {
        rc = err_set(ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (size_t i = 0; i < t->merges_cap; i++)
        if (t->merges[i].key && t->merges[i].rank + 1 > created[t->merges[i].result])
            created[t->merges[i].result] = t->merges[i].rank + 1;
    for (size_t i = 0; i < t->merges_cap; i++) {
        const struct merge_slot *m = &t->merges[i];
        if (!m->key)
            continue;
        uint32_t l = (uint32_t)(m->key >> 32) - 1, r = (uint32_t)m->key - 1;
        if (created[l] > m->rank || created[r] > m->rank) {
            rc = err_set(ERR_FORMAT, "%s: merge %u (\"%s %s\") uses a symbol created by a later merge", path,
                         m->rank + 1, t->syms[l].s, t->syms[r].s);
            goto done;
        }
    }
done:
    free(created);
    free(buf);
    return rc;
}

/* A special token in tokenizer_config.json / special_tokens_map.json: a string or an
 * AddedToken object with "content". Leaves *out alone when the key is absent. */
static int token_field(json_t *root, const char *key, const char *path, const char **out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!json_is_string(v))
        return err_set(ERR_FORMAT, "%s: \"%s\" is neither a string nor a token object", path, key);
    *out = json_string_value(v);
    return 0;
}

static int32_t token_to_id(clip_tokenizer *t, const char *s, size_t n)
{
    for (size_t i = 0; i < t->nadded; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].s, s, n))
            return t->added[i].id;
    int64_t sym = sym_find(t, s, n, "", 0, 0);
    return sym >= 0 && t->syms[sym].vocab_id >= 0 ? t->syms[sym].vocab_id : -1;
}

/* Registers an added token unless one with that content exists (the first one wins, as
 * the reference's added_tokens_decoder does over the special tokens). flags may be NULL
 * (AddedToken's defaults); else its lstrip, rstrip, single_word, normalized and special
 * must be booleans where present, and no other field may appear. */
static int add_token(clip_tokenizer *t, const char *s, int32_t id, const json_t *flags, const char *path)
{
    size_t n = strlen(s);
    if (!n)
        return err_set(ERR_FORMAT, "%s: empty added token", path);
    for (size_t i = 0; i < t->nadded; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].s, s, n))
            return 0;
    int v[3] = {0, 0, 0};
    if (flags) {
        static const char *const names[] = {"lstrip", "rstrip", "single_word", "normalized", "special"};
        for (int f = 0; f < 5; f++) {
            json_t *x = json_object_get(flags, names[f]);
            if (x && !json_is_boolean(x))
                return err_set(ERR_FORMAT, "%s: added token \"%s\": \"%s\" must be true or false", path, s, names[f]);
            if (f < 3)
                v[f] = json_is_true(x);
        }
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)flags, key, val) {
            static const char *const known[] = {"content", "lstrip", "rstrip", "single_word", "normalized", "special", "__type"};
            size_t k = 0;
            while (k < sizeof known / sizeof *known && strcmp(key, known[k]))
                k++;
            if (k == sizeof known / sizeof *known)
                return err_set(ERR_FORMAT, "%s: added token \"%s\": unknown field \"%s\"", path, s, key);
        }
    }
    struct added_token *na = realloc(t->added, (t->nadded + 1) * sizeof *na);
    if (!na)
        return err_set(ERR_NOMEM, "%s: out of memory", path);
    t->added = na;
    if (!(na[t->nadded].s = strdup(s)))
        return err_set(ERR_NOMEM, "%s: out of memory", path);
    na[t->nadded].len = n;
    na[t->nadded].id = id;
    na[t->nadded].lstrip = v[0];
    na[t->nadded].rstrip = v[1];
    na[t->nadded].single_word = v[2];
    t->nadded++;
    return 0;
}

/* The added tokens of tokenizer_config.json's added_tokens_decoder, then the special tokens,
 * which the reference also registers as unsplittable (with their vocab id), and
 * split_special_tokens. normalized and special change nothing here: the slow tokenizer
 * lowercases before matching only for a do_lower_case attribute CLIPTokenizer lacks, and
 * split_special_tokens turns off every added token, special or not. */
static int load_config(clip_tokenizer *t, const char *dir)
{
    char path[4096], map_path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    snprintf(map_path, sizeof map_path, "%s/special_tokens_map.json", dir);
    json_t *cfg, *map = NULL;
    int rc = load_json(path, 1, &cfg);
    if (rc || (rc = load_json(map_path, 0, &map)))
        goto done;
    json_t *mml = json_object_get(cfg, "model_max_length");
    if (!json_is_integer(mml) || json_integer_value(mml) < 2 || json_integer_value(mml) > 65536) {
        rc = err_set(ERR_FORMAT, "%s: model_max_length missing or not an integer in [2, 65536]", path);
        goto done;
    }
    t->max_length = (int)json_integer_value(mml);
    json_t *split = json_object_get(cfg, "split_special_tokens");
    if (split && !json_is_boolean(split) && !json_is_null(split)) {
        rc = err_set(ERR_FORMAT, "%s: \"split_special_tokens\" must be true, false or null", path);
        goto done;
    }
    t->split_special = json_is_true(split);
    json_t *dec = json_object_get(cfg, "added_tokens_decoder");
    if (dec && !json_is_object(dec) && !json_is_null(dec)) {
        rc = err_set(ERR_FORMAT, "%s: \"added_tokens_decoder\" is not an object", path);
        goto done;
    }

    const char *key;
    json_t *val;
    json_object_foreach(dec, key, val)
    {
        char *endp;
        long id = strtol(key, &endp, 10);
        json_t *content = json_object_get(val, "content");
        if (*endp || id < 0 || id > INT32_MAX || !json_is_string(content)) {
            rc = err_set(ERR_FORMAT, "%s: added_tokens_decoder entry \"%s\" is malformed", path, key);
            goto done;
        }
        if ((rc = add_token(t, json_string_value(content), (int32_t)id, val, path)))
            goto done;
    }

    /* CLIPTokenizer's defaults; special_tokens_map.json overrides tokenizer_config.json. */
    const char *names[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    const char *values[4] = {"<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>"};
    int32_t *ids[4] = {&t->bos_id, &t->eos_id, &t->unk_id, &t->pad_id};
    for (int i = 0; i < 4; i++) {
        if ((rc = token_field(cfg, names[i], path, &values[i])) ||
            (map && (rc = token_field(map, names[i], map_path, &values[i]))))
            goto done;
        *ids[i] = token_to_id(t, values[i], strlen(values[i]));
        if (*ids[i] < 0) {
            rc = err_set(ERR_FORMAT, "%s: %s \"%s\" is not in the vocabulary", path, names[i], values[i]);
            goto done;
        }
        if ((rc = add_token(t, values[i], *ids[i], NULL, path)))
            goto done;
    }
done:
    json_decref(map);
    json_decref(cfg);
    return rc;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 take
 * the code points 256, 257, ... in byte order. */
static int load_byte_symbols(clip_tokenizer *t)
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint8_t enc[4];
        size_t len = (size_t)utf8proc_encode_char(keep ? b : 256 + n++, enc);
        int64_t s = sym_find(t, (const char *)enc, len, "", 0, 1);
        int64_t se = s < 0 ? s : sym_find(t, (const char *)enc, len, "</w>", 4, 1);
        if (se < 0)
            return err_set((int)se, "clip tokenizer: cannot store the byte symbols");
        t->byte_sym[b] = (uint32_t)s;
        t->byte_sym_end[b] = (uint32_t)se;
    }
    int64_t s1 = sym_find(t, "<|startoftext|>", 15, "", 0, 1);
    int64_t s2 = s1 < 0 ? s1 : sym_find(t, "<|endoftext|>", 13, "", 0, 1);
    if (s2 < 0)
        return err_set((int)s2, "clip tokenizer: cannot store the special symbols");
    t->start_sym = (uint32_t)s1;
    t->end_sym = (uint32_t)s2;
    return 0;
}

int clip_tokenizer_load(const char *dir, clip_tokenizer **out)
{
    *out = NULL;
    pthread_once(&uni_once, uni_init);
    if (uni_status)
        return err_set(uni_status, "clip tokenizer: %s", uni_error);
    clip_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return err_set(ERR_NOMEM, "clip tokenizer: out of memory");
    char path[4096];
    int rc;
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    if ((rc = load_vocab(t, path)))
        goto fail;
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    if ((rc = load_merges(t, path)) || (rc = load_byte_symbols(t)) || (rc = load_config(t, dir)))
        goto fail;
    for (size_t i = 0; i < t->nsyms; i++) {
        struct sym *y = &t->syms[i];
        y->id = y->vocab_id >= 0 ? y->vocab_id : t->unk_id;
        for (size_t k = 0; k < t->nadded; k++)
            if (t->added[k].len == y->len && !memcmp(t->added[k].s, y->s, y->len))
                y->id = t->added[k].id;
    }

    /* The reference's pattern, with U+0345 added to the last class: under IGNORECASE the
     * `regex` module treats that combining mark (whose case variants are Greek iota) as a
     * letter for the negated class but not for [\p{L}], so findall skips it entirely;
     * PCRE2 ignores case for \p{..} and would keep it. */
    static const char pattern[] = "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|"
                                  "[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}\\x{345}]+";
    int ec;
    PCRE2_SIZE eo;
    t->pattern = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                               PCRE2_UTF | PCRE2_UCP | PCRE2_CASELESS, &ec, &eo, NULL);
    if (!t->pattern) {
        rc = err_set(ERR_FORMAT, "clip tokenizer: PCRE2 rejects the split pattern (error %d)", ec);
        goto fail;
    }
    pcre2_jit_compile(t->pattern, PCRE2_JIT_COMPLETE);
    *out = t;
    return 0;
fail:
    clip_tokenizer_free(t);
    return rc;
}

void clip_tokenizer_free(clip_tokenizer *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nblocks; i++)
        free(t->blocks[i]);
    free(t->blocks);
    free(t->syms);
    free(t->sym_table);
    free(t->merges);
    for (size_t i = 0; i < t->nadded; i++)
        free(t->added[i].s);
    free(t->added);
    pcre2_code_free(t->pattern);
    free(t);
}

int clip_tokenizer_max_length(const clip_tokenizer *t)
{
    return t->max_length;
}

/* ---- tokenizing ---- */

/* Growable buffers reused across the words of one call. */
struct work {
    uint8_t *text; /* cleaned segment, UTF-8 */
    size_t text_cap;
    int32_t *cps; /* one word's code points */
    size_t cps_cap;
    uint8_t *lower; /* one word, lowercased, UTF-8 */
    size_t lower_cap;
    struct node {
        uint32_t sym;
        int32_t prev, next; /* -1 at the ends; sym == UINT32_MAX once merged away */
    } *nodes;
    size_t nodes_cap;
    struct heap_item {
        uint32_t rank;
        int32_t pos;
    } *heap;
    size_t heap_len, heap_cap;
    pcre2_match_data *md;
    int32_t *ids; /* content ids, at most max_length - 2 */
    int nids, cap_ids;
};

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (!q)
        return err_set(ERR_NOMEM, "clip tokenizer: out of memory");
    *p = q;
    *cap = n;
    return 0;
}

static int heap_less(const struct heap_item *a, const struct heap_item *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int heap_push(struct work *w, uint32_t rank, int32_t pos)
{
    if (grow((void **)&w->heap, &w->heap_cap, w->heap_len + 1, sizeof *w->heap))
        return ERR_NOMEM;
    size_t i = w->heap_len++;
    struct heap_item it = {rank, pos};
    while (i && heap_less(&it, &w->heap[(i - 1) / 2])) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = it;
    return 0;
}

static struct heap_item heap_pop(struct work *w)
{
    struct heap_item top = w->heap[0], last = w->heap[--w->heap_len];
    size_t i = 0, n = w->heap_len;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && heap_less(&w->heap[c + 1], &w->heap[c]))
            c++;
        if (!heap_less(&w->heap[c], &last))
            break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n)
        w->heap[i] = last;
    return top;
}

static int push_pair(const clip_tokenizer *t, struct work *w, int32_t pos)
{
    int32_t next = w->nodes[pos].next;
    if (next < 0)
        return 0;
    const struct merge_slot *m = merge_find(t, w->nodes[pos].sym, w->nodes[next].sym);
    return m ? heap_push(w, m->rank, pos) : 0;
}

static void emit(struct work *w, int32_t id)
{
    if (w->nids < w->cap_ids)
        w->ids[w->nids++] = id;
}

/* The reference's bpe(): the word's bytes as byte symbols, the last one carrying "</w>", then
 * the lowest-ranked adjacent pair is merged, left to right, until none is in merges.txt. Heap
 * order (rank, position) reproduces that pass-by-pass order (see load_merges) in
 * O(n log n), so a megabyte-long word is not quadratic. */
static int bpe_word(const clip_tokenizer *t, struct work *w, const uint8_t *s, size_t n)
{
    if ((n == 15 && !memcmp(s, "<|startoftext|>", 15)) || (n == 13 && !memcmp(s, "<|endoftext|>", 13)))
    {
        emit(w, t->syms[n == 15 ? t->start_sym : t->end_sym].id);
        return 0;
    }
    if (grow((void **)&w->nodes, &w->nodes_cap, n, sizeof *w->nodes))
        return ERR_NOMEM;
    w->heap_len = 0;
    for (size_t i = 0; i < n; i++)
        w->nodes[i] = (struct node){i + 1 < n ? t->byte_sym[s[i]] : t->byte_sym_end[s[i]], (int32_t)i - 1,
                                    i + 1 < n ? (int32_t)i + 1 : -1};
    for (size_t i = 0; i + 1 < n; i++)
        if (push_pair(t, w, (int32_t)i))
            return ERR_NOMEM;
    while (w->heap_len) {
        struct heap_item it = heap_pop(w);
        struct node *a = &w->nodes[it.pos];
        if (a->sym == UINT32_MAX || a->next < 0)
            continue;
        struct node *b = &w->nodes[a->next];
        const struct merge_slot *m = merge_find(t, a->sym, b->sym);
        if (!m || m->rank != it.rank)
            continue; /* stale: one side changed since the pair was queued */
        a->sym = m->result;
        b->sym = UINT32_MAX;
        a->next = b->next;
        if (b->next >= 0)
            w->nodes[b->next].prev = it.pos;
        if ((a->prev >= 0 && push_pair(t, w, a->prev)) || push_pair(t, w, it.pos))
            return ERR_NOMEM;
    }
    for (int32_t i = 0; i >= 0 && w->nids < w->cap_ids; i = w->nodes[i].next)
        emit(w, t->syms[w->nodes[i].sym].id);
    return 0;
}

/* Python's str.lower() on one word: full lowercase mapping (U+0130 is the one unconditional
 * SpecialCasing entry), and U+03A3 becomes final sigma when a cased letter precedes it and
 * none follows, case-ignorable characters skipped on both sides (CPython's
 * handle_capital_sigma). */
static int lower_word(struct work *w, size_t ncp, size_t *out_len)
{
    if (grow((void **)&w->lower, &w->lower_cap, ncp * 4 + 4, 1))
        return ERR_NOMEM;
    size_t o = 0;
    for (size_t i = 0; i < ncp; i++) {
        int32_t c = w->cps[i];
        if (c == 0x130) {
            o += (size_t)utf8proc_encode_char('i', w->lower + o);
            c = 0x307;
        } else if (c == 0x3A3) {
            size_t j = i;
            while (j > 0 && uni_has(PROP_CASE_IGNORABLE, w->cps[j - 1]))
                j--;
            int final = j > 0 && uni_has(PROP_CASED, w->cps[j - 1]);
            for (j = i + 1; final && j < ncp && uni_has(PROP_CASE_IGNORABLE, w->cps[j]); j++)
                ;
            c = final && (j == ncp || !uni_has(PROP_CASED, w->cps[j])) ? 0x3C2 : 0x3C3;
        } else {
            c = utf8proc_tolower(c);
        }
        o += (size_t)utf8proc_encode_char(c, w->lower + o);
    }
    *out_len = o;
    return 0;
}

/* One whitespace-separated word of the BasicTokenizer output: lowercase, split with the
 * pattern (findall), then BPE on each piece's bytes. */
static int tokenize_word(const clip_tokenizer *t, struct work *w, const uint8_t *s, size_t n)
{
    size_t ncp = 0, len;
    if (grow((void **)&w->cps, &w->cps_cap, n, sizeof *w->cps))
        return ERR_NOMEM;
    for (size_t p = 0; p < n;)
        p += (size_t)utf8proc_iterate(s + p, (utf8proc_ssize_t)(n - p), &w->cps[ncp++]);
    if (lower_word(w, ncp, &len))
        return ERR_NOMEM;
    size_t off = 0;
    while (off < len && w->nids < w->cap_ids) {
        int rc = pcre2_match(t->pattern, w->lower, len, off, PCRE2_NO_UTF_CHECK, w->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0)
            return err_set(ERR_FORMAT, "clip tokenizer: PCRE2 match failed (error %d)", rc);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
        if (ov[1] == ov[0])
            return err_set(ERR_FORMAT, "clip tokenizer: empty match at byte %zu", (size_t)ov[0]);
        if (bpe_word(t, w, w->lower + ov[0], ov[1] - ov[0]))
            return ERR_NOMEM;
        off = ov[1];
    }
    return 0;
}

static int is_cjk(int32_t cp)
{
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
           (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) ||
           (cp >= 0x2B820 && cp <= 0x2CEAF) || (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* Text through BasicTokenizer.tokenize: _clean_text (drop NUL, U+FFFD and category C except
 * \t\n\r; those and Zs become spaces), spaces around CJK ideographs, NFC, then str.split(),
 * whose separators left at this point are the space, U+2028 and U+2029. */
static int tokenize_chunk(const clip_tokenizer *t, struct work *w, const uint8_t *s, size_t n)
{
    if (grow((void **)&w->text, &w->text_cap, n * 3 + 1, 1))
        return ERR_NOMEM;
    size_t o = 0;
    for (size_t p = 0; p < n;) {
        int32_t c;
        p += (size_t)utf8proc_iterate(s + p, (utf8proc_ssize_t)(n - p), &c);
        if (c == '\t' || c == '\n' || c == '\r' || uni_has(PROP_ZS, c)) {
            w->text[o++] = ' ';
        } else if (c != 0xFFFD && !uni_has(PROP_OTHER, c)) {
            int cjk = is_cjk(c);
            if (cjk)
                w->text[o++] = ' ';
            o += (size_t)utf8proc_encode_char(c, w->text + o);
            if (cjk)
                w->text[o++] = ' ';
        }
    }
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t nl = o ? utf8proc_map(w->text, (utf8proc_ssize_t)o, &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE) : 0;
    if (nl < 0)
        return err_set(nl == UTF8PROC_ERROR_NOMEM ? ERR_NOMEM : ERR_FORMAT, "clip tokenizer: NFC failed: %s",
                       utf8proc_errmsg(nl));
    int rc = 0;
    size_t start = 0;
    for (size_t p = 0; p <= (size_t)nl && w->nids < w->cap_ids;) {
        size_t sep = 0;
        if (p == (size_t)nl || nfc[p] == ' ')
            sep = 1;
        else if (nfc[p] == 0xE2 && nfc[p + 1] == 0x80 && (nfc[p + 2] == 0xA8 || nfc[p + 2] == 0xA9))
            sep = 3;
        if (!sep) {
            p++;
            continue;
        }
        if (p > start && (rc = tokenize_word(t, w, nfc + start, p - start)))
            break;
        p += sep;
        start = p;
    }
    free(nfc);
    return rc;
}

/* Text between added tokens, in chunks cut at ASCII spaces so that a long prompt stops
 * costing once max_length - 2 ids are out. A space is exact to cut at: it separates words,
 * and as a starter that composes with nothing it is an NFC boundary. */
static int tokenize_segment(const clip_tokenizer *t, struct work *w, const uint8_t *s, size_t n)
{
    enum { CHUNK = 16384 };
    for (size_t p = 0; p < n && w->nids < w->cap_ids;) {
        size_t end = n;
        if (n - p > CHUNK) {
            const uint8_t *sp = memchr(s + p + CHUNK, ' ', n - p - CHUNK);
            end = sp ? (size_t)(sp - s) : n;
        }
        int rc = tokenize_chunk(t, w, s + p, end - p);
        if (rc)
            return rc;
        p = end;
    }
    return 0;
}

/* Python's str.isspace(): White_Space plus U+001C..U+001F. */
static int py_space(int32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* One element of the reference's `tokens` list: a view of the text, or an owned string once
 * single_word glued a token to a neighbour. */
struct piece {
    const uint8_t *s;
    size_t len;
    uint8_t *own;
};

static size_t lstrip_len(const uint8_t *s, size_t n)
{
    size_t p = 0;
    while (p < n) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(s + p, (utf8proc_ssize_t)(n - p), &c);
        if (!py_space(c))
            break;
        p += (size_t)k;
    }
    return p;
}

static size_t rstrip_len(const uint8_t *s, size_t n)
{
    size_t e = n;
    while (e > 0) {
        size_t b = e - 1;
        while (b > 0 && (s[b] & 0xC0) == 0x80)
            b--;
        int32_t c;
        utf8proc_iterate(s + b, (utf8proc_ssize_t)(e - b), &c);
        if (!py_space(c))
            break;
        e = b;
    }
    return n - e;
}

static const struct added_token *find_added(const clip_tokenizer *t, const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < t->nadded; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].s, s, n))
            return &t->added[i];
    return NULL;
}

/* a + b as a new owned piece. */
static int glue(struct piece *dst, const uint8_t *a, size_t na, const uint8_t *b, size_t nb)
{
    uint8_t *o = malloc(na + nb + 1);
    if (!o)
        return err_set(ERR_NOMEM, "clip tokenizer: out of memory");
    memcpy(o, a, na);
    memcpy(o + na, b, nb);
    free(dst->own);
    *dst = (struct piece){o, na + nb, o};
    return 0;
}

/* tokens_trie.split() (the leftmost added token, the longest where several start), then
 * PreTrainedTokenizer.tokenize's pass over the pieces: rstrip lstrips the right neighbour,
 * lstrip rstrips the left one (Python's whitespace), and a single_word token whose original
 * neighbour does not end or start with a space is glued to it and tokenized as text. */
static int split_added(const clip_tokenizer *t, const uint8_t *s, size_t len, struct piece **out, size_t *nout)
{
    size_t n = 0, cap = 8, seg = 0;
    struct piece *v = malloc(cap * sizeof *v);
    if (!v)
        return err_set(ERR_NOMEM, "clip tokenizer: out of memory");
    for (size_t p = 0; p <= len;) {
        const struct added_token *hit = NULL;
        for (size_t i = 0; !t->split_special && p < len && i < t->nadded; i++)
            if (t->added[i].len <= len - p && !memcmp(s + p, t->added[i].s, t->added[i].len) &&
                (!hit || t->added[i].len > hit->len))
                hit = &t->added[i];
        if (!hit && p < len) {
            p++;
            continue;
        }
        if (n + 2 > cap) {
            struct piece *nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv) {
                free(v);
                return err_set(ERR_NOMEM, "clip tokenizer: out of memory");
            }
            v = nv;
        }
        if (p > seg)
            v[n++] = (struct piece){s + seg, p - seg, NULL};
        if (hit)
            v[n++] = (struct piece){s + p, hit->len, NULL};
        p += hit ? hit->len : 1;
        seg = p;
    }
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        const struct added_token *a = find_added(t, v[i].s, v[i].len);
        if (!a)
            continue;
        struct piece left = i > 0 ? v[i - 1] : (struct piece){0}, right = i + 1 < n ? v[i + 1] : (struct piece){0};
        if (a->rstrip && right.len) {
            size_t k = lstrip_len(right.s, right.len);
            v[i + 1].s += k;
            v[i + 1].len -= k;
        }
        if (a->lstrip && left.len)
            v[i - 1].len -= rstrip_len(left.s, left.len);
        if (a->single_word && left.len && left.s[left.len - 1] != ' ') {
            rc = glue(&v[i - 1], v[i - 1].s, v[i - 1].len, v[i].s, v[i].len);
            v[i].len = 0;
        } else if (a->single_word && right.len && right.s[0] != ' ') {
            rc = glue(&v[i + 1], v[i].s, v[i].len, v[i + 1].s, v[i + 1].len);
            v[i].len = 0;
        }
    }
    *out = v;
    *nout = n;
    return rc;
}

int clip_tokenize_content(const clip_tokenizer *t, const char *text, size_t len, int32_t *ids,
                          int cap)
{
    const uint8_t *s = (const uint8_t *)text;
    size_t bad = utf8_invalid_at(s, len);
    if (bad < len)
        return err_set(ERR_FORMAT, "clip tokenizer: prompt is not valid UTF-8 (byte offset %zu)", bad);
    struct work w = {0};
    w.cap_ids = cap;
    w.ids = ids;
    w.md = pcre2_match_data_create_from_pattern(t->pattern, NULL);
    int rc = w.md ? 0 : err_set(ERR_NOMEM, "clip tokenizer: out of memory");
    struct piece *pieces = NULL;
    size_t npieces = 0;
    if (!rc)
        rc = split_added(t, s, len, &pieces, &npieces);
    for (size_t i = 0; !rc && i < npieces && w.nids < w.cap_ids; i++) {
        if (!pieces[i].len)
            continue;
        const struct added_token *a = t->split_special ? NULL : find_added(t, pieces[i].s, pieces[i].len);
        if (a)
            emit(&w, a->id);
        else
            rc = tokenize_segment(t, &w, pieces[i].s, pieces[i].len);
    }
    for (size_t i = 0; i < npieces; i++)
        free(pieces[i].own);
    free(pieces);
    pcre2_match_data_free(w.md);
    free(w.text);
    free(w.cps);
    free(w.lower);
    free(w.nodes);
    free(w.heap);
    return rc ? rc : w.nids;
}

int clip_tokenize(const clip_tokenizer *t, const char *text, size_t len, int32_t *ids)
{
    int n = clip_tokenize_content(t, text, len, ids + 1, t->max_length - 2);
    if (n < 0)
        return n;
    ids[0] = t->bos_id;
    ids[1 + n] = t->eos_id;
    for (int i = n + 2; i < t->max_length; i++)
        ids[i] = t->pad_id;
    return t->max_length;
}
