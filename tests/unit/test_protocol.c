/* Tests of the wire protocol library: round trips of every request, reply and event; the
 * validator and decoder on malformed, truncated, oversized, deeply nested and lying frames;
 * the error code and field of every kind of bad request; SHA-256 against FIPS 180-4 vectors. */
#include "protocol/proto.h"
#include "tests/unit/check.h"

#include <dirent.h>
#include <math.h>
#include <string.h>

/* ---- Helpers to build frames ---- */

struct frame {
    msgpack_sbuffer sb;
    msgpack_packer pk;
};

static void frame_begin(struct frame *f, uint32_t pairs)
{
    msgpack_sbuffer_init(&f->sb);
    msgpack_packer_init(&f->pk, &f->sb, msgpack_sbuffer_write);
    msgpack_pack_map(&f->pk, pairs);
}

static void put_str(struct frame *f, const char *s)
{
    msgpack_pack_str_with_body(&f->pk, s, strlen(s));
}

static void kv_str(struct frame *f, const char *k, const char *v)
{
    put_str(f, k);
    put_str(f, v);
}

static void kv_uint(struct frame *f, const char *k, uint64_t v)
{
    put_str(f, k);
    msgpack_pack_uint64(&f->pk, v);
}

/* A request's envelope: 3 pairs. */
static void frame_request(struct frame *f, uint32_t extra, const char *op)
{
    frame_begin(f, 3 + extra);
    kv_uint(f, "v", 1);
    kv_uint(f, "id", 7);
    kv_str(f, "op", op);
}

static int parse_frame(struct frame *f, struct proto_request *r, struct proto_error *e)
{
    int rc = proto_parse_request(f->sb.data, f->sb.size, r, e);
    msgpack_sbuffer_destroy(&f->sb);
    return rc;
}

static int expect_error(const void *buf, size_t len, enum proto_errcode code, const char *field)
{
    struct proto_request r;
    struct proto_error e;
    memset(&e, 0, sizeof e);
    int rc = proto_parse_request(buf, len, &r, &e);
    int good = rc != 0 && e.code == code && strcmp(e.field, field) == 0 && e.message[0];
    if (!good)
        fprintf(stderr, "  want %s/%s, got rc %d %s/%s: %s\n", proto_errcode_name(code), field,
                rc, proto_errcode_name(e.code), e.field, e.message);
    return good;
}

/* A submit whose field `name` has the value packed by fn. */
typedef void (*packfn)(msgpack_packer *pk);

static int submit_with(const char *name, packfn fn, enum proto_errcode code)
{
    struct frame f;
    frame_request(&f, 2, "submit");
    kv_str(&f, "prompt", "a cat");
    put_str(&f, name);
    fn(&f.pk);
    int ok = expect_error(f.sb.data, f.sb.size, code, name);
    msgpack_sbuffer_destroy(&f.sb);
    return ok;
}

/* ---- SHA-256 ---- */

