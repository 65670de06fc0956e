#include "delivery/smtp_client.h"

#include "core/buf.h"
#include "core/mem.h"
#include "proto/smtp_reply.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum state {
    S_CONNECTING, S_GREETING, S_EHLO, S_HELO, S_STARTTLS, S_HANDSHAKE, S_AUTH, S_AUTH_USER,
    S_AUTH_PASS, S_READY, S_TXN, S_BODY, S_EMPTY_DOT, S_QUITTING, S_DEAD,
};
enum note { NOTE_NONE, NOTE_READY_OK, NOTE_READY_FAIL, NOTE_TXN };
enum kind { K_RSET, K_MAIL, K_RCPT, K_DATA };

typedef struct cmd {
    enum kind kind;
    size_t idx; /* recipient index for K_RCPT */
} cmd;

struct smtpc_conn {
    smtpc_opts o;
    smtpc_target *targets;
    size_t ntargets, cur;
    struct bufferevent *bev;
    struct event *timer, *notify;
    enum state state;
    smtp_reply reply;
    char peer[300];
    int tls;                       /* TLS is active */
    int plain_retry;               /* policy may: TLS failed here, retrying in plaintext */
    int refused_all;               /* every target so far refused or said 421 */
    smtpc_result last;             /* last failure while connecting */
    /* capabilities from the latest EHLO */
    int cap_pipelining, cap_8bit, cap_utf8, cap_starttls, cap_plain, cap_login, cap_size;
    /* notification */
    enum note note;
    smtpc_ready_cb ready_cb;
    smtpc_txn_cb txn_cb;
    void *arg;
    int reusable;
    /* the transaction */
    smtpc_txn *t;
    cmd *cmds;
    size_t ncmds, sent, replied;
    unsigned char *accepted;
    size_t naccepted;
    int mail_failed;
    int need_utf8, eightbit;
    size_t txns;                   /* transactions started on this session */
    void (*closed)(void *);        /* after QUIT: the owner's bookkeeping */
    void *closed_arg;
};

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void try_target(smtpc_conn *c);
static void send_ehlo(smtpc_conn *c, int helo);

/* ---- small helpers -------------------------------------------------------- */

