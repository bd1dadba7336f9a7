/* The published SD3.5 tokenizer files (tests/fixtures/tiny-sd35-real, byte-exact copies)
 * against transformers: every case of golden/real_tokenizer/cases.json, most of them added
 * tokens wrapped in every kind of Unicode white space, through the three tokenizers as
 * StableDiffusion3Pipeline.encode_prompt calls them (77 CLIP ids, 256 T5 ids). Also the added
 * token flags' matching rules on hand-made tokenizers, and clear errors for bad files. */
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "engine/clip_tokenizer.h"
#include "engine/t5_tokenizer.h"
#include "tests/unit/check.h"

static char real_dir[1024];

static int same_ids(const int32_t *ids, const json_t *want, size_t n)
{
    if (json_array_size(want) != n)
        return 0;
    for (size_t k = 0; k < n; k++)
        if (ids[k] != json_integer_value(json_array_get(want, k)))
            return 0;
    return 1;
}

static void test_golden_cases(void)
{
    char path[1100];
    clip_tokenizer *l = NULL, *g = NULL;
    t5_tokenizer *t5 = NULL;
    snprintf(path, sizeof path, "%s/tokenizer", real_dir);
    CHECKF(clip_tokenizer_load(path, &l) == 0, "%s", err_msg());
    snprintf(path, sizeof path, "%s/tokenizer_2", real_dir);
    CHECKF(clip_tokenizer_load(path, &g) == 0, "%s", err_msg());
    snprintf(path, sizeof path, "%s/tokenizer_3", real_dir);
    CHECKF(t5_tokenizer_load(path, &t5) == 0, "%s", err_msg());
    snprintf(path, sizeof path, "%s/golden/real_tokenizer/cases.json", fixtures_dir());
    json_error_t e;
    json_t *cases = json_load_file(path, JSON_ALLOW_NUL, &e);
    CHECKF(json_is_array(cases), "%s: %s", path, e.text);
    if (!l || !g || !t5 || !cases)
        return;
    size_t n = json_array_size(cases), fails[3] = {0, 0, 0};
    CHECKF(n >= 500, "only %zu cases", n);
    int32_t ids[256];
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(cases, i), *text = json_object_get(c, "text");
        const char *s = json_string_value(text);
        size_t len = json_string_length(text);
        int ok[3];
        ok[0] = clip_tokenize(l, s, len, ids) == 77 && same_ids(ids, json_object_get(c, "clip_l"), 77);
        ok[1] = clip_tokenize(g, s, len, ids) == 77 && same_ids(ids, json_object_get(c, "clip_g"), 77);
        ok[2] = t5_tokenize(t5, s, len, 256, ids) == 256 && same_ids(ids, json_object_get(c, "t5"), 256);
        static const char *const names[3] = {"tokenizer", "tokenizer_2", "tokenizer_3"};
        for (int k = 0; k < 3; k++)
            if (!ok[k] && fails[k]++ < 5)
                CHECKF(0, "case %zu %s: %s ids differ", i, json_dumps(text, JSON_ENCODE_ANY | JSON_ENSURE_ASCII),
                       names[k]);
    }
    CHECKF(!fails[0] && !fails[1] && !fails[2], "%zu/%zu/%zu of %zu cases differ (CLIP-L/CLIP-G/T5)", fails[0],
           fails[1], fails[2], n);
    json_decref(cases);
    clip_tokenizer_free(l);
    clip_tokenizer_free(g);
    t5_tokenizer_free(t5);
}

/* A tokenizer folder of the fixture in TMPDIR, with golden/real_tokenizer's
 * flags_<folder>_config.json as its tokenizer_config.json; the other files are links. */
static int flag_dir(const char *folder, char *dir, size_t size)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, size, "%s/realflagXXXXXX", tmp && *tmp ? tmp : P_tmpdir);
    if (!mkdtemp(dir))
        return ERR_IO;
    static const char *const files[] = {"merges.txt", "vocab.json", "special_tokens_map.json", "spiece.model",
                                        "tokenizer.json"};
    char src[1100], dst[1100], abs[PATH_MAX];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(src, sizeof src, "%s/%s/%s", real_dir, folder, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        if (realpath(src, abs) && symlink(abs, dst) != 0)
            return ERR_IO;
    }
    snprintf(src, sizeof src, "%s/golden/real_tokenizer/flags_%s_config.json", fixtures_dir(), folder);
    snprintf(dst, sizeof dst, "%s/tokenizer_config.json", dir);
    json_t *cfg = json_load_file(src, 0, NULL);
    int rc = cfg && json_dump_file(cfg, dst, 0) == 0 ? 0 : ERR_IO;
    json_decref(cfg);
    return rc;
}

