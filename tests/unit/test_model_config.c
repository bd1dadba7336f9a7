/* Tests of model_config_load: the fixture pipeline's values against its JSON files, the
 * reference constructors' defaults for absent keys, the T5 activation rules, a pipeline
 * without T5, and one error per kind of bad input (wrong type, missing file or key, malformed
 * JSON, out-of-range or contradictory values), each naming the file and the key. The bad
 * inputs are copies of the fixture's configs, edited in a temporary directory. */
#include "engine/model_config.h"

#include "common/err.h"
#include "tests/unit/check.h"

#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const config_files[] = {
    "model_index.json",          "scheduler/scheduler_config.json", "text_encoder/config.json",
    "text_encoder_2/config.json", "text_encoder_3/config.json",      "transformer/config.json",
    "vae/config.json",
};
#define N_CONFIGS (sizeof config_files / sizeof config_files[0])

static char tmp_root[512];
static char work[1024]; /* the current test's pipeline directory */
static int n_work;

static void fixture_path(char *buf, size_t n, const char *rel)
{
    snprintf(buf, n, "%s/tiny-sd35/%s", fixtures_dir(), rel);
}

static json_t *load_fixture_json(const char *rel)
{
    char path[2048];
    fixture_path(path, sizeof path, rel);
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j)
        fprintf(stderr, "  %s: %s\n", path, e.text);
    return j;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

/* A fresh copy of the fixture's config files (not its weights) to edit. */
static void new_work_copy(void)
{
    snprintf(work, sizeof work, "%s/p%d", tmp_root, n_work++);
    mkdir(work, 0755);
    for (size_t i = 0; i < N_CONFIGS; i++) {
        char path[2048], sub[2048];
        json_t *j = load_fixture_json(config_files[i]);
        snprintf(path, sizeof path, "%s/%s", work, config_files[i]);
        const char *slash = strchr(config_files[i], '/');
        if (slash) {
            snprintf(sub, sizeof sub, "%s/%.*s", work, (int)(slash - config_files[i]),
                     config_files[i]);
            mkdir(sub, 0755);
        }
        if (!j || json_dump_file(j, path, JSON_INDENT(2)) != 0) {
            fprintf(stderr, "cannot copy %s\n", config_files[i]);
            exit(2);
        }
        json_decref(j);
    }
}

/* Sets key in the copy's rel file to value (stolen), or deletes it when value is NULL. */
static void patch(const char *rel, const char *key, json_t *value)
{
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", work, rel);
    json_t *j = json_load_file(path, 0, NULL);
    unlink(path); /* a fresh file, which ext4 does not flush on close as it does a truncated one */
    if (value)
        json_object_set_new(j, key, value);
    else
        json_object_del(j, key);
    json_dump_file(j, path, JSON_INDENT(2));
    json_decref(j);
}

