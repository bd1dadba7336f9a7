/* The schema of focusd-protocol(7) as data: names of ops, states, events and error codes, and
 * the field tables of submit parameters, job status and events, with the one decoder and the
 * one encoder that interpret them. Message envelopes and nested parts are in proto_request.c
 * and proto_server.c. */
#include "protocol/proto_internal.h"

#include "common/err.h"

#include <float.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const errcode_names[PROTO_E_COUNT] = {
    "none", "bad_message", "unsupported_version", "unknown_op", "bad_field", "not_found",
    "busy", "too_large", "canceled", "failed", "internal", "forbidden", "unavailable",
    "out_of_memory", "expired",
};

static const char *const op_names[PROTO_OP_COUNT] = {
    "hello", "submit", "watch", "cancel", "job", "jobs", "fetch", "models", "stats", "ping",
    "wait",
};

static const char *const state_names[PROTO_STATE_COUNT] = {
    "queued", "running", "done", "failed", "canceled",
};

static const char *const heuristic_names[PROTO_HEURISTIC_COUNT] = {
    "focus",
    "attend_and_excite",
    "divide_and_bind",
};

static const char *const event_names[PROTO_EV_COUNT] = {
    "queued", "started", "progress", "done", "failed", "canceled",
};

const char *proto_errcode_name(enum proto_errcode code)
{
    return (unsigned)code < PROTO_E_COUNT ? errcode_names[code] : "internal";
}

static int name_index(const char *const *names, int count, const char *s, size_t len)
{
    for (int i = 0; i < count; i++)
        if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0)
            return i;
    return -1;
}

enum proto_errcode proto_errcode_parse(const char *name, size_t len)
{
    int i = name_index(errcode_names, PROTO_E_COUNT, name, len);
    return i > 0 ? (enum proto_errcode)i : PROTO_E_FAILED;
}

const char *proto_op_name(enum proto_op op)
{
    return (unsigned)op < PROTO_OP_COUNT ? op_names[op] : "?";
}

int proto_op_parse(const char *name, size_t len, enum proto_op *op)
{
    int i = name_index(op_names, PROTO_OP_COUNT, name, len);
    if (i < 0)
        return err_set(ERR_MISSING, "unknown op \"%.*s\"", (int)(len > 64 ? 64 : len), name);
    *op = (enum proto_op)i;
    return 0;
}

const char *proto_state_name(enum proto_state s)
{
    return (unsigned)s < PROTO_STATE_COUNT ? state_names[s] : "?";
}

const char *proto_heuristic_name(enum proto_heuristic h)
{
    return (unsigned)h < PROTO_HEURISTIC_COUNT ? heuristic_names[h] : "?";
}

const char *proto_event_name(enum proto_event_kind k)
{
    return (unsigned)k < PROTO_EV_COUNT ? event_names[k] : "?";
}

int proto_event_parse_name(const char *s, size_t len)
{
    return name_index(event_names, PROTO_EV_COUNT, s, len);
}

