/* Tests of model_dir_resolve: a directory path is taken as it is; a Hugging Face repository id
 * is found in a hub cache laid out as `huggingface-cli download` leaves it (blobs/ holding the
 * files, snapshots/<commit>/ a tree of relative symlinks into blobs/, refs/main naming the
 * commit), here a fake cache in a temporary directory whose blobs point at the fixture model;
 * the cache directory is chosen from the environment as huggingface_hub's constants.py does;
 * and every miss is an error naming the paths tried. */
#include "engine/model_config.h"
#include "engine/model_dir.h"

#include "common/err.h"
#include "tests/unit/check.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LONG_PATH 4096 /* room for a repo path (under 1536) and what follows it */
#define COMMIT "0123456789abcdef0123456789abcdef01234567"

static char tmp_root[512];
static char cwd[1024];

static const char *const env_vars[] = {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME",
                                       "XDG_CACHE_HOME"};

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++)
        unsetenv(env_vars[i]);
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void mkdirs(const char *path)
{
    char buf[LONG_PATH];
    snprintf(buf, sizeof buf, "%.4000s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        mkdir(buf, 0755);
        *p = '/';
    }
    mkdir(buf, 0755);
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    if (fp) {
        fputs(text, fp);
        fclose(fp);
    }
}

/* One file of the snapshot: blobs/<n> -> the fixture's file (the blob itself, as far as the
 * engine sees), snapshots/COMMIT/<rel> -> ../../blobs/<n> with one more ../ per directory. */
static int blob_no;
static int put_file(const char *repo, const char *rel)
{
    char src[LONG_PATH], blob[LONG_PATH], link[LONG_PATH], target[LONG_PATH];
    const char *fx = fixtures_dir();
    snprintf(src, sizeof src, "%s%s%s/tiny-sd35/%s", fx[0] == '/' ? "" : cwd,
             fx[0] == '/' ? "" : "/", fx, rel);
    snprintf(blob, sizeof blob, "%s/blobs/%d", repo, blob_no);
    if (symlink(src, blob) != 0) return -1;
    snprintf(link, sizeof link, "%s/snapshots/" COMMIT "/%s", repo, rel);
    char dir[LONG_PATH];
    snprintf(dir, sizeof dir, "%s", link);
    *strrchr(dir, '/') = '\0';
    mkdirs(dir);
    size_t n = snprintf(target, sizeof target, "../../");
    for (const char *p = rel; (p = strchr(p, '/')); p++)
        n += snprintf(target + n, sizeof target - n, "../");
    snprintf(target + n, sizeof target - n, "blobs/%d", blob_no++);
    return symlink(target, link);
}

