/*
 * dkim — DKIM signing (RFC 6376), and DKIM key files.
 *
 * What it does: loads the private keys of every [sender NAME] section once
 * (dkimsig_load), and signs a complete message for its From domain with each
 * configured key: rsa-sha256 (libopendkim) and/or ed25519-sha256 (RFC 8463,
 * dkim_ed25519.c over OpenSSL, because libopendkim 2.11 leaks Ed25519 keys;
 * see dkim_internal.h). Both keys configured means two signatures ("dual
 * signing"). Canonicalization is
 * relaxed/relaxed; the signed header fields are those of DKIM_SIGNED_HEADERS
 * that are present, with From over-signed (listed once more than it occurs,
 * so a second From cannot be added later without breaking the signature).
 * t= is always written, x= when the sender's dkim_expire is set, and
 * i=@<From domain> names the signing identity (it matters when a key of
 * example.com signs mail.example.com, which needs sign_subdomains).
 *
 * It also owns the key files: generation (RSA >= 2048 bits or Ed25519, PEM,
 * written 0600 with O_EXCL so an existing key is never overwritten), the
 * permission check (a key readable by group or others is refused with a
 * message naming the file and its mode), and the DNS TXT record that
 * publishes the public half ("v=DKIM1; k=rsa; p=<base64 DER SPKI>" or
 * "k=ed25519; p=<base64 of the raw 32-byte key>").
 *
 * What it owns: the loaded key set (key text, one libopendkim handle per
 * key). dkimsig_sign() only reads it, so worker threads may sign concurrently.
 *
 * What it never does: touch the network or the spool, or log key material.
 *
 * Prefix dkimsig_ (libopendkim already owns dkim_).
 *
 * Limits: RSA keys below DKIM_RSA_MIN_BITS are refused; key files above
 * DKIM_KEY_FILE_MAX bytes are refused.
 */
#ifndef PH_SUBMIT_DKIM_H
#define PH_SUBMIT_DKIM_H

#include "core/buf.h"
#include "core/config.h"
#include "core/err.h"

#include <stddef.h>
#include <stdint.h>

#define DKIM_RSA_MIN_BITS 2048
#define DKIM_KEY_FILE_MAX (64 * 1024)

/* Header fields signed when present (From is also over-signed). */
#define DKIM_SIGNED_HEADERS                                                                       \
    "from", "to", "cc", "subject", "date", "message-id", "mime-version", "content-type",          \
        "content-transfer-encoding", "reply-to", "in-reply-to", "references", "list-unsubscribe", \
        "list-unsubscribe-post", "feedback-id"

enum dkimsig_alg { DKIM_ALG_RSA = 0, DKIM_ALG_ED25519 = 1 };

typedef struct dkimsig_keyset dkimsig_keyset;

/* Load every key of every [sender] section (mode 0600, RSA >= 2048 bits,
   algorithm matching the key kind). NULL + e naming the file on failure.
   A config with no keys gives an empty set, not an error. */
dkimsig_keyset *dkimsig_load(const config *cfg, err *e);
void dkimsig_free(dkimsig_keyset *ks);
/* How many keys were loaded (for the start-up log). */
int dkimsig_count_keys(const dkimsig_keyset *ks);
/* How many signatures mail from this domain gets (0: not signed). */
int dkimsig_count_for(const dkimsig_keyset *ks, const char *from_domain);
/* Sign msg[0..len) (CRLF line endings, complete message) as mail of
   from_domain; t= is the current time. The DKIM-Signature fields, each
   CRLF-terminated, are appended to out; prepend them to the message.
   Returns the number of signatures (0 when the domain has no key) or -1.
   Thread-safe. */
int dkimsig_sign(const dkimsig_keyset *ks, const char *from_domain, const char *msg, size_t len,
              buf *out, err *e);

/* A private key file must be a regular file with no group/other access. */
int dkimsig_check_key_mode(const char *path, err *e);
/* Write a new private key to path (mode 0600, refuses to overwrite). */
int dkimsig_keygen(const char *path, enum dkimsig_alg alg, int bits, err *e);
/* The TXT record value for the key in path ("v=DKIM1; k=…; p=…") into out;
   *alg receives the key's algorithm. */
int dkimsig_txt_value(const char *path, enum dkimsig_alg *alg, buf *out, err *e);
/* The zone-file line publishing value at SELECTOR._domainkey.DOMAIN, split
   into quoted strings of at most 255 octets (RFC 1035 character-strings). */
int dkimsig_txt_zone_line(const char *selector, const char *domain, const char *value, buf *out);
/* The p= of a TXT record value (whitespace removed) into out; -1 if none. */
int dkimsig_txt_tag(const char *record, const char *tag, buf *out);

#endif