static void hex(const uint8_t *d, char out[65])
{
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void test_sha256_vectors(void)
{
    uint8_t d[32];
    char h[65];
    proto_sha256("", 0, d);
    hex(d, h);
    CHECK(strcmp(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0);
    proto_sha256("abc", 3, d);
    hex(d, h);
    CHECK(strcmp(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    proto_sha256(m, strlen(m), d);
    hex(d, h);
    CHECK(strcmp(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0);
    size_t n = 1000000;
    char *a = malloc(n);
    memset(a, 'a', n);
    proto_sha256(a, n, d);
    free(a);
    hex(d, h);
    CHECK(strcmp(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0);
}

/* ---- Request round trips ---- */

static int roundtrip(const struct proto_request *in, struct proto_request *out)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    struct proto_error e;
    int rc = proto_encode_request(&sb, in);
    if (rc == 0)
        rc = proto_parse_request(sb.data, sb.size, out, &e);
    if (rc)
        fprintf(stderr, "  round trip of %s: %s\n", proto_op_name(in->op), e.message);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

/* Three subjects: a phrase, positions with a label, CLIP positions alone at the limits. */
static void fill_subjects(struct proto_subjects *s)
{
    memset(s, 0, sizeof *s);
    s->n = 3;
    strcpy(s->s[0].phrase, "a horse");
    strcpy(s->s[1].phrase, "bear");
    s->s[1].n_t5 = 1;
    s->s[1].t5[0] = PROTO_T5_POSITION_MAX;
    s->s[1].n_clip = 2;
    s->s[1].clip[0] = 5;
    s->s[1].clip[1] = 6;
    s->s[2].n_clip = PROTO_SUBJECT_POSITIONS_MAX;
    for (int i = 0; i < PROTO_SUBJECT_POSITIONS_MAX; i++)
        s->s[2].clip[i] = (uint8_t)(PROTO_CLIP_POSITION_MAX - i);
}

static void test_request_roundtrip_submit(void)
{
    struct proto_request r, o;
    proto_request_init(&r, PROTO_OP_SUBMIT);
    r.id.kind = PROTO_ID_STR;
    strcpy(r.id.s, "req-1");
    struct proto_submit *s = &r.u.submit;
    strcpy(s->prompt, "a photo of a cat, ünïcode ✓");
    strcpy(s->negative_prompt, "blurry");
    strcpy(s->model, "focus");
    s->seed = UINT64_MAX;
    s->steps = 200;
    s->guidance = 7.25;
    s->width = 2048;
    s->height = 64;
    s->max_seq = 512;
    s->count = 8;
    s->priority = -10;
    fill_subjects(&s->subjects);
    s->focus_lambda = 4.5;
    s->focus_heuristic = PROTO_HEURISTIC_DIVIDE_AND_BIND;
    s->watch = true;
    s->set = PROTO_SUBMIT_ALL;
    CHECK(roundtrip(&r, &o) == 0);
    CHECK(o.op == PROTO_OP_SUBMIT && o.id.kind == PROTO_ID_STR && strcmp(o.id.s, "req-1") == 0);
    CHECK(memcmp(&o.u.submit, s, sizeof *s) == 0);

    /* Only the prompt: every other field unset and at its default. */
    proto_request_init(&r, PROTO_OP_SUBMIT);
    r.id.kind = PROTO_ID_UINT;
    r.id.u = 12345678901234ull;
    strcpy(r.u.submit.prompt, "");
    CHECK(roundtrip(&r, &o) == 0);
    CHECK(o.id.kind == PROTO_ID_UINT && o.id.u == 12345678901234ull);
    CHECK(o.u.submit.set == 0 && o.u.submit.steps == PROTO_DEFAULT_STEPS &&
          o.u.submit.guidance == PROTO_DEFAULT_GUIDANCE && o.u.submit.width == 512 &&
          o.u.submit.max_seq == 77 && o.u.submit.count == 1 && !o.u.submit.watch);
}

static void test_request_roundtrip_others(void)
{
    struct proto_request r, o;
    for (int op = 0; op < PROTO_OP_COUNT; op++) {
        if (op == PROTO_OP_SUBMIT)
            continue;
        proto_request_init(&r, (enum proto_op)op);
        r.id.kind = PROTO_ID_UINT;
        r.id.u = (uint64_t)op;
        switch (op) {
        case PROTO_OP_HELLO: strcpy(r.u.hello.client, "focus/0.1"); break;
        case PROTO_OP_WATCH:
        case PROTO_OP_CANCEL:
        case PROTO_OP_JOB: strcpy(r.u.job.job, "j-42"); break;
        case PROTO_OP_JOBS:
            r.u.jobs.has_state = true;
            r.u.jobs.state = PROTO_STATE_RUNNING;
            r.u.jobs.limit = 1000;
            break;
        case PROTO_OP_FETCH:
            strcpy(r.u.fetch.job, "j-43");
            r.u.fetch.index = 7;
            break;
        default: break;
        }
        CHECKF(roundtrip(&r, &o) == 0, "%s", proto_op_name((enum proto_op)op));
        CHECKF(o.op == (enum proto_op)op && o.id.u == (uint64_t)op && memcmp(&o.u, &r.u, sizeof r.u) == 0,
               "%s", proto_op_name((enum proto_op)op));
    }
    /* hello without a client, jobs without a state: the defaults. */
    proto_request_init(&r, PROTO_OP_JOBS);
    r.id.kind = PROTO_ID_UINT;
    struct frame f;
    frame_request(&f, 0, "jobs");
    CHECK(parse_frame(&f, &o, NULL) == 0 && !o.u.jobs.has_state && o.u.jobs.limit == 100);
    frame_request(&f, 0, "hello");
    CHECK(parse_frame(&f, &o, NULL) == 0 && o.op == PROTO_OP_HELLO && o.u.hello.client[0] == 0);
    frame_request(&f, 1, "fetch");
    kv_str(&f, "job", "x");
    CHECK(parse_frame(&f, &o, NULL) == 0 && o.u.fetch.index == 0);
}

/* The exact bytes of a request, as the page's EXAMPLES show them. */
static void test_request_bytes(void)
{
    struct proto_request r;
    proto_request_init(&r, PROTO_OP_PING);
    r.id.kind = PROTO_ID_UINT;
    r.id.u = 1;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    CHECK(proto_encode_request(&sb, &r) == 0);
    static const uint8_t want[] = {0x83, 0xa1, 'v', 0x01, 0xa2, 'i', 'd', 0x01,
                                   0xa2, 'o', 'p', 0xa4, 'p', 'i', 'n', 'g'};
    CHECK(sb.size == sizeof want && memcmp(sb.data, want, sizeof want) == 0);
    msgpack_sbuffer_destroy(&sb);
}

/* ---- Request errors ---- */

static void test_malformed_frames(void)
{
    static const uint8_t never[] = {0xc1};
    CHECK(expect_error(never, 1, PROTO_E_BAD_MESSAGE, ""));
    CHECK(expect_error("", 0, PROTO_E_BAD_MESSAGE, ""));
    static const uint8_t array[] = {0x91, 0x01};
    CHECK(expect_error(array, sizeof array, PROTO_E_BAD_MESSAGE, ""));
    static const uint8_t intkey[] = {0x81, 0x01, 0x01};
    CHECK(expect_error(intkey, sizeof intkey, PROTO_E_BAD_MESSAGE, ""));
    static const uint8_t ext[] = {0x81, 0xa1, 'x', 0xd4, 0x01, 0x00};
    CHECK(expect_error(ext, sizeof ext, PROTO_E_BAD_MESSAGE, ""));
    static const uint8_t badutf8[] = {0x81, 0xa1, 'x', 0xa2, 0xc3, 0x28};
    CHECK(expect_error(badutf8, sizeof badutf8, PROTO_E_BAD_MESSAGE, ""));
    static const uint8_t two[] = {0x80, 0x80};
    CHECK(expect_error(two, sizeof two, PROTO_E_BAD_MESSAGE, ""));
    /* A map that declares 2^32-1 entries, and arrays of 2^32-1 inside a small map. */
    static const uint8_t huge_map[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'v', 0x01};
    CHECK(expect_error(huge_map, sizeof huge_map, PROTO_E_BAD_MESSAGE, ""));
    static const uint8_t huge_arr[] = {0x81, 0xa1, 'x', 0xdd, 0x00, 0x00, 0x00, 0x20, 0x01};
    CHECK(expect_error(huge_arr, sizeof huge_arr, PROTO_E_BAD_MESSAGE, ""));
    static const uint8_t huge_str[] = {0x81, 0xa1, 'x', 0xdb, 0x7f, 0xff, 0xff, 0xff, 'a'};
    CHECK(expect_error(huge_str, sizeof huge_str, PROTO_E_BAD_MESSAGE, ""));
    /* 64 entries are within the limit only while the bytes can hold them. */
    static const uint8_t lying[] = {0x81, 0xa1, 'x', 0xdc, 0x00, 0x40, 0x01, 0x01};
    CHECK(expect_error(lying, sizeof lying, PROTO_E_BAD_MESSAGE, ""));
}

static void test_truncated_at_every_byte(void)
{
    struct proto_request r;
    proto_request_init(&r, PROTO_OP_SUBMIT);
    r.id.kind = PROTO_ID_STR;
    strcpy(r.id.s, "t");
    strcpy(r.u.submit.prompt, "truncate me");
    r.u.submit.set = PROTO_SUBMIT_ALL;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    CHECK(proto_encode_request(&sb, &r) == 0);
    int bad = 0;
    for (size_t n = 0; n < sb.size; n++) {
        char *copy = malloc(n ? n : 1); /* exact size, so a read past it trips ASan */
        memcpy(copy, sb.data, n);
        bad += !expect_error(copy, n, PROTO_E_BAD_MESSAGE, "");
        free(copy);
    }
    CHECK(bad == 0);
    /* And with one byte of garbage after it. */
    msgpack_sbuffer_write(&sb, "\x00", 1);
    CHECK(expect_error(sb.data, sb.size, PROTO_E_BAD_MESSAGE, ""));
    msgpack_sbuffer_destroy(&sb);
}

static void test_oversized(void)
{
    size_t n = PROTO_MAX_REQUEST + 1;
    char *buf = calloc(1, n);
    buf[0] = (char)0x80;
    CHECK(expect_error(buf, n, PROTO_E_BAD_MESSAGE, ""));
    free(buf);
    /* A prompt over its limit is the prompt's fault; a string over the frame's is not. */
    char *big = malloc(3 * PROTO_MAX_PROMPT + 1);
    memset(big, 'p', 3 * PROTO_MAX_PROMPT);
    big[PROTO_MAX_PROMPT + 1] = 0;
    struct frame f;
    frame_request(&f, 1, "submit");
    kv_str(&f, "prompt", big);
    CHECK(expect_error(f.sb.data, f.sb.size, PROTO_E_BAD_FIELD, "prompt"));
    msgpack_sbuffer_destroy(&f.sb);
    big[PROTO_MAX_PROMPT] = 0;
    frame_request(&f, 1, "submit");
    kv_str(&f, "prompt", big);
    struct proto_request r;
    CHECK(parse_frame(&f, &r, NULL) == 0 && strlen(r.u.submit.prompt) == PROTO_MAX_PROMPT);
    memset(big, 'p', 3 * PROTO_MAX_PROMPT);
    big[3 * PROTO_MAX_PROMPT] = 0;
    frame_request(&f, 1, "submit");
    kv_str(&f, "prompt", big);
    CHECK(expect_error(f.sb.data, f.sb.size, PROTO_E_BAD_MESSAGE, ""));
    msgpack_sbuffer_destroy(&f.sb);
    free(big);
}

static void test_deep_nesting(void)
{
    /* 10000 nested arrays in 10 KB under an unknown key. */
    size_t depth = 10000;
    struct frame f;
    frame_request(&f, 1, "ping");
    put_str(&f, "x");
    for (size_t i = 0; i < depth; i++)
        msgpack_pack_array(&f.pk, 1);
    msgpack_pack_nil(&f.pk);
    CHECK(f.sb.size < 12000);
    CHECK(expect_error(f.sb.data, f.sb.size, PROTO_E_BAD_MESSAGE, ""));
    msgpack_sbuffer_destroy(&f.sb);
    /* Depth 4 (top map + 3) is allowed and the unknown field ignored; 5 is not. */
    for (int d = 3; d <= 4; d++) {
        frame_request(&f, 1, "ping");
        put_str(&f, "x");
        for (int i = 0; i < d; i++)
            msgpack_pack_array(&f.pk, 1);
        msgpack_pack_nil(&f.pk);
        struct proto_request r;
        struct proto_error e;
        int rc = proto_parse_request(f.sb.data, f.sb.size, &r, &e);
        CHECKF(d == 3 ? rc == 0 : rc != 0 && e.code == PROTO_E_BAD_MESSAGE, "depth %d", d + 1);
        msgpack_sbuffer_destroy(&f.sb);
    }
}

static void test_envelope_errors(void)
{
    struct frame f;
    struct proto_request r;
    struct proto_error e;
    /* Version 2, with the id still read for the reply. */
    frame_begin(&f, 3);
    kv_uint(&f, "v", 2);
    kv_str(&f, "id", "abc");
    kv_str(&f, "op", "ping");
    CHECK(parse_frame(&f, &r, &e) != 0 && e.code == PROTO_E_UNSUPPORTED_VERSION);
    CHECK(r.id.kind == PROTO_ID_STR && strcmp(r.id.s, "abc") == 0);
    frame_begin(&f, 2);
    kv_uint(&f, "id", 3);
    kv_str(&f, "op", "ping");
    CHECK(parse_frame(&f, &r, &e) != 0 && e.code == PROTO_E_BAD_FIELD &&
          strcmp(e.field, "v") == 0 && r.id.kind == PROTO_ID_UINT && r.id.u == 3);
    frame_begin(&f, 3);
    kv_str(&f, "v", "1");
    kv_uint(&f, "id", 3);
    kv_str(&f, "op", "ping");
    CHECK(parse_frame(&f, &r, &e) != 0 && e.code == PROTO_E_BAD_FIELD &&
          strcmp(e.field, "v") == 0);
    /* Ids: missing, float, negative, empty, too long. */
    frame_begin(&f, 2);
    kv_uint(&f, "v", 1);
    kv_str(&f, "op", "ping");
    CHECK(parse_frame(&f, &r, &e) != 0 && e.code == PROTO_E_BAD_FIELD &&
          strcmp(e.field, "id") == 0 && r.id.kind == PROTO_ID_NONE);
    frame_begin(&f, 3);
    kv_uint(&f, "v", 1);
    put_str(&f, "id");
    msgpack_pack_double(&f.pk, 1.5);
    kv_str(&f, "op", "ping");
    CHECK(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "id") == 0);
    frame_begin(&f, 3);
    kv_uint(&f, "v", 1);
    put_str(&f, "id");
    msgpack_pack_int64(&f.pk, -1);
    kv_str(&f, "op", "ping");
    CHECK(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "id") == 0);
    frame_begin(&f, 3);
    kv_uint(&f, "v", 1);
    kv_str(&f, "id", "");
    kv_str(&f, "op", "ping");
    CHECK(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "id") == 0);
    char longid[PROTO_MAX_ID + 2];
    memset(longid, 'i', sizeof longid - 1);
    longid[sizeof longid - 1] = 0;
    frame_begin(&f, 3);
    kv_uint(&f, "v", 1);
    kv_str(&f, "id", longid);
    kv_str(&f, "op", "ping");
    CHECK(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "id") == 0);
    longid[PROTO_MAX_ID] = 0;
    frame_begin(&f, 3);
    kv_uint(&f, "v", 1);
    kv_str(&f, "id", longid);
    kv_str(&f, "op", "ping");
    CHECK(parse_frame(&f, &r, &e) == 0 && strcmp(r.id.s, longid) == 0);
    /* Ops: unknown, missing, not a string; duplicated keys. */
    frame_request(&f, 0, "reboot");
    CHECK(parse_frame(&f, &r, &e) != 0 && e.code == PROTO_E_UNKNOWN_OP && r.id.u == 7);
    frame_begin(&f, 2);
    kv_uint(&f, "v", 1);
    kv_uint(&f, "id", 1);
    CHECK(parse_frame(&f, &r, &e) != 0 && e.code == PROTO_E_BAD_FIELD &&
          strcmp(e.field, "op") == 0);
    frame_begin(&f, 3);
    kv_uint(&f, "v", 1);
    kv_uint(&f, "id", 1);
    kv_uint(&f, "op", 1);
    CHECK(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "op") == 0);
    frame_request(&f, 1, "ping");
    kv_str(&f, "op", "ping");
    CHECK(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "op") == 0);
    frame_request(&f, 3, "submit");
    kv_str(&f, "prompt", "a");
    kv_uint(&f, "steps", 3);
    kv_uint(&f, "steps", 4);
    CHECK(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "steps") == 0);
}

