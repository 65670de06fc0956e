/*
 * alerts — failure alerts to operators.
 *
 * Every [alerts] interval the component checks four conditions:
 *   bounce_rate  bounced / (delivered + bounced) over the recent window
 *                (from the committed-event counters) above the threshold,
 *                once at least bounce_min outcomes were seen;
 *   queue_age    the oldest message with a pending recipient is older
 *                than queue_age;
 *   webhook      a webhook endpoint is unhealthy;
 *   key_rate     a key sent key_rate_min+ recipients in the window, at
 *                key_rate_factor times its own 24-hour average rate or more.
 * A condition that becomes true raises an alert: a WARN `alert` log line,
 * an `alert` event in the spool (which webhooks subscribed to `alert`
 * receive), and, with admin_email set, a message to that address through
 * the submit pipeline. While it holds it is raised again every `repeat`;
 * when it clears, an `alert_resolved` log line says so.
 */
#ifndef PH_OUTCOME_ALERTS_H
#define PH_OUTCOME_ALERTS_H

struct server_component;
extern const struct server_component alerts_component;

#endif
