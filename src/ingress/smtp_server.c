#include "ingress/smtp_server.h"

#include "core/buf.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/tls.h"
#include "proto/smtp_cmd.h"
#include "submit/address.h"
#include "submit/keys.h"
#include "submit/submit.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <netdb.h>
#include <jansson.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

/* Not limits on clients but internal buffering: how far ahead of the
   session a pipelining client may read (bufferevent high-water mark), how
   many unsent replies stop command processing (a client that pipelines
   without reading its replies is throttled by TCP instead of growing our
   output buffer), and how long a closing session waits for its last reply
   to drain. */
#define READ_HIGH_WATER (256 * 1024)
#define WRITE_HIGH_WATER (256 * 1024)
#define WRITE_LOW_WATER (64 * 1024)
#define CLOSE_GRACE_MS 10000
#define REPLY_TEXT_MAX 400              /* error text quoted in a reply */

typedef struct limits {
    size_t max_message, max_rcpts, max_line, max_cmd, max_conns, max_per_ip, max_bad;
    size_t data_block;
    int64_t t_greeting, t_command, t_data, t_session, auth_delay, auth_delay_max, auth_window;
} limits;

/* One client address: open sessions and recent AUTH failures. */
typedef struct peer {
    char ip[INET6_ADDRSTRLEN];
    size_t conns;
    unsigned fails;
    int64_t last_fail_ms;
    LIST_ENTRY(peer) link;
} peer;

enum sstate {
    SS_CMD,      /* reading commands */
    SS_AUTH,     /* reading an AUTH continuation line */
    SS_DATA,     /* reading DATA until CRLF.CRLF */
    SS_BDAT,     /* reading a BDAT chunk of known size */
    SS_WAIT,     /* waiting for the spool commit or an AUTH delay; input is kept */
    SS_TLS_WAIT, /* 220 for STARTTLS is being flushed; reading is off */
    SS_CLOSING,  /* last reply is being flushed */
};

struct smtps;

typedef struct listener_ctx {
    struct smtps *sm;
    int implicit_tls;
    const char *addr;
} listener_ctx;

typedef struct session {
    struct smtps *sm;
    peer *peer;
    struct bufferevent *bev;
    struct event *ev_timeout, *ev_session, *ev_delay;
    struct sockaddr_storage sa;
    char ip[INET6_ADDRSTRLEN];
    int tls, starttls_offer, greeted, detached, submitting;
    enum sstate state;
    char helo[256];
    int authed;
    spool_key key;
    /* AUTH exchange */
    int auth_login, auth_step;
    /* mail transaction */
    int in_tx, smtputf8, body8, bdat;
    char mail_from[ADDR_MAX + 1];
    char **rcpts;
    size_t nrcpts;
    buf msg;
    smtp_data dec;
    uint64_t chunk_left;
    int chunk_last;
    const char *chunk_reject; /* reply after consuming a BDAT chunk we cannot use */
    size_t block_bytes;
    /* command input */
    buf line;
    int skip_line;
    unsigned bad;
    TAILQ_ENTRY(session) link;
} session;

struct smtps {
    server *srv;
    SSL_CTX *tls;
    struct evconnlistener *lis[2];
    listener_ctx lctx[2];
    TAILQ_HEAD(session_list, session) sessions;
    size_t nsessions;
    LIST_HEAD(peer_list, peer) peers;
    limits lim;
    int allow_plain_auth;
};

static void process(session *s);
static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);

/* ---- limits and the peer table ------------------------------------------ */

static void limits_load(limits *l, const config *c)
{
    *l = (limits){
        .max_message = (size_t)c->smtp_max_message_size,
        .max_rcpts = (size_t)c->smtp_max_recipients,
        .max_line = (size_t)c->smtp_max_line_length,
        .max_cmd = (size_t)c->smtp_max_command_length,
        .max_conns = (size_t)c->smtp_max_connections,
        .max_per_ip = (size_t)c->smtp_max_connections_per_ip,
        .max_bad = (size_t)c->smtp_max_bad_commands,
        .t_greeting = c->smtp_timeout_greeting,
        .t_command = c->smtp_timeout_command,
        .t_data = c->smtp_timeout_data,
        .t_session = c->smtp_timeout_session,
        .auth_delay = c->smtp_auth_fail_delay,
        .auth_delay_max = c->smtp_auth_fail_delay_max,
        .auth_window = c->smtp_auth_fail_window,
        .data_block = (size_t)c->smtp_data_block_size,
    };
}

static int peer_idle(const peer *p, int64_t now, int64_t window)
{
    return p->conns == 0 && (p->fails == 0 || now - p->last_fail_ms > window);
}

/* Find or add the entry for ip. The table is a list: it holds only
   addresses with open sessions or recent AUTH failures, and idle entries
   are pruned on the way. */
static peer *peer_get(struct smtps *sm, const char *ip)
{
    int64_t now = clock_mono_ms();
    peer *p = LIST_FIRST(&sm->peers);
    while (p) {
        peer *next = LIST_NEXT(p, link);
        if (strcmp(p->ip, ip) == 0)
            return p;
        if (peer_idle(p, now, sm->lim.auth_window)) {
            LIST_REMOVE(p, link);
            free(p);
        }
        p = next;
    }
    p = xcalloc(1, sizeof *p);
    snprintf(p->ip, sizeof p->ip, "%s", ip);
    LIST_INSERT_HEAD(&sm->peers, p, link);
    return p;
}

static void peer_put(struct smtps *sm, peer *p)
{
    if (p->conns > 0)
        p->conns--;
    if (peer_idle(p, clock_mono_ms(), sm->lim.auth_window)) {
        LIST_REMOVE(p, link);
        free(p);
    }
}

/* ---- replies ------------------------------------------------------------- */

