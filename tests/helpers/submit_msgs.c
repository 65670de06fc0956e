/*
 * submit_msgs — put test messages straight into a spool (for delivery
 * tests that must not depend on the SMTP server or the HTTP API).
 *
 *   submit_msgs SPOOL_DB COUNT FROM TO[,TO…] [SIZE] [INGRESS] [SUBJECT]
 *
 * Writes COUNT messages of about SIZE body bytes (default 200) in one
 * transaction, each with the listed envelope recipients, a unique
 * Message-ID and Subject "SUBJECT N" (default "test"), and prints each
 * message id on its own line. INGRESS defaults to "smtp".
 */
#include "core/err.h"
#include "spool/spool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct batch {
    int count;
    const char *from;
    const char **rcpts;
    size_t nrcpts;
    size_t size;
    const char *ingress;
    const char *subject;
    char (*ids)[ID_MSG_LEN + 1];
} batch;

static char *make_message(const batch *b, int i, size_t *len)
{
    size_t cap = b->size + 4096;
    char *m = malloc(cap);
    if (!m)
        abort();
    int n = snprintf(m, cap,
                     "From: Sender <%s>\r\nTo: <%s>\r\nSubject: %s %d\r\nMessage-ID: <t%d.%d@test>\r\n"
                     "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n",
                     b->from, b->rcpts[0], b->subject, i, i, rand());
    size_t off = (size_t)n;
    /* Lines of 70 characters; a leading dot tests dot-stuffing. */
    for (int k = 0; off < (size_t)n + b->size; k++) {
        const char *line = k % 3 == 1 ? ".leading dot line" : k % 3 == 2 ? "..two dots" : "The quick brown fox";
        off += (size_t)snprintf(m + off, cap - off, "%s %d\r\n", line, i);
    }
    *len = off;
    return m;
}

static int write_all(spool_tx *tx, void *arg, err *e)
{
    batch *b = arg;
    for (int i = 0; i < b->count; i++) {
        size_t len;
        char *data = make_message(b, i, &len);
        spool_submission s = {.mail_from = b->from, .rcpts = b->rcpts, .nrcpts = b->nrcpts, .data = data,
                              .len = len, .ingress = b->ingress, .meta = "{}"};
        int rc = spool_tx_insert_message(tx, &s, b->ids[i], e);
        free(data);
        if (rc)
            return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: submit_msgs SPOOL_DB COUNT FROM TO[,TO...] [SIZE] [INGRESS] [SUBJECT]\n");
        return 2;
    }
    batch b = {.count = atoi(argv[2]), .from = argv[3], .size = argc > 5 ? (size_t)atol(argv[5]) : 200,
               .ingress = argc > 6 ? argv[6] : "smtp", .subject = argc > 7 ? argv[7] : "test"};
    char *list = strdup(argv[4]);
    b.rcpts = calloc(strlen(list) + 1, sizeof *b.rcpts);
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save))
        b.rcpts[b.nrcpts++] = t;
    srand((unsigned)getpid());
    b.ids = calloc((size_t)b.count + 1, sizeof *b.ids);
    spool_opts o = {.path = argv[1], .synchronous_full = 1, .commit_batch = 512, .busy_timeout_ms = 10000};
    err e;
    spool *s = spool_open(&o, &e);
    if (!s || spool_write_sync(s, write_all, &b, &e)) {
        fprintf(stderr, "submit_msgs: %s\n", e.msg);
        return 1;
    }
    for (int i = 0; i < b.count; i++)
        printf("%s\n", b.ids[i]);
    spool_close(s);
    free(b.ids);
    free(b.rcpts);
    free(list);
    return 0;
}
