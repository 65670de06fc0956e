/* cmd_dkim — `posthaste dkim keygen|show`: DKIM keys and their DNS records. */
#include "cli/cli.h"

#include "core/buf.h"
#include "core/mem.h"
#include "submit/address.h"
#include "submit/dkim.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SUFFIX_MAX 300

/* A selector is one or more DNS labels (RFC 6376 3.1): letters, digits,
   hyphens, dots; at most 63 octets per label. */
static int valid_selector(const char *s)
{
    size_t label = 0, n = strlen(s);
    if (n == 0 || n > 200 || s[0] == '.' || s[n - 1] == '.')
        return 0;
    for (const char *p = s; *p; p++) {
        int ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                 *p == '-' || *p == '_' || *p == '.';
        if (!ok)
            return 0;
        label = *p == '.' ? 0 : label + 1;
        if (label > 63 || (*p == '.' && p[1] == '.'))
            return 0;
    }
    return 1;
}

/* Print the record of one key file; 0 or -1 (error printed). */
static int print_record(const char *path, const char *selector, const char *domain)
{
    buf value, line;
    buf_init(&value, 8192);
    buf_init(&line, 16384);
    enum dkimsig_alg alg;
    err e;
    int rc = -1;
    if (dkimsig_txt_value(path, &alg, &value, &e))
        cli_error("%s", e.msg);
    else if (dkimsig_txt_zone_line(selector, domain, buf_cstr(&value), &line))
        cli_error("%s: record too long", path);
    else {
        printf("%s\n", buf_cstr(&line));
        rc = 0;
    }
    buf_free(&value);
    buf_free(&line);
    return rc;
}

static char *key_dir(const config *cfg)
{
    return cfg_spool_path(cfg, "dkim");
}

static int make_key_dir(const config *cfg, char **dir)
{
    *dir = key_dir(cfg);
    if ((mkdir(cfg->spool_dir, 0700) < 0 && errno != EEXIST) ||
        (mkdir(*dir, 0700) < 0 && errno != EEXIST)) {
        cli_error("cannot create %s: %s", *dir, strerror(errno));
        return -1;
    }
    return 0;
}

typedef struct keygen_args {
    const char *domain, *selector, *alg, *out, *conf;
    int bits;
} keygen_args;

static int parse_keygen(int argc, char **argv, keygen_args *a)
{
    static const struct option opts[] = {
        {"domain", required_argument, 0, 'd'}, {"selector", required_argument, 0, 's'},
        {"alg", required_argument, 0, 'a'},    {"bits", required_argument, 0, 'b'},
        {"out", required_argument, 0, 'o'},    {"config", required_argument, 0, 'c'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0},
    };
    *a = (keygen_args){.alg = "rsa", .bits = 2048};
    int c;
    char *end;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': a->domain = optarg; break;
        case 's': a->selector = optarg; break;
        case 'a': a->alg = optarg; break;
        case 'o': a->out = optarg; break;
        case 'c': a->conf = optarg; break;
        case 'b':
            a->bits = (int)strtol(optarg, &end, 10);
            if (*end || end == optarg) {
                cli_error("--bits '%s' is not a number", optarg);
                return -1;
            }
            break;
        case 'h': return 1;
        default: return -1;
        }
    }
    if (!a->domain || !a->selector) {
        cli_error("dkim keygen needs --domain and --selector");
        return -1;
    }
    if (strcmp(a->alg, "rsa") != 0 && strcmp(a->alg, "ed25519") != 0) {
        cli_error("--alg '%s': must be rsa or ed25519", a->alg);
        return -1;
    }
    if (!valid_selector(a->selector)) {
        cli_error("--selector '%s': must be DNS labels (letters, digits, '-', '_', '.')", a->selector);
        return -1;
    }
    return 0;
}

