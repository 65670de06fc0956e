/* Unit tests for proto/smtp_cmd: command lines, paths, base64, DATA decoder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "proto/smtp_cmd.h"

static void parse(const char *line, smtp_cmd *c)
{
    smtp_cmd_parse(line, strlen(line), c);
}

static void command_lines(void **state)
{
    (void)state;
    smtp_cmd c;
    parse("ehlo client.example", &c);
    assert_int_equal(c.verb, SMTP_EHLO);
    assert_int_equal(c.arg_len, strlen("client.example"));
    assert_memory_equal(c.arg, "client.example", c.arg_len);
    parse("QUIT", &c);
    assert_int_equal(c.verb, SMTP_QUIT);
    assert_int_equal(c.arg_len, 0);
    parse("StartTLS", &c);
    assert_int_equal(c.verb, SMTP_STARTTLS);
    parse("MAIL FROM:<a@b.c> SIZE=10", &c);
    assert_int_equal(c.verb, SMTP_MAIL);
    assert_non_null(c.arg);
    assert_memory_equal(c.arg, "<a@b.c> SIZE=10", c.arg_len);
    parse("rcpt to:<x@y.z>", &c);
    assert_int_equal(c.verb, SMTP_RCPT);
    assert_memory_equal(c.arg, "<x@y.z>", c.arg_len);
    parse("MAIL <a@b.c>", &c); /* keyword missing */
    assert_int_equal(c.verb, SMTP_MAIL);
    assert_null(c.arg);
    parse("MAILX FROM:<a@b.c>", &c);
    assert_int_equal(c.verb, SMTP_UNKNOWN);
    parse("", &c);
    assert_int_equal(c.verb, SMTP_UNKNOWN);
    assert_string_equal(smtp_verb_name(SMTP_BDAT), "BDAT");
}

static int path(const char *arg, int is_mail, smtp_path *p, err *e)
{
    return smtp_path_parse(arg, strlen(arg), is_mail, p, e);
}

static void paths_and_params(void **state)
{
    (void)state;
    smtp_path p;
    err e;
    assert_int_equal(path("<user@example.com>", 1, &p, &e), 0);
    assert_int_equal(p.addr_len, strlen("user@example.com"));
    assert_int_equal(p.size, -1);
    assert_int_equal(path(" <user@example.com> SIZE=1234 BODY=8BITMIME SMTPUTF8", 1, &p, &e), 0);
    assert_int_equal(p.size, 1234);
    assert_true(p.body_8bit);
    assert_true(p.smtputf8);
    assert_int_equal(path("<> BODY=7BIT", 1, &p, &e), 0);
    assert_int_equal(p.addr_len, 0);
    assert_false(p.body_8bit);
    /* source route dropped */
    assert_int_equal(path("<@relay.example,@r2.example:user@example.com>", 0, &p, &e), 0);
    assert_memory_equal(p.addr, "user@example.com", p.addr_len);
    /* '>' inside a quoted local part does not close the path */
    assert_int_equal(path("<\"a>b\"@example.com>", 0, &p, &e), 0);
    assert_int_equal(p.addr_len, strlen("\"a>b\"@example.com"));
    assert_int_equal(path("<AUTH@x.y> AUTH=<>", 1, &p, &e), 0);
}

static void bad_paths_and_params(void **state)
{
    (void)state;
    smtp_path p;
    err e;
    assert_int_equal(path("user@example.com", 1, &p, &e), -1);
    assert_int_equal(e.code, SMTP_EPATH);
    assert_int_equal(path("<user@example.com", 1, &p, &e), -1);
    assert_int_equal(path("<>", 0, &p, &e), -1); /* null path only for MAIL */
    assert_int_equal(e.code, SMTP_EPATH);
    assert_int_equal(path("<a@b.c>x", 1, &p, &e), -1);
    assert_int_equal(path("<a@b.c> SIZE=abc", 1, &p, &e), -1);
    assert_int_equal(e.code, SMTP_EPARAM);
    assert_int_equal(path("<a@b.c> SIZE=1 SIZE=2", 1, &p, &e), -1);
    assert_int_equal(path("<a@b.c> SIZE=1234567890123456789", 1, &p, &e), -1);
    assert_int_equal(path("<a@b.c> BODY=BINARYMIME", 1, &p, &e), -1);
    assert_int_equal(path("<a@b.c> SMTPUTF8=yes", 1, &p, &e), -1);
    assert_int_equal(path("<a@b.c> RET=FULL", 1, &p, &e), -1);
    assert_int_equal(e.code, SMTP_EPARAM);
    assert_non_null(strstr(e.msg, "RET"));
    assert_int_equal(path("<a@b.c> NOTIFY=NEVER", 0, &p, &e), -1); /* no DSN on RCPT */
    assert_int_equal(e.code, SMTP_EPARAM);
    assert_int_equal(path("<@relay:>", 0, &p, &e), -1);
}

