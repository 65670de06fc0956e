/* Unit tests for the spool: storage, group commit, limits, the due index. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <event2/event.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "spool/spool.h"

static char dir[128], path[160];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/ph-test-spool-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/spool.db", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

static spool *open_spool(int64_t max_size)
{
    spool_opts o = {.path = path, .synchronous_full = 1, .max_size = max_size, .commit_batch = 512,
                    .busy_timeout_ms = 2000};
    err e;
    spool *s = spool_open(&o, &e);
    if (!s)
        fail_msg("spool_open: %s", e.msg);
    return s;
}

static const char *rcpts2[] = {"a@example.com", "b@example.org"};
static const char body[] = "From: x@example.com\r\nSubject: hi\r\n\r\nhello\r\n";

static spool_submission sample(void)
{
    spool_submission m = {.mail_from = "x@example.com", .rcpts = rcpts2, .nrcpts = 2,
                          .data = body, .len = sizeof body - 1, .ingress = "cli"};
    return m;
}

static void submit_and_read_back(void **state)
{
    (void)state;
    spool *s = open_spool(0);
    spool_submission m = sample();
    unsigned char sup[2] = {0, 1};
    m.suppressed = sup;
    m.meta = "{\"tags\":[\"t1\"]}";
    char id[ID_MSG_LEN + 1];
    err e;
    assert_int_equal(spool_submit_sync(s, &m, id, &e), 0);
    assert_int_equal(strlen(id), ID_MSG_LEN);

    spool_message got;
    assert_int_equal(spool_message_get(s, id, 1, &got, &e), 0);
    assert_string_equal(got.mail_from, "x@example.com");
    assert_int_equal(got.len, sizeof body - 1);
    assert_memory_equal(got.data, body, got.len);
    assert_int_equal(got.nrcpts, 2);
    assert_string_equal(got.rcpts[0].addr, "a@example.com");
    assert_string_equal(got.rcpts[0].domain, "example.com");
    assert_int_equal(got.rcpts[0].state, RCPT_QUEUED);
    assert_int_equal(got.rcpts[1].state, RCPT_SUPPRESSED);
    assert_string_equal(got.meta, "{\"tags\":[\"t1\"]}");
    spool_message_free(&got);

    assert_int_equal(spool_message_get(s, "nosuchid", 0, &got, &e), -1);
    assert_int_equal(e.code, ERR_NOTFOUND);

    int64_t counts[RCPT_STATE_COUNT];
    assert_int_equal(spool_counts(s, counts, &e), 0);
    assert_int_equal(counts[RCPT_QUEUED], 1);
    assert_int_equal(counts[RCPT_SUPPRESSED], 1);
    assert_int_equal(spool_check(s, &e), 0);
    spool_close(s);
}

/* ---- group commit on an event loop ------------------------------------ */

typedef struct gc_state {
    int done, failed;
    struct event_base *base;
    int total;
} gc_state;

static void on_submitted(void *arg, const char *id, const err *e)
{
    gc_state *g = arg;
    if (!id || e)
        g->failed++;
    if (++g->done == g->total)
        event_base_loopbreak(g->base);
}

static void concurrent_submissions_share_commits(void **state)
{
    (void)state;
    spool *s = open_spool(0);
    struct event_base *base = event_base_new();
    err e;
    assert_int_equal(spool_start_writer(s, base, &e), 0);
    gc_state g = {.base = base, .total = 400};
    spool_submission m = sample();
    for (int i = 0; i < g.total; i++)
        assert_int_equal(spool_submit(s, &m, on_submitted, &g), 0);
    struct timeval limit = {30, 0};
    event_base_loopexit(base, &limit);
    event_base_dispatch(base);
    assert_int_equal(g.done, g.total);
    assert_int_equal(g.failed, 0);
    uint64_t commits, writes;
    spool_commit_stats(s, &commits, &writes);
    assert_int_equal(writes, (uint64_t)g.total);
    /* 400 submissions queued at once must not take 400 fsyncs. */
    assert_true(commits < (uint64_t)g.total / 4);
    int64_t counts[RCPT_STATE_COUNT];
    assert_int_equal(spool_counts(s, counts, &e), 0);
    assert_int_equal(counts[RCPT_QUEUED], 2 * 400); /* two recipients each */
    spool_close(s);
    event_base_free(base);
}

/* ---- one failing write does not fail its neighbours -------------------- */

typedef struct tally {
    int ok, failed;
    struct event_base *base;
} tally;

typedef struct wreq {
    const char *type; /* event type to write, NULL = fail */
    tally *t;
} wreq;