static void reply(session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reply(session *s, const char *fmt, ...)
{
    struct evbuffer *out = bufferevent_get_output(s->bev);
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(out, fmt, ap);
    va_end(ap);
    evbuffer_add(out, "\r\n", 2);
}

/* Error text for a reply: bounded, one line, printable ASCII. Messages may
   quote client input, which must neither break the reply line nor put
   invalid UTF-8 into a JSON log line. */
static const char *clean(const char *msg, char *out, size_t n)
{
    size_t i = 0;
    for (; msg[i] && i + 1 < n && i < REPLY_TEXT_MAX; i++) {
        unsigned char c = (unsigned char)msg[i];
        out[i] = c < 0x20 || c >= 0x7f ? '?' : (char)c;
    }
    out[i] = '\0';
    return out;
}

static void reply_err(session *s, const char *code, const err *e)
{
    char text[REPLY_TEXT_MAX + 1];
    clean(e->msg, text, sizeof text);
    reply(s, "%s %s", code, text);
    log_ev(LOG_INFO, "smtp_reject", "{s:s,s:s,s:s}", "ip", s->ip, "reply", code, "reason", text);
}

/* The submit pipeline's error classes as replies (submit.h). */
static const char *code_for(int err_code)
{
    switch (err_code) {
    case ERR_DENIED: return "550 5.7.1";
    case ERR_LIMIT: return "552 5.3.4";
    case ERR_FULL: return "452 4.3.1";
    case ERR_IO:
    case ERR_BUSY: return "451 4.3.0";
    default: return "550 5.6.0";
    }
}

/* ---- timers -------------------------------------------------------------- */

static void arm(session *s, int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(s->ev_timeout, &tv);
}

static void arm_idle(session *s)
{
    arm(s, s->greeted ? s->sm->lim.t_command : s->sm->lim.t_greeting);
}

/* ---- session lifetime ---------------------------------------------------- */

static void tx_reset(session *s)
{
    for (size_t i = 0; i < s->nrcpts; i++)
        free(s->rcpts[i]);
    free(s->rcpts);
    s->rcpts = NULL;
    s->nrcpts = 0;
    buf_free(&s->msg);
    s->in_tx = s->smtputf8 = s->body8 = s->bdat = 0;
    s->mail_from[0] = '\0';
}

/* Release everything but the struct (the spool may still call back). */
static void session_release(session *s)
{
    struct smtps *sm = s->sm;
    TAILQ_REMOVE(&sm->sessions, s, link);
    sm->nsessions--;
    peer_put(sm, s->peer);
    struct event *evs[] = {s->ev_timeout, s->ev_session, s->ev_delay};
    for (size_t i = 0; i < 3; i++)
        if (evs[i])
            event_free(evs[i]);
    if (s->bev)
        bufferevent_free(s->bev);
    s->bev = NULL;
    tx_reset(s);
    buf_free(&s->line);
    if (s->authed)
        spool_key_free(&s->key);
    s->authed = 0;
    s->sm = NULL;
}

/* The connection is gone (or must go now). While a submission is being
   committed the struct stays until on_submitted runs. */
static void session_end(session *s)
{
    log_ev(LOG_DEBUG, "smtp_disconnect", "{s:s}", "ip", s->ip);
    session_release(s);
    if (s->submitting)
        s->detached = 1;
    else
        free(s);
}

/* Close after the last reply has been flushed. Always deferred to the
   loop, so callers may keep using s until they return. */
static void session_close(session *s)
{
    s->state = SS_CLOSING;
    bufferevent_disable(s->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
        arm(s, 0);
    else
        arm(s, CLOSE_GRACE_MS);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    session *s = arg;
    if (s->state == SS_CLOSING) {
        session_end(s);
        return;
    }
    const char *phase = s->state == SS_DATA || s->state == SS_BDAT ? "data"
                        : s->greeted                               ? "command"
                                                                   : "greeting";
    log_ev(LOG_INFO, "smtp_timeout", "{s:s,s:s}", "ip", s->ip, "phase", phase);
    reply(s, "421 4.4.2 %s Error: timeout exceeded (%s)", s->sm->srv->cfg->hostname, phase);
    session_close(s);
}

static void on_session_limit(evutil_socket_t fd, short what, void *arg)
{
    session *s = arg;
    if (s->state == SS_CLOSING)
        return;
    log_ev(LOG_INFO, "smtp_timeout", "{s:s,s:s}", "ip", s->ip, "phase", "session");
    reply(s, "421 4.4.2 %s Error: session time limit exceeded", s->sm->srv->cfg->hostname);
    session_close(s);
}

static void bev_setup(session *s)
{
    bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
    bufferevent_setwatermark(s->bev, EV_READ, 0, READ_HIGH_WATER);
    bufferevent_setwatermark(s->bev, EV_WRITE, WRITE_LOW_WATER, 0);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

static SSL *new_ssl(struct smtps *sm)
{
    SSL *ssl = SSL_new(sm->tls);
    return ssl;
}

static struct bufferevent *tls_bev(struct smtps *sm, evutil_socket_t fd)
{
    SSL *ssl = new_ssl(sm);
    if (!ssl)
        return NULL;
    struct bufferevent *bev = bufferevent_openssl_socket_new(
        sm->srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
        BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!bev) {
        SSL_free(ssl);
        return NULL;
    }
    /* Many clients close without a TLS close_notify; that is not an error here. */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

static int session_new(listener_ctx *lc, evutil_socket_t fd, const struct sockaddr *sa, int salen,
                       const char *ip, peer *p)
{
    struct smtps *sm = lc->sm;
    struct bufferevent *bev = lc->implicit_tls
                                  ? tls_bev(sm, fd)
                                  : bufferevent_socket_new(sm->srv->base, fd,
                                                           BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!bev)
        return -1;
    session *s = xcalloc(1, sizeof *s);
    s->sm = sm;
    s->bev = bev;
    s->peer = p;
    p->conns++;
    memcpy(&s->sa, sa, (size_t)salen < sizeof s->sa ? (size_t)salen : sizeof s->sa);
    snprintf(s->ip, sizeof s->ip, "%s", ip);
    s->tls = lc->implicit_tls;
    s->starttls_offer = !lc->implicit_tls;
    buf_init(&s->line, sm->lim.max_cmd + 1);
    buf_init(&s->msg, 0);
    s->ev_timeout = evtimer_new(sm->srv->base, on_timeout, s);
    s->ev_session = evtimer_new(sm->srv->base, on_session_limit, s);
    TAILQ_INSERT_TAIL(&sm->sessions, s, link);
    sm->nsessions++;
    bev_setup(s);
    struct timeval tv = {(time_t)(sm->lim.t_session / 1000), (suseconds_t)(sm->lim.t_session % 1000) * 1000};
    evtimer_add(s->ev_session, &tv);
    arm_idle(s);
    reply(s, "220 %s ESMTP Posthaste", sm->srv->cfg->hostname);
    log_ev(LOG_DEBUG, "smtp_connect", "{s:s,s:b}", "ip", s->ip, "tls", s->tls);
    return 0;
}

static void refuse(listener_ctx *lc, evutil_socket_t fd, const char *ip, const char *why)
{
    /* Best effort, never blocking: on the TLS port a plain-text 421 would
       only confuse the handshake, so that one is just closed. */
    if (!lc->implicit_tls) {
        char msg[200];
        int n = snprintf(msg, sizeof msg, "421 4.7.0 %s Error: %s, try again later\r\n",
                         lc->sm->srv->cfg->hostname, why);
        if (send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
            /* nothing to do: the client goes away either way */
        }
    }
    evutil_closesocket(fd);
    log_ev(LOG_WARN, "smtp_refused", "{s:s,s:s}", "ip", ip, "reason", why);
}

static void ip_string(const struct sockaddr *sa, char out[INET6_ADDRSTRLEN])
{
    if (getnameinfo(sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in),
                    out, INET6_ADDRSTRLEN, NULL, 0, NI_NUMERICHOST) != 0)
        snprintf(out, INET6_ADDRSTRLEN, "unknown");
}

static void on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    listener_ctx *lc = arg;
    struct smtps *sm = lc->sm;
    char ip[INET6_ADDRSTRLEN];
    ip_string(sa, ip);
    if (sm->nsessions >= sm->lim.max_conns) {
        refuse(lc, fd, ip, "too many connections");
        return;
    }
    peer *p = peer_get(sm, ip);
    if (p->conns >= sm->lim.max_per_ip) {
        refuse(lc, fd, ip, "too many connections from your address");
        return;
    }
    if (session_new(lc, fd, sa, salen, ip, p)) {
        evutil_closesocket(fd);
        peer_put(sm, p);
        log_ev(LOG_ERROR, "smtp_session_failed", "{s:s}", "ip", ip);
    }
}

/* ---- bad commands ------------------------------------------------------- */

/* A protocol error: answer it, or, at the configured count, say goodbye. */
static void bad(session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void bad(session *s, const char *fmt, ...)
{
    s->bad++;
    if (s->bad >= s->sm->lim.max_bad) {
        log_ev(LOG_INFO, "smtp_too_many_errors", "{s:s,s:i}", "ip", s->ip, "errors", (int)s->bad);
        reply(s, "421 4.7.0 %s Error: too many errors", s->sm->srv->cfg->hostname);
        session_close(s);
        return;
    }
    char text[REPLY_TEXT_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    reply(s, "%s", text);
}

/* ---- EHLO / HELO ----------------------------------------------------------- */

static int valid_helo(const char *a, size_t n)
{
    if (n == 0 || n > 255)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)a[i] <= 0x20 || (unsigned char)a[i] >= 0x7f)
            return 0;
    return 1;
}

static int auth_allowed(const session *s)
{
    return s->tls || s->sm->allow_plain_auth;
}

static void do_helo(session *s, const smtp_cmd *c, int ehlo)
{
    if (!valid_helo(c->arg, c->arg_len)) {
        bad(s, "501 5.5.4 Syntax: %s hostname", ehlo ? "EHLO" : "HELO");
        return;
    }
    memcpy(s->helo, c->arg, c->arg_len);
    s->helo[c->arg_len] = '\0';
    tx_reset(s);
    const char *host = s->sm->srv->cfg->hostname;
    if (!ehlo) {
        reply(s, "250 %s", host);
        return;
    }
    reply(s, "250-%s", host);
    reply(s, "250-PIPELINING");
    reply(s, "250-SIZE %zu", s->sm->lim.max_message);
    if (s->starttls_offer && !s->tls)
        reply(s, "250-STARTTLS");
    if (auth_allowed(s))
        reply(s, "250-AUTH PLAIN LOGIN");
    reply(s, "250-ENHANCEDSTATUSCODES");
    reply(s, "250-8BITMIME");
    reply(s, "250-SMTPUTF8");
    reply(s, "250 CHUNKING");
}

/* ---- AUTH ------------------------------------------------------------------ */

static void auth_done(session *s)
{
    s->state = SS_CMD;
    s->auth_step = 0;
}

static void on_auth_delay(evutil_socket_t fd, short what, void *arg)
{
    session *s = arg;
    if (s->state == SS_CLOSING) /* the session limit struck meanwhile */
        return;
    reply(s, "535 5.7.8 Authentication credentials invalid");
    auth_done(s);
    arm_idle(s);
    process(s);
}

/* A failed guess: the answer comes after a delay that doubles with each
   failure from the same address. A timer holds the session, not the
   loop, so other clients are unaffected. */
static void auth_fail(session *s, const char *why)
{
    peer *p = s->peer;
    int64_t now = clock_mono_ms();
    const limits *l = &s->sm->lim;
    if (p->fails && now - p->last_fail_ms > l->auth_window)
        p->fails = 0;
    p->fails++;
    p->last_fail_ms = now;
    int64_t delay = l->auth_delay;
    for (unsigned i = 1; i < p->fails && delay < l->auth_delay_max; i++)
        delay *= 2;
    if (delay > l->auth_delay_max)
        delay = l->auth_delay_max;
    log_ev(LOG_WARN, "smtp_auth_failed", "{s:s,s:s,s:i,s:I}", "ip", s->ip, "reason", why, "failures",
           (int)p->fails, "delay_ms", (json_int_t)delay);
    if (delay <= 0) {
        on_auth_delay(-1, 0, s);
        return;
    }
    s->state = SS_WAIT;
    evtimer_del(s->ev_timeout);
    if (!s->ev_delay)
        s->ev_delay = evtimer_new(s->sm->srv->base, on_auth_delay, s);
    struct timeval tv = {(time_t)(delay / 1000), (suseconds_t)(delay % 1000) * 1000};
    evtimer_add(s->ev_delay, &tv);
}

static void auth_check(session *s, const char *password, size_t len)
{
    err e;
    spool_key k;
    int r = keys_verify(s->sm->srv->spool, password, len, &k, &e);
    if (r < 0) {
        log_ev(LOG_ERROR, "smtp_auth_error", "{s:s,s:s}", "ip", s->ip, "error", e.msg);
        reply(s, "454 4.7.0 Temporary authentication failure");
        auth_done(s);
        return;
    }
    if (r == 0) {
        auth_fail(s, "unknown or revoked key");
        return;
    }
    if (!(k.scopes & KEY_SCOPE_SEND)) {
        log_ev(LOG_WARN, "smtp_auth_failed", "{s:s,s:s,s:s}", "ip", s->ip, "key", k.id, "reason",
               "key lacks the send scope");
        reply(s, "535 5.7.8 Authentication refused: key %s lacks the 'send' scope", k.id);
        spool_key_free(&k);
        auth_done(s);
        return;
    }
    if (!keys_ip_allowed(&k, (const struct sockaddr *)&s->sa)) {
        log_ev(LOG_WARN, "smtp_auth_failed", "{s:s,s:s,s:s}", "ip", s->ip, "key", k.id, "reason",
               "client address not in the key's allowlist");
        reply(s, "535 5.7.1 Authentication refused: key %s may not be used from %s", k.id, s->ip);
        spool_key_free(&k);
        auth_done(s);
        return;
    }
    s->key = k;
    s->authed = 1;
    s->peer->fails = 0;
    log_ev(LOG_INFO, "smtp_auth", "{s:s,s:s,s:b}", "ip", s->ip, "key", k.id, "tls", s->tls);
    reply(s, "235 2.7.0 Authentication successful");
    auth_done(s);
}

/* Decode one base64 response into out; on bad base64 answer and end AUTH. */
static int auth_decode(session *s, const char *text, size_t len, buf *out)
{
    if (smtp_b64_decode(text, len, out) == 0)
        return 0;
    auth_done(s);
    bad(s, "501 5.5.2 AUTH: the response is not valid base64");
    return -1;
}

/* PLAIN: authzid NUL authcid NUL password (RFC 4616); the user name is
   not used, the password is the API key. */
static void auth_plain(session *s, const char *text, size_t len)
{
    buf d;
    buf_init(&d, 1024);
    if (auth_decode(s, text, len, &d) == 0) {
        const char *p = d.data ? d.data : "";
        const char *nul1 = memchr(p, '\0', d.len);
        const char *nul2 = nul1 ? memchr(nul1 + 1, '\0', d.len - (size_t)(nul1 + 1 - p)) : NULL;
        if (!nul2 || memchr(nul2 + 1, '\0', d.len - (size_t)(nul2 + 1 - p))) {
            auth_done(s);
            bad(s, "501 5.5.2 AUTH PLAIN: the response must be authzid NUL user NUL password");
        } else {
            auth_check(s, nul2 + 1, d.len - (size_t)(nul2 + 1 - p));
        }
    }
    if (d.data)
        explicit_bzero(d.data, d.len);
    buf_free(&d);
}

static void auth_login_step(session *s, const char *text, size_t len)
{
    buf d;
    buf_init(&d, 1024);
    if (auth_decode(s, text, len, &d) == 0) {
        if (s->auth_step == 1) { /* user name: read and ignored */
            s->auth_step = 2;
            s->state = SS_AUTH;
            reply(s, "334 UGFzc3dvcmQ6");
        } else {
            auth_check(s, d.data ? d.data : "", d.len);
        }
    }
    if (d.data)
        explicit_bzero(d.data, d.len);
    buf_free(&d);
}

static void auth_continue(session *s, const char *line, size_t len)
{
    if (len == 1 && line[0] == '*') {
        auth_done(s);
        reply(s, "501 5.7.0 Authentication cancelled");
        return;
    }
    if (s->auth_login)
        auth_login_step(s, line, len);
    else
        auth_plain(s, line, len);
}

static void do_auth(session *s, const smtp_cmd *c)
{
    if (!s->helo[0]) {
        bad(s, "503 5.5.1 Error: send EHLO first");
        return;
    }
    if (s->authed || s->in_tx) {
        bad(s, "503 5.5.1 Error: %s", s->authed ? "already authenticated" : "AUTH not allowed in a mail transaction");
        return;
    }
    if (!auth_allowed(s)) {
        reply(s, "538 5.7.11 Encryption required for requested authentication mechanism (use STARTTLS)");
        return;
    }
    const char *sp = memchr(c->arg, ' ', c->arg_len);
    size_t mlen = sp ? (size_t)(sp - c->arg) : c->arg_len;
    const char *resp = sp ? sp + 1 : NULL;
    size_t rlen = sp ? c->arg_len - mlen - 1 : 0;
    if (mlen == 5 && strncasecmp(c->arg, "LOGIN", 5) == 0)
        s->auth_login = 1;
    else if (mlen == 5 && strncasecmp(c->arg, "PLAIN", 5) == 0)
        s->auth_login = 0;
    else {
        bad(s, "504 5.5.4 Unrecognized authentication type (use PLAIN or LOGIN)");
        return;
    }
    s->auth_step = 1;
    if (resp) {
        auth_continue(s, resp, rlen);
        return;
    }
    s->state = SS_AUTH;
    reply(s, s->auth_login ? "334 VXNlcm5hbWU6" : "334 ");
}

/* ---- MAIL / RCPT ------------------------------------------------------------ */

/* Parse and check a path's mailbox; on failure the reply is sent. */
static int path_mailbox(session *s, const smtp_path *p, int utf8, int is_mail, addr *a)
{
    err e;
    const char *syntax = is_mail ? "501 5.1.7" : "501 5.1.3";
    if (smtp_envelope_check(p->addr, p->addr_len, utf8, &e)) {
        err_wrap(&e, "%s address", is_mail ? "sender" : "recipient");
        reply_err(s, e.code == ERR_DENIED ? "553 5.6.7" : syntax, &e);
        return -1;
    }
    if (addr_parse(p->addr, p->addr_len, utf8, a, &e)) {
        err_wrap(&e, "%s address", is_mail ? "sender" : "recipient");
        reply_err(s, syntax, &e);
        return -1;
    }
    return 0;
}

static int parse_path(session *s, const smtp_cmd *c, int is_mail, smtp_path *p)
{
    err e;
    if (!c->arg) {
        bad(s, "501 5.5.4 Syntax: %s", is_mail ? "MAIL FROM:<address>" : "RCPT TO:<address>");
        return -1;
    }
    if (smtp_path_parse(c->arg, c->arg_len, is_mail, p, &e) == 0)
        return 0;
    char text[REPLY_TEXT_MAX + 1];
    if (e.code == SMTP_EPARAM)
        bad(s, "555 5.5.4 %s", clean(e.msg, text, sizeof text));
    else
        bad(s, "%s %s", is_mail ? "501 5.1.7" : "501 5.1.3", clean(e.msg, text, sizeof text));
    return -1;
}

/* Sender policy at MAIL time: the key's domains, then its rate. */
static int mail_policy(session *s, const addr *a)
{
    if (a->full[0] && !keys_domain_allowed(&s->key, a->domain)) {
        err e;
        err_set(&e, ERR_DENIED, "<%s>: key %s may not send for domain %s", a->full, s->key.id, a->domain);
        reply_err(s, "550 5.7.1", &e);
        return -1;
    }
    int64_t wait = submit_rate_take(s->sm->srv->submit, &s->key, 1);
    if (wait > 0) {
        log_ev(LOG_INFO, "smtp_rate_limited", "{s:s,s:s,s:I}", "ip", s->ip, "key", s->key.id, "retry_ms",
               (json_int_t)wait);
        reply(s, "451 4.7.1 Rate limit of key %s exceeded; retry in %lld s (%lld ms)", s->key.id,
              (long long)((wait + 999) / 1000), (long long)wait);
        return -1;
    }
    return 0;
}

static void do_mail(session *s, const smtp_cmd *c)
{
    if (!s->helo[0] || s->in_tx) {
        bad(s, "503 5.5.1 Error: %s", s->in_tx ? "nested MAIL command" : "send EHLO first");
        return;
    }
    if (!s->authed) {
        reply(s, "530 5.7.0 Authentication required");
        return;
    }
    smtp_path p;
    addr a = {0};
    if (parse_path(s, c, 1, &p))
        return;
    if (p.addr_len > 0 && path_mailbox(s, &p, p.smtputf8, 1, &a))
        return;
    if (p.size >= 0 && (uint64_t)p.size > s->sm->lim.max_message) {
        reply(s, "552 5.3.4 Message size %lld exceeds the limit of %zu bytes", (long long)p.size,
              s->sm->lim.max_message);
        return;
    }
    if (mail_policy(s, &a))
        return;
    s->in_tx = 1;
    s->smtputf8 = p.smtputf8;
    s->body8 = p.body_8bit;
    memcpy(s->mail_from, a.full, strlen(a.full) + 1);
    reply(s, "250 2.1.0 Ok");
}

static void do_rcpt(session *s, const smtp_cmd *c)
{
    if (!s->in_tx || s->bdat) {
        bad(s, "503 5.5.1 Error: %s", s->bdat ? "RCPT after BDAT" : "need MAIL command first");
        return;
    }
    smtp_path p;
    addr a;
    if (parse_path(s, c, 0, &p) || path_mailbox(s, &p, s->smtputf8, 0, &a))
        return;
    /* A repeated recipient is acknowledged but stored once, so it is not
       delivered twice. Linear: the list is bounded by max_recipients. */
    for (size_t i = 0; i < s->nrcpts; i++)
        if (strcmp(s->rcpts[i], a.full) == 0) {
            reply(s, "250 2.1.5 Ok (duplicate recipient)");
            return;
        }
    if (s->nrcpts >= s->sm->lim.max_rcpts) {
        reply(s, "452 4.5.3 Too many recipients (limit %zu per message)", s->sm->lim.max_rcpts);
        return;
    }
    s->rcpts = xrealloc(s->rcpts, (s->nrcpts + 1) * sizeof *s->rcpts);
    s->rcpts[s->nrcpts++] = xstrdup(a.full);
    reply(s, "250 2.1.5 Ok");
}

/* ---- DATA / BDAT and the hand-off to the pipeline --------------------------- */

static const char *protocol_name(const session *s)
{
    static const char *const names[2][2][2] = {
        {{"ESMTP", "ESMTPA"}, {"ESMTPS", "ESMTPSA"}},
        {{"UTF8SMTP", "UTF8SMTPA"}, {"UTF8SMTPS", "UTF8SMTPSA"}},
    };
    return names[s->smtputf8 ? 1 : 0][s->tls ? 1 : 0][s->authed ? 1 : 0];
}

static void after_transaction(session *s)
{
    s->state = SS_CMD;
    if (s->sm->srv->draining) {
        reply(s, "421 4.3.2 %s Service shutting down", s->sm->srv->cfg->hostname);
        session_close(s);
        return;
    }
    arm_idle(s);
}

static void on_submitted(void *arg, const submit_result *res, const err *e)
{
    session *s = arg;
    s->submitting = 0;
    if (s->detached) { /* the client left; the message is committed (or not) regardless */
        free(s);
        return;
    }
    int closing = s->state == SS_CLOSING; /* the session limit struck meanwhile */
    if (e) {
        reply_err(s, code_for(e->code), e);
    } else {
        size_t nsup = 0;
        for (size_t i = 0; i < res->nrcpts; i++)
            nsup += res->suppressed && res->suppressed[i];
        log_ev(LOG_INFO, "smtp_queued", "{s:s,s:s,s:s,s:i,s:i}", "id", res->id, "ip", s->ip, "key",
               s->key.id, "rcpts", (int)res->nrcpts, "suppressed", (int)nsup);
        reply(s, "250 2.0.0 Ok: queued as %s", res->id);
    }
    if (closing)
        return;
    after_transaction(s);
    if (s->state == SS_CMD)
        process(s);
}

static void submit_now(session *s)
{
    submit_req r = {
        .ingress = "smtp",
        .key = &s->key,
        .client_ip = s->ip,
        .client_helo = s->helo,
        .protocol = protocol_name(s),
        .mail_from = s->mail_from,
        .rcpts = (const char *const *)s->rcpts,
        .nrcpts = s->nrcpts,
        .data = s->msg.data ? s->msg.data : "",
        .len = s->msg.len,
        .smtputf8 = s->smtputf8,
    };
    err e;
    int rc = submit_message(s->sm->srv->submit, &r, on_submitted, s, &e);
    tx_reset(s); /* the pipeline copied what it keeps */
    if (rc) {
        reply_err(s, code_for(e.code), &e);
        after_transaction(s);
        return;
    }
    s->submitting = 1;
    s->state = SS_WAIT;
    evtimer_del(s->ev_timeout);
}

/* The reply for a decoder error; the transaction is over either way. */
static void data_error(session *s)
{
    err e;
    enum smtp_data_err de = s->dec.error;
    if (de == SMTP_DATA_TOO_BIG) {
        err_set(&e, ERR_LIMIT, "Message exceeds the size limit of %zu bytes", s->sm->lim.max_message);
        reply_err(s, "552 5.3.4", &e);
    } else if (de == SMTP_DATA_LINE_TOO_LONG) {
        err_set(&e, ERR_INVALID, "Message has a line longer than %zu octets (RFC 5321 4.5.3.1.6)",
                s->sm->lim.max_line);
        reply_err(s, "550 5.5.2", &e);
    } else {
        err_set(&e, ERR_INVALID, "Message rejected: %s; lines must end with CRLF", smtp_data_strerror(de));
        reply_err(s, "550 5.5.2", &e);
    }
    tx_reset(s);
    after_transaction(s);
}

static void start_body(session *s, int raw)
{
    buf_free(&s->msg);
    buf_init(&s->msg, s->sm->lim.max_message);
    smtp_data_init(&s->dec, raw, s->sm->lim.max_line);
    s->block_bytes = 0;
    arm(s, s->sm->lim.t_data);
}

static void do_data(session *s, const smtp_cmd *c)
{
    if (!s->in_tx || s->nrcpts == 0 || s->bdat) {
        bad(s, "503 5.5.1 Error: %s", !s->in_tx ? "need MAIL command first"
                                       : s->bdat ? "DATA after BDAT"
                                                 : "need RCPT command before DATA");
        return;
    }
    if (c->arg_len) {
        bad(s, "501 5.5.4 Syntax: DATA (no argument)");
        return;
    }
    reply(s, "354 End data with <CR><LF>.<CR><LF>");
    start_body(s, 0);
    s->state = SS_DATA;
}

/* Progress made on the body: restart timeout_data after each block. */
static void data_progress(session *s, size_t n)
{
    s->block_bytes += n;
    if (s->block_bytes >= s->sm->lim.data_block) {
        s->block_bytes = 0;
        arm(s, s->sm->lim.t_data);
    }
}

static int feed_data(session *s, struct evbuffer *in)
{
    struct evbuffer_iovec v[8];
    int n = evbuffer_peek(in, -1, NULL, v, 8);
    size_t used = 0;
    for (int i = 0; i < n && i < 8 && !s->dec.done; i++)
        used += smtp_data_feed(&s->dec, v[i].iov_base, v[i].iov_len, &s->msg);
    evbuffer_drain(in, used);
    data_progress(s, used);
    if (s->dec.done) {
        if (s->dec.error)
            data_error(s);
        else
            submit_now(s);
    }
    return used > 0;
}

static int parse_bdat(const smtp_cmd *c, uint64_t *size, int *last)
{
    size_t i = 0;
    uint64_t v = 0;
    while (i < c->arg_len && c->arg[i] >= '0' && c->arg[i] <= '9' && i < 18)
        v = v * 10 + (uint64_t)(c->arg[i++] - '0');
    if (i == 0 || (i < c->arg_len && c->arg[i] != ' '))
        return -1;
    *size = v;
    *last = 0;
    if (i == c->arg_len)
        return 0;
    if (c->arg_len - i - 1 == 4 && strncasecmp(c->arg + i + 1, "LAST", 4) == 0) {
        *last = 1;
        return 0;
    }
    return -1;
}

static void chunk_done(session *s)
{
    if (s->chunk_reject) {
        bad(s, "%s", s->chunk_reject);
        if (s->state != SS_CLOSING)
            s->state = SS_CMD, arm_idle(s);
        return;
    }
    if (s->chunk_last)
        smtp_data_finish(&s->dec);
    if (s->dec.error) {
        data_error(s);
        return;
    }
    if (s->chunk_last) {
        submit_now(s);
        return;
    }
    reply(s, "250 2.0.0 Ok: chunk received");
    s->state = SS_CMD;
    arm_idle(s);
}

/* BDAT (RFC 3030): the chunk's octets are always consumed, even when the
   command is refused, so the session never reads message bytes as commands. */
static void do_bdat(session *s, const smtp_cmd *c)
{
    uint64_t size;
    int last;
    if (parse_bdat(c, &size, &last)) {
        bad(s, "501 5.5.4 Syntax: BDAT size [LAST]");
        return;
    }
    s->chunk_left = size;
    s->chunk_last = last;
    s->chunk_reject = !s->in_tx       ? "503 5.5.1 Error: need MAIL command first"
                      : !s->nrcpts    ? "503 5.5.1 Error: need RCPT command before BDAT"
                                      : NULL;
    if (!s->chunk_reject && !s->bdat) {
        s->bdat = 1;
        start_body(s, 1);
    } else {
        arm(s, s->sm->lim.t_data);
        s->block_bytes = 0;
    }
    s->state = SS_BDAT;
    if (size == 0)
        chunk_done(s);
}

static int feed_chunk(session *s, struct evbuffer *in)
{
    size_t avail = evbuffer_get_length(in);
    size_t n = avail < s->chunk_left ? avail : (size_t)s->chunk_left;
    if (n == 0)
        return 0;
    if (!s->chunk_reject) {
        struct evbuffer_iovec v[8];
        int k = evbuffer_peek(in, (ev_ssize_t)n, NULL, v, 8);
        size_t left = n;
        n = 0;
        for (int i = 0; i < k && i < 8 && left; i++) {
            size_t take = v[i].iov_len < left ? v[i].iov_len : left;
            smtp_data_feed(&s->dec, v[i].iov_base, take, &s->msg);
            left -= take;
            n += take;
        }
    }
    evbuffer_drain(in, n);
    s->chunk_left -= n;
    data_progress(s, n);
    if (s->chunk_left == 0)
        chunk_done(s);
    return 1;
}

/* ---- STARTTLS ----------------------------------------------------------------- */

static void do_starttls(session *s, const smtp_cmd *c)
{
    if (s->tls || !s->starttls_offer) {
        bad(s, "503 5.5.1 Error: TLS already active");
        return;
    }
    if (c->arg_len) {
        bad(s, "501 5.5.4 Syntax: STARTTLS (no argument)");
        return;
    }
    /* The STARTTLS injection defence (CVE-2011-0411 and its many cousins):
       anything the client sent after STARTTLS in the same packet arrived
       in plain text and could have been injected by a man in the middle.
       It is dropped here, never executed after the handshake. */
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t junk = evbuffer_get_length(in);
    if (junk) {
        evbuffer_drain(in, junk);
        log_ev(LOG_WARN, "smtp_starttls_discarded", "{s:s,s:i}", "ip", s->ip, "bytes", (int)junk);
    }
    reply(s, "220 2.0.0 Ready to start TLS");
    bufferevent_disable(s->bev, EV_READ);
    s->state = SS_TLS_WAIT;
}

/* The 220 has reached the kernel: move the socket to a TLS bufferevent.
   The old one is detached from the fd first (setfd -1) so freeing it
   neither closes the socket nor unregisters the new one's events. The
   session forgets everything learned in plain text (RFC 3207 4.2). */
static void start_tls(session *s)
{
    struct bufferevent *old = s->bev;
    evutil_socket_t fd = bufferevent_getfd(old);
    struct evbuffer *in = bufferevent_get_input(old);
    evbuffer_drain(in, evbuffer_get_length(in));
    bufferevent_setfd(old, -1);
    bufferevent_free(old);
    s->bev = tls_bev(s->sm, fd);
    if (!s->bev) {
        evutil_closesocket(fd);
        log_ev(LOG_ERROR, "smtp_tls_failed", "{s:s}", "ip", s->ip);
        session_end(s);
        return;
    }
    s->tls = 1;
    s->helo[0] = '\0';
    tx_reset(s);
    if (s->authed)
        spool_key_free(&s->key);
    s->authed = 0;
    s->state = SS_CMD;
    bev_setup(s);
    arm(s, s->sm->lim.t_command);
}

/* ---- commands --------------------------------------------------------------- */

static void command(session *s, const char *line, size_t len)
{
    smtp_cmd c;
    smtp_cmd_parse(line, len, &c);
    s->greeted = 1;
    switch (c.verb) {
    case SMTP_HELO: do_helo(s, &c, 0); break;
    case SMTP_EHLO: do_helo(s, &c, 1); break;
    case SMTP_MAIL: do_mail(s, &c); break;
    case SMTP_RCPT: do_rcpt(s, &c); break;
    case SMTP_DATA: do_data(s, &c); break;
    case SMTP_BDAT: do_bdat(s, &c); break;
    case SMTP_AUTH: do_auth(s, &c); break;
    case SMTP_STARTTLS: do_starttls(s, &c); break;
    case SMTP_RSET:
        tx_reset(s);
        reply(s, "250 2.0.0 Ok");
        break;
    case SMTP_NOOP: reply(s, "250 2.0.0 Ok"); break;
    case SMTP_VRFY:
        if (c.arg_len)
            reply(s, "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery");
        else
            bad(s, "501 5.5.4 Syntax: VRFY address");
        break;
    case SMTP_EXPN: reply(s, "502 5.5.1 EXPN not available"); break;
    case SMTP_HELP: reply(s, "214 2.0.0 See https://www.rfc-editor.org/rfc/rfc5321"); break;
    case SMTP_QUIT:
        reply(s, "221 2.0.0 Bye");
        session_close(s);
        break;
    default: bad(s, "500 5.5.2 Error: command not recognized"); break;
    }
    if (s->state == SS_CMD || s->state == SS_AUTH)
        arm_idle(s);
}

/* Take one line off the input. A line longer than the command limit is
   answered once and then skipped up to its LF. Returns 1 when progress was
   made. */
static int read_line(session *s, struct evbuffer *in)
{
    size_t eol_len = 0;
    struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
    size_t avail = evbuffer_get_length(in);
    if (p.pos < 0) {
        if (avail <= s->sm->lim.max_cmd || s->skip_line) {
            if (s->skip_line)
                evbuffer_drain(in, avail);
            return s->skip_line && avail > 0 ? 1 : 0;
        }
        evbuffer_drain(in, avail);
        s->skip_line = 1;
        bad(s, "500 5.5.2 Error: command line longer than %zu octets", s->sm->lim.max_cmd);
        return 1;
    }
    size_t total = (size_t)p.pos + eol_len;
    if (s->skip_line) {
        evbuffer_drain(in, total);
        s->skip_line = 0;
        return 1;
    }
    if (total > s->sm->lim.max_cmd) {
        evbuffer_drain(in, total);
        bad(s, "500 5.5.2 Error: command line longer than %zu octets", s->sm->lim.max_cmd);
        return 1;
    }
    buf_reset(&s->line);
    s->line.max = s->sm->lim.max_cmd; /* follows a SIGHUP'd limit; total fits it */
    buf_append(&s->line, evbuffer_pullup(in, (ev_ssize_t)total), total);
    evbuffer_drain(in, total);
    size_t len = total - 1; /* the LF */
    if (len > 0 && s->line.data[len - 1] == '\r')
        len--;
    if (memchr(s->line.data, '\r', len)) {
        bad(s, "500 5.5.2 Error: bare CR in command line");
        return 1;
    }
    if (s->state == SS_AUTH)
        auth_continue(s, s->line.data, len);
    else
        command(s, s->line.data, len);
    if (s->state == SS_AUTH || s->state == SS_CMD)
        arm_idle(s);
    return 1;
}

static void process(session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    struct evbuffer *out = bufferevent_get_output(s->bev);
    for (;;) {
        int progress;
        if (evbuffer_get_length(out) > WRITE_HIGH_WATER)
            break; /* on_write resumes once the client has read its replies */
        switch (s->state) {
        case SS_CMD:
        case SS_AUTH: progress = read_line(s, in); break;
        case SS_DATA: progress = feed_data(s, in); break;
        case SS_BDAT: progress = feed_chunk(s, in); break;
        default: progress = 0; break;
        }
        if (!progress || evbuffer_get_length(in) == 0)
            break;
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    process(arg);
}

/* Runs whenever the output drops to WRITE_LOW_WATER or below after a write. */
static void on_write(struct bufferevent *bev, void *arg)
{
    session *s = arg;
    size_t pending = evbuffer_get_length(bufferevent_get_output(bev));
    if (s->state == SS_CLOSING || s->state == SS_TLS_WAIT) {
        if (pending == 0 && s->state == SS_CLOSING)
            session_end(s);
        else if (pending == 0)
            start_tls(s);
        return;
    }
    process(s); /* resume input held back by unread replies */
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    session *s = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (what & BEV_EVENT_ERROR) {
            unsigned long e = bufferevent_get_openssl_error(bev);
            char why[160] = "";
            if (e)
                ERR_error_string_n(e, why, sizeof why);
            log_ev(LOG_DEBUG, "smtp_conn_error", "{s:s,s:s}", "ip", s->ip, "tls", why);
        }
        session_end(s);
    }
}

/* ---- the component ------------------------------------------------------------- */

size_t smtps_sessions(const struct smtps *sm)
{
    return sm ? sm->nsessions : 0;
}

static int start_listeners(server *srv, err *e);

static int is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    return 0;
}

static int listen_on(struct smtps *sm, int i, const char *where, int implicit, err *e)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (evutil_parse_sockaddr_port(where, (struct sockaddr *)&ss, &len) < 0) {
        err_set(e, ERR_INVALID, "[smtp] %s: cannot parse '%s' as host:port", implicit ? "listen_tls" : "listen",
                where);
        return -1;
    }
    if (!implicit && sm->allow_plain_auth && !is_loopback((struct sockaddr *)&ss)) {
        err_set(e, ERR_DENIED,
                "[smtp] allow_plaintext_auth = yes is only allowed on a loopback listen address, not %s", where);
        return -1;
    }
    sm->lctx[i] = (listener_ctx){.sm = sm, .implicit_tls = implicit, .addr = where};
    sm->lis[i] = evconnlistener_new_bind(sm->srv->base, on_accept, &sm->lctx[i],
                                         LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                                         -1, (struct sockaddr *)&ss, len);
    if (!sm->lis[i]) {
        err_set(e, ERR_IO, "[smtp] cannot listen on %s: %s", where,
                evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        return -1;
    }
    log_ev(LOG_INFO, "smtp_listening", "{s:s,s:s}", "addr", where, "tls", implicit ? "implicit" : "starttls");
    return 0;
}

static void component_stop(server *srv);

/* The server does not call stop for a component whose start failed, so a
   failed start cleans up after itself. */
static int component_start(server *srv, err *e)
{
    int rc = start_listeners(srv, e);
    if (rc)
        component_stop(srv);
    return rc;
}

static int start_listeners(server *srv, err *e)
{
    struct smtps *sm = xcalloc(1, sizeof *sm);
    srv->smtp = sm;
    sm->srv = srv;
    TAILQ_INIT(&sm->sessions);
    LIST_INIT(&sm->peers);
    limits_load(&sm->lim, srv->cfg);
    sm->allow_plain_auth = srv->cfg->smtp_allow_plaintext_auth;
    const char *plain = srv->cfg->smtp_listen, *implicit = srv->cfg->smtp_listen_tls;
    if (!*plain && !*implicit)
        return 0;
    if (sm->allow_plain_auth && !*plain) {
        err_set(e, ERR_INVALID, "[smtp] allow_plaintext_auth = yes needs a listen address");
        return -1;
    }
    sm->tls = tls_server_ctx(srv->cfg, e);
    if (!sm->tls)
        return -1;
    if (*plain && listen_on(sm, 0, plain, 0, e))
        return -1;
    if (*implicit && listen_on(sm, 1, implicit, 1, e))
        return -1;
    return 0;
}

static void close_listeners(struct smtps *sm)
{
    for (int i = 0; i < 2; i++)
        if (sm->lis[i]) {
            evconnlistener_free(sm->lis[i]);
            sm->lis[i] = NULL;
        }
}

/* Stop accepting; idle sessions are told 421 now, sessions in a
   transaction finish it first (after_transaction closes them). */
static void component_drain(server *srv)
{
    struct smtps *sm = srv->smtp;
    if (!sm)
        return;
    close_listeners(sm);
    session *s;
    /* session_close never frees at once, so the walk stays valid */
    for (s = TAILQ_FIRST(&sm->sessions); s; s = TAILQ_NEXT(s, link)) {
        if ((s->state == SS_CMD || s->state == SS_AUTH) && !s->in_tx) {
            reply(s, "421 4.3.2 %s Service shutting down", srv->cfg->hostname);
            session_close(s);
        }
    }
}

static size_t component_busy(server *srv)
{
    struct smtps *sm = srv->smtp;
    size_t n = 0;
    session *s;
    if (!sm)
        return 0;
    for (s = TAILQ_FIRST(&sm->sessions); s; s = TAILQ_NEXT(s, link)) {
        n += s->in_tx || s->submitting || s->state == SS_CLOSING;
    }
    return n;
}

static void component_reload(server *srv, const config *cfg)
{
    if (srv->smtp)
        limits_load(&srv->smtp->lim, cfg);
}

static void component_stop(server *srv)
{
    struct smtps *sm = srv->smtp;
    if (!sm)
        return;
    close_listeners(sm);
    while (!TAILQ_EMPTY(&sm->sessions))
        session_end(TAILQ_FIRST(&sm->sessions));
    while (!LIST_EMPTY(&sm->peers)) {
        peer *p = LIST_FIRST(&sm->peers);
        LIST_REMOVE(p, link);
        free(p);
    }
    SSL_CTX_free(sm->tls);
    free(sm);
    srv->smtp = NULL;
}

const server_component smtps_component = {
    .name = "smtp",
    .start = component_start,
    .drain = component_drain,
    .busy = component_busy,
    .reload = component_reload,
    .stop = component_stop,
};
