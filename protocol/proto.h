/* The focusd wire protocol: the message schema, its limits and error codes, a bounded validator
 * for untrusted frames, and MessagePack encoders and decoders for both ends (daemon and clients).
 * focusd-protocol(7) is the specification; this header is its C rendering. Nothing here knows
 * of sockets, job queues or the engine: the daemon maps struct proto_submit onto its own job
 * parameters.
 *
 * Conventions: every function returns 0 or a negative code from common/err.h; on failure it
 * fills *perr (when not NULL) with the wire error code, the field at fault and a message, and
 * sets the same message with err_set(). Encoders append one complete message to a
 * msgpack_sbuffer (start from an empty one: msgpack_sbuffer_init or msgpack_sbuffer_clear). */
#ifndef FOCUS_PROTOCOL_PROTO_H
#define FOCUS_PROTOCOL_PROTO_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 1

/* ---- Limits (focusd-protocol(7), LIMITS) ---- */

#define PROTO_MAX_REQUEST (64u * 1024u)       /* bytes in one request frame */
#define PROTO_MAX_SERVER (64u * 1024u * 1024u) /* bytes in one reply or event frame */
#define PROTO_MAX_DEPTH_HARD 16                /* no limits struct may allow more nesting */
#define PROTO_MAX_ID 64        /* bytes in a string request id */
#define PROTO_MAX_NAME 64      /* bytes in a client, model or job name */
#define PROTO_MAX_PROMPT 4096  /* bytes in prompt and negative_prompt */
#define PROTO_MAX_TEXT 1024    /* bytes in an error message, a path, a server version string */
#define PROTO_MAX_FIELD 32     /* bytes in an error's field name */
#define PROTO_STEPS_MIN 1
#define PROTO_STEPS_MAX 200
#define PROTO_GUIDANCE_MIN 0.0
#define PROTO_GUIDANCE_MAX 30.0
#define PROTO_SIZE_MIN 64      /* width and height: multiples of PROTO_SIZE_STEP in MIN..MAX */
#define PROTO_SIZE_MAX 2048
#define PROTO_SIZE_STEP 16
#define PROTO_MAX_SEQ_MIN 1
#define PROTO_MAX_SEQ_MAX 512
#define PROTO_COUNT_MIN 1
#define PROTO_COUNT_MAX 8
#define PROTO_PRIORITY_MIN (-10)
#define PROTO_PRIORITY_MAX 10
#define PROTO_JOBS_LIMIT_MAX 1000 /* most jobs one `jobs` reply lists */
#define PROTO_JOBS_LIMIT_DEFAULT 100
#define PROTO_WAIT_MAX 3600.0     /* seconds a wait may last */
#define PROTO_WAIT_DEFAULT 60.0
#define PROTO_MAX_CURSOR 64       /* bytes of a jobs cursor */
/* The FOCUS control's subjects (submit's subjects): entries, positions of one tokenizer in one
 * entry, bytes of a phrase, the largest T5 position (max_seq_max - 1, no BOS) and CLIP
 * position (BOS at 0, 77 tokens), and the range of focus_lambda. */
#define PROTO_SUBJECTS_MAX 8
#define PROTO_SUBJECT_POSITIONS_MAX 32
#define PROTO_MAX_PHRASE 256
#define PROTO_T5_POSITION_MAX (PROTO_MAX_SEQ_MAX - 1)
#define PROTO_CLIP_POSITION_MAX 76
#define PROTO_FOCUS_LAMBDA_MIN 0.0
#define PROTO_FOCUS_LAMBDA_MAX 100.0

/* Defaults the daemon applies to absent submit fields unless its configuration says otherwise
 * (those of the FOCUS model card). The decoder leaves absent fields unset in proto_submit.set. */
#define PROTO_DEFAULT_STEPS 28
#define PROTO_DEFAULT_GUIDANCE 4.5
#define PROTO_DEFAULT_SIZE 512
#define PROTO_DEFAULT_MAX_SEQ 77
#define PROTO_DEFAULT_FOCUS_LAMBDA 1.0 /* and the heuristic focus: the reference's defaults */

/* What the bounded validator accepts; see proto_validate(). */
struct proto_limits {
    size_t max_bytes;      /* frame size */
    unsigned max_depth;    /* containers nested in each other, the top-level map counting 1 */
    uint32_t max_entries;  /* items of one array, key/value pairs of one map */
    uint32_t max_str;      /* bytes of one str */
    uint32_t max_bin;      /* bytes of one bin */
};

