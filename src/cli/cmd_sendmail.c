/*
 * cmd_sendmail — `posthaste sendmail`: the sendmail(8) interface for cron,
 * PHP mail(), git send-email and scripts.
 *
 * The message on standard input goes to the local server's API
 * (POST /v1/messages/raw) with the key from [sendmail] key_file or the
 * variable named by key_env ($POSTHASTE_KEY by default). When no key is
 * configured, or the server does not answer, the message is written to
 * the maildrop directory (durably, see ingress/maildrop.h) and `serve`
 * picks it up when it runs. Exit status follows sendmail: 0 accepted or
 * dropped for pickup, 64 usage, 65 bad message, 73 cannot write the
 * maildrop, 75 server down (message kept in the maildrop), 77 refused key.
 */
#include "cli/cli.h"

#include "core/buf.h"
#include "core/mem.h"
#include "ingress/maildrop.h"
#include "submit/address.h"
#include "submit/headers.h"

#include <curl/curl.h>
#include <gmime/gmime.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

typedef struct sm_args {
    int extract;       /* -t */
    int ignore_dots;   /* -i / -oi */
    const char *from;  /* -f */
    const char *name;  /* -F */
    const char *conf;  /* -C / -c */
    char **rcpts;
    size_t nrcpts;
} sm_args;

static void add_rcpt(sm_args *a, const char *addr_text)
{
    a->rcpts = xrealloc(a->rcpts, (a->nrcpts + 1) * sizeof *a->rcpts);
    a->rcpts[a->nrcpts++] = xstrdup(addr_text);
}

/* sendmail options; the historic ones that change nothing here are accepted. */
static int parse_args(int argc, char **argv, sm_args *a)
{
    int i = 1;
    for (; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0)
            return 1;
        if (strcmp(o, "-t") == 0)
            a->extract = 1;
        else if (strcmp(o, "-i") == 0 || strcmp(o, "-oi") == 0)
            a->ignore_dots = 1;
        else if (o[1] == 'f' || o[1] == 'F' || o[1] == 'C' || o[1] == 'c' || o[1] == 'r') {
            const char *v = o[2] ? o + 2 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v) {
                cli_error("sendmail: option %s needs a value", o);
                return -1;
            }
            if (o[1] == 'f' || o[1] == 'r')
                a->from = v;
            else if (o[1] == 'F') {
                if (strpbrk(v, "\r\n\"\\")) {
                    cli_error("sendmail: -F name may not contain quotes, backslashes or line breaks");
                    return -1;
                }
                a->name = v;
            }
            else
                a->conf = v;
        } else if (strncmp(o, "-o", 2) == 0 || strncmp(o, "-B", 2) == 0 || strcmp(o, "-bm") == 0 ||
                   strncmp(o, "-N", 2) == 0 || strncmp(o, "-R", 2) == 0 || strncmp(o, "-V", 2) == 0 ||
                   strcmp(o, "-v") == 0 || strcmp(o, "-em") == 0 || strcmp(o, "-U") == 0) {
            /* accepted for compatibility; nothing to do */
        } else {
            cli_error("sendmail: unsupported option %s", o);
            return -1;
        }
    }
    for (; i < argc; i++)
        add_rcpt(a, argv[i]);
    return 0;
}

/* Read stdin into CRLF lines; without -i a line of a single "." ends it. */
static int read_message(const sm_args *a, size_t max, buf *out)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        size_t len = (size_t)n;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        if (!a->ignore_dots && len == 1 && line[0] == '.')
            break;
        if (buf_append(out, line, len) || buf_append(out, "\r\n", 2)) {
            cli_error("sendmail: message larger than %zu bytes", max);
            rc = -1;
            break;
        }
    }
    free(line);
    return rc;
}

