/*
 * spool_writer — crash-safety driver for the spool (tests only).
 *
 *   spool_writer SPOOL_PATH [INFLIGHT [MAX_SIZE_BYTES [BODY_BYTES]]]
 *
 * Keeps INFLIGHT submissions in flight through the real group-commit path
 * on a libevent loop, and prints each message id on stdout (flushed) only
 * from its commit callback — i.e. exactly when a server would acknowledge
 * it. Runs until killed. A failed submission prints "ERR <message>".
 * The crash test SIGKILLs it at random moments and checks that every
 * printed id is in the spool.
 */
#include "core/log.h"
#include "spool/spool.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct driver {
    spool *s;
    spool_submission m;
    int errors;
} driver;

static void submit_one(driver *d);

static void on_done(void *arg, const char *id, const err *e)
{
    driver *d = arg;
    if (e) {
        printf("ERR %s\n", e->msg);
        fflush(stdout);
        if (++d->errors > 1000)
            exit(3);
    } else {
        printf("%s\n", id);
        fflush(stdout);
    }
    submit_one(d);
}

static void submit_one(driver *d)
{
    if (spool_submit(d->s, &d->m, on_done, d) < 0) {
        fprintf(stderr, "spool closed\n");
        exit(2);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: spool_writer SPOOL_PATH [INFLIGHT [MAX_SIZE [BODY_BYTES]]]\n");
        return 2;
    }
    int inflight = argc > 2 ? atoi(argv[2]) : 16;
    long long max_size = argc > 3 ? atoll(argv[3]) : 0;
    size_t body_len = argc > 4 ? (size_t)atoll(argv[4]) : 2048;
    log_set_level(LOG_ERROR);
    spool_opts o = {.path = argv[1], .synchronous_full = 1, .max_size = max_size, .commit_batch = 512,
                    .busy_timeout_ms = 5000};
    err e;
    spool *s = spool_open(&o, &e);
    if (!s) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    struct event_base *base = event_base_new();
    if (!base || spool_start_writer(s, base, &e)) {
        fprintf(stderr, "cannot start writer\n");
        return 1;
    }
    static const char *rcpts[] = {"one@example.com", "two@example.net", "three@example.org"};
    char *data = malloc(body_len + 128);
    int n = snprintf(data, 128, "From: crash@example.com\r\nSubject: crash test\r\n\r\n");
    memset(data + n, 'x', body_len);
    driver d = {.s = s,
                .m = {.mail_from = "crash@example.com", .rcpts = rcpts, .nrcpts = 3, .data = data,
                      .len = (size_t)n + body_len, .ingress = "test"}};
    for (int i = 0; i < inflight; i++)
        submit_one(&d);
    event_base_dispatch(base);
    return 0;
}