int smtpc_tls_parse(const char *s)
{
    static const char *const names[] = {"none", "may", "encrypt", "verify"};
    for (int i = 0; i < 4; i++)
        if (s && strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

const char *smtpc_tls_name(int p)
{
    static const char *const names[] = {"none", "may", "encrypt", "verify"};
    return p >= 0 && p < 4 ? names[p] : "unknown";
}

void smtpc_result_set(smtpc_result *r, int code, const char *status, const char *text)
{
    free(r->text);
    r->code = code;
    snprintf(r->status, sizeof r->status, "%s", status ? status : "");
    r->text = xstrdup(text ? text : "");
}

void smtpc_result_clear(smtpc_result *r)
{
    free(r->text);
    memset(r, 0, sizeof *r);
}

const char *smtpc_peer(const smtpc_conn *c)
{
    return c->peer;
}

int smtpc_tls_active(const smtpc_conn *c)
{
    return c->tls;
}

SSL_CTX *smtpc_tls_ctx_new(const char *ca_file, err *e)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        err_set(e, ERR_IO, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    int ok = ca_file && *ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                                 : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        err_set(e, ERR_INVALID, "[delivery] tls_ca_file %s: cannot load the CA bundle",
                ca_file && *ca_file ? ca_file : "(system store)");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static int has_8bit(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] & 0x80)
            return 1;
    return 0;
}

int smtpc_needs_utf8(const char *mail_from, const char *const *rcpts, size_t n, const char *data, size_t len,
                     int *eightbit)
{
    int utf8 = has_8bit(mail_from, strlen(mail_from));
    for (size_t i = 0; i < n; i++)
        utf8 |= has_8bit(rcpts[i], strlen(rcpts[i]));
    /* The header section ends at the first empty line. */
    size_t hdr = len;
    for (size_t i = 0; i + 3 < len; i++)
        if (memcmp(data + i, "\r\n\r\n", 4) == 0) {
            hdr = i + 2;
            break;
        }
    utf8 |= has_8bit(data, hdr);
    *eightbit = utf8 || has_8bit(data, len);
    return utf8;
}

static void format_peer(smtpc_conn *c)
{
    const smtpc_target *t = &c->targets[c->cur];
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (t->addr.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&t->addr;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
        port = ntohs(sin->sin_port);
    } else if (t->addr.ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&t->addr;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
        port = ntohs(sin6->sin6_port);
    }
    snprintf(c->peer, sizeof c->peer, "%s[%s]:%d", t->host, ip, port);
}

static void arm(smtpc_conn *c, int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(c->timer, &tv);
}

static void notify(smtpc_conn *c, enum note n)
{
    c->note = n;
    event_active(c->notify, 0, 0);
}

static void write_str(smtpc_conn *c, const char *s)
{
    bufferevent_write(c->bev, s, strlen(s));
}

static void drop_bev(smtpc_conn *c)
{
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    evtimer_del(c->timer);
    c->tls = 0;
}

/* ---- connecting ------------------------------------------------------------- */

/* The current target failed before the session was ready: remember why
   and try the next one (RFC 5321 5.1: try the next MX host). */
static void target_failed(smtpc_conn *c, int code, const char *status, const char *why, int refused)
{
    char text[1024];
    snprintf(text, sizeof text, "%s: %s", c->peer, why);
    smtpc_result_set(&c->last, code, status, text);
    if (!refused)
        c->refused_all = 0;
    /* Opportunistic TLS must not make mail undeliverable: when the
       handshake fails under "may", try the same host once in plaintext
       (as Postfix does). encrypt/verify never fall back. */
    int retry_plain = c->state == S_HANDSHAKE && c->o.tls_policy == SMTPC_TLS_MAY && !c->plain_retry &&
                      !c->o.implicit_tls;
    drop_bev(c);
    if (retry_plain) {
        c->plain_retry = 1;
    } else {
        c->plain_retry = 0;
        c->cur++;
    }
    try_target(c);
}

static void fail_reply(smtpc_conn *c, const char *what)
{
    char why[1024];
    snprintf(why, sizeof why, "%s: %s", what, buf_cstr(&c->reply.text));
    target_failed(c, c->reply.code, c->reply.status, why, c->reply.code == 421);
}

static SSL *new_ssl(smtpc_conn *c)
{
    SSL *ssl = SSL_new(c->o.ssl_ctx);
    if (!ssl)
        return NULL;
    const char *host = c->targets[c->cur].host;
    SSL_set_tlsext_host_name(ssl, host);
    if (c->o.tls_policy == SMTPC_TLS_VERIFY) {
        SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
        SSL_set1_host(ssl, host);
    } else {
        SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
    }
    return ssl;
}

static void try_target(smtpc_conn *c)
{
    if (c->cur >= c->ntargets) {
        c->state = S_DEAD;
        notify(c, NOTE_READY_FAIL);
        return;
    }
    format_peer(c);
    smtp_reply_reset(&c->reply);
    c->state = S_CONNECTING;
    if (c->o.implicit_tls) {
        SSL *ssl = new_ssl(c);
        c->bev = ssl ? bufferevent_openssl_socket_new(c->o.base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                      BEV_OPT_CLOSE_ON_FREE)
                     : NULL;
        c->tls = c->bev != NULL;
    } else {
        c->bev = bufferevent_socket_new(c->o.base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    if (!c->bev) {
        target_failed(c, 0, NULL, "cannot create a socket", 0);
        return;
    }
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    arm(c, c->o.t_connect);
    const smtpc_target *t = &c->targets[c->cur];
    if (bufferevent_socket_connect(c->bev, (const struct sockaddr *)&t->addr, (int)t->len) < 0) {
        int refused = errno == ECONNREFUSED;
        char why[200];
        snprintf(why, sizeof why, "connect failed: %s", strerror(errno));
        target_failed(c, 0, NULL, why, refused);
    }
}

static void on_notify(evutil_socket_t fd, short what, void *arg);
static void on_timer(evutil_socket_t fd, short what, void *arg);

smtpc_conn *smtpc_connect(const smtpc_opts *o, const smtpc_target *targets, size_t n, smtpc_ready_cb cb,
                          void *arg)
{
    smtpc_conn *c = xcalloc(1, sizeof *c);
    c->o = *o;
    c->targets = xmemdup(targets, n * sizeof *targets);
    for (size_t i = 0; i < n; i++)
        c->targets[i].host = xstrdup(targets[i].host);
    c->ntargets = n;
    c->ready_cb = cb;
    c->arg = arg;
    c->refused_all = 1;
    c->timer = evtimer_new(o->base, on_timer, c);
    c->notify = event_new(o->base, -1, 0, on_notify, c);
    smtp_reply_init(&c->reply, o->max_reply_line, o->max_reply_size);
    smtpc_result_set(&c->last, 0, NULL, "no address to connect to");
    try_target(c);
    return c;
}

static void conn_free(smtpc_conn *c)
{
    drop_bev(c);
    event_free(c->timer);
    event_free(c->notify);
    smtp_reply_free(&c->reply);
    smtpc_result_clear(&c->last);
    for (size_t i = 0; i < c->ntargets; i++)
        free(c->targets[i].host);
    free(c->targets);
    free(c->cmds);
    free(c->accepted);
    free(c);
}

/* The QUIT is out (or the peer is gone): free, then tell the owner. */
static void quit_done(smtpc_conn *c)
{
    void (*closed)(void *) = c->closed;
    void *arg = c->closed_arg;
    conn_free(c);
    if (closed)
        closed(arg);
}

/* ---- session setup -------------------------------------------------------- */

static void parse_caps(smtpc_conn *c)
{
    c->cap_pipelining = c->cap_8bit = c->cap_utf8 = c->cap_starttls = c->cap_plain = c->cap_login = 0;
    c->cap_size = 0;
    const char *p = buf_cstr(&c->reply.text);
    const char *nl = strchr(p, '\n');
    while (nl) {
        p = nl + 1;
        nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (n < 4)
            continue;
        const char *kw = p + 4;
        size_t kn = n - 4;
#define IS(word) (kn >= sizeof(word) - 1 && strncasecmp(kw, word, sizeof(word) - 1) == 0 && \
                  (kn == sizeof(word) - 1 || kw[sizeof(word) - 1] == ' ' || kw[sizeof(word) - 1] == '='))
        if (IS("PIPELINING"))
            c->cap_pipelining = 1;
        else if (IS("8BITMIME"))
            c->cap_8bit = 1;
        else if (IS("SMTPUTF8"))
            c->cap_utf8 = 1;
        else if (IS("STARTTLS"))
            c->cap_starttls = 1;
        else if (IS("SIZE"))
            c->cap_size = 1;
        else if (IS("AUTH")) {
            char mechs[512];
            snprintf(mechs, sizeof mechs, " %.*s ", (int)(kn - 5 > 500 ? 500 : kn - 5), kw + 5);
            for (char *m = mechs; *m; m++)
                if (*m >= 'a' && *m <= 'z')
                    *m = (char)(*m - 'a' + 'A');
            c->cap_plain |= strstr(mechs, " PLAIN ") != NULL;
            c->cap_login |= strstr(mechs, " LOGIN ") != NULL;
        }
#undef IS
    }
}

static void send_ehlo(smtpc_conn *c, int helo)
{
    char line[600];
    snprintf(line, sizeof line, "%s %s\r\n", helo ? "HELO" : "EHLO", c->o.helo);
    c->state = helo ? S_HELO : S_EHLO;
    write_str(c, line);
    arm(c, c->o.t_mail);
}

static void b64(const char *in, size_t n, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)in, (int)n);
}

