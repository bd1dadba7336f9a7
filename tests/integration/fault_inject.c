/* Fault injection for the integration tests, preloaded into focusd (LD_PRELOAD) where a real
 * fault cannot be made on demand. The file named by $FOCUSD_FAULTS arms it while it exists;
 * each line is one fault:
 *   sql PREFIX        sqlite3_step and sqlite3_exec of SQL starting with PREFIX fail
 *                     (SQLITE_FULL, as on a full disk)
 *   slow_png SECONDS  each read() of a .png file first sleeps that long (a slow disk)
 *   alloc_over BYTES  posix_memalign of BYTES or more fails with ENOMEM (tensors)
 * Built by the tests themselves (conftest.py) with cc -shared; not part of focusd. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct faults {
    char sql[300];
    double slow_png;
    size_t alloc_over;
};

/* The armed faults now: the file is read again whenever it changes. Racy between threads in
 * the way a test tolerates (a fault armed or disarmed one call late). */
static int armed(struct faults *f)
{
    const char *path = getenv("FOCUSD_FAULTS");
    memset(f, 0, sizeof *f);
    if (!path) return 0;
    FILE *in = fopen(path, "r");
    if (!in) return 0;
    char line[300];
    while (fgets(line, sizeof line, in)) {
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "sql ", 4) == 0)
            snprintf(f->sql, sizeof f->sql, "%s", line + 4);
        else if (strncmp(line, "slow_png ", 9) == 0)
            f->slow_png = atof(line + 9);
        else if (strncmp(line, "alloc_over ", 11) == 0)
            f->alloc_over = strtoull(line + 11, NULL, 10);
    }
    fclose(in);
    return 1;
}

static int sql_fails(const char *sql)
{
    struct faults f;
    return sql && armed(&f) && f.sql[0] && strncmp(sql, f.sql, strlen(f.sql)) == 0;
}

int sqlite3_step(sqlite3_stmt *st)
{
    static int (*real)(sqlite3_stmt *);
    if (!real) real = (int (*)(sqlite3_stmt *))dlsym(RTLD_NEXT, "sqlite3_step");
    if (sql_fails(sqlite3_sql(st))) return SQLITE_FULL;
    return real(st);
}

int sqlite3_exec(sqlite3 *db, const char *sql, int (*cb)(void *, int, char **, char **), void *arg,
                 char **errmsg)
{
    static int (*real)(sqlite3 *, const char *, int (*)(void *, int, char **, char **), void *,
                       char **);
    if (!real) real = dlsym(RTLD_NEXT, "sqlite3_exec");
    if (sql_fails(sql)) return SQLITE_FULL;
    return real(db, sql, cb, arg, errmsg);
}

ssize_t read(int fd, void *buf, size_t n)
{
    static ssize_t (*real)(int, void *, size_t);
    if (!real) real = (ssize_t (*)(int, void *, size_t))dlsym(RTLD_NEXT, "read");
    struct faults f;
    if (fd > 2 && armed(&f) && f.slow_png > 0) {
        char link[64], target[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t k = readlink(link, target, sizeof target - 1);
        if (k > 4 && memcmp(target + k - 4, ".png", 4) == 0) {
            struct timespec ts = {(time_t)f.slow_png,
                                  (long)((f.slow_png - (double)(time_t)f.slow_png) * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    return real(fd, buf, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    static int (*real)(void **, size_t, size_t);
    if (!real) real = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    struct faults f;
    if (armed(&f) && f.alloc_over && n >= f.alloc_over) return ENOMEM;
    return real(out, align, n);
}
