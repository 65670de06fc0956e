/*
 * ids — identifiers and randomness.
 *
 * All randomness comes from the OS CSPRNG (getrandom). Message ids are
 * 26 characters of Crockford base32: 48 bits of milliseconds then 80 random
 * bits, so ids sort by creation time (cursor pagination, spool locality)
 * and cannot be guessed.
 */
#ifndef PH_CORE_IDS_H
#define PH_CORE_IDS_H

#include <stddef.h>
#include <stdint.h>

#define ID_MSG_LEN 26

/* Fill n bytes from the OS CSPRNG; returns 0 or -1 (errno set). */
int ids_random(void *out, size_t n);
/* Lower-case RFC 4648 base32 without padding; out needs (n*8+4)/5+1 bytes. */
void ids_base32(const uint8_t *in, size_t n, char *out);
/* A new message id (ID_MSG_LEN chars + NUL). Returns 0 or -1. */
int ids_message(char out[ID_MSG_LEN + 1]);
/* Lower-case hex; out needs 2n+1 bytes. */
void ids_hex(const uint8_t *in, size_t n, char *out);
/* Constant-time equality of two equal-length byte strings. */
int ids_equal_ct(const void *a, const void *b, size_t n);

#endif
