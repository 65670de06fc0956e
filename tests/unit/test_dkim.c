/* Unit tests for submit/dkim, submit/hygiene and submit/sign_pool. The
   signatures themselves are verified by independent verifiers in
   tests/integration/test_dkim_sign.py (dkimpy, opendkim-testmsg). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "submit/dkim.h"
#include "submit/hygiene.h"
#include "submit/sign_pool.h"

static char dir[64];

static int make_dir(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/ph-test-dkim-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

static int cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* ---- hygiene ----------------------------------------------------------- */

static void message_ids_unique_over_100000(void **state)
{
    (void)state;
    enum { N = 100000, LEN = 64 };
    char (*ids)[LEN] = calloc(N, LEN);
    assert_non_null(ids);
    for (int i = 0; i < N; i++) {
        assert_int_equal(hyg_message_id("mail.example.com", ids[i], LEN), 0);
        /* "<" 32 hex "@" host ">" */
        assert_int_equal(strlen(ids[i]), 1 + 32 + 1 + strlen("mail.example.com") + 1);
        assert_int_equal(strspn(ids[i] + 1, "0123456789abcdef"), 32);
    }
    qsort(ids, N, LEN, cmp);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    free(ids);
    char small[20];
    assert_int_equal(hyg_message_id("mail.example.com", small, sizeof small), -1);
}

static void fold_leaves_short_lines_alone(void **state)
{
    (void)state;
    buf out;
    buf_init(&out, 4096);
    err e;
    const char f[] = "Subject: hello\r\n continued\r\n";
    assert_int_equal(hyg_fold(f, strlen(f), &out, &e), 0);
    assert_string_equal(buf_cstr(&out), f);
    buf_reset(&out);
    /* A missing final CRLF is added. */
    assert_int_equal(hyg_fold("To: a@b.c", 9, &out, &e), 0);
    assert_string_equal(buf_cstr(&out), "To: a@b.c\r\n");
    buf_free(&out);
}

/* Remove every CRLF that precedes white space (RFC 5322 unfolding). */
static void unfold(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        if (r[0] == '\r' && r[1] == '\n' && (r[2] == ' ' || r[2] == '\t')) {
            r++;
            continue;
        }
        *w++ = *r;
    }
    *w = '\0';
}

static void fold_long_line_at_78(void **state)
{
    (void)state;
    char field[2048] = "Subject:";
    size_t len = strlen(field);
    for (int i = 0; i < 120; i++)
        len += (size_t)snprintf(field + len, sizeof field - len, "%s", i % 7 ? " word" : "\tTAB");
    buf out;
    buf_init(&out, 8192);
    err e;
    assert_int_equal(hyg_fold(field, strlen(field), &out, &e), 0);
    char *copy = strdup(buf_cstr(&out));
    for (char *line = strtok(copy, "\n"); line; line = strtok(NULL, "\n"))
        assert_true(strlen(line) <= HYG_FOLD_AT + 1); /* + the CR */
    free(copy);
    char *unfolded = strdup(buf_cstr(&out));
    unfold(unfolded);
    size_t n = strlen(unfolded);
    assert_true(n >= 2 && strcmp(unfolded + n - 2, "\r\n") == 0);
    unfolded[n - 2] = '\0';
    assert_string_equal(unfolded, field);
    free(unfolded);
    buf_free(&out);
}

static void fold_limits_998(void **state)
{
    (void)state;
    buf out;
    buf_init(&out, 8192);
    err e;
    char field[1100] = "X-Token: ";
    /* One 989-octet word: folded after the name, the rest (990) is legal. */
    memset(field + 9, 'a', 989);
    field[998] = '\0';
    assert_int_equal(hyg_fold(field, strlen(field), &out, &e), 0);
    assert_int_equal(out.len, 8 + 2 + 990 + 2);
    assert_true(strncmp(buf_cstr(&out), "X-Token:\r\n a", 12) == 0);
    /* 999 octets with no white space after the name: refused, named. */
    buf_reset(&out);
    char word[1100] = "X-Token:";
    memset(word + 8, 'a', 991);
    word[999] = '\0';
    assert_int_equal(hyg_fold(word, strlen(word), &out, &e), -1);
    assert_int_equal(e.code, ERR_INVALID);
    assert_non_null(strstr(e.msg, "header X-Token: a line of 999 octets cannot be folded to 998"));
    buf_free(&out);
}

static void return_path_and_8bit(void **state)
{
    (void)state;
    char rp[64];
    assert_int_equal(hyg_return_path("01abc", "bounce.example.com", rp, sizeof rp), 0);
    assert_string_equal(rp, "bounces+01abc@bounce.example.com");
    assert_int_equal(hyg_return_path("01abc", "bounce.example.com", rp, 10), -1);
    assert_false(hyg_has_8bit("plain", 5));
    assert_true(hyg_has_8bit("caf\xc3\xa9", 5));
}

/* ---- dkim ----------------------------------------------------------------- */

