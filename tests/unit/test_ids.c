/* Unit tests for core/ids and core/clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/ids.h"

static int cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void message_ids_unique_and_sortable(void **state)
{
    (void)state;
    enum { N = 20000 };
    char (*ids)[ID_MSG_LEN + 1] = calloc(N, sizeof *ids);
    for (int i = 0; i < N; i++)
        assert_int_equal(ids_message(ids[i]), 0);
    char first[ID_MSG_LEN + 1];
    memcpy(first, ids[0], sizeof first);
    qsort(ids, N, sizeof *ids, cmp);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    /* Time prefix: an id minted later never sorts before an earlier one's prefix. */
    assert_true(strncmp(first, ids[N - 1], 8) <= 0);
    free(ids);
}

static void base32_and_hex(void **state)
{
    (void)state;
    char out[32];
    ids_base32((const uint8_t *)"foobar", 6, out);
    assert_string_equal(out, "mzxw6ytboi"); /* RFC 4648 test vector, lower case */
    ids_hex((const uint8_t *)"\x01\xab", 2, out);
    assert_string_equal(out, "01ab");
    assert_true(ids_equal_ct("abc", "abc", 3));
    assert_false(ids_equal_ct("abc", "abd", 3));
}

static void rfc3339(void **state)
{
    (void)state;
    int64_t ms;
    assert_int_equal(clock_parse_rfc3339("2026-11-23T17:39:05Z", &ms), 0);
    assert_int_equal(ms, 1795455545000LL);
    assert_int_equal(clock_parse_rfc3339("2026-11-23T18:39:05.250+01:00", &ms), 0);
    assert_int_equal(ms, 1795455545250LL);
    assert_int_equal(clock_parse_rfc3339("2026-11-23 17:39:05", &ms), -1);
    assert_int_equal(clock_parse_rfc3339("2026-13-01T00:00:00Z", &ms), -1);
    assert_int_equal(clock_parse_rfc3339("yesterday", &ms), -1);
    char out[40];
    clock_rfc3339(1795455545250LL, out, sizeof out);
    assert_string_equal(out, "2026-11-23T17:39:05.250Z");
    clock_rfc5322(1795455545250LL, out, sizeof out);
    assert_string_equal(out, "Mon, 23 Nov 2026 17:39:05 +0000");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(message_ids_unique_and_sortable),
        cmocka_unit_test(base32_and_hex),
        cmocka_unit_test(rfc3339),
    };
    return cmocka_run_group_tests_name("ids", tests, NULL, NULL);
}