static void session_ready(smtpc_conn *c)
{
    evtimer_del(c->timer);
    c->state = S_READY;
    notify(c, NOTE_READY_OK);
}

static void start_auth(smtpc_conn *c)
{
    if (!c->o.auth_user) {
        session_ready(c);
        return;
    }
    size_t ul = strlen(c->o.auth_user), pl = strlen(c->o.auth_pass ? c->o.auth_pass : "");
    if (ul > 255 || pl > 255) {
        target_failed(c, 0, NULL, "relay user name or password longer than 255 bytes", 0);
        return;
    }
    char enc[1024], line[1100];
    if (c->cap_plain) {
        char raw[520];
        raw[0] = '\0';
        memcpy(raw + 1, c->o.auth_user, ul);
        raw[1 + ul] = '\0';
        memcpy(raw + 2 + ul, c->o.auth_pass ? c->o.auth_pass : "", pl);
        b64(raw, 2 + ul + pl, enc);
        snprintf(line, sizeof line, "AUTH PLAIN %s\r\n", enc);
        OPENSSL_cleanse(raw, sizeof raw);
        c->state = S_AUTH;
    } else if (c->cap_login) {
        snprintf(line, sizeof line, "AUTH LOGIN\r\n");
        c->state = S_AUTH_USER;
    } else {
        target_failed(c, 0, NULL, "AUTH is configured but the server offers neither PLAIN nor LOGIN", 0);
        return;
    }
    write_str(c, line);
    OPENSSL_cleanse(line, sizeof line);
    OPENSSL_cleanse(enc, sizeof enc);
    arm(c, c->o.t_mail);
}

