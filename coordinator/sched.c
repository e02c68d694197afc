/*
 * sched — the planner of continuous batching (see sched.h).
 *
 * Every chain of every admitted request is a sequence on the stages of its
 * replica. Prefill covers the prompt except its last token, on chain 0's
 * sequence; chain i then forks from chain 0 (shared prompt blocks,
 * copy-on-write) and every chain feeds the last prompt token as its first
 * decode step, so each chain samples its first token with its own RNG
 * stream — the same tokens an independent request with that chain's seed
 * gets (the kernels are batch-invariant).
 */
#include "sched.h"

#include <string.h>

int coord_sched_replay_len(const coord_request_t *r, const coord_chain_t *c) {
  return r->prompt_len - 1 + c->n_tokens;
}

static bool decode_ready(const coord_chain_t *c) {
  return c->state == COORD_CHAIN_DECODE && !c->inflight;
}

static bool replay_ready(const coord_request_t *r, const coord_chain_t *c) {
  return c->state == COORD_CHAIN_WAIT && !c->inflight &&
         c->replayed < coord_sched_replay_len(r, c);
}

int coord_sched_ready(const coord_request_t *head, int replica) {
  int n = 0;
  for (const coord_request_t *r = head; r; r = r->next) {
    if (r->replica != replica)
      continue;
    if (r->state == COORD_REQ_DECODING)
      for (int k = 0; k < r->n_chains; k++)
        n += decode_ready(&r->chains[k]);
    else if (r->state == COORD_REQ_PREFILL && !r->prefill_inflight)
      n++;
    else if (r->state == COORD_REQ_REPLAY && !r->prefill_inflight)
      for (int k = 0; k < r->n_chains; k++)
        n += replay_ready(r, &r->chains[k]);
  }
  return n;
}

/* The audio rows whose prompt positions fall in [at, at + n). */
static void audio_in(const coord_request_t *r, int at, int n, coord_plan_entry_t *e) {
  e->emb_first = 0;
  e->emb_n = 0;
  for (int k = 0; k < r->n_audio_rows; k++) {
    int p = r->audio_pos[k];
    if (p >= at && p < at + n) {
      if (e->emb_n == 0)
        e->emb_first = k;
      e->emb_n++;
    }
  }
}

static coord_plan_entry_t *add(coord_plan_t *plan, coord_request_t *r, int chain,
                               coord_step_kind_t kind, int position, int n_tokens,
                               const int32_t *tokens) {
  coord_plan_entry_t *e = &plan->e[plan->n++];
  memset(e, 0, sizeof *e);
  e->req = r;
  e->chain = chain;
  e->kind = kind;
  e->position = position;
  e->n_tokens = n_tokens;
  e->tokens = tokens;
  plan->total_tokens += n_tokens;
  return e;
}

static int min3(int a, int b, int c) {
  int m = a < b ? a : b;
  return m < c ? m : c;
}

int coord_sched_plan(const coord_request_t *head, const coord_plan_limits_t *lim,
                     coord_plan_t *plan) {
  plan->replica = lim->replica;
  plan->n = 0;
  plan->total_tokens = 0;
  plan->has_prefill = false;
  int max_seqs = lim->max_seqs < COORD_MAX_SEQS_PER_BATCH ? lim->max_seqs
                                                          : COORD_MAX_SEQS_PER_BATCH;
  int budget = lim->token_budget;
  /* the request list is not written here: casting away const only to hand
   * out borrowed pointers in the plan */
  coord_request_t *first = (coord_request_t *)head;

  /* decode steps first (latency) */
  for (coord_request_t *r = first; r && plan->n < max_seqs && budget > 0; r = r->next) {
    if (r->replica != lim->replica || r->state != COORD_REQ_DECODING)
      continue;
    for (int k = 0; k < r->n_chains && plan->n < max_seqs && budget > 0; k++) {
      coord_chain_t *c = &r->chains[k];
      if (!decode_ready(c))
        continue;
      add(plan, r, k, COORD_STEP_DECODE, r->prompt_len - 1 + c->n_tokens, 1, &c->next_input);
      budget--;
    }
  }
  /* then at most one prefill chunk */
  for (coord_request_t *r = first; r && plan->n < max_seqs && budget > 0; r = r->next) {
    if (r->replica != lim->replica || r->state != COORD_REQ_PREFILL || r->prefill_inflight)
      continue;
    int left = r->prompt_len - 1 - r->prefilled;
    if (left <= 0)
      continue;
    int n = min3(left, lim->prefill_chunk, budget);
    coord_plan_entry_t *e =
        add(plan, r, 0, COORD_STEP_PREFILL, r->prefilled, n, r->prompt + r->prefilled);
    audio_in(r, r->prefilled, n, e);
    plan->has_prefill = true;
    return plan->n;
  }
  /* or one chain's replay chunk */
  for (coord_request_t *r = first; r && plan->n < max_seqs && budget > 0; r = r->next) {
    if (r->replica != lim->replica || r->state != COORD_REQ_REPLAY || r->prefill_inflight)
      continue;
    const coord_chain_t *c = NULL;
    for (int k = 0; k < r->n_chains && !c; k++)
      if (replay_ready(r, &r->chains[k]))
        c = &r->chains[k];
    if (!c)
      continue;
    int at = c->replayed;
    int n = min3(coord_sched_replay_len(r, c) - at, lim->prefill_chunk, budget);
    if (n > COORD_REPLAY_CHUNK_MAX)
      n = COORD_REPLAY_CHUNK_MAX;
    for (int k = 0; k < n; k++) {
      int p = at + k;
      plan->replay_ids[k] = p < r->prompt_len ? r->prompt[p] : c->tokens[p - r->prompt_len];
    }
    coord_plan_entry_t *e = add(plan, r, c->idx, COORD_STEP_REPLAY, at, n, plan->replay_ids);
    audio_in(r, at, n, e);
    plan->has_prefill = true;
    return plan->n;
  }
  return plan->n;
}
