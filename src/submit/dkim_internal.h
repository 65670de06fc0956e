/*
 * dkim_internal — shared between dkim.c and dkim_ed25519.c only.
 *
 * Why a second signer: Debian's libopendkim 2.11.0~beta2 signs
 * ed25519-sha256 correctly but never frees the key it loads for it
 * (dkim_free() releases RSA key data only), leaking about 1.5 KB per
 * signature — unbounded growth in a long-running server (found by the
 * ASan run of the test suite). So ed25519-sha256 is done here with
 * OpenSSL's EVP: relaxed/relaxed
 * canonicalization (RFC 6376 3.4.2, 3.4.4), SHA-256, and a PureEdDSA
 * signature over the SHA-256 hash (RFC 8463 3). Both are checked by the
 * same independent verifiers (dkimpy, opendkim-testmsg) in the tests.
 *
 * rsa-sha256 goes through the same code (one canonicalization, tested
 * byte for byte against libopendkim's body hash) with the key parsed once
 * at start-up: libopendkim takes the key as PEM text and parses it, and
 * sets up RSA blinding, for every message — about 60% of its signing CPU
 * in bench/relay (docs/BENCHMARKS.md). libopendkim stays the reference the
 * tests compare against.
 */
#ifndef PH_SUBMIT_DKIM_INTERNAL_H
#define PH_SUBMIT_DKIM_INTERNAL_H

#include "core/buf.h"
#include "core/err.h"
#include "submit/headers.h"

#include <openssl/evp.h>
#include <stdint.h>

typedef struct dkimsig_ed_params {
    EVP_PKEY *key;            /* Ed25519 or RSA private key, parsed once at load */
    int rsa;                  /* 1: rsa-sha256, 0: ed25519-sha256 */
    const char *domain;       /* d= */
    const char *selector;     /* s= */
    const char *identity;     /* i=@identity */
    int64_t ttl_s;            /* x= t= + ttl_s, 0 = no x= */
    const char *const *sign;  /* header names to sign when present (lower case) */
    const char *const *over;  /* header names to over-sign */
} dkimsig_ed_params;

/* Append one CRLF-terminated DKIM-Signature field for msg (parsed as h). */
int dkimsig_ed25519_sign(const dkimsig_ed_params *p, const char *msg, size_t len,
                         const hdr_section *h, buf *out, err *e);

#endif
