/* T5 tokenizer (see t5_tokenizer.h), following tokenizers 0.22's Tokenizer::encode as
 * transformers 4.57's T5TokenizerFast calls it. AddedVocabulary::extract_and_normalize:
 * non-normalized added tokens are cut out of the raw text, each remaining segment is
 * normalized, normalized added tokens are cut out of that, and what is left is pre-tokenized
 * and segmented by the Unigram model; then "$A </s>" truncation and right padding. Added
 * tokens honour single_word, lstrip, rstrip, normalized and special as find_matches does.
 * tokenizer_config.json's add_prefix_space (and legacy) make transformers rebuild the
 * tokenizer from spiece.model; the rebuilt chain is applied here (rebuild_as_converted).
 * Only the component types T5 tokenizer.json files use are interpreted; any other is refused
 * at load time rather than approximated. Offsets are not tracked, except for whether a piece
 * begins at original byte 0 (Metaspace's prepend_scheme "first"). */
#include "engine/t5_tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "common/err.h"
#include "common/xalloc.h"
#include "engine/spm_precompiled.h"
#include "engine/t5_tok_buf.h"
#include "engine/t5_tok_unigram.h"

enum norm_kind { NORM_PRECOMPILED, NORM_STRIP, NORM_REPLACE };

typedef struct {
    enum norm_kind kind;
    spm_precompiled *charsmap;
    int strip_left, strip_right;
    pcre2_code *re;
    char *content;
} norm_step;

enum prepend_scheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };

typedef struct {
    int is_metaspace; /* else WhitespaceSplit */
    char repl[5];     /* the replacement char as UTF-8 */
    size_t repl_len;
    enum prepend_scheme prepend;
    int split;
} pretok_step;

/* An added token with the flags that change how it is matched. */
typedef struct {
    char *content;
    int32_t id;
    int single_word, lstrip, rstrip, normalized, special;
} added_token;

/* Added tokens as a byte trie for the leftmost-longest scan; tok indexes t5_tokenizer.tokens. */
typedef struct {
    int32_t first_child, next_sibling, tok;
    unsigned char byte;
} added_node;

typedef struct {
    added_node *v;
    size_t n, cap;
} added_trie;

struct t5_tokenizer {
    norm_step *norms;
    size_t n_norms;
    pretok_step *pretoks;
    size_t n_pretoks;
    t5_unigram *model;
    added_token *tokens;
    size_t n_tokens;
    added_trie raw, norm; /* matched before / after normalization */
    int split_special;    /* tokenizer_config.json split_special_tokens: specials not matched */
    pcre2_code *word_re;  /* the regex crate's \w, for single_word */
    int32_t prefix_ids[8], suffix_ids[8];
    int n_prefix, n_suffix;
    int32_t pad_id;
};

/* Text pieces of one stage: byte ranges of a shared buffer, plus whether the piece starts
 * at byte 0 of the original text. */
typedef struct {
    size_t off, len;
    int at_origin;
} piece;

typedef struct {
    t5_buf text;
    piece *v;
    size_t n, cap;
} piece_list;

static void pieces_add(piece_list *l, const char *s, size_t n, int at_origin)
{
    if (n == 0)
        return; /* tokenizers drops empty splits */
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = (piece){l->text.len, n, at_origin};
    t5_buf_put(&l->text, s, n);
}

static void pieces_clear(piece_list *l)
{
    l->n = 0;
    l->text.len = 0;
}

static void pieces_free(piece_list *l)
{
    free(l->text.data);
    free(l->v);
}

/* Rust's char::is_whitespace (the Unicode White_Space property). */
static int is_white_space(utf8proc_int32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static size_t char_at(const char *s, size_t n, size_t i, utf8proc_int32_t *c)
{
    return (size_t)utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), c);
}

/* ---- loading ---------------------------------------------------------------------- */

static const char *json_type_name(const json_t *o)
{
    const char *t = json_string_value(json_object_get(o, "type"));
    return t ? t : "(no type)";
}

