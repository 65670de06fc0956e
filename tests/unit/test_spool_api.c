/* Unit tests for spool/spool_api: the API's queries (filtered and
   paginated lists, idempotency records, cancel, suppression lists,
   per-key recipient counts), on a real SQLite spool in a temp dir. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "spool/spool.h"

static char dir[128], path[160];
static spool *s;

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/ph-test-spool-api-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/spool.db", dir);
    spool_opts o = {.path = path, .synchronous_full = 0, .commit_batch = 64, .busy_timeout_ms = 2000};
    err e;
    s = spool_open(&o, &e);
    return s ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    spool_close(s);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

static const char body[] = "From: x@example.com\r\nSubject: hi\r\n\r\nhello\r\n";

static void submit(const char *rcpt1, const char *rcpt2, const char *key_id, const char *meta, char id[ID_MSG_LEN + 1])
{
    const char *rcpts[] = {rcpt1, rcpt2};
    spool_submission m = {.mail_from = "x@example.com", .rcpts = rcpts, .nrcpts = rcpt2 ? 2 : 1, .data = body,
                          .len = sizeof body - 1, .ingress = "api", .key_id = key_id, .meta = meta};
    err e;
    if (spool_submit_sync(s, &m, id, &e))
        fail_msg("submit: %s", e.msg);
}

typedef struct seen {
    char ids[16][ID_MSG_LEN + 1];
    int64_t rowids[16];
    int n;
} seen;

static void collect(void *arg, const spool_message *m)
{
    seen *c = arg;
    snprintf(c->ids[c->n], sizeof c->ids[0], "%s", m->id);
    c->rowids[c->n++] = m->rowid;
}

static int list(spool_msg_filter f, seen *out)
{
    err e;
    memset(out, 0, sizeof *out);
    int n = spool_list_filtered(s, &f, collect, out, &e);
    if (n < 0)
        fail_msg("list: %s", e.msg);
    return n;
}

static void filters_and_keyset_pages(void **state)
{
    (void)state;
    char a[ID_MSG_LEN + 1], b[ID_MSG_LEN + 1], c[ID_MSG_LEN + 1];
    submit("one@example.org", NULL, "k1", "{\"tags\":[\"red\"]}", a);
    submit("two@example.org", "one@example.org", "k1", "{\"tags\":[\"blue\",\"red\"]}", b);
    submit("three@example.org", NULL, "k2", NULL, c);
    seen got;
    assert_int_equal(list((spool_msg_filter){.state = -1, .limit = 10}, &got), 3);
    assert_string_equal(got.ids[0], c); /* newest first */
    assert_int_equal(list((spool_msg_filter){.state = -1, .limit = 2}, &got), 2);
    int64_t cursor = got.rowids[1];
    assert_int_equal(list((spool_msg_filter){.state = -1, .limit = 2, .before_rowid = cursor}, &got), 1);
    assert_string_equal(got.ids[0], a);
    assert_int_equal(list((spool_msg_filter){.state = -1, .limit = 10, .tag = "red"}, &got), 2);
    assert_int_equal(list((spool_msg_filter){.state = -1, .limit = 10, .tag = "blue"}, &got), 1);
    assert_string_equal(got.ids[0], b);
    assert_int_equal(list((spool_msg_filter){.state = -1, .limit = 10, .recipient = "ONE@example.org"}, &got), 2);
    assert_int_equal(list((spool_msg_filter){.state = RCPT_DELIVERED, .limit = 10}, &got), 0);
    assert_int_equal(list((spool_msg_filter){.state = -1, .limit = 10, .since_ms = clock_now_ms() + 60000}, &got), 0);
    int64_t oldest = 0;
    err e;
    assert_int_equal(spool_key_rcpts_since(s, "k1", 0, &oldest, &e), 3);
    assert_true(oldest > 0);
    assert_int_equal(spool_key_rcpts_since(s, "k2", 0, NULL, &e), 1);
    assert_int_equal(spool_key_rcpts_since(s, "k1", clock_now_ms() + 1000, NULL, &e), 0);
}

typedef struct cancel_arg {
    int count;
    char id[ID_MSG_LEN + 1];
} cancel_arg;

static int cancel_fn(spool_tx *tx, void *arg, err *e)
{
    cancel_arg *c = arg;
    c->count = spool_tx_cancel(tx, c->id, e);
    return c->count < 0 ? -1 : 0;
}