static void write_text(const char *rel, const char *text)
{
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", work, rel);
    unlink(path);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void remove_file(const char *rel)
{
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", work, rel);
    unlink(path);
}

/* Loads the work copy and expects code with a message naming file and key. */
static void expect_load_err(int code, const char *file, const char *key)
{
    model_config *m = (model_config *)work; /* any non-NULL value: a failed load resets it */
    int rc = model_config_load(work, &m);
    CHECKF(rc == code, "rc %s, expected %s: %s", err_code_name(rc), err_code_name(code),
           err_msg());
    CHECK(m == NULL || rc == 0);
    if (rc == 0)
        model_config_free(m);
    char want[2048];
    snprintf(want, sizeof want, "%s/%s", work, file);
    CHECKF(strstr(err_msg(), want) != NULL, "message lacks \"%s\": %s", want, err_msg());
    if (key)
        CHECKF(strstr(err_msg(), key) != NULL, "message lacks \"%s\": %s", key, err_msg());
}

static model_config *load_work(void)
{
    model_config *m = NULL;
    int rc = model_config_load(work, &m);
    CHECKF(rc == 0, "%s", err_msg());
    return m;
}

static int jint(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    CHECKF(json_is_integer(v), "fixture key %s", key);
    return (int)json_integer_value(v);
}

static double jdouble(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    CHECKF(json_is_number(v), "fixture key %s", key);
    return json_number_value(v);
}

static float jnum(const json_t *o, const char *key)
{
    return (float)jdouble(o, key);
}

static void check_clip(const clip_config *c, const char *rel, act_kind_cfg act)
{
    json_t *j = load_fixture_json(rel);
    CHECK(c->hidden_size == jint(j, "hidden_size"));
    CHECK(c->intermediate_size == jint(j, "intermediate_size"));
    CHECK(c->num_hidden_layers == jint(j, "num_hidden_layers"));
    CHECK(c->num_attention_heads == jint(j, "num_attention_heads"));
    CHECK(c->max_position_embeddings == jint(j, "max_position_embeddings"));
    CHECK(c->vocab_size == jint(j, "vocab_size"));
    CHECK(c->projection_dim == jint(j, "projection_dim"));
    CHECK(c->eos_token_id == jint(j, "eos_token_id"));
    CHECK(c->layer_norm_eps == jnum(j, "layer_norm_eps"));
    CHECKF(c->hidden_act == act, "%s hidden_act %d", rel, (int)c->hidden_act);
    json_decref(j);
}

static void test_fixture_values(void)
{
    char path[2048];
    fixture_path(path, sizeof path, "");
    model_config *m = NULL;
    int rc = model_config_load(path, &m);
    CHECKF(rc == 0, "%s", err_msg());
    if (rc)
        return;
    CHECK(strcmp(m->path, path) == 0);
    check_clip(&m->clip_l, "text_encoder/config.json", CFG_ACT_QUICK_GELU);
    check_clip(&m->clip_g, "text_encoder_2/config.json", CFG_ACT_GELU);

    CHECK(m->has_t5);
    json_t *j = load_fixture_json("text_encoder_3/config.json");
    CHECK(m->t5.d_model == jint(j, "d_model") && m->t5.d_kv == jint(j, "d_kv"));
    CHECK(m->t5.d_ff == jint(j, "d_ff") && m->t5.num_layers == jint(j, "num_layers"));
    CHECK(m->t5.num_heads == jint(j, "num_heads") && m->t5.vocab_size == jint(j, "vocab_size"));
    CHECK(m->t5.relative_attention_num_buckets == jint(j, "relative_attention_num_buckets"));
    CHECK(m->t5.relative_attention_max_distance == jint(j, "relative_attention_max_distance"));
    CHECK(m->t5.layer_norm_epsilon == jnum(j, "layer_norm_epsilon"));
    CHECK(m->t5.dense_act == CFG_ACT_GELU_TANH && m->t5.is_gated_act);
    json_decref(j);

    j = load_fixture_json("transformer/config.json");
    const mmdit_config *t = &m->mmdit;
    CHECK(t->sample_size == jint(j, "sample_size") && t->patch_size == jint(j, "patch_size"));
    CHECK(t->in_channels == jint(j, "in_channels") && t->out_channels == jint(j, "out_channels"));
    CHECK(t->num_layers == jint(j, "num_layers"));
    CHECK(t->attention_head_dim == jint(j, "attention_head_dim"));
    CHECK(t->num_attention_heads == jint(j, "num_attention_heads"));
    CHECK(t->joint_attention_dim == jint(j, "joint_attention_dim"));
    CHECK(t->caption_projection_dim == jint(j, "caption_projection_dim"));
    CHECK(t->pooled_projection_dim == jint(j, "pooled_projection_dim"));
    CHECK(t->pos_embed_max_size == jint(j, "pos_embed_max_size"));
    const json_t *dual = json_object_get(j, "dual_attention_layers");
    CHECK(t->num_dual_attention_layers == (int)json_array_size(dual));
    for (int i = 0; i < t->num_dual_attention_layers; i++)
        CHECK(t->dual_attention_layers[i] == (int)json_integer_value(json_array_get(dual, (size_t)i)));
    CHECK(t->qk_norm_rms == (strcmp(json_string_value(json_object_get(j, "qk_norm")), "rms_norm") == 0));
    json_decref(j);

    j = load_fixture_json("vae/config.json");
    const vae_config *v = &m->vae;
    CHECK(v->in_channels == jint(j, "in_channels") && v->out_channels == jint(j, "out_channels"));
    CHECK(v->latent_channels == jint(j, "latent_channels"));
    CHECK(v->layers_per_block == jint(j, "layers_per_block"));
    CHECK(v->norm_num_groups == jint(j, "norm_num_groups"));
    const json_t *boc = json_object_get(j, "block_out_channels");
    CHECK(v->num_blocks == (int)json_array_size(boc));
    for (int i = 0; i < v->num_blocks; i++)
        CHECK(v->block_out_channels[i] == (int)json_integer_value(json_array_get(boc, (size_t)i)));
    CHECK(v->scaling_factor == jnum(j, "scaling_factor"));
    CHECK(v->shift_factor == jnum(j, "shift_factor"));
    CHECK(v->use_post_quant_conv == json_is_true(json_object_get(j, "use_post_quant_conv")));
    CHECK(v->mid_block_add_attention == json_is_true(json_object_get(j, "mid_block_add_attention")));
    json_decref(j);

    j = load_fixture_json("scheduler/scheduler_config.json");
    const scheduler_config *s = &m->scheduler;
    CHECK(s->num_train_timesteps == jint(j, "num_train_timesteps"));
    CHECK(s->shift == jnum(j, "shift") && s->shift == 3.0f);
    CHECK(s->use_dynamic_shifting == json_is_true(json_object_get(j, "use_dynamic_shifting")));
    CHECK(s->base_shift == jdouble(j, "base_shift") && s->max_shift == jdouble(j, "max_shift"));
    CHECK(s->base_image_seq_len == jint(j, "base_image_seq_len"));
    CHECK(s->max_image_seq_len == jint(j, "max_image_seq_len"));
    json_decref(j);
    model_config_free(m);
}

/* Empty configs mean the constructors' defaults (values read from diffusers 0.31 and
 * transformers 4.46 sources). */
static void test_defaults(void)
{
    new_work_copy();
    static const char *const empty[] = {"scheduler/scheduler_config.json",
                                        "text_encoder/config.json", "transformer/config.json",
                                        "vae/config.json"};
    for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++)
        write_text(empty[i], "{}");
    write_text("text_encoder_3/config.json", "{\"feed_forward_proj\": \"gated-gelu\"}");
    model_config *m = load_work();
    if (!m)
        return;
    const clip_config *c = &m->clip_l;
    CHECK(c->vocab_size == 49408 && c->hidden_size == 512 && c->intermediate_size == 2048);
    CHECK(c->projection_dim == 512 && c->num_hidden_layers == 12 && c->num_attention_heads == 8);
    CHECK(c->max_position_embeddings == 77 && c->eos_token_id == 49407);
    CHECK(c->layer_norm_eps == 1e-5f && c->hidden_act == CFG_ACT_QUICK_GELU);
    const t5_config *t = &m->t5;
    CHECK(t->vocab_size == 32128 && t->d_model == 512 && t->d_kv == 64 && t->d_ff == 2048);
    CHECK(t->num_layers == 6 && t->num_heads == 8);
    CHECK(t->relative_attention_num_buckets == 32 && t->relative_attention_max_distance == 128);
    CHECK(t->layer_norm_epsilon == 1e-6f);
    CHECK(t->dense_act == CFG_ACT_GELU_TANH && t->is_gated_act);
    const mmdit_config *d = &m->mmdit;
    CHECK(d->sample_size == 128 && d->patch_size == 2 && d->in_channels == 16);
    CHECK(d->out_channels == 16 && d->num_layers == 18 && d->attention_head_dim == 64);
    CHECK(d->num_attention_heads == 18 && d->joint_attention_dim == 4096);
    CHECK(d->caption_projection_dim == 1152 && d->pooled_projection_dim == 2048);
    CHECK(d->pos_embed_max_size == 96 && d->num_dual_attention_layers == 0 && !d->qk_norm_rms);
    const vae_config *v = &m->vae;
    CHECK(v->in_channels == 3 && v->out_channels == 3 && v->latent_channels == 4);
    CHECK(v->layers_per_block == 1 && v->norm_num_groups == 32);
    CHECK(v->num_blocks == 1 && v->block_out_channels[0] == 64);
    CHECK(v->scaling_factor == 0.18215f && v->shift_factor == 0.0f);
    CHECK(v->use_post_quant_conv && v->mid_block_add_attention);
    const scheduler_config *s = &m->scheduler;
    CHECK(s->num_train_timesteps == 1000 && s->shift == 1.0f && !s->use_dynamic_shifting);
    CHECK(s->base_shift == 0.5 && s->max_shift == 1.15);
    CHECK(s->base_image_seq_len == 256 && s->max_image_seq_len == 4096);
    model_config_free(m);
}

