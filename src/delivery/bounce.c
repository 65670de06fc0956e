#include "delivery/bounce.h"

#include "core/buf.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/mem.h"

#include <gmime/gmime.h>
#include <pthread.h>
#include <string.h>

int bounce_wanted(const config *cfg, const char *ingress, const char *mail_from)
{
    if (!mail_from || !*mail_from)
        return 0; /* null reverse-path: never (RFC 5321 4.5.5) */
    if (ingress && strcmp(ingress, "api") == 0)
        return cfg->notify_sender_api;
    if (ingress && strcmp(ingress, "bounce") == 0)
        return 0;
    return cfg->notify_sender_smtp;
}

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void gmime_start(void)
{
    g_mime_init();
}

/* Only the header section of the original, as RFC 3462 text/rfc822-headers. */
static size_t header_len(const spool_message *m)
{
    if (!m->data)
        return 0;
    for (size_t i = 0; i + 3 < m->len; i++)
        if (memcmp(m->data + i, "\r\n\r\n", 4) == 0)
            return i + 2;
    return m->len;
}

static GMimeObject *part_from(const char *type, const char *subtype, const char *data, size_t len)
{
    GMimePart *p = g_mime_part_new_with_type(type, subtype);
    GMimeStream *s = g_mime_stream_mem_new_with_buffer(data, len);
    GMimeDataWrapper *w = g_mime_data_wrapper_new_with_stream(s, GMIME_CONTENT_ENCODING_DEFAULT);
    g_mime_part_set_content(p, w);
    g_object_unref(w);
    g_object_unref(s);
    g_mime_part_set_content_encoding(p, g_mime_part_get_best_content_encoding(p, GMIME_ENCODING_CONSTRAINT_7BIT));
    return GMIME_OBJECT(p);
}

/* One line for a header field: replies can span lines. */
static void one_line(buf *b, const char *s)
{
    for (; s && *s; s++)
        buf_appendc(b, *s == '\n' || *s == '\r' ? ' ' : *s);
}

static void human_text(buf *t, const char *hostname, const bounce_rcpt *r, size_t n)
{
    buf_appendf(t, "This is the mail system at host %s.\n\n"
                   "Your message could not be delivered to one or more recipients.\n"
                   "It is attached below (headers only).\n\n",
                hostname);
    for (size_t i = 0; i < n; i++) {
        buf_appendf(t, "<%s>: ", r[i].addr);
        if (r[i].remote)
            buf_appendf(t, "host %s said: ", r[i].remote);
        one_line(t, r[i].diagnostic);
        buf_appends(t, "\n");
    }
}

static void dsn_text(buf *d, const char *hostname, const spool_message *m, const bounce_rcpt *r, size_t n)
{
    char date[64];
    clock_rfc5322(m->created_ms, date, sizeof date);
    buf_appendf(d, "Reporting-MTA: dns; %s\r\nX-Posthaste-Queue-ID: %s\r\nArrival-Date: %s\r\n", hostname, m->id,
                date);
    for (size_t i = 0; i < n; i++) {
        buf_appendf(d, "\r\nFinal-Recipient: rfc822; %s\r\nAction: failed\r\nStatus: %s\r\n", r[i].addr,
                    r[i].status && *r[i].status ? r[i].status : "5.0.0");
        if (r[i].remote)
            buf_appendf(d, "Remote-MTA: dns; %s\r\n", r[i].remote);
        buf_appends(d, "Diagnostic-Code: smtp; ");
        one_line(d, r[i].diagnostic);
        buf_appends(d, "\r\n");
    }
}

char *bounce_build(const char *hostname, const spool_message *m, const bounce_rcpt *r, size_t n, size_t *len)
{
    pthread_once(&once, gmime_start);
    buf human, dsn;
    buf_init(&human, 1 << 20);
    buf_init(&dsn, 1 << 20);
    human_text(&human, hostname, r, n);
    dsn_text(&dsn, hostname, m, r, n);

    GMimeMessage *msg = g_mime_message_new(FALSE);
    char from[300];
    snprintf(from, sizeof from, "MAILER-DAEMON@%s", hostname);
    g_mime_message_add_mailbox(msg, GMIME_ADDRESS_TYPE_FROM, "Mail Delivery System", from);
    g_mime_message_add_mailbox(msg, GMIME_ADDRESS_TYPE_TO, NULL, m->mail_from);
    g_mime_message_set_subject(msg, "Undelivered Mail Returned to Sender", NULL);
    g_mime_object_set_header(GMIME_OBJECT(msg), "Auto-Submitted", "auto-replied", NULL);

    GMimeMultipart *mp = g_mime_multipart_new_with_subtype("report");
    g_mime_object_set_content_type_parameter(GMIME_OBJECT(mp), "report-type", "delivery-status");
    GMimeTextPart *t = g_mime_text_part_new_with_subtype("plain");
    g_mime_text_part_set_text(t, buf_cstr(&human));
    g_mime_multipart_add(mp, GMIME_OBJECT(t));
    g_object_unref(t);
    GMimeObject *d = part_from("message", "delivery-status", dsn.data, dsn.len);
    g_mime_multipart_add(mp, d);
    g_object_unref(d);
    GMimeObject *h = part_from("text", "rfc822-headers", m->data ? m->data : "", header_len(m));
    g_mime_multipart_add(mp, h);
    g_object_unref(h);
    g_mime_message_set_mime_part(msg, GMIME_OBJECT(mp));
    g_object_unref(mp);

    GMimeFormatOptions *fo = g_mime_format_options_new();
    g_mime_format_options_set_newline_format(fo, GMIME_NEWLINE_FORMAT_DOS);
    char *s = g_mime_object_to_string(GMIME_OBJECT(msg), fo);
    g_mime_format_options_free(fo);
    g_object_unref(msg);
    buf_free(&human);
    buf_free(&dsn);
    char *out = xstrdup(s);
    g_free(s);
    *len = strlen(out);
    return out;
}
