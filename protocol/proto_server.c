/* What the daemon sends: the encoders of replies and events (daemon side) and their decoders
 * (client side). Replies are {"v", "id", "ok", ...}; events are {"v", "event", "job", ...}.
 * The decoders trust nothing either: a frame from a daemon goes through the same validator,
 * with the larger proto_server_limits, and every field is checked as in a request. */
#include "protocol/proto_internal.h"

#include "common/err.h"

#include <string.h>

/* ---- Encoding ---- */

static void pack_ok_header(struct proto_writer *w, const struct proto_id *id, uint32_t extra)
{
    msgpack_pack_map(&w->pk, 3 + extra);
    proto_pack_envelope_id(&w->pk, id);
    proto_pack_cstr(&w->pk, "ok");
    msgpack_pack_true(&w->pk);
}

static void pack_error_map(msgpack_packer *pk, enum proto_errcode code, const char *field,
                           const char *message, const char *limit)
{
    bool has_limit = limit && *limit;
    msgpack_pack_map(pk, 3 + has_limit);
    proto_pack_cstr(pk, "code");
    proto_pack_cstr(pk, proto_errcode_name(code));
    proto_pack_cstr(pk, "field");
    if (field && *field)
        proto_pack_cstr(pk, field);
    else
        msgpack_pack_nil(pk);
    proto_pack_cstr(pk, "message");
    proto_pack_cstr(pk, message ? message : "");
    if (has_limit) {
        proto_pack_cstr(pk, "limit");
        proto_pack_cstr(pk, limit);
    }
}

static int reply_error(msgpack_sbuffer *sb, const struct proto_id *id, enum proto_errcode code,
                       const char *field, const char *message, const char *limit)
{
    struct proto_writer w;
    proto_writer_init(&w, sb);
    msgpack_pack_map(&w.pk, 4);
    proto_pack_envelope_id(&w.pk, id);
    proto_pack_cstr(&w.pk, "ok");
    msgpack_pack_false(&w.pk);
    proto_pack_cstr(&w.pk, "error");
    pack_error_map(&w.pk, code, field, message, limit);
    return proto_writer_finish(&w);
}

int proto_reply_error(msgpack_sbuffer *sb, const struct proto_id *id, enum proto_errcode code,
                      const char *field, const char *message)
{
    return reply_error(sb, id, code, field, message, NULL);
}

int proto_reply_refusal(msgpack_sbuffer *sb, const struct proto_id *id,
                        const struct proto_error *e)
{
    return reply_error(sb, id, e->code, e->field, e->message, e->limit);
}

int proto_reply_hello(msgpack_sbuffer *sb, const struct proto_id *id,
                      const struct proto_hello_reply *h)
{
    struct proto_writer w;
    proto_writer_init(&w, sb);
    pack_ok_header(&w, id, proto_table_count(&proto_hello_table, 0) + 2);
    proto_table_encode(&proto_hello_table, h, 0, &w.pk);
    proto_pack_cstr(&w.pk, "models");
    msgpack_pack_array(&w.pk, h->n_models);
    for (size_t i = 0; i < h->n_models; i++)
        proto_pack_cstr(&w.pk, h->models[i]);
    const struct {
        const char *name;
        int64_t value;
    } limits[] = {
        {"max_request", PROTO_MAX_REQUEST},
        {"max_depth", proto_request_limits.max_depth},
        {"max_entries", proto_request_limits.max_entries},
        {"max_prompt", PROTO_MAX_PROMPT},
        {"max_name", PROTO_MAX_NAME},
        {"max_id", PROTO_MAX_ID},
        {"steps_min", PROTO_STEPS_MIN},
        {"steps_max", PROTO_STEPS_MAX},
        {"size_min", PROTO_SIZE_MIN},
        {"size_max", PROTO_SIZE_MAX},
        {"size_step", PROTO_SIZE_STEP},
        {"max_seq_min", PROTO_MAX_SEQ_MIN},
        {"max_seq_max", PROTO_MAX_SEQ_MAX},
        {"count_max", PROTO_COUNT_MAX},
        {"priority_min", PROTO_PRIORITY_MIN},
        {"priority_max", PROTO_PRIORITY_MAX},
        {"jobs_limit_max", PROTO_JOBS_LIMIT_MAX},
        {"subjects_max", PROTO_SUBJECTS_MAX},
        {"subject_positions_max", PROTO_SUBJECT_POSITIONS_MAX},
        {"max_phrase", PROTO_MAX_PHRASE},
        {"t5_position_max", PROTO_T5_POSITION_MAX},
        {"clip_position_max", PROTO_CLIP_POSITION_MAX},
    };
    size_t nl = sizeof limits / sizeof *limits;
    proto_pack_cstr(&w.pk, "limits");
    msgpack_pack_map(&w.pk, nl + 2 + h->n_daemon_limits);
    for (size_t i = 0; i < nl; i++) {
        proto_pack_cstr(&w.pk, limits[i].name);
        msgpack_pack_int64(&w.pk, limits[i].value);
    }
    for (size_t i = 0; i < h->n_daemon_limits; i++) {
        proto_pack_cstr(&w.pk, h->daemon_limits[i].name);
        msgpack_pack_uint64(&w.pk, h->daemon_limits[i].value);
    }
    proto_pack_cstr(&w.pk, "guidance_max");
    msgpack_pack_double(&w.pk, PROTO_GUIDANCE_MAX);
    proto_pack_cstr(&w.pk, "focus_lambda_max");
    msgpack_pack_double(&w.pk, PROTO_FOCUS_LAMBDA_MAX);
    return proto_writer_finish(&w);
}