/* model_index.json may list text_encoder_3 as [null, null]: no T5, and its config unread. */
static void test_without_t5(void)
{
    new_work_copy();
    patch("model_index.json", "text_encoder_3", json_pack("[n,n]"));
    patch("model_index.json", "tokenizer_3", json_pack("[n,n]"));
    remove_file("text_encoder_3/config.json");
    model_config *m = load_work();
    CHECK(m && !m->has_t5);
    model_config_free(m);

    new_work_copy();
    patch("model_index.json", "tokenizer_3", json_pack("[n,n]"));
    expect_load_err(ERR_MISSING, "model_index.json", "tokenizer_3");
}

/* T5Config: feed_forward_proj "gated-X" / "X", with saved dense_act_fn / is_gated_act keys
 * taking precedence, as transformers applies them after the constructor. */
static void test_t5_activation(void)
{
    const char *rel = "text_encoder_3/config.json";
    new_work_copy();
    patch(rel, "dense_act_fn", NULL);
    patch(rel, "is_gated_act", NULL);
    patch(rel, "feed_forward_proj", json_string("gated-silu"));
    model_config *m = load_work();
    CHECK(m && m->t5.dense_act == CFG_ACT_SILU && m->t5.is_gated_act);
    model_config_free(m);

    patch(rel, "feed_forward_proj", json_string("gelu"));
    m = load_work();
    CHECK(m && m->t5.dense_act == CFG_ACT_GELU && !m->t5.is_gated_act);
    model_config_free(m);

    patch(rel, "feed_forward_proj", json_string("gated-gelu"));
    patch(rel, "dense_act_fn", json_string("gelu"));
    patch(rel, "is_gated_act", json_false());
    m = load_work();
    CHECK(m && m->t5.dense_act == CFG_ACT_GELU && !m->t5.is_gated_act);
    model_config_free(m);

    patch(rel, "dense_act_fn", NULL);
    patch(rel, "feed_forward_proj", json_string("gated-gelu-x"));
    expect_load_err(ERR_RANGE, rel, "feed_forward_proj");
    patch(rel, "feed_forward_proj", json_string("relu"));
    expect_load_err(ERR_RANGE, rel, "\"relu\" is not supported");
    patch(rel, "feed_forward_proj", json_string("gated-gelu"));
    patch(rel, "dense_act_fn", json_string("mish"));
    expect_load_err(ERR_RANGE, rel, "dense_act_fn");
}