/* -t: add every address of To, Cc and Bcc. */
static int extract_rcpts(sm_args *a, const char *data, size_t len)
{
    hdr_section h;
    err e;
    if (hdr_parse(data, len, len + 1, 10000, 1, &h, &e)) {
        cli_error("sendmail: %s", e.msg);
        return -1;
    }
    static const char *const names[] = {"To", "Cc", "Bcc"};
    for (size_t i = 0; i < h.count; i++) {
        int wanted = 0;
        for (size_t k = 0; k < 3; k++)
            wanted |= h.fields[i].name_len == strlen(names[k]) &&
                      strncasecmp(data + h.fields[i].off, names[k], strlen(names[k])) == 0;
        if (!wanted)
            continue;
        buf v;
        buf_init(&v, 1 << 20);
        hdr_value(&h, data, i, &v);
        InternetAddressList *list = internet_address_list_parse(NULL, buf_cstr(&v));
        buf_free(&v);
        for (int k = 0; list && k < internet_address_list_length(list); k++) {
            InternetAddress *ia = internet_address_list_get_address(list, k);
            if (INTERNET_ADDRESS_IS_MAILBOX(ia))
                add_rcpt(a, internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia)));
        }
        if (list)
            g_object_unref(list);
    }
    hdr_free(&h);
    return 0;
}

/* Without a From: header, write one from -f/-F or the login name. */
static void add_from_header(const sm_args *a, const char *sender, buf *msg, buf *out)
{
    hdr_section h;
    err e;
    int has_from = hdr_parse(msg->data, msg->len, msg->len + 1, 10000, 1, &h, &e) == 0 &&
                   hdr_find(&h, msg->data, "From") >= 0;
    if (!has_from) {
        if (a->name)
            buf_appendf(out, "From: \"%s\" <%s>\r\n", a->name, sender);
        else
            buf_appendf(out, "From: %s\r\n", sender);
    }
    hdr_free(&h);
    buf_append(out, msg->data, msg->len);
}

static char *default_sender(const config *cfg)
{
    const char *user = getenv("USER");
    if (!user || !*user)
        user = getlogin();
    char text[512];
    snprintf(text, sizeof text, "%s@%s", user && *user ? user : "root", cfg->hostname);
    return xstrdup(text);
}

static char *api_url(const config *cfg)
{
    if (*cfg->sendmail_api_url)
        return xstrdup(cfg->sendmail_api_url);
    char url[512];
    snprintf(url, sizeof url, "%s://%s", cfg->api_tls ? "https" : "http", cfg->api_listen);
    return xstrdup(url);
}

static char *find_key(const config *cfg)
{
    err e;
    if (*cfg->sendmail_key_file)
        return cfg_secret(cfg->sendmail_key_file, NULL, "[sendmail] key_file", &e);
    const char *v = *cfg->sendmail_key_env ? getenv(cfg->sendmail_key_env) : NULL;
    return v && *v ? xstrdup(v) : NULL;
}

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    buf_append(arg, p, size * n);
    return size * n;
}

/* POST /v1/messages/raw. Returns an exit status, or -1 when the server
   could not be reached (the caller then drops the message locally). */
static int post_raw(const config *cfg, const char *key, const char *sender, char **rcpts, size_t n,
                    const buf *msg)
{
    CURL *c = curl_easy_init();
    if (!c)
        return -1;
    char *base = api_url(cfg);
    buf url, hdr, reply;
    buf_init(&url, 1 << 16);
    buf_init(&hdr, 1 << 16);
    buf_init(&reply, 1 << 16);
    buf_appendf(&url, "%s/v1/messages/raw", base);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: message/rfc822");
    buf_appendf(&hdr, "Authorization: Bearer %s", key);
    h = curl_slist_append(h, buf_cstr(&hdr));
    buf_reset(&hdr);
    buf_appendf(&hdr, "X-Posthaste-From: %s", sender);
    h = curl_slist_append(h, buf_cstr(&hdr));
    for (size_t i = 0; i < n; i++) {
        buf_reset(&hdr);
        buf_appendf(&hdr, "X-Posthaste-To: %s", rcpts[i]);
        h = curl_slist_append(h, buf_cstr(&hdr));
    }
    curl_easy_setopt(c, CURLOPT_URL, buf_cstr(&url));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)msg->len);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, msg->data);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &reply);
    if (cfg->api_tls)
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L); /* our own loopback listener */
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    int result;
    if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_OPERATION_TIMEDOUT || (rc == CURLE_OK && status >= 500))
        result = -1;
    else if (rc != CURLE_OK) {
        cli_error("sendmail: %s", curl_easy_strerror(rc));
        result = EX_TEMPFAIL;
    } else if (status == 202) {
        result = EX_OK;
    } else {
        cli_error("sendmail: the server refused the message (HTTP %ld): %s", status, buf_cstr(&reply));
        result = status == 401 || status == 403 ? EX_NOPERM : status == 429 ? EX_TEMPFAIL : EX_DATAERR;
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    buf_free(&url);
    buf_free(&hdr);
    buf_free(&reply);
    free(base);
    return result;
}

