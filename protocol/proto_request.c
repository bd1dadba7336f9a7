/* Requests: the daemon's decoder for untrusted request frames (validate, unpack, envelope, op
 * fields) and the clients' encoder. The checks run in the order the page gives: frame limits,
 * then "v", "id", "op", then the op's fields, each for presence, length, type and range. */
#include "protocol/proto_internal.h"

#include "common/err.h"

#include <string.h>

void proto_request_init(struct proto_request *r, enum proto_op op)
{
    memset(r, 0, sizeof *r);
    r->op = op;
    if (op == PROTO_OP_SUBMIT)
        proto_submit_init(&r->u.submit);
    else if (op == PROTO_OP_JOBS)
        r->u.jobs.limit = PROTO_JOBS_LIMIT_DEFAULT;
    else if (op == PROTO_OP_WAIT)
        r->u.wait.timeout = PROTO_WAIT_DEFAULT;
}

/* Reads "id" into *id; on failure *id stays NONE and the error is reported. */
static int parse_id(const msgpack_object *map, struct proto_id *id, struct proto_error *perr)
{
    bool dup;
    const msgpack_object *o = proto_map_get(map, "id", &dup);
    if (!o)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "id", "missing");
    if (dup)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "id", "appears more than once");
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        id->kind = PROTO_ID_UINT;
        id->u = o->via.u64;
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_STR)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "id",
                          "must be an unsigned integer or a string");
    if (o->via.str.size == 0)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "id", "must not be empty");
    int rc = proto_copy_str(o, id->s, PROTO_MAX_ID, "id", perr);
    if (rc == 0)
        id->kind = PROTO_ID_STR;
    return rc;
}

int proto_check_version(const msgpack_object *map, struct proto_error *perr)
{
    bool dup;
    const msgpack_object *o = proto_map_get(map, "v", &dup);
    if (!o)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "v", "missing");
    if (dup)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "v", "appears more than once");
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER && o->type != MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "v", "must be an integer");
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 != PROTO_VERSION)
        return proto_fail(perr, PROTO_E_UNSUPPORTED_VERSION, "v",
                          "only protocol version %d is supported", PROTO_VERSION);
    return 0;
}

static int parse_op(const msgpack_object *map, enum proto_op *op, struct proto_error *perr)
{
    bool dup;
    const msgpack_object *o = proto_map_get(map, "op", &dup);
    if (!o)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "op", "missing");
    if (dup)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "op", "appears more than once");
    if (o->type != MSGPACK_OBJECT_STR)
        return proto_fail(perr, PROTO_E_BAD_FIELD, "op", "must be a string");
    if (proto_op_parse(o->via.str.ptr, o->via.str.size, op) != 0)
        return proto_fail(perr, PROTO_E_UNKNOWN_OP, "op", "unknown op \"%.*s\"",
                          (int)(o->via.str.size > 64 ? 64 : o->via.str.size), o->via.str.ptr);
    return 0;
}

static int parse_fields(const msgpack_object *map, struct proto_request *req,
                        struct proto_error *perr)
{
    /* The id is read before anything else can fail, so that error replies can echo it; its
     * own error comes after the version's. */
    struct proto_error id_err;
    int id_rc = parse_id(map, &req->id, &id_err);
    int rc = proto_check_version(map, perr);
    if (rc)
        return rc;
    if (id_rc)
        return proto_fail(perr, id_err.code, id_err.field, "%s", id_err.message);
    /* A repeated key is refused even where the op ignores it: a reader that took the other
     * value would see another request. */
    if ((rc = proto_check_unique_keys(map, perr)))
        return rc;
    enum proto_op op;
    rc = parse_op(map, &op, perr);
    if (rc)
        return rc;
    struct proto_id id = req->id;
    proto_request_init(req, op);
    req->id = id;
    uint32_t set;
    rc = proto_table_decode(&proto_op_tables[op], map, &req->u, &set, perr);
    if (rc)
        return rc;
    if (op == PROTO_OP_SUBMIT)
        req->u.submit.set = set;
    else if (op == PROTO_OP_JOBS)
        req->u.jobs.has_state = set & 1;
    return 0;
}

int proto_parse_request(const void *buf, size_t len, struct proto_request *req,
                        struct proto_error *perr)
{
    memset(req, 0, sizeof *req);
    int rc = proto_validate(buf, len, &proto_request_limits, perr);
    if (rc)
        return rc;
    msgpack_zone zone;
    if (!msgpack_zone_init(&zone, 4096))
        return proto_fail(perr, PROTO_E_INTERNAL, NULL, "out of memory");
    msgpack_object root;
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack(buf, len, &off, &zone, &root);
    if (ur != MSGPACK_UNPACK_SUCCESS || root.type != MSGPACK_OBJECT_MAP)
        rc = proto_fail(perr, ur == MSGPACK_UNPACK_NOMEM_ERROR ? PROTO_E_INTERNAL
                                                               : PROTO_E_BAD_MESSAGE,
                        NULL, "MessagePack decoding failed (%d)", (int)ur);
    else
        rc = parse_fields(&root, req, perr);
    msgpack_zone_destroy(&zone);
    return rc;
}

static void pack_id(msgpack_packer *pk, const struct proto_id *id)
{
    if (id->kind == PROTO_ID_UINT)
        msgpack_pack_uint64(pk, id->u);
    else if (id->kind == PROTO_ID_STR)
        proto_pack_cstr(pk, id->s);
    else
        msgpack_pack_nil(pk);
}

void proto_pack_envelope_id(msgpack_packer *pk, const struct proto_id *id)
{
    proto_pack_cstr(pk, "v");
    msgpack_pack_uint32(pk, PROTO_VERSION);
    proto_pack_cstr(pk, "id");
    pack_id(pk, id);
}

int proto_encode_request(msgpack_sbuffer *sb, const struct proto_request *req)
{
    if ((unsigned)req->op >= PROTO_OP_COUNT)
        return err_set(ERR_INVALID, "proto_encode_request: bad op %d", (int)req->op);
    if (req->id.kind == PROTO_ID_NONE)
        return err_set(ERR_INVALID, "proto_encode_request: a request needs an id");
    const struct proto_table *t = &proto_op_tables[req->op];
    /* Which optional fields to send: submit says so itself; hello's client goes when given,
     * the others always. */
    uint32_t set = PROTO_SUBMIT_ALL;
    if (req->op == PROTO_OP_SUBMIT)
        set = req->u.submit.set;
    else if (req->op == PROTO_OP_HELLO)
        set = req->u.hello.client[0] ? 1u : 0u;
    else if (req->op == PROTO_OP_JOBS)
        set = (req->u.jobs.has_state ? 1u : 0u) | 2u | (req->u.jobs.cursor[0] ? 4u : 0u);
    else if (req->op == PROTO_OP_WATCH)
        set = req->u.job.png ? 1u : 0u;
    struct proto_writer w;
    proto_writer_init(&w, sb);
    msgpack_pack_map(&w.pk, 3 + proto_table_count(t, set));
    proto_pack_envelope_id(&w.pk, &req->id);
    proto_pack_cstr(&w.pk, "op");
    proto_pack_cstr(&w.pk, proto_op_name(req->op));
    proto_table_encode(t, &req->u, set, &w.pk);
    return proto_writer_finish(&w);
}
