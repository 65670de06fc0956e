/* libFuzzer target: the RFC 5322 header section parser (submit/headers). */
#include "submit/headers.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hdr_section h;
    err e;
    for (int allow = 0; allow <= 1; allow++) {
        if (hdr_parse((const char *)data, size, 4096, 64, allow, &h, &e) != 0)
            continue;
        /* Every field must lie inside the input and values must unfold safely. */
        buf v;
        buf_init(&v, 512);
        for (size_t i = 0; i < h.count; i++) {
            if (h.fields[i].off + h.fields[i].len > size)
                __builtin_trap();
            buf_reset(&v);
            (void)hdr_value(&h, (const char *)data, i, &v);
        }
        if (h.body_off > size)
            __builtin_trap();
        (void)hdr_find(&h, (const char *)data, "From");
        buf_free(&v);
        hdr_free(&h);
    }
    return 0;
}
