/*
 * log — one JSON object per line.
 *
 * Every line is {"ts":"…","level":"…","event":"…", fields…}. Fields are
 * given as a jansson json_pack() object format, so a call site reads
 *   log_ev(LOG_INFO, "queued", "{s:s,s:i}", "id", id, "rcpts", n);
 * Never pass secrets or message bodies. Thread-safe: each line is written
 * with one call under a lock, so lines from the spool's writer thread never
 * interleave with the event loop's.
 */
#ifndef PH_CORE_LOG_H
#define PH_CORE_LOG_H

#include <stdio.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_FATAL };

void log_set_level(enum log_level lvl);
/* Parse "debug|info|warn|error"; returns -1 for anything else. */
int log_level_parse(const char *s, enum log_level *out);
/* Where lines go; default stderr. Not owned. */
void log_set_stream(FILE *f);
int log_enabled(enum log_level lvl);
/* fmt: a json_pack object format ("{s:s,…}") or NULL for no fields. */
void log_ev(enum log_level lvl, const char *event, const char *fmt, ...);

#endif
