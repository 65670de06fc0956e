/* Unit tests for core/buf: the bounded buffer never crosses its maximum. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>
#include <stdlib.h>

#include "core/buf.h"

static void append_up_to_max(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 8);
    assert_int_equal(buf_append(&b, "12345678", 8), 0);
    assert_int_equal(b.len, 8);
    assert_string_equal(buf_cstr(&b), "12345678");
    buf_free(&b);
}

static void append_past_max_fails_and_leaves_buffer(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 8);
    assert_int_equal(buf_appends(&b, "1234"), 0);
    assert_int_equal(buf_appends(&b, "56789"), -1);
    assert_int_equal(b.len, 4);
    assert_string_equal(buf_cstr(&b), "1234");
    assert_int_equal(buf_appendc(&b, 'x'), 0);
    assert_int_equal(buf_appendf(&b, "%d", 12345), -1);
    assert_int_equal(buf_appendf(&b, "%d", 123), 0);
    assert_string_equal(buf_cstr(&b), "1234x123");
    buf_free(&b);
}

static void binary_safe_and_consume(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 1 << 20);
    assert_int_equal(buf_append(&b, "a\0b", 3), 0);
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "a\0b", 3);
    buf_consume(&b, 2);
    assert_int_equal(b.len, 1);
    assert_string_equal(buf_cstr(&b), "b");
    size_t n;
    char *p = buf_steal(&b, &n);
    assert_int_equal(n, 1);
    assert_string_equal(p, "b");
    assert_null(b.data);
    free(p);
    assert_string_equal(buf_cstr(&b), "");
    buf_free(&b);
}

static void grows_to_large_sizes(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 100000);
    for (int i = 0; i < 10000; i++)
        assert_int_equal(buf_appends(&b, "0123456789"), 0);
    assert_int_equal(b.len, 100000);
    assert_int_equal(buf_appendc(&b, 'x'), -1);
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(append_up_to_max),
        cmocka_unit_test(append_past_max_fails_and_leaves_buffer),
        cmocka_unit_test(binary_safe_and_consume),
        cmocka_unit_test(grows_to_large_sizes),
    };
    return cmocka_run_group_tests_name("buf", tests, NULL, NULL);
}