static void pk_str(msgpack_packer *pk) { msgpack_pack_str_with_body(pk, "x", 1); }
static void pk_int(msgpack_packer *pk) { msgpack_pack_int(pk, 5); }
static void pk_neg(msgpack_packer *pk) { msgpack_pack_int(pk, -1); }
static void pk_true(msgpack_packer *pk) { msgpack_pack_true(pk); }
static void pk_nil(msgpack_packer *pk) { msgpack_pack_nil(pk); }
static void pk_float(msgpack_packer *pk) { msgpack_pack_double(pk, 64.0); }
static void pk_map(msgpack_packer *pk) { msgpack_pack_map(pk, 0); }
static void pk_zero(msgpack_packer *pk) { msgpack_pack_int(pk, 0); }
static void pk_201(msgpack_packer *pk) { msgpack_pack_int(pk, 201); }
static void pk_31(msgpack_packer *pk) { msgpack_pack_double(pk, 30.5); }
static void pk_nan(msgpack_packer *pk) { msgpack_pack_double(pk, NAN); }
static void pk_100(msgpack_packer *pk) { msgpack_pack_int(pk, 100); }
static void pk_48(msgpack_packer *pk) { msgpack_pack_int(pk, 48); }
static void pk_2064(msgpack_packer *pk) { msgpack_pack_int(pk, 2064); }
static void pk_513(msgpack_packer *pk) { msgpack_pack_int(pk, 513); }
static void pk_9(msgpack_packer *pk) { msgpack_pack_int(pk, 9); }
static void pk_11(msgpack_packer *pk) { msgpack_pack_int(pk, 11); }
static void pk_m11(msgpack_packer *pk) { msgpack_pack_int(pk, -11); }
static void pk_huge(msgpack_packer *pk) { msgpack_pack_uint64(pk, UINT64_MAX); }
static void pk_long(msgpack_packer *pk)
{
    char s[PROTO_MAX_NAME + 2];
    memset(s, 'm', sizeof s);
    msgpack_pack_str_with_body(pk, s, sizeof s);
}
static void pk_nul(msgpack_packer *pk) { msgpack_pack_str_with_body(pk, "a\0b", 3); }

