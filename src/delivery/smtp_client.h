/*
 * smtp_client — one outbound SMTP connection on the server's libevent
 * loop: connect (trying each address in turn), greeting, EHLO, STARTTLS or
 * implicit TLS under a TLS policy, AUTH, then any number of transactions.
 *
 * What it does:
 *  - smtpc_connect() tries the targets in order (MX preference order) and
 *    moves to the next one on a connect failure, a time-out, a greeting
 *    that is not 2xx, or a TLS failure; ready_cb reports the first usable
 *    session or the last failure.
 *  - TLS policy: none (never STARTTLS), may (STARTTLS when offered, no
 *    verification; a failed handshake is retried once in plaintext on
 *    the same host), encrypt (TLS required, unverified), verify (TLS
 *    required, chain checked against tls_ca_file or the system store and
 *    the name checked against the host). TLS 1.2 or later only.
 *    After "220" to STARTTLS every byte the server already sent is
 *    discarded before the handshake (response injection, CVE-2011-0411
 *    class) and EHLO is sent again over TLS.
 *  - smtpc_send() runs one transaction: MAIL, RCPT for every recipient,
 *    DATA, the dot-stuffed body (SIZE= when offered, RFC 1870). With PIPELINING the commands up to DATA
 *    go out in one write (RFC 2920); each RCPT's reply is kept per
 *    recipient. BODY=8BITMIME and SMTPUTF8 are added when the message
 *    needs them and the server offers them; a message needing SMTPUTF8
 *    sent to a server without it fails permanently (5.6.7) unsent.
 *    A reused connection sends RSET first.
 *  - Replies are parsed by proto/smtp_reply (bounded, strict).
 *  - Every wait has a time-out (RFC 5321 4.5.3.2, from the config).
 *
 * What it owns: the socket, the TLS session, the parser.
 * What it never does: touch the spool, decide retries, or log bodies.
 * Callbacks are never called from inside smtpc_* calls (they are deferred
 * to the loop), so a callback may call smtpc_send()/smtpc_close().
 */
#ifndef PH_DELIVERY_SMTP_CLIENT_H
#define PH_DELIVERY_SMTP_CLIENT_H

#include "core/err.h"

#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;

enum smtpc_tls { SMTPC_TLS_NONE, SMTPC_TLS_MAY, SMTPC_TLS_ENCRYPT, SMTPC_TLS_VERIFY };
/* "none|may|encrypt|verify" -> enum; -1 when unknown. */
int smtpc_tls_parse(const char *s);
const char *smtpc_tls_name(int policy);

typedef struct smtpc_opts {
    struct event_base *base;
    SSL_CTX *ssl_ctx;
    const char *helo;             /* our name in EHLO */
    int tls_policy;
    int implicit_tls;             /* TLS from the first byte (relay port 465) */
    const char *auth_user;        /* NULL: no AUTH */
    const char *auth_pass;
    int64_t t_connect, t_greeting, t_mail, t_rcpt, t_data_init, t_data_block, t_data_term;
    size_t max_reply_line, max_reply_size;
} smtpc_opts;

typedef struct smtpc_target {
    char *host;                   /* name (for TLS and logs) */
    struct sockaddr_storage addr;
    socklen_t len;
} smtpc_target;

/* The outcome of one step: a reply or a local cause. */
typedef struct smtpc_result {
    int code;                     /* SMTP code, or 0 for a local/network failure */
    char status[16];              /* enhanced status code or "" */
    char *text;                   /* full reply text or the local reason (owned) */
} smtpc_result;

typedef struct smtpc_conn smtpc_conn;

/* ok: session ready. On failure (ok = 0) res holds the last failure and
   the connection is already freed; refused: every target refused the TCP
   connection or answered 421. */
typedef void (*smtpc_ready_cb)(void *arg, smtpc_conn *c, int ok, const smtpc_result *res, int refused);

/* Targets are copied. Opts strings must outlive the connection. */
smtpc_conn *smtpc_connect(const smtpc_opts *o, const smtpc_target *targets, size_t n, smtpc_ready_cb cb,
                          void *arg);

typedef struct smtpc_txn {
    const char *mail_from;        /* "" = null reverse-path */
    const char *const *rcpts;
    size_t nrcpts;
    const char *data;
    size_t len;
    smtpc_result *results;        /* nrcpts entries, filled by the client */
} smtpc_txn;

/* reusable: the session can take another transaction. Results are in
   txn->results (free them with smtpc_result_clear). */
typedef void (*smtpc_txn_cb)(void *arg, smtpc_conn *c, int reusable);
void smtpc_send(smtpc_conn *c, smtpc_txn *t, smtpc_txn_cb cb, void *arg);

/* Send QUIT (when possible) and free the connection. Returns 1 when the
   QUIT is on its way: the connection frees itself once it is written (at
   most 2 s) and then calls closed(arg); 0 when it was freed at once
   (closed is not called). */
int smtpc_close(smtpc_conn *c, void (*closed)(void *arg), void *arg);
/* Free at once, without QUIT (shutdown). */
void smtpc_free(smtpc_conn *c);
/* 0 once the server has closed an idle session. */
int smtpc_alive(const smtpc_conn *c);

/* The peer's "name [address]" (for events) and TLS state. */
const char *smtpc_peer(const smtpc_conn *c);
int smtpc_tls_active(const smtpc_conn *c);

void smtpc_result_set(smtpc_result *r, int code, const char *status, const char *text);
void smtpc_result_clear(smtpc_result *r);

/* A client TLS context: TLS 1.2+, the CA bundle (NULL/"" = system store). */
SSL_CTX *smtpc_tls_ctx_new(const char *ca_file, err *e);

/* 1 when the message needs SMTPUTF8 (8-bit envelope or header), and in
   *eightbit whether any byte is 8-bit. Exposed for tests. */
int smtpc_needs_utf8(const char *mail_from, const char *const *rcpts, size_t n, const char *data, size_t len,
                     int *eightbit);

#endif
