/*
 * vote — the decision over a request's chains (rules at the top of vote.c).
 * Pure; safe from any thread.
 */
#ifndef SA_COORD_VOTE_H
#define SA_COORD_VOTE_H

#include <stdbool.h>

#include "sa.pb-c.h"

#define COORD_VOTE_MAX 64 /* answers one vote looks at */

/* The vote over answers[n] (normalised, "" or NULL = no answer) in
 * finishing order, with `running` chains still running. Returns the
 * position in answers of the winning answer's first occurrence, or -1 when
 * there is no winner (yet, or at all; always -1 for VOTE_NONE or n outside
 * [0, COORD_VOTE_MAX]). *votes gets its votes; *decided whether the outcome
 * can no longer change (time to cancel the running chains). answers is
 * borrowed for the call. */
int coord_vote_decide(const char *const *answers, int n, int running, Sa__VoteRule rule, int k,
                      int *votes, bool *decided);

#endif /* SA_COORD_VOTE_H */