static void envelope_bytes(void **state)
{
    (void)state;
    err e;
    assert_int_equal(smtp_envelope_check("a@b.c", 5, 0, &e), 0);
    assert_int_equal(smtp_envelope_check("a\0@b.c", 6, 1, &e), -1);
    assert_non_null(strstr(e.msg, "NUL"));
    assert_int_equal(smtp_envelope_check("a\x01@b.c", 6, 1, &e), -1);
    const char *utf8 = "用户@例子.测试";
    assert_int_equal(smtp_envelope_check(utf8, strlen(utf8), 0, &e), -1);
    assert_int_equal(e.code, ERR_DENIED);
    assert_int_equal(smtp_envelope_check(utf8, strlen(utf8), 1, &e), 0);
    assert_int_equal(smtp_envelope_check("\xc3\x28@b.c", 6, 1, &e), -1); /* bad continuation */
    assert_int_equal(e.code, ERR_INVALID);
    assert_int_equal(smtp_envelope_check("\xed\xa0\x80@b.c", 7, 1, &e), -1); /* surrogate */
    assert_int_equal(smtp_envelope_check("\xc0\xaf@b.c", 6, 1, &e), -1);     /* overlong */
}

static void base64(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 100);
    assert_int_equal(smtp_b64_decode("AGEAYg==", 8, &b), 0);
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.data, "\0a\0b", 4);
    buf_reset(&b);
    assert_int_equal(smtp_b64_decode("=", 1, &b), 0);
    assert_int_equal(b.len, 0);
    assert_int_equal(smtp_b64_decode("", 0, &b), 0);
    assert_int_equal(smtp_b64_decode("abc", 3, &b), -1);        /* length */
    assert_int_equal(smtp_b64_decode("ab!d", 4, &b), -1);       /* alphabet */
    assert_int_equal(smtp_b64_decode("a=bc", 4, &b), -1);       /* padding inside */
    assert_int_equal(smtp_b64_decode("YQ==YQ==", 8, &b), -1);   /* padding before the end */
    assert_int_equal(smtp_b64_decode("YW Jj", 5, &b), -1);      /* white space */
    assert_int_equal(smtp_b64_decode("QR==", 4, &b), -1);       /* pad bits set (fuzz_smtp_cmd) */
    assert_int_equal(smtp_b64_decode("QUJ=", 4, &b), -1);       /* pad bits set */
    buf_reset(&b);
    const unsigned char raw[] = {0xff, 0x00, 0x10, 'x', 'y'};
    assert_int_equal(smtp_b64_encode(raw, sizeof raw, &b), 0);
    buf d;
    buf_init(&d, 100);
    assert_int_equal(smtp_b64_decode(b.data, b.len, &d), 0);
    assert_int_equal(d.len, sizeof raw);
    assert_memory_equal(d.data, raw, sizeof raw);
    buf small;
    buf_init(&small, 2);
    assert_int_equal(smtp_b64_decode("YWJj", 4, &small), -1); /* does not fit */
    buf_free(&small);
    buf_free(&d);
    buf_free(&b);
}

/* Feed s in pieces of `step` bytes; returns the total consumed. */
static size_t feed(smtp_data *d, const char *s, size_t len, size_t step, buf *out)
{
    size_t used = 0;
    while (used < len && !d->done) {
        size_t n = len - used < step ? len - used : step;
        used += smtp_data_feed(d, s + used, n, out);
    }
    return used;
}

static void data_unstuffing_any_split(void **state)
{
    (void)state;
    const char in[] = "Subject: x\r\n\r\n..leading dot\r\n.\r\nNOOP\r\n";
    const char want[] = "Subject: x\r\n\r\n.leading dot\r\n";
    for (size_t step = 1; step <= sizeof in; step++) {
        smtp_data d;
        buf out;
        buf_init(&out, 1000);
        smtp_data_init(&d, 0, 1000);
        size_t used = feed(&d, in, sizeof in - 1, step, &out);
        assert_true(d.done);
        assert_int_equal(d.error, SMTP_DATA_OK);
        assert_int_equal(used, strlen(in) - strlen("NOOP\r\n")); /* the rest is the next command */
        assert_string_equal(buf_cstr(&out), want);
        buf_free(&out);
    }
}

static void data_empty_message(void **state)
{
    (void)state;
    smtp_data d;
    buf out;
    buf_init(&out, 100);
    smtp_data_init(&d, 0, 1000);
    assert_int_equal(smtp_data_feed(&d, ".\r\n", 3, &out), 3);
    assert_true(d.done);
    assert_int_equal(out.len, 0);
    buf_free(&out);
}

