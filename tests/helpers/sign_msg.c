/*
 * sign_msg — test helper: DKIM-sign a message with the configured keys.
 *
 *   sign_msg CONFIG FROM_DOMAIN < message > signed
 *
 * Reads a complete message (CRLF line endings) on stdin, signs it with
 * dkimsig_sign() for FROM_DOMAIN using the [sender] keys of CONFIG, and
 * writes the DKIM-Signature fields followed by the message. Exit 1 with
 * the error on stderr when loading or signing fails; 3 when the domain
 * has no key.
 */
#include "core/buf.h"
#include "core/config.h"
#include "submit/dkim.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: sign_msg CONFIG FROM_DOMAIN < message\n");
        return 2;
    }
    err e = {0};
    config *cfg = cfg_load(argv[1], &e);
    dkimsig_keyset *ks = cfg ? dkimsig_load(cfg, &e) : NULL;
    if (!ks) {
        fprintf(stderr, "sign_msg: %s\n", e.msg);
        cfg_free(cfg);
        return 1;
    }
    buf msg, sig;
    buf_init(&msg, 64u << 20);
    buf_init(&sig, 1u << 20);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
        if (buf_append(&msg, chunk, n))
            return 1;
    int rc = dkimsig_sign(ks, argv[2], msg.data ? msg.data : "", msg.len, &sig, &e);
    if (rc < 0)
        fprintf(stderr, "sign_msg: %s\n", e.msg);
    else {
        fwrite(sig.data ? sig.data : "", 1, sig.len, stdout);
        fwrite(msg.data ? msg.data : "", 1, msg.len, stdout);
    }
    buf_free(&msg);
    buf_free(&sig);
    dkimsig_free(ks);
    cfg_free(cfg);
    return rc < 0 ? 1 : rc == 0 ? 3 : 0;
}