static void remove_dir(const char *dir)
{
    static const char *const files[] = {"merges.txt", "vocab.json", "special_tokens_map.json", "spiece.model",
                                        "tokenizer.json", "tokenizer_config.json"};
    char path[1100];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* Added tokens with every flag combination (tools/reference/gen_real.py FLAG_TOKENS) in
 * all three tokenizers, against transformers' ids. */
static void test_flag_goldens(void)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/golden/real_tokenizer/flags.json", fixtures_dir());
    json_t *g = json_load_file(path, 0, NULL);
    CHECKF(g != NULL, "%s", path);
    json_t *texts = json_object_get(g, "texts");
    static const char *const folders[] = {"tokenizer", "tokenizer_2", "tokenizer_3"};
    for (int f = 0; f < 3; f++) {
        char dir[1024];
        CHECK(flag_dir(folders[f], dir, sizeof dir) == 0);
        clip_tokenizer *c = NULL;
        t5_tokenizer *t = NULL;
        int rc = f < 2 ? clip_tokenizer_load(dir, &c) : t5_tokenizer_load(dir, &t);
        CHECKF(rc == 0, "%s: %s", folders[f], err_msg());
        json_t *want = json_object_get(g, folders[f]);
        for (size_t i = 0; rc == 0 && i < json_array_size(texts); i++) {
            const char *s = json_string_value(json_array_get(texts, i));
            int32_t ids[256];
            int n = f < 2 ? clip_tokenize(c, s, strlen(s), ids) : t5_tokenize(t, s, strlen(s), 256, ids);
            CHECKF(n > 0 && same_ids(ids, json_array_get(want, i), (size_t)n), "%s: flag case %zu \"%s\" differs",
                   folders[f], i, s);
        }
        clip_tokenizer_free(c);
        t5_tokenizer_free(t);
        remove_dir(dir);
    }
    json_decref(g);
}

/* A T5 tokenizer directory in TMPDIR: the real tokenizer.json with `added` as its added
 * tokens (NULL: unchanged), and `config` as tokenizer_config.json (NULL: none). */
static int load_t5(const char *added, const char *config, t5_tokenizer **out, char *msg, size_t msg_size)
{
    const char *tmp = getenv("TMPDIR");
    char dir[1024], path[1100], src[1100];
    snprintf(dir, sizeof dir, "%s/t5realXXXXXX", tmp && *tmp ? tmp : P_tmpdir);
    if (!mkdtemp(dir))
        return ERR_IO;
    snprintf(src, sizeof src, "%s/tokenizer_3/tokenizer.json", real_dir);
    json_t *root = json_load_file(src, 0, NULL);
    if (added)
        json_object_set_new(root, "added_tokens", json_loads(added, 0, NULL));
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    json_dump_file(root, path, 0);
    json_decref(root);
    char cpath[1100];
    snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", dir);
    if (config) {
        FILE *f = fopen(cpath, "w");
        fputs(config, f);
        fclose(f);
    }
    *out = NULL;
    int rc = t5_tokenizer_load(dir, out);
    snprintf(msg, msg_size, "%s", rc < 0 ? err_msg() : "");
    unlink(path);
    unlink(cpath);
    rmdir(dir);
    return rc;
}

/* Content ids of text (up to the </s>), as a space-separated string. */
static const char *ids_of(t5_tokenizer *t, const char *text)
{
    static char buf[512];
    int32_t ids[32];
    size_t o = 0;
    buf[0] = 0;
    if (t5_tokenize(t, text, strlen(text), 32, ids) != 32)
        return "error";
    for (int k = 0; k < 32 && ids[k] != 1; k++)
        o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%d", o ? " " : "", ids[k]);
    return buf;
}

