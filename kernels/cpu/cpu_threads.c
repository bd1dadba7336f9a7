/* CPU backend: the worker threads that split every loop of the backend over the cores: the
 * matrix products (cpu_matmul.c, oneDNN single-threaded in each part), activations, norms, the
 * attention softmax, weight widening. Not OpenMP: libgomp's idle workers busy-wait for
 * milliseconds after every parallel region unless OMP_WAIT_POLICY says otherwise, and that
 * stole a core from the work that followed (a step measured 10% slower than single-threaded).
 * These workers sleep on a condition variable as soon as their part is done. No result depends
 * on how many threads share a loop (cpu_matmul.c fixes the products' tiles; the other loops
 * compute each element or row alike wherever their ranges fall), so kn_cpu_set_threads can
 * change the count at any time between loops. */
#include "kernels/cpu/cpu_ops.h"

#include "common/err.h"

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <unistd.h>

/* The default count: the online CPUs, at most this many. */
#define POOL_DEFAULT_MAX 16

static struct {
    pthread_once_t once;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    int threads;       /* workers started + the caller */
    int parts;         /* threads that share each loop (kn_cpu_set_threads), <= threads */
    int busy;          /* a loop is in flight: a concurrent caller runs its loop alone */
    unsigned long gen; /* bumped for every loop handed to the workers */
    int pending;       /* workers still running the current loop */
    cpu_range_fn fn;
    void *arg;
    int64_t n;
    /* The loop count when each worker was started: a worker started after loops have run
     * must not take the last of them, long finished, for a new one. */
    unsigned long born[KN_CPU_MAX_THREADS];
} pool = {PTHREAD_ONCE_INIT,
          PTHREAD_MUTEX_INITIALIZER,
          PTHREAD_COND_INITIALIZER,
          PTHREAD_COND_INITIALIZER,
          1,
          1,
          0,
          0,
          0,
          NULL,
          NULL,
          0,
          {0}};

#if defined(__x86_64__) && defined(__GNUC__)
static int have_avx;

/* Run at load time, so that the threads only ever read the flag. */
__attribute__((constructor)) static void detect_avx(void)
{
    __builtin_cpu_init();
    have_avx = __builtin_cpu_supports("avx");
}
#endif

/* fn over [lo, hi), then the upper halves of the vector registers cleared. oneDNN's AVX-512
 * kernels can leave them dirty, and on Intel cores every SSE instruction after that (libm's
 * expf, the scalar loops) waits on a merge with them: measured on a Xeon, the SiLU of a VAE
 * decode took 17 times as long (11.9 ms against 0.68 ms) after a convolution's products. */
static void run_range(cpu_range_fn fn, void *arg, int64_t lo, int64_t hi)
{
    fn(arg, lo, hi);
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx) __asm__ volatile("vzeroupper" ::: "memory");
#endif
}

/* Part `part` of `parts` contiguous ranges of [0, n). */
static void run_part(cpu_range_fn fn, void *arg, int64_t n, int part, int parts)
{
    int64_t lo = n * part / parts, hi = n * (part + 1) / parts;
    if (lo < hi) run_range(fn, arg, lo, hi);
}

static void *pool_worker(void *p)
{
    int id = (int)(intptr_t)p;
    pthread_mutex_lock(&pool.mu);
    unsigned long seen = pool.born[id];
    for (;;) {
        while (pool.gen == seen)
            pthread_cond_wait(&pool.go, &pool.mu);
        seen = pool.gen;
        cpu_range_fn fn = pool.fn;
        void *arg = pool.arg;
        int64_t n = pool.n;
        int parts = pool.parts;
        if (id >= parts) continue;
        pthread_mutex_unlock(&pool.mu);
        run_part(fn, arg, n, id, parts);
        pthread_mutex_lock(&pool.mu);
        if (--pool.pending == 0) pthread_cond_signal(&pool.done);
    }
    return NULL;
}

/* Starts workers until `want` threads share loops; with pool.mu held and no loop in flight. A
 * worker that cannot be started only means fewer parts per loop. */
static void pool_grow(int want)
{
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) return;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (pool.threads < want) {
        pthread_t t;
        pool.born[pool.threads] = pool.gen;
        if (pthread_create(&t, &attr, pool_worker, (void *)(intptr_t)pool.threads) != 0) break;
        pool.threads++;
    }
    pthread_attr_destroy(&attr);
    pool.parts = want < pool.threads ? want : pool.threads;
}

static void pool_start(void)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    pthread_mutex_lock(&pool.mu);
    pool_grow(cpus < 1 ? 1 : cpus > POOL_DEFAULT_MAX ? POOL_DEFAULT_MAX : (int)cpus);
    pthread_mutex_unlock(&pool.mu);
}

int cpu_pool_threads(void)
{
    pthread_once(&pool.once, pool_start);
    pthread_mutex_lock(&pool.mu);
    int n = pool.parts;
    pthread_mutex_unlock(&pool.mu);
    return n;
}

int kn_cpu_threads(void)
{
    return cpu_pool_threads();
}

int kn_cpu_set_threads(int n)
{
    if (n < 1 || n > KN_CPU_MAX_THREADS)
        return err_set(ERR_RANGE, "CPU threads %d: expected 1 to %d", n, KN_CPU_MAX_THREADS);
    pthread_once(&pool.once, pool_start);
    pthread_mutex_lock(&pool.mu);
    while (pool.busy) {
        pthread_mutex_unlock(&pool.mu);
        sched_yield();
        pthread_mutex_lock(&pool.mu);
    }
    if (n > pool.threads)
        pool_grow(n);
    else
        pool.parts = n;
    pthread_mutex_unlock(&pool.mu);
    return 0;
}

void cpu_parallel(int64_t n, int64_t work, cpu_range_fn fn, void *arg)
{
    if (n <= 0) return;
    if (n < 2 || work < CPU_PAR_MIN) {
        run_range(fn, arg, 0, n);
        return;
    }
    pthread_once(&pool.once, pool_start);
    pthread_mutex_lock(&pool.mu);
    if (pool.parts < 2 || pool.busy) {
        pthread_mutex_unlock(&pool.mu);
        run_range(fn, arg, 0, n);
        return;
    }
    pool.busy = 1;
    pool.fn = fn, pool.arg = arg, pool.n = n;
    pool.pending = pool.parts - 1;
    pool.gen++;
    int parts = pool.parts;
    pthread_cond_broadcast(&pool.go);
    pthread_mutex_unlock(&pool.mu);

    run_part(fn, arg, n, 0, parts);

    pthread_mutex_lock(&pool.mu);
    while (pool.pending > 0)
        pthread_cond_wait(&pool.done, &pool.mu);
    pool.busy = 0;
    pthread_mutex_unlock(&pool.mu);
}
