/* cmd_doctor — `posthaste doctor`: the checklist to run before going live.
 *
 * Configuration checks live here (TLS certificate and key, key file modes,
 * inline secrets, the spool, listeners, DKIM keys); DNS checks are in
 * doctor_dns.c. Output: one line per check, ✓ / ✗ / ?, the fix indented
 * under each ✗; or one JSON object with --json. Exit 0 only when every
 * check is ✓, 1 otherwise, 2 on a usage error. */
#include "cli/cli.h"
#include "cli/doctor.h"

#include "core/buf.h"
#include "core/mem.h"
#include "core/tls.h"
#include "submit/dkim.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DETAIL_MAX 1024
#define CERT_WARN_DAYS 14

typedef struct check {
    const char *group, *id;
    enum doctor_status status;
    char *detail, *fix;
} check;

struct doctor_report {
    check *items;
    size_t n, cap;
};

void doctor_add(doctor_report *r, const char *group, const char *id, enum doctor_status st,
                const char *fmt, ...)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 16;
        r->items = xrealloc(r->items, r->cap * sizeof *r->items);
    }
    char detail[DETAIL_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    r->items[r->n++] = (check){.group = group, .id = id, .status = st, .detail = xstrdup(detail)};
}

void doctor_fix(doctor_report *r, const char *fmt, ...)
{
    if (r->n == 0)
        return;
    char fix[DETAIL_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fix, sizeof fix, fmt, ap);
    va_end(ap);
    free(r->items[r->n - 1].fix);
    r->items[r->n - 1].fix = xstrdup(fix);
}

static void report_free(doctor_report *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->items[i].detail);
        free(r->items[i].fix);
    }
    free(r->items);
}

/* ---- TLS ---------------------------------------------------------------- */

static X509 *read_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    return x;
}

static EVP_PKEY *read_key(const char *path)
{
    FILE *f = fopen(path, "r");
    EVP_PKEY *k = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    return k;
}

/* Days from now to the certificate's notAfter (negative when expired). */
static int days_left(X509 *x)
{
    int days = 0, secs = 0;
    if (!ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x)))
        return -1;
    return days - (days <= 0 && secs < 0 ? 1 : 0);
}

static void check_cert_pair(doctor_report *r, const char *cert_path, const char *key_path)
{
    X509 *x = read_cert(cert_path);
    EVP_PKEY *k = read_key(key_path);
    if (!x) {
        doctor_add(r, "config", "tls_cert", DOCTOR_FAIL, "TLS certificate %s: cannot read a PEM certificate (%s)",
                   cert_path, access(cert_path, R_OK) ? strerror(errno) : "bad format");
        doctor_fix(r, "point [server] tls_cert_file at a readable PEM certificate chain");
    } else if (!k) {
        doctor_add(r, "config", "tls_cert", DOCTOR_FAIL, "TLS key %s: cannot read a PEM private key",
                   key_path);
        doctor_fix(r, "point [server] tls_key_file at the certificate's PEM private key");
    } else if (X509_check_private_key(x, k) != 1) {
        doctor_add(r, "config", "tls_cert", DOCTOR_FAIL,
                   "TLS certificate %s and key %s do not match", cert_path, key_path);
        doctor_fix(r, "configure the private key that belongs to this certificate");
    } else {
        int days = days_left(x);
        if (days < 0) {
            doctor_add(r, "config", "tls_cert", DOCTOR_FAIL, "TLS certificate %s has expired",
                       cert_path);
            doctor_fix(r, "renew the certificate and restart posthaste");
        } else if (days < CERT_WARN_DAYS) {
            doctor_add(r, "config", "tls_cert", DOCTOR_FAIL,
                       "TLS certificate %s expires in %d days", cert_path, days);
            doctor_fix(r, "renew the certificate now (fewer than %d days left)", CERT_WARN_DAYS);
        } else {
            doctor_add(r, "config", "tls_cert", DOCTOR_OK,
                       "TLS certificate %s matches its key, %d days left", cert_path, days);
        }
    }
    X509_free(x);
    EVP_PKEY_free(k);
}

