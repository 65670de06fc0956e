/*
 * api_unsubscribe — the recipient-facing one-click unsubscribe endpoint
 * (RFC 8058). No API key: the token itself is the credential.
 *   GET  /u/TOKEN  a small confirmation page with a button; changes nothing
 *                  (mail scanners follow links, so GET must be harmless).
 *   POST /u/TOKEN  with List-Unsubscribe=One-Click (the RFC 8058 body, or
 *                  the page's form): suppress the recipient for the sender
 *                  domain (reason unsubscribe) and record 'unsubscribed'.
 */
#include "ingress/http_api.h"

#include "core/buf.h"
#include "core/mem.h"
#include "outcome/unsubscribe.h"

#include <stdlib.h>
#include <string.h>

static int claims_of(api_req *r, unsub_claims *c)
{
    unsigned char secret[UNSUB_SECRET_LEN];
    err e;
    err_clear(&e);
    if (unsub_secret(r->srv->cfg, secret, &e)) {
        api_error(r, 503, "unavailable", NULL, "unsubscribe is not available: %s", e.msg);
        return -1;
    }
    if (!r->param || unsub_verify(secret, r->param, c)) {
        api_error(r, 404, "not_found", NULL, "this unsubscribe link is not valid");
        return -1;
    }
    return 0;
}

/* Only characters that cannot break out of HTML text or attributes. */
static void html_escape(buf *out, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': buf_appends(out, "&lt;"); break;
        case '>': buf_appends(out, "&gt;"); break;
        case '&': buf_appends(out, "&amp;"); break;
        case '"': buf_appends(out, "&quot;"); break;
        case '\'': buf_appends(out, "&#39;"); break;
        default: buf_appendc(out, *s);
        }
    }
}

void api_unsubscribe_page(api_req *r)
{
    unsub_claims c;
    if (claims_of(r, &c))
        return;
    buf page;
    buf_init(&page, 16384);
    buf_appends(&page, "<!doctype html><html><head><meta charset=\"utf-8\">"
                       "<meta name=\"viewport\" content=\"width=device-width\">"
                       "<title>Unsubscribe</title></head><body style=\"font-family:sans-serif;"
                       "max-width:32em;margin:4em auto\"><h1>Unsubscribe</h1><p>Stop mail from <b>");
    html_escape(&page, c.domain);
    buf_appends(&page, "</b> to <b>");
    html_escape(&page, c.recipient);
    buf_appends(&page, "</b>?</p><form method=\"post\" action=\"");
    html_escape(&page, r->path);
    buf_appends(&page, "\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">"
                       "<button type=\"submit\">Unsubscribe</button></form></body></html>\n");
    api_reply_text(r, 200, "text/html; charset=utf-8", page.data, page.len);
    buf_free(&page);
}

typedef struct unsub_op {
    api_req *r;
    unsub_claims c;
} unsub_op;

static int unsub_fn(spool_tx *tx, void *arg, err *e)
{
    unsub_op *op = arg;
    char data[512];
    snprintf(data, sizeof data, "{\"scope\":\"%s\",\"source\":\"one-click\"}", op->c.domain);
    return spool_tx_suppress(tx, op->c.recipient, op->c.domain, "unsubscribe", e) ||
           spool_tx_event(tx, op->c.message_id, op->c.recipient, "unsubscribed", data, e);
}

static void unsub_done(void *arg, const err *e)
{
    unsub_op *op = arg;
    if (e) {
        api_error_err(op->r, e, NULL);
    } else {
        static const char page[] = "<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribed"
                                   "</title></head><body style=\"font-family:sans-serif;max-width:32em;"
                                   "margin:4em auto\"><h1>You are unsubscribed</h1>"
                                   "<p>You will not receive this mail again.</p></body></html>\n";
        api_reply_text(op->r, 200, "text/html; charset=utf-8", page, sizeof page - 1);
    }
    free(op);
}

void api_unsubscribe_post(api_req *r)
{
    unsub_claims c;
    if (claims_of(r, &c))
        return;
    /* RFC 8058: the body is exactly "List-Unsubscribe=One-Click" (form-encoded). */
    if (!r->body || !strstr(r->body, "List-Unsubscribe=One-Click")) {
        api_error(r, 400, "invalid_request", "body", "expected List-Unsubscribe=One-Click");
        return;
    }
    unsub_op *op = xcalloc(1, sizeof *op);
    op->r = r;
    op->c = c;
    if (spool_write(r->srv->spool, unsub_fn, unsub_done, op) < 0) {
        free(op);
        api_error(r, 503, "unavailable", NULL, "server is shutting down");
    }
}
