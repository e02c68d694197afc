/*
 * pipeline — the coordinator's calls to the workers: Stage/Step of a planned
 * micro-batch to stage 0 of a replica (the stages forward activations to
 * each other; the last stage's StepResult travels back along the calls),
 * Stage/Fork and Stage/Free to every stage of a replica, and Encoder/Encode.
 * It owns the batches in flight and counts them per replica.
 *
 * Every reply becomes one event through coord_pipeline_cbs_t; the events
 * carry what the caller needs and hand their payload over. A call that
 * cannot be started returns an error and its callback never runs (libuv's
 * rule). It reads requests (never writes them) and the registry (changes it
 * through registry functions only: KV figures, encoder load).
 *
 * The upper layer calls it through coord_pipeline_ops_t, so that the
 * request lifecycle can be tested with a pipeline of the test's own.
 * Loop thread only.
 */
#ifndef SA_COORD_PIPELINE_H
#define SA_COORD_PIPELINE_H

#include <stdint.h>

#include "coord.h"
#include "registry.h"
#include "request_stats.h"
#include "sa_error.h"
#include "sched.h"

struct uv_loop_s;

/* One sequence of a finished step, as planned, with its result. */
typedef struct {
  coord_request_t *req;
  int chain;
  uint64_t seq_id;
  int epoch; /* the request's epoch when it was sent */
  coord_step_kind_t kind;
  int n_tokens;
  int32_t token; /* decode: the sampled token, -1 if the stage gave none */
} coord_step_entry_t;

/* A step that came back (or failed). Owned by whoever the event hands it
 * to; free it with free(). */
typedef struct coord_step {
  struct coord_step *next; /* free for the owner's queue */
  int replica;
  uint64_t batch_id;
  sa_status_t status; /* OK, or why the whole step failed */
  char msg[300];
  int n;
  coord_step_entry_t e[COORD_MAX_SEQS_PER_BATCH];
} coord_step_t;

/* What an encoder returned. Owned by the event's receiver: free with
 * coord_encoded_free. */
typedef struct {
  sa_status_t status; /* OK, or the encoder's (or the transport's) status */
  char msg[512];
  int encoder;            /* worker index */
  float *rows;            /* [n_rows, H] fp32 */
  int n_rows;
  int32_t *chunk_tokens;  /* audio tokens per 25 s chunk */
  int n_chunks;
} coord_encoded_t;

void coord_encoded_free(coord_encoded_t **enc);

/* Events up. Each callback only records; the payload passes to it. */
typedef struct {
  void (*step_done)(void *user, coord_step_t *step);
  void (*fork_done)(void *user, coord_request_t *r, sa_status_t st, const char *msg);
  void (*free_done)(void *user, coord_request_t *owner);
  void (*encode_done)(void *user, coord_request_t *r, coord_encoded_t *enc);
} coord_pipeline_cbs_t;

/* The calls down, as a table (the real one is coord_pipeline_ops). Each
 * returns 0 when its event will come, or a negative SA_E* (SA_EFULL: try
 * again later; others: the replica or encoder cannot be reached). */
typedef struct {
  /* Sends plan (copied). The entries' requests must stay alive until the
   * step's event. */
  int (*step)(void *pl, const coord_plan_t *plan);
  /* Forks chain 0 of r into its other chains on every stage of r's replica. */
  int (*fork)(void *pl, coord_request_t *r);
  /* Frees seq_id on every stage of replica ri; owner (may be NULL) gets a
   * free_done event once all stages answered. */
  int (*free_seq)(void *pl, int ri, uint64_t seq_id, coord_request_t *owner);
  /* Encodes r's audio part r->encode_part on encoder worker wi. */
  int (*encode)(void *pl, int wi, coord_request_t *r);
  /* Micro-batches in flight on replica ri. */
  int (*inflight)(void *pl, int ri);
} coord_pipeline_ops_t;

extern const coord_pipeline_ops_t coord_pipeline_ops;

typedef struct {
  uint64_t tokens;        /* tokens through completed steps */
  coord_hist_t step;      /* Stage/Step sent -> its result back */
  coord_rows_hist_t rows; /* tokens of each completed step */
} coord_replica_stats_t;

/* The protobuf message of one micro-batch while it is built (reused for
 * every step: nothing is allocated for it per step). */
typedef struct {
  Sa__StepBatch sb;
  Sa__SeqStep steps[COORD_MAX_SEQS_PER_BATCH];
  Sa__SeqStep *step_ptrs[COORD_MAX_SEQS_PER_BATCH];
  Sa__EmbedSpan spans[COORD_MAX_SEQS_PER_BATCH]; /* of the one audio chunk */
  Sa__EmbedSpan *span_ptrs[COORD_MAX_SEQS_PER_BATCH];
  int32_t one_token[COORD_MAX_SEQS_PER_BATCH];
  char *route[COORD_MAX_STAGES];
  char *route_keys[COORD_MAX_STAGES];
} coord_step_msg_t;

typedef struct coord_pipeline {
  const coord_opts_t *opts;
  const coord_model_t *model;
  coord_registry_t *reg;
  coord_pipeline_cbs_t cbs;
  void *user;
  uint64_t next_batch_id;
  int inflight[COORD_MAX_REPLICAS];
  coord_replica_stats_t stats[COORD_MAX_REPLICAS];
  coord_hist_t stage_compute[COORD_MAX_WORKERS]; /* per stage (worker index) */
  int64_t forks_total;
  coord_step_msg_t msg;
} coord_pipeline_t;

/* Initialises pl (caller-allocated). opts, model and reg are borrowed for
 * pl's life; cbs copied; user borrowed. */
void coord_pipeline_init(coord_pipeline_t *pl, const coord_opts_t *opts,
                         const coord_model_t *model, coord_registry_t *reg,
                         const coord_pipeline_cbs_t *cbs, void *user);

#endif /* SA_COORD_PIPELINE_H */