int proto_fail(struct proto_error *perr, enum proto_errcode code, const char *field,
               const char *fmt, ...)
{
    char msg[PROTO_MAX_TEXT + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (perr) {
        perr->code = code;
        snprintf(perr->field, sizeof perr->field, "%s", field ? field : "");
        snprintf(perr->message, sizeof perr->message, "%s", msg);
    }
    int rc = code == PROTO_E_BAD_FIELD ? ERR_RANGE : ERR_FORMAT;
    if (field && *field)
        return err_set(rc, "%s: %s: %s", proto_errcode_name(code), field, msg);
    return err_set(rc, "%s: %s", proto_errcode_name(code), msg);
}

/* ---- Tables ---- */

static const struct proto_field submit_fields[] = {
    STR(struct proto_submit, model, PROTO_MAX_NAME, PROTO_SUBMIT_MODEL, false),
    STR(struct proto_submit, prompt, PROTO_MAX_PROMPT, 0, true),
    STR(struct proto_submit, negative_prompt, PROTO_MAX_PROMPT, PROTO_SUBMIT_NEGATIVE, false),
    U64(struct proto_submit, seed, PROTO_SUBMIT_SEED, false),
    U32(struct proto_submit, steps, PROTO_STEPS_MIN, PROTO_STEPS_MAX, 0, PROTO_SUBMIT_STEPS, false),
    F64(struct proto_submit, guidance, PROTO_GUIDANCE_MIN, PROTO_GUIDANCE_MAX,
        PROTO_SUBMIT_GUIDANCE, false),
    U32(struct proto_submit, width, PROTO_SIZE_MIN, PROTO_SIZE_MAX, PROTO_SIZE_STEP,
        PROTO_SUBMIT_WIDTH, false),
    U32(struct proto_submit, height, PROTO_SIZE_MIN, PROTO_SIZE_MAX, PROTO_SIZE_STEP,
        PROTO_SUBMIT_HEIGHT, false),
    U32(struct proto_submit, max_seq, PROTO_MAX_SEQ_MIN, PROTO_MAX_SEQ_MAX, 0, PROTO_SUBMIT_MAX_SEQ,
        false),
    U32(struct proto_submit, count, PROTO_COUNT_MIN, PROTO_COUNT_MAX, 0, PROTO_SUBMIT_COUNT, false),
    {"priority", PF_I32, offsetof(struct proto_submit, priority), 0, PROTO_PRIORITY_MIN,
     PROTO_PRIORITY_MAX, 0, 0, 0, PROTO_SUBMIT_PRIORITY, false},
    {"subjects", PF_SUBJECTS, offsetof(struct proto_submit, subjects), 0, 0, 0, 0, 0, 0,
     PROTO_SUBMIT_SUBJECTS, false},
    F64(struct proto_submit, focus_lambda, PROTO_FOCUS_LAMBDA_MIN, PROTO_FOCUS_LAMBDA_MAX,
        PROTO_SUBMIT_FOCUS_LAMBDA, false),
    {"focus_heuristic", PF_HEURISTIC, offsetof(struct proto_submit, focus_heuristic), 0, 0, 0, 0, 0,
     0, PROTO_SUBMIT_FOCUS_HEURISTIC, false},
    {"watch", PF_BOOL, offsetof(struct proto_submit, watch), 0, 0, 0, 0, 0, 0, PROTO_SUBMIT_WATCH,
     false},
    {"png", PF_BOOL, offsetof(struct proto_submit, png), 0, 0, 0, 0, 0, 0, PROTO_SUBMIT_PNG, false},
};
const struct proto_table proto_submit_table = {submit_fields,
                                               sizeof submit_fields / sizeof *submit_fields};

static const struct proto_field status_fields[] = {
    STR(struct proto_job_status, job, PROTO_MAX_NAME, 0, true),
    {"state", PF_STATE, offsetof(struct proto_job_status, state), 0, 0, 0, 0, 0, 0, 0, true},
    U32ANY(struct proto_job_status, position, 0, true),
    U32ANY(struct proto_job_status, step, 0, true),
    U32ANY(struct proto_job_status, steps, 0, true),
    U32ANY(struct proto_job_status, images, 0, true),
    F64(struct proto_job_status, created, 0, DBL_MAX, 0, true),
    F64(struct proto_job_status, started, 0, DBL_MAX, 0, true),
    F64(struct proto_job_status, finished, 0, DBL_MAX, 0, true),
};
const struct proto_table proto_status_table = {status_fields,
                                               sizeof status_fields / sizeof *status_fields};

/* Bits are those of proto_event_fields() in proto_server.c. */
static const struct proto_field event_fields[] = {
    STR(struct proto_event, job, PROTO_MAX_NAME, 0, true),
    U64(struct proto_event, seq, PROTO_EVENT_SEQ_BIT, false),
    U32ANY(struct proto_event, position, 1u << 0, false),
    U32ANY(struct proto_event, step, 1u << 1, false),
    U32ANY(struct proto_event, steps, 1u << 2, false),
    F64(struct proto_event, elapsed, 0, DBL_MAX, 1u << 3, false),
    F64(struct proto_event, eta, 0, DBL_MAX, 1u << 4, false),
    U32ANY(struct proto_event, images, 1u << 5, false),
};
const struct proto_table proto_event_table = {event_fields,
                                              sizeof event_fields / sizeof *event_fields};

static const struct proto_field hello_req_fields[] = {
    NAMED_STR("client", union proto_op_params, hello.client, PROTO_MAX_NAME, 1, false),
};
static const struct proto_field jobref_fields[] = {
    NAMED_STR("job", union proto_op_params, job.job, PROTO_MAX_NAME, 0, true),
};
static const struct proto_field watch_req_fields[] = {
    NAMED_STR("job", union proto_op_params, job.job, PROTO_MAX_NAME, 0, true),
    {"png", PF_BOOL, offsetof(union proto_op_params, job.png), 0, 0, 0, 0, 0, 0, 1, false},
};
static const struct proto_field jobs_req_fields[] = {
    {"state", PF_STATE, offsetof(union proto_op_params, jobs.state), 0, 0, 0, 0, 0, 0, 1, false},
    NAMED_U32("limit", union proto_op_params, jobs.limit, 1, PROTO_JOBS_LIMIT_MAX, 0, 2, false),
    NAMED_STR("cursor", union proto_op_params, jobs.cursor, PROTO_MAX_CURSOR, 4, false),
};
static const struct proto_field wait_req_fields[] = {
    NAMED_STR("job", union proto_op_params, wait.job, PROTO_MAX_NAME, 0, true),
    {"timeout", PF_F64, offsetof(union proto_op_params, wait.timeout), 0, 0, 0, 0,
     PROTO_WAIT_MAX, 0, 1, false},
};
static const struct proto_field fetch_req_fields[] = {
    NAMED_STR("job", union proto_op_params, fetch.job, PROTO_MAX_NAME, 0, true),
    NAMED_U32("index", union proto_op_params, fetch.index, 0, PROTO_COUNT_MAX - 1, 0, 1,
              false),
};
/* Indexed by enum proto_op, over union proto_op_params; ops without fields have none. */
const struct proto_table proto_op_tables[PROTO_OP_COUNT] = {
    [PROTO_OP_HELLO] = {hello_req_fields, 1},
    [PROTO_OP_SUBMIT] = {submit_fields, sizeof submit_fields / sizeof *submit_fields},
    [PROTO_OP_WATCH] = {watch_req_fields, 2},
    [PROTO_OP_CANCEL] = {jobref_fields, 1},
    [PROTO_OP_JOB] = {jobref_fields, 1},
    [PROTO_OP_JOBS] = {jobs_req_fields, 3},
    [PROTO_OP_FETCH] = {fetch_req_fields, 2},
    [PROTO_OP_WAIT] = {wait_req_fields, 2},
};

static const struct proto_field hello_fields[] = {
    STR(struct proto_hello_reply, server, PROTO_MAX_NAME, 0, true),
    STR(struct proto_hello_reply, version, PROTO_MAX_NAME, 0, true),
    U32ANY(struct proto_hello_reply, protocol, 0, true),
    STR(struct proto_hello_reply, session, PROTO_MAX_NAME, 0, true),
    STR(struct proto_hello_reply, default_model, PROTO_MAX_NAME, 0, true),
    U32ANY(struct proto_hello_reply, max_queue, 0, true),
};
const struct proto_table proto_hello_table = {hello_fields,
                                              sizeof hello_fields / sizeof *hello_fields};

static const struct proto_field image_fields[] = {
    STR(struct proto_image, job, PROTO_MAX_NAME, 0, true),
    U32(struct proto_image, index, 0, PROTO_COUNT_MAX - 1, 0, 0, true),
    {"sha256", PF_SHA256, offsetof(struct proto_image, sha256), 0, 0, 0, 0, 0, 0, 0, true},
    U32(struct proto_image, width, PROTO_SIZE_MIN, PROTO_SIZE_MAX, PROTO_SIZE_STEP, 0, true),
    U32(struct proto_image, height, PROTO_SIZE_MIN, PROTO_SIZE_MAX, PROTO_SIZE_STEP, 0, true),
    U64(struct proto_image, seed, 0, true),
};
const struct proto_table proto_image_table = {image_fields,
                                              sizeof image_fields / sizeof *image_fields};

static const struct proto_field model_fields[] = {
    STR(struct proto_model_info, name, PROTO_MAX_NAME, 0, true),
    STR(struct proto_model_info, path, PROTO_MAX_TEXT, 0, true),
    STR(struct proto_model_info, device, PROTO_MAX_NAME, 0, true),
    STR(struct proto_model_info, dtype, PROTO_MAX_NAME, 0, true),
    U64(struct proto_model_info, memory, 0, true),
    {"loaded", PF_BOOL, offsetof(struct proto_model_info, loaded), 0, 0, 0, 0, 0, 0, 0, true},
};
const struct proto_table proto_model_table = {model_fields,
                                              sizeof model_fields / sizeof *model_fields};

static const struct proto_field stats_fields[] = {
    U64(struct proto_stats, queued, 0, true),   U64(struct proto_stats, running, 0, true),
    U64(struct proto_stats, done, 0, true),     U64(struct proto_stats, failed, 0, true),
    U64(struct proto_stats, canceled, 0, true), U64(struct proto_stats, sessions, 0, true),
    F64(struct proto_stats, uptime, 0, DBL_MAX, 0, true),
};
const struct proto_table proto_stats_table = {stats_fields,
                                              sizeof stats_fields / sizeof *stats_fields};

/* ---- Decoding ---- */

const msgpack_object *proto_map_get(const msgpack_object *map, const char *key, bool *dup)
{
    const msgpack_object *found = NULL;
    size_t klen = strlen(key);
    if (dup)
        *dup = false;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            memcmp(k->via.str.ptr, key, klen) == 0) {
            if (found) {
                if (dup)
                    *dup = true;
                return found;
            }
            found = &map->via.map.ptr[i].val;
        }
    }
    return found;
}