static void cancels_pending_recipients_only(void **state)
{
    (void)state;
    cancel_arg arg;
    submit("a@example.org", "b@example.org", NULL, NULL, arg.id);
    err e;
    assert_int_equal(spool_write_sync(s, cancel_fn, &arg, &e), 0);
    assert_int_equal(arg.count, 2);
    spool_message m;
    assert_int_equal(spool_message_get(s, arg.id, 0, &m, &e), 0);
    assert_int_equal(m.rcpts[0].state, RCPT_CANCELLED);
    assert_int_equal(m.rcpts[1].state, RCPT_CANCELLED);
    spool_message_free(&m);
    assert_int_equal(spool_write_sync(s, cancel_fn, &arg, &e), 0);
    assert_int_equal(arg.count, 0); /* nothing left to cancel */
    snprintf(arg.id, sizeof arg.id, "%s", "01aaaaaaaaaaaaaaaaaaaaaaaa");
    assert_int_equal(spool_write_sync(s, cancel_fn, &arg, &e), -1);
    assert_int_equal(e.code, ERR_NOTFOUND);
}

static int idem_put_fn(spool_tx *tx, void *arg, err *e)
{
    (void)arg;
    return spool_tx_idem_put(tx, "k1", "order-1", "hash-a", 202, "{\"id\":\"x\"}", e);
}

static int idem_expire_fn(spool_tx *tx, void *arg, err *e)
{
    return spool_tx_idem_expire(tx, *(int64_t *)arg, e);
}

static void idempotency_records(void **state)
{
    (void)state;
    err e;
    char *hash = NULL, *resp = NULL;
    int status = 0;
    assert_int_equal(spool_idem_get(s, "k1", "order-1", 0, &hash, &status, &resp, &e), 0);
    assert_int_equal(spool_write_sync(s, idem_put_fn, NULL, &e), 0);
    assert_int_equal(spool_idem_get(s, "k1", "order-1", 0, &hash, &status, &resp, &e), 1);
    assert_string_equal(hash, "hash-a");
    assert_string_equal(resp, "{\"id\":\"x\"}");
    assert_int_equal(status, 202);
    free(hash);
    free(resp);
    /* per key, and older than the TTL means gone */
    assert_int_equal(spool_idem_get(s, "k2", "order-1", 0, &hash, &status, &resp, &e), 0);
    assert_int_equal(spool_idem_get(s, "k1", "order-1", clock_now_ms() + 1000, &hash, &status, &resp, &e), 0);
    int64_t before = clock_now_ms() + 1000;
    assert_int_equal(spool_write_sync(s, idem_expire_fn, &before, &e), 0);
    assert_int_equal(spool_idem_get(s, "k1", "order-1", 0, &hash, &status, &resp, &e), 0);
}

static int suppress_fn(spool_tx *tx, void *arg, err *e)
{
    (void)arg;
    return spool_tx_suppress(tx, "B@example.org", "", "complaint", e) ||
                   spool_tx_suppress(tx, "a@example.org", "", "manual", e) ||
                   spool_tx_suppress(tx, "c@example.org", "", "hard_bounce", e)
               ? -1
               : 0;
}

typedef struct sups {
    char emails[8][64];
    int n;
} sups;

static void collect_sup(void *arg, const spool_suppression *sp)
{
    sups *c = arg;
    snprintf(c->emails[c->n++], 64, "%s", sp->email);
}

static void suppression_pages(void **state)
{
    (void)state;
    err e;
    assert_int_equal(spool_write_sync(s, suppress_fn, NULL, &e), 0);
    sups got = {0};
    assert_int_equal(spool_suppressions(s, NULL, "", 2, collect_sup, &got, &e), 2);
    assert_string_equal(got.emails[0], "a@example.org");
    assert_string_equal(got.emails[1], "b@example.org");
    memset(&got, 0, sizeof got);
    assert_int_equal(spool_suppressions(s, NULL, "b@example.org", 2, collect_sup, &got, &e), 1);
    assert_string_equal(got.emails[0], "c@example.org");
    memset(&got, 0, sizeof got);
    assert_int_equal(spool_suppressions(s, "B@EXAMPLE.ORG", "", 5, collect_sup, &got, &e), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(filters_and_keyset_pages),
        cmocka_unit_test(cancels_pending_recipients_only),
        cmocka_unit_test(idempotency_records),
        cmocka_unit_test(suppression_pages),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
