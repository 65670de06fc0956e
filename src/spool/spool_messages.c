/*
 * spool_messages — messages, recipients, events and suppressions: the SQL
 * behind spool.h's submission, state-update and read functions.
 */
#include "spool/spool_internal.h"

#include "core/clock.h"
#include "core/mem.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const state_names[RCPT_STATE_COUNT] = {
    "queued", "sending", "deferred", "delivered", "bounced", "expired", "suppressed", "cancelled",
};

const char *spool_state_name(int state)
{
    return state >= 0 && state < RCPT_STATE_COUNT ? state_names[state] : "unknown";
}

int spool_state_parse(const char *name)
{
    for (int i = 0; i < RCPT_STATE_COUNT; i++)
        if (strcmp(name, state_names[i]) == 0)
            return i;
    return -1;
}

int spool_state_is_final(int state)
{
    return state != RCPT_QUEUED && state != RCPT_SENDING && state != RCPT_DEFERRED;
}




/* The lower-cased domain of an address (the part after the last '@'). */
static char *addr_domain(const char *addr)
{
    const char *at = strrchr(addr, '@');
    char *d = xstrdup(at ? at + 1 : "");
    for (char *p = d; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return d;
}

int spool_tx_event(spool_tx *tx, const char *msg_id, const char *rcpt, const char *type,
                   const char *data_json, err *e)
{
    sqlite3_stmt *st;
    if (spool_prepare_cached(tx->s, tx->db, "INSERT INTO events(ts_ms, msg, rcpt, type, data) VALUES(?,?,?,?,?)",
                             &st, e))
        return -1;
    sqlite3_bind_int64(st, 1, clock_now_ms());
    spool_bind_opt(st, 2, msg_id);
    spool_bind_opt(st, 3, rcpt);
    spool_bind_opt(st, 4, type);
    spool_bind_opt(st, 5, data_json);
    if (spool_step_release(tx->s, st, "recording event", e))
        return -1;
    spool_tally_event(tx, type);
    return 0;
}

static int insert_rcpt(spool_tx *tx, int64_t msg_rowid, const char *id, const char *addr,
                       int suppressed, int64_t now, int64_t due, err *e)
{
    sqlite3_stmt *st;
    if (spool_prepare_cached(tx->s, tx->db,
                "INSERT INTO recipients(msg, addr, domain, state, next_at, updated_ms) "
                "VALUES(?,?,?,?,?,?)",
                &st, e))
        return -1;
    char *domain = addr_domain(addr);
    sqlite3_bind_int64(st, 1, msg_rowid);
    sqlite3_bind_text(st, 2, addr, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, domain, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 4, suppressed ? RCPT_SUPPRESSED : RCPT_QUEUED);
    sqlite3_bind_int64(st, 5, due);
    sqlite3_bind_int64(st, 6, now);
    free(domain);
    if (spool_step_release(tx->s, st, "storing recipient", e))
        return -1;
    return spool_tx_event(tx, id, addr, suppressed ? "suppressed" : "accepted", NULL, e);
}

int spool_tx_insert_message(spool_tx *tx, const spool_submission *m, char id[ID_MSG_LEN + 1],
                            err *e)
{
    if (m->nrcpts == 0) {
        err_set(e, ERR_INVALID, "message has no recipients");
        return -1;
    }
    if (m->id && strlen(m->id) == ID_MSG_LEN)
        memcpy(id, m->id, ID_MSG_LEN + 1);
    else if (ids_message(id) < 0) {
        err_set(e, ERR_IO, "no randomness for a message id");
        return -1;
    }
    int64_t now = clock_now_ms();
    sqlite3_stmt *st;
    if (spool_prepare_cached(tx->s, tx->db,
                "INSERT INTO messages(uid, created_ms, mail_from, ingress, key_id, meta, size, data) "
                "VALUES(?,?,?,?,?,?,?,?)",
                &st, e))
        return -1;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    spool_bind_opt(st, 3, m->mail_from ? m->mail_from : "");
    spool_bind_opt(st, 4, m->ingress ? m->ingress : "unknown");
    spool_bind_opt(st, 5, m->key_id);
    spool_bind_opt(st, 6, m->meta);
    sqlite3_bind_int64(st, 7, (int64_t)m->len);
    sqlite3_bind_blob64(st, 8, m->data, m->len, SQLITE_STATIC);
    if (spool_step_release(tx->s, st, "storing message", e))
        return -1;
    int64_t rowid = sqlite3_last_insert_rowid(tx->db);
    int64_t due = m->not_before_ms > now ? m->not_before_ms : now;
    for (size_t i = 0; i < m->nrcpts; i++) {
        int sup = m->suppressed ? m->suppressed[i] : 0;
        if (insert_rcpt(tx, rowid, id, m->rcpts[i], sup, now, due, e))
            return -1;
    }
    return 0;
}

int spool_tx_rcpt_update(spool_tx *tx, const spool_rcpt_update *u, err *e)
{
    sqlite3_stmt *st;
    if (spool_prepare_cached(tx->s, tx->db,
                "UPDATE recipients SET state = ?, next_at = ?, attempts = attempts + ?, "
                "updated_ms = ?, last_reply = COALESCE(?, last_reply), "
                "last_host = COALESCE(?, last_host) WHERE id = ?",
                &st, e))
        return -1;
    int64_t now = clock_now_ms();
    sqlite3_bind_int(st, 1, u->state);
    sqlite3_bind_int64(st, 2, u->next_at_ms ? u->next_at_ms : now);
    sqlite3_bind_int(st, 3, u->add_attempt ? 1 : 0);
    sqlite3_bind_int64(st, 4, now);
    spool_bind_opt(st, 5, u->reply);
    spool_bind_opt(st, 6, u->host);
    sqlite3_bind_int64(st, 7, u->rcpt_id);
    return spool_step_release(tx->s, st, "updating recipient", e);
}

int spool_tx_suppress(spool_tx *tx, const char *email, const char *scope, const char *reason,
                      err *e)
{
    sqlite3_stmt *st;
    if (spool_prepare(tx->db,
                "INSERT INTO suppressions(email, scope, reason, created_ms) VALUES(lower(?),lower(?),?,?) "
                "ON CONFLICT(email, scope) DO UPDATE SET reason = excluded.reason",
                &st, e))
        return -1;
    sqlite3_bind_text(st, 1, email, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, scope ? scope : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, reason, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, clock_now_ms());
    return spool_step_done(tx->db, st, "adding suppression", e);
}

int spool_tx_unsuppress(spool_tx *tx, const char *email, const char *scope, err *e)
{
    sqlite3_stmt *st;
    if (spool_prepare(tx->db, "DELETE FROM suppressions WHERE email = lower(?) AND scope = lower(?)", &st, e))
        return -1;
    sqlite3_bind_text(st, 1, email, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, scope ? scope : "", -1, SQLITE_TRANSIENT);
    if (spool_step_done(tx->db, st, "removing suppression", e))
        return -1;
    if (sqlite3_changes(tx->db) == 0) {
        err_set(e, ERR_NOTFOUND, "%s is not suppressed", email);
        return -1;
    }
    return 0;
}

int spool_tx_delete_message(spool_tx *tx, const char *msg_id, err *e)
{
    sqlite3_stmt *st;
    if (spool_prepare(tx->db, "DELETE FROM messages WHERE uid = ?", &st, e))
        return -1;
    sqlite3_bind_text(st, 1, msg_id, -1, SQLITE_TRANSIENT);
    if (spool_step_done(tx->db, st, "deleting message", e))
        return -1;
    if (sqlite3_changes(tx->db) == 0) {
        err_set(e, ERR_NOTFOUND, "no message %s", msg_id);
        return -1;
    }
    return spool_tx_event(tx, msg_id, NULL, "deleted", NULL, e);
}

int spool_tx_retry_now(spool_tx *tx, const char *msg_id, err *e)
{
    sqlite3_stmt *st;
    const char *sql = msg_id ? "UPDATE recipients SET next_at = ?, state = 0 WHERE state IN (0, 2) "
                               "AND msg = (SELECT id FROM messages WHERE uid = ?)"
                             : "UPDATE recipients SET next_at = ?, state = 0 WHERE state IN (0, 2)";
    if (spool_prepare(tx->db, sql, &st, e))
        return -1;
    sqlite3_bind_int64(st, 1, clock_now_ms());
    if (msg_id)
        sqlite3_bind_text(st, 2, msg_id, -1, SQLITE_TRANSIENT);
    if (spool_step_done(tx->db, st, "rescheduling", e))
        return -1;
    return sqlite3_changes(tx->db);
}

/* ---- submissions through the group commit ---------------------------- */

/* A deep copy of a submission that outlives the caller's buffers. */
typedef struct submit_op {
    spool_submission m;
    char **rcpts;
    unsigned char *suppressed;
    char *mail_from, *data, *ingress, *key_id, *meta, *pre_id;
    char id[ID_MSG_LEN + 1];
    spool_submit_cb cb;
    void *arg;
} submit_op;

static submit_op *submit_copy(const spool_submission *m)
{
    submit_op *op = xcalloc(1, sizeof *op);
    op->rcpts = xcalloc(m->nrcpts ? m->nrcpts : 1, sizeof *op->rcpts);
    for (size_t i = 0; i < m->nrcpts; i++)
        op->rcpts[i] = xstrdup(m->rcpts[i]);
    if (m->suppressed)
        op->suppressed = xmemdup(m->suppressed, m->nrcpts ? m->nrcpts : 1);
    op->mail_from = xstrdup(m->mail_from ? m->mail_from : "");
    op->data = xmemdup(m->data, m->len);
    op->ingress = m->ingress ? xstrdup(m->ingress) : NULL;
    op->key_id = m->key_id ? xstrdup(m->key_id) : NULL;
    op->meta = m->meta ? xstrdup(m->meta) : NULL;
    op->pre_id = m->id ? xstrdup(m->id) : NULL;
    op->m = *m;
    op->m.id = op->pre_id;
    op->m.rcpts = (const char *const *)op->rcpts;
    op->m.suppressed = op->suppressed;
    op->m.mail_from = op->mail_from;
    op->m.data = op->data;
    op->m.ingress = op->ingress;
    op->m.key_id = op->key_id;
    op->m.meta = op->meta;
    return op;
}

static void submit_free(submit_op *op)
{
    for (size_t i = 0; i < op->m.nrcpts; i++)
        free(op->rcpts[i]);
    free(op->rcpts);
    free(op->suppressed);
    free(op->mail_from);
    free(op->data);
    free(op->ingress);
    free(op->key_id);
    free(op->meta);
    free(op->pre_id);
    free(op);
}

static int submit_fn(spool_tx *tx, void *arg, err *e)
{
    submit_op *op = arg;
    return spool_tx_insert_message(tx, &op->m, op->id, e);
}

static void submit_done(void *arg, const err *e)
{
    submit_op *op = arg;
    op->cb(op->arg, e ? NULL : op->id, e);
    submit_free(op);
}

int spool_submit(spool *s, const spool_submission *m, spool_submit_cb cb, void *arg)
{
    submit_op *op = submit_copy(m);
    op->cb = cb;
    op->arg = arg;
    if (spool_write(s, submit_fn, submit_done, op) < 0) {
        submit_free(op);
        return -1;
    }
    return 0;
}

typedef struct sync_submit {
    const spool_submission *m;
    char *id;
} sync_submit;

static int sync_submit_fn(spool_tx *tx, void *arg, err *e)
{
    sync_submit *ss = arg;
    return spool_tx_insert_message(tx, ss->m, ss->id, e);
}

int spool_submit_sync(spool *s, const spool_submission *m, char id[ID_MSG_LEN + 1], err *e)
{
    sync_submit ss = {.m = m, .id = id};
    return spool_write_sync(s, sync_submit_fn, &ss, e);
}

/* ---- reads ----------------------------------------------------------- */

void spool_rcpt_free(spool_rcpt *r)
{
    free(r->msg_id);
    free(r->addr);
    free(r->domain);
    free(r->last_reply);
    free(r->last_host);
    memset(r, 0, sizeof *r);
}

void spool_message_free(spool_message *m)
{
    if (!m)
        return;
    free(m->mail_from);
    free(m->ingress);
    free(m->key_id);
    free(m->meta);
    free(m->data);
    for (size_t i = 0; i < m->nrcpts; i++)
        spool_rcpt_free(&m->rcpts[i]);
    free(m->rcpts);
    memset(m, 0, sizeof *m);
}

#define RCPT_COLUMNS                                                                              \
    "r.id, m.uid, r.addr, r.domain, r.state, r.attempts, r.next_at, r.updated_ms, r.last_reply, " \
    "r.last_host"

static void read_rcpt(sqlite3_stmt *st, spool_rcpt *r)
{
    r->id = sqlite3_column_int64(st, 0);
    r->msg_id = spool_col_str(st, 1);
    r->addr = spool_col_str(st, 2);
    r->domain = spool_col_str(st, 3);
    r->state = sqlite3_column_int(st, 4);
    r->attempts = sqlite3_column_int(st, 5);
    r->next_at_ms = sqlite3_column_int64(st, 6);
    r->updated_ms = sqlite3_column_int64(st, 7);
    r->last_reply = spool_col_str(st, 8);
    r->last_host = spool_col_str(st, 9);
}

static int load_rcpts(spool *s, sqlite3 *db, spool_message *m, err *e)
{
    sqlite3_stmt *st;
    if (spool_prepare_cached(s, db, "SELECT " RCPT_COLUMNS " FROM recipients r JOIN messages m ON m.id = r.msg "
                                    "WHERE r.msg = ? ORDER BY r.id",
                             &st, e))
        return -1;
    sqlite3_bind_int64(st, 1, m->rowid);
    size_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (m->nrcpts == cap) {
            cap = cap ? cap * 2 : 4;
            m->rcpts = xrealloc(m->rcpts, cap * sizeof *m->rcpts);
        }
        read_rcpt(st, &m->rcpts[m->nrcpts++]);
    }
    if (rc != SQLITE_DONE)
        spool_sql_err(db, rc, "reading recipients", e);
    spool_release(s, st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static void read_message(sqlite3_stmt *st, spool_message *m, int with_data)
{
    memset(m, 0, sizeof *m);
    m->rowid = sqlite3_column_int64(st, 0);
    const unsigned char *uid = sqlite3_column_text(st, 1);
    snprintf(m->id, sizeof m->id, "%s", uid ? (const char *)uid : "");
    m->created_ms = sqlite3_column_int64(st, 2);
    m->mail_from = spool_col_str(st, 3);
    m->ingress = spool_col_str(st, 4);
    m->key_id = spool_col_str(st, 5);
    m->meta = spool_col_str(st, 6);
    m->len = (size_t)sqlite3_column_int64(st, 7);
    if (with_data) {
        const void *blob = sqlite3_column_blob(st, 8);
        int n = sqlite3_column_bytes(st, 8);
        m->data = xmalloc((size_t)n + 1);
        if (n > 0)
            memcpy(m->data, blob, (size_t)n);
        m->data[n] = '\0';
        m->len = (size_t)n;
    }
}

int spool_message_get(spool *s, const char *id, int with_data, spool_message *out, err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    const char *sql = with_data ? "SELECT id, uid, created_ms, mail_from, ingress, key_id, meta, size, data "
                                  "FROM messages WHERE uid = ?"
                                : "SELECT id, uid, created_ms, mail_from, ingress, key_id, meta, size "
                                  "FROM messages WHERE uid = ?";
    if (spool_prepare_cached(s, db, sql, &st, e))
        return -1;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        if (rc != SQLITE_DONE)
            spool_sql_err(db, rc, "reading message", e);
        spool_release(s, st);
        if (rc == SQLITE_DONE)
            err_set(e, ERR_NOTFOUND, "no message %s", id);
        return -1;
    }
    read_message(st, out, with_data);
    spool_release(s, st);
    if (load_rcpts(s, db, out, e)) {
        spool_message_free(out);
        return -1;
    }
    return 0;
}

int spool_due(spool *s, int64_t now_ms, spool_cursor *cur, int limit, spool_rcpt_cb cb, void *arg,
              err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    /* Row-value comparison on the partial index: a keyset scan. */
    if (spool_prepare_cached(s, db, "SELECT " RCPT_COLUMNS " FROM recipients r JOIN messages m ON m.id = r.msg "
                    "WHERE r.state IN (0, 1, 2) AND r.next_at <= ? AND (r.next_at, r.id) > (?, ?) "
                    "ORDER BY r.next_at, r.id LIMIT ?",
                &st, e))
        return -1;
    sqlite3_bind_int64(st, 1, now_ms);
    sqlite3_bind_int64(st, 2, cur->next_at_ms);
    sqlite3_bind_int64(st, 3, cur->id);
    sqlite3_bind_int(st, 4, limit);
    int count = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        spool_rcpt r;
        read_rcpt(st, &r);
        cur->next_at_ms = r.next_at_ms;
        cur->id = r.id;
        cb(arg, &r);
        spool_rcpt_free(&r);
        count++;
    }
    if (rc != SQLITE_DONE)
        spool_sql_err(db, rc, "scanning due recipients", e);
    spool_release(s, st);
    if (rc != SQLITE_DONE)
        return -1;
    return count;
}