static void test_wrong_type(void)
{
    new_work_copy();
    patch("text_encoder/config.json", "hidden_size", json_string("32"));
    expect_load_err(ERR_FORMAT, "text_encoder/config.json",
                    "key \"hidden_size\": expected an integer, found a string");
    new_work_copy();
    patch("vae/config.json", "use_post_quant_conv", json_integer(0));
    expect_load_err(ERR_FORMAT, "vae/config.json", "use_post_quant_conv");
    new_work_copy();
    patch("transformer/config.json", "dual_attention_layers", json_pack("[i,s]", 0, "1"));
    expect_load_err(ERR_FORMAT, "transformer/config.json", "dual_attention_layers");
    new_work_copy();
    patch("scheduler/scheduler_config.json", "shift", json_string("3.0"));
    expect_load_err(ERR_FORMAT, "scheduler/scheduler_config.json", "\"shift\"");
    new_work_copy();
    patch("text_encoder_2/config.json", "layer_norm_eps", json_null());
    expect_load_err(ERR_FORMAT, "text_encoder_2/config.json", "layer_norm_eps");
    new_work_copy();
    patch("model_index.json", "vae", json_string("AutoencoderKL"));
    expect_load_err(ERR_FORMAT, "model_index.json", "\"vae\"");
}

static void test_missing_file(void)
{
    new_work_copy();
    remove_file("vae/config.json");
    expect_load_err(ERR_MISSING, "vae/config.json", "no such file");
    new_work_copy();
    remove_file("text_encoder_3/config.json");
    expect_load_err(ERR_MISSING, "text_encoder_3/config.json", NULL);
    new_work_copy();
    remove_file("model_index.json");
    expect_load_err(ERR_MISSING, "model_index.json", NULL);
}

static void test_malformed_json(void)
{
    new_work_copy();
    write_text("transformer/config.json", "{\"num_layers\": 3,");
    expect_load_err(ERR_FORMAT, "transformer/config.json", "not valid JSON");
    write_text("transformer/config.json", "[3]");
    expect_load_err(ERR_FORMAT, "transformer/config.json", "not an object");
    write_text("transformer/config.json", "{\"num_layers\": 3, \"num_layers\": 4}");
    expect_load_err(ERR_FORMAT, "transformer/config.json", "num_layers");
}

