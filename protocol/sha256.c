/* The SHA-256 checksum of PNGs in fetch replies, from libmd's SHA-2 implementation. */
#include "protocol/proto.h"

#include <sha2.h>

void proto_sha256(const void *data, size_t n, uint8_t out[32])
{
    SHA2_CTX ctx;
    SHA256Init(&ctx);
    SHA256Update(&ctx, data, n);
    SHA256Final(out, &ctx);
}
