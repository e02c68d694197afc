/*
 * coord — sa-coordinator's internal state (not a public header).
 *
 * One libuv loop owns everything here: the registry of encoders and stage
 * workers, the pipeline replicas assembled from them, the requests with
 * their chains (each chain's token log lives here: DESIGN §7) and the
 * micro-batches in flight. No weights, no tensors beyond the audio
 * embeddings a request carries until its prefill is done.
 */
#ifndef SA_COORD_H
#define SA_COORD_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "rpc.h"
#include "sa.pb-c.h"
#include "tokenizer.h"

#define COORD_MAX_WORKERS 256
#define COORD_MAX_REPLICAS 64
#define COORD_MAX_STAGES 64
#define COORD_MAX_CHAINS 64

typedef struct coord coord_t;
typedef struct request request_t;

typedef struct {
  bool used;
  char node_id[128];
  Sa__Role role;
  char address[256];
  char replica_name[64];
  int first, last, num_layers;
  bool has_embed, has_lm_head;
  int64_t kv_total, kv_used, kv_free, kv_shared;
  int sequences;
  int kv_block_tokens;
  int max_batch, max_tokens_per_step;
  int hidden_size;
  float load;
  uint64_t last_seen_ms;
  bool healthy;
  int inflight; /* encoder calls in flight */
  sa_rpc_channel_t *ch;
  int replica; /* index into coord->replicas, -1 if none */
} worker_t;

typedef struct {
  bool used;
  char name[64];
  int n_stages;
  int stage[COORD_MAX_STAGES]; /* worker indices in layer order */
  bool ready;
  int64_t kv_capacity;  /* blocks per stage (min over stages) */
  int64_t kv_reserved;  /* blocks promised to admitted requests */
  int block_tokens;
  int max_batch, max_tokens_per_step;
  int inflight;         /* micro-batches in flight */
  uint64_t suspect_until_ms; /* a step failed here: admit nothing before this
                                (its heartbeats decide by then) */
  uint64_t steps, tokens;
} replica_t;

typedef enum {
  CHAIN_WAIT = 0,   /* waiting for prefill / fork */
  CHAIN_DECODE,     /* ready for its next decode step */
  CHAIN_DONE,
} chain_state_t;

typedef struct {
  request_t *req;
  int idx;
  uint64_t seq_id;
  chain_state_t state;
  int replayed;        /* after a failover: tokens of its stream re-prefilled */
  bool inflight;
  bool freed;          /* Free sent to the stages */
  int32_t *tokens;     /* generated tokens (the token log) */
  int n_tokens, cap_tokens;
  int32_t next_input;  /* token to feed at the next step */
  int reasoning_tokens, answer_tokens;
  bool in_answer;
  Sa__FinishReason finish;
  sa_detok_t detok;
  char *reasoning; size_t reasoning_len, reasoning_cap;
  char *answer; size_t answer_len, answer_cap;
  char normalized[256];
} chain_t;

typedef enum {
  REQ_ENCODING = 0,
  REQ_QUEUED,    /* waiting for a replica with free KV blocks */
  REQ_PREFILL,
  REQ_FORKING,
  REQ_DECODING,
  REQ_REPLAY,    /* after a failover: every chain re-prefills its own stream */
  REQ_DONE,
} req_state_t;

struct request {
  coord_t *co;
  request_t *next, *prev;  /* in co->requests */
  uint64_t id;
  char request_id[64];
  sa_rpc_call_t *call;     /* the client's Submit stream; NULL once ended */
  req_state_t state;
  bool cancelled;          /* client went away or cancelled */
  bool client_lost;        /* a send to the client failed */
  bool failed;
  int pending_ops;         /* encode / fork / free calls outstanding */
  /* parameters */
  int max_tokens;
  int n_chains;
  Sa__VoteRule vote_rule;
  int vote_k;
  int think_budget;
  Sa__SamplingParams sampling;
  bool stream_reasoning;
  char *prompt_text, *system_text;
  bool text_before_audio;
  uint8_t *audio; size_t audio_len;
  /* prompt */
  int32_t *prompt;         /* token ids, audio patch slots included */
  int prompt_len;
  int32_t *audio_pos;      /* prompt position of each audio row */
  float *audio_rows;       /* [n_audio_rows, hidden] fp32 */
  int n_audio_rows, hidden;
  int prefilled;           /* prompt tokens sent through prefill */
  int prefill_inflight;
  int epoch;               /* bumped at each failover: older results are stale */
  int replays;             /* failovers so far */
  bool replay;             /* admitted again after a failover */
  /* placement */
  int replica;
  int64_t kv_reserved;
  /* chains */
  chain_t chains[COORD_MAX_CHAINS];
  int chains_done;
  int vote_order[COORD_MAX_CHAINS]; /* chains that finished by themselves, in
                                       finishing order (vote.c) */
  int n_vote_order;
  int64_t tokens_saved;
  /* timing */
  uint64_t t_start_ms, t_first_token_ms;
  int encode_attempts;
  int encoder;             /* worker index of the encoder in use, -1 */
};

