/*
 * mem — allocation that never returns NULL.
 *
 * Like Postfix's mymalloc: running out of memory is not a condition any
 * caller can repair, so the allocator logs and aborts instead of letting
 * NULL flow through a hundred call sites. Every other resource failure
 * (files, sockets, the database) is returned as an error value.
 */
#ifndef PH_CORE_MEM_H
#define PH_CORE_MEM_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
void *xmemdup(const void *p, size_t n);

#endif
