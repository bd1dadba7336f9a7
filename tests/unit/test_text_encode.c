/* The text encoders and the prompt assembly against the reference: for every case of
 * golden/encode/cases.json (written by tools/reference/gen_goldens.py from diffusers'
 * StableDiffusion3Pipeline.encode_prompt in float32), the four outputs, and the per-encoder
 * outputs (CLIP-L, CLIP-G, T5) to localise a mismatch, agree within
 *     max |ours - golden| <= 1e-4 * max(1, max |golden|)
 * (float32 reduction-order noise). Also: the T5 bucket function against torch's values, the
 * same on tiny-sd35-real (the published tokenizer files), the layout of text_embeds_stack, the zero T5 block of a model without text_encoder_3, the refusal
 * of a config that contradicts the weights (naming the file and the tensor), and bad inputs. */
#include "tests/unit/check.h"

#include "common/err.h"
#include "engine/clip_text.h"
#include "engine/model_config.h"
#include "engine/npy.h"
#include "engine/t5_encoder.h"
#include "engine/text_encode.h"
#include "kernels/kn.h"

#include <dirent.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TOL 1e-4

static kn_ctx *ctx;
static model_config *cfg;
static text_encoder *te;
static json_t *cases;
static char model_dir[PATH_MAX];
static char tmp_root[512];
static double worst_ratio; /* largest error / allowed error seen, reported at the end */
static const char *golden_sub = "encode"; /* golden/<sub>/ of the model under test */

/* ---- helpers ---- */

static void golden_path(char *buf, size_t n, const char *case_name, const char *file)
{
    snprintf(buf, n, "%s/golden/%s/%s/%s", fixtures_dir(), golden_sub, case_name, file);
}

/* Compares a float tensor with a golden .npy of the same shape. */
static void compare(const kn_tensor *t, const char *case_name, const char *file)
{
    char path[PATH_MAX];
    golden_path(path, sizeof path, case_name, file);
    npy_array g;
    if (npy_read_f32(path, &g) < 0) {
        CHECKF(0, "%s", err_msg());
        return;
    }
    int same = g.ndim == t->ndim;
    for (int i = 0; same && i < g.ndim; i++)
        same = g.shape[i] == t->shape[i];
    char shape[96];
    CHECKF(same, "%s/%s: shape %s differs from the golden's", case_name, file,
           kn_shape_str(t, shape, sizeof shape));
    if (!same) {
        npy_array_free(&g);
        return;
    }
    float *got = malloc(g.count * sizeof *got);
    CHECK(kn_read_f32(ctx, t, got) == 0);
    double max_err = 0, max_ref = 0;
    size_t at = 0;
    for (size_t i = 0; i < g.count; i++) {
        double e = fabs((double)got[i] - g.f32[i]);
        if (!(e <= max_err)) { /* NaN counts as the worst */
            max_err = isnan(e) ? INFINITY : e;
            at = i;
        }
        if (fabs(g.f32[i]) > max_ref) max_ref = fabs(g.f32[i]);
    }
    double allowed = TOL * (max_ref > 1 ? max_ref : 1);
    CHECKF(max_err <= allowed,
           "%s/%s: max abs error %.3g at element %zu (ours %.7g, golden %.7g), "
           "allowed %.3g",
           case_name, file, max_err, at, got[at], g.f32[at], allowed);
    if (max_err / allowed > worst_ratio) worst_ratio = max_err / allowed;
    free(got);
    npy_array_free(&g);
}

static int ids_equal(const int32_t *ids, int n, const json_t *want)
{
    if (!json_is_array(want) || (int)json_array_size(want) != n) return 0;
    for (int i = 0; i < n; i++)
        if (json_integer_value(json_array_get(want, (size_t)i)) != ids[i]) return 0;
    return 1;
}

