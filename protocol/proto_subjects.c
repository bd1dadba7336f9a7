/* The subjects of a FOCUS-controlled submit (focusd-protocol(7), submit): an array of 1 to
 * PROTO_SUBJECTS_MAX entries, each a phrase of the prompt (str) or a map of token positions
 * {"t5": [...], "clip": [...], "phrase": label}. Decoded for the daemon and for the params of
 * replies, encoded for both, and packed alone for the job stores. Whether a phrase is in the
 * prompt, or subjects overlap, is the engine's to say: it knows the tokenizers. */
#include "protocol/proto_internal.h"

#include "common/err.h"

#include <string.h>

#define FIELD "subjects"

/* One position list of entry k: an array of at most PROTO_SUBJECT_POSITIONS_MAX integers in
 * 0..max. */
static int decode_positions(const msgpack_object *o, uint32_t k, const char *name, int64_t max,
                            uint32_t *n, int64_t *out, struct proto_error *perr)
{
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return proto_fail(perr, PROTO_E_BAD_FIELD, FIELD, "subjects[%u]: %s must be an array", k,
                          name);
    if (o->via.array.size > PROTO_SUBJECT_POSITIONS_MAX)
        return proto_fail(perr, PROTO_E_BAD_FIELD, FIELD,
                          "subjects[%u]: %s has %u positions, more than %d", k, name,
                          o->via.array.size, PROTO_SUBJECT_POSITIONS_MAX);
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *v = &o->via.array.ptr[i];
        if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            return proto_fail(perr, PROTO_E_BAD_FIELD, FIELD,
                              "subjects[%u]: %s[%u]: %lld is out of range 0..%lld", k, name, i,
                              (long long)v->via.i64, (long long)max);
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return proto_fail(perr, PROTO_E_BAD_FIELD, FIELD,
                              "subjects[%u]: %s[%u] must be an integer", k, name, i);
        if (v->via.u64 > (uint64_t)max)
            return proto_fail(perr, PROTO_E_BAD_FIELD, FIELD,
                              "subjects[%u]: %s[%u]: %llu is out of range 0..%lld", k, name, i,
                              (unsigned long long)v->via.u64, (long long)max);
        out[i] = (int64_t)v->via.u64;
    }
    *n = o->via.array.size;
    return 0;
}

/* A str of entry k into dst[PROTO_MAX_PHRASE + 1], the message naming the entry. */
static int copy_phrase(const msgpack_object *o, uint32_t k, char *dst, struct proto_error *perr)
{
    struct proto_error e;
    if (proto_copy_str(o, dst, PROTO_MAX_PHRASE, FIELD, &e) == 0) return 0;
    return proto_fail(perr, e.code, FIELD, "subjects[%u]: phrase: %s", k, e.message);
}

static int decode_map(const msgpack_object *o, uint32_t k, struct proto_subject *s,
                      struct proto_error *perr)
{
    int64_t pos[PROTO_SUBJECT_POSITIONS_MAX];
    uint32_t n;
    int rc = 0;
    for (uint32_t i = 0; !rc && i < o->via.map.size; i++) {
        const msgpack_object *key = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        const char *name = key->via.str.ptr; /* the validator made every key a str */
        uint32_t len = key->via.str.size;
        if (len == 6 && memcmp(name, "phrase", 6) == 0) {
            if (v->type != MSGPACK_OBJECT_STR)
                return proto_fail(perr, PROTO_E_BAD_FIELD, FIELD,
                                  "subjects[%u]: phrase must be a string", k);
            rc = copy_phrase(v, k, s->phrase, perr);
        } else if (len == 2 && memcmp(name, "t5", 2) == 0) {
            rc = decode_positions(v, k, "t5", PROTO_T5_POSITION_MAX, &n, pos, perr);
            for (uint32_t j = 0; !rc && j < n; j++)
                s->t5[j] = (uint16_t)pos[j];
            if (!rc) s->n_t5 = (uint8_t)n;
        } else if (len == 4 && memcmp(name, "clip", 4) == 0) {
            rc = decode_positions(v, k, "clip", PROTO_CLIP_POSITION_MAX, &n, pos, perr);
            for (uint32_t j = 0; !rc && j < n; j++)
                s->clip[j] = (uint8_t)pos[j];
            if (!rc) s->n_clip = (uint8_t)n;
        } else {
            return proto_fail(perr, PROTO_E_BAD_FIELD, FIELD,
                              "subjects[%u]: unknown key \"%.*s\" (t5, clip, phrase)", k,
                              (int)(len > PROTO_MAX_FIELD ? PROTO_MAX_FIELD : len),
                              len ? name : ""); /* an empty key's ptr may be NULL */
        }
    }
    if (!rc && s->n_t5 == 0 && s->n_clip == 0)
        rc = proto_fail(perr, PROTO_E_BAD_FIELD, FIELD, "subjects[%u]: needs t5 or clip positions",
                        k);
    return rc;
}