static void auth_step(smtpc_conn *c)
{
    int code = c->reply.code;
    if (c->state == S_AUTH) {
        if (code == 235)
            session_ready(c);
        else
            fail_reply(c, "AUTH rejected");
        return;
    }
    if (code != 334) {
        fail_reply(c, "AUTH LOGIN rejected");
        return;
    }
    const char *v = c->state == S_AUTH_USER ? c->o.auth_user : (c->o.auth_pass ? c->o.auth_pass : "");
    char enc[400], line[420];
    b64(v, strlen(v), enc);
    snprintf(line, sizeof line, "%s\r\n", enc);
    write_str(c, line);
    OPENSSL_cleanse(line, sizeof line);
    OPENSSL_cleanse(enc, sizeof enc);
    c->state = c->state == S_AUTH_USER ? S_AUTH_PASS : S_AUTH;
    arm(c, c->o.t_mail);
}

/* After EHLO: STARTTLS if the policy wants it and it is offered. */
static void after_ehlo(smtpc_conn *c)
{
    int policy = c->o.tls_policy;
    if (c->tls || policy == SMTPC_TLS_NONE || c->plain_retry) {
        start_auth(c);
        return;
    }
    if (c->cap_starttls) {
        c->state = S_STARTTLS;
        write_str(c, "STARTTLS\r\n");
        arm(c, c->o.t_mail);
        return;
    }
    if (policy >= SMTPC_TLS_ENCRYPT) {
        target_failed(c, 0, NULL, "TLS is required (tls_policy encrypt/verify) but STARTTLS is not offered", 0);
        return;
    }
    start_auth(c);
}

/* "220" to STARTTLS: throw away anything the server sent after it (a
   man in the middle could have injected commands' replies in plaintext),
   then wrap the socket in TLS. The parser is reset too. */
static void start_tls(smtpc_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    smtp_reply_reset(&c->reply);
    SSL *ssl = new_ssl(c);
    struct bufferevent *tls = ssl ? bufferevent_openssl_filter_new(c->o.base, c->bev, ssl,
                                                                   BUFFEREVENT_SSL_CONNECTING,
                                                                   BEV_OPT_CLOSE_ON_FREE)
                                  : NULL;
    if (!tls) {
        if (ssl)
            SSL_free(ssl);
        target_failed(c, 0, NULL, "cannot start TLS", 0);
        return;
    }
    c->bev = tls;
    c->state = S_HANDSHAKE;
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    arm(c, c->o.t_greeting);
}

static void setup_reply(smtpc_conn *c)
{
    int code = c->reply.code;
    switch (c->state) {
    case S_GREETING:
        if (code / 100 != 2)
            fail_reply(c, "greeting");
        else
            send_ehlo(c, 0);
        break;
    case S_EHLO:
        if (code / 100 == 2) {
            parse_caps(c);
            after_ehlo(c);
        } else if (code == 421) {
            fail_reply(c, "EHLO");
        } else {
            send_ehlo(c, 1);
        }
        break;
    case S_HELO:
        if (code / 100 != 2)
            fail_reply(c, "HELO");
        else
            after_ehlo(c); /* no capabilities: plaintext unless TLS is required */
        break;
    case S_STARTTLS:
        if (code == 220)
            start_tls(c);
        else if (c->o.tls_policy >= SMTPC_TLS_ENCRYPT)
            fail_reply(c, "STARTTLS refused");
        else
            start_auth(c);
        break;
    case S_AUTH:
    case S_AUTH_USER:
    case S_AUTH_PASS:
        auth_step(c);
        break;
    default:
        break;
    }
}