static int32_t *ids_of(const json_t *arr, int *n)
{
    *n = (int)json_array_size(arr);
    int32_t *ids = malloc((size_t)*n * sizeof *ids);
    for (int i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return ids;
}

static const char *case_str(const json_t *c, const char *key)
{
    return json_string_value(json_object_get(c, key));
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

/* A scratch model directory: every entry of the fixture model symlinked, except `own`, which
 * the test fills itself. */
static void make_model_copy(const char *dir, const char *own)
{
    CHECK(mkdir(dir, 0777) == 0);
    DIR *d = opendir(model_dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, own) == 0) continue;
        char src[PATH_MAX * 2], dst[PATH_MAX * 2];
        snprintf(src, sizeof src, "%s/%s", model_dir, e->d_name);
        snprintf(dst, sizeof dst, "%s/%s", dir, e->d_name);
        CHECK(symlink(src, dst) == 0);
    }
    if (d) closedir(d);
}

/* ---- tests ---- */

/* Torch's _relative_position_bucket(bidirectional=True) for offsets 1..1100, written as the
 * offsets n where f(n) steps up (f(n) = n below max_exact). Produced with transformers 4.46.3 /
 * torch 2.5.1 for several (num_buckets, max_distance) pairs, SD3's (32, 128) first. */
static void test_t5_bucket_matches_torch(void)
{
    static const struct {
        int buckets, max_distance, steps[9][2];
    } tables[] = {
        {32, 128, {{8, 8}, {12, 9}, {16, 10}, {23, 11}, {32, 12}, {46, 13}, {64, 14}, {91, 15}}},
        {32, 64, {{8, 8}, {11, 9}, {14, 10}, {18, 11}, {23, 12}, {30, 13}, {39, 14}, {50, 15}}},
        {32, 20, {{8, 8}, {9, 9}, {11, 10}, {12, 11}, {13, 12}, {15, 13}, {16, 14}, {18, 15}}},
        {16, 32, {{4, 4}, {7, 5}, {12, 6}, {20, 7}}},
        {8, 16, {{2, 2}, {6, 3}}},
    };
    for (size_t t = 0; t < sizeof tables / sizeof tables[0]; t++) {
        int half = tables[t].buckets / 2, max_exact = half / 2;
        for (int n = 0; n <= 1100; n++) {
            int f = n;
            if (n >= max_exact)
                for (int s = 0; s < 9 && tables[t].steps[s][0]; s++)
                    if (n >= tables[t].steps[s][0]) f = tables[t].steps[s][1];
            int pos = t5_relative_bucket(n, tables[t].buckets, tables[t].max_distance);
            int neg = t5_relative_bucket(-n, tables[t].buckets, tables[t].max_distance);
            CHECKF(pos == (n > 0 ? half : 0) + f && neg == f,
                   "buckets %d, max_distance %d, offset +-%d: %d/%d, torch %d/%d",
                   tables[t].buckets, tables[t].max_distance, n, pos, neg, (n > 0 ? half : 0) + f,
                   f);
        }
    }
}

/* transformers' two pooling rules: argmax of the ids under the legacy eos_token_id 2, else the
 * first position of eos_token_id (0 when absent, as argmax of an all-false mask gives). */
static void test_clip_eos_index(void)
{
    clip_config c = {.eos_token_id = 2};
    const int32_t ids[6] = {49406, 7, 320, 49407, 7, 49407};
    CHECK(clip_text_eos_index(&c, ids, 6) == 3);
    const int32_t small[4] = {1, 7, 9, 7};
    CHECK(clip_text_eos_index(&c, small, 4) == 2);
    c.eos_token_id = 7;
    CHECK(clip_text_eos_index(&c, small, 4) == 1);
    c.eos_token_id = 49407;
    CHECK(clip_text_eos_index(&c, ids, 6) == 3);
    CHECK(clip_text_eos_index(&c, small, 4) == 0);
}

