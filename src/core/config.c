#include "core/config.h"

#include "core/mem.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum cfg_type { T_STR, T_INT, T_SIZE, T_DUR, T_BOOL, T_DOUBLE, T_ENUM, T_ADDR };

typedef struct cfg_def {
    const char *section;
    const char *key;
    enum cfg_type type;
    size_t offset;
    const char *def;     /* default, as it would be written in the file */
    double min, max;     /* numeric bounds (inclusive) */
    const char *choices; /* T_ENUM: "a|b|c" */
    const char *doc;
} cfg_def;

#define F(field) offsetof(config, field)
#define D(field) offsetof(cfg_domain, field)
#define BIG 1e18

/* The one list of configuration keys. Keep descriptions to one line. */
static const cfg_def defs[] = {
    {"server", "hostname", T_STR, F(hostname), "", 0, 0, NULL,
     "name used in greetings, Message-ID and Received (empty: the system host name)"},
    {"server", "spool_dir", T_STR, F(spool_dir), "./var", 0, 0, NULL,
     "directory holding the SQLite spool, generated TLS keys and the maildrop"},
    {"server", "log_level", T_ENUM, F(log_level), "info", 0, 0, "debug|info|warn|error",
     "least severe level written to the log"},
    {"server", "log_file", T_STR, F(log_file), "", 0, 0, NULL,
     "append JSON log lines to this file (empty: standard error)"},
    {"server", "user", T_STR, F(user), "", 0, 0, NULL,
     "when started as root, drop to this user after binding ports"},
    {"server", "tls_cert_file", T_STR, F(tls_cert_file), "", 0, 0, NULL,
     "PEM certificate chain for SMTP and HTTPS (empty: self-signed pair generated in spool_dir)"},
    {"server", "tls_key_file", T_STR, F(tls_key_file), "", 0, 0, NULL,
     "PEM private key matching tls_cert_file (mode 0600)"},
    {"server", "shutdown_timeout", T_DUR, F(shutdown_timeout), "10s", 0, 3600e3, NULL,
     "how long SIGTERM waits for in-flight work before closing"},

    {"spool", "max_size", T_SIZE, F(spool_max_size), "0", 0, BIG, NULL,
     "largest spool database; past it submissions fail as 'spool full' (0: no limit but the disk)"},
    {"spool", "commit_batch", T_INT, F(spool_commit_batch), "512", 1, 100000, NULL,
     "most writes grouped into one transaction and fsync (group commit)"},
    {"spool", "synchronous", T_ENUM, F(spool_synchronous), "full", 0, 0, "full|normal",
     "SQLite synchronous mode; 'full' fsyncs every commit (required for the durability promise)"},
    {"spool", "busy_timeout", T_DUR, F(spool_busy_timeout), "5s", 0, 600e3, NULL,
     "how long a reader or CLI command waits for the writer's lock"},

    {"smtp", "listen", T_ADDR, F(smtp_listen), "127.0.0.1:2587", 0, 0, NULL,
     "submission listener with STARTTLS (empty: disabled; production: 0.0.0.0:587)"},
    {"smtp", "listen_tls", T_ADDR, F(smtp_listen_tls), "127.0.0.1:2465", 0, 0, NULL,
     "implicit-TLS submission listener (empty: disabled; production: 0.0.0.0:465)"},
    {"smtp", "allow_plaintext_auth", T_BOOL, F(smtp_allow_plaintext_auth), "no", 0, 0, NULL,
     "allow AUTH before STARTTLS (refused at start-up unless listen is a loopback address)"},
    {"smtp", "max_message_size", T_SIZE, F(smtp_max_message_size), "25M", 1024, 2147483647.0, NULL,
     "largest message accepted (552 5.3.4 past it)"},
    {"smtp", "max_recipients", T_INT, F(smtp_max_recipients), "100", 1, 100000, NULL,
     "recipients per message (452 4.5.3 past it)"},
    {"smtp", "max_line_length", T_INT, F(smtp_max_line_length), "1000", 1000, 1000000, NULL,
     "longest text line in DATA, CRLF included (RFC 5321 4.5.3.1.6)"},
    {"smtp", "max_command_length", T_INT, F(smtp_max_command_length), "512", 512, 65536, NULL,
     "longest command line, CRLF included (RFC 5321 4.5.3.1.4)"},
    {"smtp", "max_header_size", T_SIZE, F(smtp_max_header_size), "256K", 1024, 64 * 1048576.0, NULL,
     "largest header section of a message"},
    {"smtp", "max_connections", T_INT, F(smtp_max_connections), "2000", 1, 1000000, NULL,
     "simultaneous SMTP sessions (421 4.7.0 past it)"},
    {"smtp", "max_connections_per_ip", T_INT, F(smtp_max_connections_per_ip), "50", 1, 1000000, NULL,
     "simultaneous SMTP sessions from one client address"},
    {"smtp", "max_bad_commands", T_INT, F(smtp_max_bad_commands), "10", 1, 1000, NULL,
     "unknown or invalid commands before the session is closed"},
    {"smtp", "timeout_greeting", T_DUR, F(smtp_timeout_greeting), "5m", 1, 3600e3, NULL,
     "time allowed for the client's first command"},
    {"smtp", "timeout_command", T_DUR, F(smtp_timeout_command), "5m", 1, 3600e3, NULL,
     "idle time allowed between commands"},
    {"smtp", "timeout_data", T_DUR, F(smtp_timeout_data), "3m", 1, 3600e3, NULL,
     "time allowed between data blocks in DATA/BDAT"},
    {"smtp", "timeout_session", T_DUR, F(smtp_timeout_session), "30m", 1, 86400e3, NULL,
     "longest a session may last"},
    {"smtp", "auth_fail_delay", T_DUR, F(smtp_auth_fail_delay), "1s", 0, 60e3, NULL,
     "delay after a failed AUTH; doubles with each failure from the same address"},
    {"smtp", "auth_fail_delay_max", T_DUR, F(smtp_auth_fail_delay_max), "2m", 0, 3600e3, NULL,
     "longest delay after a failed AUTH (the doubling stops here)"},
    {"smtp", "auth_fail_window", T_DUR, F(smtp_auth_fail_window), "1h", 1000, 86400e3, NULL,
     "failed AUTH attempts from an address are forgotten after this long without one"},
    {"smtp", "data_block_size", T_SIZE, F(smtp_data_block_size), "64K", 1, 2147483647.0, NULL,
     "DATA/BDAT progress that restarts timeout_data (a slower sender is cut off)"},

    {"api", "listen", T_ADDR, F(api_listen), "127.0.0.1:8025", 0, 0, NULL,
     "HTTP API listener (empty: disabled)"},
    {"api", "tls", T_BOOL, F(api_tls), "no", 0, 0, NULL, "serve the API over HTTPS with the server certificate"},
    {"api", "max_body_size", T_SIZE, F(api_max_body_size), "30M", 1024, 2147483647.0, NULL,
     "largest request body (413 past it)"},
    {"api", "max_json_depth", T_INT, F(api_max_json_depth), "16", 2, 1000, NULL,
     "deepest JSON nesting accepted"},
    {"api", "max_batch", T_INT, F(api_max_batch), "500", 1, 10000, NULL,
     "messages in one POST /v1/messages/batch"},
    {"api", "max_recipients", T_INT, F(api_max_recipients), "100", 1, 100000, NULL,
     "to + cc + bcc addresses per message"},
    {"api", "max_attachments", T_INT, F(api_max_attachments), "20", 0, 1000, NULL,
     "attachments per message"},
    {"api", "max_attachment_size", T_SIZE, F(api_max_attachment_size), "10M", 1, 2147483647.0, NULL,
     "largest decoded attachment"},
    {"api", "blocked_extensions", T_STR, F(api_blocked_extensions),
     "exe,com,bat,cmd,scr,pif,vbs,vbe,js,jse,wsf,wsh,msi,msp,cpl,jar,ps1,hta,lnk,reg", 0, 0, NULL,
     "attachment file name extensions refused (content is checked too)"},
    {"api", "signature_skew", T_DUR, F(api_signature_skew), "5m", 1000, 86400e3, NULL,
     "largest clock difference accepted on signed requests"},
    {"api", "public_url", T_STR, F(public_url), "http://127.0.0.1:8025", 0, 0, NULL,
     "base URL recipients reach (unsubscribe links)"},
    {"api", "unsubscribe_mailto", T_STR, F(unsubscribe_mailto), "", 0, 0, NULL,
     "domain for a mailto:unsubscribe+TOKEN@DOMAIN link beside the https one (empty: https only)"},
    {"api", "blocked_types", T_STR, F(api_blocked_types),
     "application/x-executable,application/x-pie-executable,application/x-sharedlib,"
     "application/x-dosexec,application/x-msdownload,application/vnd.microsoft.portable-executable,"
     "application/x-mach-binary,text/x-shellscript,text/x-script.python,text/x-perl,text/x-php,"
     "text/x-msdos-batch,application/x-bat,application/javascript,text/javascript",
     0, 0, NULL, "attachment content types refused, as sniffed from the bytes by libmagic"},
    {"api", "recipients_per_day", T_INT, F(api_recipients_per_day), "0", 0, 1000000000, NULL,
     "recipients one API key may submit in any 24 hours (0: unlimited; 429 past it)"},
    {"api", "idempotency_ttl", T_DUR, F(api_idempotency_ttl), "24h", 1000, 30 * 86400e3, NULL,
     "how long an Idempotency-Key is remembered"},
    {"api", "max_page_size", T_INT, F(api_max_page_size), "1000", 1, 100000, NULL,
     "largest limit= on list routes (messages, events, suppressions)"},
    {"api", "ready_max_commit", T_DUR, F(api_ready_max_commit), "2s", 1, 3600e3, NULL,
     "GET /readyz fails when a spool commit takes longer than this"},
    {"api", "timeout", T_DUR, F(api_timeout), "60s", 1000, 3600e3, NULL,
     "time allowed to read a request or write a response"},

    {"delivery", "paused", T_BOOL, F(delivery_paused), "no", 0, 0, NULL,
     "accept and queue, but deliver nothing"},
    {"delivery", "route", T_ENUM, F(delivery_route), "mx", 0, 0, "mx|relay",
     "default route: look up MX records, or hand everything to relay_host"},
    {"delivery", "relay_host", T_STR, F(relay_host), "", 0, 0, NULL, "smart host for route = relay"},
    {"delivery", "relay_port", T_INT, F(relay_port), "587", 1, 65535, NULL, "smart host port"},
    {"delivery", "relay_tls", T_ENUM, F(relay_tls), "starttls", 0, 0, "starttls|implicit|none",
     "how TLS starts on relay connections"},
    {"delivery", "relay_user", T_STR, F(relay_user), "", 0, 0, NULL, "AUTH user name for the relay (empty: no AUTH)"},
    {"delivery", "relay_password_file", T_STR, F(relay_password_file), "", 0, 0, NULL,
     "file holding the relay password"},
    {"delivery", "relay_password_env", T_STR, F(relay_password_env), "", 0, 0, NULL,
     "environment variable holding the relay password"},
    {"delivery", "tls_policy_mx", T_ENUM, F(tls_policy_mx), "may", 0, 0, "none|may|encrypt|verify",
     "TLS policy on MX routes"},
    {"delivery", "tls_policy_relay", T_ENUM, F(tls_policy_relay), "verify", 0, 0, "none|may|encrypt|verify",
     "TLS policy on relay routes"},
    {"delivery", "tls_ca_file", T_STR, F(tls_ca_file), "", 0, 0, NULL,
     "CA bundle for verify (empty: the system store)"},
    {"delivery", "dns_servers", T_STR, F(dns_servers), "", 0, 0, NULL,
     "resolvers as ip[:port],… (empty: /etc/resolv.conf)"},
    {"delivery", "mx_port", T_INT, F(mx_port), "25", 1, 65535, NULL, "port used for MX delivery"},
    {"delivery", "retry_schedule", T_STR, F(retry_schedule), "1m,5m,15m,30m,1h,2h,4h", 0, 0, NULL,
     "delays between attempts; the last repeats; each gets +-10% jitter"},
    {"delivery", "max_age", T_DUR, F(max_age), "5d", 1000, 365 * 86400e3, NULL,
     "a message still undelivered after this expires"},
    {"delivery", "max_connections_per_domain", T_INT, F(max_connections_per_domain), "10", 1, 10000, NULL,
     "concurrent connections to one destination"},
    {"delivery", "max_msgs_per_conn", T_INT, F(max_msgs_per_conn), "100", 1, 1000000, NULL,
     "messages sent over one connection before it is closed"},
    {"delivery", "msgs_per_second", T_DOUBLE, F(msgs_per_second), "0", 0, 1e6, NULL,
     "messages per second to one destination (0: unlimited)"},
    {"delivery", "max_connections", T_INT, F(max_connections_total), "200", 1, 100000, NULL,
     "outbound connections in total"},
    {"delivery", "idle_timeout", T_DUR, F(idle_timeout), "5s", 0, 3600e3, NULL,
     "an idle outbound connection is closed after this"},
    {"delivery", "timeout_connect", T_DUR, F(timeout_connect), "30s", 1, 3600e3, NULL, "TCP connect"},
    {"delivery", "timeout_greeting", T_DUR, F(timeout_greeting_out), "5m", 1, 3600e3, NULL,
     "server greeting (RFC 5321 4.5.3.2.1)"},
    {"delivery", "timeout_mail", T_DUR, F(timeout_mail), "5m", 1, 3600e3, NULL, "MAIL reply (4.5.3.2.2)"},
    {"delivery", "timeout_rcpt", T_DUR, F(timeout_rcpt), "5m", 1, 3600e3, NULL, "RCPT reply (4.5.3.2.3)"},
    {"delivery", "timeout_data_init", T_DUR, F(timeout_data_init), "2m", 1, 3600e3, NULL,
     "DATA 354 reply (4.5.3.2.4)"},
    {"delivery", "timeout_data_block", T_DUR, F(timeout_data_block), "3m", 1, 3600e3, NULL,
     "each data block sent (4.5.3.2.5)"},
    {"delivery", "timeout_data_term", T_DUR, F(timeout_data_term), "10m", 1, 3600e3, NULL,
     "reply to the final dot (4.5.3.2.6)"},
    {"delivery", "scheduler_interval", T_DUR, F(scheduler_interval), "1s", 10, 60e3, NULL,
     "how often the scheduler looks for due recipients when idle"},
    {"delivery", "notify_sender_smtp", T_BOOL, F(notify_sender_smtp), "yes", 0, 0, NULL,
     "send a non-delivery report for bounced mail submitted over SMTP"},
    {"delivery", "notify_sender_api", T_BOOL, F(notify_sender_api), "no", 0, 0, NULL,
     "send a non-delivery report for bounced mail submitted over the API"},
    {"delivery", "max_rcpts_per_txn", T_INT, F(max_rcpts_per_txn), "100", 1, 10000, NULL,
     "recipients of one message and destination sent in one SMTP transaction"},
    {"delivery", "max_reply_line", T_INT, F(max_reply_line), "2048", 512, 65536, NULL,
     "longest reply line accepted from a remote server, CRLF included"},
    {"delivery", "max_reply_size", T_SIZE, F(max_reply_size), "64K", 512, 1048576, NULL,
     "largest multi-line reply accepted from a remote server"},
    {"delivery", "concurrency_penalty", T_DUR, F(concurrency_penalty), "1m", 0, 86400e3, NULL,
     "after a 421 or refused connection a destination's concurrency is halved for this long"},
    {"delivery", "dns_timeout", T_DUR, F(dns_timeout), "5s", 100, 600e3, NULL,
     "time allowed for one DNS lookup (all tries)"},
    {"delivery", "scan_batch", T_INT, F(scan_batch), "1000", 1, 1000000, NULL,
     "due recipients read per scheduler scan (and most held in memory)"},

    {"dkim", "sign_threads", T_INT, F(dkim_sign_threads), "2", 0, 64, NULL,
     "worker threads that DKIM-sign messages and build the API's MIME messages off the event loop (0: on the loop)"},
    {"dkim", "rsa_signer", T_ENUM, F(dkim_rsa_signer), "openssl", 0, 0, "openssl|opendkim",
     "rsa-sha256 signatures by OpenSSL with the key parsed once (fast), or by libopendkim, which parses it per message"},

    {"doctor", "public_ips", T_STR, F(doctor_public_ips), "", 0, 0, NULL,
     "this server's public sending addresses, comma-separated, checked against SPF (empty: the hostname's A/AAAA)"},
    {"doctor", "dns_timeout", T_DUR, F(doctor_dns_timeout), "3s", 100, 60e3, NULL,
     "how long doctor waits for one DNS answer before reporting 'cannot resolve'"},

    /* [sendmail]: the sendmail-compatible command and the maildrop pickup. */
    {"sendmail", "key_file", T_STR, F(sendmail_key_file), "", 0, 0, NULL,
     "file holding the API key `posthaste sendmail` submits with (else $POSTHASTE_KEY, else the maildrop)"},
    {"sendmail", "key_env", T_STR, F(sendmail_key_env), "POSTHASTE_KEY", 0, 0, NULL,
     "environment variable holding that key"},
    {"sendmail", "api_url", T_STR, F(sendmail_api_url), "", 0, 0, NULL,
     "API base URL for `posthaste sendmail` (empty: http://[api] listen)"},
    {"sendmail", "pickup_interval", T_DUR, F(pickup_interval), "1s", 10, 3600e3, NULL,
     "how often `serve` looks for messages in spool_dir/maildrop"},

    /* [alerts]: failure alerts to operators (outcome/alerts). */
    {"alerts", "interval", T_DUR, F(alert_interval), "30s", 10, 3600e3, NULL, "how often thresholds are checked"},
    {"alerts", "window", T_DUR, F(alert_window), "15m", 100, 86400e3, NULL,
     "the recent period the bounce rate and a key's send rate are measured over"},
    {"alerts", "bounce_rate", T_DOUBLE, F(alert_bounce_rate), "0.05", 0, 1, NULL,
     "alert when bounced / (delivered + bounced) in the window exceeds this (0: off)"},
    {"alerts", "bounce_min", T_INT, F(alert_bounce_min), "20", 1, 1000000, NULL,
     "outcomes needed in the window before the bounce rate is judged"},
    {"alerts", "queue_age", T_DUR, F(alert_queue_age), "1h", 0, 30 * 86400e3, NULL,
     "alert when the oldest undelivered message is older than this (0: off)"},
    {"alerts", "key_rate_factor", T_DOUBLE, F(alert_key_rate_factor), "10", 0, 1e6, NULL,
     "alert when a key sends this many times its 24-hour average rate within the window (0: off)"},
    {"alerts", "key_rate_min", T_INT, F(alert_key_rate_min), "100", 1, 1000000000, NULL,
     "recipients a key must send in the window before its rate is judged"},
    {"alerts", "repeat", T_DUR, F(alert_repeat), "1h", 0, 30 * 86400e3, NULL,
     "an alert that still holds is raised again after this"},
    {"alerts", "admin_email", T_STR, F(admin_email), "", 0, 0, NULL,
     "also mail each alert to this address, through Posthaste itself (empty: do not)"},

    /* [webhooks]: delivery of events to applications (outcome/webhooks). */
    {"webhooks", "timeout", T_DUR, F(webhook_timeout), "10s", 100, 600e3, NULL,
     "a POST not answered in this time counts as a failure"},
    {"webhooks", "retry_window", T_DUR, F(webhook_retry_window), "24h", 1000, 30 * 86400e3, NULL,
     "how long a failing batch is retried before it is recorded as failed and skipped"},
    {"webhooks", "batch_max", T_INT, F(webhook_batch_max), "100", 1, 1000, NULL, "events per POST"},
    {"webhooks", "interval", T_DUR, F(webhook_interval), "250ms", 10, 60e3, NULL,
     "how often new events are looked for (bounds the added latency)"},
    {"webhooks", "max_backoff", T_DUR, F(webhook_max_backoff), "5m", 10, 86400e3, NULL,
     "longest wait between retries of a failing endpoint (doubling from 1s)"},
    {"webhooks", "unhealthy_after", T_INT, F(webhook_unhealthy_after), "5", 1, 1000, NULL,
     "consecutive failures after which an endpoint is reported unhealthy"},
};


