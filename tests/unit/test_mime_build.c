/* Unit tests for submit/mime_build: JSON request -> MIME, field paths in
   errors, html->text, extension and content checks. The built messages are
   parsed back with the same header parser the submit pipeline uses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "submit/headers.h"
#include "submit/mime_build.h"

static const mime_limits LIM = {
    .max_recipients = 3,
    .max_attachments = 2,
    .max_attachment_size = 64,
    .blocked_extensions = "exe, bat,js",
    .blocked_types = "application/x-executable,text/x-shellscript",
};

static mime_ctx *ctx;

static int setup(void **state)
{
    (void)state;
    err e;
    ctx = mime_ctx_new(&e);
    return ctx ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    mime_ctx_free(ctx);
    return 0;
}

/* Build from JSON text; returns 0/-1 and leaves the field path in field. */
static int build(const char *json, mime_result *out, char field[MIME_FIELD_MAX], err *e)
{
    json_t *j = json_loads(json, 0, NULL);
    assert_non_null(j);
    int rc = mime_build(ctx, j, &LIM, out, field, e);
    json_decref(j);
    return rc;
}

static void expect_error(const char *json, const char *field, int code)
{
    mime_result m;
    char f[MIME_FIELD_MAX];
    err e;
    assert_int_equal(build(json, &m, f, &e), -1);
    assert_string_equal(f, field);
    assert_int_equal(e.code, code);
    assert_non_null(strstr(e.msg, field));
}

static void builds_text_message_with_envelope(void **state)
{
    (void)state;
    mime_result m;
    char f[MIME_FIELD_MAX];
    err e;
    assert_int_equal(build("{\"from\":{\"email\":\"a@example.com\",\"name\":\"Ann\"},"
                           "\"to\":[\"b@example.org\",\"B@EXAMPLE.ORG\"],\"bcc\":\"c@bücher.example\","
                           "\"subject\":\"hi\",\"text\":\"hello\",\"tags\":[\"t\"],\"metadata\":{\"k\":\"v\"}}",
                           &m, f, &e),
                     0);
    assert_string_equal(m.mail_from, "a@example.com");
    /* same mailbox once; IDN as A-label; bcc in the envelope only */
    assert_int_equal(m.nrcpts, 2);
    assert_string_equal(m.rcpts[0], "b@example.org");
    assert_string_equal(m.rcpts[1], "c@xn--bcher-kva.example");
    assert_null(strstr(m.data, "xn--bcher"));
    assert_string_equal(m.meta, "{\"tags\":[\"t\"],\"metadata\":{\"k\":\"v\"}}");
    hdr_section h;
    assert_int_equal(hdr_parse(m.data, m.len, 65536, 100, 0, &h, &e), 0);
    assert_true(hdr_find(&h, m.data, "From") >= 0);
    assert_true(hdr_find(&h, m.data, "Bcc") < 0);
    assert_non_null(strstr(m.data, "Ann <a@example.com>"));
    assert_string_equal(m.data + h.body_off, "hello\r\n");
    hdr_free(&h);
    /* CRLF only */
    for (size_t i = 0; i < m.len; i++)
        if (m.data[i] == '\n')
            assert_true(i > 0 && m.data[i - 1] == '\r');
    mime_result_free(&m);
}

static void encodes_non_ascii_headers(void **state)
{
    (void)state;
    mime_result m;
    char f[MIME_FIELD_MAX];
    err e;
    assert_int_equal(build("{\"from\":\"a@example.com\",\"to\":{\"email\":\"b@example.org\",\"name\":\"李四\"},"
                           "\"subject\":\"订单\",\"text\":\"你好\",\"html\":\"<p>你好</p>\"}",
                           &m, f, &e),
                     0);
    size_t head = (size_t)(strstr(m.data, "\r\n\r\n") - m.data);
    for (size_t i = 0; i < head; i++)
        assert_true((unsigned char)m.data[i] < 0x80);
    assert_non_null(strstr(m.data, "Subject: =?UTF-8?"));
    assert_non_null(strstr(m.data, "multipart/alternative"));
    mime_result_free(&m);
}

