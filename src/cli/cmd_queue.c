/* cmd_queue — `posthaste queue …`: read and manage the spool. */
#include "cli/cli.h"

#include "core/clock.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

typedef struct queue_args {
    const char *conf;
    int json, raw, all, limit, state;
    const char *id;
} queue_args;

static int parse_args(int argc, char **argv, queue_args *a, int want_id)
{
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"json", no_argument, 0, 'j'},
        {"raw", no_argument, 0, 'r'},          {"all", no_argument, 0, 'a'},
        {"limit", required_argument, 0, 'l'},  {"state", required_argument, 0, 's'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0},
    };
    memset(a, 0, sizeof *a);
    a->limit = 100;
    a->state = -1;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': a->conf = optarg; break;
        case 'j': a->json = 1; break;
        case 'r': a->raw = 1; break;
        case 'a': a->all = 1; break;
        case 'l': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (end == optarg || *end || n < 1 || n > 1000000) {
                cli_error("--limit: '%s' is not a number from 1 to 1000000", optarg);
                return -1;
            }
            a->limit = (int)n;
            break;
        }
        case 's':
            a->state = spool_state_parse(optarg);
            if (a->state < 0) {
                cli_error("--state: unknown state '%s'", optarg);
                return -1;
            }
            break;
        case 'h': cli_usage("queue", 0); return 1;
        default: return -1;
        }
    }
    int rest = argc - optind;
    if (want_id && rest == 1 && !a->all) {
        a->id = argv[optind];
        return 0;
    }
    if (want_id == 2 && rest == 0 && a->all)
        return 0;
    if (!want_id && rest == 0)
        return 0;
    cli_error(want_id ? "give exactly one message id" : "unexpected argument '%s'",
              rest > 0 ? argv[optind] : "");
    return -1;
}

static json_t *rcpt_json(const spool_rcpt *r)
{
    char next[40], updated[40];
    clock_rfc3339(r->next_at_ms, next, sizeof next);
    clock_rfc3339(r->updated_ms, updated, sizeof updated);
    return json_pack("{s:I,s:s,s:s,s:i,s:s,s:s,s:s?,s:s?}", "rcpt_id", (json_int_t)r->id, "email", r->addr,
                     "state", spool_state_name(r->state), "attempts", r->attempts, "next_attempt",
                     next, "updated", updated, "last_reply", r->last_reply, "last_host", r->last_host);
}

static json_t *message_json(const spool_message *m)
{
    char created[40];
    clock_rfc3339(m->created_ms, created, sizeof created);
    json_t *rcpts = json_array();
    for (size_t i = 0; i < m->nrcpts; i++)
        json_array_append_new(rcpts, rcpt_json(&m->rcpts[i]));
    json_t *meta = m->meta ? json_loads(m->meta, 0, NULL) : NULL;
    return json_pack("{s:s,s:s,s:s,s:s,s:s?,s:I,s:o,s:o?}", "id", m->id, "created", created,
                     "mail_from", m->mail_from, "ingress", m->ingress, "key_id", m->key_id, "size",
                     (json_int_t)m->len, "recipients", rcpts, "meta", meta);
}

static void print_line(void *arg, const spool_message *m)
{
    json_t *arr = arg;
    if (arr) {
        json_array_append_new(arr, message_json(m));
        return;
    }
    char created[40];
    clock_rfc3339(m->created_ms, created, sizeof created);
    printf("%s  %s  %7zu  <%s>\n", m->id, created, m->len, m->mail_from);
    for (size_t i = 0; i < m->nrcpts; i++) {
        const spool_rcpt *r = &m->rcpts[i];
        printf("    %-10s %s%s%s\n", spool_state_name(r->state), r->addr, r->last_reply ? "  " : "",
               r->last_reply ? r->last_reply : "");
    }
}

static void dump_json(json_t *j)
{
    json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    putchar('\n');
}

static int with_spool(const queue_args *a, spool **out)
{
    *out = cli_spool_for(a->conf);
    return *out ? EXIT_OK : EXIT_RUNTIME;
}

static int q_list(const queue_args *a)
{
    spool *s;
    if (with_spool(a, &s))
        return EXIT_RUNTIME;
    json_t *arr = a->json ? json_array() : NULL;
    err e;
    int n = spool_list(s, a->state, a->limit, print_line, arr, &e);
    spool_close(s);
    if (n < 0) {
        cli_error("%s", e.msg);
        json_decref(arr);
        return EXIT_RUNTIME;
    }
    if (arr) {
        dump_json(arr);
        json_decref(arr);
    }
    return EXIT_OK;
}

static void add_event(void *arg, const spool_event *ev)
{
    char ts[40];
    clock_rfc3339(ev->ts_ms, ts, sizeof ts);
    json_t *data = ev->data ? json_loads(ev->data, 0, NULL) : NULL;
    json_array_append_new(arg, json_pack("{s:I,s:s,s:s,s:s?,s:o?}", "id", (json_int_t)ev->id, "time", ts,
                                         "type", ev->type, "recipient", ev->rcpt, "data", data));
}