/* Keys of a [domain NAME] section: per-recipient-domain route overrides. */
static const cfg_def domain_defs[] = {
    {"domain NAME", "route", T_ENUM, D(route), "", 0, 0, "mx|relay", "route for this recipient domain"},
    {"domain NAME", "relay_host", T_STR, D(relay_host), "", 0, 0, NULL, "smart host for this domain"},
    {"domain NAME", "relay_port", T_INT, D(relay_port), "0", 0, 65535, NULL, "smart host port (0: [delivery] relay_port)"},
    {"domain NAME", "relay_tls", T_ENUM, D(relay_tls), "", 0, 0, "starttls|implicit|none", "how TLS starts"},
    {"domain NAME", "relay_user", T_STR, D(relay_user), "", 0, 0, NULL, "AUTH user name"},
    {"domain NAME", "relay_password_file", T_STR, D(relay_password_file), "", 0, 0, NULL, "file holding the password"},
    {"domain NAME", "relay_password_env", T_STR, D(relay_password_env), "", 0, 0, NULL, "variable holding the password"},
    {"domain NAME", "tls_policy", T_ENUM, D(tls_policy), "", 0, 0, "none|may|encrypt|verify", "TLS policy"},
    {"domain NAME", "max_connections", T_INT, D(max_connections), "0", 0, 10000, NULL, "concurrent connections (0: global)"},
    {"domain NAME", "max_msgs_per_conn", T_INT, D(max_msgs_per_conn), "0", 0, 1000000, NULL, "messages per connection (0: global)"},
    {"domain NAME", "msgs_per_second", T_DOUBLE, D(msgs_per_second), "0", 0, 1e6, NULL, "rate limit (0: global)"},
};

