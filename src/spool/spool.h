/*
 * spool — the durable queue. The only interface other subsystems use.
 *
 * What it owns: one SQLite database in WAL mode (messages with their raw
 * RFC 5322 bytes, recipients and their delivery state, events, API keys,
 * suppressions), its schema and migrations, and the writer thread.
 *
 * Durability. Every write goes through spool_write()/spool_submit(): a
 * single writer thread takes every request queued while its previous
 * commit was in flight, runs them in ONE transaction (each in its own
 * savepoint, so one failing request does not fail its neighbours), commits
 * with synchronous=FULL (fsync), and only then hands each request's
 * completion back to the event loop. That is group commit: a hundred
 * concurrent SMTP sessions share one fsync instead of queueing for a
 * hundred. Callers acknowledge (SMTP 250, HTTP 202) from the completion,
 * never before, so an acknowledged message has reached stable storage.
 *
 * Without a writer thread (CLI commands) spool_write() runs the request in
 * its own transaction on the calling thread and completes before returning.
 *
 * Reads run on the calling thread over a separate connection; WAL lets them
 * proceed while the writer commits. Read and write connections are each
 * used by one thread only.
 *
 * What it never does: parse mail, talk to the network, or block the event
 * loop on an fsync.
 *
 * Limits: spool.max_size (SQLITE_FULL -> ERR_FULL, which ingress maps to
 * 452 4.3.1 / HTTP 507), spool.commit_batch requests per transaction.
 */
#ifndef PH_SPOOL_SPOOL_H
#define PH_SPOOL_SPOOL_H

#include "core/err.h"
#include "core/ids.h"

#include <stddef.h>
#include <stdint.h>

struct event_base;
typedef struct spool spool;
typedef struct spool_tx spool_tx; /* a write transaction, valid inside a spool_write_fn */

/* States of a recipient (DESIGN.md). Stored as integers; never renumber. */
enum spool_rcpt_state {
    RCPT_QUEUED = 0,
    RCPT_SENDING = 1,
    RCPT_DEFERRED = 2,
    RCPT_DELIVERED = 3,
    RCPT_BOUNCED = 4,
    RCPT_EXPIRED = 5,
    RCPT_SUPPRESSED = 6,
    RCPT_CANCELLED = 7,
};
#define RCPT_STATE_COUNT 8
const char *spool_state_name(int state);
int spool_state_parse(const char *name); /* -1 when unknown */
int spool_state_is_final(int state);

typedef struct spool_opts {
    const char *path;        /* database file */
    int synchronous_full;    /* 1: fsync every commit (the default) */
    int64_t max_size;        /* bytes, 0 = unlimited */
    int commit_batch;        /* requests per transaction */
    int busy_timeout_ms;
} spool_opts;

/* Open (creating and migrating as needed). Returns NULL and fills e. */
spool *spool_open(const spool_opts *o, err *e);
/* Start the group-commit writer; completions are delivered on `base`. */
int spool_start_writer(spool *s, struct event_base *base, err *e);
/* Stop accepting writes, finish everything queued, join the writer and run
   the last completions; reads still work. spool_close() does this first. */
void spool_drain(spool *s);
/* Drain, then close the database. */
void spool_close(spool *s);
/* Requests queued or in flight in the writer (for draining and /readyz). */
size_t spool_pending(spool *s);
/* Group commits completed so far and writes they carried (for metrics and
   for tests that prove writes share commits). */
void spool_commit_stats(spool *s, uint64_t *commits, uint64_t *writes);
/* Observe every committed batch: called on the writer thread right after
   each COMMIT with its duration and the number of writes it carried, and
   once per event type written in the batch (type, count). Both run
   under the spool's lock: quick, thread-safe, and never calling the spool. */
