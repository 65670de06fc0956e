/*
 * smtpload — the SMTP load generator of bench/relay (benchmarks only).
 *
 *   smtpload -H HOST -p PORT [-s SESSIONS] [-m MESSAGES] [-l BODY_BYTES]
 *            [-r RCPTS] [-k MSGS_PER_CONN] [-a AUTH_FILE] [-f FROM] [-t TO]
 *
 * What it does: runs SESSIONS client threads against one SMTP server; each
 * takes the next message number, connects (or reuses its connection for
 * MSGS_PER_CONN messages; default 1, like smtp-source without -d), says
 * EHLO, optionally AUTH PLAIN with the password read from AUTH_FILE, sends
 * MAIL, RCPTS recipients (TO with "N." prepended for N > 0), DATA and a
 * message of about BODY_BYTES body bytes, and QUIT. It measures each
 * message's acceptance latency: from writing the final "." to reading the
 * server's 250 (the time the server takes to accept durably). It prints one
 * JSON object: sent, failed, seconds, rate and latency percentiles (ms).
 *
 * Why not smtp-source: Posthaste requires AUTH on submission and
 * smtp-source cannot AUTH. Driving both Postfix (no AUTH) and Posthaste
 * (AUTH) with this one tool keeps the comparison fair; bench/relay also
 * drives Postfix with smtp-source as a cross-check.
 *
 * Never: connects anywhere but the given host (bench scripts pass
 * loopback), prints the password, or retries a failed message (a failure
 * is counted and reported).
 *
 * Limits: replies longer than 8 KiB or a server silent for 60 s fail the
 * message; at most 1024 sessions and 1000 recipients.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define REPLY_MAX 8192
#define MAX_SESSIONS 1024
#define MAX_RCPTS 1000

typedef struct opts {
    const char *host, *port, *from, *to;
    int sessions, messages, rcpts, per_conn;
    size_t body;
    char auth_b64[1024]; /* AUTH PLAIN initial response; empty: no AUTH */
    const char *payload; /* the shared message bytes after the headers */
    size_t payload_len;
} opts;

typedef struct conn {
    int fd;
    char buf[REPLY_MAX];
    size_t len;
} conn;

typedef struct worker {
    const opts *o;
    pthread_t th;
    double *lat;     /* ms per accepted message */
    size_t nlat, cap;
    long failed;
    char last_error[256];
} worker;

static atomic_int next_msg;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read one (possibly multi-line) reply; returns its code or -1. */
static int read_reply(conn *c)
{
    for (;;) {
        /* Look for a complete final line "NNN " in what is buffered. */
        size_t start = 0;
        for (size_t i = 0; i < c->len; i++) {
            if (c->buf[i] != '\n')
                continue;
            size_t linelen = i + 1 - start;
            if (linelen >= 4 && c->buf[start + 3] != '-') {
                int code = atoi(c->buf + start);
                memmove(c->buf, c->buf + i + 1, c->len - i - 1);
                c->len -= i + 1;
                return code;
            }
            start = i + 1;
        }
        if (c->len == sizeof c->buf)
            return -1;
        ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c->len += (size_t)r;
    }
}

static int cmd(conn *c, const char *line, int want)
{
    if (line && write_all(c->fd, line, strlen(line)) < 0)
        return -1;
    int code = read_reply(c);
    return code / 100 == want / 100 ? 0 : -1;
}

static int dial(const opts *o)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(o->host, o->port, &hints, &ai) != 0)
        return -1;
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 60};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int session_open(const opts *o, conn *c)
{
    c->len = 0;
    c->fd = dial(o);
    if (c->fd < 0)
        return -1;
    if (cmd(c, NULL, 220) < 0 || cmd(c, "EHLO bench.test\r\n", 250) < 0)
        return -1;
    if (o->auth_b64[0]) {
        char line[1100];
        snprintf(line, sizeof line, "AUTH PLAIN %s\r\n", o->auth_b64);
        if (cmd(c, line, 235) < 0)
            return -1;
    }
    return 0;
}

static void record(worker *w, double ms)
{
    if (w->nlat == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 1024;
        w->lat = realloc(w->lat, w->cap * sizeof *w->lat);
        if (!w->lat)
            abort();
    }
    w->lat[w->nlat++] = ms;
}

/* One transaction on an open session; 0 when the server accepted it. */
static int send_one(worker *w, conn *c, int n)
{
    const opts *o = w->o;
    char line[600];
    snprintf(line, sizeof line, "MAIL FROM:<%s>\r\n", o->from);
    if (cmd(c, line, 250) < 0)
        return -1;
    for (int r = 0; r < o->rcpts; r++) {
        if (r == 0)
            snprintf(line, sizeof line, "RCPT TO:<%s>\r\n", o->to);
        else
            snprintf(line, sizeof line, "RCPT TO:<%d.%s>\r\n", r, o->to);
        if (cmd(c, line, 250) < 0)
            return -1;
    }
    if (cmd(c, "DATA\r\n", 354) < 0)
        return -1;
    char hdr[1024];
    time_t t = time(NULL);
    struct tm tm;
    char date[64];
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", gmtime_r(&t, &tm));
    int hl = snprintf(hdr, sizeof hdr,
                      "From: Bench <%s>\r\nTo: <%s>\r\nSubject: bench %d\r\nDate: %s\r\n"
                      "Message-ID: <bench.%d.%ld@bench.test>\r\nMIME-Version: 1.0\r\n"
                      "Content-Type: text/plain; charset=us-ascii\r\n\r\n",
                      o->from, o->to, n, date, n, (long)getpid());
    if (write_all(c->fd, hdr, (size_t)hl) < 0 || write_all(c->fd, o->payload, o->payload_len) < 0)
        return -1;
    double t0 = now_s();
    if (cmd(c, ".\r\n", 250) < 0)
        return -1;
    record(w, (now_s() - t0) * 1e3);
    return 0;
}