static int validate_rcpts(sm_args *a)
{
    if (a->nrcpts == 0) {
        cli_error("sendmail: no recipients (give addresses or use -t)");
        return -1;
    }
    for (size_t i = 0; i < a->nrcpts; i++) {
        addr parsed;
        err e;
        if (addr_parse(a->rcpts[i], strlen(a->rcpts[i]), 1, &parsed, &e)) {
            cli_error("sendmail: recipient '%s': %s", a->rcpts[i], e.msg);
            return -1;
        }
        free(a->rcpts[i]);
        a->rcpts[i] = xstrdup(parsed.full);
    }
    return 0;
}

static int deliver(const config *cfg, sm_args *a, const char *sender, buf *msg)
{
    char *key = find_key(cfg);
    if (key) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        int rc = post_raw(cfg, key, sender, a->rcpts, a->nrcpts, msg);
        free(key);
        if (rc >= 0)
            return rc;
    }
    err e;
    if (maildrop_write(cfg, sender, (const char *const *)a->rcpts, a->nrcpts, msg->data, msg->len, &e)) {
        cli_error("sendmail: %s", e.msg);
        return EX_CANTCREAT;
    }
    if (key) {
        fprintf(stderr, "posthaste: server not reachable; message kept in %s/maildrop for pickup\n",
                cfg->spool_dir);
        return EX_TEMPFAIL;
    }
    return EX_OK;
}

int cmd_sendmail(int argc, char **argv)
{
    sm_args a = {0};
    int p = parse_args(argc, argv, &a);
    int status = EX_USAGE;
    config *cfg = NULL;
    buf raw, msg;
    buf_init(&raw, 1);
    buf_init(&msg, 1);
    if (p) {
        if (p > 0)
            status = cli_usage("sendmail", 0);
        goto out;
    }
    cfg = cli_load_config(a.conf);
    if (!cfg) {
        status = EX_CONFIG;
        goto out;
    }
    g_mime_init();
    size_t max = (size_t)cfg->smtp_max_message_size;
    buf_init(&raw, max);
    buf_init(&msg, max + 4096);
    status = EX_DATAERR;
    if (read_message(&a, max, &raw) || (a.extract && extract_rcpts(&a, raw.data ? raw.data : "", raw.len)))
        goto out;
    status = EX_USAGE;
    if (validate_rcpts(&a))
        goto out;
    char *sender = a.from ? xstrdup(a.from) : default_sender(cfg);
    addr parsed;
    err e;
    if (*sender && addr_parse(sender, strlen(sender), 1, &parsed, &e)) {
        cli_error("sendmail: sender '%s': %s", sender, e.msg);
        free(sender);
        goto out;
    }
    add_from_header(&a, sender, &raw, &msg);
    status = deliver(cfg, &a, sender, &msg);
    free(sender);
out:
    for (size_t i = 0; i < a.nrcpts; i++)
        free(a.rcpts[i]);
    free(a.rcpts);
    buf_free(&raw);
    buf_free(&msg);
    cfg_free(cfg);
    return status;
}
