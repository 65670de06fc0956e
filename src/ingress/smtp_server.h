/*
 * smtp_server — SMTP submission (RFC 6409) on 587/STARTTLS and 465/TLS.
 *
 * What it does: accepts connections on [smtp] listen (plain, STARTTLS
 * offered) and listen_tls (implicit TLS), speaks ESMTP (EHLO/HELO,
 * STARTTLS, AUTH PLAIN/LOGIN, MAIL/RCPT/DATA/BDAT, RSET, NOOP, VRFY 252,
 * QUIT) with PIPELINING, ENHANCEDSTATUSCODES, 8BITMIME, SMTPUTF8, SIZE and
 * CHUNKING, authenticates API keys (scope send, IP allowlist, sender
 * domains, rate limit) and hands each message to the submit pipeline. A
 * 250 is sent only from the pipeline's completion, i.e. after the spool's
 * durable commit.
 *
 * What it owns: the listeners, one session per connection (libevent
 * bufferevents; bufferevent_openssl for TLS), a per-client-address table
 * (connection counts, failed-AUTH counts for the growing delay).
 *
 * What it never does: touch the spool directly (it goes through
 * submit.h and keys.h), log passwords/keys or message bodies, or run a
 * command that arrived in the same read as STARTTLS.
 *
 * Limits (all [smtp] config keys): command line, text line, message size,
 * recipients, header section (in the pipeline), connections total and per
 * address, bad commands, greeting/command/data/session timeouts, AUTH
 * failure delay and its cap. timeout_data restarts only after
 * data_block_size bytes of progress (not on every byte), so a client
 * dripping one byte per second is cut off instead of holding the session
 * for ever.
 */
#ifndef PH_INGRESS_SMTP_SERVER_H
#define PH_INGRESS_SMTP_SERVER_H

#include "core/server.h"

#include <stddef.h>

/* Sessions currently open (for metrics and tests). */
size_t smtps_sessions(const struct smtps *sm);

/* The submission server as a `serve` component (creates srv->smtp). */
extern const server_component smtps_component;

#endif