static void fail(worker *w, conn *c, const char *what)
{
    w->failed++;
    snprintf(w->last_error, sizeof w->last_error, "%s: %.*s", what, (int)(c->len < 200 ? c->len : 200), c->buf);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static void *run(void *arg)
{
    worker *w = arg;
    const opts *o = w->o;
    conn *c = calloc(1, sizeof *c);
    c->fd = -1;
    int on_conn = 0;
    for (;;) {
        int n = atomic_fetch_add(&next_msg, 1);
        if (n >= o->messages)
            break;
        if (c->fd < 0) {
            if (session_open(o, c) < 0) {
                fail(w, c, "session");
                continue;
            }
            on_conn = 0;
        }
        if (send_one(w, c, n) < 0) {
            fail(w, c, "transaction");
            continue;
        }
        if (++on_conn >= o->per_conn) {
            cmd(c, "QUIT\r\n", 221);
            close(c->fd);
            c->fd = -1;
        }
    }
    if (c->fd >= 0) {
        cmd(c, "QUIT\r\n", 221);
        close(c->fd);
    }
    free(c);
    return NULL;
}

static void b64(const unsigned char *in, size_t n, char *out, size_t cap)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
        out[o++] = i + 1 < n ? tab[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? tab[v & 63] : '=';
    }
    out[o] = 0;
}

static int load_auth(opts *o, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char pw[512];
    if (!fgets(pw, sizeof pw, f)) {
        fclose(f);
        return -1;
    }
    fclose(f);
    pw[strcspn(pw, "\r\n")] = 0;
    unsigned char raw[600];
    size_t n = 0;
    raw[n++] = 0;
    const char *user = "bench";
    memcpy(raw + n, user, strlen(user));
    n += strlen(user);
    raw[n++] = 0;
    size_t pl = strlen(pw);
    memcpy(raw + n, pw, pl);
    n += pl;
    b64(raw, n, o->auth_b64, sizeof o->auth_b64);
    return 0;
}

/* Body lines of 76 characters, ending with the terminating dot. */
static void make_payload(opts *o)
{
    size_t cap = o->body + 200;
    char *p = malloc(cap);
    size_t len = 0;
    while (len < o->body) {
        len += (size_t)snprintf(p + len, cap - len, "%s\r\n",
                                "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem");
    }
    o->payload = p;
    o->payload_len = len;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}

int main(int argc, char **argv)
{
    opts o = {.host = "127.0.0.1", .port = "25", .from = "bench@example.com", .to = "rcpt@sink.test",
              .sessions = 20, .messages = 1000, .rcpts = 1, .per_conn = 1, .body = 1024};
    int ch;
    while ((ch = getopt(argc, argv, "H:p:s:m:l:r:k:a:f:t:")) != -1) {
        switch (ch) {
        case 'H': o.host = optarg; break;
        case 'p': o.port = optarg; break;
        case 's': o.sessions = atoi(optarg); break;
        case 'm': o.messages = atoi(optarg); break;
        case 'l': o.body = (size_t)atol(optarg); break;
        case 'r': o.rcpts = atoi(optarg); break;
        case 'k': o.per_conn = atoi(optarg); break;
        case 'a':
            if (load_auth(&o, optarg) < 0) {
                fprintf(stderr, "smtpload: cannot read the AUTH password from %s\n", optarg);
                return 2;
            }
            break;
        case 'f': o.from = optarg; break;
        case 't': o.to = optarg; break;
        default:
            fprintf(stderr, "usage: smtpload -H HOST -p PORT [-s N] [-m N] [-l BYTES] [-r N] [-k N] [-a FILE]\n");
            return 2;
        }
    }
    if (o.sessions < 1 || o.sessions > MAX_SESSIONS || o.rcpts < 1 || o.rcpts > MAX_RCPTS || o.per_conn < 1 ||
        o.messages < 0) {
        fprintf(stderr, "smtpload: sessions 1..%d, recipients 1..%d, -k >= 1\n", MAX_SESSIONS, MAX_RCPTS);
        return 2;
    }
    make_payload(&o);
    worker *w = calloc((size_t)o.sessions, sizeof *w);
    double t0 = now_s();
    for (int i = 0; i < o.sessions; i++) {
        w[i].o = &o;
        pthread_create(&w[i].th, NULL, run, &w[i]);
    }
    size_t total = 0;
    long failed = 0;
    const char *err = "";
    for (int i = 0; i < o.sessions; i++) {
        pthread_join(w[i].th, NULL);
        total += w[i].nlat;
        failed += w[i].failed;
        if (w[i].failed)
            err = w[i].last_error;
    }
    double secs = now_s() - t0;
    double *all = malloc((total + 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < o.sessions; i++)
        for (size_t j = 0; j < w[i].nlat; j++)
            all[k++] = w[i].lat[j];
    qsort(all, total, sizeof *all, cmp);
    printf("{\"sent\": %zu, \"failed\": %ld, \"seconds\": %.3f, \"rate\": %.1f, \"p50_ms\": %.3f, "
           "\"p99_ms\": %.3f, \"max_ms\": %.3f, \"last_error\": \"",
           total, failed, secs, secs > 0 ? (double)total / secs : 0, pct(all, total, 0.5), pct(all, total, 0.99),
           total ? all[total - 1] : 0);
    for (const char *p = err; *p; p++)
        if (*p >= 32 && *p != '"' && *p != '\\')
            putchar(*p);
    printf("\"}\n");
    return failed ? 1 : 0;
}
