/* The encoder thread of a model whose engine encodes apart; see encoder.h. */
#include "daemon/encoder.h"

#include "common/err.h"
#include "common/xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct encoder {
    sd3_engine *engine;
    struct sched_model *m;
    pthread_t thread;
    pthread_cond_t go;                    /* jobs handed over, or stop */
    struct djob *queue[SCHED_MAX_ACTIVE]; /* handed over, not started; oldest first */
    size_t n;
    bool stop;
};

static void *encoder_main(void *arg)
{
    struct encoder *c = arg;
    struct sched_model *m = c->m;
    pthread_mutex_lock(&m->lock);
    for (;;) {
        while (!c->stop && c->n == 0)
            pthread_cond_wait(&c->go, &m->lock);
        if (c->stop) break;
        struct djob *j = c->queue[0];
        memmove(c->queue, c->queue + 1, --c->n * sizeof *c->queue);
        pthread_mutex_unlock(&m->lock);
        gen_job *gj = NULL;
        int rc = engine_job_encode(c->engine, &j->gp, &gj);
        pthread_mutex_lock(&m->lock);
        j->gj = gj;
        j->prep_rc = rc;
        if (rc < 0) snprintf(j->prep_msg, sizeof j->prep_msg, "%s", err_msg());
        j->prep = PREP_ENCODED;
        pthread_cond_broadcast(&m->wake);
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

int encoder_start(sd3_engine *e, struct sched_model *m, struct encoder **out)
{
    struct encoder *c = xcalloc(1, sizeof *c);
    c->engine = e;
    c->m = m;
    pthread_cond_init(&c->go, NULL);
    int err = pthread_create(&c->thread, NULL, encoder_main, c);
    if (err) {
        pthread_cond_destroy(&c->go);
        free(c);
        return err_set(ERR_IO, "model %s: starting its encoder thread: %s", m->name, strerror(err));
    }
    *out = c;
    return 0;
}

void encoder_submit(struct encoder *c, struct djob *j)
{
    j->prep = PREP_ENCODING;
    c->queue[c->n++] = j;
    pthread_cond_signal(&c->go);
}

void encoder_stop(struct encoder *c)
{
    if (!c) return;
    pthread_mutex_lock(&c->m->lock);
    c->stop = true;
    pthread_cond_signal(&c->go);
    pthread_mutex_unlock(&c->m->lock);
    pthread_join(c->thread, NULL);
    for (size_t i = 0; i < c->n; i++)
        c->queue[i]->prep = PREP_FRESH;
    pthread_cond_destroy(&c->go);
    free(c);
}
