/* libFuzzer target: the DATA / BDAT stream decoder (proto/smtp_cmd):
   dot-unstuffing, the <CRLF>.<CRLF> terminator, bare CR / bare LF
   detection and the line and size limits.

   The first input byte picks the mode and a split pattern; the rest is the
   stream. Each stream is decoded twice, once in one call and once in small
   pieces, and the results must agree: the session feeds whatever the
   socket delivers, so the decoder must not depend on where reads split. */
#include "proto/smtp_cmd.h"

#include <stdint.h>
#include <string.h>

typedef struct run {
    smtp_data d;
    buf out;
    size_t consumed;
} run;

static void decode(run *r, int raw, size_t max_line, size_t max_out, const char *in, size_t len,
                   size_t step)
{
    smtp_data_init(&r->d, raw, max_line);
    buf_init(&r->out, max_out);
    r->consumed = 0;
    while (r->consumed < len && !r->d.done) {
        size_t n = len - r->consumed < step ? len - r->consumed : step;
        size_t used = smtp_data_feed(&r->d, in + r->consumed, n, &r->out);
        if (used > n)
            __builtin_trap();
        r->consumed += used;
        if (used < n && !r->d.done)
            __builtin_trap(); /* only the terminator may stop consumption early */
    }
    if (raw)
        smtp_data_finish(&r->d);
}

static void check_output(const run *r)
{
    if (r->out.len > r->out.max)
        __builtin_trap();
    if (r->d.error != SMTP_DATA_OK)
        return;
    /* Clean output: every CR is followed by LF and every LF preceded by CR. */
    for (size_t i = 0; i < r->out.len; i++) {
        char ch = r->out.data[i];
        if (ch == '\r' && (i + 1 >= r->out.len || r->out.data[i + 1] != '\n') && r->d.done)
            __builtin_trap();
        if (ch == '\n' && (i == 0 || r->out.data[i - 1] != '\r'))
            __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int raw = data[0] & 1;
    size_t step = 1 + ((data[0] >> 1) & 7);
    size_t max_line = (data[0] & 0x80) ? 16 : 1000;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;

    run whole, parts;
    decode(&whole, raw, max_line, 4096, in, len, len ? len : 1);
    decode(&parts, raw, max_line, 4096, in, len, step);
    check_output(&whole);
    if (whole.d.error != parts.d.error || whole.d.done != parts.d.done ||
        whole.consumed != parts.consumed)
        __builtin_trap();
    /* After an error the partial output is discarded by the session (how
       much of the failing run was kept may depend on the split). */
    if (whole.d.error == SMTP_DATA_OK &&
        (whole.out.len != parts.out.len ||
         (whole.out.len && memcmp(whole.out.data, parts.out.data, whole.out.len) != 0)))
        __builtin_trap();
    (void)smtp_data_strerror(whole.d.error);
    buf_free(&whole.out);
    buf_free(&parts.out);
    return 0;
}
