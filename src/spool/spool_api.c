/*
 * spool_api — the queries behind the HTTP API: filtered and paginated
 * message lists, the event stream with message metadata, suppression
 * lists, idempotency records, cancelling and per-key recipient counts.
 *
 * Pagination is keyset-based everywhere (a row id or an email address as
 * the cursor), never OFFSET: a page costs the same however deep it is and
 * rows inserted meanwhile do not shift the pages.
 */
#include "spool/spool_internal.h"

#include "core/clock.h"
#include "core/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>



/* ---- messages ---------------------------------------------------------- */

/* Collect the matching message ids first, then load each through
   spool_message_get: one query shape for the filter, one for the rows. */
int spool_list_filtered(spool *s, const spool_msg_filter *f, spool_message_cb cb, void *arg, err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    if (spool_prepare(db,
                "SELECT m.uid FROM messages m WHERE (?1 = 0 OR m.id < ?1) "
                "AND (?2 = 0 OR m.created_ms >= ?2) "
                "AND (?3 < 0 OR EXISTS (SELECT 1 FROM recipients r WHERE r.msg = m.id AND r.state = ?3)) "
                "AND (?4 IS NULL OR m.id IN (SELECT r.msg FROM recipients r "
                "     WHERE r.addr = ?4 COLLATE NOCASE)) "
                "AND (?5 IS NULL OR (json_valid(m.meta) AND EXISTS (SELECT 1 FROM "
                "     json_each(m.meta, '$.tags') t WHERE t.value = ?5))) "
                "ORDER BY m.id DESC LIMIT ?6",
                &st, e))
        return -1;
    sqlite3_bind_int64(st, 1, f->before_rowid);
    sqlite3_bind_int64(st, 2, f->since_ms);
    sqlite3_bind_int(st, 3, f->state);
    spool_bind_opt(st, 4, f->recipient);
    spool_bind_opt(st, 5, f->tag);
    sqlite3_bind_int(st, 6, f->limit);
    char **ids = NULL;
    size_t n = 0, cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            ids = xrealloc(ids, cap * sizeof *ids);
        }
        ids[n++] = spool_col_str(st, 0);
    }
    sqlite3_finalize(st);
    int count = 0;
    if (rc != SQLITE_DONE) {
        spool_sql_err(db, rc, "listing messages", e);
        count = -1;
    }
    for (size_t i = 0; i < n; i++) {
        spool_message m;
        if (count >= 0 && spool_message_get(s, ids[i], 0, &m, e) == 0) {
            cb(arg, &m);
            spool_message_free(&m);
            count++;
        } else if (count >= 0 && e->code != ERR_NOTFOUND) {
            count = -1; /* a message deleted meanwhile is simply skipped */
        }
        free(ids[i]);
    }
    free(ids);
    return count;
}

/* ---- events ------------------------------------------------------------ */

int spool_events_query(spool *s, int64_t after_id, int64_t since_ms, const char *type, int limit,
                       spool_event_meta_cb cb, void *arg, err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    if (spool_prepare(db,
                "SELECT e.id, e.ts_ms, e.msg, e.rcpt, e.type, e.data, m.meta FROM events e "
                "LEFT JOIN messages m ON m.uid = e.msg WHERE e.id > ?1 AND (?2 = 0 OR e.ts_ms >= ?2) "
                "AND (?3 IS NULL OR e.type = ?3) ORDER BY e.id LIMIT ?4",
                &st, e))
        return -1;
    sqlite3_bind_int64(st, 1, after_id);
    sqlite3_bind_int64(st, 2, since_ms);
    spool_bind_opt(st, 3, type);
    sqlite3_bind_int(st, 4, limit);
    int count = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        spool_event_meta ev = {
            .ev = {.id = sqlite3_column_int64(st, 0),
                   .ts_ms = sqlite3_column_int64(st, 1),
                   .msg_id = (const char *)sqlite3_column_text(st, 2),
                   .rcpt = (const char *)sqlite3_column_text(st, 3),
                   .type = (const char *)sqlite3_column_text(st, 4),
                   .data = (const char *)sqlite3_column_text(st, 5)},
            .meta = (const char *)sqlite3_column_text(st, 6),
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

/* ---- suppressions -------------------------------------------------------- */

int spool_suppressions(spool *s, const char *email, const char *after_email, int limit,
                       spool_suppression_cb cb, void *arg, err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    if (spool_prepare(db,
                "SELECT email, scope, reason, created_ms FROM suppressions "
                "WHERE (?1 IS NULL OR email = lower(?1)) AND email > ?2 "
                "ORDER BY email, scope LIMIT ?3",
                &st, e))
        return -1;
    spool_bind_opt(st, 1, email);
    sqlite3_bind_text(st, 2, after_email ? after_email : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 3, limit);
    int count = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        spool_suppression sp = {
            .email = (const char *)sqlite3_column_text(st, 0),
            .scope = (const char *)sqlite3_column_text(st, 1),
            .reason = (const char *)sqlite3_column_text(st, 2),
            .created_ms = sqlite3_column_int64(st, 3),
        };
        cb(arg, &sp);
        count++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        spool_sql_err(db, rc, "listing suppressions", e);
        return -1;
    }
    return count;
}

/* ---- idempotency ----------------------------------------------------------- */

int spool_idem_get(spool *s, const char *key_id, const char *idem_key, int64_t min_created_ms,
                   char **hash, int *status, char **response, err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    if (spool_prepare(db,
                "SELECT request_hash, status, response FROM idempotency "
                "WHERE key_id = ? AND idem_key = ? AND created_ms >= ?",
                &st, e))
        return -1;
    sqlite3_bind_text(st, 1, key_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, idem_key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, min_created_ms);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *hash = spool_col_str(st, 0);
        *status = sqlite3_column_int(st, 1);
        *response = spool_col_str(st, 2);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        spool_sql_err(db, rc, "reading idempotency record", e);
        return -1;
    }
    return rc == SQLITE_ROW;
}

