/*
 * spool_sqlite — the embedded spool: connections, schema, the group-commit
 * writer thread. Message, recipient and event SQL lives in spool_messages.c,
 * keys in spool_keys.c.
 */
#include "spool/spool_internal.h"

#include "core/log.h"
#include "core/mem.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <unistd.h>

#define STMT_CACHE 24

typedef struct stmt_slot {
    const char *sql; /* the literal's address is the key */
    sqlite3_stmt *st;
    int busy;
} stmt_slot;

/* One queued write. Lives from spool_write() until its completion ran. */
typedef struct wop {
    spool_write_fn fn;
    spool_done_fn done;
    void *arg;
    err e;
    int failed;
    /* Synchronous waiters block on cond instead of getting an eventfd callback. */
    int sync, finished;
    pthread_cond_t *cond;
    STAILQ_ENTRY(wop) link;
} wop;
STAILQ_HEAD(wop_list, wop);

struct spool {
    sqlite3 *wdb; /* writer thread (or caller in sync mode) */
    sqlite3 *rdb; /* readers on the owning thread */
    spool_opts opts;
    char *path;

    /* Writer thread state, guarded by lock. */
    pthread_t thread;
    int has_writer;
    int stopping;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    struct wop_list queue; /* waiting for the writer */
    struct wop_list done;  /* committed, waiting for the loop */
    size_t pending;
    int64_t last_commit_ms;
    uint64_t commits, writes;
    spool_hooks hooks;

    /* Prepared statements kept for reuse, one cache per connection (each
       connection is used by one thread): preparing cost ~20% of the CPU
       per message in bench/relay before these were kept. */
    stmt_slot wcache[STMT_CACHE], rcache[STMT_CACHE];

    /* Completion hand-off to the event loop. */
    int efd;
    struct event *ev_done;
};

/* Schema migrations: index i brings user_version from i to i+1. Only ever
   append; a shipped migration is never edited. */
static const char *const migrations[] = {
    "CREATE TABLE messages("
    "  id INTEGER PRIMARY KEY,"
    "  uid TEXT NOT NULL UNIQUE,"
    "  created_ms INTEGER NOT NULL,"
    "  mail_from TEXT NOT NULL,"
    "  ingress TEXT NOT NULL,"
    "  key_id TEXT,"
    "  meta TEXT,"
    "  size INTEGER NOT NULL,"
    "  data BLOB NOT NULL);"
    "CREATE TABLE recipients("
    "  id INTEGER PRIMARY KEY,"
    "  msg INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,"
    "  addr TEXT NOT NULL,"
    "  domain TEXT NOT NULL,"
    "  state INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  next_at INTEGER NOT NULL,"
    "  updated_ms INTEGER NOT NULL,"
    "  last_reply TEXT,"
    "  last_host TEXT);"
    /* Partial index over pending rows only: the scheduler's scan touches
       due rows and nothing else, so its cost does not grow with history. */
    "CREATE INDEX rcpt_due ON recipients(next_at, id) WHERE state IN (0, 1, 2);"
    "CREATE INDEX rcpt_msg ON recipients(msg);"
    "CREATE INDEX rcpt_addr ON recipients(addr);"
    "CREATE TABLE events("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  ts_ms INTEGER NOT NULL,"
    "  msg TEXT,"
    "  rcpt TEXT,"
    "  type TEXT NOT NULL,"
    "  data TEXT);"
    "CREATE INDEX events_msg ON events(msg);"
    "CREATE TABLE api_keys("
    "  id TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  hash BLOB NOT NULL,"
    "  scopes INTEGER NOT NULL,"
    "  sender_domains TEXT NOT NULL DEFAULT '',"
    "  allow_ips TEXT NOT NULL DEFAULT '',"
    "  rate REAL NOT NULL DEFAULT 0,"
    "  require_signing INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL,"
    "  revoked_ms INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE suppressions("
    "  email TEXT NOT NULL,"
    "  scope TEXT NOT NULL DEFAULT '',"
    "  reason TEXT NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  PRIMARY KEY(email, scope));",

    /* 2: idempotent API requests, webhooks and their durable cursors. */
    "CREATE TABLE idempotency("
    "  key_id TEXT NOT NULL,"
    "  idem_key TEXT NOT NULL,"
    "  request_hash TEXT NOT NULL,"
    "  status INTEGER NOT NULL,"
    "  response TEXT NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  PRIMARY KEY(key_id, idem_key));"
    "CREATE INDEX idempotency_age ON idempotency(created_ms);"
    "CREATE TABLE webhooks("
    "  id TEXT PRIMARY KEY,"
    "  url TEXT NOT NULL,"
    "  events TEXT NOT NULL,"
    "  secret TEXT NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  cursor INTEGER NOT NULL DEFAULT 0,"
    "  failing_since_ms INTEGER NOT NULL DEFAULT 0,"
    "  last_error TEXT,"
    "  healthy INTEGER NOT NULL DEFAULT 1);"
    "CREATE INDEX events_type ON events(type, id);"
    "CREATE INDEX messages_created ON messages(created_ms);",

    /* 3: API lookups. GET /v1/messages?recipient= matches case-insensitively,
       [api] recipients_per_day counts one key's recent messages, and
       GET /v1/events?since= starts from a time; each gets an index so its
       cost follows the rows returned, not the history kept. */
    "CREATE INDEX rcpt_addr_nocase ON recipients(addr COLLATE NOCASE);"
    "CREATE INDEX messages_key_created ON messages(key_id, created_ms);"
    "CREATE INDEX events_ts ON events(ts_ms);",

    /* 4: keys whose mail is bulk get one-click unsubscribe links. */
    "ALTER TABLE api_keys ADD COLUMN bulk INTEGER NOT NULL DEFAULT 0;",
};
#define NMIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

