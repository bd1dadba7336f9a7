/* The encoder thread of a model whose engine encodes apart (engine_encodes_apart: the text
 * encoders on a CPU context of their own): the prompts of fresh jobs are encoded there while the
 * worker thread attaches and steps the others, so a new prompt's text encoding overlaps the
 * denoising of the jobs already running. It shares the model's lock and its job queue is
 * guarded by it; when a job is encoded (or fails to be) it wakes the worker on m->wake. Not for
 * attaching, stepping or failing jobs: the worker does all that (worker.c). */
#ifndef FOCUS_DAEMON_ENCODER_H
#define FOCUS_DAEMON_ENCODER_H

#include "daemon/sched.h"
#include "engine/pipeline.h"

struct encoder;

/* Starts the thread for engine e and model m. */
int encoder_start(sd3_engine *e, struct sched_model *m, struct encoder **out);
/* Under m->lock: hands an active job over; its prep becomes PREP_ENCODING, then PREP_ENCODED
 * with gj set, or prep_rc and prep_msg saying why not. */
void encoder_submit(struct encoder *c, struct djob *j);
/* Lets the job in hand finish, then joins the thread and frees c; jobs handed over but not
 * started go back to PREP_FRESH. NULL is allowed. */
void encoder_stop(struct encoder *c);

#endif