static void test_submit_field_errors(void)
{
    /* Wrong types. */
    CHECK(submit_with("model", pk_int, PROTO_E_BAD_FIELD));
    CHECK(submit_with("negative_prompt", pk_nil, PROTO_E_BAD_FIELD));
    CHECK(submit_with("seed", pk_str, PROTO_E_BAD_FIELD));
    CHECK(submit_with("seed", pk_float, PROTO_E_BAD_FIELD));
    CHECK(submit_with("steps", pk_float, PROTO_E_BAD_FIELD));
    CHECK(submit_with("guidance", pk_str, PROTO_E_BAD_FIELD));
    CHECK(submit_with("width", pk_str, PROTO_E_BAD_FIELD));
    CHECK(submit_with("height", pk_true, PROTO_E_BAD_FIELD));
    CHECK(submit_with("max_seq", pk_map, PROTO_E_BAD_FIELD));
    CHECK(submit_with("count", pk_str, PROTO_E_BAD_FIELD));
    CHECK(submit_with("priority", pk_float, PROTO_E_BAD_FIELD));
    CHECK(submit_with("watch", pk_int, PROTO_E_BAD_FIELD));
    /* Out of range. */
    CHECK(submit_with("seed", pk_neg, PROTO_E_BAD_FIELD));
    CHECK(submit_with("steps", pk_zero, PROTO_E_BAD_FIELD));
    CHECK(submit_with("steps", pk_201, PROTO_E_BAD_FIELD));
    CHECK(submit_with("steps", pk_huge, PROTO_E_BAD_FIELD));
    CHECK(submit_with("guidance", pk_neg, PROTO_E_BAD_FIELD));
    CHECK(submit_with("guidance", pk_31, PROTO_E_BAD_FIELD));
    CHECK(submit_with("guidance", pk_nan, PROTO_E_BAD_FIELD));
    CHECK(submit_with("width", pk_100, PROTO_E_BAD_FIELD));
    CHECK(submit_with("width", pk_48, PROTO_E_BAD_FIELD));
    CHECK(submit_with("height", pk_2064, PROTO_E_BAD_FIELD));
    CHECK(submit_with("max_seq", pk_zero, PROTO_E_BAD_FIELD));
    CHECK(submit_with("max_seq", pk_513, PROTO_E_BAD_FIELD));
    CHECK(submit_with("count", pk_zero, PROTO_E_BAD_FIELD));
    CHECK(submit_with("count", pk_9, PROTO_E_BAD_FIELD));
    CHECK(submit_with("priority", pk_11, PROTO_E_BAD_FIELD));
    CHECK(submit_with("priority", pk_m11, PROTO_E_BAD_FIELD));
    CHECK(submit_with("model", pk_long, PROTO_E_BAD_FIELD));
    CHECK(submit_with("negative_prompt", pk_nul, PROTO_E_BAD_FIELD));
    /* Missing prompt; an integer guidance is a number; unknown fields are ignored. */
    struct frame f;
    struct proto_request r;
    struct proto_error e;
    frame_request(&f, 0, "submit");
    CHECK(parse_frame(&f, &r, &e) != 0 && e.code == PROTO_E_BAD_FIELD &&
          strcmp(e.field, "prompt") == 0);
    frame_request(&f, 3, "submit");
    kv_str(&f, "prompt", "p");
    kv_uint(&f, "guidance", 5);
    put_str(&f, "future_field");
    msgpack_pack_array(&f.pk, 2);
    msgpack_pack_map(&f.pk, 0);
    msgpack_pack_bin_with_body(&f.pk, "zz", 2);
    CHECK(parse_frame(&f, &r, &e) == 0 && r.u.submit.guidance == 5.0 &&
          r.u.submit.set == PROTO_SUBMIT_GUIDANCE);
}

/* ---- FOCUS subjects ---- */

/* A submit of prompt "p" whose last pair's key is name: its value is the caller's to pack. */
static void frame_submit_field(struct frame *f, const char *name)
{
    frame_request(f, 2, "submit");
    kv_str(f, "prompt", "p");
    put_str(f, name);
}