static int load_normalizer(t5_tokenizer *t, const json_t *o)
{
    const char *type = json_type_name(o);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(o, "normalizers");
        if (!json_is_array(list))
            return err_set(ERR_FORMAT, "normalizer Sequence: \"normalizers\" is not an array");
        for (size_t i = 0; i < json_array_size(list); i++) {
            int rc = load_normalizer(t, json_array_get(list, i));
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    norm_step st = {0};
    if (!strcmp(type, "Precompiled")) {
        json_t *m = json_object_get(o, "precompiled_charsmap");
        if (!json_is_string(m))
            return err_set(ERR_FORMAT, "normalizer Precompiled: precompiled_charsmap is not a string");
        st.kind = NORM_PRECOMPILED;
        int rc = spm_precompiled_load(json_string_value(m), json_string_length(m), &st.charsmap);
        if (rc < 0)
            return err_prefix(rc, "normalizer Precompiled: ");
    } else if (!strcmp(type, "Strip")) {
        st.kind = NORM_STRIP;
        st.strip_left = json_is_true(json_object_get(o, "strip_left"));
        st.strip_right = json_is_true(json_object_get(o, "strip_right"));
    } else if (!strcmp(type, "Replace")) {
        json_t *pat = json_object_get(o, "pattern"), *content = json_object_get(o, "content");
        json_t *str = json_object_get(pat, "String"), *rx = json_object_get(pat, "Regex");
        const json_t *p = json_is_string(str) ? str : rx;
        if (!json_is_string(p) || !json_is_string(content))
            return err_set(ERR_FORMAT, "normalizer Replace: needs pattern.String or pattern.Regex and content");
        int errcode;
        PCRE2_SIZE erroff;
        uint32_t flags = PCRE2_UTF | (p == str ? PCRE2_LITERAL : 0);
        st.kind = NORM_REPLACE;
        st.re = pcre2_compile((PCRE2_SPTR)json_string_value(p), json_string_length(p), flags, &errcode,
                              &erroff, NULL);
        if (!st.re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(errcode, msg, sizeof msg);
            return err_set(ERR_FORMAT, "normalizer Replace: pattern \"%s\" at %zu: %s",
                           json_string_value(p), (size_t)erroff, (char *)msg);
        }
        st.content = xstrdup(json_string_value(content));
    } else {
        return err_set(ERR_FORMAT, "normalizer type \"%s\" is not supported", type);
    }
    t->norms = xrealloc(t->norms, (t->n_norms + 1) * sizeof *t->norms);
    t->norms[t->n_norms++] = st;
    return 0;
}

static int load_pretokenizer(t5_tokenizer *t, const json_t *o)
{
    const char *type = json_type_name(o);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(o, "pretokenizers");
        if (!json_is_array(list))
            return err_set(ERR_FORMAT, "pre_tokenizer Sequence: \"pretokenizers\" is not an array");
        for (size_t i = 0; i < json_array_size(list); i++) {
            int rc = load_pretokenizer(t, json_array_get(list, i));
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    pretok_step st = {0};
    if (!strcmp(type, "Metaspace")) {
        const char *r = json_string_value(json_object_get(o, "replacement"));
        utf8proc_int32_t c;
        if (!r || !*r || char_at(r, strlen(r), 0, &c) != strlen(r) || strlen(r) >= sizeof st.repl)
            return err_set(ERR_FORMAT, "pre_tokenizer Metaspace: replacement must be one char");
        st.is_metaspace = 1;
        memcpy(st.repl, r, strlen(r) + 1);
        st.repl_len = strlen(r);
        /* tokenizers 0.20: prepend_scheme defaults to always; a legacy add_prefix_space of
         * false means never (and contradicts any other explicit scheme). */
        const char *scheme = json_string_value(json_object_get(o, "prepend_scheme"));
        json_t *aps = json_object_get(o, "add_prefix_space");
        st.prepend = PREPEND_ALWAYS;
        if (scheme && !strcmp(scheme, "first"))
            st.prepend = PREPEND_FIRST;
        else if (scheme && !strcmp(scheme, "never"))
            st.prepend = PREPEND_NEVER;
        else if (scheme && strcmp(scheme, "always"))
            return err_set(ERR_FORMAT, "pre_tokenizer Metaspace: prepend_scheme \"%s\" is unknown", scheme);
        if (json_is_false(aps)) {
            if (st.prepend != PREPEND_NEVER && scheme)
                return err_set(ERR_FORMAT, "pre_tokenizer Metaspace: add_prefix_space does not match prepend_scheme");
            st.prepend = PREPEND_NEVER;
        }
        json_t *split = json_object_get(o, "split");
        st.split = split ? json_is_true(split) : 1;
    } else if (strcmp(type, "WhitespaceSplit")) {
        return err_set(ERR_FORMAT, "pre_tokenizer type \"%s\" is not supported", type);
    }
    t->pretoks = xrealloc(t->pretoks, (t->n_pretoks + 1) * sizeof *t->pretoks);
    t->pretoks[t->n_pretoks++] = st;
    return 0;
}

static int normalize(const t5_tokenizer *t, t5_buf *b, int *at_origin, pcre2_match_data **md);

static void trie_insert(added_trie *tr, const unsigned char *s, size_t n, int32_t tok)
{
    if (!tr->v) {
        tr->cap = 256;
        tr->v = xmalloc(tr->cap * sizeof *tr->v);
        tr->v[0] = (added_node){-1, -1, -1, 0};
        tr->n = 1;
    }
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = tr->v[node].first_child;
        while (c >= 0 && tr->v[c].byte != s[i])
            c = tr->v[c].next_sibling;
        if (c < 0) {
            if (tr->n == tr->cap) {
                tr->cap *= 2;
                tr->v = xrealloc(tr->v, tr->cap * sizeof *tr->v);
            }
            c = (int32_t)tr->n++;
            tr->v[c] = (added_node){-1, tr->v[node].first_child, -1, s[i]};
            tr->v[node].first_child = c;
        }
        node = c;
    }
    tr->v[node].tok = tok;
}

/* One AddedToken object ({"content", flags...}); where names it in messages. Absent flags
 * take AddedToken's defaults (normalized = !special); present ones must be booleans. */
static int parse_added(t5_tokenizer *t, const json_t *a, json_int_t id, const char *where)
{
    json_t *content = json_object_get(a, "content");
    if (!json_is_object(a) || !json_is_string(content) || json_string_length(content) == 0)
        return err_set(ERR_FORMAT, "%s: \"content\" must be a non-empty string", where);
    if (id < 0 || id > INT32_MAX)
        return err_set(ERR_FORMAT, "%s \"%s\": id must be an integer in [0, 2^31)", where, json_string_value(content));
    static const char *const names[] = {"single_word", "lstrip", "rstrip", "normalized", "special"};
    int v[5] = {0, 0, 0, -1, 0};
    for (int f = 0; f < 5; f++) {
        json_t *x = json_object_get(a, names[f]);
        if (x && !json_is_boolean(x))
            return err_set(ERR_FORMAT, "%s \"%s\": \"%s\" must be true or false", where, json_string_value(content),
                           names[f]);
        if (x)
            v[f] = json_is_true(x);
    }
    static const char *const known[] = {"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special", "__type"};
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)a, key, val) {
        size_t k = 0;
        while (k < sizeof known / sizeof *known && strcmp(key, known[k]))
            k++;
        if (k == sizeof known / sizeof *known)
            return err_set(ERR_FORMAT, "%s \"%s\": unknown field \"%s\"", where, json_string_value(content), key);
    }
    t->tokens = xrealloc(t->tokens, (t->n_tokens + 1) * sizeof *t->tokens);
    t->tokens[t->n_tokens++] = (added_token){xstrdup(json_string_value(content)), (int32_t)id, v[0], v[1], v[2],
                                             v[3] < 0 ? !v[4] : v[3], v[4]};
    return 0;
}