int proto_reply_submit(msgpack_sbuffer *sb, const struct proto_id *id, const char *job)
{
    struct proto_writer w;
    proto_writer_init(&w, sb);
    pack_ok_header(&w, id, 1);
    proto_pack_cstr(&w.pk, "job");
    proto_pack_cstr(&w.pk, job);
    return proto_writer_finish(&w);
}

static void pack_params(msgpack_packer *pk, const struct proto_submit *p)
{
    uint32_t set = proto_params_set(p);
    proto_pack_cstr(pk, "params");
    msgpack_pack_map(pk, proto_table_count(&proto_submit_table, set));
    proto_table_encode(&proto_submit_table, p, set, pk);
}

static uint32_t status_pairs(const struct proto_job_status *st)
{
    return proto_table_count(&proto_status_table, 0) + 1 + (st->error.code != PROTO_E_NONE);
}

static void pack_status_pairs(msgpack_packer *pk, const struct proto_job_status *st)
{
    proto_table_encode(&proto_status_table, st, 0, pk);
    pack_params(pk, &st->params);
    if (st->error.code != PROTO_E_NONE) {
        proto_pack_cstr(pk, "error");
        pack_error_map(pk, st->error.code, st->error.field, st->error.message, NULL);
    }
}

int proto_reply_job(msgpack_sbuffer *sb, const struct proto_id *id,
                    const struct proto_job_status *st)
{
    struct proto_writer w;
    proto_writer_init(&w, sb);
    pack_ok_header(&w, id, status_pairs(st));
    pack_status_pairs(&w.pk, st);
    return proto_writer_finish(&w);
}

int proto_reply_jobs(msgpack_sbuffer *sb, const struct proto_id *id,
                     const struct proto_job_status *jobs, size_t n, const char *next)
{
    struct proto_writer w;
    proto_writer_init(&w, sb);
    pack_ok_header(&w, id, 1 + (next != NULL));
    proto_pack_cstr(&w.pk, "jobs");
    msgpack_pack_array(&w.pk, n);
    for (size_t i = 0; i < n; i++) {
        msgpack_pack_map(&w.pk, status_pairs(&jobs[i]));
        pack_status_pairs(&w.pk, &jobs[i]);
    }
    if (next) {
        proto_pack_cstr(&w.pk, "next");
        proto_pack_cstr(&w.pk, next);
    }
    return proto_writer_finish(&w);
}

int proto_reply_fetch(msgpack_sbuffer *sb, const struct proto_id *id,
                      const struct proto_image *img)
{
    struct proto_writer w;
    proto_writer_init(&w, sb);
    pack_ok_header(&w, id, proto_table_count(&proto_image_table, 0) + 2);
    proto_table_encode(&proto_image_table, img, 0, &w.pk);
    proto_pack_cstr(&w.pk, "png");
    msgpack_pack_bin_with_body(&w.pk, img->png, img->png_len);
    pack_params(&w.pk, &img->params);
    return proto_writer_finish(&w);
}

