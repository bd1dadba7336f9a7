/* The T5 tokenizer against transformers' T5TokenizerFast: every golden case at the pipeline's
 * max_length of 256 and truncated to 77, refusal of invalid UTF-8, clear load errors for
 * corrupt or unsupported tokenizer.json files, and the speed of a 1 MB prompt. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "engine/t5_tokenizer.h"
#include "tests/unit/check.h"

static char tok_dir[1024];
static t5_tokenizer *tok;

static json_t *load_cases(void)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/golden/tokenizer/cases.json", fixtures_dir());
    json_error_t e;
    json_t *cases = json_load_file(path, JSON_ALLOW_NUL, &e);
    CHECKF(json_is_array(cases), "%s: %s", path, e.text);
    return cases;
}

/* The golden content ids: everything before the final </s>, which is the last id when the
 * 256 ids were filled (maybe truncated), else the id before the padding. */
static size_t golden_content(const json_t *t5, int32_t *out)
{
    size_t end = json_array_size(t5);
    while (end > 0 && json_integer_value(json_array_get(t5, end - 1)) == 0)
        end--;
    if (json_integer_value(json_array_get(t5, json_array_size(t5) - 1)) != 0)
        end = json_array_size(t5);
    for (size_t i = 0; i + 1 < end; i++)
        out[i] = (int32_t)json_integer_value(json_array_get(t5, i));
    return end ? end - 1 : 0;
}

static void test_golden_cases(void)
{
    json_t *cases = load_cases();
    size_t n = json_array_size(cases), fails = 0;
    CHECKF(n >= 500, "only %zu golden cases", n);
    int32_t ids[256], ids77[77], content[256];
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(cases, i);
        json_t *text = json_object_get(c, "text"), *t5 = json_object_get(c, "t5");
        CHECK(json_array_size(t5) == 256);
        int rc = t5_tokenize(tok, json_string_value(text), json_string_length(text), 256, ids);
        int same = rc == 256;
        for (size_t k = 0; same && k < 256; k++)
            same = ids[k] == json_integer_value(json_array_get(t5, k));
        size_t nc = golden_content(t5, content);
        /* Truncation to 77: the first 76 content ids, then </s>, then padding. */
        rc = t5_tokenize(tok, json_string_value(text), json_string_length(text), 77, ids77);
        int same77 = rc == 77;
        for (size_t k = 0; same77 && k < 77; k++) {
            int32_t want = k < nc && k < 76 ? content[k] : k == (nc < 76 ? nc : 76) ? 1 : 0;
            same77 = ids77[k] == want;
        }
        if ((!same || !same77) && fails++ < 5)
            CHECKF(0, "case %zu (%s): %s differs", i, json_string_value(text), !same ? "max_length 256" : "max_length 77");
    }
    CHECKF(fails == 0, "%zu of %zu cases differ", fails, n);
    json_decref(cases);
}

static void test_edges(void)
{
    int32_t ids[8];
    CHECK(t5_tokenize(tok, "", 0, 8, ids) == 8);
    CHECK(ids[0] == 1 && ids[1] == 0 && ids[7] == 0);
    CHECK(t5_tokenize(tok, "a photo of a cat", 16, 1, ids) == 1);
    CHECK(ids[0] == 1);
    CHECK(t5_tokenize(tok, "cat", 3, 0, ids) == ERR_RANGE);
    /* An added token is cut out before normalization and carries no "▁" of its own. */
    CHECK(t5_tokenize(tok, "<extra_id_0>", 12, 4, ids) == 4);
    CHECK(ids[0] == 2099 && ids[1] == 1 && ids[2] == 0);
}

static void test_invalid_utf8(void)
{
    static const char *const bad[] = {
        "\x80", "abc\xff", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xf0\x9f\x98", "\xf4\x90\x80\x80", "ok \xc3",
    };
    int32_t ids[16];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECKF(t5_tokenize(tok, bad[i], strlen(bad[i]), 16, ids) == ERR_FORMAT, "bad input %zu accepted", i);
    CHECK(t5_tokenize(tok, "caf\xc3\xa9", 5, 16, ids) == 16);
}

static double ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