static void pk_subjects_empty(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 0);
}
static void pk_subjects_nine(msgpack_packer *pk)
{
    msgpack_pack_array(pk, PROTO_SUBJECTS_MAX + 1);
    for (int i = 0; i <= PROTO_SUBJECTS_MAX; i++)
        msgpack_pack_str_with_body(pk, "x", 1);
}
static void pk_subjects_int(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_int(pk, 1);
}
static void pk_subjects_empty_phrase(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_str_with_body(pk, "", 0);
}
static void pk_subjects_long_phrase(msgpack_packer *pk)
{
    char s[PROTO_MAX_PHRASE + 1];
    memset(s, 'h', sizeof s);
    msgpack_pack_array(pk, 1);
    msgpack_pack_str_with_body(pk, s, sizeof s);
}
static void pk_subjects_nul(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_str_with_body(pk, "a\0b", 3);
}
/* An array of one map entry of `pairs` pairs, its first key packed: the value is to follow. */
static void open_entry(msgpack_packer *pk, uint32_t pairs, const char *key)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, pairs);
    msgpack_pack_str_with_body(pk, key, strlen(key));
}
/* One map entry {key: n positions from `first` on}. */
static void pack_map_entry(msgpack_packer *pk, const char *key, int64_t first, uint32_t n)
{
    open_entry(pk, 1, key);
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++)
        msgpack_pack_int64(pk, first + i);
}
static void pk_subjects_t5_high(msgpack_packer *pk)
{
    pack_map_entry(pk, "t5", 511, 2);
}
static void pk_subjects_clip_high(msgpack_packer *pk)
{
    pack_map_entry(pk, "clip", 76, 2);
}
static void pk_subjects_negative(msgpack_packer *pk)
{
    pack_map_entry(pk, "t5", -1, 1);
}
static void pk_subjects_too_many(msgpack_packer *pk)
{
    pack_map_entry(pk, "clip", 0, PROTO_SUBJECT_POSITIONS_MAX + 1);
}
static void pk_subjects_no_positions(msgpack_packer *pk)
{
    pack_map_entry(pk, "t5", 0, 0);
}
static void pk_subjects_unknown_key(msgpack_packer *pk)
{
    pack_map_entry(pk, "t6", 1, 1);
}
static void pk_subjects_label_only(msgpack_packer *pk)
{
    open_entry(pk, 1, "phrase");
    msgpack_pack_str_with_body(pk, "horse", 5);
}
static void pk_subjects_float_pos(msgpack_packer *pk)
{
    open_entry(pk, 1, "t5");
    msgpack_pack_array(pk, 1);
    msgpack_pack_double(pk, 1.0);
}
static void pk_subjects_pos_not_array(msgpack_packer *pk)
{
    open_entry(pk, 1, "clip");
    msgpack_pack_int(pk, 2);
}
static void pk_subjects_label_int(msgpack_packer *pk)
{
    open_entry(pk, 2, "t5");
    msgpack_pack_array(pk, 1);
    msgpack_pack_int(pk, 1);
    msgpack_pack_str_with_body(pk, "phrase", 6);
    msgpack_pack_int(pk, 1);
}
static void pk_inf(msgpack_packer *pk)
{
    msgpack_pack_double(pk, INFINITY);
}
static void pk_101(msgpack_packer *pk)
{
    msgpack_pack_int(pk, 101);
}
static void pk_unknown_heuristic(msgpack_packer *pk)
{
    msgpack_pack_str_with_body(pk, "jsd", 3);
}

static void test_submit_subjects_errors(void)
{
    const packfn bad_subjects[] = {
        pk_str,
        pk_int,
        pk_map,
        pk_nil,
        pk_subjects_empty,
        pk_subjects_nine,
        pk_subjects_int,
        pk_subjects_empty_phrase,
        pk_subjects_long_phrase,
        pk_subjects_nul,
        pk_subjects_t5_high,
        pk_subjects_clip_high,
        pk_subjects_negative,
        pk_subjects_too_many,
        pk_subjects_no_positions,
        pk_subjects_unknown_key,
        pk_subjects_label_only,
        pk_subjects_float_pos,
        pk_subjects_pos_not_array,
        pk_subjects_label_int,
    };
    for (size_t i = 0; i < sizeof bad_subjects / sizeof *bad_subjects; i++)
        CHECKF(submit_with("subjects", bad_subjects[i], PROTO_E_BAD_FIELD), "case %zu", i);
    static const struct {
        const char *field;
        packfn fn;
    } bad_focus[] = {
        {"focus_lambda", pk_str},
        {"focus_lambda", pk_neg},
        {"focus_lambda", pk_nan},
        {"focus_lambda", pk_inf},
        {"focus_lambda", pk_101},
        {"focus_heuristic", pk_int},
        {"focus_heuristic", pk_unknown_heuristic},
    };
    for (size_t i = 0; i < sizeof bad_focus / sizeof *bad_focus; i++)
        CHECKF(submit_with(bad_focus[i].field, bad_focus[i].fn, PROTO_E_BAD_FIELD), "%s %zu",
               bad_focus[i].field, i);

    /* The messages name the entry and what is wrong with it. */
    struct frame f;
    struct proto_request r;
    struct proto_error e;
    frame_submit_field(&f, "subjects");
    pk_subjects_t5_high(&f.pk);
    CHECK(parse_frame(&f, &r, &e) != 0 &&
          strcmp(e.message, "subjects[0]: t5[1]: 512 is out of range 0..511") == 0);
    frame_submit_field(&f, "subjects");
    pk_subjects_unknown_key(&f.pk);
    CHECK(parse_frame(&f, &r, &e) != 0 && strstr(e.message, "unknown key \"t6\""));
    frame_submit_field(&f, "focus_heuristic");
    pk_unknown_heuristic(&f.pk);
    CHECK(parse_frame(&f, &r, &e) != 0 &&
          strcmp(e.message, "must be one of focus, attend_and_excite, divide_and_bind") == 0);
    /* A repeated key inside a subject's map. */
    frame_submit_field(&f, "subjects");
    msgpack_pack_array(&f.pk, 1);
    msgpack_pack_map(&f.pk, 2);
    for (int i = 0; i < 2; i++) {
        put_str(&f, "clip");
        msgpack_pack_array(&f.pk, 1);
        msgpack_pack_int(&f.pk, 2 + i);
    }
    CHECK(parse_frame(&f, &r, &e) != 0 && e.code == PROTO_E_BAD_FIELD &&
          strcmp(e.field, "clip") == 0);
}

