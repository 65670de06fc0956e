/* Unit tests for submit/keys: minting, verification, what a key allows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "submit/keys.h"

static char dir[64], path[96];

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/ph-test-keys-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/spool.db", dir);
    spool_opts o = {.path = path, .synchronous_full = 1};
    err e;
    *state = spool_open(&o, &e);
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    spool_close(*state);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

static void create_then_verify(void **state)
{
    spool *s = *state;
    keys_spec spec = {.name = "app", .scopes = KEY_SCOPE_SEND | KEY_SCOPE_READ};
    char token[KEYS_TOKEN_MAX];
    spool_key k, v;
    err e;
    assert_int_equal(keys_create(s, &spec, token, &k, &e), 0);
    assert_int_equal(strncmp(token, "ph_", 3), 0);
    assert_int_equal(strlen(token), 3 + 12 + 1 + 32);
    assert_int_equal(keys_verify(s, token, strlen(token), &v, &e), 1);
    assert_string_equal(v.id, k.id);
    assert_int_equal(v.scopes, KEY_SCOPE_SEND | KEY_SCOPE_READ);
    spool_key_free(&v);

    /* One changed secret character, a truncated key, garbage: all invalid. */
    char bad[KEYS_TOKEN_MAX];
    memcpy(bad, token, sizeof bad);
    bad[strlen(bad) - 1] = bad[strlen(bad) - 1] == 'a' ? 'b' : 'a';
    assert_int_equal(keys_verify(s, bad, strlen(bad), &v, &e), 0);
    assert_int_equal(keys_verify(s, token, strlen(token) - 1, &v, &e), 0);
    assert_int_equal(keys_verify(s, "ph_x_y", 6, &v, &e), 0);

    /* The secret is not stored anywhere in the database. */
    FILE *f = fopen(path, "rb");
    static char db[1 << 20];
    size_t n = fread(db, 1, sizeof db, f);
    fclose(f);
    assert_null(memmem(db, n, token + 16, 32));

    assert_int_equal(spool_key_revoke(s, k.id, &e), 1);
    assert_int_equal(keys_verify(s, token, strlen(token), &v, &e), 0);
    assert_int_equal(spool_key_revoke(s, k.id, &e), 0);
    spool_key_free(&k);
}

static void two_keys_differ(void **state)
{
    spool *s = *state;
    keys_spec spec = {.name = "a"};
    char t1[KEYS_TOKEN_MAX], t2[KEYS_TOKEN_MAX];
    err e;
    assert_int_equal(keys_create(s, &spec, t1, NULL, &e), 0);
    assert_int_equal(keys_create(s, &spec, t2, NULL, &e), 0);
    assert_string_not_equal(t1, t2);
}

static void sender_domains(void **state)
{
    (void)state;
    spool_key k = {.sender_domains = "example.com,mail.other.org"};
    assert_true(keys_domain_allowed(&k, "example.com"));
    assert_true(keys_domain_allowed(&k, "EXAMPLE.com"));
    assert_true(keys_domain_allowed(&k, "news.example.com"));
    assert_true(keys_domain_allowed(&k, "mail.other.org"));
    assert_false(keys_domain_allowed(&k, "evilexample.com"));
    assert_false(keys_domain_allowed(&k, "other.org"));
    assert_false(keys_domain_allowed(&k, "example.com.evil.net"));
    spool_key any = {.sender_domains = ""};
    assert_true(keys_domain_allowed(&any, "whatever.test"));
}

static void ip_allowlist(void **state)
{
    (void)state;
    spool_key k = {.allow_ips = "10.1.0.0/16,2001:db8::/32,127.0.0.1"};
    struct sockaddr_in v4 = {.sin_family = AF_INET};
    struct sockaddr_in6 v6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET, "10.1.200.3", &v4.sin_addr);
    assert_true(keys_ip_allowed(&k, (struct sockaddr *)&v4));
    inet_pton(AF_INET, "10.2.0.1", &v4.sin_addr);
    assert_false(keys_ip_allowed(&k, (struct sockaddr *)&v4));
    inet_pton(AF_INET, "127.0.0.1", &v4.sin_addr);
    assert_true(keys_ip_allowed(&k, (struct sockaddr *)&v4));
    inet_pton(AF_INET6, "2001:db8:1::5", &v6.sin6_addr);
    assert_true(keys_ip_allowed(&k, (struct sockaddr *)&v6));
    inet_pton(AF_INET6, "::ffff:10.1.2.3", &v6.sin6_addr); /* v4-mapped */
    assert_true(keys_ip_allowed(&k, (struct sockaddr *)&v6));
    inet_pton(AF_INET6, "2001:db9::1", &v6.sin6_addr);
    assert_false(keys_ip_allowed(&k, (struct sockaddr *)&v6));
    err e;
    assert_int_equal(keys_check_cidrs("10.0.0.0/8,::1", &e), 0);
    assert_int_equal(keys_check_cidrs("10.0.0.0/33", &e), -1);
    assert_int_equal(keys_check_cidrs("example.com", &e), -1);
}

static void scopes(void **state)
{
    (void)state;
    assert_int_equal(keys_parse_scope("send"), KEY_SCOPE_SEND);
    assert_int_equal(keys_parse_scope("ADMIN"), KEY_SCOPE_ADMIN);
    assert_int_equal(keys_parse_scope("root"), -1);
    char out[32];
    keys_scopes_str(KEY_SCOPE_SEND | KEY_SCOPE_ADMIN, out, sizeof out);
    assert_string_equal(out, "send,admin");
}

int main(void)
{
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(create_then_verify, setup, teardown),
        cmocka_unit_test_setup_teardown(two_keys_differ, setup, teardown),
        cmocka_unit_test(sender_domains),
        cmocka_unit_test(ip_allowlist),
        cmocka_unit_test(scopes),
    };
    return cmocka_run_group_tests_name("keys", tests, NULL, NULL);
}
