/*
 * clock — wall-clock and monotonic time, and RFC 3339 / RFC 5322 dates.
 */
#ifndef PH_CORE_CLOCK_H
#define PH_CORE_CLOCK_H

#include <stddef.h>
#include <stdint.h>

int64_t clock_now_ms(void);   /* wall clock, Unix epoch milliseconds */
int64_t clock_mono_ms(void);  /* monotonic, for intervals and timeouts */
/* "2026-11-23T17:39:05.123Z" into out (>= 32 bytes). */
void clock_rfc3339(int64_t ms, char *out, size_t n);
/* Parse RFC 3339 ("…Z" or "…+hh:mm", optional fraction); returns 0 or -1. */
int clock_parse_rfc3339(const char *s, int64_t *ms);
/* RFC 5322 Date header value ("Mon, 23 Nov 2026 17:39:05 +0000"). */
void clock_rfc5322(int64_t ms, char *out, size_t n);

#endif
