/* Shared inside protocol/ only: the field tables that drive both decoding and encoding of the
 * flat parts of every message, the packer wrapper that notices allocation failure, and the
 * error helper. Not for the daemon or the clients: they use protocol/proto.h. */
#ifndef FOCUS_PROTOCOL_PROTO_INTERNAL_H
#define FOCUS_PROTOCOL_PROTO_INTERNAL_H

#include "protocol/proto.h"

enum pf_kind {
    PF_STR,       /* char[cap + 1], UTF-8 without NUL */
    PF_U32,       /* uint32_t in lo..hi, a multiple of `multiple` when non-zero */
    PF_I32,       /* int32_t in lo..hi */
    PF_U64,       /* uint64_t, any value */
    PF_F64,       /* double in flo..fhi; integers are accepted too */
    PF_BOOL,      /* bool */
    PF_STATE,     /* enum proto_state, sent as its name */
    PF_SHA256,    /* uint8_t[32], sent as bin of exactly 32 bytes */
    PF_HEURISTIC, /* enum proto_heuristic, sent as its name */
    PF_SUBJECTS   /* struct proto_subjects, sent as an array (proto_subjects.c) */
};

struct proto_field {
    const char *name;
    enum pf_kind kind;
    size_t off;
    size_t cap;
    int64_t lo, hi;
    double flo, fhi;
    uint32_t multiple;
    uint32_t bit;  /* presence bit reported to the caller; 0: none */
    bool required;
};

struct proto_table {
    const struct proto_field *f;
    size_t n;
};

/* Table rows: NAMED_* take the wire name, the others use the member's name. */
#define NAMED_STR(n, s, m, c, b, r) {n, PF_STR, offsetof(s, m), c, 0, 0, 0, 0, 0, b, r}
#define NAMED_U32(n, s, m, l, h, mul, b, r) {n, PF_U32, offsetof(s, m), 0, l, h, 0, 0, mul, b, r}
#define STR(s, m, c, b, r) NAMED_STR(#m, s, m, c, b, r)
#define U32(s, m, l, h, mul, b, r) NAMED_U32(#m, s, m, l, h, mul, b, r)
#define U32ANY(s, m, b, r) U32(s, m, 0, UINT32_MAX, 0, b, r)
#define U64(s, m, b, r) {#m, PF_U64, offsetof(s, m), 0, 0, 0, 0, 0, 0, b, r}
#define F64(s, m, l, h, b, r) {#m, PF_F64, offsetof(s, m), 0, 0, 0, l, h, 0, b, r}

/* The event table's bit of seq: always sent, optional to read (daemons before it had none). */
#define PROTO_EVENT_SEQ_BIT (1u << 6)

extern const struct proto_table proto_op_tables[PROTO_OP_COUNT];
extern const struct proto_table proto_submit_table;
extern const struct proto_table proto_status_table;
extern const struct proto_table proto_event_table;
extern const struct proto_table proto_hello_table;
extern const struct proto_table proto_image_table;
extern const struct proto_table proto_model_table;
extern const struct proto_table proto_stats_table;

/* Checks the "v" of a message: bad_field when missing or not an integer, else
 * unsupported_version unless it is PROTO_VERSION. */
int proto_check_version(const msgpack_object *map, struct proto_error *perr);

/* The event kind named s, or -1. */
int proto_event_parse_name(const char *s, size_t len);

/* Fills *perr and the err.h message; returns ERR_FORMAT (ERR_RANGE for bad_field). */
int proto_fail(struct proto_error *perr, enum proto_errcode code, const char *field,
               const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Refuses a key that occurs twice in any map of o (the top level or nested) as bad_field
 * naming it. */
int proto_check_unique_keys(const msgpack_object *o, struct proto_error *perr);

/* The value under key in map, or NULL; *dup set when the key occurs more than once. */
const msgpack_object *proto_map_get(const msgpack_object *map, const char *key, bool *dup);

/* Decodes the table's fields found in map into base, ignoring other keys; *set receives the
 * bits of the fields present. Missing required fields, duplicates, wrong types and values out
 * of range are bad_field errors naming the field. */
int proto_table_decode(const struct proto_table *t, const msgpack_object *map, void *base,
                       uint32_t *set, struct proto_error *perr);

/* A packer over a msgpack_sbuffer that remembers a failed write. */
struct proto_writer {
    msgpack_packer pk;
    msgpack_sbuffer *sb;
    size_t start;
    bool failed;
};

void proto_writer_init(struct proto_writer *w, msgpack_sbuffer *sb);
/* 0, or ERR_NOMEM after undoing the partial message. */
int proto_writer_finish(struct proto_writer *w);
void proto_pack_cstr(msgpack_packer *pk, const char *s);
/* Packs the "v" and "id" pairs every request and reply begins with. */
void proto_pack_envelope_id(msgpack_packer *pk, const struct proto_id *id);
/* Number of the table's fields that proto_table_encode writes for set. */
uint32_t proto_table_count(const struct proto_table *t, uint32_t set);
/* Writes the key/value pairs of the required fields and of those whose bit is in set. */
void proto_table_encode(const struct proto_table *t, const void *base, uint32_t set,
                        msgpack_packer *pk);

/* Decodes an array of subjects into *s (bad_field "subjects" naming the entry at fault), and
 * packs one. */
int proto_subjects_decode(const msgpack_object *o, struct proto_subjects *s,
                          struct proto_error *perr);
void proto_subjects_encode(msgpack_packer *pk, const struct proto_subjects *s);

/* Copies a str object into dst[cap + 1], refusing NUL bytes and more than cap bytes. */
int proto_copy_str(const msgpack_object *o, char *dst, size_t cap, const char *field,
                   struct proto_error *perr);

#endif
