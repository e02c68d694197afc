/*
 * sched — the planner of continuous batching: from the requests and one
 * replica's limits, the plan of its next micro-batch.
 *
 * Pure: reads requests and chains, writes only the plan it is given; no
 * I/O, no clock, no state of its own. Marking the planned chains in flight
 * and sending the plan are the caller's (request.c, pipeline.c).
 *
 * What goes in a micro-batch, in order: decode steps of ready chains (one
 * token each, latency first), then at most one prefill chunk of a prompt,
 * or — if no prefill chunk took it — one replay chunk of a chain that fails
 * over (its prompt and tokens so far, re-prefilled on a new replica). A
 * batch carries at most one audio span, hence one prefill or replay chunk.
 */
#ifndef SA_COORD_SCHED_H
#define SA_COORD_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "coord.h"

typedef enum {
  COORD_STEP_DECODE = 0, /* one token of a chain; a sample comes back */
  COORD_STEP_PREFILL,    /* a chunk of the prompt, on chain 0's sequence */
  COORD_STEP_REPLAY,     /* a chunk of a chain's prompt + tokens after a failover */
} coord_step_kind_t;

/* One sequence of a planned micro-batch. Pointers are borrowed from the
 * request (or from the plan's replay_ids) and stay valid until the request
 * changes. */
typedef struct {
  coord_request_t *req;
  int chain;
  coord_step_kind_t kind;
  int position; /* of the first token */
  int n_tokens;
  const int32_t *tokens;
  /* audio rows inside this chunk: rows [emb_first, emb_first + emb_n) of
   * the request's audio_rows, each at its own prompt position
   * (audio_pos[row]; runs of consecutive positions, one per audio chunk) */
  int emb_first, emb_n;
} coord_plan_entry_t;

typedef struct {
  int replica;
  int n;
  coord_plan_entry_t e[COORD_MAX_SEQS_PER_BATCH];
  int64_t total_tokens;
  bool has_prefill; /* a prefill or replay chunk is in it */
  int32_t replay_ids[COORD_REPLAY_CHUNK_MAX];
} coord_plan_t;

typedef struct {
  int replica;
  int max_seqs;      /* sequences in this micro-batch */
  int token_budget;  /* tokens in this micro-batch */
  int prefill_chunk; /* most prompt tokens of one prefill or replay chunk */
} coord_plan_limits_t;

/* Sequences of requests on `replica` that could go into a batch now (the
 * same rules as coord_sched_plan). head: the first request of the list. */
int coord_sched_ready(const coord_request_t *head, int replica);

/* Fills *plan with the next micro-batch for lim->replica from the requests
 * in list order (oldest first). Returns plan->n (0: nothing to do). */
int coord_sched_plan(const coord_request_t *head, const coord_plan_limits_t *lim,
                     coord_plan_t *plan);

/* The stream chain c re-prefills after a failover: the prompt, then its
 * tokens, all but the last (fed by its first decode step). */
int coord_sched_replay_len(const coord_request_t *r, const coord_chain_t *c);

#endif /* SA_COORD_SCHED_H */
