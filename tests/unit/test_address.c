/* Unit tests for submit/address: RFC 5321 mailboxes and IDN domains. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "submit/address.h"

static int ok(const char *s, int utf8, addr *a)
{
    err e;
    return addr_parse(s, strlen(s), utf8, a, &e) == 0;
}

static void valid_addresses(void **state)
{
    (void)state;
    addr a;
    assert_true(ok("user@example.com", 0, &a));
    assert_string_equal(a.domain, "example.com");
    assert_true(ok("First.Last+tag@Mail.Example.COM", 0, &a));
    assert_string_equal(a.full, "First.Last+tag@mail.example.com");
    assert_true(ok("\"john doe\"@example.com", 0, &a));
    assert_true(ok("user@[127.0.0.1]", 0, &a));
    assert_true(ok("user@[IPv6:::1]", 0, &a));
    assert_true(ok("o'brien@example.ie", 0, &a));
}

static void invalid_addresses(void **state)
{
    (void)state;
    addr a;
    assert_false(ok("", 0, &a));
    assert_false(ok("no-at-sign", 0, &a));
    assert_false(ok("@example.com", 0, &a));
    assert_false(ok("user@", 0, &a));
    assert_false(ok(".user@example.com", 0, &a));
    assert_false(ok("us..er@example.com", 0, &a));
    assert_false(ok("us er@example.com", 0, &a));
    assert_false(ok("user@localhost", 0, &a));
    assert_false(ok("user@-bad.example", 0, &a));
    assert_false(ok("user@exa_mple.com", 0, &a));
    assert_false(ok("user@[999.1.1.1]", 0, &a));
    assert_false(ok("user@example.com\r\nRCPT TO:<x@y.z>", 0, &a));
    char longlocal[80];
    memset(longlocal, 'a', 65);
    memcpy(longlocal + 65, "@example.com", 13);
    assert_false(ok(longlocal, 0, &a));
    longlocal[64] = '@';
    memcpy(longlocal + 64, "@example.com", 13);
    assert_true(ok(longlocal, 0, &a)); /* exactly 64 */
}

static void idn_domains(void **state)
{
    (void)state;
    addr a;
    assert_true(ok("user@bücher.example", 0, &a));
    assert_string_equal(a.domain, "xn--bcher-kva.example");
    assert_true(ok("user@例子.测试", 0, &a));
    assert_int_equal(strncmp(a.domain, "xn--", 4), 0);
    assert_false(ok("user@\xff\xfe.example", 0, &a));
}

static void utf8_local_part_needs_smtputf8(void **state)
{
    (void)state;
    addr a;
    assert_false(ok("用户@example.com", 0, &a));
    assert_true(ok("用户@example.com", 1, &a));
    assert_true(a.utf8);
    assert_false(ok("\xc0\xafuser@example.com", 1, &a)); /* overlong */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid_addresses),
        cmocka_unit_test(invalid_addresses),
        cmocka_unit_test(idn_domains),
        cmocka_unit_test(utf8_local_part_needs_smtputf8),
    };
    return cmocka_run_group_tests_name("address", tests, NULL, NULL);
}