static int key_cmp(const void *a, const void *b)
{
    const msgpack_object *x = *(const msgpack_object *const *)a, *y = *(const msgpack_object *const *)b;
    uint32_t n = x->via.str.size < y->via.str.size ? x->via.str.size : y->via.str.size;
    int c = n ? memcmp(x->via.str.ptr, y->via.str.ptr, n) : 0; /* an empty key's ptr may be NULL */
    return c ? c : (x->via.str.size > y->via.str.size) - (x->via.str.size < y->via.str.size);
}

int proto_check_unique_keys(const msgpack_object *o, struct proto_error *perr)
{
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            int rc = proto_check_unique_keys(&o->via.array.ptr[i], perr);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_MAP)
        return 0;
    uint32_t n = o->via.map.size;
    if (n == 0)
        return 0;
    /* The validator bounds n (64 in a request, 4096 from a daemon) and makes every key a str:
     * sorted pointers find a repeated one in n log n. */
    const msgpack_object **keys = malloc(n * sizeof *keys);
    if (!keys)
        return proto_fail(perr, PROTO_E_INTERNAL, NULL, "out of memory");
    for (uint32_t i = 0; i < n; i++)
        keys[i] = &o->via.map.ptr[i].key;
    qsort(keys, n, sizeof *keys, key_cmp);
    int rc = 0;
    for (uint32_t i = 1; !rc && i < n; i++)
        if (key_cmp(&keys[i - 1], &keys[i]) == 0) {
            char name[PROTO_MAX_FIELD + 1];
            size_t len = keys[i]->via.str.size < PROTO_MAX_FIELD ? keys[i]->via.str.size
                                                                  : PROTO_MAX_FIELD;
            if (len) memcpy(name, keys[i]->via.str.ptr, len);
            name[len] = 0;
            rc = proto_fail(perr, PROTO_E_BAD_FIELD, name, "appears more than once");
        }
    free(keys);
    for (uint32_t i = 0; !rc && i < n; i++)
        rc = proto_check_unique_keys(&o->via.map.ptr[i].val, perr);
    return rc;
}

