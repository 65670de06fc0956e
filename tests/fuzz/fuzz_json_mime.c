/* libFuzzer target: a JSON send request (POST /v1/messages) through
   submit/mime_build into an RFC 5322 message.

   The bytes are parsed with jansson exactly as the API does (depth and
   UTF-8 checks included) and handed to mime_build() with small limits.
   A built message must be non-empty, CRLF-only, have at least one
   envelope recipient and a parseable header section with a From; a refusal
   must name a field. */
#include "submit/headers.h"
#include "submit/mime_build.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const mime_limits LIM = {
    .max_recipients = 8,
    .max_attachments = 3,
    .max_attachment_size = 4096,
    .blocked_extensions = "exe,bat,js",
    .blocked_types = "application/x-executable,text/x-shellscript",
};

static void check_built(const mime_result *m)
{
    if (!m->data || m->len == 0 || m->nrcpts == 0 || !m->mail_from)
        __builtin_trap();
    for (size_t i = 0; i < m->len; i++) {
        if (m->data[i] == '\n' && (i == 0 || m->data[i - 1] != '\r'))
            __builtin_trap();
    }
    hdr_section h;
    err e;
    if (hdr_parse(m->data, m->len, 1 << 20, 10000, 1, &h, &e) != 0)
        __builtin_trap();
    if (hdr_find(&h, m->data, "From") < 0)
        __builtin_trap();
    hdr_free(&h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static mime_ctx *ctx;
    err e;
    if (!ctx && !(ctx = mime_ctx_new(&e)))
        abort();
    json_error_t je;
    json_t *req = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    if (!req)
        return 0;
    mime_result m;
    char field[MIME_FIELD_MAX];
    field[0] = '\0';
    if (mime_build(ctx, req, &LIM, &m, field, &e) == 0) {
        check_built(&m);
        mime_result_free(&m);
    } else if (e.msg[0] == '\0') {
        __builtin_trap();
    }
    json_decref(req);
    return 0;
}
