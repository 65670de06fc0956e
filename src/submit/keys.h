/*
 * keys — API keys: minting, checking, and what a key allows.
 *
 * A key reads ph_<id>_<secret>: id is 12 base32 characters (public, the
 * lookup handle shown by `keys list`), secret is 32 base32 characters
 * (160 bits from the OS CSPRNG). Only SHA-256(secret) is stored and it is
 * compared in constant time, so a database leak does not leak keys and
 * timing does not reveal how much of a guess was right.
 *
 * The same key authenticates SMTP AUTH (as the password) and the HTTP API
 * (as the Bearer token).
 */
#ifndef PH_SUBMIT_KEYS_H
#define PH_SUBMIT_KEYS_H

#include "core/err.h"
#include "spool/spool.h"

#include <sys/socket.h>

#define KEYS_TOKEN_MAX 64

typedef struct keys_spec {
    const char *name;
    int scopes;                 /* KEY_SCOPE_* bits; 0 means send */
    const char *sender_domains; /* comma-separated or NULL */
    const char *allow_ips;      /* comma-separated CIDRs or NULL */
    double rate;                /* messages per second, 0 = unlimited */
    int require_signing;
    int bulk;                   /* mark its mail bulk: List-Unsubscribe on every message */
} keys_spec;

/* Create a key; token receives the full key (shown once). */
int keys_create(spool *s, const keys_spec *spec, char token[KEYS_TOKEN_MAX], spool_key *out,
                err *e);
/* Check a presented key. 1 valid (out filled, caller frees), 0 invalid or
   revoked, -1 storage error. */
int keys_verify(spool *s, const char *token, size_t len, spool_key *out, err *e);
/* Parse "send,read" style scope names; -1 on an unknown name. */
int keys_parse_scope(const char *name);
/* "send,read,admin" for display. */
void keys_scopes_str(int scopes, char *out, size_t n);
/* May this key send as addresses of `domain`? (exact or subdomain of a listed domain) */
int keys_domain_allowed(const spool_key *k, const char *domain);
/* Is the client address inside the key's allowlist (empty list: yes)? */
int keys_ip_allowed(const spool_key *k, const struct sockaddr *sa);
/* Validate a comma-separated CIDR list; -1 + e naming the bad item. */
int keys_check_cidrs(const char *list, err *e);
/* The HMAC secret for request signing, derived from the key itself:
   HMAC-SHA256(secret part, "posthaste-signing"). out: 32 bytes. */
int keys_signing_secret(const char *token, size_t len, unsigned char out[32]);

#endif
