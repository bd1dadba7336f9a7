/* Reads a diffusers-layout SD3 pipeline's model_index.json and component configs into the
 * structs of model_config.h. A key that is absent takes the default of the reference
 * constructor (diffusers SD3Transformer2DModel, AutoencoderKL, FlowMatchEulerDiscreteScheduler;
 * transformers CLIPTextConfig, T5Config), so a config means what it means to the reference.
 * Wrong types and values the engine cannot honour are errors naming the file and key. Weights
 * are not touched here. */
#include "engine/model_config.h"

#include "engine/model_dir.h"

#include "common/err.h"
#include "common/xalloc.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIM_MAX (1 << 20)
#define COUNT_MAX 4096

typedef struct cfg {
    char *path;
    json_t *root;
} cfg;

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

static void cfg_free(cfg *c)
{
    json_decref(c->root);
    free(c->path);
    *c = (cfg){0};
}

static int cfg_load(const char *dir, const char *rel, cfg *c)
{
    size_t n = strlen(dir) + strlen(rel) + 2;
    c->path = xmalloc(n);
    snprintf(c->path, n, "%s/%s", dir, rel);
    c->root = NULL;
    FILE *fp = fopen(c->path, "rb");
    if (!fp) {
        if (errno == ENOENT)
            return err_set(ERR_MISSING, "%s: no such file", c->path);
        return err_set(ERR_IO, "%s: %s", c->path, strerror(errno));
    }
    json_error_t jerr;
    c->root = json_loadf(fp, JSON_REJECT_DUPLICATES, &jerr);
    fclose(fp);
    if (!c->root)
        return err_set(ERR_FORMAT, "%s: not valid JSON: %s (line %d, column %d)", c->path,
                       jerr.text, jerr.line, jerr.column);
    if (!json_is_object(c->root))
        return err_set(ERR_FORMAT, "%s: top level is %s, not an object", c->path,
                       json_type_name(c->root));
    return 0;
}

static int wrong_type(const cfg *c, const char *key, const char *want, const json_t *v)
{
    return err_set(ERR_FORMAT, "%s: key \"%s\": expected %s, found %s", c->path, key, want,
                   json_type_name(v));
}