/* ---- transactions ------------------------------------------------------------ */

static int64_t cmd_timeout(const smtpc_conn *c, enum kind k)
{
    switch (k) {
    case K_RSET:
    case K_MAIL: return c->o.t_mail;
    case K_RCPT: return c->o.t_rcpt;
    case K_DATA: return c->o.t_data_init;
    }
    return c->o.t_mail;
}

static void send_cmd(smtpc_conn *c, const cmd *k)
{
    char line[1200];
    const smtpc_txn *t = c->t;
    switch (k->kind) {
    case K_RSET: snprintf(line, sizeof line, "RSET\r\n"); break;
    case K_MAIL: {
        char size[40] = "";
        if (c->cap_size) /* RFC 1870: let the server refuse a too-big message up front */
            snprintf(size, sizeof size, " SIZE=%zu", t->len);
        snprintf(line, sizeof line, "MAIL FROM:<%s>%s%s%s\r\n", t->mail_from, size,
                 c->eightbit && c->cap_8bit ? " BODY=8BITMIME" : "", c->need_utf8 ? " SMTPUTF8" : "");
        break;
    }
    case K_RCPT: snprintf(line, sizeof line, "RCPT TO:<%s>\r\n", t->rcpts[k->idx]); break;
    case K_DATA: snprintf(line, sizeof line, "DATA\r\n"); break;
    }
    write_str(c, line);
}

static void txn_done(smtpc_conn *c, int reusable)
{
    evtimer_del(c->timer);
    c->reusable = reusable;
    c->state = reusable ? S_READY : S_DEAD;
    if (!reusable)
        drop_bev(c);
    notify(c, NOTE_TXN);
}

static void set_reply(smtpc_conn *c, size_t i)
{
    smtpc_result_set(&c->t->results[i], c->reply.code, c->reply.status, buf_cstr(&c->reply.text));
}

/* The connection went away (or timed out) in the middle of a transaction:
   every recipient not yet answered for good gets a temporary failure. */
static void txn_abort(smtpc_conn *c, const char *why)
{
    char text[1200];
    snprintf(text, sizeof text, "%s: %s", c->peer, why);
    for (size_t i = 0; i < c->t->nrcpts; i++) {
        smtpc_result *r = &c->t->results[i];
        if (r->code == 0 || c->accepted[i])
            smtpc_result_set(r, 0, NULL, text);
    }
    txn_done(c, 0);
}

/* Write the body: dot-stuffed (RFC 5321 4.5.2), CRLF-terminated, then ".". */
static void send_body(smtpc_conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    const char *p = c->t->data, *end = p + c->t->len;
    const char *seg = p;
    int bol = 1;
    for (const char *q = p; q < end; q++) {
        if (bol && *q == '.') {
            evbuffer_add(out, seg, (size_t)(q - seg));
            evbuffer_add(out, ".", 1);
            seg = q;
        }
        bol = *q == '\n';
    }
    evbuffer_add(out, seg, (size_t)(end - seg));
    if (c->t->len < 2 || memcmp(end - 2, "\r\n", 2) != 0)
        evbuffer_add(out, "\r\n", 2);
    evbuffer_add(out, ".\r\n", 3);
    c->state = S_BODY;
    struct timeval wt = {(time_t)(c->o.t_data_block / 1000), (suseconds_t)((c->o.t_data_block % 1000) * 1000)};
    bufferevent_set_timeouts(c->bev, NULL, &wt);
    arm(c, c->o.t_data_block + c->o.t_data_term);
}

/* Without PIPELINING: send the next command, or stop early when nothing
   more can succeed. */