/* The context the server would build, asked for its minimum version. */
static void check_tls_version(doctor_report *r, const config *cfg)
{
    err e;
    SSL_CTX *ctx = tls_server_ctx(cfg, &e);
    if (!ctx) {
        doctor_add(r, "config", "tls_version", DOCTOR_FAIL, "TLS context cannot be built: %s", e.msg);
        doctor_fix(r, "fix the certificate/key settings above");
        return;
    }
    long min = SSL_CTX_get_min_proto_version(ctx);
    SSL_CTX_free(ctx);
    if (min >= TLS1_2_VERSION)
        doctor_add(r, "config", "tls_version", DOCTOR_OK, "TLS minimum version is %s",
                   min == TLS1_3_VERSION ? "1.3" : "1.2");
    else {
        doctor_add(r, "config", "tls_version", DOCTOR_FAIL, "TLS versions below 1.2 are allowed");
        doctor_fix(r, "use a build that sets TLS 1.2 as the minimum");
    }
}

static void check_tls(doctor_report *r, const config *cfg)
{
    if (!*cfg->tls_cert_file) {
        doctor_add(r, "config", "tls_cert", DOCTOR_FAIL,
                   "no TLS certificate configured: a self-signed one is used, which clients cannot verify");
        doctor_fix(r, "set [server] tls_cert_file and tls_key_file (e.g. from Let's Encrypt)");
        return;
    }
    check_cert_pair(r, cfg->tls_cert_file, cfg->tls_key_file);
    if (r->items[r->n - 1].status == DOCTOR_OK)
        check_tls_version(r, cfg);
}

/* ---- files and secrets ----------------------------------------------------- */

static void check_key_mode(doctor_report *r, const char *what, const char *path)
{
    struct stat st;
    if (!*path)
        return;
    if (stat(path, &st) != 0) {
        doctor_add(r, "config", "key_mode", DOCTOR_FAIL, "%s %s: %s", what, path, strerror(errno));
        doctor_fix(r, "create the file or correct the path");
    } else if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        doctor_add(r, "config", "key_mode", DOCTOR_FAIL, "%s %s has mode %04o", what, path,
                   (unsigned)(st.st_mode & 07777));
        doctor_fix(r, "chmod 600 %s", path);
    } else {
        doctor_add(r, "config", "key_mode", DOCTOR_OK, "%s %s has mode %04o", what, path,
                   (unsigned)(st.st_mode & 07777));
    }
}

static void check_key_files(doctor_report *r, const config *cfg)
{
    check_key_mode(r, "TLS key", cfg->tls_key_file);
    for (const cfg_sender *s = cfg->senders; s; s = s->next) {
        check_key_mode(r, "DKIM key", s->dkim_key_file);
        check_key_mode(r, "DKIM key", s->dkim_ed25519_key_file);
    }
    check_key_mode(r, "relay password file", cfg->relay_password_file);
}

/* A value that looks like a secret: an API key, a PEM block, or a key
   named like a password that is not a _file/_env indirection. */
static int looks_secret(const char *key, const char *value)
{
    if (strstr(value, "ph_") == value || strstr(value, "-----BEGIN"))
        return 1;
    size_t kl = strlen(key);
    int indirect = (kl > 5 && strcmp(key + kl - 5, "_file") == 0) ||
                   (kl > 4 && strcmp(key + kl - 4, "_env") == 0);
    return !indirect && *value &&
           (strstr(key, "password") || strstr(key, "secret") || strstr(key, "token"));
}

/* Scan the raw file: the loader refuses unknown keys, but a secret pasted
   into a known string key (or a comment-less typo of one) still leaks. */
