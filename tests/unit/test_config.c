/* Unit tests for core/config: defaults, parsing, and errors with file:line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"

static char path[64];

static config *load_text(const char *text, err *e)
{
    snprintf(path, sizeof path, "/tmp/ph-test-config-%d.conf", (int)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    config *c = cfg_load(path, e);
    unlink(path);
    return c;
}

static void defaults_work_on_loopback(void **state)
{
    (void)state;
    config *c = cfg_defaults();
    assert_string_equal(c->smtp_listen, "127.0.0.1:2587");
    assert_string_equal(c->smtp_listen_tls, "127.0.0.1:2465");
    assert_string_equal(c->api_listen, "127.0.0.1:8025");
    assert_string_equal(c->spool_dir, "./var");
    assert_int_equal(c->smtp_max_message_size, 25 * 1024 * 1024);
    assert_int_equal(c->smtp_timeout_command, 5 * 60 * 1000);
    assert_true(strlen(c->hostname) > 0);
    cfg_free(c);
}

static void parses_units(void **state)
{
    (void)state;
    err e;
    config *c = load_text("[smtp]\nmax_message_size = 10M\ntimeout_data = 90s\n"
                          "timeout_command = 250ms\n[spool]\nmax_size = 2G\n"
                          "[delivery]\nmsgs_per_second = 2.5\npaused = yes\n",
                          &e);
    assert_non_null(c);
    assert_int_equal(c->smtp_max_message_size, 10 * 1024 * 1024);
    assert_int_equal(c->smtp_timeout_data, 90000);
    assert_int_equal(c->smtp_timeout_command, 250);
    assert_int_equal(c->spool_max_size, 2LL * 1024 * 1024 * 1024);
    assert_true(c->msgs_per_second > 2.4 && c->msgs_per_second < 2.6);
    assert_int_equal(c->delivery_paused, 1);
    cfg_free(c);
}

static void errors_name_file_line_and_reason(void **state)
{
    (void)state;
    err e;
    assert_null(load_text("[smtp]\n\nmax_recipients = lots\n", &e));
    assert_non_null(strstr(e.msg, ":3: [smtp] max_recipients: must be an integer"));
    assert_null(load_text("[smtp]\nnope = 1\n", &e));
    assert_non_null(strstr(e.msg, ":2: unknown key 'nope' in section [smtp]"));
    assert_null(load_text("[bogus]\nx = 1\n", &e));
    assert_non_null(strstr(e.msg, ":2: unknown section [bogus]"));
    assert_null(load_text("[smtp]\nmax_recipients = 0\n", &e));
    assert_non_null(strstr(e.msg, "out of range"));
    assert_null(load_text("[delivery]\nroute = carrier-pigeon\n", &e));
    assert_non_null(strstr(e.msg, "must be one of mx|relay"));
    assert_null(load_text("[smtp]\nlisten = localhost\n", &e));
    assert_non_null(strstr(e.msg, "host:port"));
    assert_null(load_text("this is not ini\n", &e));
    assert_non_null(strstr(e.msg, ":1:"));
}

static void limit_boundaries(void **state)
{
    (void)state;
    err e;
    config *c = load_text("[smtp]\nmax_recipients = 100000\n", &e);
    assert_non_null(c);
    cfg_free(c);
    assert_null(load_text("[smtp]\nmax_recipients = 100001\n", &e));
    assert_null(load_text("[smtp]\nmax_command_length = 511\n", &e));
}

static void domain_sections(void **state)
{
    (void)state;
    err e;
    config *c = load_text("[domain Example.COM]\nroute = relay\nrelay_host = 127.0.0.1\nrelay_port = 2525\n", &e);
    assert_non_null(c);
    const cfg_domain *d = cfg_find_domain(c, "example.com");
    assert_non_null(d);
    assert_string_equal(d->route, "relay");
    assert_int_equal(d->relay_port, 2525);
    assert_null(cfg_find_domain(c, "other.org"));
    cfg_free(c);
    assert_null(load_text("[domain example.com]\nbogus = 1\n", &e));
    assert_non_null(strstr(e.msg, "unknown key 'bogus'"));
}

static void secrets_from_file_and_env(void **state)
{
    (void)state;
    err e;
    char file[64];
    snprintf(file, sizeof file, "/tmp/ph-test-secret-%d", (int)getpid());
    FILE *f = fopen(file, "w");
    fputs("s3cret\n", f);
    fclose(f);
    char *s = cfg_secret(file, NULL, "relay password", &e);
    assert_string_equal(s, "s3cret");
    free(s);
    unlink(file);
    setenv("PH_TEST_SECRET", "from-env", 1);
    s = cfg_secret(NULL, "PH_TEST_SECRET", "relay password", &e);
    assert_string_equal(s, "from-env");
    free(s);
    assert_null(cfg_secret(NULL, "PH_TEST_UNSET_VARIABLE", "relay password", &e));
    assert_non_null(strstr(e.msg, "PH_TEST_UNSET_VARIABLE is not set"));
}

static void retry_schedule(void **state)
{
    (void)state;
    int64_t v[16];
    err e;
    assert_int_equal(cfg_parse_schedule("1m, 5m,1h", v, 16, &e), 3);
    assert_int_equal(v[0], 60000);
    assert_int_equal(v[2], 3600000);
    assert_int_equal(cfg_parse_schedule("1m,,5m", v, 16, &e), -1);
    assert_int_equal(cfg_parse_schedule("soon", v, 16, &e), -1);
}

/* The shipped example must stay valid as keys change. */
static void example_config_loads(void **state)
{
    (void)state;
    err e;
    config *c = cfg_load("examples/posthaste.conf", &e);
    if (!c)
        fail_msg("%s", e.msg);
    assert_string_equal(c->smtp_listen, "0.0.0.0:587");
    assert_string_equal(c->smtp_listen_tls, "0.0.0.0:465");
    assert_non_null(cfg_find_domain(c, "example.org"));
    cfg_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(example_config_loads),
        cmocka_unit_test(defaults_work_on_loopback),
        cmocka_unit_test(parses_units),
        cmocka_unit_test(errors_name_file_line_and_reason),
        cmocka_unit_test(limit_boundaries),
        cmocka_unit_test(domain_sections),
        cmocka_unit_test(secrets_from_file_and_env),
        cmocka_unit_test(retry_schedule),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
