/*
 * unsubscribe — one-click unsubscribe tokens (RFC 2369 + RFC 8058).
 *
 * A token names (recipient, sender domain, message id) and carries an
 * HMAC-SHA256 of them under a server secret, so it can be verified with
 * no database lookup and cannot be forged or altered:
 *     base64url(recipient "\n" domain "\n" message_id) "." base64url(mac[0..16))
 * The secret is 32 random bytes in spool_dir/unsubscribe.key (mode 0600),
 * created on first use; deleting it invalidates every token issued.
 *
 * Limits: a token is at most UNSUB_TOKEN_MAX characters.
 */
#ifndef PH_OUTCOME_UNSUBSCRIBE_H
#define PH_OUTCOME_UNSUBSCRIBE_H

#include "core/config.h"
#include "core/err.h"

#include <stddef.h>

#define UNSUB_TOKEN_MAX 1024
#define UNSUB_SECRET_LEN 32

typedef struct unsub_claims {
    char recipient[321];
    char domain[256];
    char message_id[64];
} unsub_claims;

/* Load (or create) the secret for this spool. */
int unsub_secret(const config *cfg, unsigned char out[UNSUB_SECRET_LEN], err *e);
int unsub_token(const unsigned char secret[UNSUB_SECRET_LEN], const unsub_claims *c, char *out,
                size_t outlen);
/* 0 and claims filled when the token is authentic; -1 otherwise. */
int unsub_verify(const unsigned char secret[UNSUB_SECRET_LEN], const char *token, unsub_claims *c);

#endif