static void txt_tags_and_zone_line(void **state)
{
    (void)state;
    buf v;
    buf_init(&v, 1024);
    assert_int_equal(dkimsig_txt_tag("v=DKIM1; k=rsa;  p = AB CD\tEF ;t=y", "p", &v), 0);
    assert_string_equal(buf_cstr(&v), "ABCDEF");
    buf_reset(&v);
    assert_int_equal(dkimsig_txt_tag("v=DKIM1; k=rsa", "p", &v), -1);
    assert_int_equal(dkimsig_txt_tag("v=DKIM1; p=", "p", &v), 0);
    assert_string_equal(buf_cstr(&v), "");
    buf_free(&v);

    char value[600];
    memset(value, 'x', 599);
    value[599] = '\0';
    buf line;
    buf_init(&line, 4096);
    assert_int_equal(dkimsig_txt_zone_line("s1", "example.com", value, &line), 0);
    /* 599 = 255 + 255 + 89, each quoted. */
    const char *p = buf_cstr(&line);
    assert_true(strncmp(p, "s1._domainkey.example.com. IN TXT ( \"", 37) == 0);
    int strings = 0;
    for (const char *q = strchr(p, '"'); q; q = strchr(q + 1, '"')) {
        const char *end = strchr(q + 1, '"');
        assert_non_null(end);
        assert_true(end - q - 1 <= 255);
        strings++;
        q = end;
    }
    assert_int_equal(strings, 3);
    buf_free(&line);
}

static void key_path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", dir, name);
}