static void test_tokens_match_cases(void)
{
    const text_tokenizers *tok = text_encoder_tokenizers(te);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        const char *name = case_str(c, "name");
        json_t *want = json_object_get(c, "ids");
        text_ids ids;
        int msl = (int)json_integer_value(json_object_get(c, "max_sequence_length"));
        if (text_tokenize(tok, case_str(c, "prompt"), msl, &ids) < 0) {
            CHECKF(0, "%s: %s", name, err_msg());
            continue;
        }
        CHECKF(ids_equal(ids.clip_l, ids.clip_len, json_object_get(want, "clip_l")), "%s clip_l",
               name);
        CHECKF(ids_equal(ids.clip_g, ids.clip_len, json_object_get(want, "clip_g")), "%s clip_g",
               name);
        CHECKF(ids_equal(ids.t5, ids.t5_len, json_object_get(want, "t5")), "%s t5", name);
        text_ids_free(&ids);
    }
}

/* Each encoder on the golden ids, so that a tokenizer difference cannot hide a model error. */
static void test_encoders_match_goldens(void)
{
    char dir[PATH_MAX + 32];
    clip_text *cl = NULL, *cg = NULL;
    t5_encoder *t5 = NULL;
    snprintf(dir, sizeof dir, "%s/text_encoder", model_dir);
    CHECKF(clip_text_load(ctx, dir, &cfg->clip_l, &cl) == 0, "%s", err_msg());
    snprintf(dir, sizeof dir, "%s/text_encoder_2", model_dir);
    CHECKF(clip_text_load(ctx, dir, &cfg->clip_g, &cg) == 0, "%s", err_msg());
    snprintf(dir, sizeof dir, "%s/text_encoder_3", model_dir);
    CHECKF(t5_encoder_load(ctx, dir, &cfg->t5, &t5) == 0, "%s", err_msg());
    if (!cl || !cg || !t5) goto out;
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        const char *name = case_str(c, "name");
        json_t *ids = json_object_get(c, "ids");
        const struct {
            const char *key;
            clip_text *m;
            const clip_config *cc;
        } clips[2] = {{"clip_l", cl, &cfg->clip_l}, {"clip_g", cg, &cfg->clip_g}};
        for (int k = 0; k < 2; k++) {
            int n;
            int32_t *v = ids_of(json_object_get(ids, clips[k].key), &n);
            kn_tensor seq, pooled;
            int64_t s_shape[3] = {1, n, clips[k].cc->hidden_size};
            int64_t p_shape[2] = {1, clips[k].cc->projection_dim};
            CHECK(kn_alloc(ctx, &seq, KN_F32, 3, s_shape) == 0);
            CHECK(kn_alloc(ctx, &pooled, KN_F32, 2, p_shape) == 0);
            int rc = clip_text_forward(clips[k].m, v, n, &seq, &pooled);
            CHECKF(rc == 0, "%s %s: %s", name, clips[k].key, err_msg());
            if (rc == 0) {
                char file[64];
                snprintf(file, sizeof file, "%s_hidden.npy", clips[k].key);
                compare(&seq, name, file);
                snprintf(file, sizeof file, "%s_pooled.npy", clips[k].key);
                compare(&pooled, name, file);
            }
            kn_free(ctx, &seq);
            kn_free(ctx, &pooled);
            free(v);
        }
        int n;
        int32_t *v = ids_of(json_object_get(ids, "t5"), &n);
        kn_tensor out;
        int64_t shape[3] = {1, n, cfg->t5.d_model};
        CHECK(kn_alloc(ctx, &out, KN_F32, 3, shape) == 0);
        int rc = t5_encoder_forward(t5, v, n, &out);
        CHECKF(rc == 0, "%s t5: %s", name, err_msg());
        if (rc == 0) compare(&out, name, "t5_hidden.npy");
        kn_free(ctx, &out);
        free(v);
    }
out:
    clip_text_free(cl);
    clip_text_free(cg);
    t5_encoder_free(t5);
}

