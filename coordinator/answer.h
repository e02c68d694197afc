/*
 * answer — normalisation of a chain's answer text for the vote (the rules
 * are at the top of answer.c). Pure; safe from any thread.
 */
#ifndef SA_COORD_ANSWER_H
#define SA_COORD_ANSWER_H

#include <stddef.h>

/* Writes the normalised form of `in` (NUL-terminated, any bytes) into
 * out[cap], cut on a code point boundary; "" when nothing is left. in NULL
 * gives ""; out NULL or cap 0 is a no-op. */
void coord_answer_normalize(const char *in, char *out, size_t cap);

#endif /* SA_COORD_ANSWER_H */