typedef struct spool_hooks {
    void (*committed)(void *arg, double seconds, size_t writes);
    void (*events)(void *arg, const char *type, size_t count);
    void *arg;
} spool_hooks;
void spool_set_hooks(spool *s, const spool_hooks *h);
/* Milliseconds the most recent group commit took (fsync included). */
int64_t spool_last_commit_ms(spool *s);
/* Reset recipients left 'sending' by a crash to 'queued' (at-least-once). */
int spool_recover(spool *s, err *e);
/* PRAGMA integrity_check == "ok" -> 0. */
int spool_check(spool *s, err *e);

/* ---- generic writes (group commit) -------------------------------- */

/* Runs on the writer thread inside a transaction. Return 0 or -1 + e. */
typedef int (*spool_write_fn)(spool_tx *tx, void *arg, err *e);
/* Runs on the event loop after the commit (e == NULL on success). */
typedef void (*spool_done_fn)(void *arg, const err *e);
/* Queue a write. fn must only touch arg and tx; done may be NULL.
   Returns -1 (and calls nothing) when the spool is closing. */
int spool_write(spool *s, spool_write_fn fn, spool_done_fn done, void *arg);
/* Queue a write and wait for its commit (any thread but the writer's;
   from the event loop only for rare administrative writes). */
int spool_write_sync(spool *s, spool_write_fn fn, void *arg, err *e);

/* ---- submissions ---------------------------------------------------- */

typedef struct spool_submission {
    const char *id;                 /* pre-assigned message id, or NULL to mint one */
    const char *mail_from;          /* envelope sender; "" for the null path */
    const char *const *rcpts;       /* envelope recipients */
    const unsigned char *suppressed; /* per recipient: 1 = record as suppressed; may be NULL */
    size_t nrcpts;
    const char *data;               /* the complete RFC 5322 message */
    size_t len;
    const char *ingress;            /* "smtp", "api", "sendmail", "cli" */
    const char *key_id;             /* public id of the submitting key, or NULL */
    const char *meta;               /* JSON object text (tags, metadata, …) or NULL */
    int64_t not_before_ms;          /* scheduled send; 0 = now */
} spool_submission;

/* Completion of one submission: id is the new message id on success. */
typedef void (*spool_submit_cb)(void *arg, const char *id, const err *e);

/* Queue one message for the next group commit. The submission is copied,
   so the caller may free its buffers on return. */
int spool_submit(spool *s, const spool_submission *m, spool_submit_cb cb, void *arg);
/* Write one message and wait for its commit (CLI, tests). */
int spool_submit_sync(spool *s, const spool_submission *m, char id[ID_MSG_LEN + 1], err *e);
/* Inside a transaction: insert a message, its recipients and their events. */
int spool_tx_insert_message(spool_tx *tx, const spool_submission *m, char id[ID_MSG_LEN + 1],
                            err *e);

/* ---- recipient state and events (used inside spool_write_fn) -------- */

typedef struct spool_rcpt_update {
    int64_t rcpt_id;
    int state;                 /* new state */
    int64_t next_at_ms;        /* when deferred: next attempt */
    int add_attempt;           /* 1: attempts += 1 */
    const char *reply;         /* remote reply or local reason (may be NULL) */
    const char *host;          /* remote host (may be NULL) */
} spool_rcpt_update;

int spool_tx_rcpt_update(spool_tx *tx, const spool_rcpt_update *u, err *e);
/* Append an event. data_json: a JSON object text or NULL. */
int spool_tx_event(spool_tx *tx, const char *msg_id, const char *rcpt, const char *type,
                   const char *data_json, err *e);
int spool_tx_suppress(spool_tx *tx, const char *email, const char *scope, const char *reason,
                      err *e);
int spool_tx_unsuppress(spool_tx *tx, const char *email, const char *scope, err *e);
/* Delete a message (all recipients and the body). Events are kept. */
int spool_tx_delete_message(spool_tx *tx, const char *msg_id, err *e);
/* Make every non-final recipient of a message (or of all messages when
   msg_id is NULL) due now. Returns how many (>= 0) or -1. */
int spool_tx_retry_now(spool_tx *tx, const char *msg_id, err *e);

/* ---- reads ----------------------------------------------------------- */