static void test_encode_matches_goldens(void)
{
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        const char *name = case_str(c, "name");
        int msl = (int)json_integer_value(json_object_get(c, "max_sequence_length"));
        const char *texts[2] = {case_str(c, "prompt"), case_str(c, "negative_prompt")};
        const char *files[2][2] = {
            {"prompt_embeds.npy", "pooled_prompt_embeds.npy"},
            {"negative_prompt_embeds.npy", "negative_pooled_prompt_embeds.npy"}};
        for (int k = 0; k < 2; k++) {
            kn_tensor seq, pooled;
            int rc = text_encode(te, texts[k], msl, &seq, &pooled);
            CHECKF(rc == 0, "%s: %s", name, err_msg());
            if (rc < 0) continue;
            CHECK(seq.shape[1] == text_encoder_seq_len(te, msl));
            compare(&seq, name, files[k][0]);
            compare(&pooled, name, files[k][1]);
            kn_free(ctx, &seq);
            kn_free(ctx, &pooled);
        }
    }
}

/* The same three checks on tiny-sd35-real: the published tokenizer files (byte-exact) with
 * tiny F16 encoders of the real vocabulary sizes, against golden/real_encode/ (prompts with
 * sentinels, Unicode white space and "!", written by tools/reference/gen_real_model.py). */
static void test_real_tokenizer_files(void)
{
    char path[PATH_MAX], dir[PATH_MAX];
    snprintf(path, sizeof path, "%s/tiny-sd35-real", fixtures_dir());
    CHECK(realpath(path, dir) != NULL);
    snprintf(path, sizeof path, "%s/golden/real_encode/cases.json", fixtures_dir());
    json_t *real_cases = json_load_file(path, 0, NULL);
    model_config *real_cfg = NULL;
    text_encoder *real_te = NULL;
    CHECKF(json_array_size(real_cases) >= 3, "%s", path);
    CHECKF(model_config_load(dir, &real_cfg) == 0 && text_encoder_load(ctx, real_cfg, &real_te) == 0, "%s: %s", dir,
           err_msg());
    if (real_te && json_array_size(real_cases)) {
        model_config *saved_cfg = cfg;
        text_encoder *saved_te = te;
        json_t *saved_cases = cases;
        char saved_dir[PATH_MAX];
        memcpy(saved_dir, model_dir, sizeof saved_dir);
        cfg = real_cfg, te = real_te, cases = real_cases, golden_sub = "real_encode";
        memcpy(model_dir, dir, sizeof model_dir);
        test_tokens_match_cases();
        test_encoders_match_goldens();
        test_encode_matches_goldens();
        cfg = saved_cfg, te = saved_te, cases = saved_cases, golden_sub = "encode";
        memcpy(model_dir, saved_dir, sizeof model_dir);
    }
    text_encoder_free(real_te);
    model_config_free(real_cfg);
    json_decref(real_cases);
}

/* Two encodings stacked with two copies each: [a, a, b, b], as the pipeline lays out
 * [negative x n, positive x n]. */
static void test_embeds_stack(void)
{
    kn_tensor a, b, pa, pb, out;
    CHECK(text_encode(te, "a red cube", 77, &a, &pa) == 0);
    CHECK(text_encode(te, "", 77, &b, &pb) == 0);
    const kn_tensor *parts[2] = {&a, &b};
    CHECK(text_embeds_stack(ctx, &out, parts, 2, 2) == 0);
    CHECK(out.ndim == 3 && out.shape[0] == 4 && out.shape[1] == a.shape[1] &&
          out.shape[2] == a.shape[2]);
    size_t each = (size_t)kn_numel(&a);
    float *all = malloc(4 * each * sizeof *all), *fa = malloc(each * sizeof *fa),
          *fb = malloc(each * sizeof *fb);
    CHECK(kn_read_f32(ctx, &out, all) == 0 && kn_read_f32(ctx, &a, fa) == 0 &&
          kn_read_f32(ctx, &b, fb) == 0);
    CHECK(memcmp(all, fa, each * 4) == 0 && memcmp(all + each, fa, each * 4) == 0);
    CHECK(memcmp(all + 2 * each, fb, each * 4) == 0 && memcmp(all + 3 * each, fb, each * 4) == 0);
    CHECK(memcmp(fa, fb, each * 4) != 0);
    kn_free(ctx, &out);
    /* Parts of different shapes are refused. */
    const kn_tensor *mixed[2] = {&a, &pa};
    CHECK(text_embeds_stack(ctx, &out, mixed, 2, 1) == ERR_SHAPE);
    free(all);
    free(fa);
    free(fb);
    kn_free(ctx, &a);
    kn_free(ctx, &b);
    kn_free(ctx, &pa);
    kn_free(ctx, &pb);
}