static void test_long_input(void)
{
    size_t n = 1000000;
    char *text = malloc(n);
    for (size_t i = 0; i < n; i += 4)
        memcpy(text + i, "cat ", 4);
    int32_t cat[4], ids[256];
    CHECK(t5_tokenize(tok, "cat", 3, 4, cat) == 4);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(t5_tokenize(tok, text, n, 256, ids) == 256);
    int all_cat = 1;
    for (int k = 0; k < 255; k++)
        all_cat &= ids[k] == cat[0];
    CHECK(all_cat && ids[255] == 1);
    /* One 1 MB word: the whole Viterbi runs before truncation can apply. */
    memset(text, 'a', n);
    CHECK(t5_tokenize(tok, text, n, 256, ids) == 256);
    double ms = ms_since(&t0);
    CHECKF(ms < 1000.0, "two 1 MB prompts took %.0f ms", ms);
    free(text);
}

/* Writes tok_dir's tokenizer.json, altered by edit, into a fresh directory and loads it. */
static int load_altered(void (*edit)(json_t *root), const char *raw, char *msg, size_t msg_size)
{
    const char *tmp = getenv("TMPDIR");
    char dir[1024], path[1100], src[1100];
    snprintf(dir, sizeof dir, "%s/t5tokXXXXXX", tmp && *tmp ? tmp : P_tmpdir);
    if (!mkdtemp(dir))
        return ERR_IO;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (raw) {
        FILE *f = fopen(path, "w");
        if (!f)
            return ERR_IO;
        fputs(raw, f);
        fclose(f);
    } else {
        snprintf(src, sizeof src, "%s/tokenizer.json", tok_dir);
        json_t *root = json_load_file(src, 0, NULL);
        edit(root);
        json_dump_file(root, path, 0);
        json_decref(root);
    }
    t5_tokenizer *t = NULL;
    int rc = t5_tokenizer_load(dir, &t);
    snprintf(msg, msg_size, "%s", err_msg());
    t5_tokenizer_free(t);
    unlink(path);
    rmdir(dir);
    return rc;
}

static void set_norm_nfkc(json_t *root)
{
    json_object_set_new(root, "normalizer", json_pack("{s:s}", "type", "NFKC"));
}

static void set_pretok_bytelevel(json_t *root)
{
    json_object_set_new(root, "pre_tokenizer", json_pack("{s:s}", "type", "ByteLevel"));
}

static void set_model_bpe(json_t *root)
{
    json_object_set_new(json_object_get(root, "model"), "type", json_string("BPE"));
}

static void set_bad_charsmap(json_t *root)
{
    json_t *list = json_object_get(json_object_get(root, "normalizer"), "normalizers");
    json_object_set_new(json_array_get(list, 0), "precompiled_charsmap", json_string("AAAA!!!="));
}

static void set_bad_vocab(json_t *root)
{
    json_array_set_new(json_object_get(json_object_get(root, "model"), "vocab"), 5, json_string("x"));
}

static void test_corrupt_files(void)
{
    char msg[1024];
    int rc = load_altered(NULL, "{\"model\": {\"type\": \"Unigram\", \"vocab\": [", msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "tokenizer.json"), "truncated file: %d %s", rc, msg);
    rc = load_altered(set_norm_nfkc, NULL, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "\"NFKC\""), "NFKC normalizer: %d %s", rc, msg);
    rc = load_altered(set_pretok_bytelevel, NULL, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "\"ByteLevel\""), "ByteLevel: %d %s", rc, msg);
    rc = load_altered(set_model_bpe, NULL, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "\"BPE\""), "BPE model: %d %s", rc, msg);
    rc = load_altered(set_bad_charsmap, NULL, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "precompiled_charsmap"), "bad charsmap: %d %s", rc, msg);
    rc = load_altered(set_bad_vocab, NULL, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "vocab[5]"), "bad vocab entry: %d %s", rc, msg);
    t5_tokenizer *t = NULL;
    rc = t5_tokenizer_load("no/such/dir", &t);
    CHECKF(rc == ERR_IO && t == NULL, "missing dir: %d %s", rc, err_msg());
}

int main(void)
{
    snprintf(tok_dir, sizeof tok_dir, "%s/tiny-sd35/tokenizer_3", fixtures_dir());
    if (t5_tokenizer_load(tok_dir, &tok) < 0) {
        fprintf(stderr, "loading %s: %s\n", tok_dir, err_msg());
        return 1;
    }
    RUN(test_golden_cases);
    RUN(test_edges);
    RUN(test_invalid_utf8);
    RUN(test_long_input);
    RUN(test_corrupt_files);
    t5_tokenizer_free(tok);
    CHECK_DONE();
}