int proto_reply_models(msgpack_sbuffer *sb, const struct proto_id *id,
                       const struct proto_model_info *models, size_t n)
{
    struct proto_writer w;
    proto_writer_init(&w, sb);
    pack_ok_header(&w, id, 1);
    proto_pack_cstr(&w.pk, "models");
    msgpack_pack_array(&w.pk, n);
    for (size_t i = 0; i < n; i++) {
        msgpack_pack_map(&w.pk, proto_table_count(&proto_model_table, 0));
        proto_table_encode(&proto_model_table, &models[i], 0, &w.pk);
    }
    return proto_writer_finish(&w);
}

int proto_reply_stats(msgpack_sbuffer *sb, const struct proto_id *id,
                      const struct proto_stats *st)
{
    struct proto_writer w;
    proto_writer_init(&w, sb);
    pack_ok_header(&w, id, proto_table_count(&proto_stats_table, 0));
    proto_table_encode(&proto_stats_table, st, 0, &w.pk);
    return proto_writer_finish(&w);
}

int proto_reply_pong(msgpack_sbuffer *sb, const struct proto_id *id)
{
    struct proto_writer w;
    proto_writer_init(&w, sb);
    pack_ok_header(&w, id, 0);
    return proto_writer_finish(&w);
}

/* The proto_event_table bits each kind carries (position 1, step 2, steps 4, elapsed 8,
 * eta 16, images 32); failed also carries an error map. */
static const uint32_t event_bits[PROTO_EV_COUNT] = {
    [PROTO_EV_QUEUED] = 1,
    [PROTO_EV_STARTED] = 4,
    [PROTO_EV_PROGRESS] = 2 | 4 | 8 | 16,
    [PROTO_EV_DONE] = 32 | 8,
    [PROTO_EV_FAILED] = 0,
    [PROTO_EV_CANCELED] = 0,
};

int proto_event_encode(msgpack_sbuffer *sb, const struct proto_event *ev)
{
    if ((unsigned)ev->kind >= PROTO_EV_COUNT)
        return err_set(ERR_INVALID, "proto_event_encode: bad kind %d", (int)ev->kind);
    uint32_t bits = event_bits[ev->kind] | PROTO_EVENT_SEQ_BIT;
    bool failed = ev->kind == PROTO_EV_FAILED;
    struct proto_writer w;
    proto_writer_init(&w, sb);
    bool pngs = ev->kind == PROTO_EV_DONE && ev->n_png > 0;
    msgpack_pack_map(&w.pk, 2 + proto_table_count(&proto_event_table, bits) + failed + 2 * pngs);
    proto_pack_cstr(&w.pk, "v");
    msgpack_pack_uint32(&w.pk, PROTO_VERSION);
    proto_pack_cstr(&w.pk, "event");
    proto_pack_cstr(&w.pk, proto_event_name(ev->kind));
    proto_table_encode(&proto_event_table, ev, bits, &w.pk);
    if (failed) {
        proto_pack_cstr(&w.pk, "error");
        pack_error_map(&w.pk, ev->error.code, ev->error.field, ev->error.message, NULL);
    }
    if (pngs) {
        proto_pack_cstr(&w.pk, "png");
        msgpack_pack_array(&w.pk, ev->n_png);
        for (uint32_t i = 0; i < ev->n_png; i++)
            msgpack_pack_bin_with_body(&w.pk, ev->png[i], ev->png_len[i]);
        proto_pack_cstr(&w.pk, "sha256");
        msgpack_pack_array(&w.pk, ev->n_png);
        for (uint32_t i = 0; i < ev->n_png; i++)
            msgpack_pack_bin_with_body(&w.pk, ev->png_sha256[i], 32);
    }
    return proto_writer_finish(&w);
}

/* ---- Decoding ---- */

/* The value under key, which must have type t (or be absent when optional). *rc receives 0 or
 * the error. */