/* Absent keys take def; null is a type error, as it would break the reference constructor. */
static int get_int(const cfg *c, const char *key, int def, int lo, int hi, int *out)
{
    const json_t *v = json_object_get(c->root, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return wrong_type(c, key, "an integer", v);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return err_set(ERR_RANGE, "%s: key \"%s\": %lld is outside [%d, %d]", c->path, key,
                       (long long)x, lo, hi);
    *out = (int)x;
    return 0;
}

static int get_double(const cfg *c, const char *key, double def, double lo, double hi,
                      double *out)
{
    const json_t *v = json_object_get(c->root, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return wrong_type(c, key, "a number", v);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return err_set(ERR_RANGE, "%s: key \"%s\": %g is outside [%g, %g]", c->path, key, x, lo,
                       hi);
    *out = x;
    return 0;
}

static int get_float(const cfg *c, const char *key, double def, double lo, double hi, float *out)
{
    double x = def;
    int rc = get_double(c, key, def, lo, hi, &x);
    if (rc == 0)
        *out = (float)x;
    return rc;
}

static int get_bool(const cfg *c, const char *key, bool def, bool *out)
{
    const json_t *v = json_object_get(c->root, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return wrong_type(c, key, "a boolean", v);
    *out = json_is_true(v);
    return 0;
}

static int get_str(const cfg *c, const char *key, const char *def, const char **out)
{
    const json_t *v = json_object_get(c->root, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_string(v))
        return wrong_type(c, key, "a string", v);
    *out = json_string_value(v);
    return 0;
}

/* transformers' ACT2FN names of the activations the kernels implement. */
static int parse_act(const cfg *c, const char *key, const char *name, act_kind_cfg *out)
{
    static const struct {
        const char *name;
        act_kind_cfg act;
    } acts[] = {
        {"quick_gelu", CFG_ACT_QUICK_GELU}, {"gelu", CFG_ACT_GELU},
        {"gelu_new", CFG_ACT_GELU_TANH},    {"gelu_pytorch_tanh", CFG_ACT_GELU_TANH},
        {"silu", CFG_ACT_SILU},             {"swish", CFG_ACT_SILU},
    };
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) {
        if (strcmp(name, acts[i].name) == 0) {
            *out = acts[i].act;
            return 0;
        }
    }
    return err_set(ERR_RANGE, "%s: key \"%s\": activation \"%s\" is not supported", c->path, key,
                   name);
}

static int load_clip(const char *dir, const char *component, clip_config *o)
{
    char rel[64];
    snprintf(rel, sizeof rel, "%s/config.json", component);
    cfg c;
    int rc = cfg_load(dir, rel, &c);
    const char *act = NULL;
    if (!rc)
        rc = get_int(&c, "vocab_size", 49408, 1, 1 << 24, &o->vocab_size);
    if (!rc)
        rc = get_int(&c, "hidden_size", 512, 1, DIM_MAX, &o->hidden_size);
    if (!rc)
        rc = get_int(&c, "intermediate_size", 2048, 1, DIM_MAX, &o->intermediate_size);
    if (!rc)
        rc = get_int(&c, "projection_dim", 512, 1, DIM_MAX, &o->projection_dim);
    if (!rc)
        rc = get_int(&c, "num_hidden_layers", 12, 1, COUNT_MAX, &o->num_hidden_layers);
    if (!rc)
        rc = get_int(&c, "num_attention_heads", 8, 1, COUNT_MAX, &o->num_attention_heads);
    if (!rc)
        rc = get_int(&c, "max_position_embeddings", 77, 1, DIM_MAX, &o->max_position_embeddings);
    if (!rc)
        rc = get_int(&c, "eos_token_id", 49407, 0, 1 << 30, &o->eos_token_id);
    if (!rc)
        rc = get_float(&c, "layer_norm_eps", 1e-5, 0, 1, &o->layer_norm_eps);
    if (!rc)
        rc = get_str(&c, "hidden_act", "quick_gelu", &act);
    if (!rc)
        rc = parse_act(&c, "hidden_act", act, &o->hidden_act);
    if (!rc && o->hidden_size % o->num_attention_heads != 0)
        rc = err_set(ERR_RANGE,
                     "%s: key \"hidden_size\": %d is not divisible by num_attention_heads %d",
                     c.path, o->hidden_size, o->num_attention_heads);
    cfg_free(&c);
    return rc;
}

/* T5Config: feed_forward_proj "gated-X" or "X" sets dense_act_fn and is_gated_act ("gated-gelu"
 * means gelu_new for backward compatibility); explicit dense_act_fn / is_gated_act keys, which
 * saved configs carry, then override both as PretrainedConfig's kwargs do. */
static int load_t5_act(const cfg *c, t5_config *o)
{
    const char *ffp = NULL, *act = NULL;
    int rc = get_str(c, "feed_forward_proj", "relu", &ffp);
    if (rc)
        return rc;
    const char *dash = strchr(ffp, '-');
    if (dash && (strncmp(ffp, "gated-", 6) != 0 || strchr(dash + 1, '-')))
        return err_set(ERR_RANGE,
                       "%s: key \"feed_forward_proj\": \"%s\" is not \"gated-ACT\" or \"ACT\"",
                       c->path, ffp);
    o->is_gated_act = dash != NULL;
    act = strcmp(ffp, "gated-gelu") == 0 ? "gelu_new" : dash ? dash + 1 : ffp;
    rc = get_str(c, "dense_act_fn", act, &act);
    if (!rc)
        rc = get_bool(c, "is_gated_act", o->is_gated_act, &o->is_gated_act);
    if (!rc)
        rc = parse_act(c, json_object_get(c->root, "dense_act_fn") ? "dense_act_fn"
                                                                   : "feed_forward_proj",
                       act, &o->dense_act);
    return rc;
}

static int load_t5(const char *dir, t5_config *o)
{
    cfg c;
    int rc = cfg_load(dir, "text_encoder_3/config.json", &c);
    if (!rc)
        rc = get_int(&c, "vocab_size", 32128, 1, 1 << 24, &o->vocab_size);
    if (!rc)
        rc = get_int(&c, "d_model", 512, 1, DIM_MAX, &o->d_model);
    if (!rc)
        rc = get_int(&c, "d_kv", 64, 1, DIM_MAX, &o->d_kv);
    if (!rc)
        rc = get_int(&c, "d_ff", 2048, 1, DIM_MAX, &o->d_ff);
    if (!rc)
        rc = get_int(&c, "num_layers", 6, 1, COUNT_MAX, &o->num_layers);
    if (!rc)
        rc = get_int(&c, "num_heads", 8, 1, COUNT_MAX, &o->num_heads);
    if (!rc)
        rc = get_int(&c, "relative_attention_num_buckets", 32, 2, COUNT_MAX,
                     &o->relative_attention_num_buckets);
    if (!rc)
        rc = get_int(&c, "relative_attention_max_distance", 128, 1, DIM_MAX,
                     &o->relative_attention_max_distance);
    if (!rc)
        rc = get_float(&c, "layer_norm_epsilon", 1e-6, 0, 1, &o->layer_norm_epsilon);
    if (!rc)
        rc = load_t5_act(&c, o);
    cfg_free(&c);
    return rc;
}

static int load_dual_layers(const cfg *c, mmdit_config *o)
{
    const char *key = "dual_attention_layers";
    const json_t *v = json_object_get(c->root, key);
    o->num_dual_attention_layers = 0;
    if (!v)
        return 0;
    if (!json_is_array(v))
        return wrong_type(c, key, "an array", v);
    size_t i;
    const json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_integer(e))
            return err_set(ERR_FORMAT, "%s: key \"%s\": element %zu is %s, not an integer",
                           c->path, key, i, json_type_name(e));
        json_int_t x = json_integer_value(e);
        if (x < 0 || x >= o->num_layers)
            return err_set(ERR_RANGE, "%s: key \"%s\": layer %lld is outside [0, num_layers %d)",
                           c->path, key, (long long)x, o->num_layers);
        /* The reference tests membership, so a repeated index changes nothing. */
        bool seen = false;
        for (int k = 0; k < o->num_dual_attention_layers && !seen; k++)
            seen = o->dual_attention_layers[k] == x;
        if (seen)
            continue;
        if (o->num_dual_attention_layers == (int)(sizeof o->dual_attention_layers /
                                                  sizeof o->dual_attention_layers[0]))
            return err_set(ERR_RANGE, "%s: key \"%s\": more than %zu layers", c->path, key,
                           sizeof o->dual_attention_layers / sizeof o->dual_attention_layers[0]);
        o->dual_attention_layers[o->num_dual_attention_layers++] = (int)x;
    }
    return 0;
}