/* Keys of a [sender NAME] section: DKIM keys and return path per sending domain. */
#define S(field) offsetof(cfg_sender, field)
static const cfg_def sender_defs[] = {
    {"sender NAME", "dkim_selector", T_STR, S(dkim_selector), "", 0, 0, NULL, "selector of the rsa-sha256 key"},
    {"sender NAME", "dkim_key_file", T_STR, S(dkim_key_file), "", 0, 0, NULL, "PEM RSA private key, >= 2048 bits, mode 0600"},
    {"sender NAME", "dkim_ed25519_selector", T_STR, S(dkim_ed25519_selector), "", 0, 0, NULL, "selector of the ed25519-sha256 key (RFC 8463)"},
    {"sender NAME", "dkim_ed25519_key_file", T_STR, S(dkim_ed25519_key_file), "", 0, 0, NULL, "PEM Ed25519 private key, mode 0600"},
    {"sender NAME", "sign_subdomains", T_BOOL, S(sign_subdomains), "no", 0, 0, NULL, "also sign mail whose From is a subdomain of NAME"},
    {"sender NAME", "dkim_expire", T_DUR, S(dkim_expire), "0", 0, 3650 * 86400e3, NULL, "signature lifetime written as x= (0: no x=)"},
    {"sender NAME", "bounce_domain", T_STR, S(bounce_domain), "", 0, 0, NULL, "envelope sender becomes bounces+<id>@bounce_domain (empty: keep the sender's)"},
};

