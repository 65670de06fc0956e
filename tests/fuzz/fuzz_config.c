/* libFuzzer target: the INI configuration parser (core/config). */
#include "core/config.h"
#include "core/log.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    if (!quiet++)
        log_set_level(LOG_FATAL);
    err e;
    config *c = cfg_load_buffer((const char *)data, size, "fuzz.conf", &e);
    cfg_free(c);
    return 0;
}
