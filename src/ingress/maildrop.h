/*
 * maildrop — the local drop directory for `posthaste sendmail`, and the
 * `serve` component that picks it up (Postfix's postdrop/pickup idea).
 *
 * A dropped message is one file: a first line of JSON holding the envelope
 * ({"from":…,"to":[…]}) and then the message with CRLF line endings. It is
 * written to spool_dir/maildrop/tmp, fsync'd, renamed into maildrop/new
 * and the directory fsync'd, so a file in new/ is always complete.
 *
 * The pickup component scans new/ every [sendmail] pickup_interval,
 * submits each file through the one submit pipeline (ingress "sendmail",
 * trusted local: the directory is the server's own, mode 0700) and unlinks
 * it only after the group commit, so a crash in between submits it again
 * (at-least-once). A file that can never be accepted is moved to
 * maildrop/failed/ with a log line naming why.
 *
 * Limits: files larger than [smtp] max_message_size + 64 KB are refused.
 */
#ifndef PH_INGRESS_MAILDROP_H
#define PH_INGRESS_MAILDROP_H

#include "core/config.h"
#include "core/err.h"

#include <stddef.h>

/* Drop a message durably. rcpts are validated addresses. Returns 0 or -1. */
int maildrop_write(const config *cfg, const char *mail_from, const char *const *rcpts, size_t nrcpts,
                   const char *data, size_t len, err *e);

struct server_component;
extern const struct server_component maildrop_component;

#endif