#define NDEFS (sizeof defs / sizeof defs[0])
#define NSENDER_DEFS (sizeof sender_defs / sizeof sender_defs[0])
#define NDOMAIN_DEFS (sizeof domain_defs / sizeof domain_defs[0])

static int parse_int(const char *v, int64_t *out)
{
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || end == v || *end)
        return -1;
    *out = n;
    return 0;
}

/* "25M" -> 26214400. */
static int parse_size(const char *v, int64_t *out)
{
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || end == v || n < 0)
        return -1;
    int64_t mult = 1;
    switch (toupper((unsigned char)*end)) {
    case '\0': break;
    case 'K': mult = 1024; end++; break;
    case 'M': mult = 1024 * 1024; end++; break;
    case 'G': mult = 1024LL * 1024 * 1024; end++; break;
    default: return -1;
    }
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end || n > INT64_MAX / mult)
        return -1;
    *out = n * mult;
    return 0;
}

/* "90s", "5m", "250ms", "2d"; a bare number is seconds. Result in ms. */
static int parse_duration(const char *v, int64_t *out)
{
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || end == v || n < 0)
        return -1;
    int64_t mult;
    if (strcmp(end, "") == 0 || strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "m") == 0)
        mult = 60000;
    else if (strcmp(end, "h") == 0)
        mult = 3600000;
    else if (strcmp(end, "d") == 0)
        mult = 86400000;
    else
        return -1;
    if (n > INT64_MAX / mult)
        return -1;
    *out = n * mult;
    return 0;
}