void spool_sql_err(sqlite3 *db, int rc, const char *what, err *e)
{
    int code = ERR_IO;
    int primary = rc & 0xff;
    if (primary == SQLITE_FULL)
        code = ERR_FULL;
    else if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED)
        code = ERR_BUSY;
    else if (primary == SQLITE_CONSTRAINT)
        code = ERR_INVALID;
    if (primary == SQLITE_FULL)
        err_set(e, code, "%s: spool full (database or disk size limit reached)", what);
    else
        err_set(e, code, "%s: %s", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
}

sqlite3 *spool_read_db(spool *s)
{
    return s->rdb;
}

int spool_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st, err *e)
{
    int rc = sqlite3_prepare_v2(db, sql, -1, st, NULL);
    if (rc != SQLITE_OK) {
        spool_sql_err(db, rc, "preparing spool query", e);
        return -1;
    }
    return 0;
}

int spool_step_done(sqlite3 *db, sqlite3_stmt *st, const char *what, err *e)
{
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        spool_sql_err(db, rc, what, e);
        return -1;
    }
    return 0;
}

static stmt_slot *cache_of(spool *s, sqlite3 *db)
{
    return db == s->wdb ? s->wcache : db == s->rdb ? s->rcache : NULL;
}

int spool_prepare_cached(spool *s, sqlite3 *db, const char *sql, sqlite3_stmt **st, err *e)
{
    stmt_slot *c = cache_of(s, db);
    for (int i = 0; c && i < STMT_CACHE; i++) {
        if (c[i].sql == sql && !c[i].busy) {
            c[i].busy = 1;
            *st = c[i].st;
            return 0;
        }
    }
    int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
    if (rc != SQLITE_OK) {
        spool_sql_err(db, rc, "preparing spool query", e);
        return -1;
    }
    for (int i = 0; c && i < STMT_CACHE; i++) {
        if (!c[i].sql) {
            c[i] = (stmt_slot){.sql = sql, .st = *st, .busy = 1};
            break;
        }
    }
    return 0;
}

