/*
 * tls — the server's TLS context (SMTP submission and HTTPS share it).
 *
 * tls_server_ctx() builds an OpenSSL 3 SSL_CTX that speaks TLS 1.2 or
 * newer only, with the certificate chain and key from [server]
 * tls_cert_file / tls_key_file. The key file must not be readable by group
 * or others (start-up fails naming the file and its mode).
 *
 * When neither file is configured, a self-signed pair is used from
 * spool_dir (tls-cert.pem, tls-key.pem). It is generated on first start —
 * an EC P-256 key (mode 0600) and a certificate for the configured
 * hostname, localhost, 127.0.0.1 and ::1 — and a warning is logged every
 * time it is in use, because clients can only trust it by pinning it.
 *
 * What it never does: client contexts (delivery builds its own policy),
 * or log key material.
 */
#ifndef PH_CORE_TLS_H
#define PH_CORE_TLS_H

#include "core/config.h"
#include "core/err.h"

#include <openssl/ssl.h>

#define TLS_SELF_CERT "tls-cert.pem"
#define TLS_SELF_KEY "tls-key.pem"

/* A new server context; NULL and e filled on failure. Free with SSL_CTX_free. */
SSL_CTX *tls_server_ctx(const config *cfg, err *e);
/* Generate a self-signed pair at cert_path/key_path for hostname (both
   files must not exist). Returns 0 or -1 + e. */
int tls_generate_self_signed(const char *hostname, const char *cert_path, const char *key_path,
                             err *e);

#endif
