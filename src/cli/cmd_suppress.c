/* cmd_suppress — `posthaste suppress add|remove|list`: the suppression list. */
#include "cli/cli.h"

#include "core/clock.h"
#include "submit/address.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char *const reasons[] = {"hard_bounce", "complaint", "unsubscribe", "manual"};

typedef struct sup_args {
    const char *conf, *scope, *reason;
    int json, limit;
    addr email;
    char scope_norm[256];
} sup_args;

static int valid_reason(const char *r)
{
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        if (strcmp(r, reasons[i]) == 0)
            return 1;
    return 0;
}

/* Options, then (for add/remove) exactly one address. */
static int parse(int argc, char **argv, sup_args *a, int want_email)
{
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"scope", required_argument, 0, 's'},
        {"reason", required_argument, 0, 'r'}, {"json", no_argument, 0, 'j'},
        {"limit", required_argument, 0, 'l'},  {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    memset(a, 0, sizeof *a);
    a->reason = "manual";
    a->limit = 1000;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': a->conf = optarg; break;
        case 's': a->scope = optarg; break;
        case 'r': a->reason = optarg; break;
        case 'j': a->json = 1; break;
        case 'l': a->limit = atoi(optarg); break;
        case 'h': cli_usage("suppress", 0); return 1;
        default: return -1;
        }
    }
    if (!valid_reason(a->reason)) {
        cli_error("--reason: must be hard_bounce, complaint, unsubscribe or manual");
        return -1;
    }
    if (a->limit < 1 || a->limit > 1000000) {
        cli_error("--limit: must be from 1 to 1000000");
        return -1;
    }
    err e;
    if (a->scope && *a->scope && addr_parse_domain(a->scope, strlen(a->scope), a->scope_norm, &e)) {
        cli_error("--scope: %s", e.msg);
        return -1;
    }
    if (!want_email)
        return optind == argc ? 0 : (cli_error("unexpected argument '%s'", argv[optind]), -1);
    if (optind != argc - 1) {
        cli_error("give exactly one email address");
        return -1;
    }
    if (addr_parse(argv[optind], strlen(argv[optind]), 1, &a->email, &e)) {
        cli_error("'%s': %s", argv[optind], e.msg);
        return -1;
    }
    return 0;
}

typedef struct sup_op {
    sup_args *a;
    int add;
} sup_op;

static int sup_fn(spool_tx *tx, void *arg, err *e)
{
    sup_op *op = arg;
    if (op->add)
        return spool_tx_suppress(tx, op->a->email.full, op->a->scope_norm, op->a->reason, e);
    return spool_tx_unsuppress(tx, op->a->email.full, op->a->scope_norm, e);
}

static int change(sup_args *a, int add)
{
    spool *s = cli_spool_for(a->conf);
    if (!s)
        return EXIT_RUNTIME;
    sup_op op = {a, add};
    err e;
    int rc = spool_write_sync(s, sup_fn, &op, &e);
    spool_close(s);
    if (rc) {
        cli_error("%s", e.msg);
        return EXIT_RUNTIME;
    }
    printf("%s %s%s%s\n", add ? "suppressed" : "removed", a->email.full, *a->scope_norm ? " for " : "",
           a->scope_norm);
    return EXIT_OK;
}

static void print_one(void *arg, const spool_suppression *sp)
{
    json_t *arr = arg;
    char when[40];
    clock_rfc3339(sp->created_ms, when, sizeof when);
    if (arr)
        json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:s}", "email", sp->email, "scope", sp->scope ? sp->scope : "",
                                             "reason", sp->reason, "created", when));
    else
        printf("%-40s %-12s %-20s %s\n", sp->email, sp->reason, sp->scope && *sp->scope ? sp->scope : "(all)", when);
}

static int list(sup_args *a)
{
    spool *s = cli_spool_for(a->conf);
    if (!s)
        return EXIT_RUNTIME;
    json_t *arr = a->json ? json_array() : NULL;
    err e;
    int n = spool_suppressions(s, NULL, "", a->limit, print_one, arr, &e);
    spool_close(s);
    return cli_finish_list(n, &e, arr);
}

int cmd_suppress(int argc, char **argv)
{
    int status;
    const char *sub = cli_subcommand(argc, argv, "suppress", "add, remove, list", &status);
    if (!sub)
        return status;
    int add = strcmp(sub, "add") == 0, remove = strcmp(sub, "remove") == 0;
    if (!add && !remove && strcmp(sub, "list") != 0) {
        cli_error("suppress: unknown subcommand '%s'", sub);
        return cli_usage("suppress", 1);
    }
    sup_args a;
    int p = parse(argc - 1, argv + 1, &a, add || remove);
    if (p)
        return p > 0 ? EXIT_OK : EXIT_USAGE;
    return add || remove ? change(&a, add) : list(&a);
}