static int write_fn(spool_tx *tx, void *arg, err *e)
{
    wreq *w = arg;
    if (w->type)
        return spool_tx_event(tx, NULL, NULL, w->type, NULL, e);
    /* Write something, then fail: the savepoint must undo the write. */
    spool_tx_event(tx, NULL, NULL, "should-vanish", NULL, e);
    err_set(e, ERR_INVALID, "refused on purpose");
    return -1;
}

static void write_done(void *arg, const err *e)
{
    wreq *w = arg;
    if (e)
        w->t->failed++;
    else
        w->t->ok++;
    if (w->t->ok + w->t->failed == 3)
        event_base_loopbreak(w->t->base);
}

static void count_event(void *arg, const spool_event *ev)
{
    int *n = arg;
    *n += strcmp(ev->type, "should-vanish") == 0 ? 1000 : 1;
}

static void failing_write_is_isolated(void **state)
{
    (void)state;
    spool *s = open_spool(0);
    struct event_base *base = event_base_new();
    err e;
    assert_int_equal(spool_start_writer(s, base, &e), 0);
    tally t = {.base = base};
    wreq reqs[3] = {{"first", &t}, {NULL, &t}, {"third", &t}};
    for (int i = 0; i < 3; i++)
        assert_int_equal(spool_write(s, write_fn, write_done, &reqs[i]), 0);
    struct timeval limit = {10, 0};
    event_base_loopexit(base, &limit);
    event_base_dispatch(base);
    assert_int_equal(t.ok, 2);
    assert_int_equal(t.failed, 1);
    int n = 0;
    assert_true(spool_events(s, 0, NULL, NULL, 100, count_event, &n, &e) >= 0);
    assert_int_equal(n, 2);
    spool_close(s);
    event_base_free(base);
}

/* ---- spool full ----------------------------------------------------------- */

static void full_spool_fails_cleanly(void **state)
{
    (void)state;
    spool *s = open_spool(256 * 1024);
    static char big[64 * 1024];
    memset(big, 'x', sizeof big);
    spool_submission m = sample();
    m.data = big;
    m.len = sizeof big;
    err e;
    char id[ID_MSG_LEN + 1];
    int stored = 0, rc = 0;
    for (int i = 0; i < 20 && rc == 0; i++) {
        rc = spool_submit_sync(s, &m, id, &e);
        stored += rc == 0;
    }
    assert_int_equal(rc, -1);
    assert_int_equal(e.code, ERR_FULL);
    assert_non_null(strstr(e.msg, "spool full"));
    assert_true(stored >= 1);
    /* Nothing half-written: every stored message is whole, reads still work. */
    int64_t counts[RCPT_STATE_COUNT];
    assert_int_equal(spool_counts(s, counts, &e), 0);
    assert_int_equal(counts[RCPT_QUEUED], 2 * stored);
    assert_int_equal(spool_check(s, &e), 0);
    /* A small write that fits still goes through. */
    m.data = body;
    m.len = sizeof body - 1;
    m.nrcpts = 1;
    (void)spool_submit_sync(s, &m, id, &e);
    spool_close(s);
}

/* ---- the due scan ----------------------------------------------------------- */

typedef struct seen {
    int n;
    char addrs[16][64];
} seen;

static void collect(void *arg, const spool_rcpt *r)
{
    seen *sn = arg;
    if (sn->n < 16)
        snprintf(sn->addrs[sn->n], sizeof sn->addrs[0], "%s", r->addr);
    sn->n++;
}

static void due_scan_with_cursor(void **state)
{
    (void)state;
    spool *s = open_spool(0);
    err e;
    char id[ID_MSG_LEN + 1];
    const char *one[1];
    char addr[8][32];
    for (int i = 0; i < 6; i++) {
        snprintf(addr[i], sizeof addr[i], "r%d@example.com", i);
        one[0] = addr[i];
        spool_submission m = {.mail_from = "", .rcpts = one, .nrcpts = 1, .data = body,
                              .len = sizeof body - 1, .ingress = "cli"};
        if (i == 5)
            m.not_before_ms = clock_now_ms() + 3600 * 1000; /* scheduled: not due */
        assert_int_equal(spool_submit_sync(s, &m, id, &e), 0);
    }
    spool_cursor cur = {0, 0};
    seen sn = {0};
    int64_t now = clock_now_ms() + 1;
    assert_int_equal(spool_due(s, now, &cur, 3, collect, &sn, &e), 3);
    assert_int_equal(spool_due(s, now, &cur, 3, collect, &sn, &e), 2); /* resumes after r2 */
    assert_int_equal(spool_due(s, now, &cur, 3, collect, &sn, &e), 0);
    assert_int_equal(sn.n, 5);
    for (int i = 0; i < 5; i++)
        assert_string_equal(sn.addrs[i], addr[i]);
    assert_true(spool_next_due(s) > 0);
    spool_close(s);
}

