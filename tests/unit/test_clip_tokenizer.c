/* Tests of the CLIP BPE tokenizer against transformers' CLIPTokenizer: the golden cases of
 * tests/fixtures/golden/tokenizer/cases.json for both fixture tokenizers (CLIP-L pads with
 * <|endoftext|>, CLIP-G with "!" and splits "!" out as a special token), a few cases written
 * out here from the reference, refusal of invalid UTF-8, clear errors for missing or corrupt
 * vocab.json / merges.txt, and the time a prompt and a megabyte of text take. */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "engine/clip_tokenizer.h"
#include "tests/unit/check.h"

static clip_tokenizer *tok_l, *tok_g;

static clip_tokenizer *load_fixture(const char *sub)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tiny-sd35/%s", fixtures_dir(), sub);
    clip_tokenizer *t = NULL;
    int rc = clip_tokenizer_load(dir, &t);
    CHECKF(rc == 0, "%s: %s", dir, err_msg());
    return t;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Compares all 77 ids; reports the first difference. */
static int same_ids(const int32_t *got, const int32_t *want, int n, const char *what, const char *text)
{
    for (int i = 0; i < n; i++)
        if (got[i] != want[i]) {
            CHECKF(0, "%s: id %d is %d, reference %d, text \"%.60s\"", what, i, got[i], want[i], text);
            return 0;
        }
    return 1;
}

static void test_load(void)
{
    CHECK(tok_l && tok_g);
    if (!tok_l || !tok_g)
        return;
    CHECK(clip_tokenizer_max_length(tok_l) == 77);
    CHECK(clip_tokenizer_max_length(tok_g) == 77);
}

static void test_golden_cases(void)
{
    if (!tok_l || !tok_g)
        return;
    char path[1024];
    snprintf(path, sizeof path, "%s/golden/tokenizer/cases.json", fixtures_dir());
    json_error_t je;
    json_t *cases = json_load_file(path, JSON_ALLOW_NUL, &je);
    CHECKF(json_is_array(cases) && json_array_size(cases) >= 500, "%s: %s", path, je.text);
    size_t i, bad = 0;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        json_t *text = json_object_get(c, "text");
        const char *keys[2] = {"clip_l", "clip_g"};
        clip_tokenizer *toks[2] = {tok_l, tok_g};
        for (int k = 0; k < 2; k++) {
            json_t *want = json_object_get(c, keys[k]);
            if (!json_is_string(text) || json_array_size(want) != 77) {
                CHECKF(0, "%s: case %zu lacks text or %s", path, i, keys[k]);
                bad++;
                continue;
            }
            int32_t got[77], exp[77];
            for (int j = 0; j < 77; j++)
                exp[j] = (int32_t)json_integer_value(json_array_get(want, (size_t)j));
            int rc = clip_tokenize(toks[k], json_string_value(text), json_string_length(text), got);
            CHECKF(rc == 77, "case %zu %s: rc %d (%s)", i, keys[k], rc, err_msg());
            if (rc != 77 || !same_ids(got, exp, 77, keys[k], json_string_value(text)))
                bad++;
        }
    }
    CHECKF(bad == 0, "%zu of %zu golden tokenizations differ", bad, 2 * json_array_size(cases));
    json_decref(cases);
}

/* Content ids (between BOS and EOS) from transformers 4.46.3 for strings that exercise one
 * rule each; the golden file covers the rest. */
static void check_content(clip_tokenizer *t, const char *text, size_t len, const int32_t *content, int n,
                          int32_t pad)
{
    int32_t want[77], got[77];
    want[0] = 49406;
    memcpy(want + 1, content, (size_t)n * sizeof *content);
    want[n + 1] = 49407;
    for (int i = n + 2; i < 77; i++)
        want[i] = pad;
    int rc = clip_tokenize(t, text, len, got);
    CHECKF(rc == 77, "rc %d (%s)", rc, err_msg());
    if (rc == 77)
        same_ids(got, want, 77, pad ? "clip_l" : "clip_g", text);
}

#define CONTENT(t, text, pad, ...)                                                              \
    do {                                                                                        \
        static const int32_t ids_[] = {__VA_ARGS__};                                            \
        check_content(t, text, sizeof(text) - 1, ids_, (int)(sizeof ids_ / sizeof *ids_), pad); \
    } while (0)