static void next_cmd(smtpc_conn *c)
{
    if (c->replied < c->sent || c->replied >= c->ncmds)
        return;
    const cmd *k = &c->cmds[c->replied];
    if (c->mail_failed || (k->kind == K_DATA && c->naccepted == 0)) {
        txn_done(c, 1);
        return;
    }
    send_cmd(c, k);
    c->sent++;
    arm(c, cmd_timeout(c, k->kind));
}

static void txn_reply(smtpc_conn *c)
{
    int code = c->reply.code;
    const cmd *k = &c->cmds[c->replied++];
    if (code == 421) {
        /* Service closing: everything unanswered gets this reply. */
        for (size_t i = 0; i < c->t->nrcpts; i++)
            if (c->t->results[i].code == 0 || c->accepted[i] || c->t->results[i].code / 100 == 2)
                set_reply(c, i);
        txn_done(c, 0);
        return;
    }
    switch (k->kind) {
    case K_RSET:
        if (code / 100 != 2) {
            txn_abort(c, "RSET refused");
            return;
        }
        break;
    case K_MAIL:
        if (code / 100 != 2) {
            c->mail_failed = 1;
            for (size_t i = 0; i < c->t->nrcpts; i++)
                set_reply(c, i);
        }
        break;
    case K_RCPT:
        if (!c->mail_failed) {
            set_reply(c, k->idx);
            if (code / 100 == 2) {
                c->accepted[k->idx] = 1;
                c->naccepted++;
            }
        }
        break;
    case K_DATA:
        if (code == 354 && (c->mail_failed || c->naccepted == 0)) {
            /* RFC 2920 3.1: DATA was pipelined but nobody was accepted. */
            c->state = S_EMPTY_DOT;
            write_str(c, ".\r\n");
            arm(c, c->o.t_data_term);
            return;
        }
        if (code == 354) {
            send_body(c);
            return;
        }
        for (size_t i = 0; i < c->t->nrcpts; i++)
            if (c->accepted[i])
                set_reply(c, i);
        txn_done(c, 1);
        return;
    }
    if (c->replied == c->ncmds) {
        txn_done(c, 1);
        return;
    }
    if (!c->cap_pipelining)
        next_cmd(c);
    else
        arm(c, cmd_timeout(c, c->cmds[c->replied].kind));
}

static void body_reply(smtpc_conn *c)
{
    bufferevent_set_timeouts(c->bev, NULL, NULL);
    for (size_t i = 0; i < c->t->nrcpts; i++)
        if (c->accepted[i])
            set_reply(c, i);
    txn_done(c, c->reply.code != 421);
}

/* An address that could break the command line it is put on (CR, LF,
   angle brackets, NUL-free but overlong) is refused locally: the spool is
   trusted, but not to the point of letting a stored byte inject commands. */
static int bad_path(const char *a)
{
    return strlen(a) > 512 || strpbrk(a, "\r\n<>") != NULL;
}

/* Reasons to answer a transaction without sending it. Returns 1 when
   every recipient already has its result. */
static int txn_precheck(smtpc_conn *c, smtpc_txn *t)
{
    char text[400];
    if (bad_path(t->mail_from)) {
        for (size_t i = 0; i < t->nrcpts; i++)
            smtpc_result_set(&t->results[i], 553, "5.1.7", "553 5.1.7 envelope sender cannot be sent (local check)");
        return 1;
    }
    c->need_utf8 = smtpc_needs_utf8(t->mail_from, t->rcpts, t->nrcpts, t->data, t->len, &c->eightbit);
    if (c->need_utf8 && !c->cap_utf8) {
        snprintf(text, sizeof text,
                 "554 5.6.7 the message needs SMTPUTF8 (non-ASCII address or header) and %s does not offer it",
                 c->peer);
        for (size_t i = 0; i < t->nrcpts; i++)
            smtpc_result_set(&t->results[i], 554, "5.6.7", text);
        return 1;
    }
    size_t good = 0;
    for (size_t i = 0; i < t->nrcpts; i++) {
        if (bad_path(t->rcpts[i]))
            smtpc_result_set(&t->results[i], 553, "5.1.3", "553 5.1.3 recipient address cannot be sent (local check)");
        else
            good++;
    }
    return good == 0;
}