static int parse_bool(const char *v, int *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0)
            return *out = 1, 0;
        if (strcasecmp(v, no[i]) == 0)
            return *out = 0, 0;
    }
    return -1;
}

static int in_choices(const char *v, const char *choices)
{
    size_t n = strlen(v);
    const char *p = choices;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0)
            return 1;
        p += len + (bar ? 1 : 0);
    }
    return 0;
}

/* host:port with a numeric port; [v6]:port allowed; empty disables. */
static int valid_addr(const char *v)
{
    if (!*v)
        return 1;
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v)
        return 0;
    int64_t port;
    if (parse_int(colon + 1, &port) || port < 0 || port > 65535)
        return 0;
    if (v[0] == '[' && colon[-1] != ']')
        return 0;
    return 1;
}

static int set_value(void *base, const cfg_def *d, const char *v, char *why, size_t whylen)
{
    char *field = (char *)base + d->offset;
    int64_t n;
    double x;
    int b;
    switch (d->type) {
    case T_ENUM:
        if (*v && !in_choices(v, d->choices)) {
            snprintf(why, whylen, "must be one of %s", d->choices);
            return -1;
        }
        /* fall through */
    case T_STR:
        free(*(char **)field);
        *(char **)field = xstrdup(v);
        return 0;
    case T_ADDR:
        if (!valid_addr(v)) {
            snprintf(why, whylen, "must be host:port (e.g. 127.0.0.1:2587) or empty");
            return -1;
        }
        free(*(char **)field);
        *(char **)field = xstrdup(v);
        return 0;
    case T_BOOL:
        if (parse_bool(v, &b)) {
            snprintf(why, whylen, "must be yes or no");
            return -1;
        }
        *(int *)field = b;
        return 0;
    case T_DOUBLE: {
        char *end;
        x = strtod(v, &end);
        if (end == v || *end || x < d->min || x > d->max) {
            snprintf(why, whylen, "must be a number from %g to %g", d->min, d->max);
            return -1;
        }
        /* field points into the struct at a double's offset (see the table) */
        // cppcheck-suppress invalidPointerCast
        *(double *)field = x;
        return 0;
    }
    case T_INT:
    case T_SIZE:
    case T_DUR: {
        int rc = d->type == T_INT ? parse_int(v, &n) : d->type == T_SIZE ? parse_size(v, &n)
                                                                         : parse_duration(v, &n);
        const char *form = d->type == T_INT ? "an integer" : d->type == T_SIZE ? "a size (e.g. 25M)"
                                                                               : "a duration (e.g. 30s, 5m)";
        if (rc) {
            snprintf(why, whylen, "must be %s", form);
            return -1;
        }
        if ((double)n < d->min || (double)n > d->max) {
            if (d->type == T_DUR)
                snprintf(why, whylen, "out of range (%gms to %gms)", d->min, d->max);
            else
                snprintf(why, whylen, "out of range (%.0f to %.0f)", d->min, d->max);
            return -1;
        }
        *(int64_t *)field = n;
        return 0;
    }
    }
    return -1;
}