static void plan_detail(void *arg, int argc, char **argv)
{
    (void)argc;
    char *out = arg;
    strncat(out, argv[3] ? argv[3] : "", 1000 - strlen(out));
    strncat(out, "\n", 1000 - strlen(out));
}

static int plan_row(void *arg, int argc, char **argv, char **cols)
{
    (void)cols;
    plan_detail(arg, argc, argv);
    return 0;
}

/* The scheduler's query must use the partial index, never scan the table:
   that is what keeps dequeue cost flat from 1 to 1,000,000 messages. */
static void due_scan_uses_partial_index(void **state)
{
    (void)state;
    spool *s = open_spool(0);
    spool_close(s);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char plan[1024] = "";
    int rc = sqlite3_exec(db,
                          "EXPLAIN QUERY PLAN SELECT r.id FROM recipients r JOIN messages m ON m.id = r.msg "
                          "WHERE r.state IN (0, 1, 2) AND r.next_at <= 5 AND (r.next_at, r.id) > (0, 0) "
                          "ORDER BY r.next_at, r.id LIMIT 10",
                          plan_row, plan, NULL);
    assert_int_equal(rc, SQLITE_OK);
    sqlite3_close(db);
    assert_non_null(strstr(plan, "rcpt_due"));
    assert_null(strstr(plan, "SCAN r"));
    assert_null(strstr(plan, "TEMP B-TREE"));
}

static void recover_requeues_sending(void **state)
{
    (void)state;
    spool *s = open_spool(0);
    err e;
    char id[ID_MSG_LEN + 1];
    spool_submission m = sample();
    assert_int_equal(spool_submit_sync(s, &m, id, &e), 0);
    spool_close(s);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE recipients SET state = 1", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    s = open_spool(0);
    assert_int_equal(spool_recover(s, &e), 2);
    int64_t counts[RCPT_STATE_COUNT];
    assert_int_equal(spool_counts(s, counts, &e), 0);
    assert_int_equal(counts[RCPT_QUEUED], 2);
    assert_int_equal(counts[RCPT_SENDING], 0);
    spool_close(s);
}

static int suppress_fn(spool_tx *tx, void *arg, err *e)
{
    (void)arg;
    return spool_tx_suppress(tx, "Bob@Example.com", "", "manual", e) ||
           spool_tx_suppress(tx, "carol@example.com", "shop.example", "unsubscribe", e);
}

static void suppressions_scoped(void **state)
{
    (void)state;
    spool *s = open_spool(0);
    err e;
    assert_int_equal(spool_write_sync(s, suppress_fn, NULL, &e), 0);
    char reason[32];
    assert_int_equal(spool_is_suppressed(s, "bob@example.com", "any.example", reason, sizeof reason, &e), 1);
    assert_string_equal(reason, "manual");
    assert_int_equal(spool_is_suppressed(s, "carol@example.com", "shop.example", reason, sizeof reason, &e), 1);
    assert_string_equal(reason, "unsubscribe");
    assert_int_equal(spool_is_suppressed(s, "carol@example.com", "other.example", NULL, 0, &e), 0);
    assert_int_equal(spool_is_suppressed(s, "dave@example.com", "", NULL, 0, &e), 0);
    spool_close(s);
}

static void schema_is_versioned(void **state)
{
    (void)state;
    spool *s = open_spool(0);
    spool_close(s);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    assert_true(version >= 2);
    /* A spool from a newer posthaste is refused, not damaged. */
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 9999", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    spool_opts o = {.path = path, .synchronous_full = 1};
    err e;
    assert_null(spool_open(&o, &e));
    assert_non_null(strstr(e.msg, "newer"));
}

int main(void)
{
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(submit_and_read_back, setup, teardown),
        cmocka_unit_test_setup_teardown(concurrent_submissions_share_commits, setup, teardown),
        cmocka_unit_test_setup_teardown(failing_write_is_isolated, setup, teardown),
        cmocka_unit_test_setup_teardown(full_spool_fails_cleanly, setup, teardown),
        cmocka_unit_test_setup_teardown(due_scan_with_cursor, setup, teardown),
        cmocka_unit_test_setup_teardown(due_scan_uses_partial_index, setup, teardown),
        cmocka_unit_test_setup_teardown(recover_requeues_sending, setup, teardown),
        cmocka_unit_test_setup_teardown(suppressions_scoped, setup, teardown),
        cmocka_unit_test_setup_teardown(schema_is_versioned, setup, teardown),
    };
    return cmocka_run_group_tests_name("spool", tests, NULL, NULL);
}