static void build_cmds(smtpc_conn *c, const smtpc_txn *t)
{
    free(c->cmds);
    c->cmds = xcalloc(t->nrcpts + 3, sizeof *c->cmds);
    c->ncmds = 0;
    if (c->txns > 0)
        c->cmds[c->ncmds++] = (cmd){K_RSET, 0};
    c->cmds[c->ncmds++] = (cmd){K_MAIL, 0};
    for (size_t i = 0; i < t->nrcpts; i++)
        if (t->results[i].code == 0)
            c->cmds[c->ncmds++] = (cmd){K_RCPT, i};
    c->cmds[c->ncmds++] = (cmd){K_DATA, 0};
    c->sent = c->replied = 0;
}

void smtpc_send(smtpc_conn *c, smtpc_txn *t, smtpc_txn_cb cb, void *arg)
{
    c->t = t;
    c->txn_cb = cb;
    c->arg = arg;
    c->mail_failed = 0;
    c->naccepted = 0;
    free(c->accepted);
    c->accepted = xcalloc(t->nrcpts ? t->nrcpts : 1, 1);
    for (size_t i = 0; i < t->nrcpts; i++)
        smtpc_result_clear(&t->results[i]);
    if (c->state != S_READY || !c->bev) {
        c->state = S_DEAD;
        for (size_t i = 0; i < t->nrcpts; i++)
            smtpc_result_set(&t->results[i], 0, NULL, "connection closed by the server while idle");
        c->reusable = 0;
        notify(c, NOTE_TXN);
        return;
    }
    if (txn_precheck(c, t)) {
        c->reusable = 1;
        notify(c, NOTE_TXN);
        return;
    }
    build_cmds(c, t);
    c->txns++;
    c->state = S_TXN;
    if (c->cap_pipelining) {
        for (size_t i = 0; i < c->ncmds; i++)
            send_cmd(c, &c->cmds[i]);
        c->sent = c->ncmds;
        arm(c, cmd_timeout(c, c->cmds[0].kind));
    } else {
        next_cmd(c);
    }
}

/* ---- I/O callbacks ------------------------------------------------------------- */

