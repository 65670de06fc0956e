/*
 * spool_internal — shared by the spool's own .c files, never included
 * outside src/spool/. Gives the SQLite handles and the error mapping to
 * the files that split the spool by concern (messages, keys, queries).
 */
#ifndef PH_SPOOL_INTERNAL_H
#define PH_SPOOL_INTERNAL_H

#include "spool/spool.h"

#include <sqlite3.h>

/* Event types written in the current transaction, counted for the
   events hook after COMMIT (rolled-back savepoints are subtracted). */
#define SPOOL_TALLY_TYPES 24
typedef struct spool_tally {
    const char *type[SPOOL_TALLY_TYPES]; /* interned: pointers into a static set */
    char names[SPOOL_TALLY_TYPES][24];
    size_t count[SPOOL_TALLY_TYPES];
    size_t n;
} spool_tally;

struct spool_tx {
    spool *s;
    sqlite3 *db; /* the write connection */
    spool_tally *tally;
};

/* Count one event of `type` in the transaction's tally. */
void spool_tally_event(spool_tx *tx, const char *type);

/* Fill e from a SQLite result code; SQLITE_FULL becomes ERR_FULL. */
void spool_sql_err(sqlite3 *db, int rc, const char *what, err *e);
/* The read connection (calling thread only). */
sqlite3 *spool_read_db(spool *s);
/* Prepare on db; on failure fill e and return -1. */
int spool_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st, err *e);
/* The same, reused across calls: sql must be a string literal (its address
   is the cache key). Give it back with spool_release()/spool_step_release(). */
int spool_prepare_cached(spool *s, sqlite3 *db, const char *sql, sqlite3_stmt **st, err *e);
void spool_release(spool *s, sqlite3_stmt *st);
int spool_step_release(spool *s, sqlite3_stmt *st, const char *what, err *e);
/* Step a statement that returns no rows, then finalize it. */
int spool_step_done(sqlite3 *db, sqlite3_stmt *st, const char *what, err *e);
/* Bind a string, or NULL when s is NULL. */
void spool_bind_opt(sqlite3_stmt *st, int i, const char *s);
/* Duplicate a column as a C string (NULL stays NULL). */
char *spool_col_str(sqlite3_stmt *st, int col);

#endif