static int dkim_keygen_cmd(int argc, char **argv)
{
    keygen_args a;
    int p = parse_keygen(argc, argv, &a);
    if (p)
        return cli_usage("dkim", p < 0);
    char domain[256];
    err e;
    if (addr_parse_domain(a.domain, strlen(a.domain), domain, &e)) {
        cli_error("--domain '%s': %s", a.domain, e.msg);
        return EXIT_USAGE;
    }
    config *cfg = cli_load_config(a.conf);
    if (!cfg)
        return EXIT_RUNTIME;
    char *dir = NULL, *path = NULL;
    int rc = EXIT_RUNTIME;
    if (!a.out && make_key_dir(cfg, &dir))
        goto out;
    if (a.out) {
        path = xstrdup(a.out);
    } else {
        size_t n = strlen(dir) + strlen(a.selector) + strlen(domain) + 32;
        path = xmalloc(n);
        snprintf(path, n, "%s/%s._domainkey.%s.pem", dir, a.selector, domain);
    }
    enum dkimsig_alg alg = strcmp(a.alg, "rsa") == 0 ? DKIM_ALG_RSA : DKIM_ALG_ED25519;
    if (dkimsig_keygen(path, alg, a.bits, &e)) {
        cli_error("%s", e.msg);
        rc = e.code == ERR_INVALID ? EXIT_USAGE : EXIT_RUNTIME;
        goto out;
    }
    if (print_record(path, a.selector, domain))
        goto out;
    fprintf(stderr,
            "Private key written to %s (mode 0600). Publish the record above, then add:\n"
            "  [sender %s]\n  %s = %s\n  %s = %s\n",
            path, domain, alg == DKIM_ALG_RSA ? "dkim_selector" : "dkim_ed25519_selector", a.selector,
            alg == DKIM_ALG_RSA ? "dkim_key_file" : "dkim_ed25519_key_file", path);
    rc = EXIT_OK;
out:
    free(dir);
    free(path);
    cfg_free(cfg);
    return rc;
}

/* Keys under spool_dir/dkim named SELECTOR._domainkey.DOMAIN.pem that the
   config does not already name. Returns how many were printed, -1 on error. */
static int show_unconfigured(const config *cfg, const cfg_sender *snd, const char *domain)
{
    char *dir = key_dir(cfg);
    DIR *d = opendir(dir);
    int count = 0;
    char suffix[SUFFIX_MAX];
    snprintf(suffix, sizeof suffix, "._domainkey.%s.pem", domain);
    size_t sl = strlen(suffix);
    struct dirent *ent;
    while (d && (ent = readdir(d))) {
        size_t n = strlen(ent->d_name);
        if (n <= sl || strcmp(ent->d_name + n - sl, suffix) != 0)
            continue;
        size_t pn = strlen(dir) + n + 2;
        char *path = xmalloc(pn);
        snprintf(path, pn, "%s/%s", dir, ent->d_name);
        int configured = snd && (strcmp(snd->dkim_key_file, path) == 0 ||
                                 strcmp(snd->dkim_ed25519_key_file, path) == 0);
        char *selector = xstrndup(ent->d_name, n - sl);
        if (!configured)
            count = print_record(path, selector, domain) ? -1 : count + 1;
        free(selector);
        free(path);
        if (count < 0)
            break;
    }
    if (d)
        closedir(d);
    free(dir);
    return count;
}

static int dkim_show_cmd(int argc, char **argv)
{
    static const struct option opts[] = {{"domain", required_argument, 0, 'd'},
                                         {"config", required_argument, 0, 'c'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *domain_arg = NULL, *conf = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (c == 'd')
            domain_arg = optarg;
        else if (c == 'c')
            conf = optarg;
        else
            return cli_usage("dkim", c != 'h');
    }
    char domain[256];
    err e;
    if (!domain_arg || addr_parse_domain(domain_arg, strlen(domain_arg), domain, &e)) {
        cli_error("dkim show needs a valid --domain");
        return EXIT_USAGE;
    }
    config *cfg = cli_load_config(conf);
    if (!cfg)
        return EXIT_RUNTIME;
    const cfg_sender *snd = NULL;
    for (const cfg_sender *s = cfg->senders; s; s = s->next)
        if (strcmp(s->name, domain) == 0)
            snd = s;
    int printed = 0, failed = 0;
    if (snd && *snd->dkim_key_file)
        print_record(snd->dkim_key_file, snd->dkim_selector, domain) ? failed++ : printed++;
    if (snd && *snd->dkim_ed25519_key_file)
        print_record(snd->dkim_ed25519_key_file, snd->dkim_ed25519_selector, domain) ? failed++
                                                                                     : printed++;
    int more = show_unconfigured(cfg, snd, domain);
    more < 0 ? failed++ : (printed += more);
    if (printed == 0 && failed == 0)
        cli_error("no DKIM key for %s: none in [sender %s] and none under %s/dkim", domain, domain,
                  cfg->spool_dir);
    cfg_free(cfg);
    return printed > 0 && failed == 0 ? EXIT_OK : EXIT_RUNTIME;
}

int cmd_dkim(int argc, char **argv)
{
    if (argc < 2)
        return cli_usage("dkim", 1);
    if (strcmp(argv[1], "keygen") == 0)
        return dkim_keygen_cmd(argc - 1, argv + 1);
    if (strcmp(argv[1], "show") == 0)
        return dkim_show_cmd(argc - 1, argv + 1);
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return cli_usage("dkim", 0);
    cli_error("dkim: unknown subcommand '%s' (keygen, show)", argv[1]);
    return EXIT_USAGE;
}
