/* Unit tests for delivery/retry (classification, backoff, expiry),
   delivery/route (config merging) and the pure parts of dns/smtp_client. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "delivery/bounce.h"
#include "delivery/dns.h"
#include "delivery/retry.h"
#include "delivery/route.h"
#include "delivery/smtp_client.h"

static void classify(void **state)
{
    (void)state;
    assert_int_equal(retry_classify(250, "2.0.0"), RETRY_DELIVERED);
    assert_int_equal(retry_classify(451, "4.3.0"), RETRY_DEFER);
    assert_int_equal(retry_classify(421, ""), RETRY_DEFER);
    assert_int_equal(retry_classify(0, ""), RETRY_DEFER); /* local: timeouts, refused, TLS */
    assert_int_equal(retry_classify(550, "5.1.1"), RETRY_BOUNCE_HARD);
    assert_int_equal(retry_classify(550, "5.1.2"), RETRY_BOUNCE_HARD);
    assert_int_equal(retry_classify(556, "5.1.10"), RETRY_BOUNCE_HARD);
    assert_int_equal(retry_classify(550, "5.2.1"), RETRY_BOUNCE_HARD);
    assert_int_equal(retry_classify(550, "5.1.8"), RETRY_BOUNCE_SOFT); /* the sender's domain */
    assert_int_equal(retry_classify(552, "5.2.2"), RETRY_BOUNCE_SOFT);
    assert_int_equal(retry_classify(554, "5.7.1"), RETRY_BOUNCE_SOFT);
    assert_int_equal(retry_classify(550, ""), RETRY_BOUNCE_SOFT);
    assert_int_equal(retry_classify(550, NULL), RETRY_BOUNCE_SOFT);
}

static void delay_follows_schedule_with_jitter(void **state)
{
    (void)state;
    int64_t s[] = {60000, 300000, 900000};
    assert_int_equal(retry_delay(s, 3, 1, 0), 54000);            /* -10% */
    assert_int_equal(retry_delay(s, 3, 1, UINT32_MAX), 66000);   /* +10% */
    assert_int_equal(retry_delay(s, 3, 2, UINT32_MAX / 2), 299999);
    /* The last entry repeats. */
    assert_in_range(retry_delay(s, 3, 3, 12345), 810000, 990000);
    assert_in_range(retry_delay(s, 3, 50, 99999), 810000, 990000);
    for (int i = 0; i < 1000; i++)
        assert_in_range(retry_delay(s, 3, 1, (uint32_t)rand()), 54000, 66000);
}

static void default_schedule_parses(void **state)
{
    (void)state;
    config *c = cfg_defaults();
    int64_t s[32];
    err e;
    assert_int_equal(cfg_parse_schedule(c->retry_schedule, s, 32, &e), 7);
    assert_int_equal(s[0], 60000);
    assert_int_equal(s[6], 4 * 3600000);
    assert_int_equal(c->max_age, 5LL * 86400000);
    cfg_free(c);
}

static void next_attempt_and_expiry(void **state)
{
    (void)state;
    int64_t next = 0;
    assert_int_equal(retry_next(1000, 0, 5000, 1000, &next), 0);
    assert_int_equal(next, 2000);
    /* Never scheduled past created + max_age: one last try at the deadline. */
    assert_int_equal(retry_next(4500, 0, 5000, 1000, &next), 0);
    assert_int_equal(next, 5000);
    assert_int_equal(retry_next(5000, 0, 5000, 1000, &next), 1);
}

