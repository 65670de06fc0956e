/* libFuzzer target: header folding (submit/hygiene) and DKIM TXT record
   tag parsing (submit/dkim) on arbitrary bytes. */
#include "submit/dkim.h"
#include "submit/hygiene.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Unfolding the output must give back the input (plus a final CRLF). */
static void check_fold(const char *in, size_t n)
{
    buf out;
    buf_init(&out, 4 * n + 64);
    err e;
    if (hyg_fold(in, n, &out, &e) == 0) {
        const char *p = buf_cstr(&out);
        size_t line = 0;
        for (size_t i = 0; i < out.len; i++) {
            if (p[i] == '\n') {
                if (line > HYG_LINE_MAX + 1) /* + the CR */
                    __builtin_trap();
                line = 0;
            } else {
                line++;
            }
        }
    }
    buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (memchr(data, '\0', size))
        return 0;
    check_fold((const char *)data, size);
    char *text = strndup((const char *)data, size);
    if (!text)
        return 0;
    buf v;
    buf_init(&v, size + 1);
    (void)dkimsig_txt_tag(text, "p", &v);
    if (v.len > size)
        __builtin_trap();
    buf_reset(&v);
    (void)dkimsig_txt_zone_line("s", "example.com", text, &v);
    buf_free(&v);
    free(text);
    return 0;
}