int proto_copy_str(const msgpack_object *o, char *dst, size_t cap, const char *field,
                   struct proto_error *perr)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return proto_fail(perr, PROTO_E_BAD_FIELD, field, "must be a string");
    size_t n = o->via.str.size;
    if (n > cap)
        return proto_fail(perr, PROTO_E_BAD_FIELD, field, "%zu bytes exceed the limit of %zu",
                          n, cap);
    /* An empty string's ptr may be NULL, which memchr and memcpy must not be given. */
    if (n && memchr(o->via.str.ptr, 0, n))
        return proto_fail(perr, PROTO_E_BAD_FIELD, field, "contains a NUL byte");
    if (n) memcpy(dst, o->via.str.ptr, n);
    dst[n] = 0;
    return 0;
}

static bool is_int(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER || o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
}

/* A str naming one of count values into the enum at dst; the message lists the names. */
static int decode_name(const struct proto_field *f, const msgpack_object *o,
                       const char *const *names, int count, void *dst, struct proto_error *perr)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return proto_fail(perr, PROTO_E_BAD_FIELD, f->name, "must be a string");
    int i = name_index(names, count, o->via.str.ptr, o->via.str.size);
    if (i >= 0) {
        *(int *)dst = i; /* the enums' representation: every value fits an int */
        return 0;
    }
    char list[256];
    size_t n = 0;
    for (int k = 0; k < count; k++)
        n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", k ? ", " : "", names[k]);
    return proto_fail(perr, PROTO_E_BAD_FIELD, f->name, "must be one of %s", list);
}

