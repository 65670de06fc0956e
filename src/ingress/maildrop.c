#include "ingress/maildrop.h"

#include "core/buf.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/server.h"
#include "submit/address.h"
#include "submit/submit.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <unistd.h>

#define PICKUP_BATCH 100

static char *subdir(const config *cfg, const char *leaf)
{
    size_t n = strlen(cfg->spool_dir) + strlen(leaf) + 16;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/maildrop%s%s", cfg->spool_dir, *leaf ? "/" : "", leaf);
    return p;
}

static int ensure_dirs(const config *cfg, err *e)
{
    static const char *const leaves[] = {"", "tmp", "new", "failed"};
    if (mkdir(cfg->spool_dir, 0700) < 0 && errno != EEXIST) {
        err_set(e, ERR_IO, "cannot create %s: %s", cfg->spool_dir, strerror(errno));
        return -1;
    }
    for (size_t i = 0; i < sizeof leaves / sizeof leaves[0]; i++) {
        char *d = subdir(cfg, leaves[i]);
        int rc = mkdir(d, 0700);
        if (rc < 0 && errno != EEXIST) {
            err_set(e, ERR_IO, "cannot create %s: %s", d, strerror(errno));
            free(d);
            return -1;
        }
        free(d);
    }
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int maildrop_write(const config *cfg, const char *mail_from, const char *const *rcpts, size_t nrcpts,
                   const char *data, size_t len, err *e)
{
    if (ensure_dirs(cfg, e))
        return -1;
    json_t *to = json_array();
    for (size_t i = 0; i < nrcpts; i++)
        json_array_append_new(to, json_string(rcpts[i]));
    json_t *env = json_pack("{s:s,s:o}", "from", mail_from ? mail_from : "", "to", to);
    char *line = env ? json_dumps(env, JSON_COMPACT) : NULL;
    json_decref(env);
    char name[ID_MSG_LEN + 1];
    if (!line || ids_message(name)) {
        free(line);
        err_set(e, ERR_IO, "cannot prepare the maildrop file");
        return -1;
    }
    char *tmpdir = subdir(cfg, "tmp"), *newdir = subdir(cfg, "new");
    size_t plen = strlen(tmpdir) + sizeof name + 2;
    char *tmp = xmalloc(plen), *final = xmalloc(strlen(newdir) + sizeof name + 2);
    snprintf(tmp, plen, "%s/%s", tmpdir, name);
    snprintf(final, strlen(newdir) + sizeof name + 2, "%s/%s", newdir, name);
    int rc = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        err_set(e, ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    } else if (write_all(fd, line, strlen(line)) || write_all(fd, "\n", 1) || write_all(fd, data, len) ||
               fsync(fd)) {
        err_set(e, errno == ENOSPC ? ERR_FULL : ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    } else if (close(fd) < 0 || (fd = -1, rename(tmp, final) < 0) || fsync_dir(newdir) < 0) {
        err_set(e, ERR_IO, "cannot commit %s: %s", final, strerror(errno));
    } else {
        rc = 0;
    }
    if (fd >= 0)
        close(fd);
    if (rc)
        unlink(tmp);
    free(line);
    free(tmpdir);
    free(newdir);
    free(tmp);
    free(final);
    return rc;
}

/* ---- pickup (inside serve) ------------------------------------------------------ */

typedef struct pickup pickup;

typedef struct dropped {
    pickup *p;
    char *name;
    LIST_ENTRY(dropped) link;
} dropped;

struct pickup {
    server *srv;
    struct event *tick;
    char *newdir, *faildir;
    LIST_HEAD(, dropped) in_flight;
    size_t count;
    int draining;
};

static int is_in_flight(pickup *p, const char *name)
{
    dropped *d;
    LIST_FOREACH(d, &p->in_flight, link)
        if (strcmp(d->name, name) == 0)
            return 1;
    return 0;
}

static void finish(dropped *d)
{
    LIST_REMOVE(d, link);
    d->p->count--;
    free(d->name);
    free(d);
}

static void move_to_failed(pickup *p, const char *name, const char *why)
{
    char from[4096], to[4096];
    snprintf(from, sizeof from, "%s/%s", p->newdir, name);
    snprintf(to, sizeof to, "%s/%s", p->faildir, name);
    if (rename(from, to) < 0)
        unlink(from);
    log_ev(LOG_ERROR, "maildrop_rejected", "{s:s,s:s,s:s}", "file", name, "error", why, "kept_in", p->faildir);
}

static void on_committed(void *arg, const submit_result *res, const err *e)
{
    dropped *d = arg;
    pickup *p = d->p;
    if (e && (e->code == ERR_FULL || e->code == ERR_IO || e->code == ERR_BUSY)) {
        log_ev(LOG_WARN, "maildrop_retry", "{s:s,s:s}", "file", d->name, "error", e->msg);
    } else if (e) {
        move_to_failed(p, d->name, e->msg);
    } else {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", p->newdir, d->name);
        unlink(path);
        log_ev(LOG_INFO, "maildrop_queued", "{s:s,s:s}", "file", d->name, "id", res->id);
    }
    finish(d);
}

/* Parse "envelope-json\nmessage"; rcpts are validated. */
static int parse_drop(const char *text, size_t len, char **from, char ***rcpts, size_t *n, size_t *body_off,
                      err *e)
{
    const char *nl = memchr(text, '\n', len);
    if (!nl) {
        err_set(e, ERR_INVALID, "no envelope line");
        return -1;
    }
    json_error_t jerr;
    json_t *env = json_loadb(text, (size_t)(nl - text), 0, &jerr);
    json_t *to = json_object_get(env, "to");
    const char *f = json_string_value(json_object_get(env, "from"));
    if (!env || !f || !json_is_array(to) || json_array_size(to) == 0) {
        json_decref(env);
        err_set(e, ERR_INVALID, "bad envelope line");
        return -1;
    }
    *from = xstrdup(f);
    *n = json_array_size(to);
    *rcpts = xcalloc(*n, sizeof **rcpts);
    for (size_t i = 0; i < *n; i++) {
        const char *a = json_string_value(json_array_get(to, i));
        addr parsed;
        if (!a || addr_parse(a, strlen(a), 1, &parsed, e)) {
            err_wrap(e, "recipient %zu", i + 1);
            json_decref(env);
            return -1;
        }
        (*rcpts)[i] = xstrdup(parsed.full);
    }
    json_decref(env);
    *body_off = (size_t)(nl - text) + 1;
    return 0;
}

static char *read_file(const char *path, size_t max, size_t *len, err *e)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set(e, ERR_IO, "%s: %s", path, strerror(errno));
        return NULL;
    }
    buf b;
    buf_init(&b, max);
    char chunk[65536];
    size_t n;
    int too_big = 0;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (buf_append(&b, chunk, n)) {
            too_big = 1;
            break;
        }
    fclose(f);
    if (too_big) {
        buf_free(&b);
        err_set(e, ERR_LIMIT, "larger than %zu bytes", max);
        return NULL;
    }
    return buf_steal(&b, len);
}