static void apply_defaults(void *base, const cfg_def *table, size_t count)
{
    char why[128];
    for (size_t i = 0; i < count; i++)
        if (set_value(base, &table[i], table[i].def, why, sizeof why))
            abort(); /* a bad built-in default is a programming error */
}

config *cfg_defaults(void)
{
    config *c = xcalloc(1, sizeof *c);
    apply_defaults(c, defs, NDEFS);
    if (!*c->hostname) {
        char host[256];
        if (gethostname(host, sizeof host) == 0) {
            host[sizeof host - 1] = '\0';
            free(c->hostname);
            c->hostname = xstrdup(host);
        } else {
            free(c->hostname);
            c->hostname = xstrdup("localhost");
        }
    }
    return c;
}

typedef struct load_ctx {
    config *cfg;
    char first_error[400];
    int has_error;
} load_ctx;

__attribute__((format(printf, 2, 3))) static void fail(load_ctx *ctx, const char *fmt, ...)
{
    if (ctx->has_error)
        return;
    ctx->has_error = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->first_error, sizeof ctx->first_error, fmt, ap);
    va_end(ap);
}

static cfg_domain *domain_section(config *c, const char *name)
{
    for (cfg_domain *d = c->domains; d; d = d->next)
        if (strcasecmp(d->name, name) == 0)
            return d;
    cfg_domain *d = xcalloc(1, sizeof *d);
    apply_defaults(d, domain_defs, NDOMAIN_DEFS);
    d->name = xstrdup(name);
    for (char *p = d->name; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    d->next = c->domains;
    c->domains = d;
    return d;
}

static cfg_sender *sender_section(config *c, const char *name)
{
    for (cfg_sender *d = c->senders; d; d = d->next)
        if (strcasecmp(d->name, name) == 0)
            return d;
    cfg_sender *d = xcalloc(1, sizeof *d);
    apply_defaults(d, sender_defs, NSENDER_DEFS);
    d->name = xstrdup(name);
    for (char *p = d->name; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    d->next = c->senders;
    c->senders = d;
    return d;
}

/* Sections that repeat with a name: [domain example.com], [sender example.com]. */
typedef struct named_kind {
    const char *prefix; /* "domain " */
    const cfg_def *defs;
    size_t ndefs;
    void *(*section)(config *c, const char *name);
} named_kind;

static void *domain_any(config *c, const char *name)
{
    return domain_section(c, name);
}

static void *sender_any(config *c, const char *name)
{
    return sender_section(c, name);
}

static const named_kind named_kinds[] = {
    {"domain ", domain_defs, NDOMAIN_DEFS, domain_any},
    {"sender ", sender_defs, NSENDER_DEFS, sender_any},
};

/* Set key from table on base. 1 done, 0 failed (ctx has why), -1 no such key. */
static int set_from(load_ctx *ctx, void *base, const cfg_def *table, size_t n, const char *section,
                    const char *key, const char *value)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(table[i].key, key) != 0 || (table == defs && strcmp(table[i].section, section) != 0))
            continue;
        char why[160];
        if (set_value(base, &table[i], value, why, sizeof why)) {
            fail(ctx, "[%s] %s: %s", section, key, why);
            return 0;
        }
        return 1;
    }
    return -1;
}