static void check_inline_secrets(doctor_report *r, const config *cfg)
{
    FILE *f = cfg->path ? fopen(cfg->path, "r") : NULL;
    if (!f) {
        doctor_add(r, "config", "inline_secrets", DOCTOR_OK, "no configuration file: no inline secrets");
        return;
    }
    char line[4096];
    int lineno = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *eq = strchr(line, '=');
        if (!eq || line[0] == '#' || line[0] == ';' || line[0] == '[')
            continue;
        *eq = '\0';
        char *key = line, *value = eq + 1;
        while (*key == ' ' || *key == '\t')
            key++;
        for (char *p = eq - 1; p >= key && (*p == ' ' || *p == '\t'); p--)
            *p = '\0';
        while (*value == ' ' || *value == '\t')
            value++;
        value[strcspn(value, "\r\n")] = '\0';
        if (looks_secret(key, value) && !bad++) {
            doctor_add(r, "config", "inline_secrets", DOCTOR_FAIL,
                       "%s:%d: '%s' holds a secret inline", cfg->path, lineno, key);
            doctor_fix(r, "move it to a file (mode 0600) or an environment variable and use %s_file / %s_env",
                       key, key);
        }
    }
    fclose(f);
    if (!bad)
        doctor_add(r, "config", "inline_secrets", DOCTOR_OK, "no secret written inline in %s", cfg->path);
}

static void check_spool(doctor_report *r, const config *cfg)
{
    struct stat st;
    const char *dir = cfg->spool_dir;
    if (stat(dir, &st) != 0) {
        doctor_add(r, "config", "spool", DOCTOR_FAIL, "spool_dir %s: %s", dir, strerror(errno));
        doctor_fix(r, "mkdir -m 700 %s (owned by the user posthaste runs as)", dir);
        return;
    }
    char *probe = cfg_spool_path(cfg, ".doctor-probe");
    FILE *f = fopen(probe, "w");
    int ok = f != NULL;
    if (f)
        fclose(f);
    unlink(probe);
    free(probe);
    if (!ok || !S_ISDIR(st.st_mode)) {
        doctor_add(r, "config", "spool", DOCTOR_FAIL, "spool_dir %s is not writable", dir);
        doctor_fix(r, "give the posthaste user write access to %s", dir);
    } else {
        doctor_add(r, "config", "spool", DOCTOR_OK, "spool_dir %s is writable", dir);
    }
}

/* ---- listeners ------------------------------------------------------------- */

/* Is "host:port" bound to a loopback address only? */
static int is_loopback(const char *hostport)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    size_t n = colon ? (size_t)(colon - hostport) : strlen(hostport);
    if (n >= sizeof host)
        return 0;
    memcpy(host, hostport, n);
    host[n] = '\0';
    if (host[0] == '[' && n > 1 && host[n - 1] == ']') {
        memmove(host, host + 1, n - 2);
        host[n - 2] = '\0';
    }
    unsigned char a[16];
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    if (inet_pton(AF_INET6, host, a) == 1)
        return memcmp(a, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16) == 0;
    return strcmp(host, "localhost") == 0;
}

static void check_smtp_listener(doctor_report *r, const config *cfg, const char *key,
                                const char *addr, int implicit_tls)
{
    if (!*addr)
        return;
    if (is_loopback(addr)) {
        doctor_add(r, "config", "listener", DOCTOR_OK, "[smtp] %s %s: loopback only", key, addr);
    } else if (!implicit_tls && cfg->smtp_allow_plaintext_auth) {
        doctor_add(r, "config", "listener", DOCTOR_FAIL,
                   "[smtp] %s %s is public and allows AUTH before STARTTLS", key, addr);
        doctor_fix(r, "set [smtp] allow_plaintext_auth = no");
    } else {
        doctor_add(r, "config", "listener", DOCTOR_OK,
                   "[smtp] %s %s is public: AUTH with an API key is required, over TLS only (no open relay)",
                   key, addr);
    }
}

static void check_listeners(doctor_report *r, const config *cfg)
{
    check_smtp_listener(r, cfg, "listen", cfg->smtp_listen, 0);
    check_smtp_listener(r, cfg, "listen_tls", cfg->smtp_listen_tls, 1);
    if (!*cfg->api_listen)
        return;
    if (is_loopback(cfg->api_listen)) {
        doctor_add(r, "config", "listener", DOCTOR_OK, "[api] listen %s: loopback only", cfg->api_listen);
    } else if (!cfg->api_tls) {
        doctor_add(r, "config", "listener", DOCTOR_FAIL,
                   "[api] listen %s is public without TLS: API keys would cross the network in clear",
                   cfg->api_listen);
        doctor_fix(r, "set [api] tls = yes, or listen on 127.0.0.1 behind a TLS proxy");
    } else {
        doctor_add(r, "config", "listener", DOCTOR_OK,
                   "[api] listen %s is public: HTTPS, bearer API key required", cfg->api_listen);
    }
}

