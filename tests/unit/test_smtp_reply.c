/* Unit tests for proto/smtp_reply: the bounded, strict SMTP reply parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "proto/smtp_reply.h"

/* Feed s whole; returns the parser's result and the bytes used. */
static int feed(smtp_reply *r, const char *s, size_t *used)
{
    err e;
    return smtp_reply_feed(r, s, strlen(s), used, &e);
}

static void single_line(void **state)
{
    (void)state;
    smtp_reply r;
    smtp_reply_init(&r, 512, 4096);
    size_t used;
    assert_int_equal(feed(&r, "250 2.1.0 Sender ok\r\n", &used), SMTP_REPLY_DONE);
    assert_int_equal(used, 21);
    assert_int_equal(r.code, 250);
    assert_string_equal(r.status, "2.1.0");
    assert_string_equal(buf_cstr(&r.text), "250 2.1.0 Sender ok");
    smtp_reply_free(&r);
}

static void multi_line_and_split_input(void **state)
{
    (void)state;
    const char *s = "250-mx.example hello\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n";
    smtp_reply r;
    smtp_reply_init(&r, 512, 4096);
    size_t used, total = 0;
    int rc = SMTP_REPLY_MORE;
    /* One byte at a time: the result must not depend on how bytes arrive. */
    for (size_t i = 0; i < strlen(s) && rc == SMTP_REPLY_MORE; i++) {
        err e;
        rc = smtp_reply_feed(&r, s + i, 1, &used, &e);
        total += used;
    }
    assert_int_equal(rc, SMTP_REPLY_DONE);
    assert_int_equal(total, strlen(s));
    assert_int_equal(r.lines, 3);
    assert_string_equal(r.status, "");
    assert_string_equal(buf_cstr(&r.text), "250-mx.example hello\n250-PIPELINING\n250 SMTPUTF8");
    smtp_reply_free(&r);
}

static void pipelined_replies_leave_the_rest(void **state)
{
    (void)state;
    const char *s = "250 2.1.0 ok\r\n550 5.1.1 no such user\r\n354 go\r\n";
    smtp_reply r;
    smtp_reply_init(&r, 512, 4096);
    size_t used, off = 0;
    int codes[3];
    for (int i = 0; i < 3; i++) {
        err e;
        assert_int_equal(smtp_reply_feed(&r, s + off, strlen(s) - off, &used, &e), SMTP_REPLY_DONE);
        codes[i] = r.code;
        off += used;
        if (i == 1)
            assert_string_equal(r.status, "5.1.1");
        smtp_reply_reset(&r);
    }
    assert_int_equal(off, strlen(s));
    assert_int_equal(codes[0], 250);
    assert_int_equal(codes[1], 550);
    assert_int_equal(codes[2], 354);
    smtp_reply_free(&r);
}

static void bare_code_line(void **state)
{
    (void)state;
    smtp_reply r;
    smtp_reply_init(&r, 512, 4096);
    size_t used;
    assert_int_equal(feed(&r, "250\r\n", &used), SMTP_REPLY_DONE);
    assert_int_equal(r.code, 250);
    smtp_reply_free(&r);
}

static void expect_error(const char *s, size_t max_line, size_t max_total)
{
    smtp_reply r;
    smtp_reply_init(&r, max_line, max_total);
    size_t used;
    err e;
    assert_int_equal(smtp_reply_feed(&r, s, strlen(s), &used, &e), SMTP_REPLY_ERROR);
    assert_true(strlen(e.msg) > 0);
    /* A failed parser stays failed. */
    assert_int_equal(smtp_reply_feed(&r, "250 ok\r\n", 8, &used, &e), SMTP_REPLY_ERROR);
    smtp_reply_free(&r);
}

static void malformed_replies(void **state)
{
    (void)state;
    expect_error("250 ok\n", 512, 4096);              /* bare LF */
    expect_error("250 o\rk\r\n", 512, 4096);          /* CR inside */
    expect_error("25 ok\r\n", 512, 4096);             /* two digits */
    expect_error("650 ok\r\n", 512, 4096);            /* class 6 */
    expect_error("2x0 ok\r\n", 512, 4096);
    expect_error("250_ok\r\n", 512, 4096);            /* bad separator */
    expect_error("250-a\r\n251 b\r\n", 512, 4096);    /* code changes mid-reply */
    expect_error("hello\r\n", 512, 4096);
}

static void limits_line_and_total(void **state)
{
    (void)state;
    char line[600];
    memset(line, 'a', sizeof line);
    memcpy(line, "250 ", 4);
    memcpy(line + 597, "\r\n", 3);
    expect_error(line, 512, 4096);                    /* one line past max_line */
    /* Many short lines past max_total. */
    char many[3000];
    size_t off = 0;
    for (int i = 0; i < 150; i++)
        off += (size_t)snprintf(many + off, sizeof many - off, "250-xxxxxxxxxx\r\n");
    expect_error(many, 512, 1024);
    /* Exactly at the line limit is fine. */
    smtp_reply r;
    smtp_reply_init(&r, 512, 4096);
    memset(line, 'b', sizeof line);
    memcpy(line, "250 ", 4);
    memcpy(line + 510, "\r\n", 3);
    size_t used;
    assert_int_equal(feed(&r, line, &used), SMTP_REPLY_DONE);
    assert_int_equal(used, 512);
    smtp_reply_free(&r);
}

static void enhanced_status(void **state)
{
    (void)state;
    char out[16];
    assert_int_equal(smtp_reply_status("5.1.1 user unknown", 18, 550, out), 5);
    assert_string_equal(out, "5.1.1");
    assert_int_equal(smtp_reply_status("4.7.100 greylisted", 18, 451, out), 7);
    assert_int_equal(smtp_reply_status("5.1.1 x", 7, 450, out), 0);  /* class must match the code */
    assert_int_equal(smtp_reply_status("5.1 x", 5, 550, out), 0);
    assert_int_equal(smtp_reply_status("5.1.1000 x", 10, 550, out), 0);
    assert_int_equal(smtp_reply_status("5.1.1x", 6, 550, out), 0);
    assert_int_equal(smtp_reply_status("2.0.0", 5, 250, out), 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(single_line),
        cmocka_unit_test(multi_line_and_split_input),
        cmocka_unit_test(pipelined_replies_leave_the_rest),
        cmocka_unit_test(bare_code_line),
        cmocka_unit_test(malformed_replies),
        cmocka_unit_test(limits_line_and_total),
        cmocka_unit_test(enhanced_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
