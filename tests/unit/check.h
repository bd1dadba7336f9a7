/* A minimal test harness: each test binary defines test functions, runs them with RUN(), and
 * ends with CHECK_DONE(), which prints "RESULT passed=N failed=M" for tests/run to add up. A
 * failed CHECK reports file, line and expression and fails the current test. */
#ifndef FOCUS_TESTS_CHECK_H
#define FOCUS_TESTS_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int check_passed, check_failed, check_current_failed;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            check_current_failed = 1;                                                  \
        }                                                                              \
    } while (0)

#define CHECKF(cond, ...)                                                              \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "  %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                              \
            fputc('\n', stderr);                                                       \
            check_current_failed = 1;                                                  \
        }                                                                              \
    } while (0)

#define RUN(fn)                                     \
    do {                                            \
        check_current_failed = 0;                   \
        fn();                                       \
        if (check_current_failed) {                 \
            printf("FAIL %s\n", #fn);               \
            check_failed++;                         \
        } else {                                    \
            printf("ok   %s\n", #fn);               \
            check_passed++;                         \
        }                                           \
        fflush(stdout);                             \
    } while (0)

#define CHECK_DONE()                                                        \
    do {                                                                    \
        printf("RESULT passed=%d failed=%d\n", check_passed, check_failed); \
        return check_failed ? 1 : 0;                                        \
    } while (0)

/* Root of the committed fixtures; FOCUS_FIXTURES overrides it. */
static inline const char *fixtures_dir(void)
{
    const char *d = getenv("FOCUS_FIXTURES");
    return d ? d : "tests/fixtures";
}

#endif