int spool_tx_idem_put(spool_tx *tx, const char *key_id, const char *idem_key, const char *hash,
                      int status, const char *response, err *e)
{
    sqlite3_stmt *st;
    /* REPLACE: an expired record with the same key may still be there. */
    if (spool_prepare(tx->db,
                "INSERT OR REPLACE INTO idempotency(key_id, idem_key, request_hash, status, response, "
                "created_ms) VALUES(?,?,?,?,?,?)",
                &st, e))
        return -1;
    sqlite3_bind_text(st, 1, key_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, idem_key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, hash, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 4, status);
    sqlite3_bind_text(st, 5, response, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 6, clock_now_ms());
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        spool_sql_err(tx->db, rc, "storing idempotency record", e);
        return -1;
    }
    return 0;
}

int spool_tx_idem_expire(spool_tx *tx, int64_t before_ms, err *e)
{
    sqlite3_stmt *st;
    if (spool_prepare(tx->db, "DELETE FROM idempotency WHERE created_ms < ?", &st, e))
        return -1;
    sqlite3_bind_int64(st, 1, before_ms);
    return spool_step_done(tx->db, st, "expiring idempotency records", e);
}

/* ---- cancel ------------------------------------------------------------------ */

int spool_tx_cancel(spool_tx *tx, const char *msg_id, err *e)
{
    sqlite3_stmt *st;
    if (spool_prepare(tx->db, "SELECT id FROM messages WHERE uid = ?", &st, e))
        return -1;
    sqlite3_bind_text(st, 1, msg_id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    int64_t rowid = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW) {
        if (rc == SQLITE_DONE)
            err_set(e, ERR_NOTFOUND, "no message %s", msg_id);
        else
            spool_sql_err(tx->db, rc, "finding message", e);
        return -1;
    }
    /* RETURNING gives the addresses for the events in the same statement. */
    if (spool_prepare(tx->db,
                "UPDATE recipients SET state = 7, updated_ms = ?1 WHERE msg = ?2 AND state IN (0, 2) "
                "RETURNING addr",
                &st, e))
        return -1;
    sqlite3_bind_int64(st, 1, clock_now_ms());
    sqlite3_bind_int64(st, 2, rowid);
    char **addrs = NULL;
    size_t n = 0, cap = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            addrs = xrealloc(addrs, cap * sizeof *addrs);
        }
        addrs[n++] = spool_col_str(st, 0);
    }
    sqlite3_finalize(st);
    int result = (int)n;
    if (rc != SQLITE_DONE) {
        spool_sql_err(tx->db, rc, "cancelling recipients", e);
        result = -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (result >= 0 && spool_tx_event(tx, msg_id, addrs[i], "cancelled", NULL, e))
            result = -1;
        free(addrs[i]);
    }
    free(addrs);
    return result;
}

/* ---- per-key counts -------------------------------------------------------- */

int64_t spool_key_rcpts_since(spool *s, const char *key_id, int64_t since_ms, int64_t *oldest_ms,
                              err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    if (spool_prepare(db,
                "SELECT COUNT(r.id), MIN(m.created_ms) FROM messages m JOIN recipients r ON r.msg = m.id "
                "WHERE m.created_ms >= ? AND m.key_id = ?",
                &st, e))
        return -1;
    sqlite3_bind_int64(st, 1, since_ms);
    sqlite3_bind_text(st, 2, key_id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    int64_t n = 0;
    if (rc == SQLITE_ROW) {
        n = sqlite3_column_int64(st, 0);
        if (oldest_ms)
            *oldest_ms = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW) {
        spool_sql_err(db, rc, "counting recipients of key", e);
        return -1;
    }
    return n;
}
