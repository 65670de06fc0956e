/* Unit tests for submit/headers: the bounded, strict header parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "submit/headers.h"

#define MSG(s) s, sizeof(s) - 1

static void parses_fields_and_body(void **state)
{
    (void)state;
    const char m[] = "From: a@example.com\r\nSubject: hello\r\n  world\r\nTo: b@example.org\r\n\r\nbody\r\n";
    hdr_section h;
    err e;
    assert_int_equal(hdr_parse(MSG(m), 65536, 100, 0, &h, &e), 0);
    assert_int_equal(h.count, 3);
    assert_int_equal(hdr_find(&h, m, "subject"), 1);
    assert_int_equal(hdr_find(&h, m, "Cc"), -1);
    buf v;
    buf_init(&v, 100);
    assert_int_equal(hdr_value(&h, m, 1, &v), 0);
    assert_string_equal(buf_cstr(&v), "hello  world");
    buf_free(&v);
    assert_string_equal(m + h.body_off, "body\r\n");
    hdr_free(&h);
}

static void rejects_bad_lines(void **state)
{
    (void)state;
    hdr_section h;
    err e;
    assert_int_equal(hdr_parse(MSG("From: a@b.c\nTo: x@y.z\r\n\r\n"), 65536, 100, 0, &h, &e), -1);
    assert_non_null(strstr(e.msg, "bare LF"));
    assert_int_equal(hdr_parse(MSG("From: a@b.c\rX: y\r\n\r\n"), 65536, 100, 0, &h, &e), -1);
    assert_non_null(strstr(e.msg, "bare CR"));
    assert_int_equal(hdr_parse("From: a\0b\r\n\r\n", 13, 65536, 100, 0, &h, &e), -1);
    assert_non_null(strstr(e.msg, "NUL"));
    assert_int_equal(hdr_parse(MSG("no colon here\r\n\r\n"), 65536, 100, 0, &h, &e), -1);
    assert_non_null(strstr(e.msg, "line 1"));
    assert_int_equal(hdr_parse(MSG(" starts with space\r\n\r\n"), 65536, 100, 0, &h, &e), -1);
}

static void eight_bit_needs_permission(void **state)
{
    (void)state;
    hdr_section h;
    err e;
    const char m[] = "Subject: \xe4\xbd\xa0\xe5\xa5\xbd\r\n\r\nx";
    assert_int_equal(hdr_parse(MSG(m), 65536, 100, 0, &h, &e), -1);
    assert_non_null(strstr(e.msg, "SMTPUTF8"));
    assert_int_equal(hdr_parse(MSG(m), 65536, 100, 1, &h, &e), 0);
    assert_true(h.has_8bit);
    hdr_free(&h);
}

static void limits_at_and_past(void **state)
{
    (void)state;
    hdr_section h;
    err e;
    const char m[] = "A: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_int_equal(hdr_parse(MSG(m), 65536, 3, 0, &h, &e), 0);
    hdr_free(&h);
    assert_int_equal(hdr_parse(MSG(m), 65536, 2, 0, &h, &e), -1);
    assert_int_equal(e.code, ERR_LIMIT);
    assert_int_equal(hdr_parse(MSG(m), 18, 10, 0, &h, &e), 0); /* 18 bytes of fields */
    hdr_free(&h);
    assert_int_equal(hdr_parse(MSG(m), 17, 10, 0, &h, &e), -1);
    assert_int_equal(e.code, ERR_LIMIT);
}

static void no_body(void **state)
{
    (void)state;
    hdr_section h;
    err e;
    const char m[] = "From: a@b.c\r\nSubject: x";
    assert_int_equal(hdr_parse(MSG(m), 65536, 10, 0, &h, &e), 0);
    assert_int_equal(h.count, 2);
    assert_int_equal(h.body_off, sizeof m - 1);
    hdr_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_fields_and_body),
        cmocka_unit_test(rejects_bad_lines),
        cmocka_unit_test(eight_bit_needs_permission),
        cmocka_unit_test(limits_at_and_past),
        cmocka_unit_test(no_body),
    };
    return cmocka_run_group_tests_name("headers", tests, NULL, NULL);
}
