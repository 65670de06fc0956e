/* Unit tests for outcome/unsubscribe: tokens verify, and cannot be forged. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "outcome/unsubscribe.h"

static const unsigned char secret[UNSUB_SECRET_LEN] = "0123456789abcdef0123456789abcdef";

static void round_trip(void **state)
{
    (void)state;
    unsub_claims c = {"bob@example.org", "shop.example", "01m84rvy2bxshk525c83gx68q8"}, got;
    char tok[UNSUB_TOKEN_MAX];
    assert_int_equal(unsub_token(secret, &c, tok, sizeof tok), 0);
    assert_null(strpbrk(tok, "+/= \r\n")); /* URL- and mailto-safe */
    assert_int_equal(unsub_verify(secret, tok, &got), 0);
    assert_string_equal(got.recipient, "bob@example.org");
    assert_string_equal(got.domain, "shop.example");
    assert_string_equal(got.message_id, "01m84rvy2bxshk525c83gx68q8");
}

static void forged_or_altered_refused(void **state)
{
    (void)state;
    unsub_claims c = {"bob@example.org", "shop.example", "01m84rvy2bxshk525c83gx68q8"}, got;
    char tok[UNSUB_TOKEN_MAX];
    assert_int_equal(unsub_token(secret, &c, tok, sizeof tok), 0);
    /* Flip each character of the token in turn: every variant must fail. */
    size_t n = strlen(tok);
    for (size_t i = 0; i < n; i++) {
        char copy[UNSUB_TOKEN_MAX];
        memcpy(copy, tok, n + 1);
        if (copy[i] == '.')
            continue;
        copy[i] = copy[i] == 'A' ? 'B' : 'A';
        if (strcmp(copy, tok) == 0)
            continue;
        assert_int_not_equal(unsub_verify(secret, copy, &got), 0);
    }
    /* Another recipient's claims with this token's MAC. */
    unsub_claims other = {"eve@example.org", "shop.example", "01m84rvy2bxshk525c83gx68q8"};
    char tok2[UNSUB_TOKEN_MAX];
    assert_int_equal(unsub_token(secret, &other, tok2, sizeof tok2), 0);
    char spliced[2 * UNSUB_TOKEN_MAX];
    snprintf(spliced, sizeof spliced, "%.*s%s", (int)(strchr(tok2, '.') - tok2), tok2, strchr(tok, '.'));
    assert_int_not_equal(unsub_verify(secret, spliced, &got), 0);
    /* A different server secret. */
    unsigned char other_secret[UNSUB_SECRET_LEN];
    memset(other_secret, 'x', sizeof other_secret);
    assert_int_not_equal(unsub_verify(other_secret, tok, &got), 0);
    assert_int_not_equal(unsub_verify(secret, "", &got), 0);
    assert_int_not_equal(unsub_verify(secret, "abc", &got), 0);
    assert_int_not_equal(unsub_verify(secret, ".", &got), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip),
        cmocka_unit_test(forged_or_altered_refused),
    };
    return cmocka_run_group_tests_name("unsubscribe", tests, NULL, NULL);
}
