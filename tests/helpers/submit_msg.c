/*
 * submit_msg — test helper: run one message through the real submit
 * pipeline (header checks, hygiene, DKIM signing on the worker pool,
 * group commit) the way `serve` does, and print the new message id.
 *
 *   submit_msg CONFIG MAIL_FROM RCPT... < message
 *
 * MAIL_FROM may be "" (null reverse-path). The message is read from stdin
 * (CRLF line endings). Exit 0 and the id on stdout, or 1 and the error.
 */
#include "cli/cli.h"
#include "core/buf.h"
#include "core/config.h"
#include "submit/submit.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct outcome {
    struct event_base *base;
    char id[64];
    err e;
    int failed;
} outcome;

static void on_done(void *arg, const submit_result *res, const err *e)
{
    outcome *o = arg;
    if (e) {
        o->e = *e;
        o->failed = 1;
    } else {
        snprintf(o->id, sizeof o->id, "%s", res->id);
    }
    event_base_loopbreak(o->base);
}

static int read_stdin(buf *msg)
{
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
        if (buf_append(msg, chunk, n))
            return -1;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: submit_msg CONFIG MAIL_FROM RCPT... < message\n");
        return 2;
    }
    config *cfg = cli_load_config(argv[1]);
    spool *sp = cfg ? cli_open_spool(cfg) : NULL;
    if (!sp)
        return 1;
    outcome o = {.base = event_base_new()};
    buf msg;
    buf_init(&msg, 64u << 20);
    submit *sb = submit_new(sp, cfg);
    err e = {0};
    int rc = 1;
    if (read_stdin(&msg) || spool_start_writer(sp, o.base, &e) || submit_ready(sb, &e) ||
        submit_start_signing(sb, o.base, 2, &e))
        goto out;
    submit_req r = {.ingress = "sendmail", .protocol = "LOCAL", .mail_from = argv[2],
                    .rcpts = (const char *const *)(argv + 3), .nrcpts = (size_t)(argc - 3),
                    .data = msg.data ? msg.data : "", .len = msg.len};
    if (submit_message(sb, &r, on_done, &o, &e))
        goto out;
    event_base_dispatch(o.base);
    if (o.failed)
        e = o.e;
    else
        rc = 0;
out:
    if (rc)
        fprintf(stderr, "submit_msg: %s\n", e.msg);
    else
        printf("%s\n", o.id);
    submit_free(sb);
    spool_close(sp);
    event_base_free(o.base);
    buf_free(&msg);
    cfg_free(cfg);
    return rc;
}
