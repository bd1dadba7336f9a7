/* Subjects of a controlled request (engine/focus_subjects.c) with the published SD3.5
 * tokenizers: phrases to the positions the reference's datasets list for the same prompts
 * (ericbill21/FOCUS datasets/two_objects.yaml and three_objects.yaml, labelled by hand on
 * these tokenizers), explicit positions, and every error a request can provoke. */
#include "engine/focus_subjects.h"

#include "check.h"
#include "common/err.h"

#include <stdio.h>
#include <string.h>

static text_tokenizers tok;

static int load(void)
{
    char dir[512];
    const char *names[3] = {"tokenizer", "tokenizer_2", "tokenizer_3"};
    int rc = 0;
    for (int i = 0; i < 3 && rc == 0; i++) {
        snprintf(dir, sizeof dir, "%s/tiny-sd35-real/%s", fixtures_dir(), names[i]);
        rc = i == 0   ? clip_tokenizer_load(dir, &tok.clip_l)
             : i == 1 ? clip_tokenizer_load(dir, &tok.clip_g)
                      : t5_tokenizer_load(dir, &tok.t5);
    }
    return rc;
}

/* One prompt and its subjects' positions as "t5=..;clip=.." per subject. */
typedef struct labelled {
    const char *prompt;
    const char *phrases[3];
    const char *positions[3];
} labelled;

static const labelled cases[] = {
    {"A horse and a bear in a forest", {"horse", "bear"}, {"t5=1;clip=2", "t5=5;clip=5"}},
    {"A dolphin and a whale breaching near each other in the ocean",
     {"dolphin", "whale"},
     {"t5=1;clip=2", "t5=5;clip=5"}},
    {"A sheep and a goat grazing in a misty pasture",
     {"sheep", "goat"},
     {"t5=1;clip=2", "t5=5;clip=5"}},
    {"A maple leaf and an oak leaf lying on a forest floor covered in moss",
     {"maple leaf", "oak leaf"},
     {"t5=1,2;clip=2,3", "t5=5,6;clip=6,7"}},
    {"A street bike and a dirt bike leaning against a garage wall",
     {"street bike", "dirt bike"},
     {"t5=1,2;clip=2,3", "t5=6,7;clip=6,7"}},
    {"A sailboat and a yacht anchored in a calm harbor at sunset",
     {"sailboat", "yacht"},
     {"t5=1,2;clip=2,3", "t5=6;clip=6"}},
    {"A sunflower, a daisy, and a black-eyed Susan growing in a wildflower field",
     {"sunflower", "daisy", "black-eyed Susan"},
     /* The dataset lists daisy as t5 [5, 6]: its pieces are ▁da, is, y (5, 6, 7), and every
      * piece belongs to the subject. */
     {"t5=1;clip=2", "t5=5,6,7;clip=5", "t5=12,13,14,15,16;clip=9,10,11,12"}},
    {"A Labrador, a Golden Retriever, and a German Shepherd playing in a backyard",
     {"Labrador", "Golden Retriever", "German Shepherd"},
     {"t5=1,2,3;clip=2", "t5=7,8,9;clip=5,6", "t5=14,15;clip=10,11"}},
};

static void expect_groups(const focus_groups *g, const char *const *positions, int n, int clip_len)
{
    focus_subject want[3];
    focus_groups w;
    for (int k = 0; k < n; k++)
        CHECK(focus_positions_parse(positions[k], &want[k]) == 0);
    CHECK(focus_subjects_resolve(&tok, "", 77, want, n, &w) == 0);
    CHECK(g->n_subjects == n && g->n_tok == w.n_tok);
    CHECK(!memcmp(g->first, w.first, sizeof w.first) && !memcmp(g->tok, w.tok, sizeof w.tok));
    CHECK(w.tok[0] == clip_len + want[0].t5[0]); /* T5 first, offset by the CLIP rows */
}

static void test_phrases_match_the_datasets(void)
{
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        focus_subject s[3] = {0};
        int n = 0;
        while (n < 3 && cases[c].phrases[n])
            s[n].phrase = cases[c].phrases[n], n++;
        focus_groups g;
        int rc = focus_subjects_resolve(&tok, cases[c].prompt, 77, s, n, &g);
        CHECKF(rc == 0, "%s: %s", cases[c].prompt, err_msg());
        if (rc == 0) expect_groups(&g, cases[c].positions, n, 77);
    }
}

static void test_phrase_rules(void)
{
    focus_groups g;
    focus_subject s[2] = {{.phrase = "HORSE"}, {.phrase = "bear"}};
    CHECK(focus_subjects_resolve(&tok, "A horse and a bear", 77, s, 2, &g) == 0);
    CHECK(g.tok[0] == 77 + 1 && g.tok[1] == 2); /* case folded when no exact match */
    s[0].phrase = "hors";                       /* not at a word boundary */
    CHECK(focus_subjects_resolve(&tok, "A horse and a bear", 77, s, 2, &g) == ERR_INVALID);
    CHECK(strstr(err_msg(), "'hors'") != NULL && g.n_subjects == 0);
    s[0].phrase = "a bear"; /* overlaps the second subject */
    CHECK(focus_subjects_resolve(&tok, "A horse and a bear", 77, s, 2, &g) == ERR_INVALID);
    CHECK(strstr(err_msg(), "share") != NULL);
    /* A phrase past the T5 tokens read: max_sequence_length 4 keeps "A horse and". */
    s[0].phrase = "horse";
    CHECK(focus_subjects_resolve(&tok, "A horse and a bear", 4, s, 2, &g) == ERR_RANGE);
    CHECK(strstr(err_msg(), "T5") != NULL);
}

static void test_positions(void)
{
    focus_subject s;
    CHECK(focus_positions_parse("t5=1, 2,3; clip=2,3", &s) == 0);
    CHECK(s.n_t5 == 3 && s.t5[2] == 3 && s.n_clip == 2 && s.clip[1] == 3);
    CHECK(focus_positions_parse("clip=4", &s) == 0 && s.n_t5 == 0 && s.n_clip == 1);
    const char *bad[] = {"", "t5=", "t5=1;t5=2", "t5=-1", "t5=1 2", "vae=3", "t5=x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECKF(focus_positions_parse(bad[i], &s) == ERR_INVALID, "'%s'", bad[i]);

    focus_groups g;
    focus_subject two[2];
    focus_positions_parse("t5=1;clip=2", &two[0]);
    focus_positions_parse("t5=76;clip=77", &two[1]);
    CHECK(focus_subjects_resolve(&tok, "x", 77, two, 2, &g) == ERR_RANGE);
    focus_positions_parse("t5=5;clip=2", &two[1]);
    CHECK(focus_subjects_resolve(&tok, "x", 77, two, 2, &g) == ERR_INVALID); /* clip 2 twice */
    focus_positions_parse("t5=5,5", &two[1]);
    CHECK(focus_subjects_resolve(&tok, "x", 77, two, 2, &g) == ERR_INVALID);
    CHECK(strstr(err_msg(), "twice") != NULL);
    focus_subject nine[9];
    CHECK(focus_subjects_resolve(&tok, "x", 77, nine, 9, &g) == ERR_RANGE);
}

int main(void)
{
    if (load() < 0) {
        fprintf(stderr, "tokenizers: %s\n", err_msg());
        return 1;
    }
    RUN(test_phrases_match_the_datasets);
    RUN(test_phrase_rules);
    RUN(test_positions);
    text_tokenizers_free(&tok);
    CHECK_DONE();
}