/* tokenizer.json's "added_tokens": an array of AddedToken objects with their "id". */
static int load_added_list(t5_tokenizer *t, const json_t *list)
{
    if (!list || json_is_null(list))
        return 0;
    if (!json_is_array(list))
        return err_set(ERR_FORMAT, "\"added_tokens\" is not an array");
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *a = json_array_get(list, i), *id = json_object_get(a, "id");
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        int rc = parse_added(t, a, json_is_integer(id) ? json_integer_value(id) : -1, where);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* tokenizer_config.json's "added_tokens_decoder": {"<id>": AddedToken, ...}. */
static int load_added_decoder(t5_tokenizer *t, const json_t *dec)
{
    if (!json_is_object(dec))
        return err_set(ERR_FORMAT, "\"added_tokens_decoder\" is not an object");
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)dec, key, val) {
        char *end;
        long long id = strtoll(key, &end, 10);
        char where[96];
        snprintf(where, sizeof where, "added_tokens_decoder[\"%.40s\"]", key);
        int rc = parse_added(t, val, *key && !*end ? id : -1, where);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* The two tries of AddedVocabulary::refresh_added_tokens: non-normalized tokens by content,
 * normalized ones by their content passed through the normalizer. */
static int build_tries(t5_tokenizer *t)
{
    pcre2_match_data **md = xcalloc(t->n_norms ? t->n_norms : 1, sizeof *md);
    int rc = 0, need_word = 0;
    for (size_t i = 0; i < t->n_tokens && rc == 0; i++) {
        const added_token *a = &t->tokens[i];
        need_word |= a->single_word;
        if (!a->normalized) {
            trie_insert(&t->raw, (const unsigned char *)a->content, strlen(a->content), (int32_t)i);
            continue;
        }
        t5_buf b = {0};
        int at_origin = 1;
        t5_buf_put(&b, a->content, strlen(a->content));
        rc = normalize(t, &b, &at_origin, md);
        if (rc == 0 && b.len > 0) /* an empty pattern would match everywhere: such a token never applies */
            trie_insert(&t->norm, (const unsigned char *)b.data, b.len, (int32_t)i);
        free(b.data);
    }
    for (size_t i = 0; i < t->n_norms; i++)
        pcre2_match_data_free(md[i]);
    free(md);
    if (rc == 0 && need_word) {
        /* The regex crate's Unicode \w (UTS #18): Alphabetic, marks, decimal digits,
         * connector punctuation and the two joiners. */
        int ec;
        PCRE2_SIZE eo;
        t->word_re = pcre2_compile((PCRE2_SPTR) "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]",
                                   PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_ANCHORED, &ec, &eo, NULL);
        if (!t->word_re)
            rc = err_set(ERR_FORMAT, "single_word: PCRE2 lacks \\p{Alphabetic} (needs PCRE2 >= 10.40)");
    }
    return rc;
}

/* The id of a token by content, as transformers resolves it: added tokens, then the model. */
static int32_t token_id(const t5_tokenizer *t, const char *s)
{
    for (size_t i = t->n_tokens; i-- > 0;)
        if (!strcmp(t->tokens[i].content, s))
            return t->tokens[i].id;
    return t5_unigram_piece_id(t->model, s, strlen(s));
}

static int load_template(t5_tokenizer *t, const json_t *pp)
{
    if (!pp || json_is_null(pp))
        return 0;
    if (strcmp(json_type_name(pp), "TemplateProcessing"))
        return err_set(ERR_FORMAT, "post_processor type \"%s\" is not supported", json_type_name(pp));
    json_t *single = json_object_get(pp, "single"), *specials = json_object_get(pp, "special_tokens");
    if (!json_is_array(single))
        return err_set(ERR_FORMAT, "post_processor: \"single\" is not an array");
    int seen_a = 0;
    for (size_t i = 0; i < json_array_size(single); i++) {
        json_t *item = json_array_get(single, i);
        json_t *seq = json_object_get(item, "Sequence"), *sp = json_object_get(item, "SpecialToken");
        if (seq) {
            if (seen_a)
                return err_set(ERR_FORMAT, "post_processor: \"single\" has more than one sequence");
            seen_a = 1;
            continue;
        }
        const char *name = json_string_value(json_object_get(sp, "id"));
        json_t *ids = json_object_get(json_object_get(specials, name ? name : ""), "ids");
        if (!name || !json_is_array(ids))
            return err_set(ERR_FORMAT, "post_processor: special token %zu has no ids", i);
        for (size_t k = 0; k < json_array_size(ids); k++) {
            int *n = seen_a ? &t->n_suffix : &t->n_prefix;
            int32_t *dst = seen_a ? t->suffix_ids : t->prefix_ids;
            if (*n == (int)(sizeof t->prefix_ids / sizeof *t->prefix_ids))
                return err_set(ERR_FORMAT, "post_processor: too many special tokens");
            dst[(*n)++] = (int32_t)json_integer_value(json_array_get(ids, k));
        }
    }
    if (!seen_a)
        return err_set(ERR_FORMAT, "post_processor: \"single\" has no $A sequence");
    return 0;
}

/* A field of tokenizer_config.json that must be a boolean or null; *out keeps its default
 * (-1: unset) when absent or null. */
static int config_bool(const json_t *cfg, const char *key, const char *path, int *out)
{
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return err_set(ERR_FORMAT, "%s: \"%s\" must be true, false or null", path, key);
    *out = json_is_true(v);
    return 0;
}

/* transformers 4.57's T5TokenizerFast converts from spiece.model whenever add_prefix_space
 * is set (true or false), and SpmConverter then builds: normalizer [Precompiled(charsmap),
 * Strip(right), Replace(" {2,}" -> "▁")], pre-tokenizer Metaspace("▁", split) whose
 * prepend_scheme is "always" (add_prefix_space and legacy), "first" (legacy false) or
 * "never", and the added tokens of tokenizer_config.json. The vocabulary and charsmap are
 * tokenizer.json's: converting spiece.model gives the same ones (tools/reference checks
 * this on the published files). */
static int rebuild_as_converted(t5_tokenizer *t, int add_prefix_space, int legacy)
{
    norm_step pre = {0};
    int have_pre = 0;
    for (size_t i = 0; i < t->n_norms; i++) {
        if (t->norms[i].kind == NORM_PRECOMPILED && !have_pre) {
            pre = t->norms[i];
            have_pre = 1;
            continue;
        }
        spm_precompiled_free(t->norms[i].charsmap);
        pcre2_code_free(t->norms[i].re);
        free(t->norms[i].content);
    }
    t->n_norms = 0;
    t->norms = xrealloc(t->norms, 3 * sizeof *t->norms);
    if (have_pre)
        t->norms[t->n_norms++] = pre;
    t->norms[t->n_norms++] = (norm_step){.kind = NORM_STRIP, .strip_right = 1};
    int ec;
    PCRE2_SIZE eo;
    norm_step rep = {.kind = NORM_REPLACE, .content = xstrdup("\xe2\x96\x81")};
    rep.re = pcre2_compile((PCRE2_SPTR) " {2,}", PCRE2_ZERO_TERMINATED, PCRE2_UTF, &ec, &eo, NULL);
    t->norms[t->n_norms++] = rep;
    if (!rep.re)
        return err_set(ERR_FORMAT, "cannot compile the converter's Replace pattern");
    t->pretoks = xrealloc(t->pretoks, sizeof *t->pretoks);
    t->n_pretoks = 1;
    t->pretoks[0] = (pretok_step){.is_metaspace = 1, .repl = "\xe2\x96\x81", .repl_len = 3, .split = 1,
                                  .prepend = !add_prefix_space ? PREPEND_NEVER : legacy ? PREPEND_ALWAYS : PREPEND_FIRST};
    return 0;
}

/* tokenizer_config.json (optional): the pad token transformers pads with, split_special_tokens,
 * and the settings that make transformers rebuild the tokenizer. */
static int load_config(t5_tokenizer *t, const char *dir, const json_t *json_added)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_error_t jerr;
    json_t *cfg = json_load_file(path, 0, &jerr);
    if (!cfg && jerr.line >= 0)
        return err_set(ERR_FORMAT, "%s: %s (line %d)", path, jerr.text, jerr.line);
    if (cfg && !json_is_object(cfg)) {
        json_decref(cfg);
        return err_set(ERR_FORMAT, "%s: not a JSON object", path);
    }
    int aps = -1, legacy = -1, split = -1, rc;
    if ((rc = config_bool(cfg, "add_prefix_space", path, &aps)) < 0 ||
        (rc = config_bool(cfg, "legacy", path, &legacy)) < 0 ||
        (rc = config_bool(cfg, "split_special_tokens", path, &split)) < 0)
        goto done;
    t->split_special = split == 1;
    json_t *dec = json_object_get(cfg, "added_tokens_decoder");
    if (aps >= 0) {
        rc = rebuild_as_converted(t, aps, legacy != 0); /* the slow tokenizer takes legacy None as true */
        if (rc == 0 && dec && !json_is_null(dec))
            rc = load_added_decoder(t, dec);
        else if (rc == 0)
            rc = load_added_list(t, json_added);
    } else {
        rc = load_added_list(t, json_added);
    }
    if (rc < 0) {
        char json_path[4096];
        snprintf(json_path, sizeof json_path, "%s/tokenizer.json", dir);
        rc = err_prefix(rc, "%s: ", aps >= 0 && dec ? path : json_path);
        goto done;
    }
    if ((rc = build_tries(t)) < 0)
        goto done;
    json_t *pad = json_object_get(cfg, "pad_token");
    if (json_is_object(pad))
        pad = json_object_get(pad, "content");
    if (pad && !json_is_null(pad) && !json_is_string(pad)) {
        rc = err_set(ERR_FORMAT, "%s: \"pad_token\" must be a string or a token object with \"content\"", path);
        goto done;
    }
    const char *name = json_is_string(pad) ? json_string_value(pad) : "<pad>";
    t->pad_id = token_id(t, name);
    if (t->pad_id < 0)
        rc = err_set(ERR_FORMAT, "%s: pad token \"%s\" is not in the vocabulary", path, name);
done:
    json_decref(cfg);
    return rc;
}