static void on_reply(smtpc_conn *c)
{
    switch (c->state) {
    case S_TXN: txn_reply(c); break;
    case S_BODY: body_reply(c); break;
    case S_EMPTY_DOT: txn_done(c, c->reply.code != 421); break;
    case S_READY: /* unsolicited (e.g. 421 before closing) */
        if (c->reply.code == 421) {
            c->state = S_DEAD;
            drop_bev(c);
        }
        break;
    default: setup_reply(c); break;
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    smtpc_conn *c = arg;
    while (c->bev == bev && c->state != S_DEAD) {
        struct evbuffer *in = bufferevent_get_input(bev);
        if (c->state == S_QUITTING) {
            evbuffer_drain(in, evbuffer_get_length(in));
            return;
        }
        struct evbuffer_iovec v;
        if (evbuffer_get_length(in) == 0 || evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            return;
        size_t used = 0;
        err e;
        int rc = smtp_reply_feed(&c->reply, v.iov_base, v.iov_len, &used, &e);
        evbuffer_drain(in, used);
        if (rc == SMTP_REPLY_ERROR) {
            if (c->state == S_TXN || c->state == S_BODY || c->state == S_EMPTY_DOT)
                txn_abort(c, e.msg);
            else if (c->state == S_READY) {
                c->state = S_DEAD;
                drop_bev(c);
            } else
                target_failed(c, 0, NULL, e.msg, 0);
            return;
        }
        if (rc == SMTP_REPLY_DONE) {
            on_reply(c);
            smtp_reply_reset(&c->reply);
        }
    }
}

static void on_write(struct bufferevent *bev, void *arg)
{
    smtpc_conn *c = arg;
    if (c->state == S_QUITTING)
        quit_done(c);
    else if (c->state == S_BODY)
        arm(c, c->o.t_data_term); /* the body is out: wait for the final reply */
}

static void describe_error(smtpc_conn *c, short what, int sockerr, char *why, size_t n)
{
    unsigned long ssl_err = c->bev ? bufferevent_get_openssl_error(c->bev) : 0;
    SSL *ssl = c->bev ? bufferevent_openssl_get_ssl(c->bev) : NULL;
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (ssl && vr != X509_V_OK)
        snprintf(why, n, "TLS certificate verification failed: %s", X509_verify_cert_error_string(vr));
    else if (ssl_err)
        snprintf(why, n, "TLS failure: %s", ERR_reason_error_string(ssl_err) ? ERR_reason_error_string(ssl_err) : "unknown");
    else if ((what & BEV_EVENT_EOF) || sockerr == 0)
        /* An error without errno is the TLS filter reporting the socket's EOF
           (a peer that gives up on the handshake without an alert). */
        snprintf(why, n, "connection closed by the server");
    else
        snprintf(why, n, "connection error: %s", strerror(sockerr));
}

static const char *phase_name(enum state s)
{
    switch (s) {
    case S_CONNECTING: return "connecting";
    case S_GREETING: return "waiting for the greeting";
    case S_HANDSHAKE: return "in the TLS handshake";
    case S_TXN: return "in MAIL/RCPT/DATA";
    case S_BODY: return "during DATA";
    default: return "in the session";
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    smtpc_conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        if (c->state == S_HANDSHAKE) {
            c->tls = 1;
            send_ehlo(c, 0); /* RFC 3207 4.2: forget everything, EHLO again */
            return;
        }
        c->state = S_GREETING;
        arm(c, c->o.t_greeting);
        return;
    }
    int sockerr = EVUTIL_SOCKET_ERROR(); /* before anything else can change errno */
    if (c->state == S_QUITTING) {
        quit_done(c);
        return;
    }
    char why[400], text[500];
    if (what & BEV_EVENT_TIMEOUT)
        snprintf(why, sizeof why, "timed out sending the message body");
    else
        describe_error(c, what, sockerr, why, sizeof why);
    snprintf(text, sizeof text, "%s %s", why, phase_name(c->state));
    int refused = c->state == S_CONNECTING && sockerr == ECONNREFUSED;
    switch (c->state) {
    case S_TXN:
    case S_BODY:
    case S_EMPTY_DOT: txn_abort(c, text); break;
    case S_READY:
    case S_DEAD: c->state = S_DEAD; drop_bev(c); break;
    default: target_failed(c, 0, NULL, text, refused); break;
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    smtpc_conn *c = arg;
    char why[200];
    snprintf(why, sizeof why, "timed out %s", phase_name(c->state));
    switch (c->state) {
    case S_QUITTING: quit_done(c); break;
    case S_TXN:
    case S_BODY:
    case S_EMPTY_DOT: txn_abort(c, why); break;
    case S_READY:
    case S_DEAD: break;
    default: target_failed(c, 0, NULL, why, 0); break;
    }
}

static void on_notify(evutil_socket_t fd, short what, void *arg)
{
    smtpc_conn *c = arg;
    enum note n = c->note;
    c->note = NOTE_NONE;
    switch (n) {
    case NOTE_READY_OK: c->ready_cb(c->arg, c, 1, NULL, 0); break;
    case NOTE_READY_FAIL: {
        smtpc_ready_cb cb = c->ready_cb;
        void *a = c->arg;
        smtpc_result last = c->last;
        int refused = c->refused_all;
        c->last.text = NULL;
        conn_free(c);
        cb(a, NULL, 0, &last, refused);
        free(last.text);
        break;
    }
    case NOTE_TXN: c->txn_cb(c->arg, c, c->reusable); break;
    case NOTE_NONE: break;
    }
}

int smtpc_close(smtpc_conn *c, void (*closed)(void *arg), void *arg)
{
    if (!c)
        return 0;
    if (c->state != S_READY || !c->bev) {
        conn_free(c);
        return 0;
    }
    c->state = S_QUITTING;
    c->closed = closed;
    c->closed_arg = arg;
    event_del(c->notify);
    write_str(c, "QUIT\r\n");
    arm(c, 2000);
    return 1;
}

void smtpc_free(smtpc_conn *c)
{
    if (c)
        conn_free(c);
}

int smtpc_alive(const smtpc_conn *c)
{
    return c->state == S_READY && c->bev != NULL;
}
