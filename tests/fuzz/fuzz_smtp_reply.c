/* libFuzzer target: the client-side SMTP reply parser (proto/smtp_reply),
   multi-line replies fed in arbitrary pieces.

   The first input byte picks a split step; the rest is what a hostile
   server sends. Every complete reply must carry a code in 200..559, a
   status that agrees with the code's class, and text within the limit;
   feeding in pieces must give the same replies as feeding all at once. */
#include "proto/smtp_reply.h"

#include <stdint.h>
#include <string.h>

#define MAX_LINE 256
#define MAX_TOTAL 2048
#define MAX_REPLIES 64

typedef struct seen {
    int codes[MAX_REPLIES];
    size_t n;
    int failed;
} seen;

static void check_reply(const smtp_reply *r)
{
    if (r->code < 200 || r->code > 559)
        __builtin_trap();
    if (r->status[0] && r->status[0] - '0' != r->code / 100)
        __builtin_trap();
    if (r->text.len > MAX_TOTAL || r->lines < 1)
        __builtin_trap();
}

static void parse(const char *in, size_t len, size_t step, seen *s)
{
    smtp_reply r;
    smtp_reply_init(&r, MAX_LINE, MAX_TOTAL);
    memset(s, 0, sizeof *s);
    size_t off = 0;
    while (off < len && s->n < MAX_REPLIES) {
        size_t n = len - off < step ? len - off : step;
        size_t used = 0;
        err e;
        int rc = smtp_reply_feed(&r, in + off, n, &used, &e);
        if (rc == SMTP_REPLY_ERROR) {
            s->failed = 1;
            break;
        }
        if (used > n)
            __builtin_trap();
        off += used;
        if (rc == SMTP_REPLY_DONE) {
            check_reply(&r);
            s->codes[s->n++] = r.code;
            smtp_reply_reset(&r);
        } else if (used != n) {
            __builtin_trap(); /* MORE consumes everything it was given */
        }
    }
    smtp_reply_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = 1 + data[0] % 17;
    seen whole, parts;
    parse((const char *)data + 1, size - 1, size, &whole);
    parse((const char *)data + 1, size - 1, step, &parts);
    if (whole.n != parts.n || whole.failed != parts.failed ||
        memcmp(whole.codes, parts.codes, whole.n * sizeof whole.codes[0]) != 0)
        __builtin_trap();
    char st[16];
    (void)smtp_reply_status((const char *)data, size, 250, st);
    (void)smtp_reply_status((const char *)data, size, 550, st);
    return 0;
}
