/* libFuzzer target for the wire protocol: every input goes through the request decoder (the
 * daemon's side, which validates first) and the reply/event decoder (the clients' side). A
 * request that decodes must re-encode and decode to the same request. Built and run by
 * tests/fuzz/run.sh; not part of `make`. */
#include "protocol/proto.h"

#include <stdlib.h>
#include <string.h>

static void client_side(const uint8_t *data, size_t size)
{
    struct proto_incoming in;
    if (proto_parse_incoming(data, size, &in, NULL) != 0)
        return;
    if (!in.is_event && in.ok) {
        struct proto_hello_reply h;
        struct proto_job_status st, *jobs;
        struct proto_model_info *models;
        struct proto_image img;
        struct proto_stats stats;
        char job[PROTO_MAX_NAME + 1];
        size_t n;
        proto_decode_hello(&in, &h, NULL);
        proto_decode_submit(&in, job, NULL);
        proto_decode_job(&in, &st, NULL);
        proto_decode_jobs(&in, &jobs, &n, NULL);
        proto_decode_fetch(&in, &img, NULL);
        proto_decode_models(&in, &models, &n, NULL);
        proto_decode_stats(&in, &stats, NULL);
    }
    proto_incoming_free(&in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proto_request req, again;
    struct proto_error err;
    client_side(data, size);
    if (proto_parse_request(data, size, &req, &err) != 0) {
        if (err.code == PROTO_E_NONE || err.message[0] == 0)
            abort();
        return 0;
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (proto_encode_request(&sb, &req) != 0 ||
        proto_parse_request(sb.data, sb.size, &again, &err) != 0 || again.op != req.op ||
        memcmp(&again.id, &req.id, sizeof req.id) != 0)
        abort();
    msgpack_sbuffer_destroy(&sb);
    return 0;
}
