/*
 * submit — the one submit pipeline. SMTP submission, the HTTP API and the
 * sendmail command all hand their messages here; nothing is validated,
 * rewritten or stored in two ways.
 *
 * submit_message() does, in order:
 *   1. parse the header section (headers.h): bounded, CRLF only, no NUL,
 *      8-bit only with SMTPUTF8;
 *   2. require exactly one parseable From: whose every mailbox, and the
 *      envelope sender, is in a domain the key may send for (ERR_DENIED);
 *   3. rewrite the header: prepend a Received: trace field, drop Bcc:,
 *      add Message-ID: (<128-bit hex@hostname>), Date: and MIME-Version:
 *      when missing, fold header lines at 78 octets (refusing any that
 *      cannot be kept under 998), and with a [sender] bounce_domain set the
 *      envelope sender to bounces+<id>@bounce_domain (original in meta);
 *   4. mark recipients on the suppression list (they are stored, never
 *      contacted, and get a 'suppressed' event);
 *   5. DKIM-sign the rebuilt bytes for the From domain (dkim.h) on a
 *      signing worker thread (sign_pool.h), so the spool stores signed
 *      bytes and the event loop never waits for an RSA signature;
 *   6. queue the result for the spool's group commit and call cb once the
 *      commit is durable (or failed, or signing failed).
 * Steps 1-4 run synchronously: a message that fails them returns -1 with
 * an error and nothing is stored. After a 0 return, cb runs exactly once.
 *
 * Errors carry a class in e->code that each ingress maps to its protocol:
 *   ERR_INVALID 550 5.6.0 / 422   ERR_DENIED 550 5.7.1 / 403
 *   ERR_LIMIT   552 5.3.4 / 413   ERR_FULL   452 4.3.1 / 507
 *   ERR_IO, ERR_BUSY 451 4.3.0 / 503
 *
 * Per-key rate limits (token buckets) live here too, so every ingress
 * enforces the same budget.
 */
#ifndef PH_SUBMIT_SUBMIT_H
#define PH_SUBMIT_SUBMIT_H

#include "core/config.h"
#include "core/err.h"
#include "spool/spool.h"

#include <stdint.h>

typedef struct submit submit;

typedef struct submit_req {
    const char *ingress;        /* "smtp", "api", "sendmail" */
    const spool_key *key;       /* authenticated key; NULL = trusted local caller */
    const char *client_ip;      /* for Received: (NULL: local) */
    const char *client_helo;    /* EHLO name, or NULL */
    const char *protocol;       /* Received "with": ESMTPSA, ESMTPS, HTTP, HTTPS, LOCAL */
    const char *mail_from;      /* validated envelope sender; "" = null reverse-path */
    const char *const *rcpts;   /* validated, normalised envelope recipients */
    size_t nrcpts;
    const char *data;           /* complete message, CRLF line endings */
    size_t len;
    int smtputf8;               /* 8-bit header allowed */
    const char *meta;           /* JSON object text from the ingress (tags, metadata), or NULL */
    int64_t not_before_ms;      /* scheduled send, 0 = now */
    int unsubscribe;            /* add one-click List-Unsubscribe (RFC 8058); needs one recipient.
                                   A header "X-Posthaste-Unsubscribe: yes" asks the same (and is removed). */
} submit_req;

typedef struct submit_result {
    const char *id;                  /* message id */
    size_t nrcpts;
    const unsigned char *suppressed; /* per recipient, 1 = suppressed */
} submit_result;

typedef void (*submit_cb)(void *arg, const submit_result *res, const err *e);

submit *submit_new(spool *s, const config *cfg);
/* 0 when the pipeline can sign and send; -1 + e (e.g. a DKIM key file
   that is missing, not 0600 or too short) otherwise. submit_new() never
   fails, so callers check this; submit_message() fails with the same error. */
int submit_ready(const submit *sb, err *e);
/* Sign on `threads` worker threads with completions on base (serve);
   without it (CLI, tests) signing runs inside submit_message(). */
struct event_base;
int submit_start_signing(submit *sb, struct event_base *base, int threads, err *e);
/* Run work(arg) on a signing worker and then done(arg) on the loop, for
   other CPU-bound steps of an ingress (the API's MIME build). work must
   touch nothing but arg. Without worker threads (CLI, tests, sign_threads
   = 0) both run before this returns. -1 when the workers are stopping. */
int submit_offload(submit *sb, void (*work)(void *), void (*done)(void *), void *arg);
void submit_free(submit *sb);
/* Apply limits from a re-read config. */
void submit_reload(submit *sb, const config *cfg);
int submit_message(submit *sb, const submit_req *r, submit_cb cb, void *arg, err *e);
/* Take n tokens from the key's bucket: 0 when allowed, else the number of
   milliseconds until they would be (nothing taken). Keys without a rate
   always pass. */
int64_t submit_rate_take(submit *sb, const spool_key *k, double n);
/* Call fn(arg) on the event loop after each message due now commits
   (delivery uses it to scan at once). One hook; NULL removes it. */
void submit_on_queued(submit *sb, void (*fn)(void *arg), void *arg);
/* Submissions accepted but not yet committed (for draining). */
size_t submit_in_flight(submit *sb);

/* The pipeline as a `serve` component (creates srv->submit). */
struct server_component;
extern const struct server_component submit_component;

#endif
