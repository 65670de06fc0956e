/*
 * spool_internal — shared by the spool's own .c files, never included
 * outside src/spool/. Gives the SQLite handles and the error mapping to
 * the files that split the spool by concern (messages, keys, queries).
 */
#ifndef PH_SPOOL_INTERNAL_H
#define PH_SPOOL_INTERNAL_H

#include "spool/spool.h"

#include <sqlite3.h>

struct spool_tx {
    spool *s;
    sqlite3 *db; /* the write connection */
};

/* Fill e from a SQLite result code; SQLITE_FULL becomes ERR_FULL. */
void spool_sql_err(sqlite3 *db, int rc, const char *what, err *e);
/* The read connection (calling thread only). */
sqlite3 *spool_read_db(spool *s);
/* Duplicate a column as a C string (NULL stays NULL). */
char *spool_col_str(sqlite3_stmt *st, int col);

#endif