static void submit_file(pickup *p, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", p->newdir, name);
    err e;
    err_clear(&e);
    size_t len, n = 0, off = 0;
    char *text = read_file(path, (size_t)p->srv->cfg->smtp_max_message_size + 65536, &len, &e);
    char *from = NULL, **rcpts = NULL;
    if (!text || parse_drop(text, len, &from, &rcpts, &n, &off, &e)) {
        if (e.code != ERR_IO)
            move_to_failed(p, name, e.msg);
        goto out;
    }
    dropped *d = xcalloc(1, sizeof *d);
    d->p = p;
    d->name = xstrdup(name);
    submit_req req = {.ingress = "sendmail", .protocol = "LOCAL", .mail_from = from,
                      .rcpts = (const char *const *)rcpts, .nrcpts = n, .data = text + off,
                      .len = len - off, .smtputf8 = 1};
    LIST_INSERT_HEAD(&p->in_flight, d, link);
    p->count++;
    if (submit_message(p->srv->submit, &req, on_committed, d, &e)) {
        if (e.code == ERR_FULL || e.code == ERR_IO || e.code == ERR_BUSY)
            log_ev(LOG_WARN, "maildrop_retry", "{s:s,s:s}", "file", name, "error", e.msg);
        else
            move_to_failed(p, name, e.msg);
        finish(d);
    }
out:
    for (size_t i = 0; i < n && rcpts; i++)
        free(rcpts[i]);
    free(rcpts);
    free(from);
    free(text);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    pickup *p = arg;
    if (p->draining || !p->srv->submit)
        return;
    DIR *dir = opendir(p->newdir);
    if (!dir)
        return;
    struct dirent *de;
    int taken = 0;
    while (taken < PICKUP_BATCH && (de = readdir(dir))) {
        if (de->d_name[0] == '.' || is_in_flight(p, de->d_name))
            continue;
        submit_file(p, de->d_name);
        taken++;
    }
    closedir(dir);
}

static int start(server *srv, err *e)
{
    if (ensure_dirs(srv->cfg, e))
        return -1;
    pickup *p = xcalloc(1, sizeof *p);
    p->srv = srv;
    p->newdir = subdir(srv->cfg, "new");
    p->faildir = subdir(srv->cfg, "failed");
    LIST_INIT(&p->in_flight);
    srv->maildrop = (struct maildrop *)p;
    p->tick = event_new(srv->base, -1, EV_PERSIST, on_tick, p);
    int64_t ms = srv->cfg->pickup_interval;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (!p->tick || event_add(p->tick, &tv) < 0) {
        err_set(e, ERR_IO, "cannot schedule the maildrop pickup");
        return -1;
    }
    on_tick(-1, 0, p); /* messages dropped while the server was down go first */
    return 0;
}

static void drain(server *srv)
{
    pickup *p = (pickup *)srv->maildrop;
    if (p)
        p->draining = 1;
}

static size_t busy(server *srv)
{
    pickup *p = (pickup *)srv->maildrop;
    return p ? p->count : 0;
}

static void stop(server *srv)
{
    pickup *p = (pickup *)srv->maildrop;
    if (!p)
        return;
    while (!LIST_EMPTY(&p->in_flight))
        finish(LIST_FIRST(&p->in_flight));
    if (p->tick)
        event_free(p->tick);
    free(p->newdir);
    free(p->faildir);
    free(p);
    srv->maildrop = NULL;
}

const server_component maildrop_component = {
    .name = "maildrop",
    .start = start,
    .drain = drain,
    .busy = busy,
    .stop = stop,
};
