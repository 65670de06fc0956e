/*
 * doctor — the checklist behind `posthaste doctor`.
 *
 * A check has a group ("config", "dns"), an id ("tls_cert", "spf" …), a
 * status and one line saying what was found; a failed check also carries
 * the fix. cmd_doctor.c runs the configuration checks and prints the
 * report (text or JSON); doctor_dns.c runs the DNS checks over
 * core/resolve.h with the configured resolvers.
 *
 * UNKNOWN is for what could not be determined (DNS unreachable, no public
 * address known): it never passes for OK, and it is never reported as a
 * failure of the thing being checked.
 */
#ifndef PH_CLI_DOCTOR_H
#define PH_CLI_DOCTOR_H

#include "core/config.h"

#include <stdio.h>

enum doctor_status { DOCTOR_OK = 0, DOCTOR_FAIL = 1, DOCTOR_UNKNOWN = 2 };

typedef struct doctor_report doctor_report;

/* Add a check; detail is printf-formatted. */
void doctor_add(doctor_report *r, const char *group, const char *id, enum doctor_status st,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Set the fix of the check added last (printf-formatted). */
void doctor_fix(doctor_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* SPF, DKIM and DMARC of every [sender] domain, and the hostname's FCrDNS. */
void doctor_dns_checks(doctor_report *r, const config *cfg);

#endif