static void test_submit_subjects_decoded(void)
{
    struct frame f;
    struct proto_request r;
    struct proto_error e;
    /* Phrases and position maps, focus_lambda as an integer; heuristic absent: focus. */
    frame_request(&f, 3, "submit");
    kv_str(&f, "prompt", "A horse and a bear in a forest");
    put_str(&f, "subjects");
    msgpack_pack_array(&f.pk, 2);
    put_str(&f, "horse");
    msgpack_pack_map(&f.pk, 3);
    kv_str(&f, "phrase", "bear");
    put_str(&f, "t5");
    msgpack_pack_array(&f.pk, 1);
    msgpack_pack_int(&f.pk, 5);
    put_str(&f, "clip");
    msgpack_pack_array(&f.pk, 0);
    kv_uint(&f, "focus_lambda", 4);
    CHECK(parse_frame(&f, &r, &e) == 0);
    const struct proto_submit *s = &r.u.submit;
    CHECK(s->set == (PROTO_SUBMIT_SUBJECTS | PROTO_SUBMIT_FOCUS_LAMBDA));
    CHECK(s->subjects.n == 2 && strcmp(s->subjects.s[0].phrase, "horse") == 0 &&
          s->subjects.s[0].n_t5 == 0 && s->subjects.s[0].n_clip == 0);
    CHECK(strcmp(s->subjects.s[1].phrase, "bear") == 0 && s->subjects.s[1].n_t5 == 1 &&
          s->subjects.s[1].t5[0] == 5 && s->subjects.s[1].n_clip == 0);
    CHECK(s->focus_lambda == 4.0 && s->focus_heuristic == PROTO_HEURISTIC_FOCUS);
    CHECK(proto_params_set(s) == (PROTO_SUBMIT_PARAMS | PROTO_SUBMIT_FOCUS));
    /* Without subjects the defaults hold and params leave the FOCUS fields out. */
    frame_request(&f, 1, "submit");
    kv_str(&f, "prompt", "p");
    CHECK(parse_frame(&f, &r, &e) == 0 && r.u.submit.subjects.n == 0 &&
          r.u.submit.focus_lambda == PROTO_DEFAULT_FOCUS_LAMBDA &&
          proto_params_set(&r.u.submit) == PROTO_SUBMIT_PARAMS);
    for (int h = 0; h < PROTO_HEURISTIC_COUNT; h++) {
        frame_request(&f, 2, "submit");
        kv_str(&f, "prompt", "p");
        kv_str(&f, "focus_heuristic", proto_heuristic_name((enum proto_heuristic)h));
        CHECK(parse_frame(&f, &r, &e) == 0 && (int)r.u.submit.focus_heuristic == h);
    }
}

/* The stores' form: packed and unpacked alike; nothing for no subjects; garbage refused. */
static void test_subjects_pack(void)
{
    struct proto_subjects s, back;
    fill_subjects(&s);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    struct proto_error e;
    CHECK(proto_subjects_pack(&sb, &s) == 0 && sb.size > 0);
    CHECK(proto_subjects_unpack(sb.data, sb.size, &back, &e) == 0 &&
          memcmp(&s, &back, sizeof s) == 0);
    CHECK(proto_subjects_unpack(sb.data, sb.size - 1, &back, &e) != 0 && back.n == 0);
    msgpack_sbuffer_clear(&sb);
    s.n = 0;
    CHECK(proto_subjects_pack(&sb, &s) == 0 && sb.size == 0);
    CHECK(proto_subjects_unpack(NULL, 0, &back, &e) == 0 && back.n == 0);
    const uint8_t not_subjects[] = {0x81, 0xa1, 'x', 0x01}; /* {"x": 1} */
    CHECK(proto_subjects_unpack(not_subjects, sizeof not_subjects, &back, &e) != 0);
    msgpack_sbuffer_destroy(&sb);
}

static void test_other_op_field_errors(void)
{
    struct frame f;
    struct proto_request r;
    struct proto_error e;
    const char *job_ops[] = {"watch", "cancel", "job", "fetch"};
    for (int i = 0; i < 4; i++) {
        frame_request(&f, 0, job_ops[i]);
        CHECKF(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "job") == 0, "%s", job_ops[i]);
        frame_request(&f, 1, job_ops[i]);
        kv_uint(&f, "job", 3);
        CHECKF(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "job") == 0, "%s", job_ops[i]);
    }
    frame_request(&f, 2, "fetch");
    kv_str(&f, "job", "j");
    kv_uint(&f, "index", PROTO_COUNT_MAX);
    CHECK(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "index") == 0);
    frame_request(&f, 1, "jobs");
    kv_str(&f, "state", "sleeping");
    CHECK(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "state") == 0);
    frame_request(&f, 1, "jobs");
    kv_uint(&f, "limit", 0);
    CHECK(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "limit") == 0);
    frame_request(&f, 1, "jobs");
    kv_uint(&f, "limit", PROTO_JOBS_LIMIT_MAX + 1);
    CHECK(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "limit") == 0);
    frame_request(&f, 1, "hello");
    kv_uint(&f, "client", 1);
    CHECK(parse_frame(&f, &r, &e) != 0 && strcmp(e.field, "client") == 0);
}

/* ---- Replies and events ---- */

static int incoming(msgpack_sbuffer *sb, struct proto_incoming *in)
{
    struct proto_error e;
    int rc = proto_parse_incoming(sb->data, sb->size, in, &e);
    if (rc)
        fprintf(stderr, "  incoming: %s/%s: %s\n", proto_errcode_name(e.code), e.field,
                e.message);
    return rc;
}

static void sample_status(struct proto_job_status *st, const char *job, enum proto_state s)
{
    memset(st, 0, sizeof *st);
    strcpy(st->job, job);
    st->state = s;
    st->position = 2;
    st->step = 5;
    st->steps = 28;
    st->images = s == PROTO_STATE_DONE ? 2 : 0;
    st->created = 1700000000.25;
    st->started = s == PROTO_STATE_QUEUED ? 0 : 1700000001.5;
    proto_submit_init(&st->params);
    strcpy(st->params.prompt, "a lighthouse");
    strcpy(st->params.model, "focus");
    st->params.seed = 42;
    st->params.set = PROTO_SUBMIT_PARAMS;
    if (s == PROTO_STATE_FAILED) {
        st->error.code = PROTO_E_FAILED;
        strcpy(st->error.message, "out of memory on cuda:0");
    }
}

