/*
 * vote — the vote over a request's chains, with early consensus. Pure: the
 * normalised answers in finishing order in, a decision out; cancelling the
 * chains that lost is the request module's job.
 *
 * Rules (SubmitRequest.vote_rule):
 *  - majority: the answer with the most votes wins; a tie goes to the answer
 *    that was given first (in finishing order). Decided — the running chains
 *    are cancelled — as soon as no other answer, old or new, can overtake the
 *    leader even if every running chain gave it; so the early result always
 *    equals the result of running every chain to its end.
 *  - window:k (VOTE_FIRST_K_AGREE): decided once k chains that finished one
 *    after the other (in finishing order) gave the same answer; that answer
 *    wins. k <= 0 means 2. If no such run forms, the result is the majority
 *    result over the chains that finished.
 *  - none: never stops early and reports no voted answer (every chain's
 *    answer is in the result).
 *
 */
#include "vote.h"

#include <string.h>

typedef struct {
  const char *norm;
  int votes;
  int first; /* position in finishing order of its first vote */
} tally_t;

/* Plurality over answers[n]: fills t, returns the leader's index in t (most
 * votes, then earliest first vote) or -1 when nobody answered. */
static int tally(const char *const *answers, int n, tally_t *t, int *n_t) {
  int m = 0;
  for (int i = 0; i < n; i++) {
    if (!answers[i] || !answers[i][0])
      continue;
    int k;
    for (k = 0; k < m; k++)
      if (!strcmp(t[k].norm, answers[i]))
        break;
    if (k == m) {
      t[m].norm = answers[i];
      t[m].votes = 0;
      t[m].first = i;
      m++;
    }
    t[k].votes++;
  }
  *n_t = m;
  int best = -1;
  for (int k = 0; k < m; k++) /* t is in order of first vote: '>' keeps the earliest */
    if (best < 0 || t[k].votes > t[best].votes)
      best = k;
  return best;
}

int coord_vote_decide(const char *const *answers, int n, int running, Sa__VoteRule rule, int k,
                      int *votes, bool *decided) {
  *votes = 0;
  *decided = false;
  if (rule == SA__VOTE_RULE__VOTE_NONE || n < 0 || n > COORD_VOTE_MAX)
    return -1;
  if (running < 0)
    running = 0;
  if (rule == SA__VOTE_RULE__VOTE_FIRST_K_AGREE) {
    if (k <= 0)
      k = 2;
    int streak = 0;
    for (int i = 0; i < n; i++) {
      if (!answers[i] || !answers[i][0]) {
        streak = 0;
        continue;
      }
      streak = streak > 0 && !strcmp(answers[i - 1], answers[i]) ? streak + 1 : 1;
      if (streak >= k) {
        int first = i, v = 0;
        for (int j = 0; j < n; j++)
          if (answers[j] && !strcmp(answers[j], answers[i])) {
            if (j < first)
              first = j;
            v++;
          }
        *votes = v;
        *decided = true;
        return first;
      }
    }
    /* no run of k: the majority result, decided only when all are done */
  }
  tally_t t[COORD_VOTE_MAX];
  int n_t;
  int best = tally(answers, n, t, &n_t);
  if (running == 0) {
    *decided = true;
  } else if (best >= 0 && rule == SA__VOTE_RULE__VOTE_MAJORITY) {
    /* can anyone overtake the leader if all the running chains vote for it?
     * A new answer would lose a tie (its first vote comes later). */
    bool safe = running <= t[best].votes;
    for (int j = 0; j < n_t && safe; j++) {
      if (j == best)
        continue;
      int v = t[j].votes + running;
      if (v > t[best].votes || (v == t[best].votes && t[j].first < t[best].first))
        safe = false;
    }
    *decided = safe;
  }
  if (best < 0)
    return -1;
  *votes = t[best].votes;
  return t[best].first;
}
