/* libFuzzer target: RFC 5321 mailbox and IDN domain validation (submit/address). */
#include "submit/address.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    addr a;
    err e;
    for (int utf8 = 0; utf8 <= 1; utf8++) {
        if (addr_parse((const char *)data, size, utf8, &a, &e) == 0) {
            /* A valid result is bounded, has exactly the domain after its last '@'. */
            size_t n = strlen(a.full);
            if (n > 254 || strcmp(strrchr(a.full, '@') + 1, a.domain) != 0)
                __builtin_trap();
        }
    }
    char domain[256];
    (void)addr_parse_domain((const char *)data, size, domain, &e);
    (void)addr_valid_utf8((const char *)data, size);
    return 0;
}
