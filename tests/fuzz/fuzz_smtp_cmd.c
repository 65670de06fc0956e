/* libFuzzer target: the SMTP command line parser (proto/smtp_cmd): verb
   split, MAIL/RCPT paths with ESMTP parameters, envelope byte checks and
   the strict base64 used by AUTH. Checks the invariants the session
   relies on: arguments point inside the line, a parsed address lies inside
   the argument, and base64 is canonical. */
#include "proto/smtp_cmd.h"

#include <stdint.h>
#include <string.h>

static void check_path(const smtp_cmd *c, int is_mail)
{
    smtp_path p;
    err e;
    if (smtp_path_parse(c->arg, c->arg_len, is_mail, &p, &e) != 0) {
        if (e.code != SMTP_EPATH && e.code != SMTP_EPARAM)
            __builtin_trap();
        return;
    }
    if (p.addr_len > 0 && (p.addr < c->arg || p.addr + p.addr_len > c->arg + c->arg_len))
        __builtin_trap();
    if (!is_mail && p.addr_len == 0)
        __builtin_trap(); /* the null path is only valid for MAIL */
    for (int utf8 = 0; utf8 <= 1; utf8++)
        (void)smtp_envelope_check(p.addr, p.addr_len, utf8, &e);
}

static void check_b64(const char *s, size_t len)
{
    /* Strict base64 is canonical: whatever decodes re-encodes to exactly
       the input ("=" alone, the empty response, aside). This found that
       non-zero pad bits ("QR==") were accepted. */
    buf dec, enc;
    buf_init(&dec, 4096);
    buf_init(&enc, 8192);
    if (smtp_b64_decode(s, len, &dec) == 0 && !(len == 1 && s[0] == '=')) {
        if (smtp_b64_encode((const unsigned char *)dec.data, dec.len, &enc) != 0 || enc.len != len ||
            (len && memcmp(enc.data, s, len) != 0))
            __builtin_trap();
    }
    buf_free(&dec);
    buf_free(&enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *line = (const char *)data;
    smtp_cmd c;
    smtp_cmd_parse(line, size, &c);
    if (c.arg_len > 0 && (c.arg < line || c.arg + c.arg_len > line + size))
        __builtin_trap();
    (void)smtp_verb_name(c.verb);
    if (c.verb == SMTP_MAIL || c.verb == SMTP_RCPT)
        check_path(&c, c.verb == SMTP_MAIL);
    /* The same bytes as a bare path argument and as an AUTH blob. */
    smtp_cmd whole = {.verb = SMTP_MAIL, .arg = line, .arg_len = size};
    check_path(&whole, 1);
    check_path(&whole, 0);
    check_b64(line, size);
    return 0;
}