static int decode_field(const struct proto_field *f, const msgpack_object *o, char *base,
                        struct proto_error *perr)
{
    void *dst = base + f->off;
    switch (f->kind) {
    case PF_STR:
        return proto_copy_str(o, dst, f->cap, f->name, perr);
    case PF_U32:
    case PF_I32: {
        if (!is_int(o))
            return proto_fail(perr, PROTO_E_BAD_FIELD, f->name, "must be an integer");
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 > (uint64_t)f->hi)
            return proto_fail(perr, PROTO_E_BAD_FIELD, f->name,
                              "%llu is out of range %lld..%lld",
                              (unsigned long long)o->via.u64, (long long)f->lo,
                              (long long)f->hi);
        int64_t v = o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int64_t)o->via.u64
                                                                : o->via.i64;
        if (v < f->lo || v > f->hi)
            return proto_fail(perr, PROTO_E_BAD_FIELD, f->name, "%lld is out of range %lld..%lld",
                              (long long)v, (long long)f->lo, (long long)f->hi);
        if (f->multiple && v % f->multiple != 0)
            return proto_fail(perr, PROTO_E_BAD_FIELD, f->name, "%lld is not a multiple of %u",
                              (long long)v, f->multiple);
        if (f->kind == PF_U32)
            *(uint32_t *)dst = (uint32_t)v;
        else
            *(int32_t *)dst = (int32_t)v;
        return 0;
    }
    case PF_U64:
        if (!is_int(o))
            return proto_fail(perr, PROTO_E_BAD_FIELD, f->name, "must be an integer");
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            return proto_fail(perr, PROTO_E_BAD_FIELD, f->name,
                              "%lld is out of range 0..18446744073709551615",
                              (long long)o->via.i64);
        *(uint64_t *)dst = o->via.u64;
        return 0;
    case PF_F64: {
        double v;
        if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64)
            v = o->via.f64;
        else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            v = (double)o->via.u64;
        else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            v = (double)o->via.i64;
        else
            return proto_fail(perr, PROTO_E_BAD_FIELD, f->name, "must be a number");
        if (!(v >= f->flo && v <= f->fhi))
            return proto_fail(perr, PROTO_E_BAD_FIELD, f->name, "%g is out of range %g..%g", v,
                              f->flo, f->fhi);
        *(double *)dst = v;
        return 0;
    }
    case PF_BOOL:
        if (o->type != MSGPACK_OBJECT_BOOLEAN)
            return proto_fail(perr, PROTO_E_BAD_FIELD, f->name, "must be true or false");
        *(bool *)dst = o->via.boolean;
        return 0;
    case PF_STATE:
        return decode_name(f, o, state_names, PROTO_STATE_COUNT, dst, perr);
    case PF_HEURISTIC:
        return decode_name(f, o, heuristic_names, PROTO_HEURISTIC_COUNT, dst, perr);
    case PF_SUBJECTS:
        return proto_subjects_decode(o, dst, perr);
    case PF_SHA256:
        if (o->type != MSGPACK_OBJECT_BIN)
            return proto_fail(perr, PROTO_E_BAD_FIELD, f->name, "must be bin");
        if (o->via.bin.size != 32)
            return proto_fail(perr, PROTO_E_BAD_FIELD, f->name, "must be 32 bytes, not %u",
                              o->via.bin.size);
        memcpy(dst, o->via.bin.ptr, 32);
        return 0;
    }
    return proto_fail(perr, PROTO_E_INTERNAL, f->name, "unknown field kind");
}