static void test_reply_roundtrips(void)
{
    msgpack_sbuffer sb;
    struct proto_incoming in;
    struct proto_id id = {PROTO_ID_STR, 0, "r1"};

    msgpack_sbuffer_init(&sb);
    const char *names[] = {"focus", "sd35m"};
    struct proto_hello_reply h = {"focusd", "0.1.0", 1, "s-1", "focus", 64, names, 2, NULL, 0};
    CHECK(proto_reply_hello(&sb, &id, &h) == 0 && incoming(&sb, &in) == 0);
    struct proto_hello_reply h2;
    CHECK(!in.is_event && in.ok && in.id.kind == PROTO_ID_STR && strcmp(in.id.s, "r1") == 0);
    CHECK(proto_decode_hello(&in, &h2, NULL) == 0 && strcmp(h2.server, "focusd") == 0 &&
          strcmp(h2.session, "s-1") == 0 && h2.max_queue == 64 && h2.n_models == 2 &&
          strcmp(h2.models[1], "sd35m") == 0 && h2.protocol == 1);
    proto_incoming_free(&in);

    msgpack_sbuffer_clear(&sb);
    char job[PROTO_MAX_NAME + 1];
    CHECK(proto_reply_submit(&sb, &id, "j-1") == 0 && incoming(&sb, &in) == 0);
    CHECK(proto_decode_submit(&in, job, NULL) == 0 && strcmp(job, "j-1") == 0);
    proto_incoming_free(&in);

    msgpack_sbuffer_clear(&sb);
    struct proto_job_status st, st2;
    sample_status(&st, "j-2", PROTO_STATE_FAILED);
    CHECK(proto_reply_job(&sb, &id, &st) == 0 && incoming(&sb, &in) == 0);
    CHECK(proto_decode_job(&in, &st2, NULL) == 0);
    CHECK(memcmp(&st, &st2, sizeof st) == 0);
    CHECK(st2.params.set == PROTO_SUBMIT_PARAMS && st2.params.subjects.n == 0);
    proto_incoming_free(&in);

    /* A controlled job's params carry its subjects, lambda and heuristic. */
    msgpack_sbuffer_clear(&sb);
    sample_status(&st, "j-3", PROTO_STATE_RUNNING);
    fill_subjects(&st.params.subjects);
    st.params.focus_lambda = 0.5;
    st.params.focus_heuristic = PROTO_HEURISTIC_ATTEND_AND_EXCITE;
    st.params.set = proto_params_set(&st.params);
    CHECK(proto_reply_job(&sb, &id, &st) == 0 && incoming(&sb, &in) == 0);
    CHECK(proto_decode_job(&in, &st2, NULL) == 0);
    CHECK(memcmp(&st, &st2, sizeof st) == 0);
    proto_incoming_free(&in);

    msgpack_sbuffer_clear(&sb);
    struct proto_job_status list[3];
    sample_status(&list[0], "a", PROTO_STATE_QUEUED);
    sample_status(&list[1], "b", PROTO_STATE_RUNNING);
    sample_status(&list[2], "c", PROTO_STATE_DONE);
    struct proto_job_status *got;
    size_t n;
    CHECK(proto_reply_jobs(&sb, &id, list, 3, NULL) == 0 && incoming(&sb, &in) == 0);
    CHECK(proto_decode_jobs(&in, &got, &n, NULL) == 0 && n == 3 &&
          memcmp(got, list, sizeof list) == 0);
    proto_incoming_free(&in);

    msgpack_sbuffer_clear(&sb);
    static const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 1, 2, 3};
    struct proto_image img = {.index = 1, .png = png, .png_len = sizeof png, .width = 512,
                              .height = 768, .seed = 9};
    strcpy(img.job, "j-3");
    proto_sha256(png, sizeof png, img.sha256);
    proto_submit_init(&img.params);
    strcpy(img.params.prompt, "p");
    struct proto_image img2;
    CHECK(proto_reply_fetch(&sb, &id, &img) == 0 && incoming(&sb, &in) == 0);
    CHECK(proto_decode_fetch(&in, &img2, NULL) == 0 && img2.png_len == sizeof png &&
          memcmp(img2.png, png, sizeof png) == 0 && img2.width == 512 && img2.height == 768 &&
          img2.seed == 9 && img2.index == 1 && strcmp(img2.params.prompt, "p") == 0);
    proto_incoming_free(&in);
    /* A flipped PNG byte fails the checksum. */
    char *mark = memmem(sb.data, sb.size, "PNG", 3);
    CHECK(mark != NULL);
    if (mark) {
        mark[0] = 'Q';
        struct proto_error e;
        CHECK(incoming(&sb, &in) == 0);
        CHECK(proto_decode_fetch(&in, &img2, &e) != 0 && strcmp(e.field, "sha256") == 0);
        proto_incoming_free(&in);
    }

    msgpack_sbuffer_clear(&sb);
    struct proto_model_info m[2] = {{"focus", "/var/lib/focusd/models/focus", "cuda:0", "bf16",
                                     5u << 30, true},
                                    {"tiny", "/m/tiny", "cpu", "fp32", 123, false}};
    struct proto_model_info *mg;
    CHECK(proto_reply_models(&sb, &id, m, 2) == 0 && incoming(&sb, &in) == 0);
    CHECK(proto_decode_models(&in, &mg, &n, NULL) == 0 && n == 2 &&
          memcmp(mg, m, sizeof m) == 0);
    proto_incoming_free(&in);

    msgpack_sbuffer_clear(&sb);
    struct proto_stats s = {1, 2, 3, 4, 5, 6, 7.5}, s2;
    CHECK(proto_reply_stats(&sb, &id, &s) == 0 && incoming(&sb, &in) == 0);
    CHECK(proto_decode_stats(&in, &s2, NULL) == 0 && memcmp(&s, &s2, sizeof s) == 0);
    proto_incoming_free(&in);

    msgpack_sbuffer_clear(&sb);
    struct proto_id none = {PROTO_ID_NONE, 0, ""};
    CHECK(proto_reply_pong(&sb, &none) == 0 && incoming(&sb, &in) == 0);
    CHECK(in.ok && in.id.kind == PROTO_ID_NONE);
    proto_incoming_free(&in);

    msgpack_sbuffer_clear(&sb);
    CHECK(proto_reply_error(&sb, &id, PROTO_E_BAD_FIELD, "steps", "0 is out of range") == 0);
    CHECK(incoming(&sb, &in) == 0 && !in.ok && in.error.code == PROTO_E_BAD_FIELD &&
          strcmp(in.error.field, "steps") == 0 && strcmp(in.error.message, "0 is out of range") == 0);
    CHECK(proto_decode_stats(&in, &s2, NULL) != 0);
    proto_incoming_free(&in);
    msgpack_sbuffer_destroy(&sb);
}