extern const struct proto_limits proto_request_limits; /* what the daemon accepts */
extern const struct proto_limits proto_server_limits;  /* what clients accept (replies, events) */

/* ---- Errors ---- */

enum proto_errcode {
    PROTO_E_NONE = 0,
    PROTO_E_BAD_MESSAGE,         /* not MessagePack, not one map, over a limit */
    PROTO_E_UNSUPPORTED_VERSION, /* "v" is not PROTO_VERSION */
    PROTO_E_UNKNOWN_OP,
    PROTO_E_BAD_FIELD,           /* missing, wrong type, out of range; field names it */
    PROTO_E_NOT_FOUND,           /* no such job, image or model */
    PROTO_E_BUSY,                /* a limit reached, named by error.limit; retry later */
    PROTO_E_TOO_LARGE,           /* the job can never fit on any device */
    PROTO_E_CANCELED,            /* only in a canceled job's status, never a reply's error */
    PROTO_E_FAILED,              /* the job failed; also any code a client does not know */
    PROTO_E_INTERNAL,
    PROTO_E_FORBIDDEN,           /* canceling another peer's job (jobs_may_cancel in the
                                  * daemon is the policy); another peer's routing id */
    PROTO_E_UNAVAILABLE,         /* the daemon is stopping or the model is not loaded */
    PROTO_E_OUT_OF_MEMORY,       /* the job could not get the memory it needed */
    PROTO_E_EXPIRED,             /* the job existed; retention has removed it */
    PROTO_E_COUNT
};

struct proto_error {
    enum proto_errcode code;
    char field[PROTO_MAX_FIELD + 1];    /* "" when no single field is at fault */
    char message[PROTO_MAX_TEXT + 1];
    char limit[PROTO_MAX_FIELD + 1];    /* busy: the hello limit reached ("" otherwise) */
};

const char *proto_errcode_name(enum proto_errcode code); /* "bad_field"; "none" for NONE */
/* Unknown names give PROTO_E_FAILED, as the page asks of clients. */
enum proto_errcode proto_errcode_parse(const char *name, size_t len);

/* ---- Request ids ---- */

enum proto_id_kind { PROTO_ID_NONE, PROTO_ID_UINT, PROTO_ID_STR };

struct proto_id {
    enum proto_id_kind kind; /* NONE: absent or unusable (the reply then carries id nil) */
    uint64_t u;
    char s[PROTO_MAX_ID + 1];
};

/* ---- Operations and their fields ---- */

enum proto_op {
    PROTO_OP_HELLO,
    PROTO_OP_SUBMIT,
    PROTO_OP_WATCH,
    PROTO_OP_CANCEL,
    PROTO_OP_JOB,
    PROTO_OP_JOBS,
    PROTO_OP_FETCH,
    PROTO_OP_MODELS,
    PROTO_OP_STATS,
    PROTO_OP_PING,
    PROTO_OP_WAIT,
    PROTO_OP_COUNT
};

const char *proto_op_name(enum proto_op op);
int proto_op_parse(const char *name, size_t len, enum proto_op *op); /* ERR_MISSING if unknown */

enum proto_state {
    PROTO_STATE_QUEUED,
    PROTO_STATE_RUNNING,
    PROTO_STATE_DONE,
    PROTO_STATE_FAILED,
    PROTO_STATE_CANCELED,
    PROTO_STATE_COUNT
};

const char *proto_state_name(enum proto_state s);

/* Bits of proto_submit.set: which optional fields the message carried. */
enum {
    PROTO_SUBMIT_MODEL = 1u << 0,
    PROTO_SUBMIT_NEGATIVE = 1u << 1,
    PROTO_SUBMIT_SEED = 1u << 2,
    PROTO_SUBMIT_STEPS = 1u << 3,
    PROTO_SUBMIT_GUIDANCE = 1u << 4,
    PROTO_SUBMIT_WIDTH = 1u << 5,
    PROTO_SUBMIT_HEIGHT = 1u << 6,
    PROTO_SUBMIT_MAX_SEQ = 1u << 7,
    PROTO_SUBMIT_COUNT = 1u << 8,
    PROTO_SUBMIT_PRIORITY = 1u << 9,
    PROTO_SUBMIT_WATCH = 1u << 10,
    PROTO_SUBMIT_PNG = 1u << 11,
    PROTO_SUBMIT_SUBJECTS = 1u << 12,
    PROTO_SUBMIT_FOCUS_LAMBDA = 1u << 13,
    PROTO_SUBMIT_FOCUS_HEURISTIC = 1u << 14,
    PROTO_SUBMIT_ALL = (1u << 15) - 1,
};
/* The FOCUS control's fields: in a job's resolved params only when it has subjects. */
#define PROTO_SUBMIT_FOCUS                                                                         \
    (PROTO_SUBMIT_SUBJECTS | PROTO_SUBMIT_FOCUS_LAMBDA | PROTO_SUBMIT_FOCUS_HEURISTIC)