static void test_bad_inputs(void)
{
    kn_tensor seq, pooled;
    CHECK(text_encode(te, "x", 0, &seq, &pooled) == ERR_RANGE);
    CHECK(text_encode(te, "x", TEXT_MAX_SEQ_LIMIT + 1, &seq, &pooled) == ERR_RANGE);
    CHECK(strstr(err_msg(), "513") != NULL);
    CHECK(text_encode(te, "bad \xff utf-8", 16, &seq, &pooled) == ERR_FORMAT);
    CHECK(seq.data == NULL && pooled.data == NULL);
    /* The longest allowed T5 sequence works. */
    CHECK(text_encode(te, "a cat", TEXT_MAX_SEQ_LIMIT, &seq, &pooled) == 0);
    CHECK(seq.shape[1] == 77 + TEXT_MAX_SEQ_LIMIT);
    kn_free(ctx, &seq);
    kn_free(ctx, &pooled);
}

/* text_encoder/config.json says hidden_size 40 while the weights are 32 wide: one clear error
 * naming the weight file and the first tensor that disagrees. */
static void test_config_contradicts_weights(void)
{
    char dir[600], path[700], src[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/wrong-width", tmp_root);
    make_model_copy(dir, "text_encoder");
    snprintf(path, sizeof path, "%s/text_encoder", dir);
    CHECK(mkdir(path, 0777) == 0);
    snprintf(path, sizeof path, "%s/text_encoder/model.safetensors", dir);
    snprintf(src, sizeof src, "%s/text_encoder/model.safetensors", model_dir);
    CHECK(symlink(src, path) == 0);
    snprintf(src, sizeof src, "%s/text_encoder/config.json", model_dir);
    json_t *conf = json_load_file(src, 0, NULL);
    CHECK(conf && json_integer_value(json_object_get(conf, "hidden_size")) == 32);
    json_object_set_new(conf, "hidden_size", json_integer(40));
    snprintf(path, sizeof path, "%s/text_encoder/config.json", dir);
    CHECK(json_dump_file(conf, path, JSON_INDENT(2)) == 0);
    json_decref(conf);

    model_config *bad_cfg;
    int rc = model_config_load(dir, &bad_cfg);
    CHECKF(rc == 0, "%s", err_msg());
    if (rc < 0) return;
    text_encoder *bad;
    rc = text_encoder_load(ctx, bad_cfg, &bad);
    CHECKF(rc == ERR_SHAPE, "rc %d: %s", rc, err_msg());
    CHECKF(strstr(err_msg(), "text_encoder/model.safetensors") &&
               strstr(err_msg(), "text_model.embeddings.token_embedding.weight"),
           "message: %s", err_msg());
    CHECK(bad == NULL);
    model_config_free(bad_cfg);
}

/* Without text_encoder_3 diffusers appends zeros of tokenizer_max_length (77) rows and
 * joint_attention_dim columns, whatever max_sequence_length is; the CLIP rows are unchanged. */
static void test_without_t5(void)
{
    char dir[600], path[700], src[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/no-t5", tmp_root);
    make_model_copy(dir, "model_index.json");
    snprintf(src, sizeof src, "%s/model_index.json", model_dir);
    json_t *index = json_load_file(src, 0, NULL);
    CHECK(index != NULL);
    json_object_set_new(index, "text_encoder_3", json_pack("[nn]"));
    json_object_set_new(index, "tokenizer_3", json_pack("[nn]"));
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    CHECK(json_dump_file(index, path, JSON_INDENT(2)) == 0);
    json_decref(index);

    model_config *c2;
    int rc = model_config_load(dir, &c2);
    CHECKF(rc == 0, "%s", err_msg());
    if (rc < 0) return;
    CHECK(!c2->has_t5);
    text_encoder *te2;
    rc = text_encoder_load(ctx, c2, &te2);
    CHECKF(rc == 0, "%s", err_msg());
    if (rc == 0) {
        CHECK(text_encoder_seq_len(te2, 256) == 154);
        CHECK(text_encoder_width(te2) == c2->mmdit.joint_attention_dim);
        kn_tensor seq, pooled;
        rc = text_encode(te2, "a photo of a cat", 256, &seq, &pooled);
        CHECKF(rc == 0, "%s", err_msg());
        if (rc == 0) {
            int64_t w = text_encoder_width(te2);
            float *v = malloc((size_t)kn_numel(&seq) * sizeof *v);
            CHECK(kn_read_f32(ctx, &seq, v) == 0);
            int zeros = 1;
            for (int64_t k = 77 * w; k < 154 * w; k++)
                zeros &= v[k] == 0.0f;
            CHECK(zeros);
            free(v);
            /* The CLIP rows and the pooled vector are those of the full model ("simple"). */
            int64_t clip_shape[3] = {1, 77, w};
            kn_tensor clip_rows = kn_view(&seq, 0, 3, clip_shape);
            npy_array g;
            golden_path(path, sizeof path, "simple", "prompt_embeds.npy");
            CHECK(npy_read_f32(path, &g) == 0);
            float *mine = malloc((size_t)kn_numel(&clip_rows) * sizeof *mine);
            CHECK(kn_read_f32(ctx, &clip_rows, mine) == 0);
            double err = 0;
            for (int64_t k = 0; k < 77 * w && (size_t)k < g.count; k++)
                err = fmax(err, fabs((double)mine[k] - g.f32[k]));
            CHECKF(err <= TOL, "CLIP rows without T5 differ by %g", err);
            free(mine);
            npy_array_free(&g);
            compare(&pooled, "simple", "pooled_prompt_embeds.npy");
            kn_free(ctx, &seq);
            kn_free(ctx, &pooled);
        }
        text_encoder_free(te2);
    }
    model_config_free(c2);
}

static void time_one_prompt(void)
{
    kn_tensor seq, pooled;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = text_encode(te, "a photo of a cat", 256, &seq, &pooled);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(rc == 0);
    if (rc == 0) {
        printf("# encode of one prompt (max_seq 256) on the fixture: %.2f ms\n",
               (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-6);
        kn_free(ctx, &seq);
        kn_free(ctx, &pooled);
    }
}

int main(void)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/tiny-sd35", fixtures_dir());
    if (!realpath(path, model_dir)) {
        perror(path);
        return 2;
    }
    snprintf(path, sizeof path, "%s/golden/encode/cases.json", fixtures_dir());
    json_error_t jerr;
    cases = json_load_file(path, 0, &jerr);
    if (!json_is_array(cases) || json_array_size(cases) == 0) {
        fprintf(stderr, "%s: %s\n", path, jerr.text);
        return 2;
    }
    const char *base = getenv("TMPDIR");
    snprintf(tmp_root, sizeof tmp_root, "%s/focus-te-XXXXXX", base ? base : P_tmpdir);
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 2;
    }
    if (kn_ctx_create(KN_CPU, 0, &ctx) < 0 || model_config_load(model_dir, &cfg) < 0 ||
        text_encoder_load(ctx, cfg, &te) < 0) {
        fprintf(stderr, "loading %s: %s\n", model_dir, err_msg());
        return 2;
    }
    RUN(test_t5_bucket_matches_torch);
    RUN(test_clip_eos_index);
    RUN(test_tokens_match_cases);
    RUN(test_encoders_match_goldens);
    RUN(test_encode_matches_goldens);
    RUN(test_real_tokenizer_files);
    RUN(test_embeds_stack);
    RUN(test_bad_inputs);
    RUN(test_config_contradicts_weights);
    RUN(test_without_t5);
    RUN(time_one_prompt);
    printf("# largest error / allowed error over all comparisons: %.3g\n", worst_ratio);
    text_encoder_free(te);
    model_config_free(cfg);
    kn_ctx_destroy(ctx);
    json_decref(cases);
    nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    CHECK_DONE();
}