static int load_mmdit(const char *dir, mmdit_config *o)
{
    cfg c;
    int rc = cfg_load(dir, "transformer/config.json", &c);
    if (!rc)
        rc = get_int(&c, "sample_size", 128, 1, DIM_MAX, &o->sample_size);
    if (!rc)
        rc = get_int(&c, "patch_size", 2, 1, 64, &o->patch_size);
    if (!rc)
        rc = get_int(&c, "in_channels", 16, 1, DIM_MAX, &o->in_channels);
    if (!rc) {
        if (json_is_null(json_object_get(c.root, "out_channels")))
            o->out_channels = o->in_channels;
        else
            rc = get_int(&c, "out_channels", 16, 1, DIM_MAX, &o->out_channels);
    }
    if (!rc)
        rc = get_int(&c, "num_layers", 18, 1, COUNT_MAX, &o->num_layers);
    if (!rc)
        rc = get_int(&c, "attention_head_dim", 64, 1, DIM_MAX, &o->attention_head_dim);
    if (!rc)
        rc = get_int(&c, "num_attention_heads", 18, 1, COUNT_MAX, &o->num_attention_heads);
    if (!rc)
        rc = get_int(&c, "joint_attention_dim", 4096, 1, DIM_MAX, &o->joint_attention_dim);
    if (!rc)
        rc = get_int(&c, "caption_projection_dim", 1152, 1, DIM_MAX, &o->caption_projection_dim);
    if (!rc)
        rc = get_int(&c, "pooled_projection_dim", 2048, 1, DIM_MAX, &o->pooled_projection_dim);
    if (!rc)
        rc = get_int(&c, "pos_embed_max_size", 96, 1, DIM_MAX, &o->pos_embed_max_size);
    if (!rc)
        rc = load_dual_layers(&c, o);
    if (!rc) {
        const json_t *v = json_object_get(c.root, "qk_norm");
        o->qk_norm_rms = false;
        if (v && !json_is_null(v) && !json_is_string(v))
            rc = wrong_type(&c, "qk_norm", "a string or null", v);
        else if (json_is_string(v) && strcmp(json_string_value(v), "rms_norm") != 0)
            rc = err_set(ERR_RANGE, "%s: key \"qk_norm\": \"%s\" is not supported (null or "
                                    "\"rms_norm\")",
                         c.path, json_string_value(v));
        else
            o->qk_norm_rms = json_is_string(v);
    }
    /* The joint blocks run at heads x head_dim; the context embedder projects to
     * caption_projection_dim, so the reference only works when they agree. */
    if (!rc && (long long)o->num_attention_heads * o->attention_head_dim != o->caption_projection_dim)
        rc = err_set(ERR_RANGE,
                     "%s: key \"caption_projection_dim\": %d differs from num_attention_heads x "
                     "attention_head_dim = %d x %d",
                     c.path, o->caption_projection_dim, o->num_attention_heads,
                     o->attention_head_dim);
    cfg_free(&c);
    return rc;
}