/* Smuggling: none of the lookalike terminators ends DATA, each is an
   error, and the real CRLF.CRLF still ends it. */
static void data_smuggling(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        enum smtp_data_err err;
    } cases[] = {
        {"a\r\n\n.\nMAIL FROM:<x@y>\r\n.\r\n", SMTP_DATA_BARE_LF},
        {"a\r\n.\nMAIL FROM:<x@y>\r\n.\r\n", SMTP_DATA_BARE_LF},
        {"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n", SMTP_DATA_BARE_LF},
        {"a\r\r\n.\r\r\nX\r\n.\r\n", SMTP_DATA_BARE_CR},
        {"a\r.\r\nX\r\n.\r\n", SMTP_DATA_BARE_CR},
        {"a\r\n.\rX\r\n.\r\n", SMTP_DATA_BARE_CR},
        {"line\rmore\r\n.\r\n", SMTP_DATA_BARE_CR},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        smtp_data d;
        buf out;
        buf_init(&out, 1000);
        smtp_data_init(&d, 0, 1000);
        size_t len = strlen(cases[i].in);
        size_t used = smtp_data_feed(&d, cases[i].in, len, &out);
        assert_true(d.done);
        assert_int_equal(used, len); /* only the final CRLF.CRLF ended it */
        assert_int_equal(d.error, cases[i].err);
        buf_free(&out);
    }
}

static void data_line_limit(void **state)
{
    (void)state;
    char line[1100];
    for (size_t max_text = 998; max_text <= 999; max_text++) {
        memset(line, 'x', max_text);
        memcpy(line + max_text, "\r\n.\r\n", 6);
        smtp_data d;
        buf out;
        buf_init(&out, 5000);
        smtp_data_init(&d, 0, 1000);
        smtp_data_feed(&d, line, strlen(line), &out);
        assert_true(d.done);
        /* 998 + CRLF = 1000 octets is the limit; 999 + CRLF is past it */
        assert_int_equal(d.error, max_text == 998 ? SMTP_DATA_OK : SMTP_DATA_LINE_TOO_LONG);
        buf_free(&out);
    }
}

static void data_size_limit(void **state)
{
    (void)state;
    smtp_data d;
    buf out;
    buf_init(&out, 10);
    smtp_data_init(&d, 0, 1000);
    const char *in = "0123456789\r\n.\r\n";
    assert_int_equal(smtp_data_feed(&d, in, strlen(in), &out), strlen(in));
    assert_true(d.done);
    assert_int_equal(d.error, SMTP_DATA_TOO_BIG);
    buf_free(&out);
}

static void bdat_raw_mode(void **state)
{
    (void)state;
    smtp_data d;
    buf out;
    buf_init(&out, 1000);
    smtp_data_init(&d, 1, 1000);
    /* no unstuffing, no terminator, CRLF split across chunks is fine */
    const char *a = "..x\r\n.\r";
    assert_int_equal(smtp_data_feed(&d, a, strlen(a), &out), strlen(a));
    assert_int_equal(smtp_data_feed(&d, "\nend\r\n", 6, &out), 6);
    smtp_data_finish(&d);
    assert_false(d.done);
    assert_int_equal(d.error, SMTP_DATA_OK);
    assert_string_equal(buf_cstr(&out), "..x\r\n.\r\nend\r\n");
    buf_free(&out);
    /* a CR at the very end of the last chunk is bare */
    smtp_data_init(&d, 1, 1000);
    buf_init(&out, 1000);
    smtp_data_feed(&d, "x\r", 2, &out);
    smtp_data_finish(&d);
    assert_int_equal(d.error, SMTP_DATA_BARE_CR);
    buf_free(&out);
    smtp_data_init(&d, 1, 1000);
    buf_init(&out, 1000);
    smtp_data_feed(&d, "x\ny\r\n", 5, &out);
    assert_int_equal(d.error, SMTP_DATA_BARE_LF);
    buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(command_lines),
        cmocka_unit_test(paths_and_params),
        cmocka_unit_test(bad_paths_and_params),
        cmocka_unit_test(envelope_bytes),
        cmocka_unit_test(base64),
        cmocka_unit_test(data_unstuffing_any_split),
        cmocka_unit_test(data_empty_message),
        cmocka_unit_test(data_smuggling),
        cmocka_unit_test(data_line_limit),
        cmocka_unit_test(data_size_limit),
        cmocka_unit_test(bdat_raw_mode),
    };
    return cmocka_run_group_tests_name("smtp_cmd", tests, NULL, NULL);
}