int proto_table_decode(const struct proto_table *t, const msgpack_object *map, void *base,
                       uint32_t *set, struct proto_error *perr)
{
    uint32_t got = 0;
    for (size_t i = 0; i < t->n; i++) {
        const struct proto_field *f = &t->f[i];
        bool dup;
        const msgpack_object *o = proto_map_get(map, f->name, &dup);
        if (!o) {
            if (f->required)
                return proto_fail(perr, PROTO_E_BAD_FIELD, f->name, "missing");
            continue;
        }
        if (dup)
            return proto_fail(perr, PROTO_E_BAD_FIELD, f->name, "appears more than once");
        int rc = decode_field(f, o, base, perr);
        if (rc)
            return rc;
        got |= f->bit;
    }
    if (set)
        *set = got;
    return 0;
}

/* ---- Encoding ---- */

static int writer_cb(void *data, const char *buf, size_t len)
{
    struct proto_writer *w = data;
    if (w->failed || msgpack_sbuffer_write(w->sb, buf, len) != 0) {
        w->failed = true;
        return -1;
    }
    return 0;
}

void proto_writer_init(struct proto_writer *w, msgpack_sbuffer *sb)
{
    w->sb = sb;
    w->start = sb->size;
    w->failed = false;
    msgpack_packer_init(&w->pk, w, writer_cb);
}

int proto_writer_finish(struct proto_writer *w)
{
    if (!w->failed)
        return 0;
    w->sb->size = w->start;
    return err_set(ERR_NOMEM, "out of memory encoding a message");
}

void proto_pack_cstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

static bool field_on(const struct proto_field *f, uint32_t set)
{
    return f->required || (f->bit & set);
}

uint32_t proto_table_count(const struct proto_table *t, uint32_t set)
{
    uint32_t n = 0;
    for (size_t i = 0; i < t->n; i++)
        n += field_on(&t->f[i], set);
    return n;
}

void proto_table_encode(const struct proto_table *t, const void *base, uint32_t set,
                        msgpack_packer *pk)
{
    const char *b = base;
    for (size_t i = 0; i < t->n; i++) {
        const struct proto_field *f = &t->f[i];
        if (!field_on(f, set))
            continue;
        proto_pack_cstr(pk, f->name);
        const void *src = b + f->off;
        switch (f->kind) {
        case PF_STR: proto_pack_cstr(pk, src); break;
        case PF_U32: msgpack_pack_uint32(pk, *(const uint32_t *)src); break;
        case PF_I32: msgpack_pack_int32(pk, *(const int32_t *)src); break;
        case PF_U64: msgpack_pack_uint64(pk, *(const uint64_t *)src); break;
        case PF_F64: msgpack_pack_double(pk, *(const double *)src); break;
        case PF_BOOL:
            if (*(const bool *)src)
                msgpack_pack_true(pk);
            else
                msgpack_pack_false(pk);
            break;
        case PF_STATE: proto_pack_cstr(pk, proto_state_name(*(const enum proto_state *)src)); break;
        case PF_HEURISTIC:
            proto_pack_cstr(pk, proto_heuristic_name(*(const enum proto_heuristic *)src));
            break;
        case PF_SUBJECTS:
            proto_subjects_encode(pk, src);
            break;
        case PF_SHA256: msgpack_pack_bin_with_body(pk, src, 32); break;
        }
    }
}

void proto_submit_init(struct proto_submit *s)
{
    memset(s, 0, sizeof *s);
    s->steps = PROTO_DEFAULT_STEPS;
    s->guidance = PROTO_DEFAULT_GUIDANCE;
    s->width = s->height = PROTO_DEFAULT_SIZE;
    s->max_seq = PROTO_DEFAULT_MAX_SEQ;
    s->count = 1;
    s->focus_lambda = PROTO_DEFAULT_FOCUS_LAMBDA;
    s->focus_heuristic = PROTO_HEURISTIC_FOCUS;
}

uint32_t proto_params_set(const struct proto_submit *s)
{
    return PROTO_SUBMIT_PARAMS | (s->subjects.n ? PROTO_SUBMIT_FOCUS : 0);
}