static int load_vae_blocks(const cfg *c, vae_config *o)
{
    const char *key = "block_out_channels";
    const json_t *v = json_object_get(c->root, key);
    int cap = (int)(sizeof o->block_out_channels / sizeof o->block_out_channels[0]);
    if (!v) {
        o->block_out_channels[0] = 64;
        o->num_blocks = 1;
    } else if (!json_is_array(v)) {
        return wrong_type(c, key, "an array", v);
    } else if (json_array_size(v) < 1 || json_array_size(v) > (size_t)cap) {
        return err_set(ERR_RANGE, "%s: key \"%s\": %zu blocks, expected 1 to %d", c->path, key,
                       json_array_size(v), cap);
    } else {
        o->num_blocks = (int)json_array_size(v);
        for (int i = 0; i < o->num_blocks; i++) {
            const json_t *e = json_array_get(v, (size_t)i);
            if (!json_is_integer(e) || json_integer_value(e) < 1 ||
                json_integer_value(e) > DIM_MAX)
                return err_set(ERR_RANGE, "%s: key \"%s\": element %d is not a channel count",
                               c->path, key, i);
            o->block_out_channels[i] = (int)json_integer_value(e);
        }
    }
    for (int i = 0; i < o->num_blocks; i++)
        if (o->block_out_channels[i] % o->norm_num_groups != 0)
            return err_set(ERR_RANGE,
                           "%s: key \"%s\": %d channels do not divide into norm_num_groups %d",
                           c->path, key, o->block_out_channels[i], o->norm_num_groups);

    /* The decoder is UpDecoderBlock2D throughout; other block types are other models. */
    key = "up_block_types";
    v = json_object_get(c->root, key);
    if (!v)
        return o->num_blocks == 1 ? 0
                                  : err_set(ERR_RANGE, "%s: key \"%s\" is absent (one block) but "
                                                       "block_out_channels has %d",
                                            c->path, key, o->num_blocks);
    if (!json_is_array(v))
        return wrong_type(c, key, "an array", v);
    if (json_array_size(v) != (size_t)o->num_blocks)
        return err_set(ERR_RANGE, "%s: key \"%s\": %zu blocks but block_out_channels has %d",
                       c->path, key, json_array_size(v), o->num_blocks);
    for (int i = 0; i < o->num_blocks; i++) {
        const char *t = json_string_value(json_array_get(v, (size_t)i));
        if (!t || strcmp(t, "UpDecoderBlock2D") != 0)
            return err_set(ERR_RANGE, "%s: key \"%s\": element %d is not \"UpDecoderBlock2D\"",
                           c->path, key, i);
    }
    return 0;
}

