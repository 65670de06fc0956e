/*
 * resolve — small synchronous DNS lookups for command-line tools (doctor).
 *
 * c-ares on a private channel, driven by a select() loop until the answer
 * or the timeout: one lookup never waits longer than timeout_ms x 2 tries
 * per server. The server list is "ip[:port],…" ([delivery] dns_servers
 * syntax; [v6]:port for IPv6) or empty for /etc/resolv.conf. Only DNS is
 * asked (never /etc/hosts), so what doctor reports is what the world sees.
 *
 * Every lookup returns one of three outcomes, because a checklist must not
 * confuse "the record is missing" with "DNS could not be asked":
 *    RES_FOUND (0)  answers in *out (a NULL-terminated array of strings)
 *    RES_NONE  (1)  the name or the record type does not exist
 *    RES_ERROR (-1) no answer: timeout, refused, server failure (e says which)
 *
 * Not for the server: delivery resolves asynchronously on the event loop.
 * Limits: RES_MAX_ANSWERS strings per lookup.
 */
#ifndef PH_CORE_RESOLVE_H
#define PH_CORE_RESOLVE_H

#include "core/err.h"

#include <stddef.h>

#define RES_MAX_ANSWERS 64
enum { RES_ERROR = -1, RES_FOUND = 0, RES_NONE = 1 };

typedef struct resolver resolver;

resolver *resolve_new(const char *servers, int timeout_ms, err *e);
void resolve_free(resolver *r);
/* TXT records of name, each record's character-strings joined. */
int resolve_txt(resolver *r, const char *name, char ***out, err *e);
/* A and AAAA addresses of name, as text. */
int resolve_addrs(resolver *r, const char *name, char ***out, err *e);
/* MX exchange host names of name (preference order not kept). */
int resolve_mx(resolver *r, const char *name, char ***out, err *e);
/* PTR names of an IPv4 or IPv6 address given as text. */
int resolve_ptr(resolver *r, const char *ip, char ***out, err *e);
void resolve_list_free(char **list);
size_t resolve_list_len(char *const *list);

#endif
