/*
 * sampler — picks the next token from one row of logits, reproducibly.
 *
 * Greedy, temperature, top-k, top-p, min-p and repetition penalty with Hugging
 * Face semantics and order: repetition penalty over the tokens already in the
 * sequence, then temperature, top-k, top-p, min-p, then one draw. The draw
 * uses a counter-based RNG (Philox4x32-10) keyed by (request seed, chain
 * index, position), so a chain replayed on any replica, in any batch, draws
 * the same numbers and produces the same tokens (docs/faults.md).
 *
 * This module does not compute logits, keep sequences or own the token log;
 * it works on host memory (the last stage downloads logits first). A
 * sa_sampler_t holds scratch for one vocabulary size and belongs to one
 * thread; sampling allocates nothing.
 */
#ifndef SA_SAMPLER_H
#define SA_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* --- Philox4x32-10 (Salmon et al., SC'11; Random123's reference) --------- */

/* One Philox4x32-10 block: out = philox(ctr, key). Pure function. */
void sa_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2],
                      uint32_t out[4]);

/* A uniform double in [0, 1) from the stream (seed, chain, position, draw):
 * key = seed, counter = (position lo, position hi, chain, draw). 53 bits of
 * randomness from two Philox output words. Pure function. */
double sa_rng_uniform(uint64_t seed, uint32_t chain, uint64_t position,
                      uint32_t draw);

/* The seed of chain `chain` of an n-way request with seed `seed`: chain 0
 * keeps the request seed, chain i > 0 gets the i-th output of a splitmix64 stream
 * started at seed. A chain
 * samples with the key (sa_rng_chain_seed(seed, i), 0, position), so an n = 1
 * request with that seed reproduces it token for token. Pure function. */
uint64_t sa_rng_chain_seed(uint64_t seed, uint32_t chain);

/* --- sampling parameters ------------------------------------------------- */
typedef struct {
  bool greedy;              /* argmax (after repetition penalty) */
  float temperature;        /* <= 0 means greedy as well */
  int top_k;                /* 0 = off */
  float top_p;              /* >= 1 = off */
  float min_p;              /* <= 0 = off */
  float repetition_penalty; /* 1 = off; > 0 */
} sa_sampler_params_t;

/* Defaults: temperature 1, no truncation, no penalty (plain sampling). */
void sa_sampler_params_default(sa_sampler_params_t *p);
/* Returns 0 or SA_EINVAL (negative temperature treated as greedy is fine;
 * top_p in (0,1], min_p in [0,1], penalty > 0, top_k >= 0). */
int sa_sampler_params_check(const sa_sampler_params_t *p);

/* The RNG key of one draw. */
typedef struct {
  uint64_t seed;     /* request seed */
  uint32_t chain;    /* chain index within the request (0 for single) */
  uint64_t position; /* absolute position of the token being sampled */
} sa_sample_key_t;

typedef struct sa_sampler sa_sampler_t;

/* Creates scratch for vocabularies up to V tokens. Caller owns the result;
 * NULL on bad V or out of memory (logged). */
sa_sampler_t *sa_sampler_new(int V);
/* Frees *s (may be NULL) and sets it NULL. */
void sa_sampler_destroy(sa_sampler_t **s);

/* Samples one token from logits[V] (host, read only) with params p.
 * history[n_history] are the tokens already in the sequence (prompt and
 * generated; ids outside [0,V) are ignored) for the repetition penalty; may be
 * NULL when n_history is 0. *token gets the id; *logprob (may be NULL: then
 * the normaliser's pass over V is skipped) gets log softmax(logits)[token] of
 * the raw, unmodified logits.
 * Returns 0, SA_EINVAL (bad params, V larger than the sampler's, non-finite
 * logits everywhere). Allocates nothing; one thread per sampler. */
int sa_sampler_sample(sa_sampler_t *s, const sa_sampler_params_t *p,
                      const float *logits, int V, const int32_t *history,
                      size_t n_history, sa_sample_key_t key, int32_t *token,
                      float *logprob);

#endif /* SA_SAMPLER_H */
