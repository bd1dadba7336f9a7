/* CPU ops whose work memory cannot be had: the float32 twins of 16-bit activations and the
 * context's scratch. The op fails with ERR_NOMEM and runs no further, its output keeps its
 * values, and the same op succeeds once memory is back: in the daemon, one job fails and the
 * others go on. The address-space limit (RLIMIT_AS) makes the failure real; a sanitizer's
 * shadow memory rules that limit out, so such builds skip these checks. */
#include "kernels/kn.h"
#include "kernels/kn_ops.h"

#include "common/err.h"
#include "tests/unit/check.h"

#include <stdint.h>
#include <string.h>
#include <sys/resource.h>

#if defined(__SANITIZE_ADDRESS__)
#define SKIP_LIMITS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SKIP_LIMITS 1
#endif
#endif

/* 64 Mi elements: a 128 MiB 16-bit tensor whose float32 twin needs 256 MiB. */
#define BIG ((int64_t)1 << 26)

/* Lets the process map `room` more bytes than it has now; returns the previous limit. */
static struct rlimit tighten(size_t room)
{
    struct rlimit old;
    getrlimit(RLIMIT_AS, &old);
    unsigned long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%lu", &pages) != 1) pages = 0;
        fclose(f);
    }
    struct rlimit now = old;
    now.rlim_cur = (rlim_t)pages * 4096 + room;
    CHECK(pages > 0 && setrlimit(RLIMIT_AS, &now) == 0);
    return old;
}

/* Whether t's first and last 4096 values are all within tol of v. */
static int all_near(kn_ctx *ctx, const kn_tensor *t, float v, float tol)
{
    static float row[4096];
    for (int end = 0; end < 2; end++) {
        kn_tensor part = kn_view(t, end ? BIG - 4096 : 0, 1, (int64_t[]){4096});
        if (kn_read_f32(ctx, &part, row) < 0) return 0;
        for (int i = 0; i < 4096; i++)
            if (!(row[i] >= v - tol && row[i] <= v + tol)) return 0;
    }
    return 1;
}

static void check_twins_cannot_be_had(void)
{
    kn_ctx *ctx;
    CHECK(kn_ctx_create(KN_CPU, 0, &ctx) == 0);
    kn_tensor x, y;
    const int64_t shape[] = {BIG / 4096, 4096};
    CHECK(kn_alloc(ctx, &x, KN_F16, 2, shape) == 0 && kn_alloc(ctx, &y, KN_F16, 2, shape) == 0);
    CHECK(kn_fill(ctx, &x, -2.0f) == 0 && kn_fill(ctx, &y, 7.0f) == 0);
    struct rlimit old = tighten(64u << 20);
    int rc = kn_activate(ctx, &y, &x, KN_ACT_SILU);
    int code = err_code();
    setrlimit(RLIMIT_AS, &old);
    CHECKF(rc < 0 && code == ERR_NOMEM, "rc %d, %s", rc, err_msg());
    CHECK(all_near(ctx, &y, 7.0f, 0.0f));
    CHECK(kn_activate(ctx, &y, &x, KN_ACT_SILU) == 0 && all_near(ctx, &y, -0.2384058f, 1e-3f));
    kn_free(ctx, &x);
    kn_free(ctx, &y);
    kn_ctx_destroy(ctx);
}

static void check_scratch_cannot_grow(void)
{
    kn_ctx *ctx;
    CHECK(kn_ctx_create(KN_CPU, 0, &ctx) == 0);
    kn_tensor src, dst;
    const int64_t shape[] = {BIG};
    CHECK(kn_alloc(ctx, &src, KN_F16, 1, shape) == 0 &&
          kn_alloc(ctx, &dst, KN_BF16, 1, shape) == 0);
    CHECK(kn_fill(ctx, &src, 3.0f) == 0 && kn_fill(ctx, &dst, 5.0f) == 0);
    struct rlimit old = tighten(64u << 20);
    int rc = kn_copy(ctx, &dst, &src); /* F16 to BF16 goes through float32 scratch */
    int code = err_code();
    setrlimit(RLIMIT_AS, &old);
    CHECKF(rc < 0 && code == ERR_NOMEM, "rc %d, %s", rc, err_msg());
    CHECK(all_near(ctx, &dst, 5.0f, 0.0f));
    CHECK(kn_copy(ctx, &dst, &src) == 0 && all_near(ctx, &dst, 3.0f, 0.0f));
    kn_free(ctx, &src);
    kn_free(ctx, &dst);
    kn_ctx_destroy(ctx);
}

int main(void)
{
#ifdef SKIP_LIMITS
    printf("skipped: a sanitizer build cannot run under an address-space limit\n");
#else
    /* The worker threads start first, their stacks mapped before any limit. */
    kn_cpu_set_threads(kn_cpu_threads());
    RUN(check_twins_cannot_be_had);
    RUN(check_scratch_cannot_grow);
#endif
    CHECK_DONE();
}