static const msgpack_object *get_typed(const msgpack_object *map, const char *key,
                                       msgpack_object_type t, bool optional, int *rc,
                                       struct proto_error *perr)
{
    static const char *const type_names[] = {
        [MSGPACK_OBJECT_MAP] = "a map", [MSGPACK_OBJECT_ARRAY] = "an array",
        [MSGPACK_OBJECT_BIN] = "bin", [MSGPACK_OBJECT_BOOLEAN] = "true or false",
    };
    bool dup;
    const msgpack_object *o = proto_map_get(map, key, &dup);
    *rc = 0;
    if (!o) {
        if (!optional)
            *rc = proto_fail(perr, PROTO_E_BAD_FIELD, key, "missing");
        return NULL;
    }
    if (dup)
        *rc = proto_fail(perr, PROTO_E_BAD_FIELD, key, "appears more than once");
    else if (o->type != t)
        *rc = proto_fail(perr, PROTO_E_BAD_FIELD, key, "must be %s", type_names[t]);
    return *rc ? NULL : o;
}

static int decode_error_map(const msgpack_object *map, struct proto_error *e,
                            struct proto_error *perr)
{
    memset(e, 0, sizeof *e);
    bool dup;
    const msgpack_object *code = proto_map_get(map, "code", &dup);
    if (!code || code->type != MSGPACK_OBJECT_STR)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "error.code", "must be a string");
    e->code = proto_errcode_parse(code->via.str.ptr, code->via.str.size);
    const msgpack_object *field = proto_map_get(map, "field", &dup);
    if (field && field->type != MSGPACK_OBJECT_NIL) {
        int rc = proto_copy_str(field, e->field, PROTO_MAX_FIELD, "error.field", perr);
        if (rc)
            return rc;
    }
    const msgpack_object *limit = proto_map_get(map, "limit", &dup);
    if (limit) {
        int rc = proto_copy_str(limit, e->limit, PROTO_MAX_FIELD, "error.limit", perr);
        if (rc)
            return rc;
    }
    const msgpack_object *msg = proto_map_get(map, "message", &dup);
    if (!msg)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "error.message", "missing");
    return proto_copy_str(msg, e->message, PROTO_MAX_TEXT, "error.message", perr);
}

static int decode_event(const msgpack_object *root, const msgpack_object *name,
                        struct proto_event *ev, struct proto_error *perr)
{
    memset(ev, 0, sizeof *ev);
    if (name->type != MSGPACK_OBJECT_STR)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "event", "must be a string");
    int k = proto_event_parse_name(name->via.str.ptr, name->via.str.size);
    if (k < 0)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "event", "unknown event \"%.*s\"",
                          (int)(name->via.str.size > 64 ? 64 : name->via.str.size),
                          name->via.str.ptr);
    ev->kind = (enum proto_event_kind)k;
    uint32_t set;
    int rc = proto_table_decode(&proto_event_table, root, ev, &set, perr);
    if (rc)
        return rc;
    uint32_t need = event_bits[k] & ~set;
    for (size_t i = 0; need && i < proto_event_table.n; i++)
        if (proto_event_table.f[i].bit & need)
            return proto_fail(perr, PROTO_E_BAD_FIELD, proto_event_table.f[i].name,
                              "missing from a %s event", proto_event_name(ev->kind));
    if (ev->kind != PROTO_EV_FAILED)
        return 0;
    const msgpack_object *e = get_typed(root, "error", MSGPACK_OBJECT_MAP, false, &rc, perr);
    return rc ? rc : decode_error_map(e, &ev->error, perr);
}

static int decode_reply_envelope(const msgpack_object *root, struct proto_incoming *in,
                                 struct proto_error *perr)
{
    bool dup;
    const msgpack_object *id = proto_map_get(root, "id", &dup);
    if (!id)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "id", "missing");
    if (id->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        in->id.kind = PROTO_ID_UINT;
        in->id.u = id->via.u64;
    } else if (id->type == MSGPACK_OBJECT_STR) {
        int rc = proto_copy_str(id, in->id.s, PROTO_MAX_ID, "id", perr);
        if (rc)
            return rc;
        in->id.kind = PROTO_ID_STR;
    } else if (id->type != MSGPACK_OBJECT_NIL) {
        return proto_fail(perr, PROTO_E_BAD_FIELD, "id", "must be nil, an integer or a string");
    }
    int rc;
    const msgpack_object *ok = get_typed(root, "ok", MSGPACK_OBJECT_BOOLEAN, false, &rc, perr);
    if (rc)
        return rc;
    in->ok = ok->via.boolean;
    if (in->ok)
        return 0;
    const msgpack_object *e = get_typed(root, "error", MSGPACK_OBJECT_MAP, false, &rc, perr);
    return rc ? rc : decode_error_map(e, &in->error, perr);
}

