/*
 * spool_keys — storage of API keys. Only hashes are stored; see submit/keys.h
 * for how keys are minted and checked.
 */
#include "spool/spool_internal.h"

#include "core/clock.h"
#include "core/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void spool_key_free(spool_key *k)
{
    free(k->name);
    free(k->sender_domains);
    free(k->allow_ips);
    k->name = k->sender_domains = k->allow_ips = NULL;
}

static int key_insert_fn(spool_tx *tx, void *arg, err *e)
{
    const spool_key *k = arg;
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(tx->db,
                                "INSERT INTO api_keys(id, name, hash, scopes, sender_domains, allow_ips, "
                                "rate, require_signing, created_ms, bulk) VALUES(?,?,?,?,?,?,?,?,?,?)",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        spool_sql_err(tx->db, rc, "storing key", e);
        return -1;
    }
    sqlite3_bind_text(st, 1, k->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, k->name, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, k->hash, sizeof k->hash, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, k->scopes);
    sqlite3_bind_text(st, 5, k->sender_domains ? k->sender_domains : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, k->allow_ips ? k->allow_ips : "", -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 7, k->rate);
    sqlite3_bind_int(st, 8, k->require_signing);
    sqlite3_bind_int(st, 10, k->bulk);
    sqlite3_bind_int64(st, 9, k->created_ms);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        spool_sql_err(tx->db, rc, "storing key", e);
        return -1;
    }
    return 0;
}

int spool_key_insert(spool *s, const spool_key *k, err *e)
{
    return spool_write_sync(s, key_insert_fn, (void *)k, e);
}

static void read_key(sqlite3_stmt *st, spool_key *k)
{
    memset(k, 0, sizeof *k);
    const unsigned char *id = sqlite3_column_text(st, 0);
    snprintf(k->id, sizeof k->id, "%s", id ? (const char *)id : "");
    k->name = spool_col_str(st, 1);
    if (sqlite3_column_bytes(st, 2) == (int)sizeof k->hash)
        memcpy(k->hash, sqlite3_column_blob(st, 2), sizeof k->hash);
    k->scopes = sqlite3_column_int(st, 3);
    k->sender_domains = spool_col_str(st, 4);
    k->allow_ips = spool_col_str(st, 5);
    k->rate = sqlite3_column_double(st, 6);
    k->require_signing = sqlite3_column_int(st, 7);
    k->bulk = sqlite3_column_int(st, 10);
    k->created_ms = sqlite3_column_int64(st, 8);
    k->revoked_ms = sqlite3_column_int64(st, 9);
}

#define KEY_COLUMNS \
    "id, name, hash, scopes, sender_domains, allow_ips, rate, require_signing, created_ms, revoked_ms, bulk"

int spool_key_get(spool *s, const char *id, spool_key *out, err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    /* Every API request and SMTP AUTH looks its key up: keep the statement. */
    if (spool_prepare_cached(s, db, "SELECT " KEY_COLUMNS " FROM api_keys WHERE id = ?", &st, e))
        return -1;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        read_key(st, out);
    else if (rc != SQLITE_DONE)
        spool_sql_err(db, rc, "reading key", e);
    spool_release(s, st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

int spool_key_list(spool *s, spool_key_cb cb, void *arg, err *e)
{
    sqlite3 *db = spool_read_db(s);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, "SELECT " KEY_COLUMNS " FROM api_keys ORDER BY created_ms, id", -1,
                                &st, NULL);
    if (rc != SQLITE_OK) {
        spool_sql_err(db, rc, "listing keys", e);
        return -1;
    }
    int count = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        spool_key k;
        read_key(st, &k);
        cb(arg, &k);
        spool_key_free(&k);
        count++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        spool_sql_err(db, rc, "listing keys", e);
        return -1;
    }
    return count;
}

typedef struct revoke_op {
    const char *id;
    int changed;
} revoke_op;

static int key_revoke_fn(spool_tx *tx, void *arg, err *e)
{
    revoke_op *op = arg;
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(tx->db,
                                "UPDATE api_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms = 0",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        spool_sql_err(tx->db, rc, "revoking key", e);
        return -1;
    }
    sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, clock_now_ms());
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        spool_sql_err(tx->db, rc, "revoking key", e);
        return -1;
    }
    op->changed = sqlite3_changes(tx->db);
    return 0;
}

int spool_key_revoke(spool *s, const char *id, err *e)
{
    revoke_op op = {.id = id};
    if (spool_write_sync(s, key_revoke_fn, &op, e))
        return -1;
    return op.changed > 0;
}
