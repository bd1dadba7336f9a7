/* The published SD3.5 tokenizer files (tests/fixtures/tiny-sd35-real, byte-exact copies)
 * against transformers: every case of golden/real_tokenizer/cases.json, most of them added
 * tokens wrapped in every kind of Unicode white space, through the three tokenizers as
 * StableDiffusion3Pipeline.encode_prompt calls them (77 CLIP ids, 256 T5 ids); added tokens
 * with every flag and the tokenizer_config.json settings that change matching, against
 * transformers too; and clear errors for bad files. */
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
    if (json_array_size(want) != n) return 0;
    for (size_t k = 0; k < n; k++)
        if (ids[k] != json_integer_value(json_array_get(want, k))) return 0;
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
    if (!l || !g || !t5 || !cases) return;
    size_t n = json_array_size(cases), fails[3] = {0, 0, 0};
    CHECKF(n >= 500, "only %zu cases", n);
    int32_t ids[256];
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(cases, i), *text = json_object_get(c, "text");
        const char *s = json_string_value(text);
        size_t len = json_string_length(text);
        int ok[3];
        ok[0] =
            clip_tokenize(l, s, len, ids) == 77 && same_ids(ids, json_object_get(c, "clip_l"), 77);
        ok[1] =
            clip_tokenize(g, s, len, ids) == 77 && same_ids(ids, json_object_get(c, "clip_g"), 77);
        ok[2] = t5_tokenize(t5, s, len, 256, ids) == 256 &&
                same_ids(ids, json_object_get(c, "t5"), 256);
        static const char *const names[3] = {"tokenizer", "tokenizer_2", "tokenizer_3"};
        for (int k = 0; k < 3; k++)
            if (!ok[k] && fails[k]++ < 5)
                CHECKF(0, "case %zu %s: %s ids differ", i,
                       json_dumps(text, JSON_ENCODE_ANY | JSON_ENSURE_ASCII), names[k]);
    }
    CHECKF(!fails[0] && !fails[1] && !fails[2],
           "%zu/%zu/%zu of %zu cases differ (CLIP-L/CLIP-G/T5)", fails[0], fails[1], fails[2], n);
    json_decref(cases);
    clip_tokenizer_free(l);
    clip_tokenizer_free(g);
    t5_tokenizer_free(t5);
}

/* A tokenizer folder of the fixture in TMPDIR with run's tokenizer_config.json and, when the
 * run has them, its tokenizer.json added_tokens; the other files are links. */
static int flag_dir(const json_t *run, char *dir, size_t size)
{
    const char *folder = json_string_value(json_object_get(run, "folder"));
    const json_t *added = json_object_get(run, "added_tokens");
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, size, "%s/realflagXXXXXX", tmp && *tmp ? tmp : P_tmpdir);
    if (!folder || !mkdtemp(dir)) return ERR_IO;
    static const char *const files[] = {"merges.txt", "vocab.json", "special_tokens_map.json",
                                        "spiece.model", "tokenizer.json"};
    char src[1100], dst[1100], abs[PATH_MAX];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(src, sizeof src, "%s/%s/%s", real_dir, folder, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        if (added && !strcmp(files[i], "tokenizer.json")) {
            json_t *root = json_load_file(src, 0, NULL);
            json_object_set(root, "added_tokens", (json_t *)added);
            int rc = root && json_dump_file(root, dst, 0) == 0 ? 0 : ERR_IO;
            json_decref(root);
            if (rc) return rc;
        } else if (realpath(src, abs) && symlink(abs, dst) != 0) {
            return ERR_IO;
        }
    }
    snprintf(dst, sizeof dst, "%s/tokenizer_config.json", dir);
    return json_dump_file(json_object_get(run, "config"), dst, 0) == 0 ? 0 : ERR_IO;
}

static void remove_dir(const char *dir)
{
    static const char *const files[] = {"merges.txt",   "vocab.json",     "special_tokens_map.json",
                                        "spiece.model", "tokenizer.json", "tokenizer_config.json"};
    char path[1100];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* Added tokens with every flag combination (tools/reference/gen_real.py FLAG_TOKENS) in
 * all three tokenizers, under split_special_tokens, add_prefix_space false, legacy false and
 * tokenizer.json's own added tokens, against transformers' ids. */
static void test_flag_goldens(void)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/golden/real_tokenizer/flags.json", fixtures_dir());
    json_t *g = json_load_file(path, 0, NULL);
    CHECKF(g != NULL, "%s", path);
    json_t *texts = json_object_get(g, "texts"), *runs = json_object_get(g, "runs"), *run;
    size_t r;
    CHECK(json_array_size(runs) >= 8);
    json_array_foreach(runs, r, run)
    {
        const char *folder = json_string_value(json_object_get(run, "folder"));
        const char *name = json_string_value(json_object_get(run, "name"));
        int is_t5 = folder && !strcmp(folder, "tokenizer_3");
        char dir[1024];
        CHECK(flag_dir(run, dir, sizeof dir) == 0);
        clip_tokenizer *c = NULL;
        t5_tokenizer *t = NULL;
        int rc = is_t5 ? t5_tokenizer_load(dir, &t) : clip_tokenizer_load(dir, &c);
        CHECKF(rc == 0, "%s %s: %s", folder, name, err_msg());
        json_t *want = json_object_get(run, "ids");
        size_t fails = 0;
        for (size_t i = 0; rc == 0 && i < json_array_size(texts); i++) {
            const char *s = json_string_value(json_array_get(texts, i));
            int32_t ids[256];
            int n = is_t5 ? t5_tokenize(t, s, strlen(s), 256, ids)
                          : clip_tokenize(c, s, strlen(s), ids);
            if (!(n > 0 && same_ids(ids, json_array_get(want, i), (size_t)n)) && fails++ < 3)
                CHECKF(0, "%s %s: case %zu %s differs", folder, name, i,
                       json_dumps(json_array_get(texts, i), JSON_ENCODE_ANY | JSON_ENSURE_ASCII));
        }
        CHECKF(fails == 0, "%s %s: %zu cases differ", folder, name, fails);
        clip_tokenizer_free(c);
        t5_tokenizer_free(t);
        remove_dir(dir);
    }
    json_decref(g);
}

