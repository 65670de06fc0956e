/*
 * webhooks — events out to applications, signed, at least once.
 *
 * Each configured endpoint has a durable cursor (the last event id it
 * acknowledged, stored in the spool). Every [webhooks] interval the engine
 * reads the events after each idle endpoint's cursor, keeps those of the
 * types it subscribed to, and POSTs up to batch_max of them as one JSON
 * document with
 *   X-Posthaste-Timestamp: <unix seconds>
 *   X-Posthaste-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>
 * (the scheme the API accepts for signed requests). A 2xx moves the cursor
 * past the batch; anything else, or no answer within timeout, is retried
 * with doubling backoff (1 s .. max_backoff, with jitter) until the batch
 * has failed for retry_window: then a `webhook_failed` log line records it
 * and the cursor moves on. An endpoint failing unhealthy_after times in a
 * row is marked unhealthy (visible in GET /v1/webhooks) until a success.
 * Each event carries its spool event id for de-duplication: a retry after
 * a lost 2xx, or a restart, may deliver an event twice, never zero times.
 *
 * HTTP is libcurl's multi interface driven by the server's libevent loop;
 * nothing here blocks the loop. Owns: its curl handles and per-endpoint
 * in-memory state. Never: changes events, or holds a webhook's secret in
 * a log line.
 */
#ifndef PH_OUTCOME_WEBHOOKS_H
#define PH_OUTCOME_WEBHOOKS_H

#include "core/buf.h"
#include "core/err.h"

#include <stddef.h>
#include <stdint.h>

struct server;
struct server_component;
extern const struct server_component webhooks_component;

/* The event types an endpoint may subscribe to. */
int webhooks_valid_type(const char *type);
/* Validate a URL: http(s), https required unless the host is loopback. */
int webhooks_check_url(const char *url, err *e);
/* Signature header value "v1=<hex>" for a body at a timestamp. */
void webhooks_sign(const char *secret, int64_t ts, const char *body, size_t len, char out[80]);
/* Re-read the endpoint list (after the API created or deleted one). */
void webhooks_reload(struct server *srv);

#endif