static void test_reference_rules(void)
{
    if (!tok_l || !tok_g)
        return;
    static const int32_t none[1];
    check_content(tok_l, "", 0, none, 0, 49407);
    check_content(tok_g, "", 0, none, 0, 0);
    CONTENT(tok_l, "a photo of a cat", 49407, 320, 1125, 539, 320, 2368);
    /* "!" is an added special token of tokenizer_2 only. */
    CONTENT(tok_l, "Hello, World! it's 2024", 49407, 3306, 267, 1002, 256, 585, 568, 273, 271, 273, 275);
    CONTENT(tok_g, "Hello, World! it's 2024", 0, 3306, 267, 1002, 0, 585, 568, 273, 271, 273, 275);
    /* Exact special tokens are split out; other casings reach the pattern after lowercasing. */
    CONTENT(tok_l, "x<|endoftext|>y <|STARTOFTEXT|>", 49407, 343, 49407, 344, 49406);
    /* U+0130 lowercases to i + U+0307; final sigma unless a cased letter follows. */
    CONTENT(tok_l, "\xc4\xb0STANBUL \xce\x9f\xce\x94\xce\xa5\xce\xa3\xce\xa3\xce\x95\xce\xa5\xce\xa3 "
                   "\xce\x91\xce\xa3'\xce\x91",
            49407, 328, 16384, 11231, 138, 123, 138, 112, 139, 227, 139, 225, 139, 225, 138, 113, 139, 227, 139,
            480, 138, 109, 139, 481, 262, 138, 365);
    /* NFC, CJK spacing, emoji (U+1FAE0 is new in Unicode 14), ZWJ dropped as a format char. */
    CONTENT(tok_l, "caf\xc3\xa9 cafe\xcc\x81 \xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97 \xf0\x9f\xab\xa0\xf0\x9f\xa5\xb9 "
                   "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9",
            49407, 15304, 15304, 19759, 511, 29032, 485, 35751, 501, 558, 104, 254, 4156, 373, 18966, 964, 358);
    /* Tab, U+2028, NBSP split words; BEL, ZWSP and U+FFFD vanish. */
    CONTENT(tok_l, "tab\there\xe2\x80\xa8line\xc2\xa0nbsp\abell\xe2\x80\x8bzw\xef\xbf\xbd", 49407, 14724, 763, 1148,
            6459, 588, 5417, 42188);
    /* U+0345 matches no alternative of the pattern under the reference's IGNORECASE. */
    CONTENT(tok_l, "\xcd\x85" "a\xcd\x85", 49407, 320);
}

static void test_truncation(void)
{
    if (!tok_l || !tok_g)
        return;
    char text[4000] = "";
    for (int i = 0; i < 100; i++)
        strcat(text, "cat ");
    int32_t ids[77];
    CHECK(clip_tokenize(tok_g, text, strlen(text), ids) == 77);
    CHECK(ids[0] == 49406 && ids[1] == 2368 && ids[75] == 2368 && ids[76] == 49407);
}

static void test_invalid_utf8(void)
{
    if (!tok_l)
        return;
    static const char *bad[] = {"a\x80", "\xc0\x80", "\xed\xa0\x80", "ok \xe4\xb8", "\xf5\x80\x80\x80", "\xff"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int32_t ids[77];
        int rc = clip_tokenize(tok_l, bad[i], strlen(bad[i]), ids);
        CHECKF(rc == ERR_FORMAT, "case %zu: rc %d", i, rc);
        CHECKF(strstr(err_msg(), "UTF-8") != NULL, "message: %s", err_msg());
    }
}

static void write_file(const char *dir, const char *name, const char *data)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    CHECKF(f != NULL, "%s: %s", path, strerror(errno));
    if (f) {
        fputs(data, f);
        fclose(f);
    }
}