/* A T5 tokenizer directory in TMPDIR: the real tokenizer.json with `added` as its added
 * tokens (NULL: unchanged), and `config` as tokenizer_config.json (NULL: none). */
static int load_t5(const char *added, const char *config, t5_tokenizer **out, char *msg,
                   size_t msg_size)
{
    const char *tmp = getenv("TMPDIR");
    char dir[1024], path[1100], src[1100];
    snprintf(dir, sizeof dir, "%s/t5realXXXXXX", tmp && *tmp ? tmp : P_tmpdir);
    if (!mkdtemp(dir)) return ERR_IO;
    snprintf(src, sizeof src, "%s/tokenizer_3/tokenizer.json", real_dir);
    json_t *root = json_load_file(src, 0, NULL);
    if (added) json_object_set_new(root, "added_tokens", json_loads(added, 0, NULL));
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

static void test_bad_files(void)
{
    char msg[1024];
    t5_tokenizer *t;
    int rc = load_t5("[{\"id\": 5, \"content\": \"x\", \"lstrip\": \"yes\"}]", NULL, &t, msg,
                     sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "tokenizer.json") && strstr(msg, "added_tokens[0]") &&
               strstr(msg, "lstrip"),
           "%d %s", rc, msg);
    rc = load_t5("[{\"id\": 5, \"content\": \"x\", \"strip_all\": true}]", NULL, &t, msg,
                 sizeof msg);
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
    CHECKF(rc == ERR_FORMAT && strstr(msg, "tokenizer_config.json") &&
               strstr(msg, "add_prefix_space"),
           "%d %s", rc, msg);
    rc = load_t5(NULL, "{\"legacy\": 1}", &t, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "\"legacy\""), "%d %s", rc, msg);
    rc = load_t5(
        NULL,
        "{\"add_prefix_space\": true, \"added_tokens_decoder\": {\"x\": {\"content\": \"a\"}}}", &t,
        msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "tokenizer_config.json") &&
               strstr(msg, "added_tokens_decoder[\"x\"]"),
           "%d %s", rc, msg);
    rc = load_t5(NULL, "{\"pad_token\": 3}", &t, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "pad_token"), "%d %s", rc, msg);
    rc = load_t5(NULL, "[]", &t, msg, sizeof msg);
    CHECKF(rc == ERR_FORMAT && strstr(msg, "not a JSON object"), "%d %s", rc, msg);
    /* CLIP: the published tokenizer_2 config with one bad field at a time. */
    static const char *const clip_bad[][2] = {
        {"{\"model_max_length\": 77, \"added_tokens_decoder\": {\"0\": {\"content\": \"!\", "
         "\"lstrip\": 1}}}",
         "\"lstrip\" must be true or false"},
        {"{\"model_max_length\": 77, \"added_tokens_decoder\": {\"0\": {\"content\": \"!\", "
         "\"strip\": true}}}",
         "unknown field \"strip\""},
        {"{\"model_max_length\": 77, \"added_tokens_decoder\": [1]}",
         "\"added_tokens_decoder\" is not an object"},
        {"{\"model_max_length\": 77, \"split_special_tokens\": \"no\"}",
         "\"split_special_tokens\" must be"},
        {"{\"model_max_length\": 77, \"added_tokens_decoder\": {\"x\": {\"content\": \"!\"}}}",
         "is malformed"},
    };
    for (size_t i = 0; i < sizeof clip_bad / sizeof *clip_bad; i++) {
        json_t *run = json_pack("{s:s, s:o}", "folder", "tokenizer_2", "config",
                                json_loads(clip_bad[i][0], 0, NULL));
        char dir[1024];
        CHECK(flag_dir(run, dir, sizeof dir) == 0);
        clip_tokenizer *c = NULL;
        rc = clip_tokenizer_load(dir, &c);
        CHECKF(rc == ERR_FORMAT && c == NULL && strstr(err_msg(), "tokenizer_config.json") &&
                   strstr(err_msg(), clip_bad[i][1]),
               "CLIP case %zu: %d %s", i, rc, err_msg());
        remove_dir(dir);
        json_decref(run);
    }
}

int main(void)
{
    snprintf(real_dir, sizeof real_dir, "%s/tiny-sd35-real", fixtures_dir());
    RUN(test_golden_cases);
    RUN(test_flag_goldens);
    RUN(test_bad_files);
    CHECK_DONE();
}
