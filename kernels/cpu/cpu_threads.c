/* CPU backend: the worker threads that split every loop of the backend over the cores: the
 * matrix products (cpu_gemm.c, BLAS single-threaded in each part), activations, norms, the
 * attention softmax, weight widening. Not OpenMP: libgomp's idle workers busy-wait for
 * milliseconds after every parallel region unless OMP_WAIT_POLICY says otherwise, and that
 * stole a core from the work that followed (a step measured 10% slower than single-threaded).
 * These workers sleep on a condition variable as soon as their part is done. */
#include "kernels/cpu/cpu_ops.h"

#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

/* Threads that share a loop, the caller included. */
#define POOL_MAX_THREADS 16

static struct {
    pthread_once_t once;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    int threads;       /* workers started + the caller */
    int busy;          /* a loop is in flight: a concurrent caller runs its loop alone */
    unsigned long gen; /* bumped for every loop handed to the workers */
    int pending;       /* workers still running the current loop */
    cpu_range_fn fn;
    void *arg;
    int64_t n;
} pool = {PTHREAD_ONCE_INIT,
          PTHREAD_MUTEX_INITIALIZER,
          PTHREAD_COND_INITIALIZER,
          PTHREAD_COND_INITIALIZER,
          1,
          0,
          0,
          0,
          NULL,
          NULL,
          0};

/* Part `part` of `parts` contiguous ranges of [0, n). */
static void run_part(cpu_range_fn fn, void *arg, int64_t n, int part, int parts)
{
    int64_t lo = n * part / parts, hi = n * (part + 1) / parts;
    if (lo < hi) fn(arg, lo, hi);
}

static void *pool_worker(void *p)
{
    int id = (int)(intptr_t)p;
    unsigned long seen = 0;
    pthread_mutex_lock(&pool.mu);
    for (;;) {
        while (pool.gen == seen)
            pthread_cond_wait(&pool.go, &pool.mu);
        seen = pool.gen;
        cpu_range_fn fn = pool.fn;
        void *arg = pool.arg;
        int64_t n = pool.n;
        int parts = pool.threads;
        pthread_mutex_unlock(&pool.mu);
        run_part(fn, arg, n, id, parts);
        pthread_mutex_lock(&pool.mu);
        if (--pool.pending == 0) pthread_cond_signal(&pool.done);
    }
    return NULL;
}

static void pool_start(void)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int want = cpus < 1 ? 1 : cpus > POOL_MAX_THREADS ? POOL_MAX_THREADS : (int)cpus;
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) return;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* A worker that cannot be started only means fewer parts per loop. */
    for (int i = 1; i < want; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, pool_worker, (void *)(intptr_t)pool.threads) != 0) break;
        pool.threads++;
    }
    pthread_attr_destroy(&attr);
}

int cpu_pool_threads(void)
{
    pthread_once(&pool.once, pool_start);
    return pool.threads;
}

void cpu_parallel(int64_t n, int64_t work, cpu_range_fn fn, void *arg)
{
    if (n <= 0) return;
    if (n < 2 || work < CPU_PAR_MIN) {
        fn(arg, 0, n);
        return;
    }
    pthread_once(&pool.once, pool_start);
    pthread_mutex_lock(&pool.mu);
    if (pool.threads < 2 || pool.busy) {
        pthread_mutex_unlock(&pool.mu);
        fn(arg, 0, n);
        return;
    }
    pool.busy = 1;
    pool.fn = fn, pool.arg = arg, pool.n = n;
    pool.pending = pool.threads - 1;
    pool.gen++;
    int parts = pool.threads;
    pthread_cond_broadcast(&pool.go);
    pthread_mutex_unlock(&pool.mu);

    run_part(fn, arg, n, 0, parts);

    pthread_mutex_lock(&pool.mu);
    while (pool.pending > 0)
        pthread_cond_wait(&pool.done, &pool.mu);
    pool.busy = 0;
    pthread_mutex_unlock(&pool.mu);
}