static void check_dkim_keys(doctor_report *r, const config *cfg)
{
    if (!cfg->senders) {
        doctor_add(r, "config", "senders", DOCTOR_FAIL,
                   "no [sender] domain configured: mail is sent without DKIM signatures");
        doctor_fix(r, "posthaste dkim keygen --domain YOUR.DOMAIN --selector s1, then add the [sender] section it prints");
        return;
    }
    err e;
    dkimsig_keyset *ks = dkimsig_load(cfg, &e);
    if (!ks) {
        doctor_add(r, "config", "dkim_keys", DOCTOR_FAIL, "%s", e.msg);
        doctor_fix(r, "posthaste serve refuses to start until this is corrected");
        return;
    }
    dkimsig_free(ks);
    for (const cfg_sender *s = cfg->senders; s; s = s->next) {
        int n = (*s->dkim_key_file != 0) + (*s->dkim_ed25519_key_file != 0);
        if (n == 0) {
            doctor_add(r, "config", "dkim_keys", DOCTOR_FAIL, "[sender %s] has no DKIM key", s->name);
            doctor_fix(r, "posthaste dkim keygen --domain %s --selector s1", s->name);
        } else {
            doctor_add(r, "config", "dkim_keys", DOCTOR_OK, "[sender %s]: %d DKIM key%s load%s (%s%s%s)",
                       s->name, n, n > 1 ? "s" : "", n > 1 ? "" : "s",
                       *s->dkim_key_file ? "rsa-sha256" : "", n > 1 ? " + " : "",
                       *s->dkim_ed25519_key_file ? "ed25519-sha256" : "");
        }
    }
}

/* ---- output ------------------------------------------------------------------ */

static const char *const marks[] = {"\u2713", "\u2717", "?"};
static const char *const names[] = {"ok", "fail", "unknown"};

static void print_text(const doctor_report *r)
{
    for (size_t i = 0; i < r->n; i++) {
        const check *c = &r->items[i];
        printf("%s %-6s %s\n", marks[c->status], c->group, c->detail);
        if (c->fix && c->status != DOCTOR_OK)
            printf("         fix: %s\n", c->fix);
    }
}

static void print_json(const doctor_report *r, int ok)
{
    json_t *list = json_array();
    for (size_t i = 0; i < r->n; i++) {
        const check *c = &r->items[i];
        json_t *o = json_pack("{s:s,s:s,s:s,s:s}", "group", c->group, "check", c->id, "status",
                              names[c->status], "detail", c->detail);
        if (c->fix && c->status != DOCTOR_OK)
            json_object_set_new(o, "fix", json_string(c->fix));
        json_array_append_new(list, o);
    }
    json_t *top = json_pack("{s:b,s:o}", "ok", ok, "checks", list);
    json_dumpf(top, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(top);
}

int cmd_doctor(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *conf = NULL;
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (c == 'c')
            conf = optarg;
        else if (c == 'j')
            json = 1;
        else
            return cli_usage("doctor", c != 'h');
    }
    if (optind < argc) {
        cli_error("doctor: unexpected argument '%s'", argv[optind]);
        return EXIT_USAGE;
    }
    config *cfg = cli_load_config(conf);
    if (!cfg)
        return EXIT_RUNTIME;
    doctor_report r = {0};
    check_tls(&r, cfg);
    check_key_files(&r, cfg);
    check_inline_secrets(&r, cfg);
    check_spool(&r, cfg);
    check_listeners(&r, cfg);
    check_dkim_keys(&r, cfg);
    doctor_dns_checks(&r, cfg);
    int ok = 1;
    for (size_t i = 0; i < r.n; i++)
        ok &= r.items[i].status == DOCTOR_OK;
    json ? print_json(&r, ok) : print_text(&r);
    report_free(&r);
    cfg_free(cfg);
    return ok ? EXIT_OK : EXIT_RUNTIME;
}