static void test_model_index(void)
{
    new_work_copy();
    patch("model_index.json", "_class_name", json_string("StableDiffusionXLPipeline"));
    expect_load_err(ERR_RANGE, "model_index.json", "_class_name");
    patch("model_index.json", "_class_name", NULL);
    expect_load_err(ERR_MISSING, "model_index.json", "_class_name");
    new_work_copy();
    patch("model_index.json", "vae", NULL);
    expect_load_err(ERR_MISSING, "model_index.json", "\"vae\"");
    new_work_copy();
    patch("model_index.json", "text_encoder", json_pack("[n,n]"));
    expect_load_err(ERR_MISSING, "model_index.json", "\"text_encoder\"");
    new_work_copy();
    patch("model_index.json", "transformer", json_pack("[s,s]", "diffusers", "FluxTransformer2DModel"));
    expect_load_err(ERR_RANGE, "model_index.json", "FluxTransformer2DModel");
    new_work_copy();
    patch("model_index.json", "scheduler", json_pack("[s]", "diffusers"));
    expect_load_err(ERR_FORMAT, "model_index.json", "\"scheduler\"");
}

static void test_out_of_range(void)
{
    static const struct {
        const char *file, *key;
        int value;
        const char *msg;
    } cases[] = {
        {"text_encoder/config.json", "num_attention_heads", 0, "num_attention_heads\": 0"},
        {"text_encoder/config.json", "hidden_size", 33, "not divisible by num_attention_heads"},
        {"text_encoder_3/config.json", "d_model", -5, "\"d_model\": -5 is outside"},
        {"transformer/config.json", "caption_projection_dim", 96, "caption_projection_dim"},
        {"transformer/config.json", "num_layers", 1, "dual_attention_layers"},
        {"vae/config.json", "norm_num_groups", 5, "norm_num_groups 5"},
        {"scheduler/scheduler_config.json", "num_train_timesteps", 0, "num_train_timesteps"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        new_work_copy();
        patch(cases[i].file, cases[i].key, json_integer(cases[i].value));
        expect_load_err(ERR_RANGE, cases[i].file, cases[i].msg);
    }
    new_work_copy();
    patch("transformer/config.json", "qk_norm", json_string("layer_norm"));
    expect_load_err(ERR_RANGE, "transformer/config.json", "qk_norm");
    new_work_copy();
    patch("vae/config.json", "up_block_types", json_pack("[s]", "UpDecoderBlock2D"));
    expect_load_err(ERR_RANGE, "vae/config.json", "up_block_types");
    new_work_copy();
    patch("vae/config.json", "act_fn", json_string("gelu"));
    expect_load_err(ERR_RANGE, "vae/config.json", "act_fn");
    new_work_copy();
    patch("scheduler/scheduler_config.json", "use_dynamic_shifting", json_true());
    patch("scheduler/scheduler_config.json", "max_shift", json_null());
    expect_load_err(ERR_RANGE, "scheduler/scheduler_config.json", "max_shift");
    new_work_copy();
    patch("text_encoder_2/config.json", "hidden_act", json_string("relu6"));
    expect_load_err(ERR_RANGE, "text_encoder_2/config.json", "hidden_act");
}

/* Keys the reference constructors accept as null, and a repeated dual-attention index. */
static void test_nullable_keys(void)
{
    new_work_copy();
    patch("vae/config.json", "shift_factor", json_null());
    patch("transformer/config.json", "out_channels", json_null());
    patch("transformer/config.json", "in_channels", json_integer(4));
    patch("transformer/config.json", "qk_norm", json_null());
    patch("transformer/config.json", "dual_attention_layers", json_pack("[i,i,i]", 2, 0, 2));
    patch("scheduler/scheduler_config.json", "base_shift", json_null());
    model_config *m = load_work();
    if (!m)
        return;
    CHECK(m->vae.shift_factor == 0.0f);
    CHECK(m->mmdit.out_channels == 4 && !m->mmdit.qk_norm_rms);
    CHECK(m->mmdit.num_dual_attention_layers == 2);
    CHECK(m->mmdit.dual_attention_layers[0] == 2 && m->mmdit.dual_attention_layers[1] == 0);
    CHECK(isnan(m->scheduler.base_shift));
    model_config_free(m);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_root, sizeof tmp_root, "%s/focus-mc-XXXXXX", base ? base : P_tmpdir);
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 2;
    }
    RUN(test_fixture_values);
    RUN(test_defaults);
    RUN(test_without_t5);
    RUN(test_t5_activation);
    RUN(test_wrong_type);
    RUN(test_missing_file);
    RUN(test_malformed_json);
    RUN(test_model_index);
    RUN(test_out_of_range);
    RUN(test_nullable_keys);
    nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    CHECK_DONE();
}
