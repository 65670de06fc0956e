#include "core/ids.h"

#include "core/clock.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <sys/random.h>

int ids_random(void *out, size_t n)
{
    uint8_t *p = out;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

void ids_base32(const uint8_t *in, size_t n, char *out)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 5) {
            out[o++] = alphabet[(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits > 0)
        out[o++] = alphabet[(acc << (5 - bits)) & 31];
    out[o] = '\0';
}

int ids_message(char out[ID_MSG_LEN + 1])
{
    static const char crockford[] = "0123456789abcdefghjkmnpqrstvwxyz";
    uint8_t raw[16];
    uint64_t ms = (uint64_t)clock_now_ms();
    for (int i = 0; i < 6; i++)
        raw[i] = (uint8_t)(ms >> (8 * (5 - i)));
    if (ids_random(raw + 6, 10) < 0)
        return -1;
    /* 128 bits -> 26 symbols: the first symbol carries the top 3 bits. */
    unsigned __int128 v = 0;
    for (int i = 0; i < 16; i++)
        v = (v << 8) | raw[i];
    for (int i = ID_MSG_LEN - 1; i >= 0; i--) {
        out[i] = crockford[(unsigned)(v & 31)];
        v >>= 5;
    }
    out[ID_MSG_LEN] = '\0';
    return 0;
}

void ids_hex(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

int ids_equal_ct(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}