int64_t spool_oldest_pending_ms(spool *s)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    /* Recipients are inserted in creation order, so the lowest pending id
       belongs to the oldest message; the partial index bounds the scan. */
    if (sqlite3_prepare_v2(db,
                           "SELECT m.created_ms FROM messages m WHERE m.id = "
                           "(SELECT MIN(msg) FROM recipients WHERE state IN (0, 1, 2))",
                           -1, &st, NULL) != SQLITE_OK)
        return 0;
    int64_t at = 0;
    if (sqlite3_step(st) == SQLITE_ROW)
        at = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return at;
}

int64_t spool_next_due(spool *s)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT MIN(next_at) FROM recipients WHERE state IN (0, 1, 2)", -1, &st,
                           NULL) != SQLITE_OK)
        return 0;
    int64_t at = 0;
    if (sqlite3_step(st) == SQLITE_ROW)
        at = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return at;
}

int spool_list(spool *s, int state, int limit, spool_message_cb cb, void *arg, err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    const char *sql = state < 0
                          ? "SELECT id, uid, created_ms, mail_from, ingress, key_id, meta, size FROM messages "
                            "ORDER BY id DESC LIMIT ?"
                          : "SELECT id, uid, created_ms, mail_from, ingress, key_id, meta, size FROM messages m "
                            "WHERE EXISTS (SELECT 1 FROM recipients r WHERE r.msg = m.id AND r.state = ?2) "
                            "ORDER BY id DESC LIMIT ?1";
    if (spool_prepare(db, sql, &st, e))
        return -1;
    sqlite3_bind_int(st, 1, limit);
    if (state >= 0)
        sqlite3_bind_int(st, 2, state);
    int count = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        spool_message m;
        read_message(st, &m, 0);
        if (load_rcpts(s, db, &m, e)) {
            spool_message_free(&m);
            sqlite3_finalize(st);
            return -1;
        }
        cb(arg, &m);
        spool_message_free(&m);
        count++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        spool_sql_err(db, rc, "listing messages", e);
        return -1;
    }
    return count;
}