/* A job's resolved params without the FOCUS fields: the request-only fields are absent. */
#define PROTO_SUBMIT_PARAMS                                                                        \
    (PROTO_SUBMIT_ALL & ~(uint32_t)(PROTO_SUBMIT_WATCH | PROTO_SUBMIT_PNG | PROTO_SUBMIT_FOCUS))

/* The running cost the FOCUS control steers by (focus_heuristic). */
enum proto_heuristic {
    PROTO_HEURISTIC_FOCUS,
    PROTO_HEURISTIC_ATTEND_AND_EXCITE,
    PROTO_HEURISTIC_DIVIDE_AND_BIND,
    PROTO_HEURISTIC_COUNT
};

const char *proto_heuristic_name(enum proto_heuristic h); /* "attend_and_excite" */

/* One subject of the FOCUS control: a phrase of the prompt (no positions), or its token
 * positions, T5 from 0 without BOS and CLIP counting BOS as 0, with an optional label. */
struct proto_subject {
    char phrase[PROTO_MAX_PHRASE + 1]; /* the phrase, or the label ("" : none) */
    uint8_t n_t5, n_clip;              /* both 0: the phrase says which tokens */
    uint16_t t5[PROTO_SUBJECT_POSITIONS_MAX];
    uint8_t clip[PROTO_SUBJECT_POSITIONS_MAX];
};

struct proto_subjects {
    uint32_t n; /* 0: no control */
    struct proto_subject s[PROTO_SUBJECTS_MAX];
};

/* Generation parameters: the submit request, and the resolved "params" of a job in replies
 * (where every field but watch and png is present, the FOCUS fields only with subjects).
 * Unset fields hold the PROTO_DEFAULT_* values. */
struct proto_submit {
    uint32_t set; /* PROTO_SUBMIT_* */
    char model[PROTO_MAX_NAME + 1];     /* "" = the daemon's default model */
    char prompt[PROTO_MAX_PROMPT + 1];  /* required */
    char negative_prompt[PROTO_MAX_PROMPT + 1];
    uint64_t seed;
    uint32_t steps;
    double guidance;
    uint32_t width, height;
    uint32_t max_seq;
    uint32_t count;
    int32_t priority;
    struct proto_subjects subjects;
    double focus_lambda;
    enum proto_heuristic focus_heuristic;
    bool watch;
    bool png; /* with watch: the done event carries the PNG files */
};

/* Clears s and fills the defaults, with no field set. */
void proto_submit_init(struct proto_submit *s);
/* The fields of s's resolved params: PROTO_SUBMIT_PARAMS, and the FOCUS ones with subjects. */
uint32_t proto_params_set(const struct proto_submit *s);

/* The subjects as one MessagePack map {"subjects": [...]}, for a job store to keep; and back,
 * checked as a request's subjects are (bad_field naming "subjects"). n 0 packs nothing. */
int proto_subjects_pack(msgpack_sbuffer *sb, const struct proto_subjects *s);
int proto_subjects_unpack(const void *buf, size_t len, struct proto_subjects *s,
                          struct proto_error *perr);

struct proto_request {
    struct proto_id id;
    enum proto_op op;
    union proto_op_params { /* submit first: proto_submit's offsets are the union's */
        struct { char client[PROTO_MAX_NAME + 1]; } hello;  /* "" when absent */
        struct proto_submit submit;
        struct { char job[PROTO_MAX_NAME + 1]; bool png; } job; /* watch (png), cancel, job */
        struct {
            bool has_state;
            enum proto_state state;
            uint32_t limit;                                /* 1..PROTO_JOBS_LIMIT_MAX */
            char cursor[PROTO_MAX_CURSOR + 1];             /* "" : from the newest */
        } jobs;
        struct { char job[PROTO_MAX_NAME + 1]; double timeout; } wait;
        struct { char job[PROTO_MAX_NAME + 1]; uint32_t index; } fetch; /* index 0..count-1 */
    } u;
};

