#include "submit/sign_pool.h"

#include "core/mem.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <unistd.h>

typedef struct job {
    signpool_fn work, done;
    void *arg;
    STAILQ_ENTRY(job) link;
} job;
STAILQ_HEAD(job_list, job);

struct signpool {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    struct job_list todo, finished; /* guarded by lock */
    int stopping;
    pthread_t *threads;
    int nthreads;
    int efd;
    struct event *ev;
};

static void *worker_main(void *arg)
{
    signpool *p = arg;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->stopping && STAILQ_EMPTY(&p->todo))
            pthread_cond_wait(&p->wake, &p->lock);
        if (p->stopping)
            break;
        job *j = STAILQ_FIRST(&p->todo);
        STAILQ_REMOVE_HEAD(&p->todo, link);
        pthread_mutex_unlock(&p->lock);
        j->work(j->arg);
        pthread_mutex_lock(&p->lock);
        STAILQ_INSERT_TAIL(&p->finished, j, link);
        uint64_t one = 1;
        /* The counter only wakes the loop; a full counter still wakes it. */
        if (write(p->efd, &one, sizeof one) < 0 && errno != EAGAIN)
            abort();
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* On the loop: run done() for every finished job, outside the lock. */
static void on_finished(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    signpool *p = arg;
    uint64_t n;
    if (read(fd, &n, sizeof n) < 0 && errno != EAGAIN)
        return;
    struct job_list ready = STAILQ_HEAD_INITIALIZER(ready);
    pthread_mutex_lock(&p->lock);
    STAILQ_CONCAT(&ready, &p->finished);
    pthread_mutex_unlock(&p->lock);
    while (!STAILQ_EMPTY(&ready)) {
        job *j = STAILQ_FIRST(&ready);
        STAILQ_REMOVE_HEAD(&ready, link);
        j->done(j->arg);
        free(j);
    }
}

signpool *signpool_new(struct event_base *base, int threads, err *e)
{
    signpool *p = xcalloc(1, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    STAILQ_INIT(&p->todo);
    STAILQ_INIT(&p->finished);
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0) {
        err_set(e, ERR_IO, "signing pool: eventfd: %s", strerror(errno));
        signpool_free(p);
        return NULL;
    }
    p->ev = event_new(base, p->efd, EV_READ | EV_PERSIST, on_finished, p);
    if (!p->ev || event_add(p->ev, NULL) < 0) {
        err_set(e, ERR_IO, "signing pool: registering the completion event failed");
        signpool_free(p);
        return NULL;
    }
    p->threads = xcalloc((size_t)threads, sizeof *p->threads);
    for (; p->nthreads < threads; p->nthreads++) {
        int rc = pthread_create(&p->threads[p->nthreads], NULL, worker_main, p);
        if (rc) {
            err_set(e, ERR_IO, "signing pool: starting thread %d: %s", p->nthreads + 1, strerror(rc));
            signpool_free(p);
            return NULL;
        }
    }
    return p;
}

int signpool_run(signpool *p, signpool_fn work, signpool_fn done, void *arg)
{
    job *j = xcalloc(1, sizeof *j);
    *j = (job){.work = work, .done = done, .arg = arg};
    pthread_mutex_lock(&p->lock);
    if (p->stopping) {
        pthread_mutex_unlock(&p->lock);
        free(j);
        return -1;
    }
    STAILQ_INSERT_TAIL(&p->todo, j, link);
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static void free_list(struct job_list *l)
{
    while (!STAILQ_EMPTY(l)) {
        job *j = STAILQ_FIRST(l);
        STAILQ_REMOVE_HEAD(l, link);
        free(j);
    }
}

void signpool_free(signpool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stopping = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    free(p->threads);
    free_list(&p->todo);
    free_list(&p->finished);
    if (p->ev)
        event_free(p->ev);
    if (p->efd >= 0)
        close(p->efd);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    free(p);
}
