/*
 * config — the one INI file (libinih), with a default for every key.
 *
 * Every key is declared once, in the table in config.c, with its type,
 * default, limits and a one-line description; `posthaste help config`
 * prints that table and the README's configuration reference is kept in
 * step with it (a test checks that every key is documented). Unknown
 * sections or keys and bad values are start-up errors naming file:line.
 *
 * Secrets are never read inline: a secret `x` is configured as `x_file`
 * (a path) or `x_env` (an environment variable name) and fetched with
 * cfg_secret() when needed, so it appears in no config dump and no log.
 *
 * Sizes accept K/M/G suffixes (1024-based); durations accept ms/s/m/h/d
 * (a bare number is seconds) and are stored in milliseconds.
 */
#ifndef PH_CORE_CONFIG_H
#define PH_CORE_CONFIG_H

#include "core/err.h"

#include <stdint.h>
#include <stdio.h>

/* Per-recipient-domain overrides: a section [domain example.com]. */
typedef struct cfg_domain {
    char *name;             /* lower-case domain */
    char *route;            /* "mx" | "relay" | NULL (inherit) */
    char *relay_host;
    int64_t relay_port;
    char *relay_tls;        /* "starttls" | "implicit" | "none" */
    char *relay_user;
    char *relay_password_file;
    char *relay_password_env;
    char *tls_policy;       /* none | may | encrypt | verify */
    int64_t max_connections;
    int64_t max_msgs_per_conn;
    double msgs_per_second;
    struct cfg_domain *next;
} cfg_domain;

/* A sending domain: a section [sender example.com] (DKIM keys, return path). */
typedef struct cfg_sender {
    char *name;                 /* lower-case domain */
    char *dkim_selector;        /* rsa-sha256 selector ("" = no rsa key) */
    char *dkim_key_file;        /* PEM private key, mode 0600 */
    char *dkim_ed25519_selector;
    char *dkim_ed25519_key_file;
    int sign_subdomains;        /* also sign mail from *.name */
    int64_t dkim_expire;        /* ms; x= = t= + this (0: no x=) */
    char *bounce_domain;        /* envelope sender bounces+<id>@bounce_domain */
    struct cfg_sender *next;
} cfg_sender;

typedef struct config {
    char *path;             /* file it was read from, or NULL for defaults */

    /* [server] */
    char *hostname;
    char *spool_dir;
    char *log_level;
    char *log_file;
    char *user;
    char *tls_cert_file;
    char *tls_key_file;
    int64_t shutdown_timeout;

    /* [spool] */
    int64_t spool_max_size;
    int64_t spool_commit_batch;
    char *spool_synchronous;
    int64_t spool_busy_timeout;

    /* [smtp] */
    char *smtp_listen;
    char *smtp_listen_tls;
    int smtp_allow_plaintext_auth;
    int64_t smtp_max_message_size;
    int64_t smtp_max_recipients;
    int64_t smtp_max_line_length;
    int64_t smtp_max_command_length;
    int64_t smtp_max_header_size;
    int64_t smtp_max_connections;
    int64_t smtp_max_connections_per_ip;
    int64_t smtp_max_bad_commands;
    int64_t smtp_timeout_greeting;
    int64_t smtp_timeout_command;
    int64_t smtp_timeout_data;
    int64_t smtp_timeout_session;
    int64_t smtp_auth_fail_delay;
    int64_t smtp_auth_fail_delay_max;
    int64_t smtp_auth_fail_window;
    int64_t smtp_data_block_size;

    /* [api] */
    char *api_listen;
    int api_tls;
    int64_t api_max_body_size;
    int64_t api_max_json_depth;
    int64_t api_max_batch;
    int64_t api_max_recipients;
    int64_t api_max_attachments;
    int64_t api_max_attachment_size;
    char *api_blocked_extensions;
    int64_t api_signature_skew;
    char *public_url;
    char *unsubscribe_mailto;
    char *api_blocked_types;
    int64_t api_recipients_per_day;
    int64_t api_idempotency_ttl;
    int64_t api_max_page_size;
    int64_t api_timeout;
    int64_t api_ready_max_commit;

    /* [delivery] */
    int delivery_paused;
    char *delivery_route;
    char *relay_host;
    int64_t relay_port;
    char *relay_tls;
    char *relay_user;
    char *relay_password_file;
    char *relay_password_env;
    char *tls_policy_mx;
    char *tls_policy_relay;
    char *tls_ca_file;
    char *dns_servers;
    int64_t mx_port;
    char *retry_schedule;
    int64_t max_age;
    int64_t max_connections_per_domain;
    int64_t max_msgs_per_conn;
    double msgs_per_second;
    int64_t max_connections_total;
    int64_t idle_timeout;
    int64_t timeout_connect;
    int64_t timeout_greeting_out;
    int64_t timeout_mail;
    int64_t timeout_rcpt;
    int64_t timeout_data_init;
    int64_t timeout_data_block;
    int64_t timeout_data_term;
    int64_t scheduler_interval;
    int notify_sender_smtp;
    int notify_sender_api;
    int64_t max_rcpts_per_txn;
    int64_t max_reply_line;
    int64_t max_reply_size;
    int64_t concurrency_penalty;
    int64_t dns_timeout;
    int64_t scan_batch;

    /* [dkim] */
    int64_t dkim_sign_threads;
    char *dkim_rsa_signer;

    /* [doctor] */
    char *doctor_public_ips;
    int64_t doctor_dns_timeout;

    /* [sendmail] */
    char *sendmail_key_file;
    char *sendmail_key_env;
    char *sendmail_api_url;
    int64_t pickup_interval;

    /* [alerts] */
    int64_t alert_interval;
    int64_t alert_window;
    double alert_bounce_rate;
    int64_t alert_bounce_min;
    int64_t alert_queue_age;
    double alert_key_rate_factor;
    int64_t alert_key_rate_min;
    int64_t alert_repeat;
    char *admin_email;

    /* [webhooks] */
    int64_t webhook_timeout;
    int64_t webhook_retry_window;
    int64_t webhook_batch_max;
    int64_t webhook_interval;
    int64_t webhook_max_backoff;
    int64_t webhook_unhealthy_after;

    cfg_domain *domains;
    cfg_sender *senders;
} config;

/* Allocate a config holding every default. */
config *cfg_defaults(void);
/* Read path over the defaults. Returns NULL and fills e with "file:line: …". */
config *cfg_load(const char *path, err *e);
/* The same from memory (fuzzing, tests); name stands in for the path. */
config *cfg_load_buffer(const char *text, size_t len, const char *name, err *e);
void cfg_free(config *c);
/* Look up the per-domain section for a recipient domain (exact match), or NULL. */
const cfg_domain *cfg_find_domain(const config *c, const char *domain);
/* The [sender] section for a From domain: exact match, else the nearest
   parent domain with sign_subdomains = yes; NULL when none. */
const cfg_sender *cfg_find_sender(const config *c, const char *domain);
/* Print every key with default and description (for `help config`). */
void cfg_print_reference(FILE *out, int markdown);
/* Read a secret from a file (trailing newline trimmed) or an env variable. */
char *cfg_secret(const char *file, const char *env, const char *what, err *e);
/* Parse "1m,5m,1h" into milliseconds; returns count or -1. */
int cfg_parse_schedule(const char *s, int64_t *out, int max, err *e);
/* Path of a file under spool_dir; returns a new string. */
char *cfg_spool_path(const config *c, const char *name);

#endif