typedef struct spool_rcpt {
    int64_t id;
    char *msg_id;
    char *addr;
    char *domain;
    int state;
    int attempts;
    int64_t next_at_ms;
    int64_t updated_ms;
    char *last_reply;
    char *last_host;
} spool_rcpt;

typedef struct spool_message {
    int64_t rowid;
    char id[ID_MSG_LEN + 1];
    int64_t created_ms;
    char *mail_from;
    char *ingress;
    char *key_id;
    char *meta;               /* JSON or NULL */
    char *data;               /* raw message (NULL unless asked for) */
    size_t len;
    spool_rcpt *rcpts;
    size_t nrcpts;
} spool_message;

/* Load a message by id; with_data also loads the raw bytes. */
int spool_message_get(spool *s, const char *id, int with_data, spool_message *out, err *e);
void spool_message_free(spool_message *m);
void spool_rcpt_free(spool_rcpt *r);

/* Due recipients in (next_at, id) order after the cursor, at most limit.
   The cursor makes repeated scans resume instead of re-reading rows that
   are already in flight; reset it to {0,0} to start over. */
typedef struct spool_cursor {
    int64_t next_at_ms;
    int64_t id;
} spool_cursor;
typedef void (*spool_rcpt_cb)(void *arg, const spool_rcpt *r);
/* Returns the number of rows given to cb, or -1. */
int spool_due(spool *s, int64_t now_ms, spool_cursor *cur, int limit, spool_rcpt_cb cb, void *arg,
              err *e);
/* Creation time of the oldest message with a pending recipient; 0 when none. */
int64_t spool_oldest_pending_ms(spool *s);
/* Earliest next_at of any pending recipient; 0 when none. */
int64_t spool_next_due(spool *s);

/* Messages newest first; state < 0 = any state. cb gets each message
   (without data, with recipients). Returns count or -1. */
typedef void (*spool_message_cb)(void *arg, const spool_message *m);
int spool_list(spool *s, int state, int limit, spool_message_cb cb, void *arg, err *e);

/* Counts of recipients by state. */
int spool_counts(spool *s, int64_t counts[RCPT_STATE_COUNT], err *e);

typedef struct spool_event {
    int64_t id;
    int64_t ts_ms;
    const char *msg_id;
    const char *rcpt;
    const char *type;
    const char *data; /* JSON or NULL */
} spool_event;
typedef void (*spool_event_cb)(void *arg, const spool_event *ev);
/* Events with id > after_id, optionally of one message and/or one type. */
int spool_events(spool *s, int64_t after_id, const char *msg_id, const char *type, int limit,
                 spool_event_cb cb, void *arg, err *e);

/* Suppression lookup: 1 suppressed (reason copied), 0 not, -1 error.
   A suppression with scope "" applies to every sender domain. */
int spool_is_suppressed(spool *s, const char *email, const char *scope, char *reason,
                        size_t reason_len, err *e);

/* ---- API queries (spool_api.c) ---------------------------------------- */

/* Filters for GET /v1/messages. Keyset pagination: rows with rowid below
   before_rowid (0: from the newest), newest first. */
typedef struct spool_msg_filter {
    int state;              /* a recipient in this state; -1 = any */
    const char *recipient;  /* a recipient with this address; NULL = any */
    const char *tag;        /* meta.tags holds this tag; NULL = any */
    int64_t since_ms;       /* created at or after; 0 = any */
    int64_t before_rowid;   /* cursor; 0 = start */
    int limit;
} spool_msg_filter;
int spool_list_filtered(spool *s, const spool_msg_filter *f, spool_message_cb cb, void *arg, err *e);

/* Events after after_id (and at or after since_ms when > 0), optionally of
   one type, with the message's meta (tags, metadata) joined in. */
typedef struct spool_event_meta {
    spool_event ev;
    const char *meta; /* the message's meta JSON or NULL */
} spool_event_meta;
typedef void (*spool_event_meta_cb)(void *arg, const spool_event_meta *ev);
int spool_events_query(spool *s, int64_t after_id, int64_t since_ms, const char *type, int limit,
                       spool_event_meta_cb cb, void *arg, err *e);

