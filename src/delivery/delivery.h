/*
 * delivery — the scheduler: turns due recipients in the spool into SMTP
 * transactions and their outcomes back into spool state and events.
 *
 * How it runs (all on the server's event loop):
 *  - Every scheduler_interval (and whenever work finishes) it reads due
 *    recipients with spool_due() (a keyset scan over the pending index)
 *    and skips those already in flight. In-flight recipients are kept in
 *    memory only, never written as 'sending' (docs/ARCHITECTURE.md): after
 *    a crash they are simply still due — at-least-once, never lost.
 *  - Recipients are grouped into jobs (one message, one destination, up to
 *    max_rcpts_per_txn recipients) queued on their destination (route.h).
 *    At most scan_batch recipients wait in memory, and one destination
 *    holds at most a quarter of them, so a slow destination cannot starve
 *    the others.
 *  - A destination opens up to its concurrency limit of connections
 *    (halved for concurrency_penalty after a 421 or a refused connection),
 *    sends at most msgs_per_second (a token bucket with a one-second burst)
 *    and max_msgs_per_conn messages per connection. A connection that
 *    finished a transaction takes the destination's next job (RSET first);
 *    an idle one closes after idle_timeout.
 *  - Each finished job writes its outcome in one group-committed spool
 *    write: delivered / deferred (next_at from the retry schedule with
 *    jitter) / bounced (hard bounces also go on the suppression list) /
 *    expired (past max_age), each with an event carrying the remote host,
 *    the full reply text and the attempt number. The recipients leave the
 *    in-flight set only after that commit. Then non-delivery reports are
 *    submitted (bounce.h).
 *  - [delivery] paused = yes: nothing is scanned or sent.
 *
 * What it owns: struct delivery (srv->delivery), the resolver, the TLS
 * context, destinations, connections and jobs.
 * What it never does: write a recipient's state before its attempt ends.
 * Drain: no new scans or transactions; idle and connecting sessions close;
 * transactions in progress finish and their outcomes are committed.
 */
#ifndef PH_DELIVERY_DELIVERY_H
#define PH_DELIVERY_DELIVERY_H

#include <stddef.h>

struct server_component;
struct server;
extern const struct server_component delivery_component;

/* Look for due recipients now instead of at the next scheduler_interval
   tick (for ingress, right after a submission is committed). Safe to call
   at any time on the loop; does nothing while paused or draining. */
void delivery_kick(struct server *srv);
/* Outbound SMTP connections open now (for the connections gauge). */
size_t delivery_connections(struct server *srv);

#endif