/* Fills the request's defaults for op (id none). */
void proto_request_init(struct proto_request *r, enum proto_op op);

/* ---- Validation and request decoding (daemon side) ---- */

/* One pass over the raw bytes, allocating nothing: exactly one MessagePack object filling buf,
 * a map at the top level, string keys in every map, no ext types, and everything within lim
 * (size, depth, entries, str/bin lengths, every declared count able to fit in the bytes
 * left, strings valid UTF-8). Failure: PROTO_E_BAD_MESSAGE. */
int proto_validate(const void *buf, size_t len, const struct proto_limits *lim,
                   struct proto_error *perr);

/* Validates with proto_request_limits, unpacks, and decodes into *req, checking each field's
 * presence, length, type and range. Unknown fields are ignored; unknown ops are errors. On
 * failure req->id still holds the request id when it could be read, for the error reply. The
 * request owns no memory: nothing to free. */
int proto_parse_request(const void *buf, size_t len, struct proto_request *req,
                        struct proto_error *perr);

/* ---- Request encoding (client side) ---- */

/* Encodes req; for submit only the fields in req->u.submit.set (and the prompt). */
int proto_encode_request(msgpack_sbuffer *sb, const struct proto_request *req);

/* ---- Reply payloads ---- */

/* One of the daemon's own limits in hello's "limits" (its configuration's). */
struct proto_limit {
    const char *name;
    uint64_t value;
};

struct proto_hello_reply {
    char server[PROTO_MAX_NAME + 1];    /* "focusd" */
    char version[PROTO_MAX_NAME + 1];   /* the daemon's version, e.g. "0.1.0" */
    uint32_t protocol;                  /* PROTO_VERSION */
    char session[PROTO_MAX_NAME + 1];   /* the daemon's name for this client's session */
    char default_model[PROTO_MAX_NAME + 1];
    uint32_t max_queue;                 /* jobs the daemon queues before answering busy */
    const char *const *models;          /* model names */
    size_t n_models;
    const struct proto_limit *daemon_limits; /* encoded beside the protocol's; not decoded */
    size_t n_daemon_limits;
};

struct proto_job_status {
    char job[PROTO_MAX_NAME + 1];
    enum proto_state state;
    uint32_t position;  /* queued: jobs ahead of it (0 = next) */
    uint32_t step;      /* steps done */
    uint32_t steps;
    uint32_t images;    /* done: images available to fetch */
    double created, started, finished; /* Unix time, seconds; 0 = not (yet) */
    struct proto_submit params;        /* resolved: every field set but watch */
    struct proto_error error;          /* failed and canceled: code and message */
};

struct proto_image {
    char job[PROTO_MAX_NAME + 1];
    uint32_t index;
    const uint8_t *png; /* decode: points into the received frame */
    size_t png_len;
    uint8_t sha256[32]; /* SHA-256 of the PNG bytes; travels as bin of 32 bytes */
    uint32_t width, height;
    uint64_t seed;
    struct proto_submit params;
};

struct proto_model_info {
    char name[PROTO_MAX_NAME + 1];
    char path[PROTO_MAX_TEXT + 1];
    char device[PROTO_MAX_NAME + 1]; /* "cpu", "cuda:0" */
    char dtype[PROTO_MAX_NAME + 1];  /* compute precision: "fp32", "bf16", "fp16" */
    uint64_t memory;                 /* bytes resident for this model */
    bool loaded;
};

struct proto_stats {
    uint64_t queued, running, done, failed, canceled;
    uint64_t sessions; /* clients seen in the last session timeout */
    double uptime;     /* seconds */
};

/* ---- Reply encoding (daemon side) ---- */

/* id: the request's id (kind NONE encodes nil). */
int proto_reply_error(msgpack_sbuffer *sb, const struct proto_id *id, enum proto_errcode code,
                      const char *field, const char *message);
/* The same with every part of e, its limit included. */
int proto_reply_refusal(msgpack_sbuffer *sb, const struct proto_id *id,
                        const struct proto_error *e);
int proto_reply_hello(msgpack_sbuffer *sb, const struct proto_id *id,
                      const struct proto_hello_reply *h);