static int on_named_key(load_ctx *ctx, const named_kind *k, const char *section, const char *key,
                        const char *value)
{
    const char *name = section + strlen(k->prefix);
    while (*name == ' ')
        name++;
    if (!*name) {
        fail(ctx, "section [%s] needs a domain name, e.g. [%sexample.com]", section, k->prefix);
        return 0;
    }
    int rc = set_from(ctx, k->section(ctx->cfg, name), k->defs, k->ndefs, section, key, value);
    if (rc < 0)
        fail(ctx, "unknown key '%s' in section [%s]", key, section);
    return rc > 0;
}

static int on_key(void *user, const char *section, const char *key, const char *value)
{
    load_ctx *ctx = user;
    for (size_t i = 0; i < sizeof named_kinds / sizeof named_kinds[0]; i++)
        if (strncmp(section, named_kinds[i].prefix, strlen(named_kinds[i].prefix)) == 0)
            return on_named_key(ctx, &named_kinds[i], section, key, value);
    int rc = set_from(ctx, ctx->cfg, defs, NDEFS, section, key, value);
    if (rc >= 0)
        return rc;
    int section_known = 0;
    for (size_t i = 0; i < NDEFS; i++)
        section_known |= strcmp(defs[i].section, section) == 0;
    if (!section_known)
        fail(ctx, "unknown section [%s]", section);
    else
        fail(ctx, "unknown key '%s' in section [%s]", key, section);
    return 0;
}

/* Turn inih's result into an error naming path:line; frees c on error. */
static config *finish_load(config *c, load_ctx *ctx, int line, const char *path, err *e)
{
    if (line == 0) {
        c->path = xstrdup(path);
        return c;
    }
    if (line < 0)
        err_set(e, ERR_IO, "%s: cannot read", path);
    else if (ctx->has_error)
        err_set(e, ERR_INVALID, "%s:%d: %s", path, line, ctx->first_error);
    else
        err_set(e, ERR_INVALID, "%s:%d: syntax error (expected [section] or key = value)", path, line);
    cfg_free(c);
    return NULL;
}

config *cfg_load(const char *path, err *e)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        err_set(e, ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    config *c = cfg_defaults();
    load_ctx ctx = {.cfg = c};
    int line = ini_parse_file(f, on_key, &ctx);
    fclose(f);
    return finish_load(c, &ctx, line, path, e);
}

config *cfg_load_buffer(const char *text, size_t len, const char *name, err *e)
{
    /* inih wants a C string; a NUL inside the text ends it, as in a file read by lines. */
    char *copy = xstrndup(text, len);
    config *c = cfg_defaults();
    load_ctx ctx = {.cfg = c};
    int line = ini_parse_string(copy, on_key, &ctx);
    free(copy);
    return finish_load(c, &ctx, line, name, e);
}