/* The fixture pipeline under CACHE/models--org--tiny (every file huggingface-cli would fetch). */
static int make_cache(const char *cache, const char *ref)
{
    static const char *const files[] = {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model.safetensors",
        "text_encoder_3/config.json",
        "text_encoder_3/model.safetensors.index.json",
        "text_encoder_3/model-00001-of-00002.safetensors",
        "text_encoder_3/model-00002-of-00002.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "tokenizer_2/merges.txt",
        "tokenizer_2/special_tokens_map.json",
        "tokenizer_2/tokenizer_config.json",
        "tokenizer_2/vocab.json",
        "tokenizer_3/special_tokens_map.json",
        "tokenizer_3/tokenizer.json",
        "tokenizer_3/tokenizer_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    };
    char repo[1536], path[LONG_PATH];
    snprintf(repo, sizeof repo, "%s/models--org--tiny", cache);
    snprintf(path, sizeof path, "%s/blobs", repo);
    mkdirs(path);
    snprintf(path, sizeof path, "%s/refs", repo);
    mkdirs(path);
    snprintf(path, sizeof path, "%s/refs/main", repo);
    write_file(path, ref);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        if (put_file(repo, files[i]) != 0) return -1;
    return 0;
}

static void expect_snapshot(const char *spec, const char *cache)
{
    char want[LONG_PATH];
    snprintf(want, sizeof want, "%s/models--org--tiny/snapshots/" COMMIT, cache);
    char *dir = NULL;
    int rc = model_dir_resolve(spec, &dir);
    CHECKF(rc == 0, "%s", err_msg());
    CHECKF(dir && strcmp(dir, want) == 0, "%s, expected %s", dir ? dir : "NULL", want);
    free(dir);
}

static void test_directory_as_given(void)
{
    clear_env();
    char fixture[LONG_PATH];
    snprintf(fixture, sizeof fixture, "%s/tiny-sd35", fixtures_dir());
    char *dir = NULL;
    CHECK(model_dir_resolve(fixture, &dir) == 0);
    CHECK(dir && strcmp(dir, fixture) == 0);
    free(dir);
    /* A directory wins over a cache entry of the same spelling, as in from_pretrained. */
    char cache[1024];
    snprintf(cache, sizeof cache, "%s/dircache", tmp_root);
    CHECK(make_cache(cache, COMMIT) == 0);
    setenv("HF_HUB_CACHE", cache, 1);
    CHECK(chdir(tmp_root) == 0);
    mkdirs("org/tiny");
    CHECK(model_dir_resolve("org/tiny", &dir) == 0);
    CHECK(dir && strcmp(dir, "org/tiny") == 0);
    free(dir);
    CHECK(chdir(cwd) == 0);
}

/* The whole pipeline's configs load through the symlinked snapshot. */
static void test_cache_snapshot_loads(void)
{
    clear_env();
    char home[768], cache[1024];
    snprintf(home, sizeof home, "%s/hfhome", tmp_root);
    snprintf(cache, sizeof cache, "%s/hub", home);
    CHECK(make_cache(cache, COMMIT) == 0);
    setenv("HF_HOME", home, 1);
    expect_snapshot("org/tiny", cache);
    model_config *m = NULL;
    int rc = model_config_load("org/tiny", &m);
    CHECKF(rc == 0, "%s", err_msg());
    if (m) {
        CHECK(strstr(m->path, "/snapshots/" COMMIT) != NULL);
        CHECK(m->has_t5 && m->mmdit.num_layers == 3 && m->vae.num_blocks == 4);
    }
    model_config_free(m);
}

/* huggingface_hub writes refs/main without a newline; one added by hand is tolerated. */
static void test_ref_newline(void)
{
    clear_env();
    char cache[1024];
    snprintf(cache, sizeof cache, "%s/nl", tmp_root);
    CHECK(make_cache(cache, COMMIT "\n") == 0);
    setenv("HF_HUB_CACHE", cache, 1);
    expect_snapshot("org/tiny", cache);
}

/* constants.py: HF_HUB_CACHE > HUGGINGFACE_HUB_CACHE > HF_HOME/hub >
 * $XDG_CACHE_HOME/huggingface/hub > ~/.cache/huggingface/hub, expanded by expanduser then
 * expandvars. */
static void test_cache_location(void)
{
    struct {
        const char *hub, *legacy, *home, *xdg, *want;
    } cases[] = {
        {"/a/hub", "/b/hub", "/c", "/d", "/a/hub"},
        {NULL, "/b/hub", "/c", "/d", "/b/hub"},
        {NULL, NULL, "/c", "/d", "/c/hub"},
        {NULL, NULL, NULL, "/d", "/d/huggingface/hub"},
        {NULL, NULL, NULL, NULL, "/home/u/.cache/huggingface/hub"},
        {"~/x", NULL, NULL, NULL, "/home/u/x"},
        {NULL, NULL, "$FOCUS_T/h", NULL, "/t/h/hub"},
        {NULL, NULL, "${FOCUS_T}/h", NULL, "/t/h/hub"},
        {NULL, NULL, "$FOCUS_UNSET_VAR/h", NULL, "$FOCUS_UNSET_VAR/h/hub"},
        {NULL, "~/legacy", NULL, NULL, "/home/u/legacy"},
        {NULL, NULL, NULL, "~/xdg", "/home/u/xdg/huggingface/hub"},
    };
    char *saved_home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
    setenv("HOME", "/home/u/", 1);
    setenv("FOCUS_T", "/t", 1);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        clear_env();
        const char *vals[] = {cases[i].hub, cases[i].legacy, cases[i].home, cases[i].xdg};
        for (int k = 0; k < 4; k++)
            if (vals[k]) setenv(env_vars[k], vals[k], 1);
        char *got = model_dir_hub_cache();
        CHECKF(strcmp(got, cases[i].want) == 0, "case %zu: %s, expected %s", i, got, cases[i].want);
        free(got);
    }
    unsetenv("FOCUS_T");
    if (saved_home) setenv("HOME", saved_home, 1);
    free(saved_home);
}

