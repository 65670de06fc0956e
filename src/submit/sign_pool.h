/*
 * sign_pool — a few worker threads that run CPU-bound work (DKIM signing)
 * off the event loop and hand each result back to it.
 *
 * Why: an RSA-2048 signature costs about a millisecond of CPU. Done on the
 * loop, a burst of submissions would stall every SMTP and HTTP session for
 * that long per message. Workers sign in parallel; the loop only copies.
 *
 * How: signpool_run() queues a job (work, done, arg). A worker runs
 * work(arg) on its own thread, then puts the job on the done list and
 * writes to an eventfd; the loop's callback runs done(arg) for every
 * finished job, in the loop's thread (the same hand-off the spool writer
 * uses). work must touch nothing but arg; done may use anything.
 *
 * What it owns: the threads, the two job lists, the eventfd. Not the jobs'
 * data (arg).
 *
 * Limits: [dkim] sign_threads workers (1..64). Jobs still queued when the
 * pool is freed are dropped without calling done: free it only once the
 * owner has no work in flight (after draining).
 */
#ifndef PH_SUBMIT_SIGN_POOL_H
#define PH_SUBMIT_SIGN_POOL_H

#include "core/err.h"

struct event_base;
typedef struct signpool signpool;

typedef void (*signpool_fn)(void *arg);

signpool *signpool_new(struct event_base *base, int threads, err *e);
/* Queue work; done runs later on the loop. -1 when the pool is stopping. */
int signpool_run(signpool *p, signpool_fn work, signpool_fn done, void *arg);
/* Stop and join the workers; pending jobs are dropped (see above). */
void signpool_free(signpool *p);

#endif