/* find_matches' rules, each against what the same text gives with the token written out. */
static void test_added_flags(void)
{
    char msg[1024];
    t5_tokenizer *t;
    /* single_word: "cat" as a token only where no \w char touches it. */
    CHECKF(load_t5("[{\"id\": 32099, \"content\": \"zz\", \"single_word\": true, \"lstrip\": false,"
                   " \"rstrip\": false, \"normalized\": false, \"special\": false}]",
                   NULL, &t, msg, sizeof msg) == 0, "%s", msg);
    if (t) {
        CHECK(!strcmp(ids_of(t, "zz"), "32099"));
        CHECK(strcmp(ids_of(t, "azz"), "32099") && !strstr(ids_of(t, "azz"), "32099"));
        CHECK(!strstr(ids_of(t, "zz\xcc\x81"), "32099")); /* a combining mark is \w */
        CHECK(!strstr(ids_of(t, "zz_"), "32099"));
        CHECK(strstr(ids_of(t, "x, zz!"), "32099") != NULL);
        t5_tokenizer_free(t);
    }
    /* normalized: matched after the charsmap (NFKC: fullwidth letters become ASCII). */
    CHECKF(load_t5("[{\"id\": 32099, \"content\": \"qq\", \"normalized\": true, \"special\": false}]", NULL, &t, msg,
                   sizeof msg) == 0, "%s", msg);
    if (t) {
        CHECK(!strcmp(ids_of(t, "\xef\xbd\x91\xef\xbd\x91"), "32099")); /* U+FF51 twice */
        t5_tokenizer_free(t);
    }
    /* special + split_special_tokens: not matched, so the text reaches the model with its
     * spaces (the sentinel is also a Unigram piece, so its id may still come out). */
    CHECKF(load_t5(NULL, "{\"split_special_tokens\": true}", &t, msg, sizeof msg) == 0, "%s", msg);
    if (t) {
        char split[512];
        snprintf(split, sizeof split, "%s", ids_of(t, "a <extra_id_0> b"));
        t5_tokenizer *t2;
        CHECK(load_t5(NULL, "{}", &t2, msg, sizeof msg) == 0);
        if (t2) {
            CHECK(!strcmp(ids_of(t2, "a <extra_id_0> b"), "3 9 32099 3 115"));
            CHECKF(strcmp(split, "3 9 32099 3 115"), "split_special_tokens changed nothing: %s", split);
            t5_tokenizer_free(t2);
        }
        t5_tokenizer_free(t);
    }
    /* add_prefix_space false: the converter's Metaspace prepends nothing. */
    CHECKF(load_t5(NULL, "{\"add_prefix_space\": false}", &t, msg, sizeof msg) == 0, "%s", msg);
    if (t) {
        char with[512];
        snprintf(with, sizeof with, "%s", ids_of(t, "cat"));
        t5_tokenizer *t2;
        CHECK(load_t5(NULL, "{\"add_prefix_space\": true}", &t2, msg, sizeof msg) == 0);
        if (t2) {
            CHECKF(strcmp(with, ids_of(t2, "cat")), "add_prefix_space false gives %s as true does", with);
            t5_tokenizer_free(t2);
        }
        t5_tokenizer_free(t);
    }
}

static void test_bad_files(void)
{
    char msg[1024];
    t5_tokenizer *t;
    int rc = load_t5("[{\"id\": 5, \"content\": \"x\", \"lstrip\": \"yes\"}]", NULL, &t, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "tokenizer.json") && strstr(msg, "added_tokens[0]") && strstr(msg, "lstrip"),
           "%d %s", rc, msg);
    rc = load_t5("[{\"id\": 5, \"content\": \"x\", \"strip_all\": true}]", NULL, &t, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "unknown field \"strip_all\""), "%d %s", rc, msg);
    rc = load_t5("[{\"id\": -3, \"content\": \"x\"}]", NULL, &t, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "id must be"), "%d %s", rc, msg);
    rc = load_t5("[{\"id\": 3, \"content\": 7}]", NULL, &t, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "content"), "%d %s", rc, msg);
    rc = load_t5("{\"a\": 1}", NULL, &t, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "added_tokens"), "%d %s", rc, msg);
    rc = load_t5(NULL, "{\"add_prefix_space\": ", &t, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "tokenizer_config.json"), "%d %s", rc, msg);
    rc = load_t5(NULL, "{\"add_prefix_space\": \"true\"}", &t, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "tokenizer_config.json") && strstr(msg, "add_prefix_space"), "%d %s", rc,
           msg);
    rc = load_t5(NULL, "{\"legacy\": 1}", &t, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "\"legacy\""), "%d %s", rc, msg);
    rc = load_t5(NULL, "{\"add_prefix_space\": true, \"added_tokens_decoder\": {\"x\": {\"content\": \"a\"}}}", &t, msg,
                 sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "tokenizer_config.json") && strstr(msg, "added_tokens_decoder[\"x\"]"),
           "%d %s", rc, msg);
    rc = load_t5(NULL, "{\"pad_token\": 3}", &t, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "pad_token"), "%d %s", rc, msg);
    rc = load_t5(NULL, "[]", &t, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "not a JSON object"), "%d %s", rc, msg);
}

int main(void)
{
    snprintf(real_dir, sizeof real_dir, "%s/tiny-sd35-real", fixtures_dir());
    RUN(test_golden_cases);
    RUN(test_flag_goldens);
    RUN(test_added_flags);
    RUN(test_bad_files);
    CHECK_DONE();
}