static void test_repo_ids(void)
{
    const char *good[] = {"ericbill21/focus_sd35", "stabilityai/stable-diffusion-3.5-medium",
                          "gpt2", "a.b/c_d-e"};
    const char *bad[] = {"",     "/abs/path", "./rel", "a/b/c", "a--b/c", "a/b..c",
                         "-a/b", "a/b.",      "a b/c", "a/",    "../x"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECKF(model_dir_is_repo_id(good[i]), "%s", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECKF(!model_dir_is_repo_id(bad[i]), "%s", bad[i]);
}

/* A miss names the directory and the cache file tried, and says how to fill the cache. */
static void test_errors_name_paths(void)
{
    clear_env();
    char cache[1024];
    snprintf(cache, sizeof cache, "%s/empty-cache", tmp_root);
    mkdirs(cache);
    setenv("HF_HUB_CACHE", cache, 1);
    char *dir = NULL;
    int rc = model_dir_resolve("ericbill21/focus_sd35", &dir);
    CHECK(rc == ERR_MISSING && dir == NULL);
    char want[LONG_PATH];
    snprintf(want, sizeof want, "%s/models--ericbill21--focus_sd35/refs/main", cache);
    CHECKF(strstr(err_msg(), want) != NULL, "%s", err_msg());
    CHECKF(strstr(err_msg(), "tried the directory ericbill21/focus_sd35") != NULL, "%s", err_msg());
    CHECKF(strstr(err_msg(), "huggingface-cli download ericbill21/focus_sd35") != NULL, "%s",
           err_msg());

    /* refs/main names a commit whose snapshot is absent (an interrupted download) */
    char repo[1536], path[LONG_PATH];
    snprintf(repo, sizeof repo, "%s/models--org--gone", cache);
    snprintf(path, sizeof path, "%s/refs", repo);
    mkdirs(path);
    snprintf(path, sizeof path, "%s/refs/main", repo);
    write_file(path, COMMIT);
    rc = model_dir_resolve("org/gone", &dir);
    CHECK(rc == ERR_MISSING);
    snprintf(want, sizeof want, "%s/snapshots/" COMMIT " is not a directory", repo);
    CHECKF(strstr(err_msg(), want) != NULL, "%s", err_msg());

    /* a ref that is not a commit cannot reach outside the cache */
    write_file(path, "../../../etc");
    rc = model_dir_resolve("org/gone", &dir);
    CHECKF(rc == ERR_MISSING && strstr(err_msg(), "does not hold a commit hash"), "%s", err_msg());

    /* neither a directory nor a repository id */
    rc = model_dir_resolve("/no/such/dir", &dir);
    CHECKF(rc == ERR_MISSING && strstr(err_msg(), "\"/no/such/dir\": no such directory"), "%s",
           err_msg());
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_root, sizeof tmp_root, "%s/focus-md-XXXXXX", base ? base : P_tmpdir);
    if (!mkdtemp(tmp_root) || !getcwd(cwd, sizeof cwd)) {
        perror("mkdtemp");
        return 2;
    }
    RUN(test_directory_as_given);
    RUN(test_cache_snapshot_loads);
    RUN(test_ref_newline);
    RUN(test_cache_location);
    RUN(test_repo_ids);
    RUN(test_errors_name_paths);
    nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    CHECK_DONE();
}