static void errors_name_the_field(void **state)
{
    (void)state;
    expect_error("{\"to\":\"b@example.org\",\"text\":\"x\"}", "from", ERR_INVALID);
    expect_error("{\"from\":\"a@example.com\",\"to\":[\"b@example.org\",\"x@\"],\"text\":\"x\"}", "to[1]", ERR_INVALID);
    expect_error("{\"from\":\"a@example.com\",\"to\":\"b@example.org\"}", "text", ERR_INVALID);
    expect_error("{\"from\":\"a@example.com\",\"to\":\"b@example.org\",\"text\":\"x\",\"subject\":\"a\\r\\nBcc: x\"}",
                 "subject", ERR_INVALID);
    expect_error("{\"from\":\"a@example.com\",\"to\":{\"email\":\"b@example.org\",\"name\":\"a\\nb\"},\"text\":\"x\"}",
                 "to.name", ERR_INVALID);
    expect_error("{\"from\":\"a@example.com\",\"to\":\"b@example.org\",\"text\":\"x\",\"headers\":{\"To\":\"x\"}}",
                 "headers.To", ERR_INVALID);
    expect_error("{\"from\":\"a@example.com\",\"to\":[\"1@x.org\",\"2@x.org\",\"3@x.org\",\"4@x.org\"],\"text\":\"x\"}",
                 "to[3]", ERR_LIMIT);
    expect_error("{\"from\":\"a@example.com\",\"to\":\"b@example.org\",\"text\":\"x\",\"send_at\":\"soon\"}", "send_at",
                 ERR_INVALID);
}

static void checks_attachments(void **state)
{
    (void)state;
    /* "aGVsbG8=" is "hello"; "IyEvYmluL3NoCmVjaG8gaGkK" is "#!/bin/sh\necho hi\n" */
    expect_error("{\"from\":\"a@example.com\",\"to\":\"b@example.org\",\"text\":\"x\",\"attachments\":"
                 "[{\"filename\":\"run.BAT\",\"content\":\"aGVsbG8=\"}]}",
                 "attachments[0].filename", ERR_INVALID);
    expect_error("{\"from\":\"a@example.com\",\"to\":\"b@example.org\",\"text\":\"x\",\"attachments\":"
                 "[{\"filename\":\"report.pdf\",\"content\":\"IyEvYmluL3NoCmVjaG8gaGkK\"}]}",
                 "attachments[0].content", ERR_INVALID);
    expect_error("{\"from\":\"a@example.com\",\"to\":\"b@example.org\",\"text\":\"x\",\"attachments\":"
                 "[{\"filename\":\"a.txt\",\"content\":\"aGV$bG8=\"}]}",
                 "attachments[0].content", ERR_INVALID);
    expect_error("{\"from\":\"a@example.com\",\"to\":\"b@example.org\",\"text\":\"x\",\"attachments\":[{},{},{}]}",
                 "attachments", ERR_LIMIT);
    mime_result m;
    char f[MIME_FIELD_MAX];
    err e;
    assert_int_equal(build("{\"from\":\"a@example.com\",\"to\":\"b@example.org\",\"text\":\"x\",\"attachments\":"
                           "[{\"filename\":\"a.txt\",\"content\":\"aGVsbG8=\"}]}",
                           &m, f, &e),
                     0);
    assert_non_null(strstr(m.data, "multipart/mixed"));
    assert_non_null(strstr(m.data, "aGVsbG8="));
    assert_non_null(strstr(m.data, "filename=a.txt"));
    mime_result_free(&m);
}

static void html_to_text(void **state)
{
    (void)state;
    const char *html = "<html><head><title>T</title><style>p{}</style></head><body>"
                       "<h1>Hi&nbsp;there</h1><p>Line <b>one</b>&amp;<br>two &#20320;</p>"
                       "<ul><li>a</li><li>b</li></ul><a href=\"https://x.example/\">link</a>"
                       "<script>alert(1)</script></body></html>";
    char *t = mime_html_to_text(html, strlen(html));
    assert_string_equal(t, "Hi there\n\nLine one&\ntwo 你\n\n- a\n- b\nlink (https://x.example/)\n");
    free(t);
}

static void extension_list(void **state)
{
    (void)state;
    assert_true(mime_ext_blocked("x.exe", "exe,bat"));
    assert_true(mime_ext_blocked("X.BaT", "exe, bat"));
    assert_false(mime_ext_blocked("x.exe.txt", "exe,bat"));
    assert_false(mime_ext_blocked("exe", "exe,bat"));
    assert_false(mime_ext_blocked("x.", "exe"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(builds_text_message_with_envelope),
        cmocka_unit_test(encodes_non_ascii_headers),
        cmocka_unit_test(errors_name_the_field),
        cmocka_unit_test(checks_attachments),
        cmocka_unit_test(html_to_text),
        cmocka_unit_test(extension_list),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