static void free_strings(void *base, const cfg_def *table, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        enum cfg_type t = table[i].type;
        if (t == T_STR || t == T_ENUM || t == T_ADDR) {
            char **p = (char **)((char *)base + table[i].offset);
            free(*p);
            *p = NULL;
        }
    }
}

void cfg_free(config *c)
{
    if (!c)
        return;
    free_strings(c, defs, NDEFS);
    cfg_domain *d = c->domains;
    while (d) {
        cfg_domain *next = d->next;
        free_strings(d, domain_defs, NDOMAIN_DEFS);
        free(d->name);
        free(d);
        d = next;
    }
    cfg_sender *snd = c->senders;
    while (snd) {
        cfg_sender *next = snd->next;
        free_strings(snd, sender_defs, NSENDER_DEFS);
        free(snd->name);
        free(snd);
        snd = next;
    }
    free(c->path);
    free(c);
}

const cfg_domain *cfg_find_domain(const config *c, const char *domain)
{
    for (const cfg_domain *d = c->domains; d; d = d->next)
        if (strcasecmp(d->name, domain) == 0)
            return d;
    return NULL;
}

const cfg_sender *cfg_find_sender(const config *c, const char *domain)
{
    for (const cfg_sender *d = c->senders; d; d = d->next)
        if (strcasecmp(d->name, domain) == 0)
            return d;
    /* Walk up the parents: mail.example.com -> example.com -> com. */
    for (const char *p = strchr(domain, '.'); p; p = strchr(p + 1, '.'))
        for (const cfg_sender *d = c->senders; d; d = d->next)
            if (d->sign_subdomains && strcasecmp(d->name, p + 1) == 0)
                return d;
    return NULL;
}

static const char *type_name(enum cfg_type t)
{
    static const char *const names[] = {"string", "integer", "size", "duration",
                                        "bool", "number", "choice", "host:port"};
    return names[t];
}

static void print_table(FILE *out, int markdown, const cfg_def *table, size_t count)
{
    const char *section = "";
    for (size_t i = 0; i < count; i++) {
        const cfg_def *d = &table[i];
        if (strcmp(section, d->section) != 0) {
            section = d->section;
            if (markdown)
                fprintf(out, "\n**[%s]**\n\n| key | type | default | meaning |\n| --- | --- | --- | --- |\n",
                        section);
            else
                fprintf(out, "\n[%s]\n", section);
        }
        const char *type = d->type == T_ENUM ? d->choices : type_name(d->type);
        if (markdown)
            fprintf(out, "| `%s` | %s | `%s` | %s |\n", d->key, type, d->def, d->doc);
        else
            fprintf(out, "  %-28s %-10s default %-12s %s\n", d->key,
                    d->type == T_ENUM ? "choice" : type_name(d->type), *d->def ? d->def : "\"\"", d->doc);
    }
}

void cfg_print_reference(FILE *out, int markdown)
{
    print_table(out, markdown, defs, NDEFS);
    print_table(out, markdown, domain_defs, NDOMAIN_DEFS);
    print_table(out, markdown, sender_defs, NSENDER_DEFS);
}

char *cfg_secret(const char *file, const char *env, const char *what, err *e)
{
    if (file && *file) {
        FILE *f = fopen(file, "r");
        if (!f) {
            err_set(e, ERR_IO, "%s: cannot read %s: %s", what, file, strerror(errno));
            return NULL;
        }
        char line[4096];
        size_t n = fread(line, 1, sizeof line - 1, f);
        fclose(f);
        line[n] = '\0';
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        return xstrdup(line);
    }
    if (env && *env) {
        const char *v = getenv(env);
        if (!v) {
            err_set(e, ERR_INVALID, "%s: environment variable %s is not set", what, env);
            return NULL;
        }
        return xstrdup(v);
    }
    err_set(e, ERR_INVALID, "%s: neither a _file nor an _env is configured", what);
    return NULL;
}

int cfg_parse_schedule(const char *s, int64_t *out, int max, err *e)
{
    int count = 0;
    const char *p = s;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char item[32];
        while (len && *p == ' ')
            p++, len--;
        while (len && p[len - 1] == ' ')
            len--;
        if (len == 0 || len >= sizeof item || count >= max) {
            err_set(e, ERR_INVALID, "retry schedule '%s': bad item or more than %d items", s, max);
            return -1;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        if (parse_duration(item, &out[count]) || out[count] <= 0) {
            err_set(e, ERR_INVALID, "retry schedule: '%s' is not a positive duration", item);
            return -1;
        }
        count++;
        p += len;
        while (*p == ' ')
            p++;
        if (*p == ',')
            p++;
    }
    if (count == 0) {
        err_set(e, ERR_INVALID, "retry schedule is empty");
        return -1;
    }
    return count;
}

char *cfg_spool_path(const config *c, const char *name)
{
    size_t n = strlen(c->spool_dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", c->spool_dir, name);
    return p;
}