int spool_counts(spool *s, int64_t counts[RCPT_STATE_COUNT], err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    memset(counts, 0, sizeof(int64_t) * RCPT_STATE_COUNT);
    if (spool_prepare(db, "SELECT state, COUNT(*) FROM recipients GROUP BY state", &st, e))
        return -1;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int state = sqlite3_column_int(st, 0);
        if (state >= 0 && state < RCPT_STATE_COUNT)
            counts[state] = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        spool_sql_err(db, rc, "counting recipients", e);
        return -1;
    }
    return 0;
}

int spool_events(spool *s, int64_t after_id, const char *msg_id, const char *type, int limit,
                 spool_event_cb cb, void *arg, err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    if (spool_prepare(db, "SELECT id, ts_ms, msg, rcpt, type, data FROM events WHERE id > ?1 "
                    "AND (?2 IS NULL OR msg = ?2) AND (?3 IS NULL OR type = ?3) ORDER BY id LIMIT ?4",
                &st, e))
        return -1;
    sqlite3_bind_int64(st, 1, after_id);
    spool_bind_opt(st, 2, msg_id);
    spool_bind_opt(st, 3, type);
    sqlite3_bind_int(st, 4, limit);
    int count = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        spool_event ev = {
            .id = sqlite3_column_int64(st, 0),
            .ts_ms = sqlite3_column_int64(st, 1),
            .msg_id = (const char *)sqlite3_column_text(st, 2),
            .rcpt = (const char *)sqlite3_column_text(st, 3),
            .type = (const char *)sqlite3_column_text(st, 4),
            .data = (const char *)sqlite3_column_text(st, 5),
        };
        cb(arg, &ev);
        count++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        spool_sql_err(db, rc, "reading events", e);
        return -1;
    }
    return count;
}

int spool_is_suppressed(spool *s, const char *email, const char *scope, char *reason,
                        size_t reason_len, err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    if (spool_prepare_cached(s, db, "SELECT reason FROM suppressions WHERE email = lower(?1) "
                                    "AND (scope = '' OR scope = lower(?2)) LIMIT 1",
                             &st, e))
        return -1;
    sqlite3_bind_text(st, 1, email, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, scope ? scope : "", -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    int found = rc == SQLITE_ROW;
    if (found && reason && reason_len) {
        const unsigned char *r = sqlite3_column_text(st, 0);
        snprintf(reason, reason_len, "%s", r ? (const char *)r : "");
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        spool_sql_err(db, rc, "reading suppressions", e);
    spool_release(s, st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return -1;
    return found;
}