static void test_event_roundtrips(void)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    for (int k = 0; k < PROTO_EV_COUNT; k++) {
        struct proto_event ev = {.kind = (enum proto_event_kind)k};
        strcpy(ev.job, "j-9");
        switch (k) {
        case PROTO_EV_QUEUED: ev.position = 3; break;
        case PROTO_EV_STARTED: ev.steps = 28; break;
        case PROTO_EV_PROGRESS:
            ev.step = 4;
            ev.steps = 28;
            ev.elapsed = 1.25;
            ev.eta = 7.5;
            break;
        case PROTO_EV_DONE:
            ev.images = 2;
            ev.elapsed = 9.0;
            break;
        case PROTO_EV_FAILED:
            ev.error.code = PROTO_E_INTERNAL;
            strcpy(ev.error.message, "worker died");
            break;
        }
        msgpack_sbuffer_clear(&sb);
        struct proto_incoming in;
        CHECK(proto_event_encode(&sb, &ev) == 0 && incoming(&sb, &in) == 0);
        CHECKF(in.is_event && memcmp(&in.event, &ev, sizeof ev) == 0, "%s",
               proto_event_name(ev.kind));
        proto_incoming_free(&in);
    }
    /* A progress event without its step is refused, naming it. */
    struct frame f;
    frame_begin(&f, 5);
    kv_uint(&f, "v", 1);
    kv_str(&f, "event", "progress");
    kv_str(&f, "job", "j");
    kv_uint(&f, "steps", 3);
    kv_uint(&f, "elapsed", 1);
    struct proto_incoming in;
    struct proto_error e;
    CHECK(proto_parse_incoming(f.sb.data, f.sb.size, &in, &e) != 0 &&
          e.code == PROTO_E_BAD_FIELD && strcmp(e.field, "step") == 0);
    msgpack_sbuffer_destroy(&f.sb);
    frame_begin(&f, 3);
    kv_uint(&f, "v", 3);
    kv_str(&f, "event", "done");
    kv_str(&f, "job", "j");
    CHECK(proto_parse_incoming(f.sb.data, f.sb.size, &in, &e) != 0 &&
          e.code == PROTO_E_UNSUPPORTED_VERSION);
    msgpack_sbuffer_destroy(&f.sb);
    msgpack_sbuffer_destroy(&sb);
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(PROTO_MAX_REQUEST * 2);
    *n = fread(buf, 1, PROTO_MAX_REQUEST * 2, f);
    fclose(f);
    return buf;
}

/* The fuzz corpus was written by client/python/focusd_client.py and msgpack-python; its file
 * names say what the C decoders must make of each: req-* are good requests, bad-CODE[-FIELD]-*
 * requests refused with that code (and field), srv-* replies and events. */
static void check_corpus_file(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    size_t n;
    char *buf = slurp(path, &n);
    CHECKF(buf != NULL, "%s", path);
    if (!buf)
        return;
    struct proto_request r;
    struct proto_error e;
    if (strncmp(name, "req-", 4) == 0) {
        int rc = proto_parse_request(buf, n, &r, &e);
        CHECKF(rc == 0, "%s: %s", name, e.message);
        CHECKF(rc || strncmp(name + 4, proto_op_name(r.op), strlen(proto_op_name(r.op))) == 0,
               "%s", name);
    } else if (strncmp(name, "bad-", 4) == 0) {
        char code[64], field[64] = "";
        sscanf(name + 4, "%63[^-]-%63[^-]", code, field);
        int rc = proto_parse_request(buf, n, &r, &e);
        CHECKF(rc != 0 && strcmp(proto_errcode_name(e.code), code) == 0, "%s: got %s", name,
               proto_errcode_name(e.code));
        if (strcmp(code, "bad_field") == 0)
            CHECKF(strcmp(e.field, field) == 0, "%s: field %s", name, e.field);
    } else if (strncmp(name, "srv-", 4) == 0) {
        struct proto_incoming in;
        int rc = proto_parse_incoming(buf, n, &in, &e);
        CHECKF(rc == 0, "%s: %s", name, e.message);
        if (rc == 0) {
            struct proto_hello_reply h;
            struct proto_job_status st, *jobs;
            struct proto_model_info *models;
            struct proto_image img;
            struct proto_stats stats;
            char job[PROTO_MAX_NAME + 1];
            size_t cnt;
            const char *what = name + 4;
            if (strcmp(what, "hello") == 0)
                rc = proto_decode_hello(&in, &h, &e);
            else if (strcmp(what, "submit") == 0)
                rc = proto_decode_submit(&in, job, &e);
            else if (strcmp(what, "job") == 0)
                rc = proto_decode_job(&in, &st, &e);
            else if (strcmp(what, "jobs") == 0)
                rc = proto_decode_jobs(&in, &jobs, &cnt, &e) || cnt != 2 ||
                     jobs[1].error.code != PROTO_E_FAILED;
            else if (strcmp(what, "fetch") == 0)
                rc = proto_decode_fetch(&in, &img, &e);
            else if (strcmp(what, "models") == 0)
                rc = proto_decode_models(&in, &models, &cnt, &e);
            else if (strcmp(what, "stats") == 0)
                rc = proto_decode_stats(&in, &stats, &e);
            else if (strcmp(what, "error") == 0)
                rc = in.ok || in.error.code != PROTO_E_BAD_FIELD;
            else if (strncmp(what, "event-", 6) == 0)
                rc = !in.is_event || strcmp(proto_event_name(in.event.kind), what + 6) != 0;
            CHECKF(rc == 0, "%s: %s", name, e.message);
            proto_incoming_free(&in);
        }
    }
    free(buf);
}

static void test_corpus(void)
{
    const char *dir = "tests/fuzz/corpus/protocol";
    DIR *d = opendir(dir);
    CHECKF(d != NULL, "%s (run from the repository root)", dir);
    if (!d)
        return;
    int files = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        check_corpus_file(dir, de->d_name);
        files++;
    }
    closedir(d);
    CHECK(files >= 40);
}

static void test_names(void)
{
    for (int c = 1; c < PROTO_E_COUNT; c++) {
        const char *n = proto_errcode_name((enum proto_errcode)c);
        CHECK(proto_errcode_parse(n, strlen(n)) == (enum proto_errcode)c);
    }
    CHECK(proto_errcode_parse("novel_code", 10) == PROTO_E_FAILED);
    for (int o = 0; o < PROTO_OP_COUNT; o++) {
        enum proto_op op;
        const char *n = proto_op_name((enum proto_op)o);
        CHECK(proto_op_parse(n, strlen(n), &op) == 0 && op == (enum proto_op)o);
    }
}

int main(void)
{
    RUN(test_sha256_vectors);
    RUN(test_request_roundtrip_submit);
    RUN(test_request_roundtrip_others);
    RUN(test_request_bytes);
    RUN(test_malformed_frames);
    RUN(test_truncated_at_every_byte);
    RUN(test_oversized);
    RUN(test_deep_nesting);
    RUN(test_envelope_errors);
    RUN(test_submit_field_errors);
    RUN(test_submit_subjects_errors);
    RUN(test_submit_subjects_decoded);
    RUN(test_subjects_pack);
    RUN(test_other_op_field_errors);
    RUN(test_reply_roundtrips);
    RUN(test_event_roundtrips);
    RUN(test_corpus);
    RUN(test_names);
    CHECK_DONE();
}