static void routes_merge_domain_overrides(void **state)
{
    (void)state;
    char path[] = "/tmp/ph_route_XXXXXX";
    int fd = mkstemp(path);
    const char *ini = "[delivery]\nrelay_host = smart.example\nrelay_port = 2525\nrelay_user = u\n"
                      "relay_password_env = X\n\n[domain slow.example]\nmax_connections = 2\n"
                      "tls_policy = verify\n\n[domain corp.example]\nroute = relay\nrelay_tls = implicit\n"
                      "relay_port = 465\n";
    assert_int_equal(write(fd, ini, strlen(ini)), (ssize_t)strlen(ini));
    close(fd);
    err e;
    config *c = cfg_load(path, &e);
    unlink(path);
    assert_non_null(c);
    route r;
    assert_int_equal(route_for(c, "gmail.com", &r, &e), 0);
    assert_int_equal(r.relay, 0);
    assert_int_equal(r.tls_policy, SMTPC_TLS_MAY);
    assert_int_equal(r.port, 25);
    assert_string_equal(r.key, "mx:gmail.com");
    assert_int_equal(r.max_conns, 10);
    assert_int_equal(route_for(c, "slow.example", &r, &e), 0);
    assert_int_equal(r.max_conns, 2);
    assert_int_equal(r.tls_policy, SMTPC_TLS_VERIFY);
    assert_int_equal(route_for(c, "corp.example", &r, &e), 0);
    assert_int_equal(r.relay, 1);
    assert_int_equal(r.implicit_tls, 1);
    assert_int_equal(r.port, 465);
    assert_string_equal(r.host, "smart.example");
    assert_string_equal(r.user, "u");
    assert_int_equal(r.tls_policy, SMTPC_TLS_VERIFY);
    cfg_free(c);
    /* A relay route without a host is refused. */
    c = cfg_defaults();
    free(c->delivery_route);
    c->delivery_route = strdup("relay");
    assert_int_equal(route_for(c, "x.example", &r, &e), -1);
    assert_non_null(strstr(e.msg, "relay_host"));
    cfg_free(c);
}

static void mx_sort_by_preference_shuffles_ties(void **state)
{
    (void)state;
    int seen_first[2] = {0, 0};
    for (int round = 0; round < 200; round++) {
        dns_host h[4] = {{.name = "c", .pref = 20}, {.name = "a", .pref = 10},
                         {.name = "d", .pref = 30}, {.name = "b", .pref = 10}};
        dns_sort_hosts(h, 4);
        assert_int_equal(h[0].pref, 10);
        assert_int_equal(h[1].pref, 10);
        assert_string_equal(h[2].name, "c");
        assert_string_equal(h[3].name, "d");
        seen_first[h[0].name[0] == 'a' ? 0 : 1]++;
    }
    /* Both equal-preference hosts come first sometimes. */
    assert_true(seen_first[0] > 20 && seen_first[1] > 20);
}

static void utf8_needs(void **state)
{
    (void)state;
    const char *ascii[] = {"a@example.com"};
    const char *intl[] = {"j\xc3\xb6rg@example.com"};
    int eight;
    const char *m1 = "Subject: hi\r\n\r\nbody\r\n";
    const char *m2 = "Subject: hi\r\n\r\nb\xc3\xb6" "dy\r\n";
    const char *m3 = "Subject: h\xc3\xa9\r\n\r\nbody\r\n";
    assert_int_equal(smtpc_needs_utf8("s@example.com", ascii, 1, m1, strlen(m1), &eight), 0);
    assert_int_equal(eight, 0);
    assert_int_equal(smtpc_needs_utf8("s@example.com", ascii, 1, m2, strlen(m2), &eight), 0);
    assert_int_equal(eight, 1); /* 8BITMIME only */
    assert_int_equal(smtpc_needs_utf8("s@example.com", ascii, 1, m3, strlen(m3), &eight), 1);
    assert_int_equal(smtpc_needs_utf8("s@example.com", intl, 1, m1, strlen(m1), &eight), 1);
    assert_int_equal(smtpc_tls_parse("verify"), SMTPC_TLS_VERIFY);
    assert_int_equal(smtpc_tls_parse("bogus"), -1);
}

static void ndr_policy(void **state)
{
    (void)state;
    config *c = cfg_defaults();
    assert_true(bounce_wanted(c, "smtp", "a@example.com"));
    assert_false(bounce_wanted(c, "api", "a@example.com"));
    assert_false(bounce_wanted(c, "smtp", ""));          /* null reverse-path: never */
    assert_false(bounce_wanted(c, "bounce", "a@example.com"));
    c->notify_sender_api = 1;
    c->notify_sender_smtp = 0;
    assert_true(bounce_wanted(c, "api", "a@example.com"));
    assert_false(bounce_wanted(c, "smtp", "a@example.com"));
    cfg_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(classify),
        cmocka_unit_test(delay_follows_schedule_with_jitter),
        cmocka_unit_test(default_schedule_parses),
        cmocka_unit_test(next_attempt_and_expiry),
        cmocka_unit_test(routes_merge_domain_overrides),
        cmocka_unit_test(mx_sort_by_preference_shuffles_ties),
        cmocka_unit_test(utf8_needs),
        cmocka_unit_test(ndr_policy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
