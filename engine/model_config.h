/* A diffusers-layout SD3 pipeline directory: model_index.json and each component's config,
 * read and checked, never assumed. Weights are opened separately by each component's loader
 * (st_archive_open on `path/<component>`). */
#ifndef FOCUS_ENGINE_MODEL_CONFIG_H
#define FOCUS_ENGINE_MODEL_CONFIG_H

#include <stdbool.h>

typedef enum act_kind_cfg { CFG_ACT_QUICK_GELU, CFG_ACT_GELU, CFG_ACT_GELU_TANH, CFG_ACT_SILU } act_kind_cfg;

typedef struct clip_config { /* text_encoder/, text_encoder_2/ config.json */
    int hidden_size, intermediate_size, num_hidden_layers, num_attention_heads;
    int max_position_embeddings, vocab_size, projection_dim, eos_token_id;
    float layer_norm_eps;
    act_kind_cfg hidden_act; /* "quick_gelu" or "gelu" */
} clip_config;

typedef struct t5_config { /* text_encoder_3/ config.json */
    int d_model, d_kv, d_ff, num_layers, num_heads, vocab_size;
    int relative_attention_num_buckets, relative_attention_max_distance;
    float layer_norm_epsilon;
    act_kind_cfg dense_act; /* from feed_forward_proj / dense_act_fn: gelu_new -> GELU_TANH */
    bool is_gated_act;
} t5_config;

typedef struct mmdit_config { /* transformer/ config.json */
    int sample_size, patch_size, in_channels, out_channels, num_layers;
    int attention_head_dim, num_attention_heads, joint_attention_dim;
    int caption_projection_dim, pooled_projection_dim, pos_embed_max_size;
    int dual_attention_layers[64], num_dual_attention_layers; /* distinct, in file order */
    bool qk_norm_rms; /* qk_norm == "rms_norm" */
} mmdit_config;

typedef struct vae_config { /* vae/ config.json */
    int in_channels, out_channels, latent_channels, layers_per_block, norm_num_groups;
    int block_out_channels[8], num_blocks;
    float scaling_factor, shift_factor; /* shift_factor 0 when null */
    bool use_post_quant_conv, mid_block_add_attention;
} vae_config;

typedef struct scheduler_config { /* scheduler/ scheduler_config.json */
    int num_train_timesteps;
    double shift; /* double: Python floats, as diffusers computes with them */
    bool use_dynamic_shifting;
    /* NAN / -1 where the file has null, which it may only without dynamic shifting */
    double base_shift, max_shift;
    int base_image_seq_len, max_image_seq_len;
} scheduler_config;

typedef struct model_config {
    char *path; /* the directory: the path given, or the Hugging Face cache snapshot it names */
    clip_config clip_l, clip_g;
    t5_config t5;
    bool has_t5; /* text_encoder_3 may be null in model_index.json: T5 embeddings are zeros */
    mmdit_config mmdit;
    vae_config vae;
    scheduler_config scheduler;
} model_config;

/* Reads model_index.json and every component config (text_encoder_3/ only when model_index.json
 * lists it) of the pipeline `spec` names: a directory, or a Hugging Face repository id in the
 * local hub cache (model_dir_resolve). Absent keys take the reference constructors' defaults.
 * Errors name the file and key: ERR_MISSING for an absent file or required key, ERR_FORMAT for
 * malformed JSON or a wrong type, ERR_RANGE for a value the reference or the engine cannot use. */
int model_config_load(const char *spec, model_config **out);
void model_config_free(model_config *m);

#endif
