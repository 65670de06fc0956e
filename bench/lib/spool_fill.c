/*
 * spool_fill — put many queued messages straight into a spool (bench/queue).
 *
 *   spool_fill SPOOL_DB COUNT [BODY_BYTES [PER_TXN]]
 *
 * What it does: writes COUNT messages of about BODY_BYTES (default 1024)
 * body bytes, one recipient each (rcptN@sink.test, one destination), through
 * the spool's own insert (spool_tx_insert_message), PER_TXN (default
 * 10,000) per transaction, and prints the elapsed seconds. It is setup for
 * a benchmark, not a measured path: the messages arrive as they would from
 * ingress, only faster than any client could send them.
 *
 * Never: touches a spool in use by a writer other than SQLite's locking
 * allows, or prints message contents.
 */
#include "core/err.h"
#include "spool/spool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct fill {
    long first, count;
    size_t body;
    char *msg;       /* shared template; the headers differ per message */
    char *body_text; /* BODY_BYTES of text lines */
} fill;

static int write_batch(spool_tx *tx, void *arg, err *e)
{
    fill *f = arg;
    for (long i = f->first; i < f->first + f->count; i++) {
        char rcpt[64];
        snprintf(rcpt, sizeof rcpt, "rcpt%ld@sink.test", i);
        size_t cap = f->body + 512;
        int n = snprintf(f->msg, cap,
                         "From: Bench <bench@example.com>\r\nTo: <%s>\r\nSubject: queued %ld\r\n"
                         "Message-ID: <q%ld@bench.test>\r\nMIME-Version: 1.0\r\n"
                         "Content-Type: text/plain\r\n\r\n%s",
                         rcpt, i, i, f->body_text);
        const char *rcpts[1] = {rcpt};
        spool_submission s = {.mail_from = "bench@example.com", .rcpts = rcpts, .nrcpts = 1, .data = f->msg,
                              .len = (size_t)n, .ingress = "smtp", .meta = "{}"};
        char id[ID_MSG_LEN + 1];
        if (spool_tx_insert_message(tx, &s, id, e))
            return -1;
    }
    return 0;
}

static char *body_text(size_t len)
{
    char *p = malloc(len + 100);
    if (!p)
        abort();
    size_t off = 0;
    while (off < len)
        off += (size_t)snprintf(p + off, len + 100 - off, "%s\r\n",
                                "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem");
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: spool_fill SPOOL_DB COUNT [BODY_BYTES [PER_TXN]]\n");
        return 2;
    }
    long total = atol(argv[2]);
    fill f = {.body = argc > 3 ? (size_t)atol(argv[3]) : 1024};
    long per = argc > 4 ? atol(argv[4]) : 10000;
    if (total < 0 || per < 1 || f.body > (1 << 20)) {
        fprintf(stderr, "spool_fill: COUNT >= 0, PER_TXN >= 1, BODY_BYTES <= 1 MiB\n");
        return 2;
    }
    f.body_text = body_text(f.body);
    f.msg = malloc(f.body + 512 + 100);
    spool_opts o = {.path = argv[1], .synchronous_full = 1, .commit_batch = 512, .busy_timeout_ms = 10000};
    err e;
    spool *s = spool_open(&o, &e);
    if (!s) {
        fprintf(stderr, "spool_fill: %s\n", e.msg);
        return 1;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long done = 0; done < total; done += f.count) {
        f.first = done;
        f.count = total - done < per ? total - done : per;
        if (spool_write_sync(s, write_batch, &f, &e)) {
            fprintf(stderr, "spool_fill: after %ld messages: %s\n", done, e.msg);
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    spool_close(s);
    printf("%.3f\n", (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    free(f.msg);
    free(f.body_text);
    return 0;
}