static int load_json(t5_tokenizer *t, const json_t *root)
{
    if (!json_is_object(root))
        return err_set(ERR_FORMAT, "not a JSON object");
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return err_set(ERR_FORMAT, "no \"model\" object");
    if (strcmp(json_type_name(model), "Unigram"))
        return err_set(ERR_FORMAT, "model type \"%s\" is not supported", json_type_name(model));
    int rc = t5_unigram_load(model, &t->model);
    json_t *norm = json_object_get(root, "normalizer"), *pre = json_object_get(root, "pre_tokenizer");
    if (rc == 0 && norm && !json_is_null(norm))
        rc = load_normalizer(t, norm);
    if (rc == 0 && pre && !json_is_null(pre))
        rc = load_pretokenizer(t, pre);
    if (rc == 0)
        rc = load_template(t, json_object_get(root, "post_processor"));
    return rc;
}

int t5_tokenizer_load(const char *dir, t5_tokenizer **out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        return err_set(jerr.line < 0 ? ERR_IO : ERR_FORMAT, "%s: %s (line %d)", path, jerr.text, jerr.line);
    t5_tokenizer *t = xcalloc(1, sizeof *t);
    int rc = load_json(t, root);
    if (rc < 0)
        rc = err_prefix(rc, "%s: ", path);
    else
        rc = load_config(t, dir, json_object_get(root, "added_tokens"));
    json_decref(root);
    if (rc < 0) {
        t5_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void t5_tokenizer_free(t5_tokenizer *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n_norms; i++) {
        spm_precompiled_free(t->norms[i].charsmap);
        pcre2_code_free(t->norms[i].re);
        free(t->norms[i].content);
    }
    free(t->norms);
    free(t->pretoks);
    t5_unigram_free(t->model);
    for (size_t i = 0; i < t->n_tokens; i++)
        free(t->tokens[i].content);
    free(t->tokens);
    free(t->raw.v);
    free(t->norm.v);
    pcre2_code_free(t->word_re);
    free(t);
}

/* ---- normalization ---------------------------------------------------------------- */

static void strip(t5_buf *b, int left, int right, int *at_origin)
{
    size_t a = 0, e = b->len;
    utf8proc_int32_t c;
    while (left && a < e) {
        size_t k = char_at(b->data, e, a, &c);
        if (!is_white_space(c))
            break;
        a += k;
    }
    while (right && e > a) {
        size_t s = e - 1;
        while (s > a && (b->data[s] & 0xC0) == 0x80)
            s--;
        char_at(b->data, e, s, &c);
        if (!is_white_space(c))
            break;
        e = s;
    }
    /* A stripped head moves the first char's original offset off 0. */
    if (a > 0)
        *at_origin = 0;
    memmove(b->data, b->data + a, e - a);
    b->len = e - a;
    b->data[b->len] = 0;
}

static int replace(const norm_step *st, t5_buf *b, pcre2_match_data *md)
{
    t5_buf out = {0};
    t5_buf_reserve(&out, b->len);
    size_t pos = 0, copied = 0, clen = strlen(st->content);
    while (pos <= b->len) {
        int rc = pcre2_match(st->re, (PCRE2_SPTR)b->data, b->len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            free(out.data);
            return err_set(ERR_FORMAT, "normalizer Replace: regex match failed (%d)", rc);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        t5_buf_put(&out, b->data + copied, ov[0] - copied);
        t5_buf_put(&out, st->content, clen);
        copied = ov[1];
        if (ov[1] > ov[0]) {
            pos = ov[1];
        } else if (ov[1] < b->len) {
            /* An empty match: step over one char, as a find-all iterator does. */
            pos = ov[1] + (size_t)utf8proc_utf8class[(unsigned char)b->data[ov[1]]];
        } else {
            break;
        }
    }
    t5_buf_put(&out, b->data + copied, b->len - copied);
    free(b->data);
    *b = out;
    return 0;
}

/* Runs the normalizer chain over b in place. */
static int normalize(const t5_tokenizer *t, t5_buf *b, int *at_origin, pcre2_match_data **md)
{
    for (size_t i = 0; i < t->n_norms; i++) {
        const norm_step *st = &t->norms[i];
        int rc = 0;
        if (st->kind == NORM_PRECOMPILED) {
            char *o;
            size_t n;
            rc = spm_precompiled_normalize(st->charsmap, b->data, b->len, &o, &n);
            if (rc == 0) {
                free(b->data);
                b->data = o;
                b->len = n;
                b->cap = n + 1;
            }
        } else if (st->kind == NORM_STRIP) {
            strip(b, st->strip_left, st->strip_right, at_origin);
        } else {
            if (!md[i])
                md[i] = pcre2_match_data_create_from_pattern(st->re, NULL);
            rc = replace(st, b, md[i]);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- pre-tokenization --------------------------------------------------------------- */

static void whitespace_split(const piece_list *in, piece_list *out)
{
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->text.data + in->v[i].off;
        size_t n = in->v[i].len, word = 0, j = 0;
        while (j < n) {
            utf8proc_int32_t c;
            size_t k = char_at(s, n, j, &c);
            if (is_white_space(c)) {
                pieces_add(out, s + word, j - word, in->v[i].at_origin && word == 0);
                word = j + k;
            }
            j += k;
        }
        pieces_add(out, s + word, n - word, in->v[i].at_origin && word == 0);
    }
}

static void metaspace(const pretok_step *st, const piece_list *in, piece_list *out, t5_buf *tmp)
{
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->text.data + in->v[i].off;
        size_t n = in->v[i].len;
        tmp->len = 0;
        /* The prefix test runs after spaces became the replacement. */
        int starts = s[0] == ' ' || (n >= st->repl_len && !memcmp(s, st->repl, st->repl_len));
        int prepend = st->prepend == PREPEND_ALWAYS || (st->prepend == PREPEND_FIRST && in->v[i].at_origin);
        if (prepend && !starts)
            t5_buf_put(tmp, st->repl, st->repl_len);
        for (size_t j = 0; j < n; j++) {
            if (s[j] == ' ')
                t5_buf_put(tmp, st->repl, st->repl_len);
            else
                t5_buf_put(tmp, s + j, 1);
        }
        if (!st->split) {
            pieces_add(out, tmp->data, tmp->len, in->v[i].at_origin);
            continue;
        }
        /* Split with the delimiter merged into the following piece. */
        size_t word = 0;
        for (size_t j = 1; j + st->repl_len <= tmp->len; j++) {
            if (!memcmp(tmp->data + j, st->repl, st->repl_len)) {
                pieces_add(out, tmp->data + word, j - word, in->v[i].at_origin && word == 0);
                word = j;
            }
        }
        pieces_add(out, tmp->data + word, tmp->len - word, in->v[i].at_origin && word == 0);
    }
}

/* ---- encoding ----------------------------------------------------------------------- */

typedef struct {
    const t5_tokenizer *t;
    size_t cap; /* content tokens kept after truncation */
    t5_ids content;
    piece_list a, b;
    t5_buf tmp;
    pcre2_match_data **md;
    pcre2_match_data *word_md;
    t5_viterbi_scratch w;
} encoder;

/* Pre-tokenizes and segments one normalized span that holds no added token. */
static void encode_plain(encoder *e, const char *s, size_t n, int at_origin)
{
    if (n == 0 || e->content.n >= e->cap)
        return;
    pieces_clear(&e->a);
    pieces_add(&e->a, s, n, at_origin);
    piece_list *cur = &e->a, *next = &e->b;
    for (size_t i = 0; i < e->t->n_pretoks; i++) {
        pieces_clear(next);
        if (e->t->pretoks[i].is_metaspace)
            metaspace(&e->t->pretoks[i], cur, next, &e->tmp);
        else
            whitespace_split(cur, next);
        piece_list *swap = cur;
        cur = next;
        next = swap;
    }
    for (size_t i = 0; i < cur->n && e->content.n < e->cap; i++)
        t5_unigram_encode(e->t->model, cur->text.data + cur->v[i].off, cur->v[i].len, &e->w, &e->content);
}

/* Leftmost-longest match at s[pos..) in tr; returns its length (0: none) and the token. */
static size_t trie_match(const added_trie *tr, const char *s, size_t n, size_t pos, int32_t *tok)
{
    size_t best = 0;
    int32_t node = 0;
    for (size_t j = pos; tr->v && j < n; j++) {
        int32_t c = tr->v[node].first_child;
        while (c >= 0 && tr->v[c].byte != (unsigned char)s[j])
            c = tr->v[c].next_sibling;
        if (c < 0)
            break;
        node = c;
        if (tr->v[node].tok >= 0) {
            best = j + 1 - pos;
            *tok = tr->v[node].tok;
        }
    }
    return best;
}

static int is_word_char(encoder *e, const char *s, size_t n)
{
    if (!e->word_md)
        e->word_md = pcre2_match_data_create_from_pattern(e->t->word_re, NULL);
    return pcre2_match(e->t->word_re, (PCRE2_SPTR)s, n, 0, PCRE2_NO_UTF_CHECK, e->word_md, NULL) > 0;
}

/* Start of the last char of s[0..n), n > 0. */
static size_t last_char(const char *s, size_t n)
{
    size_t i = n - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80)
        i--;
    return i;
}

/* Spans between added tokens, handed to emit_span; tokens go to e->content. */
typedef int (*span_fn)(encoder *e, const char *s, size_t n, int at_origin);

/* AddedVocabulary::find_matches over s with trie tr: the scan resumes after each match's
 * own end (a discarded single_word match hides the tokens inside it), single_word needs no
 * \w char on either side, lstrip and rstrip take the White_Space run before and after the
 * token (never what an earlier match took), and with split_special_tokens no special token
 * matches. */
static int split_added(encoder *e, const added_trie *tr, const char *s, size_t n, int at_origin, span_fn span)
{
    const t5_tokenizer *t = e->t;
    size_t start_offset = 0;
    if (!tr->v)
        return span(e, s, n, at_origin);
    for (size_t pos = 0; pos < n && e->content.n < e->cap;) {
        int32_t k = -1;
        size_t m = trie_match(tr, s, n, pos, &k);
        if (m == 0) {
            pos++;
            continue;
        }
        size_t start = pos, stop = pos + m;
        pos = stop;
        const added_token *a = &t->tokens[k];
        if (t->split_special && a->special)
            continue;
        if (a->single_word) {
            int word_before = start > 0 && is_word_char(e, s + last_char(s, start), start - last_char(s, start));
            int word_after = stop < n && is_word_char(e, s + stop, char_at(s, n, stop, &(utf8proc_int32_t){0}));
            if (word_before || word_after)
                continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            utf8proc_int32_t c;
            while (ns > start_offset) {
                size_t p = last_char(s, ns);
                char_at(s, n, p, &c);
                if (!is_white_space(c))
                    break;
                ns = p;
            }
            start = ns;
        }
        if (a->rstrip) {
            utf8proc_int32_t c;
            size_t k2;
            while (stop < n && (k2 = char_at(s, n, stop, &c)) > 0 && is_white_space(c))
                stop += k2;
        }
        if (start < start_offset)
            start = start_offset; /* only a token starting with white space gets here */
        if (start_offset < start) {
            int rc = span(e, s + start_offset, start - start_offset, at_origin && start_offset == 0);
            if (rc < 0)
                return rc;
        }
        if (e->content.n < e->cap)
            t5_ids_push(&e->content, a->id);
        start_offset = stop;
    }
    if (start_offset < n)
        return span(e, s + start_offset, n - start_offset, at_origin && start_offset == 0);
    return 0;
}

static int plain_span(encoder *e, const char *s, size_t n, int at_origin)
{
    encode_plain(e, s, n, at_origin);
    return 0;
}

/* A raw span without non-normalized tokens: normalized, then split on normalized tokens. */
static int normalized_span(encoder *e, const char *s, size_t n, int at_origin)
{
    if (e->content.n >= e->cap)
        return 0;
    t5_buf text = {0};
    t5_buf_put(&text, s, n);
    int rc = normalize(e->t, &text, &at_origin, e->md);
    if (rc == 0)
        rc = split_added(e, &e->t->norm, text.data, text.len, at_origin, plain_span);
    free(text.data);
    return rc;
}

static int encode_text(encoder *e, const char *text, size_t len)
{
    return split_added(e, &e->t->raw, text, len, 1, normalized_span);
}

int t5_tokenize_content(const t5_tokenizer *t, const char *text, size_t len, int32_t *ids,
                        int cap)
{
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)text + i, (utf8proc_ssize_t)(len - i), &c);
        if (k <= 0)
            return err_set(ERR_FORMAT, "t5 tokenizer: prompt is not valid UTF-8 at byte %zu", i);
        i += (size_t)k;
    }
    encoder e = {.t = t, .cap = (size_t)cap};
    e.md = xcalloc(t->n_norms ? t->n_norms : 1, sizeof *e.md);
    int rc = encode_text(&e, text, len);
    if (rc == 0) {
        rc = (int)(e.content.n < e.cap ? e.content.n : e.cap);
        if (rc)
            memcpy(ids, e.content.v, (size_t)rc * sizeof *ids);
    }
    for (size_t i = 0; i < t->n_norms; i++)
        pcre2_match_data_free(e.md[i]);
    free(e.md);
    pcre2_match_data_free(e.word_md);
    free(e.content.v);
    pieces_free(&e.a);
    pieces_free(&e.b);
    free(e.tmp.data);
    t5_viterbi_scratch_free(&e.w);
    return rc;
}

void t5_tokenizer_specials(const t5_tokenizer *t, int *before, int *after)
{
    *before = t->n_prefix;
    *after = t->n_suffix;
}

int t5_tokenize(const t5_tokenizer *t, const char *text, size_t len, int max_length, int32_t *ids)
{
    int n_special = t->n_prefix + t->n_suffix;
    if (max_length < 1 || max_length < n_special)
        return err_set(ERR_RANGE, "t5 tokenizer: max_length %d leaves no room for %d special tokens",
                       max_length, n_special);
    int keep = t5_tokenize_content(t, text, len, ids + t->n_prefix, max_length - n_special);
    if (keep < 0)
        return keep;
    int n = 0;
    for (int i = 0; i < t->n_prefix; i++)
        ids[n++] = t->prefix_ids[i];
    n += keep;
    for (int i = 0; i < t->n_suffix; i++)
        ids[n++] = t->suffix_ids[i];
    while (n < max_length)
        ids[n++] = t->pad_id;
    return max_length;
}