static int parse_incoming(const void *buf, size_t len, struct proto_incoming *in,
                          struct proto_error *perr)
{
    int rc = proto_validate(buf, len, &proto_server_limits, perr);
    if (rc)
        return rc;
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack(buf, len, &off, &in->zone, &in->body);
    if (ur != MSGPACK_UNPACK_SUCCESS || in->body.type != MSGPACK_OBJECT_MAP)
        return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL, "MessagePack decoding failed (%d)",
                          (int)ur);
    rc = proto_check_version(&in->body, perr);
    if (rc || (rc = proto_check_unique_keys(&in->body, perr)))
        return rc;
    bool dup;
    const msgpack_object *name = proto_map_get(&in->body, "event", &dup);
    if (name) {
        in->is_event = true;
        return decode_event(&in->body, name, &in->event, perr);
    }
    return decode_reply_envelope(&in->body, in, perr);
}

int proto_parse_incoming(const void *buf, size_t len, struct proto_incoming *in,
                         struct proto_error *perr)
{
    memset(in, 0, sizeof *in);
    if (!msgpack_zone_init(&in->zone, 4096))
        return proto_fail(perr, PROTO_E_INTERNAL, NULL, "out of memory");
    int rc = parse_incoming(buf, len, in, perr);
    if (rc)
        proto_incoming_free(in);
    return rc;
}

void proto_incoming_free(struct proto_incoming *in)
{
    msgpack_zone_destroy(&in->zone);
    memset(in, 0, sizeof *in);
}

static int need_ok_reply(const struct proto_incoming *in, struct proto_error *perr)
{
    if (in->is_event || !in->ok)
        return proto_fail(perr, PROTO_E_INTERNAL, NULL, "not a successful reply");
    return 0;
}

static void *zone_alloc(struct proto_incoming *in, size_t n, struct proto_error *perr, int *rc)
{
    void *p = n ? msgpack_zone_malloc(&in->zone, n) : NULL;
    *rc = n && !p ? proto_fail(perr, PROTO_E_INTERNAL, NULL, "out of memory") : 0;
    if (p)
        memset(p, 0, n);
    return p;
}

int proto_decode_hello(struct proto_incoming *in, struct proto_hello_reply *h,
                       struct proto_error *perr)
{
    memset(h, 0, sizeof *h);
    int rc = need_ok_reply(in, perr);
    if (rc || (rc = proto_table_decode(&proto_hello_table, &in->body, h, NULL, perr)))
        return rc;
    const msgpack_object *a = get_typed(&in->body, "models", MSGPACK_OBJECT_ARRAY, false, &rc,
                                        perr);
    if (rc)
        return rc;
    char **names = zone_alloc(in, a->via.array.size * sizeof *names, perr, &rc);
    for (uint32_t i = 0; !rc && i < a->via.array.size; i++) {
        names[i] = zone_alloc(in, PROTO_MAX_NAME + 1, perr, &rc);
        if (!rc)
            rc = proto_copy_str(&a->via.array.ptr[i], names[i], PROTO_MAX_NAME, "models", perr);
    }
    if (rc)
        return rc;
    h->models = (const char *const *)names;
    h->n_models = a->via.array.size;
    return 0;
}

int proto_decode_submit(struct proto_incoming *in, char job[PROTO_MAX_NAME + 1],
                        struct proto_error *perr)
{
    int rc = need_ok_reply(in, perr);
    if (rc)
        return rc;
    const msgpack_object *o = proto_map_get(&in->body, "job", NULL);
    if (!o)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "job", "missing");
    return proto_copy_str(o, job, PROTO_MAX_NAME, "job", perr);
}

static int decode_params(const msgpack_object *map, struct proto_submit *p,
                         struct proto_error *perr)
{
    int rc;
    const msgpack_object *o = get_typed(map, "params", MSGPACK_OBJECT_MAP, false, &rc, perr);
    if (rc)
        return rc;
    proto_submit_init(p);
    return proto_table_decode(&proto_submit_table, o, p, &p->set, perr);
}