static int load_vae(const char *dir, vae_config *o)
{
    cfg c;
    const char *act = NULL;
    int rc = cfg_load(dir, "vae/config.json", &c);
    if (!rc)
        rc = get_int(&c, "in_channels", 3, 1, DIM_MAX, &o->in_channels);
    if (!rc)
        rc = get_int(&c, "out_channels", 3, 1, DIM_MAX, &o->out_channels);
    if (!rc)
        rc = get_int(&c, "latent_channels", 4, 1, DIM_MAX, &o->latent_channels);
    if (!rc)
        rc = get_int(&c, "layers_per_block", 1, 1, COUNT_MAX, &o->layers_per_block);
    if (!rc)
        rc = get_int(&c, "norm_num_groups", 32, 1, DIM_MAX, &o->norm_num_groups);
    if (!rc)
        rc = load_vae_blocks(&c, o);
    if (!rc)
        rc = get_float(&c, "scaling_factor", 0.18215, 1e-30, 1e30, &o->scaling_factor);
    if (!rc) {
        if (json_is_null(json_object_get(c.root, "shift_factor")))
            o->shift_factor = 0.0f;
        else
            rc = get_float(&c, "shift_factor", 0.0, -1e30, 1e30, &o->shift_factor);
    }
    if (!rc)
        rc = get_bool(&c, "use_post_quant_conv", true, &o->use_post_quant_conv);
    if (!rc)
        rc = get_bool(&c, "mid_block_add_attention", true, &o->mid_block_add_attention);
    if (!rc)
        rc = get_str(&c, "act_fn", "silu", &act);
    if (!rc && strcmp(act, "silu") != 0)
        rc = err_set(ERR_RANGE, "%s: key \"act_fn\": \"%s\" is not supported (\"silu\")", c.path,
                     act);
    cfg_free(&c);
    return rc;
}

/* FlowMatchEulerDiscreteScheduler's Optional[...] values: null is allowed where the value goes
 * unused (without dynamic shifting) and is kept as NAN or -1 so that a use would show. */
static int get_double_opt(const cfg *c, const char *key, double def, bool needed, double *out)
{
    if (!json_is_null(json_object_get(c->root, key)))
        return get_double(c, key, def, -1e30, 1e30, out);
    *out = NAN;
    return needed ? err_set(ERR_RANGE, "%s: key \"%s\" is null but use_dynamic_shifting needs it",
                            c->path, key)
                  : 0;
}

static int get_int_opt(const cfg *c, const char *key, int def, bool needed, int *out)
{
    if (!json_is_null(json_object_get(c->root, key)))
        return get_int(c, key, def, 1, 1 << 30, out);
    *out = -1;
    return needed ? err_set(ERR_RANGE, "%s: key \"%s\" is null but use_dynamic_shifting needs it",
                            c->path, key)
                  : 0;
}

static int load_scheduler(const char *dir, scheduler_config *o)
{
    cfg c;
    int rc = cfg_load(dir, "scheduler/scheduler_config.json", &c);
    if (!rc)
        rc = get_int(&c, "num_train_timesteps", 1000, 1, 1 << 24, &o->num_train_timesteps);
    if (!rc)
        rc = get_double(&c, "shift", 1.0, 1e-30, 1e30, &o->shift);
    if (!rc)
        rc = get_bool(&c, "use_dynamic_shifting", false, &o->use_dynamic_shifting);
    bool dyn = o->use_dynamic_shifting;
    if (!rc)
        rc = get_double_opt(&c, "base_shift", 0.5, dyn, &o->base_shift);
    if (!rc)
        rc = get_double_opt(&c, "max_shift", 1.15, dyn, &o->max_shift);
    if (!rc)
        rc = get_int_opt(&c, "base_image_seq_len", 256, dyn, &o->base_image_seq_len);
    if (!rc)
        rc = get_int_opt(&c, "max_image_seq_len", 4096, dyn, &o->max_image_seq_len);
    /* mu interpolates between the two lengths, dividing by their difference */
    if (!rc && dyn && o->max_image_seq_len == o->base_image_seq_len)
        rc = err_set(ERR_RANGE, "%s: key \"max_image_seq_len\" equals base_image_seq_len %d",
                     c.path, o->base_image_seq_len);
    cfg_free(&c);
    return rc;
}

/* A model_index.json component ["library", "Class"]; [null, null] (or absent) when the
 * pipeline was saved without it. */