int proto_reply_submit(msgpack_sbuffer *sb, const struct proto_id *id, const char *job);
/* The reply of watch, cancel and job: the job's status. */
int proto_reply_job(msgpack_sbuffer *sb, const struct proto_id *id,
                    const struct proto_job_status *st);
/* next: the cursor of the following page, NULL when this one is the last. */
int proto_reply_jobs(msgpack_sbuffer *sb, const struct proto_id *id,
                     const struct proto_job_status *jobs, size_t n, const char *next);
int proto_reply_fetch(msgpack_sbuffer *sb, const struct proto_id *id,
                      const struct proto_image *img);
int proto_reply_models(msgpack_sbuffer *sb, const struct proto_id *id,
                       const struct proto_model_info *models, size_t n);
int proto_reply_stats(msgpack_sbuffer *sb, const struct proto_id *id,
                      const struct proto_stats *st);
int proto_reply_pong(msgpack_sbuffer *sb, const struct proto_id *id);

/* ---- Events ---- */

enum proto_event_kind {
    PROTO_EV_QUEUED,
    PROTO_EV_STARTED,
    PROTO_EV_PROGRESS,
    PROTO_EV_DONE,
    PROTO_EV_FAILED,
    PROTO_EV_CANCELED,
    PROTO_EV_COUNT
};

const char *proto_event_name(enum proto_event_kind k);

/* Which fields travel depends on kind: queued: position; started: steps; progress: step, steps,
 * elapsed, eta; done: images, elapsed; failed: error; canceled: nothing more. Every event
 * carries seq: 1 for the first event the daemon meant for a session, one more for each after
 * it, so that a gap shows the events a session missed (coalesced or dropped progress). */
struct proto_event {
    enum proto_event_kind kind;
    char job[PROTO_MAX_NAME + 1];
    uint64_t seq;
    /* done, encoding only: n_png > 0 adds "png" (array of bin) and "sha256" (of bin 32). */
    const uint8_t *const *png;
    const size_t *png_len;
    const uint8_t (*png_sha256)[32];
    uint32_t n_png;
    uint32_t position;
    uint32_t step, steps;
    double elapsed, eta; /* seconds since the job started; estimated seconds left */
    uint32_t images;
    struct proto_error error;
};

int proto_event_encode(msgpack_sbuffer *sb, const struct proto_event *ev);

/* ---- Decoding what the daemon sends (client side) ---- */

/* A reply or an event. For a reply with ok true, body is the whole top-level map; the typed
 * proto_decode_* functions below read it. Objects (and proto_image.png) point into the frame
 * and into zone: keep both until done, then proto_incoming_free(). */
struct proto_incoming {
    bool is_event;
    struct proto_event event;   /* is_event */
    struct proto_id id;         /* reply */
    bool ok;
    struct proto_error error;   /* ok false: the daemon's error */
    msgpack_object body;
    msgpack_zone zone;
};

/* Validates with proto_server_limits and decodes the envelope ("v", "id", "ok", "error") or
 * the whole event. On failure nothing is left to free. */
int proto_parse_incoming(const void *buf, size_t len, struct proto_incoming *in,
                         struct proto_error *perr);
void proto_incoming_free(struct proto_incoming *in);

/* Arrays the decoders return (hello's model names, jobs, models) live in in->zone and go with
 * proto_incoming_free(); so do the copies of strings. */
int proto_decode_hello(struct proto_incoming *in, struct proto_hello_reply *h,
                       struct proto_error *perr);
int proto_decode_submit(struct proto_incoming *in, char job[PROTO_MAX_NAME + 1],
                        struct proto_error *perr);
int proto_decode_job(struct proto_incoming *in, struct proto_job_status *st,
                     struct proto_error *perr);
int proto_decode_jobs(struct proto_incoming *in, struct proto_job_status **jobs, size_t *n,
                      struct proto_error *perr);
/* Also checks that sha256 matches the PNG bytes. */
int proto_decode_fetch(struct proto_incoming *in, struct proto_image *img,
                       struct proto_error *perr);
int proto_decode_models(struct proto_incoming *in, struct proto_model_info **models,
                        size_t *n, struct proto_error *perr);
int proto_decode_stats(struct proto_incoming *in, struct proto_stats *st,
                       struct proto_error *perr);

/* SHA-256 (FIPS 180-4) of n bytes, for the fetch reply's checksum. */
void proto_sha256(const void *data, size_t n, uint8_t out[32]);

#endif