static int q_show(const queue_args *a)
{
    spool *s;
    if (with_spool(a, &s))
        return EXIT_RUNTIME;
    spool_message m;
    err e;
    int rc = EXIT_OK;
    if (spool_message_get(s, a->id, a->raw || a->json, &m, &e)) {
        cli_error("%s", e.msg);
        spool_close(s);
        return EXIT_RUNTIME;
    }
    if (a->raw) {
        fwrite(m.data, 1, m.len, stdout);
    } else if (a->json) {
        json_t *j = message_json(&m);
        json_t *events = json_array();
        if (spool_events(s, 0, m.id, NULL, 10000, add_event, events, &e) < 0)
            cli_error("%s", e.msg), rc = EXIT_RUNTIME;
        json_object_set_new(j, "events", events);
        json_object_set_new(j, "data", json_stringn_nocheck(m.data, m.len));
        dump_json(j);
        json_decref(j);
    } else {
        print_line(NULL, &m);
        printf("    (ingress %s, key %s; --raw prints the message)\n", m.ingress,
               m.key_id ? m.key_id : "-");
    }
    spool_message_free(&m);
    spool_close(s);
    return rc;
}

typedef struct mutate {
    const char *id;
    int count;
} mutate;

static int retry_fn(spool_tx *tx, void *arg, err *e)
{
    mutate *m = arg;
    m->count = spool_tx_retry_now(tx, m->id, e);
    return m->count < 0 ? -1 : 0;
}

static int delete_fn(spool_tx *tx, void *arg, err *e)
{
    mutate *m = arg;
    return spool_tx_delete_message(tx, m->id, e);
}

static int q_mutate(const queue_args *a, spool_write_fn fn, const char *what)
{
    spool *s;
    if (with_spool(a, &s))
        return EXIT_RUNTIME;
    mutate m = {.id = a->id};
    err e;
    int rc = spool_write_sync(s, fn, &m, &e);
    spool_close(s);
    if (rc) {
        cli_error("%s", e.msg);
        return EXIT_RUNTIME;
    }
    if (fn == retry_fn)
        printf("%s: %d recipient(s) due now\n", what, m.count);
    else
        printf("%s: %s\n", what, a->id);
    return EXIT_OK;
}

static void print_counts(const int64_t counts[RCPT_STATE_COUNT], int json)
{
    if (json) {
        json_t *o = json_object();
        for (int i = 0; i < RCPT_STATE_COUNT; i++)
            json_object_set_new(o, spool_state_name(i), json_integer(counts[i]));
        dump_json(o);
        json_decref(o);
        return;
    }
    for (int i = 0; i < RCPT_STATE_COUNT; i++)
        printf("%-10s %lld\n", spool_state_name(i), (long long)counts[i]);
}

static int q_stats(const queue_args *a)
{
    spool *s;
    if (with_spool(a, &s))
        return EXIT_RUNTIME;
    int64_t counts[RCPT_STATE_COUNT];
    err e;
    int rc = spool_counts(s, counts, &e);
    spool_close(s);
    if (rc) {
        cli_error("%s", e.msg);
        return EXIT_RUNTIME;
    }
    print_counts(counts, a->json);
    return EXIT_OK;
}

static int q_check(const queue_args *a)
{
    spool *s;
    if (with_spool(a, &s))
        return EXIT_RUNTIME;
    err e;
    int rc = spool_check(s, &e);
    spool_close(s);
    if (rc) {
        cli_error("%s", e.msg);
        return EXIT_RUNTIME;
    }
    puts("ok");
    return EXIT_OK;
}

int cmd_queue(int argc, char **argv)
{
    int status;
    const char *sub = cli_subcommand(argc, argv, "queue", "list, show, retry, delete, flush, stats, check", &status);
    if (!sub)
        return status;
    queue_args a;
    int want = strcmp(sub, "show") == 0 || strcmp(sub, "delete") == 0 ? 1
               : strcmp(sub, "retry") == 0                            ? 2
                                                                      : 0;
    static const char *const known[] = {"list", "show", "retry", "delete", "flush", "stats", "check"};
    int found = 0;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        found |= strcmp(sub, known[i]) == 0;
    if (!found) {
        cli_error("queue: unknown subcommand '%s'", sub);
        return cli_usage("queue", 1);
    }
    int p = parse_args(argc - 1, argv + 1, &a, want);
    if (p)
        return p > 0 ? EXIT_OK : EXIT_USAGE;
    if (strcmp(sub, "list") == 0)
        return q_list(&a);
    if (strcmp(sub, "show") == 0)
        return q_show(&a);
    if (strcmp(sub, "retry") == 0 || strcmp(sub, "flush") == 0)
        return q_mutate(&a, retry_fn, "retry");
    if (strcmp(sub, "delete") == 0)
        return q_mutate(&a, delete_fn, "deleted");
    if (strcmp(sub, "stats") == 0)
        return q_stats(&a);
    return q_check(&a);
}