static int component(const cfg *c, const char *key, const char *const *classes, bool required,
                     bool *present)
{
    const json_t *v = json_object_get(c->root, key);
    *present = false;
    if (v && !json_is_array(v))
        return wrong_type(c, key, "an array [library, class]", v);
    if (v && json_array_size(v) != 2)
        return err_set(ERR_FORMAT, "%s: key \"%s\": expected [library, class], found %zu elements",
                       c->path, key, json_array_size(v));
    const json_t *lib = v ? json_array_get(v, 0) : NULL, *cls = v ? json_array_get(v, 1) : NULL;
    if (!v || (json_is_null(lib) && json_is_null(cls))) {
        if (required)
            return err_set(ERR_MISSING, "%s: key \"%s\": the component is %s", c->path, key,
                           v ? "null" : "missing");
        return 0;
    }
    if (!json_is_string(lib) || !json_is_string(cls))
        return err_set(ERR_FORMAT, "%s: key \"%s\": expected [library, class] strings", c->path,
                       key);
    for (int i = 0; classes[i]; i++) {
        if (strcmp(json_string_value(cls), classes[i]) == 0) {
            *present = true;
            return 0;
        }
    }
    return err_set(ERR_RANGE, "%s: key \"%s\": class %s is not supported (expected %s)", c->path,
                   key, json_string_value(cls), classes[0]);
}

static int load_index(const char *dir, bool *has_t5)
{
    static const char *const sched[] = {"FlowMatchEulerDiscreteScheduler", NULL};
    static const char *const clip[] = {"CLIPTextModelWithProjection", NULL};
    static const char *const clip_tok[] = {"CLIPTokenizer", "CLIPTokenizerFast", NULL};
    static const char *const t5[] = {"T5EncoderModel", NULL};
    static const char *const t5_tok[] = {"T5TokenizerFast", "T5Tokenizer", NULL};
    static const char *const mmdit[] = {"SD3Transformer2DModel", NULL};
    static const char *const vae[] = {"AutoencoderKL", NULL};
    static const struct {
        const char *key;
        const char *const *classes;
    } required[] = {
        {"scheduler", sched},   {"text_encoder", clip},   {"text_encoder_2", clip},
        {"tokenizer", clip_tok}, {"tokenizer_2", clip_tok}, {"transformer", mmdit},
        {"vae", vae},
    };
    cfg c;
    int rc = cfg_load(dir, "model_index.json", &c);
    const char *cls = NULL;
    if (!rc)
        rc = get_str(&c, "_class_name", NULL, &cls);
    if (!rc && !cls)
        rc = err_set(ERR_MISSING, "%s: key \"_class_name\" is missing", c.path);
    if (!rc && strcmp(cls, "StableDiffusion3Pipeline") != 0)
        rc = err_set(ERR_RANGE,
                     "%s: key \"_class_name\": %s is not an SD3 pipeline "
                     "(StableDiffusion3Pipeline)",
                     c.path, cls);
    bool present, tok3 = false;
    for (size_t i = 0; i < sizeof required / sizeof required[0] && !rc; i++)
        rc = component(&c, required[i].key, required[i].classes, true, &present);
    if (!rc)
        rc = component(&c, "text_encoder_3", t5, false, has_t5);
    if (!rc)
        rc = component(&c, "tokenizer_3", t5_tok, false, &tok3);
    if (!rc && *has_t5 && !tok3)
        rc = err_set(ERR_MISSING, "%s: key \"tokenizer_3\": text_encoder_3 is present without it",
                     c.path);
    cfg_free(&c);
    return rc;
}

int model_config_load(const char *spec, model_config **out)
{
    *out = NULL;
    char *path;
    int rc = model_dir_resolve(spec, &path);
    if (rc)
        return rc;
    model_config *m = xcalloc(1, sizeof *m);
    m->path = path;
    rc = load_index(path, &m->has_t5);
    if (!rc)
        rc = load_clip(path, "text_encoder", &m->clip_l);
    if (!rc)
        rc = load_clip(path, "text_encoder_2", &m->clip_g);
    if (!rc && m->has_t5)
        rc = load_t5(path, &m->t5);
    if (!rc)
        rc = load_mmdit(path, &m->mmdit);
    if (!rc)
        rc = load_vae(path, &m->vae);
    if (!rc)
        rc = load_scheduler(path, &m->scheduler);
    if (rc) {
        model_config_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void model_config_free(model_config *m)
{
    if (!m)
        return;
    free(m->path);
    free(m);
}