typedef struct {
  char listen[256];
  char model_dir[512];
  int max_tokens_limit;     /* per chain */
  int max_chains;
  size_t max_audio_bytes;
  int max_audio_s;
  int max_prompt_bytes;
  int max_requests;         /* running + queued */
  int prefill_chunk;        /* prompt tokens per prefill step */
  int extra_microbatches;   /* in flight per replica beyond one per stage */
  int step_timeout_ms;
  int heartbeat_timeout_ms;
  int encode_timeout_ms;
  char default_system[1024];
} coord_opts_t;

struct coord {
  uv_loop_t *loop;
  coord_opts_t opts;
  sa_rpc_server_t *srv;
  sa_model_config_t cfg;
  sa_tokenizer_t *tok;
  int32_t tok_eot, tok_think_end, tok_audio_patch;
  worker_t workers[COORD_MAX_WORKERS];
  replica_t replicas[COORD_MAX_REPLICAS];
  request_t *requests;      /* running and queued, oldest first */
  request_t *requests_tail;
  int n_requests;
  uint64_t next_request_id;
  uint64_t next_seq_id;
  uint64_t next_batch_id;
  int64_t epoch;
  int64_t forks_total, requests_total;
  uv_timer_t tick;
  uv_signal_t sigterm, sigint;
  bool stopping;
};

uint64_t coord_now_ms(void);

/* registry.c */
void coord_registry_register(coord_t *co);          /* RPC handlers */
void coord_registry_check(coord_t *co);             /* timeouts, replicas */
int coord_pick_encoder(coord_t *co, int exclude);
int coord_pick_replica(coord_t *co, int64_t blocks_needed);
void coord_status_handler(sa_rpc_call_t *call, void *user);

/* request.c */
void coord_submit_handler(sa_rpc_call_t *call, void *user);
void coord_cancel_handler(sa_rpc_call_t *call, void *user);
void coord_request_fail(request_t *r, sa_status_t st, const char *msg);
/* The replica under r failed: move r to another replica and re-prefill each
 * chain's prompt + tokens so far (DESIGN §7), or fail it after 3 tries. */
void coord_request_requeue(request_t *r, sa_status_t st, const char *why);
/* Sends Stage/Free(seq_id) to every stage of replica ri (best effort; r, if
 * not NULL, stays alive until the answers are in). */
void coord_free_seq(coord_t *co, int ri, uint64_t seq_id, request_t *r);
void coord_fail_replica_requests(coord_t *co, int replica, const char *why);

/* request.c */
void coord_admit(coord_t *co);

/* sched.c */
void coord_schedule(coord_t *co);
void coord_chain_free(request_t *r, chain_t *c);
void coord_request_try_finish(request_t *r);
bool coord_request_check_client(request_t *r);

/* vote.c — see the rules at the top of vote.c */
void coord_normalize_answer(const char *in, char *out, size_t cap);
/* The pure vote over answers[n] (normalized, "" = no answer) in finishing
 * order with `running` chains still running. Returns the position in
 * answers of the winning answer's first occurrence, or -1 when there is no
 * winner (yet, or at all). *votes gets its votes, *decided whether the
 * outcome can no longer change (time to cancel the running chains). */
int coord_vote_decide(const char *const *answers, int n, int running, Sa__VoteRule rule, int k,
                      int *votes, bool *decided);
void coord_chain_done(request_t *r, chain_t *c);
/* The current leader of r (borrowed, valid until r changes; "" if none). */
const char *coord_vote_leader(request_t *r, int *votes);
void coord_vote(request_t *r, Sa__FinalResult *fr);

#endif
