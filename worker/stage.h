/*
 * stage — one worker's layer range: the decoder, its KV pool, the last
 * stage's sampler and per-sequence token history, and the compute thread
 * that runs jobs strictly in arrival order (not a public header).
 *
 * The libuv loop (main.c) parses and validates wire messages and submits
 * jobs; the compute thread owns the decoder, the KV cache and the histories;
 * completions come back to the loop through a uv_async.
 */
#ifndef SA_WORKER_STAGE_H
#define SA_WORKER_STAGE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "decoder.h"
#include "kv.h"
#include "rpc.h"
#include "sa.pb-c.h"
#include "sa_nccl.h"
#include "sampler.h"

#define STAGE_MAX_LINKS 4 /* NCCL links per direction */
#define STAGE_OUTBOX 4    /* device buffers of activations being sent */

typedef enum { JOB_STEP, JOB_FORK, JOB_FREE, JOB_RESET, JOB_LINK } job_kind_t;

typedef struct job job_t;
struct job {
  job_t *next;
  job_kind_t kind;
  sa_rpc_call_t *call;      /* the caller's call; valid until we reply */
  bool call_gone;           /* cancelled before the reply */
  Sa__StepBatch *batch;     /* JOB_STEP */
  Sa__ForkRequest *fork;    /* JOB_FORK */
  Sa__FreeRequest *free_rq; /* JOB_FREE; NULL: free every sequence (the
                               coordinator that owned them is gone) */
  const float *act_in;      /* [M, H] hop > 0 (borrowed from the call) */
  const float *emb_in;      /* [rows, H] stage 0 audio rows (borrowed) */
  int64_t emb_rows;
  /* JOB_LINK: join an NCCL link as rank 0 (to the next stage link_addr) or
   * rank 1 (from the previous stage link_addr) */
  uint8_t link_id[SA_NCCL_ID_BYTES];
  int link_rank;
  char link_addr[256];
  bool link_drop;           /* JOB_LINK: drop that link instead (it failed) */
  /* results */
  int rc;
  bool out_nccl;            /* JOB_STEP: the activations went over NCCL */
  uint64_t nccl_seq;        /* ... as the link's send number nccl_seq */
  bool link_broken;         /* JOB_STEP: the NCCL link to the next stage failed
                               (this step went over ZeroMQ) */
  char err[256];
  float *act_out;           /* [M, H] from the output pool (non-last) */
  Sa__StepResult *result;   /* last stage */
  Sa__SeqResult *seq_results;
  Sa__SeqResult **seq_result_ptrs;
  int forked, freed;
  double compute_ms;
  double stage_ms;   /* the StepResult.stage_compute_ms entry of the last stage */
};

typedef struct {
  /* immutable after start */
  sa_backend_t *be;
  sa_decoder_t *dec;
  sa_kv_t *kv;
  sa_sampler_t *sampler;
  int first, last, n_layers, hidden, vocab;
  bool is_first, is_last;
  int max_tokens, max_seqs;
  /* last stage: per-sequence token history for the repetition penalty */
  struct hist *hist;
  int n_hist, cap_hist;
  /* scratch (compute thread only) */
  uint64_t *seq_ids;
  int32_t *n_new, *pos0, *tokens, *embed_rows, *logit_rows;
  float *embeds, *logits;
  /* output activation buffers: a fixed pool, returned by ZeroMQ's free cb */
  float **out_pool;
  int out_pool_n, out_free_top;
  int *out_free;
  pthread_mutex_t out_mu;
  pthread_cond_t out_cv;
  /* NCCL links between co-located CUDA stages, keyed by the peer's address;
   * the compute thread alone touches them (JOB_LINK, JOB_STEP) */
  bool is_cuda;
  int link_timeout_ms;
  struct stage_link {
    char addr[256];
    sa_nccl_comm_t *comm;
    uint64_t seq; /* next send number (out) / expected one (in) */
  } links_out[STAGE_MAX_LINKS], links_in[STAGE_MAX_LINKS];
  void *outbox[STAGE_OUTBOX]; /* backend memory, [max_tokens, H] f32 each */
  uint64_t outbox_ticket[STAGE_OUTBOX];
  bool outbox_busy[STAGE_OUTBOX];
  sa_nccl_comm_t *outbox_comm[STAGE_OUTBOX];
  int outbox_next;
  /* job queue */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  job_t *q_head, *q_tail;
  job_t *done_head, *done_tail;
  int queued;
  bool stop;
  pthread_t thread;
  uv_async_t async;
  void (*on_done)(job_t *job, void *user);
  void *user;
  /* KV statistics after the last job, for the loop thread (under mu) */
  sa_kv_stats_t kv_snap;
  /* stats (written by the compute thread, read approximately by the loop) */
  double busy_ms;
  int64_t steps, tokens_total;
} stage_t;

/* Loads the decoder's layers and makes the KV pool; starts the compute
 * thread. on_done runs on the loop for each finished job. 0 or an error. */
int stage_start(stage_t *st, uv_loop_t *loop, const char *model_dir, int first,
                int last, const char *device, int threads, size_t kv_bytes,
                int max_tokens, int max_seqs, void (*on_done)(job_t *, void *),
                void *user, char *err, size_t cap);
/* Stops the thread and frees everything. */
void stage_stop(stage_t *st);
/* Queues a job (takes ownership). Runs on the loop thread. */
void stage_submit(stage_t *st, job_t *job);
/* Frees a job and what it holds (not the call). */
void stage_job_free(stage_t *st, job_t *job);
/* The KV statistics as of the last finished job (loop thread). */
void stage_kv_stats(stage_t *st, sa_kv_stats_t *out);
/* Jobs waiting for the compute thread (loop thread). */
int stage_queued(stage_t *st);
/* Zero-copy free callback for act_out buffers (any thread). */
void stage_out_release(void *data, void *hint);

#endif