int proto_subjects_decode(const msgpack_object *o, struct proto_subjects *s,
                          struct proto_error *perr)
{
    memset(s, 0, sizeof *s);
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return proto_fail(perr, PROTO_E_BAD_FIELD, FIELD, "must be an array");
    uint32_t n = o->via.array.size;
    if (n < 1 || n > PROTO_SUBJECTS_MAX)
        return proto_fail(perr, PROTO_E_BAD_FIELD, FIELD, "%u subjects; 1 to %d are allowed", n,
                          PROTO_SUBJECTS_MAX);
    for (uint32_t k = 0; k < n; k++) {
        const msgpack_object *e = &o->via.array.ptr[k];
        struct proto_subject *d = &s->s[k];
        int rc;
        if (e->type == MSGPACK_OBJECT_STR) {
            rc = e->via.str.size == 0 ? proto_fail(perr, PROTO_E_BAD_FIELD, FIELD,
                                                   "subjects[%u]: the phrase is empty", k)
                                      : copy_phrase(e, k, d->phrase, perr);
        } else if (e->type == MSGPACK_OBJECT_MAP) {
            rc = decode_map(e, k, d, perr);
        } else {
            rc = proto_fail(perr, PROTO_E_BAD_FIELD, FIELD,
                            "subjects[%u] must be a phrase (string) or a map of positions", k);
        }
        if (rc) {
            memset(s, 0, sizeof *s);
            return rc;
        }
    }
    s->n = n;
    return 0;
}

void proto_subjects_encode(msgpack_packer *pk, const struct proto_subjects *s)
{
    msgpack_pack_array(pk, s->n);
    for (uint32_t k = 0; k < s->n; k++) {
        const struct proto_subject *e = &s->s[k];
        if (!e->n_t5 && !e->n_clip) {
            proto_pack_cstr(pk, e->phrase);
            continue;
        }
        msgpack_pack_map(pk, (e->phrase[0] != 0) + (e->n_t5 != 0) + (e->n_clip != 0));
        if (e->phrase[0]) {
            proto_pack_cstr(pk, "phrase");
            proto_pack_cstr(pk, e->phrase);
        }
        if (e->n_t5) {
            proto_pack_cstr(pk, "t5");
            msgpack_pack_array(pk, e->n_t5);
            for (int i = 0; i < e->n_t5; i++)
                msgpack_pack_uint16(pk, e->t5[i]);
        }
        if (e->n_clip) {
            proto_pack_cstr(pk, "clip");
            msgpack_pack_array(pk, e->n_clip);
            for (int i = 0; i < e->n_clip; i++)
                msgpack_pack_uint8(pk, e->clip[i]);
        }
    }
}

int proto_subjects_pack(msgpack_sbuffer *sb, const struct proto_subjects *s)
{
    if (!s->n) return 0;
    struct proto_writer w;
    proto_writer_init(&w, sb);
    msgpack_pack_map(&w.pk, 1);
    proto_pack_cstr(&w.pk, FIELD);
    proto_subjects_encode(&w.pk, s);
    return proto_writer_finish(&w);
}

int proto_subjects_unpack(const void *buf, size_t len, struct proto_subjects *s,
                          struct proto_error *perr)
{
    memset(s, 0, sizeof *s);
    if (len == 0) return 0;
    int rc = proto_validate(buf, len, &proto_request_limits, perr);
    if (rc) return rc;
    msgpack_zone zone;
    if (!msgpack_zone_init(&zone, 4096))
        return proto_fail(perr, PROTO_E_INTERNAL, NULL, "out of memory");
    msgpack_object root;
    size_t off = 0;
    bool dup = false;
    const msgpack_object *o = NULL;
    if (msgpack_unpack(buf, len, &off, &zone, &root) == MSGPACK_UNPACK_SUCCESS)
        o = proto_map_get(&root, FIELD, &dup);
    if (!o || dup)
        rc = proto_fail(perr, PROTO_E_BAD_MESSAGE, FIELD, "not one packed subjects array");
    else if (!(rc = proto_check_unique_keys(o, perr)))
        rc = proto_subjects_decode(o, s, perr);
    msgpack_zone_destroy(&zone);
    return rc;
}
