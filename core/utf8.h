/*
 * utf8 — the one UTF-8 decoder and validator of sa-cluster (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF). Pure functions,
 * safe from any thread. Unicode beyond encoding (NFC, categories) is
 * utf8proc's.
 */
#ifndef SA_UTF8_H
#define SA_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Looks at one UTF-8 sequence at s[0..n), n >= 1. Returns 1 if it is a
 * valid complete character (*adv = its length, *cp = the code point if cp
 * is not NULL), 0 if s[0..n) is a valid but incomplete prefix that ends at
 * n (*adv = n), -1 if it is invalid (*adv = the length of the maximal
 * invalid subpart, >= 1, to replace by U+FFFD as the Unicode standard's
 * "best practice" says). */
int sa_utf8_decode(const uint8_t *s, size_t n, size_t *adv, uint32_t *cp);

/* The offset of the first byte of s[0..n) that does not start a valid
 * complete character, or n if all of it is valid UTF-8. */
size_t sa_utf8_check(const void *s, size_t n);

/* True if s[0..n) is valid UTF-8 (an empty string is). */
bool sa_utf8_valid(const void *s, size_t n);

#endif /* SA_UTF8_H */