typedef struct spool_suppression {
    const char *email;
    const char *scope;
    const char *reason;
    int64_t created_ms;
} spool_suppression;
typedef void (*spool_suppression_cb)(void *arg, const spool_suppression *sp);
/* Suppressions in email order after after_email ("" = start); email != NULL
   lists that address only. Returns count or -1. */
int spool_suppressions(spool *s, const char *email, const char *after_email, int limit,
                       spool_suppression_cb cb, void *arg, err *e);

/* Idempotency records (kept for ttl): 1 found (hash, status, response are
   new strings / values), 0 none younger than min_created_ms, -1 error. */
int spool_idem_get(spool *s, const char *key_id, const char *idem_key, int64_t min_created_ms,
                   char **hash, int *status, char **response, err *e);
int spool_tx_idem_put(spool_tx *tx, const char *key_id, const char *idem_key, const char *hash,
                      int status, const char *response, err *e);
/* Forget records created before before_ms. */
int spool_tx_idem_expire(spool_tx *tx, int64_t before_ms, err *e);

/* Cancel every queued or deferred recipient of a message (state
   'cancelled', one event each). Returns how many, or -1 (ERR_NOTFOUND
   when there is no such message). */
int spool_tx_cancel(spool_tx *tx, const char *msg_id, err *e);

/* Recipients of messages submitted by a key since since_ms; *oldest_ms gets
   the creation time of the oldest such message (0 when none). -1 on error. */
int64_t spool_key_rcpts_since(spool *s, const char *key_id, int64_t since_ms, int64_t *oldest_ms,
                              err *e);

/* ---- webhooks (spool_webhooks.c) --------------------------------------- */

typedef struct spool_webhook {
    const char *id;
    const char *url;
    const char *events;     /* comma-separated event types */
    const char *secret;     /* HMAC signing secret */
    int64_t created_ms;
    int64_t cursor;         /* last event id the endpoint acknowledged */
    int64_t failing_since_ms;
    const char *last_error; /* may be NULL */
    int healthy;
} spool_webhook;
typedef void (*spool_webhook_cb)(void *arg, const spool_webhook *w);
/* All webhooks, or the one with id (id != NULL). Returns count or -1. */
int spool_webhooks(spool *s, const char *id, spool_webhook_cb cb, void *arg, err *e);
int spool_tx_webhook_insert(spool_tx *tx, const spool_webhook *w, err *e);
int spool_tx_webhook_delete(spool_tx *tx, const char *id, err *e);
int spool_tx_webhook_progress(spool_tx *tx, const char *id, int64_t cursor, int64_t failing_since_ms,
                              const char *last_error, int healthy, err *e);

/* ---- API keys -------------------------------------------------------- */

enum { KEY_SCOPE_SEND = 1, KEY_SCOPE_READ = 2, KEY_SCOPE_ADMIN = 4 };

typedef struct spool_key {
    char id[32];
    char *name;
    unsigned char hash[32];   /* SHA-256 of the secret part */
    int scopes;
    char *sender_domains;     /* comma-separated, "" = any */
    char *allow_ips;          /* comma-separated CIDRs, "" = any */
    double rate;              /* messages per second, 0 = unlimited */
    int require_signing;
    int64_t created_ms;
    int64_t revoked_ms;       /* 0 = active */
    int bulk;                 /* its mail gets one-click unsubscribe links */
} spool_key;

int spool_key_insert(spool *s, const spool_key *k, err *e);
/* 1 found, 0 not found, -1 error. */
int spool_key_get(spool *s, const char *id, spool_key *out, err *e);
typedef void (*spool_key_cb)(void *arg, const spool_key *k);
int spool_key_list(spool *s, spool_key_cb cb, void *arg, err *e);
/* 1 revoked, 0 no such active key, -1 error. */
int spool_key_revoke(spool *s, const char *id, err *e);
void spool_key_free(spool_key *k);

#endif
