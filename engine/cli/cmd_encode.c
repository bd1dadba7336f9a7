/* focus-run encode: runs StableDiffusion3Pipeline.encode_prompt on one prompt and writes its four
 * outputs as float32 .npy files named like the pipeline's variables, for comparison with the
 * reference. Like the pipeline with guidance on (its default), the negative prompt is always
 * encoded, as "" when none is given; --no-cfg leaves it out. */
#include "engine/cli/cli_common.h"

#include "common/err.h"
#include "engine/model_config.h"
#include "engine/npy.h"
#include "engine/text_encode.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_IMAGES 64

static const cli_opt encode_opts[] = {
    {"model", "MODEL", "model directory, or ORG/NAME in the Hugging Face cache, optionally as NAME=MODEL (required)", 0, false},
    {"prompt", "TEXT", "the prompt (required; may be empty)", 0, false},
    {"negative", "TEXT", "the negative prompt (default: \"\", which is encoded too)", 0, false},
    {"no-cfg", NULL, "no classifier-free guidance: skip the negative prompt (default: off)", 0, false},
    {"max-seq", "N", "T5 max_sequence_length, 1..512 (default 256)", 0, false},
    {"images", "N", "num_images_per_prompt: batch copies of each embedding, 1..64 (default 1)", 0, false},
    {"dump", "DIR", "directory for the .npy outputs, created if absent (required)", 0, false},
    {"device", "DEV", "cpu, cuda or cuda:N (default cpu)", 0, false},
    {NULL, NULL, NULL, 0, false},
};

/* Writes t ([B, ...] float) as DIR/NAME.npy. */
static int dump_tensor(kn_ctx *ctx, const char *dir, const char *name, const kn_tensor *t)
{
    float *host = malloc((size_t)kn_numel(t) * sizeof *host);
    if (!host) return err_set(ERR_NOMEM, "%s: out of memory", name);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    int rc = kn_read_f32(ctx, t, host);
    if (rc == 0) rc = npy_write_f32(path, host, t->ndim, t->shape);
    free(host);
    if (rc == 0) {
        char shape[96];
        printf("%s %s\n", path, kn_shape_str(t, shape, sizeof shape));
    }
    return rc;
}

/* Encodes one text and writes its two outputs, repeated `images` times along the batch. */
static int encode_one(text_encoder *te, kn_ctx *ctx, const char *text, int max_seq, int images,
                      const char *dir, const char *seq_name, const char *pooled_name)
{
    kn_tensor seq, pooled, seq_b = {0}, pooled_b = {0};
    int rc = text_encode(te, text, max_seq, &seq, &pooled);
    if (rc < 0) return rc;
    const kn_tensor *seq_part = &seq, *pooled_part = &pooled;
    if ((rc = text_embeds_stack(ctx, &seq_b, &seq_part, 1, images)) == 0 &&
        (rc = text_embeds_stack(ctx, &pooled_b, &pooled_part, 1, images)) == 0 &&
        (rc = dump_tensor(ctx, dir, seq_name, &seq_b)) == 0)
        rc = dump_tensor(ctx, dir, pooled_name, &pooled_b);
    kn_free(ctx, &seq);
    kn_free(ctx, &pooled);
    kn_free(ctx, &seq_b);
    kn_free(ctx, &pooled_b);
    return rc;
}

static int encode_run(const cli_args *a)
{
    const char *model = cli_model(a);
    const char *dump = model ? cli_required(a, "dump") : NULL;
    if (!dump) return CLI_EXIT_USAGE;
    const char *prompt = cli_str(a, "prompt", NULL);
    if (!prompt) return cli_usage_error(a, "--prompt is required");
    const char *negative = cli_str(a, "negative", "");
    bool cfg_on = !cli_flag(a, "no-cfg");
    if (!cfg_on && cli_str(a, "negative", NULL))
        return cli_usage_error(a, "--negative and --no-cfg exclude each other");
    int max_seq, images, rc;
    if ((rc = cli_int(a, "max-seq", TEXT_MAX_SEQ_DEFAULT, 1, TEXT_MAX_SEQ_LIMIT, &max_seq)) ||
        (rc = cli_int(a, "images", 1, 1, MAX_IMAGES, &images)))
        return rc;
    if (mkdir(dump, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "focus-run encode: %s: cannot create: %s\n", dump, strerror(errno));
        return CLI_EXIT_FAIL;
    }

    model_config *cfg;
    if (model_config_load(model, &cfg) < 0) return cli_fail(a, "loading the model configuration");
    kn_ctx *ctx;
    if ((rc = cli_open_device(a, &ctx)) != 0) {
        model_config_free(cfg);
        return rc;
    }
    text_encoder *te;
    double t0 = cli_now();
    if (text_encoder_load(ctx, cfg, &te) < 0) {
        rc = cli_fail(a, "loading the text encoders");
    } else {
        double t1 = cli_now();
        if (encode_one(te, ctx, prompt, max_seq, images, dump, "prompt_embeds",
                       "pooled") < 0)
            rc = cli_fail(a, "prompt");
        else if (cfg_on &&
                 encode_one(te, ctx, negative, max_seq, images, dump, "negative_prompt_embeds",
                            "negative_pooled") < 0)
            rc = cli_fail(a, "negative prompt");
        else if (kn_sync(ctx) < 0)
            rc = cli_fail(a, "device");
        else
            fprintf(stderr, "load %.1f ms, encode %.1f ms (%d text%s)\n", (t1 - t0) * 1e3,
                    (cli_now() - t1) * 1e3, cfg_on ? 2 : 1, cfg_on ? "s" : "");
        text_encoder_free(te);
    }
    kn_ctx_destroy(ctx);
    model_config_free(cfg);
    return rc;
}

const cli_cmd cli_cmd_encode = {
    .name = "encode",
    .usage = "--model MODEL --prompt TEXT --dump DIR [OPTIONS]",
    .summary = "encode a prompt as StableDiffusion3Pipeline.encode_prompt does; write .npy files",
    .details =
        "Writes float32 .npy files into the --dump directory and prints each path and shape:\n"
        "  prompt_embeds.npy                  [N, 77 + max_seq, D]  (77 + 77 without T5)\n"
        "  pooled.npy                         [N, P_L + P_G]\n"
        "  negative_prompt_embeds.npy         the same for the negative prompt,\n"
        "  negative_pooled.npy                unless --no-cfg\n"
        "N is --images. D is the T5 width (the transformer's joint_attention_dim without T5).\n"
        "The pipeline encodes the negative prompt whenever guidance is on (guidance_scale > 1,\n"
        "its default), as \"\" when none is given, so this command does too. The load and\n"
        "encode times go to stderr.",
    .opts = encode_opts,
    .min_pos = 0,
    .max_pos = 0,
    .run = encode_run,
};
