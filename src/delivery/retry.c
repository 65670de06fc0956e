#include "delivery/retry.h"

#include <stdlib.h>
#include <string.h>

static int is_hard_status(const char *s)
{
    if (!s || s[0] != '5' || s[1] != '.')
        return 0;
    if (strncmp(s, "5.1.", 4) == 0) {
        /* 5.1.7/5.1.8 are about the sender's address, not the recipient. */
        return strcmp(s, "5.1.7") != 0 && strcmp(s, "5.1.8") != 0;
    }
    return strcmp(s, "5.2.1") == 0;
}

enum retry_class retry_classify(int code, const char *status)
{
    if (code >= 200 && code < 300)
        return RETRY_DELIVERED;
    if (code >= 500 && code < 600)
        return is_hard_status(status) ? RETRY_BOUNCE_HARD : RETRY_BOUNCE_SOFT;
    return RETRY_DEFER;
}

const char *retry_class_name(enum retry_class c)
{
    switch (c) {
    case RETRY_DELIVERED: return "delivered";
    case RETRY_DEFER: return "deferred";
    case RETRY_BOUNCE_HARD: return "hard";
    case RETRY_BOUNCE_SOFT: return "soft";
    }
    return "unknown";
}

int64_t retry_delay(const int64_t *schedule, int n, int attempt, uint32_t rnd)
{
    if (n <= 0)
        return 60000;
    int i = attempt < 1 ? 0 : attempt - 1;
    if (i >= n)
        i = n - 1;
    double factor = 0.9 + 0.2 * ((double)rnd / 4294967295.0);
    int64_t d = (int64_t)((double)schedule[i] * factor);
    return d > 0 ? d : 1;
}

int retry_next(int64_t now, int64_t created, int64_t max_age, int64_t delay, int64_t *next_at)
{
    int64_t deadline = created + max_age;
    if (now >= deadline)
        return 1;
    *next_at = now + delay < deadline ? now + delay : deadline;
    return 0;
}