static int decode_status(const msgpack_object *map, struct proto_job_status *st,
                         struct proto_error *perr)
{
    memset(st, 0, sizeof *st);
    int rc = proto_table_decode(&proto_status_table, map, st, NULL, perr);
    if (rc || (rc = decode_params(map, &st->params, perr)))
        return rc;
    const msgpack_object *e = get_typed(map, "error", MSGPACK_OBJECT_MAP, true, &rc, perr);
    if (rc || !e)
        return rc;
    return decode_error_map(e, &st->error, perr);
}

int proto_decode_job(struct proto_incoming *in, struct proto_job_status *st,
                     struct proto_error *perr)
{
    int rc = need_ok_reply(in, perr);
    return rc ? rc : decode_status(&in->body, st, perr);
}

/* The array under key, each element a map, and room for its decoded elements in the zone. */
static const msgpack_object *get_map_array(struct proto_incoming *in, const char *key,
                                           size_t elem, void **out, int *rc,
                                           struct proto_error *perr)
{
    *rc = need_ok_reply(in, perr);
    if (*rc)
        return NULL;
    const msgpack_object *a = get_typed(&in->body, key, MSGPACK_OBJECT_ARRAY, false, rc, perr);
    if (*rc)
        return NULL;
    for (uint32_t i = 0; i < a->via.array.size; i++)
        if (a->via.array.ptr[i].type != MSGPACK_OBJECT_MAP) {
            *rc = proto_fail(perr, PROTO_E_BAD_FIELD, key, "element %u is not a map", i);
            return NULL;
        }
    *out = zone_alloc(in, a->via.array.size * elem, perr, rc);
    return *rc ? NULL : a;
}

int proto_decode_jobs(struct proto_incoming *in, struct proto_job_status **jobs, size_t *n,
                      struct proto_error *perr)
{
    int rc;
    void *mem = NULL;
    const msgpack_object *a = get_map_array(in, "jobs", sizeof **jobs, &mem, &rc, perr);
    struct proto_job_status *out = mem;
    for (uint32_t i = 0; !rc && i < a->via.array.size; i++)
        rc = decode_status(&a->via.array.ptr[i], &out[i], perr);
    if (rc)
        return rc;
    *jobs = out;
    *n = a->via.array.size;
    return 0;
}

int proto_decode_models(struct proto_incoming *in, struct proto_model_info **models,
                        size_t *n, struct proto_error *perr)
{
    int rc;
    void *mem = NULL;
    const msgpack_object *a = get_map_array(in, "models", sizeof **models, &mem, &rc, perr);
    struct proto_model_info *out = mem;
    for (uint32_t i = 0; !rc && i < a->via.array.size; i++)
        rc = proto_table_decode(&proto_model_table, &a->via.array.ptr[i], &out[i], NULL, perr);
    if (rc)
        return rc;
    *models = out;
    *n = a->via.array.size;
    return 0;
}

int proto_decode_fetch(struct proto_incoming *in, struct proto_image *img,
                       struct proto_error *perr)
{
    memset(img, 0, sizeof *img);
    int rc = need_ok_reply(in, perr);
    if (rc || (rc = proto_table_decode(&proto_image_table, &in->body, img, NULL, perr)))
        return rc;
    const msgpack_object *png = get_typed(&in->body, "png", MSGPACK_OBJECT_BIN, false, &rc,
                                          perr);
    if (rc || (rc = decode_params(&in->body, &img->params, perr)))
        return rc;
    img->png = (const uint8_t *)png->via.bin.ptr;
    img->png_len = png->via.bin.size;
    uint8_t sum[32];
    proto_sha256(img->png, img->png_len, sum);
    if (memcmp(sum, img->sha256, 32) != 0)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "sha256", "does not match the PNG bytes");
    return 0;
}

int proto_decode_stats(struct proto_incoming *in, struct proto_stats *st,
                       struct proto_error *perr)
{
    memset(st, 0, sizeof *st);
    int rc = need_ok_reply(in, perr);
    return rc ? rc : proto_table_decode(&proto_stats_table, &in->body, st, NULL, perr);
}
