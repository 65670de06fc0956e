/*
 * spool_webhooks — webhook endpoints and their durable delivery cursors.
 * The cursor is the id of the last event acknowledged by the endpoint, so
 * delivery resumes where it stopped after a restart (at-least-once).
 */
#include "spool/spool_internal.h"

#include "core/clock.h"
#include "core/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>



int spool_tx_webhook_insert(spool_tx *tx, const spool_webhook *w, err *e)
{
    sqlite3_stmt *st;
    /* A new endpoint starts after the newest event: it gets what happens from now on. */
    if (spool_prepare(tx->db,
             "INSERT INTO webhooks(id, url, events, secret, created_ms, cursor) "
             "VALUES(?,?,?,?,?, (SELECT COALESCE(MAX(id), 0) FROM events))",
             &st, e))
        return -1;
    sqlite3_bind_text(st, 1, w->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, w->url, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, w->events, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, w->secret, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, clock_now_ms());
    return spool_step_done(tx->db, st, "storing webhook", e);
}

int spool_tx_webhook_delete(spool_tx *tx, const char *id, err *e)
{
    sqlite3_stmt *st;
    if (spool_prepare(tx->db, "DELETE FROM webhooks WHERE id = ?", &st, e))
        return -1;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    if (spool_step_done(tx->db, st, "deleting webhook", e))
        return -1;
    if (sqlite3_changes(tx->db) == 0) {
        err_set(e, ERR_NOTFOUND, "no webhook %s", id);
        return -1;
    }
    return 0;
}

int spool_tx_webhook_progress(spool_tx *tx, const char *id, int64_t cursor, int64_t failing_since_ms,
                              const char *last_error, int healthy, err *e)
{
    sqlite3_stmt *st;
    /* MAX(): a cursor never moves backwards, even if two updates cross. */
    if (spool_prepare(tx->db,
             "UPDATE webhooks SET cursor = MAX(cursor, ?2), failing_since_ms = ?3, "
             "last_error = ?4, healthy = ?5 WHERE id = ?1",
             &st, e))
        return -1;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, cursor);
    sqlite3_bind_int64(st, 3, failing_since_ms);
    if (last_error)
        sqlite3_bind_text(st, 4, last_error, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 4);
    sqlite3_bind_int(st, 5, healthy);
    return spool_step_done(tx->db, st, "updating webhook", e);
}

int spool_webhooks(spool *s, const char *id, spool_webhook_cb cb, void *arg, err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    if (spool_prepare(db,
             "SELECT id, url, events, secret, created_ms, cursor, failing_since_ms, last_error, healthy "
             "FROM webhooks WHERE (?1 IS NULL OR id = ?1) ORDER BY created_ms, id",
             &st, e))
        return -1;
    if (id)
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int count = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        spool_webhook w = {
            .id = (const char *)sqlite3_column_text(st, 0),
            .url = (const char *)sqlite3_column_text(st, 1),
            .events = (const char *)sqlite3_column_text(st, 2),
            .secret = (const char *)sqlite3_column_text(st, 3),
            .created_ms = sqlite3_column_int64(st, 4),
            .cursor = sqlite3_column_int64(st, 5),
            .failing_since_ms = sqlite3_column_int64(st, 6),
            .last_error = (const char *)sqlite3_column_text(st, 7),
            .healthy = sqlite3_column_int(st, 8),
        };
        cb(arg, &w);
        count++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        spool_sql_err(db, rc, "reading webhooks", e);
        return -1;
    }
    return count;
}