static void keygen_mode_and_record(void **state)
{
    (void)state;
    char rsa[128], ed[128];
    key_path(rsa, sizeof rsa, "rsa.pem");
    key_path(ed, sizeof ed, "ed.pem");
    err e;
    assert_int_equal(dkimsig_keygen(rsa, DKIM_ALG_RSA, 2048, &e), 0);
    assert_int_equal(dkimsig_keygen(ed, DKIM_ALG_ED25519, 0, &e), 0);
    struct stat st;
    assert_int_equal(stat(rsa, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* Never overwritten. */
    assert_int_equal(dkimsig_keygen(rsa, DKIM_ALG_RSA, 2048, &e), -1);
    assert_non_null(strstr(e.msg, "already exists"));
    char weak[128];
    key_path(weak, sizeof weak, "weak.pem");
    assert_int_equal(dkimsig_keygen(weak, DKIM_ALG_RSA, 1024, &e), -1);

    buf v;
    buf_init(&v, 8192);
    enum dkimsig_alg alg;
    assert_int_equal(dkimsig_txt_value(ed, &alg, &v, &e), 0);
    assert_int_equal(alg, DKIM_ALG_ED25519);
    /* 32 raw bytes are 44 base64 characters. */
    assert_int_equal(strlen(buf_cstr(&v)), strlen("v=DKIM1; k=ed25519; p=") + 44);
    buf_reset(&v);
    assert_int_equal(dkimsig_txt_value(rsa, &alg, &v, &e), 0);
    assert_int_equal(alg, DKIM_ALG_RSA);
    assert_true(strncmp(buf_cstr(&v), "v=DKIM1; k=rsa; p=MIIB", 22) == 0);
    buf_free(&v);

    assert_int_equal(chmod(rsa, 0640), 0);
    assert_int_equal(dkimsig_check_key_mode(rsa, &e), -1);
    assert_int_equal(e.code, ERR_DENIED);
    assert_non_null(strstr(e.msg, "has mode 0640"));
    assert_int_equal(chmod(rsa, 0600), 0);
    assert_int_equal(dkimsig_check_key_mode(rsa, &e), 0);
}

static config *config_with(const char *sender_text)
{
    char path[128];
    key_path(path, sizeof path, "t.conf");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(sender_text, f);
    fclose(f);
    err e;
    config *c = cfg_load(path, &e);
    if (!c)
        fail_msg("%s", e.msg);
    return c;
}

static const char msg[] = "From: A <a@example.com>\r\nTo: b@example.org\r\nSubject: hi\r\n"
                          "Date: Mon, 23 Nov 2026 17:39:05 +0000\r\n\r\nbody\r\n";

static void sign_dual_and_subdomains(void **state)
{
    (void)state;
    char text[1024];
    snprintf(text, sizeof text,
             "[sender example.com]\ndkim_selector = r1\ndkim_key_file = %s/rsa.pem\n"
             "dkim_ed25519_selector = e1\ndkim_ed25519_key_file = %s/ed.pem\n"
             "dkim_expire = 1h\n"
             "[sender shop.example.com]\ndkim_ed25519_selector = s\n"
             "dkim_ed25519_key_file = %s/ed.pem\nsign_subdomains = yes\n",
             dir, dir, dir);
    config *c = config_with(text);
    err e;
    dkimsig_keyset *ks = dkimsig_load(c, &e);
    assert_non_null(ks);
    assert_int_equal(dkimsig_count_for(ks, "example.com"), 2);
    assert_int_equal(dkimsig_count_for(ks, "EXAMPLE.com"), 2);
    assert_int_equal(dkimsig_count_for(ks, "mail.example.com"), 0); /* no sign_subdomains */
    assert_int_equal(dkimsig_count_for(ks, "shop.example.com"), 1);
    assert_int_equal(dkimsig_count_for(ks, "eu.shop.example.com"), 1);
    assert_int_equal(dkimsig_count_for(ks, "example.org"), 0);
    assert_int_equal(dkimsig_count_for(ks, "badexample.com"), 0);

    buf out;
    buf_init(&out, 65536);
    assert_int_equal(dkimsig_sign(ks, "example.com", msg, strlen(msg), &out, &e), 2);
    const char *s = buf_cstr(&out);
    assert_non_null(strstr(s, "a=rsa-sha256"));
    assert_non_null(strstr(s, "a=ed25519-sha256"));
    assert_non_null(strstr(s, "c=relaxed/relaxed"));
    assert_non_null(strstr(s, "x="));
    /* CRLF only: libopendkim's bare LF folding was converted. */
    for (const char *p = s; *p; p++)
        if (*p == '\n')
            assert_true(p > s && p[-1] == '\r');
    buf_reset(&out);
    assert_int_equal(dkimsig_sign(ks, "eu.shop.example.com", msg, strlen(msg), &out, &e), 1);
    assert_non_null(strstr(buf_cstr(&out), "d=shop.example.com"));
    assert_non_null(strstr(buf_cstr(&out), "i=@eu.shop.example.com"));
    buf_reset(&out);
    assert_int_equal(dkimsig_sign(ks, "example.org", msg, strlen(msg), &out, &e), 0);
    assert_int_equal(out.len, 0);
    buf_free(&out);
    dkimsig_free(ks);
    cfg_free(c);
}

static void load_refuses_bad_keys(void **state)
{
    (void)state;
    char text[512];
    err e;
    /* An RSA key given as the ed25519 key. */
    snprintf(text, sizeof text,
             "[sender example.com]\ndkim_ed25519_selector = e\ndkim_ed25519_key_file = %s/rsa.pem\n",
             dir);
    config *c = config_with(text);
    assert_null(dkimsig_load(c, &e));
    assert_non_null(strstr(e.msg, "is an RSA key"));
    cfg_free(c);
    /* A selector without a key. */
    c = config_with("[sender example.com]\ndkim_selector = r1\n");
    assert_null(dkimsig_load(c, &e));
    assert_non_null(strstr(e.msg, "dkim_selector and dkim_key_file go together"));
    cfg_free(c);
    /* A missing file. */
    snprintf(text, sizeof text, "[sender example.com]\ndkim_selector = r\ndkim_key_file = %s/none.pem\n", dir);
    c = config_with(text);
    assert_null(dkimsig_load(c, &e));
    assert_non_null(strstr(e.msg, "none.pem"));
    cfg_free(c);
    /* No sender: an empty set, not an error. */
    c = config_with("");
    dkimsig_keyset *ks = dkimsig_load(c, &e);
    assert_non_null(ks);
    assert_int_equal(dkimsig_count_for(ks, "example.com"), 0);
    dkimsig_free(ks);
    cfg_free(c);
}

/* ---- sign_pool -------------------------------------------------------------- */

typedef struct pool_job {
    pthread_t worker, done_on;
    int *remaining;
    struct event_base *base;
} pool_job;

static void pool_work(void *arg)
{
    pool_job *j = arg;
    j->worker = pthread_self();
}

static void pool_done(void *arg)
{
    pool_job *j = arg;
    j->done_on = pthread_self();
    if (--*j->remaining == 0)
        event_base_loopbreak(j->base);
}

static void pool_runs_work_off_loop_and_done_on_loop(void **state)
{
    (void)state;
    enum { N = 200 };
    struct event_base *base = event_base_new();
    err e;
    signpool *p = signpool_new(base, 3, &e);
    assert_non_null(p);
    pool_job jobs[N];
    int remaining = N;
    for (int i = 0; i < N; i++) {
        jobs[i] = (pool_job){.remaining = &remaining, .base = base};
        assert_int_equal(signpool_run(p, pool_work, pool_done, &jobs[i]), 0);
    }
    struct timeval limit = {10, 0};
    event_base_loopexit(base, &limit);
    event_base_dispatch(base);
    assert_int_equal(remaining, 0);
    for (int i = 0; i < N; i++) {
        assert_false(pthread_equal(jobs[i].worker, pthread_self()));
        assert_true(pthread_equal(jobs[i].done_on, pthread_self()));
    }
    signpool_free(p);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(message_ids_unique_over_100000),
        cmocka_unit_test(fold_leaves_short_lines_alone),
        cmocka_unit_test(fold_long_line_at_78),
        cmocka_unit_test(fold_limits_998),
        cmocka_unit_test(return_path_and_8bit),
        cmocka_unit_test(txt_tags_and_zone_line),
        cmocka_unit_test(keygen_mode_and_record),
        cmocka_unit_test(sign_dual_and_subdomains),
        cmocka_unit_test(load_refuses_bad_keys),
        cmocka_unit_test(pool_runs_work_off_loop_and_done_on_loop),
    };
    return cmocka_run_group_tests(tests, make_dir, remove_dir);
}
