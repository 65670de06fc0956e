/*
 * cmd_send — `posthaste send`: a thin client of POST /v1/messages.
 *
 * It builds the JSON request (attachments base64-encoded), sends it with
 * libcurl to --api URL with the key read from the environment variable
 * named by --key-env (never from the command line, where `ps` would show
 * it), and prints the message id, or the API's error, as the server gave
 * it. Exit 0 on 202, 1 on any other answer, 2 on usage errors.
 */
#include "cli/cli.h"

#include "core/buf.h"
#include "core/mem.h"

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEND_RESPONSE_MAX (1024 * 1024)
#define SEND_ATTACH_MAX (64 * 1024 * 1024)

typedef struct send_opts {
    const char *api, *key_env, *from, *subject, *text, *html;
    json_t *to, *cc, *bcc, *attachments, *tags;
} send_opts;

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        cli_error("--attach %s: %s", path, strerror(errno));
        return NULL;
    }
    buf b;
    buf_init(&b, SEND_ATTACH_MAX);
    char chunk[65536];
    size_t n;
    int too_big = 0;
    while (!too_big && (n = fread(chunk, 1, sizeof chunk, f)) > 0)
        too_big = buf_append(&b, chunk, n) != 0;
    int failed = ferror(f);
    fclose(f);
    if (too_big || failed) {
        cli_error("--attach %s: %s", path, too_big ? "larger than 64 MB" : "read error");
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b, len);
}

static int add_attachment(send_opts *o, const char *path)
{
    size_t len;
    char *data = read_file(path, &len);
    if (!data)
        return -1;
    char *b64 = xmalloc(4 * ((len + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)data, (int)len);
    free(data);
    const char *slash = strrchr(path, '/');
    json_array_append_new(o->attachments,
                          json_pack("{s:s,s:s}", "filename", slash ? slash + 1 : path, "content", b64));
    free(b64);
    return 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    buf *b = arg;
    return buf_append(b, p, size * n) ? 0 : size * n;
}

static json_t *request_json(const send_opts *o)
{
    json_t *req = json_pack("{s:s,s:O}", "from", o->from, "to", o->to);
    if (json_array_size(o->cc))
        json_object_set(req, "cc", o->cc);
    if (json_array_size(o->bcc))
        json_object_set(req, "bcc", o->bcc);
    if (o->subject)
        json_object_set_new(req, "subject", json_string(o->subject));
    if (o->text)
        json_object_set_new(req, "text", json_string(o->text));
    if (o->html)
        json_object_set_new(req, "html", json_string(o->html));
    if (json_array_size(o->attachments))
        json_object_set(req, "attachments", o->attachments);
    if (json_array_size(o->tags))
        json_object_set(req, "tags", o->tags);
    return req;
}

/* Print the id on success, the API's error message otherwise. */
static int report(long status, const buf *resp)
{
    json_t *j = json_loads(buf_cstr(resp), 0, NULL);
    int rc = EXIT_RUNTIME;
    if (status == 202 && json_is_string(json_object_get(j, "id"))) {
        printf("%s\n", json_string_value(json_object_get(j, "id")));
        rc = EXIT_OK;
    } else {
        json_t *er = json_object_get(j, "error");
        const char *msg = json_string_value(json_object_get(er, "message"));
        const char *field = json_string_value(json_object_get(er, "field"));
        cli_error("HTTP %ld: %s%s%s%s", status, msg ? msg : buf_cstr(resp), field ? " (field " : "",
                  field ? field : "", field ? ")" : "");
    }
    json_decref(j);
    return rc;
}

static int post(const send_opts *o, const char *key)
{
    json_t *req = request_json(o);
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    buf url, auth, resp;
    buf_init(&url, 4096);
    buf_init(&auth, 256);
    buf_init(&resp, SEND_RESPONSE_MAX);
    size_t alen = strlen(o->api);
    while (alen && o->api[alen - 1] == '/')
        alen--;
    buf_append(&url, o->api, alen);
    buf_appends(&url, "/v1/messages");
    buf_appendf(&auth, "Authorization: Bearer %s", key);
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    h = curl_slist_append(h, buf_cstr(&auth));
    curl_easy_setopt(c, CURLOPT_URL, buf_cstr(&url));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    CURLcode cc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    int rc = EXIT_RUNTIME;
    if (cc != CURLE_OK)
        cli_error("%s: %s", buf_cstr(&url), curl_easy_strerror(cc));
    else
        rc = report(status, &resp);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    OPENSSL_cleanse(auth.data, auth.len);
    buf_free(&url);
    buf_free(&auth);
    buf_free(&resp);
    free(body);
    return rc;
}

static int parse_args(int argc, char **argv, send_opts *o)
{
    static const struct option opts[] = {
        {"api", required_argument, 0, 'a'},     {"key-env", required_argument, 0, 'k'},
        {"from", required_argument, 0, 'f'},    {"to", required_argument, 0, 't'},
        {"cc", required_argument, 0, 'C'},      {"bcc", required_argument, 0, 'B'},
        {"subject", required_argument, 0, 's'}, {"text", required_argument, 0, 'T'},
        {"html", required_argument, 0, 'H'},    {"attach", required_argument, 0, 'A'},
        {"tag", required_argument, 0, 'g'},     {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'a': o->api = optarg; break;
        case 'k': o->key_env = optarg; break;
        case 'f': o->from = optarg; break;
        case 't': json_array_append_new(o->to, json_string(optarg)); break;
        case 'C': json_array_append_new(o->cc, json_string(optarg)); break;
        case 'B': json_array_append_new(o->bcc, json_string(optarg)); break;
        case 's': o->subject = optarg; break;
        case 'T': o->text = optarg; break;
        case 'H': o->html = optarg; break;
        case 'g': json_array_append_new(o->tags, json_string(optarg)); break;
        case 'A':
            if (add_attachment(o, optarg))
                return EXIT_RUNTIME;
            break;
        case 'h': cli_usage("send", 0); return -1;
        default: return cli_usage("send", 1);
        }
    }
    if (optind < argc) {
        cli_error("send: unexpected argument '%s'", argv[optind]);
        return EXIT_USAGE;
    }
    if (!o->key_env || !o->from || !json_array_size(o->to) || (!o->text && !o->html)) {
        cli_error("send: --key-env, --from, --to and one of --text/--html are required");
        return EXIT_USAGE;
    }
    return 0;
}

int cmd_send(int argc, char **argv)
{
    send_opts o = {.api = "http://127.0.0.1:8025", .to = json_array(), .cc = json_array(), .bcc = json_array(),
                   .attachments = json_array(), .tags = json_array()};
    int rc = parse_args(argc, argv, &o);
    if (rc == 0) {
        const char *key = getenv(o.key_env);
        if (!key || !*key) {
            cli_error("send: environment variable %s (from --key-env) is not set", o.key_env);
            rc = EXIT_USAGE;
        } else {
            curl_global_init(CURL_GLOBAL_DEFAULT);
            rc = post(&o, key);
            curl_global_cleanup();
        }
    } else if (rc < 0) {
        rc = EXIT_OK; /* --help */
    }
    json_decref(o.to);
    json_decref(o.cc);
    json_decref(o.bcc);
    json_decref(o.attachments);
    json_decref(o.tags);
    return rc;
}
