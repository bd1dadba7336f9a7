/* focus-run tokenize: prints the ids the pipeline's three tokenizers give one text, exactly as
 * encode_prompt pads and truncates them. Loads the tokenizers only, no weights. */
#include "engine/cli/cli_common.h"

#include "engine/model_config.h"
#include "engine/text_encode.h"

#include <stdio.h>

static const cli_opt tokenize_opts[] = {
    {"model", "MODEL", "model directory, or ORG/NAME in the Hugging Face cache, optionally as NAME=MODEL (required)", 0, false},
    {"max-seq", "N", "T5 max_sequence_length, 1..512 (default 256)", 0, false},
    {NULL, NULL, NULL, 0, false},
};

static void print_ids(const char *label, const int32_t *ids, int n)
{
    printf("%s:", label);
    for (int i = 0; i < n; i++)
        printf(" %d", (int)ids[i]);
    putchar('\n');
}

static int tokenize_run(const cli_args *a)
{
    const char *model = cli_model(a);
    if (!model) return CLI_EXIT_USAGE;
    int max_seq;
    int rc = cli_int(a, "max-seq", TEXT_MAX_SEQ_DEFAULT, 1, TEXT_MAX_SEQ_LIMIT, &max_seq);
    if (rc) return rc;
    model_config *cfg;
    if (model_config_load(model, &cfg) < 0) return cli_fail(a, "loading the model configuration");
    text_tokenizers tok;
    if (text_tokenizers_load(cfg, &tok) < 0) {
        model_config_free(cfg);
        return cli_fail(a, "loading the tokenizers");
    }
    text_ids ids;
    rc = text_tokenize(&tok, a->pos[0], max_seq, &ids);
    if (rc < 0) {
        rc = cli_fail(a, "tokenizing");
    } else {
        print_ids("clip_l", ids.clip_l, ids.clip_len);
        print_ids("clip_g", ids.clip_g, ids.clip_len);
        if (ids.t5) print_ids("t5", ids.t5, ids.t5_len);
        text_ids_free(&ids);
        rc = fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;
    }
    text_tokenizers_free(&tok);
    model_config_free(cfg);
    return rc;
}

const cli_cmd cli_cmd_tokenize = {
    .name = "tokenize",
    .usage = "--model MODEL [--max-seq N] TEXT",
    .summary = "print the ids of the CLIP-L, CLIP-G and T5 tokenizers for TEXT",
    .details = "Prints one line per tokenizer, labelled 'clip_l:', 'clip_g:' and 't5:', each with\n"
               "the padded ids encode_prompt feeds its encoder (77 for CLIP, --max-seq for T5).\n"
               "The t5 line is absent when the model has no text_encoder_3. Use '--' before a\n"
               "TEXT that starts with '-'.",
    .opts = tokenize_opts,
    .min_pos = 1,
    .max_pos = 1,
    .run = tokenize_run,
};
