#include "core/log.h"

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static enum log_level min_level = LOG_INFO;
static FILE *log_stream;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *const level_names[] = {"debug", "info", "warn", "error", "fatal"};

void log_set_level(enum log_level lvl)
{
    min_level = lvl;
}

int log_level_parse(const char *s, enum log_level *out)
{
    for (int i = LOG_DEBUG; i <= LOG_ERROR; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

void log_set_stream(FILE *f)
{
    log_stream = f;
}

int log_enabled(enum log_level lvl)
{
    return lvl >= min_level;
}

static void timestamp(char *out, size_t n)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t k = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + k, n - k, ".%03ldZ", (long)(tv.tv_usec / 1000));
}

void log_ev(enum log_level lvl, const char *event, const char *fmt, ...)
{
    if (!log_enabled(lvl))
        return;
    json_t *obj = NULL;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        json_error_t jerr;
        obj = json_vpack_ex(&jerr, 0, fmt, ap);
        va_end(ap);
        if (!obj)
            obj = json_pack("{s:s}", "log_format_error", jerr.text);
    }
    if (!obj)
        obj = json_object();
    char ts[40];
    timestamp(ts, sizeof ts);
    /* Fixed keys first so lines are easy to read and grep. */
    json_t *line = json_pack("{s:s,s:s,s:s}", "ts", ts, "level", level_names[lvl], "event", event);
    if (line && obj)
        json_object_update_missing(line, obj);
    char *text = line ? json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    pthread_mutex_lock(&log_lock);
    FILE *f = log_stream ? log_stream : stderr;
    if (text) {
        fputs(text, f);
        fputc('\n', f);
        fflush(f);
    }
    pthread_mutex_unlock(&log_lock);
    free(text);
    json_decref(line);
    json_decref(obj);
}
