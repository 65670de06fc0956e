/*
 * bounce — non-delivery reports (RFC 3464): a multipart/report with a
 * human-readable part, a message/delivery-status part (one block per failed
 * recipient: Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code)
 * and the original header section (text/rfc822-headers), built with GMime.
 *
 * The report is handed to the submit pipeline with a null reverse-path, so
 * it is stored durably like any other message and can never cause another
 * report. bounce_wanted() says whether a bounced/expired message gets one:
 * never for a null reverse-path, else [delivery] notify_sender_smtp for
 * mail submitted over SMTP (and sendmail), notify_sender_api for the API.
 *
 * Never includes the original body.
 */
#ifndef PH_DELIVERY_BOUNCE_H
#define PH_DELIVERY_BOUNCE_H

#include "core/config.h"
#include "spool/spool.h"

#include <stddef.h>

typedef struct bounce_rcpt {
    const char *addr;
    const char *status;      /* enhanced status, e.g. "5.1.1" (4.4.7 when expired) */
    const char *remote;      /* remote host or NULL */
    const char *diagnostic;  /* the full reply text or local reason */
} bounce_rcpt;

int bounce_wanted(const config *cfg, const char *ingress, const char *mail_from);

/* Build the report for message m (loaded with data). Returns a new string
   (CRLF line endings) and its length in *len. */
char *bounce_build(const char *hostname, const spool_message *m, const bounce_rcpt *r, size_t n, size_t *len);

#endif
