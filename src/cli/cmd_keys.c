/* cmd_keys — `posthaste keys create|list|revoke`. */
#include "cli/cli.h"

#include "core/buf.h"
#include "core/clock.h"
#include "submit/keys.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Join repeated options into "a,b,c"; returns -1 when too long. */
static int join_opt(buf *b, const char *v)
{
    if (b->len && buf_appendc(b, ','))
        return -1;
    return buf_appends(b, v);
}

static int parse_rate(const char *s, double *out)
{
    char *end;
    double r = strtod(s, &end);
    if (end == s || r < 0 || r > 1e6)
        return -1;
    if (*end && strcmp(end, "/s") != 0)
        return -1;
    *out = r;
    return 0;
}

static int keys_create_cmd(int argc, char **argv)
{
    static const struct option opts[] = {
        {"name", required_argument, 0, 'n'},          {"scope", required_argument, 0, 's'},
        {"sender-domain", required_argument, 0, 'd'}, {"allow-ip", required_argument, 0, 'i'},
        {"rate", required_argument, 0, 'r'},          {"require-signing", no_argument, 0, 'S'},
        {"bulk", no_argument, 0, 'B'},
        {"config", required_argument, 0, 'c'},        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *name = NULL, *conf = NULL;
    keys_spec spec = {0};
    buf domains, ips;
    buf_init(&domains, 4096);
    buf_init(&ips, 4096);
    int rc = EXIT_USAGE, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'n': name = optarg; break;
        case 's': {
            int bit = keys_parse_scope(optarg);
            if (bit < 0) {
                cli_error("--scope: unknown scope '%s' (send, read, admin)", optarg);
                goto out;
            }
            spec.scopes |= bit;
            break;
        }
        case 'd':
            if (!*optarg || strchr(optarg, ',') || join_opt(&domains, optarg)) {
                cli_error("--sender-domain: bad domain '%s'", optarg);
                goto out;
            }
            break;
        case 'i':
            if (join_opt(&ips, optarg)) {
                cli_error("--allow-ip: list too long");
                goto out;
            }
            break;
        case 'r':
            if (parse_rate(optarg, &spec.rate)) {
                cli_error("--rate: '%s' is not a rate like 10/s", optarg);
                goto out;
            }
            break;
        case 'S': spec.require_signing = 1; break;
        case 'B': spec.bulk = 1; break;
        case 'c': conf = optarg; break;
        case 'h': rc = cli_usage("keys", 0); goto out;
        default: goto out;
        }
    }
    if (!name || !*name) {
        cli_error("keys create: --name is required");
        goto out;
    }
    if (optind < argc) {
        cli_error("keys create: unexpected argument '%s'", argv[optind]);
        goto out;
    }
    err e;
    if (ips.len && keys_check_cidrs(buf_cstr(&ips), &e)) {
        cli_error("--allow-ip: %s", e.msg);
        goto out;
    }
    rc = EXIT_RUNTIME;
    config *cfg = cli_load_config(conf);
    if (!cfg)
        goto out;
    spool *s = cli_open_spool(cfg);
    if (s) {
        spec.name = name;
        spec.sender_domains = buf_cstr(&domains);
        spec.allow_ips = buf_cstr(&ips);
        char token[KEYS_TOKEN_MAX];
        spool_key k;
        if (keys_create(s, &spec, token, &k, &e) == 0) {
            char scopes[64];
            keys_scopes_str(k.scopes, scopes, sizeof scopes);
            printf("%s\n", token);
            fprintf(stderr, "created key %s (%s) scopes=%s — store it now: it is not shown again\n",
                    k.id, name, scopes);
            spool_key_free(&k);
            rc = EXIT_OK;
        } else {
            cli_error("%s", e.msg);
        }
        spool_close(s);
    }
    cfg_free(cfg);
out:
    buf_free(&domains);
    buf_free(&ips);
    return rc;
}

static void print_key(void *arg, const spool_key *k)
{
    json_t *arr = arg;
    char scopes[64], created[40];
    keys_scopes_str(k->scopes, scopes, sizeof scopes);
    clock_rfc3339(k->created_ms, created, sizeof created);
    if (arr) {
        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:s,s:s,s:s,s:f,s:b,s:b,s:s,s:b}", "id", k->id, "name", k->name, "scopes",
                           scopes, "sender_domains", k->sender_domains, "allow_ips", k->allow_ips,
                           "rate", k->rate, "require_signing", k->require_signing, "bulk", k->bulk,
                           "created", created, "revoked", k->revoked_ms != 0));
        return;
    }
    printf("%-12s  %-20s  %-16s  %-8s  %s%s\n", k->id, k->name, scopes,
           k->revoked_ms ? "revoked" : "active", created,
           *k->sender_domains ? "" : "  (any sender domain)");
}

static int keys_list_cmd(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, 0, 'j'}, {"config", required_argument, 0, 'c'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    const char *conf = NULL;
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (c == 'j')
            json = 1;
        else if (c == 'c')
            conf = optarg;
        else if (c == 'h')
            return cli_usage("keys", 0);
        else
            return EXIT_USAGE;
    }
    spool *s = cli_spool_for(conf);
    if (!s)
        return EXIT_RUNTIME;
    json_t *arr = json ? json_array() : NULL;
    err e;
    int n = spool_key_list(s, print_key, arr, &e);
    spool_close(s);
    if (n == 0 && !arr)
        fprintf(stderr, "no keys yet: posthaste keys create --name NAME\n");
    return cli_finish_list(n, &e, arr);
}

static int keys_revoke_cmd(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *conf = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (c == 'c')
            conf = optarg;
        else if (c == 'h')
            return cli_usage("keys", 0);
        else
            return EXIT_USAGE;
    }
    if (optind != argc - 1) {
        cli_error("keys revoke: give exactly one key id");
        return EXIT_USAGE;
    }
    const char *id = argv[optind];
    spool *s = cli_spool_for(conf);
    if (!s)
        return EXIT_RUNTIME;
    err e;
    int r = spool_key_revoke(s, id, &e);
    spool_close(s);
    if (r < 0) {
        cli_error("%s", e.msg);
        return EXIT_RUNTIME;
    }
    if (r == 0) {
        cli_error("no active key with id '%s'", id);
        return EXIT_RUNTIME;
    }
    printf("revoked %s\n", id);
    return EXIT_OK;
}

int cmd_keys(int argc, char **argv)
{
    int status;
    const char *sub = cli_subcommand(argc, argv, "keys", "create, list, revoke", &status);
    if (!sub)
        return status;
    if (strcmp(sub, "create") == 0)
        return keys_create_cmd(argc - 1, argv + 1);
    if (strcmp(sub, "list") == 0)
        return keys_list_cmd(argc - 1, argv + 1);
    if (strcmp(sub, "revoke") == 0)
        return keys_revoke_cmd(argc - 1, argv + 1);
    cli_error("keys: unknown subcommand '%s'", sub);
    return cli_usage("keys", 1);
}