void spool_release(spool *s, sqlite3_stmt *st)
{
    stmt_slot *c = cache_of(s, sqlite3_db_handle(st));
    for (int i = 0; c && i < STMT_CACHE; i++) {
        if (c[i].st == st) {
            /* Clear bindings too: SQLITE_STATIC ones point at the caller's memory. */
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            c[i].busy = 0;
            return;
        }
    }
    sqlite3_finalize(st);
}

int spool_step_release(spool *s, sqlite3_stmt *st, const char *what, err *e)
{
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        spool_sql_err(sqlite3_db_handle(st), rc, what, e);
    spool_release(s, st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static void cache_clear(stmt_slot *c)
{
    for (int i = 0; i < STMT_CACHE; i++)
        if (c[i].st)
            sqlite3_finalize(c[i].st);
    memset(c, 0, sizeof(stmt_slot) * STMT_CACHE);
}

void spool_bind_opt(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

char *spool_col_str(sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    return t ? xstrdup((const char *)t) : NULL;
}

static int exec(sqlite3 *db, const char *sql, const char *what, err *e)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        spool_sql_err(db, rc, what, e);
        if (msg)
            err_wrap(e, "%s", msg);
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int pragma_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : -1;
}

static int migrate(sqlite3 *db, err *e)
{
    int64_t version = 0;
    if (pragma_int(db, "PRAGMA user_version", &version)) {
        spool_sql_err(db, sqlite3_errcode(db), "reading schema version", e);
        return -1;
    }
    if (version > NMIGRATIONS) {
        err_set(e, ERR_INVALID,
                "spool schema version %lld is newer than this posthaste knows (%d); upgrade posthaste",
                (long long)version, NMIGRATIONS);
        return -1;
    }
    for (int v = (int)version; v < NMIGRATIONS; v++) {
        char setv[64];
        snprintf(setv, sizeof setv, "PRAGMA user_version = %d", v + 1);
        if (exec(db, "BEGIN IMMEDIATE", "migration", e) ||
            exec(db, migrations[v], "migration", e) || exec(db, setv, "migration", e) ||
            exec(db, "COMMIT", "migration", e)) {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            err_wrap(e, "migrating spool schema to version %d", v + 1);
            return -1;
        }
        log_ev(LOG_INFO, "spool_migrated", "{s:i}", "version", v + 1);
    }
    return 0;
}

static int configure(spool *s, sqlite3 *db, int writer, err *e)
{
    char sql[256];
    sqlite3_busy_timeout(db, s->opts.busy_timeout_ms);
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; PRAGMA foreign_keys=ON;"
             "PRAGMA temp_store=MEMORY;",
             s->opts.synchronous_full ? "FULL" : "NORMAL");
    if (exec(db, sql, "configuring spool", e))
        return -1;
    if (writer && s->opts.max_size > 0) {
        int64_t page = 4096;
        pragma_int(db, "PRAGMA page_size", &page);
        int64_t pages = s->opts.max_size / (page > 0 ? page : 4096);
        snprintf(sql, sizeof sql, "PRAGMA max_page_count=%lld", (long long)(pages > 1 ? pages : 1));
        int64_t ignored;
        if (pragma_int(db, sql, &ignored)) {
            spool_sql_err(db, sqlite3_errcode(db), "setting spool max_size", e);
            return -1;
        }
    }
    return 0;
}

static sqlite3 *open_db(spool *s, int writer, err *e)
{
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(s->path, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        err_set(e, ERR_IO, "opening spool %s: %s", s->path,
                db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return NULL;
    }
    if (configure(s, db, writer, e)) {
        err_wrap(e, "%s", s->path);
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

spool *spool_open(const spool_opts *o, err *e)
{
    spool *s = xcalloc(1, sizeof *s);
    s->opts = *o;
    if (s->opts.commit_batch <= 0)
        s->opts.commit_batch = 512;
    if (s->opts.busy_timeout_ms <= 0)
        s->opts.busy_timeout_ms = 5000;
    s->path = xstrdup(o->path);
    s->efd = -1;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    STAILQ_INIT(&s->queue);
    STAILQ_INIT(&s->done);
    s->wdb = open_db(s, 1, e);
    if (!s->wdb || migrate(s->wdb, e)) {
        spool_close(s);
        return NULL;
    }
    s->rdb = open_db(s, 0, e);
    if (!s->rdb) {
        spool_close(s);
        return NULL;
    }
    return s;
}

/* ---- event tallies for the hooks --------------------------------------- */

void spool_tally_event(spool_tx *tx, const char *type)
{
    spool_tally *t = tx->tally;
    if (!t || !type)
        return;
    for (size_t i = 0; i < t->n; i++) {
        if (strcmp(t->names[i], type) == 0) {
            t->count[i]++;
            return;
        }
    }
    if (t->n == SPOOL_TALLY_TYPES || strlen(type) >= sizeof t->names[0])
        return;
    snprintf(t->names[t->n], sizeof t->names[0], "%s", type);
    t->type[t->n] = t->names[t->n];
    t->count[t->n++] = 1;
}

/* Fold an op's tally into the batch's (the op's savepoint was released). */
static void tally_merge(spool_tally *into, const spool_tally *from)
{
    for (size_t i = 0; i < from->n; i++) {
        spool_tx tx = {.tally = into};
        for (size_t k = 0; k < from->count[i]; k++)
            spool_tally_event(&tx, from->names[i]);
    }
}

void spool_set_hooks(spool *s, const spool_hooks *h)
{
    pthread_mutex_lock(&s->lock);
    s->hooks = *h;
    pthread_mutex_unlock(&s->lock);
}

/* ---- running one batch ---------------------------------------------- */

static void savepoint(sqlite3 *db, const char *verb)
{
    char sql[48];
    snprintf(sql, sizeof sql, "%s SAVEPOINT op", verb);
    sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/*
 * Run ops[0..n) in one transaction. Each op has a savepoint, so an op that
 * fails is undone alone. But SQLite rolls back the whole transaction by
 * itself on some errors (SQLITE_FULL, I/O errors): then the ops that had
 * succeeded are gone too, so the batch restarts without the failed op.
 * Every restart drops one op, so this ends after at most n passes.
 */
static void run_batch(spool *s, wop **ops, size_t n, spool_tally *out)
{
    spool_tally batch, op_tally;
    spool_tx tx = {.s = s, .db = s->wdb, .tally = &op_tally};
    for (;;) {
        err e;
        err_clear(&e);
        memset(&batch, 0, sizeof batch);
        if (exec(s->wdb, "BEGIN IMMEDIATE", "starting spool transaction", &e)) {
            for (size_t i = 0; i < n; i++)
                if (!ops[i]->failed)
                    ops[i]->e = e, ops[i]->failed = 1;
            return;
        }
        int restart = 0;
        for (size_t i = 0; i < n && !restart; i++) {
            wop *op = ops[i];
            if (op->failed)
                continue;
            memset(&op_tally, 0, sizeof op_tally);
            savepoint(s->wdb, "");
            if (op->fn(&tx, op->arg, &op->e) == 0) {
                savepoint(s->wdb, "RELEASE");
                tally_merge(&batch, &op_tally);
                continue;
            }
            op->failed = 1;
            if (sqlite3_get_autocommit(s->wdb))
                restart = 1; /* SQLite already rolled everything back */
            else
                savepoint(s->wdb, "ROLLBACK TO"), savepoint(s->wdb, "RELEASE");
        }
        if (restart)
            continue;
        if (exec(s->wdb, "COMMIT", "committing spool transaction", &e) == 0) {
            if (out)
                *out = batch;
            return;
        }
        sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
        for (size_t i = 0; i < n; i++)
            if (!ops[i]->failed)
                ops[i]->e = e, ops[i]->failed = 1;
        return;
    }
}

static void finish_op(spool *s, wop *op)
{
    /* Called with s->lock held. */
    s->pending--;
    if (op->sync) {
        op->finished = 1;
        pthread_cond_broadcast(op->cond);
        return;
    }
    STAILQ_INSERT_TAIL(&s->done, op, link);
}

static void *writer_main(void *arg)
{
    spool *s = arg;
    size_t cap = (size_t)s->opts.commit_batch;
    wop **ops = xcalloc(cap, sizeof *ops);
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (STAILQ_EMPTY(&s->queue) && !s->stopping)
            pthread_cond_wait(&s->wake, &s->lock);
        if (STAILQ_EMPTY(&s->queue) && s->stopping)
            break;
        size_t n = 0;
        while (n < cap && !STAILQ_EMPTY(&s->queue)) {
            ops[n++] = STAILQ_FIRST(&s->queue);
            STAILQ_REMOVE_HEAD(&s->queue, link);
        }
        pthread_mutex_unlock(&s->lock);

        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        spool_tally tally = {0};
        run_batch(s, ops, n, &tally);
        clock_gettime(CLOCK_MONOTONIC, &t1);

        pthread_mutex_lock(&s->lock);
        s->last_commit_ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
        s->commits++;
        s->writes += n;
        /* Hooks run under the lock so spool_set_hooks() can retire them safely. */
        if (s->hooks.committed)
            s->hooks.committed(s->hooks.arg,
                               (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9, n);
        if (s->hooks.events)
            for (size_t i = 0; i < tally.n; i++)
                s->hooks.events(s->hooks.arg, tally.names[i], tally.count[i]);
        for (size_t i = 0; i < n; i++)
            finish_op(s, ops[i]);
        uint64_t one = 1;
        if (s->efd >= 0 && write(s->efd, &one, sizeof one) < 0 && errno != EAGAIN)
            log_ev(LOG_ERROR, "spool_wakeup_failed", "{s:s}", "error", strerror(errno));
    }
    pthread_mutex_unlock(&s->lock);
    free(ops);
    return NULL;
}

/* On the event loop: run the completions of committed writes. */
static void on_done(evutil_socket_t fd, short what, void *arg)
{
    spool *s = arg;
    uint64_t count;
    if (read(fd, &count, sizeof count) < 0 && errno != EAGAIN)
        log_ev(LOG_ERROR, "spool_wakeup_failed", "{s:s}", "error", strerror(errno));
    struct wop_list ready;
    pthread_mutex_lock(&s->lock);
    STAILQ_INIT(&ready);
    STAILQ_CONCAT(&ready, &s->done);
    pthread_mutex_unlock(&s->lock);
    while (!STAILQ_EMPTY(&ready)) {
        wop *op = STAILQ_FIRST(&ready);
        STAILQ_REMOVE_HEAD(&ready, link);
        if (op->done)
            op->done(op->arg, op->failed ? &op->e : NULL);
        free(op);
    }
}

int spool_start_writer(spool *s, struct event_base *base, err *e)
{
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        err_set(e, ERR_IO, "eventfd: %s", strerror(errno));
        return -1;
    }
    s->ev_done = event_new(base, s->efd, EV_READ | EV_PERSIST, on_done, s);
    if (!s->ev_done || event_add(s->ev_done, NULL) < 0) {
        err_set(e, ERR_IO, "registering spool completion event failed");
        return -1;
    }
    int rc = pthread_create(&s->thread, NULL, writer_main, s);
    if (rc) {
        err_set(e, ERR_IO, "starting spool writer thread: %s", strerror(rc));
        return -1;
    }
    s->has_writer = 1;
    return 0;
}

static int enqueue(spool *s, wop *op)
{
    pthread_mutex_lock(&s->lock);
    if (s->stopping) {
        pthread_mutex_unlock(&s->lock);
        return -1;
    }
    STAILQ_INSERT_TAIL(&s->queue, op, link);
    s->pending++;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int spool_write(spool *s, spool_write_fn fn, spool_done_fn done, void *arg)
{
    wop *op = xcalloc(1, sizeof *op);
    op->fn = fn;
    op->done = done;
    op->arg = arg;
    if (!s->has_writer) {
        run_batch(s, &op, 1, NULL);
        if (done)
            done(arg, op->failed ? &op->e : NULL);
        free(op);
        return 0;
    }
    if (enqueue(s, op)) {
        free(op);
        return -1;
    }
    return 0;
}

int spool_write_sync(spool *s, spool_write_fn fn, void *arg, err *e)
{
    wop op = {.fn = fn, .arg = arg};
    if (!s->has_writer) {
        wop *p = &op;
        run_batch(s, &p, 1, NULL);
    } else {
        pthread_cond_t cond;
        pthread_cond_init(&cond, NULL);
        op.sync = 1;
        op.cond = &cond;
        if (enqueue(s, &op)) {
            pthread_cond_destroy(&cond);
            err_set(e, ERR_BUSY, "spool is shutting down");
            return -1;
        }
        pthread_mutex_lock(&s->lock);
        while (!op.finished)
            pthread_cond_wait(&cond, &s->lock);
        pthread_mutex_unlock(&s->lock);
        pthread_cond_destroy(&cond);
    }
    if (op.failed) {
        if (e)
            *e = op.e;
        return -1;
    }
    return 0;
}

size_t spool_pending(spool *s)
{
    pthread_mutex_lock(&s->lock);
    size_t n = s->pending;
    pthread_mutex_unlock(&s->lock);
    return n;
}

void spool_commit_stats(spool *s, uint64_t *commits, uint64_t *writes)
{
    pthread_mutex_lock(&s->lock);
    *commits = s->commits;
    *writes = s->writes;
    pthread_mutex_unlock(&s->lock);
}

int64_t spool_last_commit_ms(spool *s)
{
    pthread_mutex_lock(&s->lock);
    int64_t ms = s->last_commit_ms;
    pthread_mutex_unlock(&s->lock);
    return ms;
}

void spool_drain(spool *s)
{
    if (!s || !s->has_writer)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = 1;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    s->has_writer = 0;
    /* Run the last completions so no caller waits forever. */
    if (s->efd >= 0)
        on_done(s->efd, EV_READ, s);
}

void spool_close(spool *s)
{
    if (!s)
        return;
    spool_drain(s);
    if (s->ev_done)
        event_free(s->ev_done);
    if (s->efd >= 0)
        close(s->efd);
    cache_clear(s->rcache);
    cache_clear(s->wcache);
    if (s->rdb)
        sqlite3_close(s->rdb);
    if (s->wdb)
        sqlite3_close(s->wdb);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->wake);
    free(s->path);
    free(s);
}

static int recover_fn(spool_tx *tx, void *arg, err *e)
{
    int *changed = arg;
    int rc = sqlite3_exec(tx->db, "UPDATE recipients SET state = 0 WHERE state = 1", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        spool_sql_err(tx->db, rc, "recovering in-flight recipients", e);
        return -1;
    }
    *changed = sqlite3_changes(tx->db);
    return 0;
}

int spool_recover(spool *s, err *e)
{
    int changed = 0;
    if (spool_write_sync(s, recover_fn, &changed, e))
        return -1;
    if (changed)
        log_ev(LOG_INFO, "spool_recovered", "{s:i}", "requeued", changed);
    return changed;
}

int spool_check(spool *s, err *e)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->rdb, "PRAGMA integrity_check", -1, &st, NULL);
    if (rc != SQLITE_OK) {
        spool_sql_err(s->rdb, rc, "integrity check", e);
        return -1;
    }
    int ok = 0;
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *r = (const char *)sqlite3_column_text(st, 0);
        ok = r && strcmp(r, "ok") == 0;
        if (!ok)
            err_set(e, ERR_IO, "integrity check: %s", r ? r : "no result");
    }
    sqlite3_finalize(st);
    return ok ? 0 : -1;
}
