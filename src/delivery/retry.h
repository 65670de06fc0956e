/*
 * retry — what an SMTP outcome means and when to try again. Pure functions.
 *
 * Classification (retry_classify): 2xx delivered; 4xx (and local
 * temporary causes, code 0) deferred; 5xx bounced, "hard" when the
 * enhanced status says the address itself is bad (5.1.x other than the
 * sender codes 5.1.7/5.1.8, and 5.2.1 mailbox disabled) — hard bounces add
 * the address to the suppression list — and "soft" otherwise (policy,
 * content, size, mailbox full: the address may work next time). A 5xx
 * without an enhanced code is soft: guessing "hard" would suppress good
 * addresses on a spam-filter rejection.
 *
 * Backoff (retry_delay): attempt n waits schedule[n-1] (the last entry
 * repeats) times a uniform factor in [0.9, 1.1], so messages deferred
 * together do not return together (thundering herd). retry_next() turns
 * that into a next_at that never passes created + max_age, and says when
 * the recipient has expired instead.
 */
#ifndef PH_DELIVERY_RETRY_H
#define PH_DELIVERY_RETRY_H

#include <stdint.h>

enum retry_class { RETRY_DELIVERED, RETRY_DEFER, RETRY_BOUNCE_HARD, RETRY_BOUNCE_SOFT };

/* code: SMTP reply code, or 0 for a local temporary failure. status: the
   enhanced status code or "" / NULL. */
enum retry_class retry_classify(int code, const char *status);
const char *retry_class_name(enum retry_class c);

/* Delay before attempt `attempt` + 1, given `attempt` (>= 1) failures so
   far; rnd is a uniformly random 32-bit number (jitter). */
int64_t retry_delay(const int64_t *schedule, int n, int attempt, uint32_t rnd);

/* 1 when the recipient has expired (now >= created + max_age); else 0 and
   *next_at = min(now + delay, created + max_age). */
int retry_next(int64_t now, int64_t created, int64_t max_age, int64_t delay, int64_t *next_at);

#endif