/* A minimal tokenizer directory, then variants with one file broken or missing. */
static void test_bad_files(void)
{
    const char *base = getenv("TMPDIR");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/clip_tok_XXXXXX", base ? base : P_tmpdir);
    if (!mkdtemp(dir)) {
        CHECKF(0, "mkdtemp %s: %s", dir, strerror(errno));
        return;
    }
    const char *config = "{\"model_max_length\": 77}";
    const char *vocab = "{\"a\": 0, \"a</w>\": 1, \"<|startoftext|>\": 2, \"<|endoftext|>\": 3}";
    const char *merges = "#version: 0.2\na </w>\n";
    struct {
        const char *file, *data, *want_in_msg;
        int code;
    } cases[] = {
        {NULL, NULL, NULL, 0},
        {"vocab.json", NULL, "vocab.json", ERR_MISSING},
        {"vocab.json", "{\"a\": 0, \"a</w>\": ", "vocab.json", ERR_FORMAT},
        {"vocab.json", "[1, 2]", "vocab.json", ERR_FORMAT},
        {"vocab.json", "{\"a\": \"zero\"}", "vocab.json", ERR_FORMAT},
        {"merges.txt", NULL, "merges.txt", ERR_MISSING},
        {"merges.txt", "#version: 0.2\na b c\n", "merges.txt", ERR_FORMAT},
        {"merges.txt", "#version: 0.2\na \xff\n", "merges.txt", ERR_FORMAT},
        {"tokenizer_config.json", "{}", "model_max_length", ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        write_file(dir, "tokenizer_config.json", config);
        write_file(dir, "vocab.json", vocab);
        write_file(dir, "merges.txt", merges);
        char path[1100];
        if (cases[i].file) {
            snprintf(path, sizeof path, "%s/%s", dir, cases[i].file);
            if (cases[i].data)
                write_file(dir, cases[i].file, cases[i].data);
            else
                unlink(path);
        }
        clip_tokenizer *t = NULL;
        int rc = clip_tokenizer_load(dir, &t);
        CHECKF(rc == cases[i].code, "case %zu: rc %d, want %d (%s)", i, rc, cases[i].code, err_msg());
        if (cases[i].want_in_msg)
            CHECKF(strstr(err_msg(), cases[i].want_in_msg) != NULL, "case %zu: message \"%s\"", i, err_msg());
        CHECK((rc == 0) == (t != NULL));
        if (t) {
            int32_t ids[77];
            CHECK(clip_tokenize(t, "A A", 3, ids) == 77 && ids[0] == 2 && ids[1] == 1 && ids[2] == 1 && ids[3] == 3);
        }
        clip_tokenizer_free(t);
    }
    static const char *names[] = {"tokenizer_config.json", "vocab.json", "merges.txt"};
    for (size_t i = 0; i < 3; i++) {
        char path[1100];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void test_speed(void)
{
    if (!tok_l)
        return;
    const char *prompt = "A cinematic photo of an astronaut riding a white horse on the surface of the moon, earth "
                         "rising in the background, highly detailed, volumetric lighting, 35mm film grain, shallow "
                         "depth of field, bokeh, award winning photograph, trending on artstation, octane render";
    int32_t ids[77];
    enum { N = 2000 };
    double t0 = now_ms();
    for (int i = 0; i < N; i++)
        clip_tokenize(tok_l, prompt, strlen(prompt), ids);
    double per = (now_ms() - t0) / N;
    printf("  77-token prompt: %.1f us\n", per * 1e3);
    CHECKF(per < 0.5, "%.3f ms per prompt", per);

    /* One megabyte as one word: BPE cannot stop early there, so this checks it is not quadratic. */
    size_t n = 1 << 20;
    char *big = malloc(n);
    CHECK(big != NULL);
    if (!big)
        return;
    for (size_t i = 0; i < n; i++)
        big[i] = (char)('a' + (i * 7919) % 26);
    t0 = now_ms();
    int rc = clip_tokenize(tok_l, big, n, ids);
    double ms = now_ms() - t0;
    printf("  1 MB single word: %.0f ms\n", ms);
    CHECK(rc == 77 && ids[76] == 49407);
    CHECKF(ms < 3000, "%.0f ms", ms);
    free(big);
}

int main(void)
{
    tok_l = load_fixture("tokenizer");
    tok_g = load_fixture("tokenizer_2");
    RUN(test_load);
    RUN(test_golden_cases);
    RUN(test_reference_rules);
    RUN(test_truncation);
    RUN(test_invalid_utf8);
    RUN(test_bad_files);
    RUN(test_speed);
    clip_tokenizer_free(tok_l);
    clip_tokenizer_free(tok_g);
    CHECK_DONE();
}
