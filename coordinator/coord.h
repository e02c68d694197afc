/*
 * coord — the coordinator's shared types: options, limits, and the request
 * and chain records. Types only: no function is declared here.
 *
 * The modules, top to bottom (a module calls only the ones below it; what
 * happens below reaches a module above only through a callback table given
 * at init, and those callbacks only record):
 *
 *   main.c      options, wiring, the loop; once per loop turn (a uv_prepare,
 *               like redis's beforeSleep) it runs coord_requests_process()
 *   submit.c    client RPCs (Submit, Cancel, Status): validation, and the
 *               request's events turned into SubmitEvents on the stream
 *   http.c      the HTTP front door beside it (OpenAI chat completions,
 *               models, health, metrics); openai.c parses its bodies
 *   request.c   the only writer of request and chain state: the lifecycle
 *               (encode, prompt, admission, prefill, fork, decode, vote,
 *               failover, cancel, finish) and the deferred reaping
 *   sched.c     a pure planner: requests + one replica's limits -> a plan
 *               for one micro-batch; no I/O, writes nothing but its output
 *   pipeline.c  Stage/Step, Stage/Fork, Stage/Free and Encoder/Encode calls
 *               and the batches in flight; each reply becomes an event
 *   registry.c  encoders, stages, replicas and KV reservations, behind
 *               functions; Register and Heartbeat handlers
 *   vote.c, answer.c   pure: normalised answers -> a decision
 *
 * Each record's comment says which module writes it; every other module
 * only reads it. All of it lives on the coordinator's one loop thread.
 */
#ifndef SA_COORD_H
#define SA_COORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat.h"
#include "sa_error.h"
#include "sa.pb-c.h"
#include "tokenizer.h"

#define COORD_MAX_WORKERS 256
#define COORD_MAX_REPLICAS 64
#define COORD_MAX_STAGES 64
#define COORD_MAX_CHAINS 64
#define COORD_MAX_SEQS_PER_BATCH 256
#define COORD_REPLAY_CHUNK_MAX 1024 /* tokens of one replay chunk */
#define COORD_ANSWER_MAX 256        /* a normalised answer, NUL included */
#define COORD_MAX_STOP 4            /* stop strings of a request */
#define COORD_STOP_BYTES 64         /* longest stop string */

/* Options; written by main.c before anything starts, read by all. */
typedef struct {
  char listen[256];
  char model_dir[512];
  int max_tokens_limit; /* per chain */
  int max_chains;
  size_t max_audio_bytes;
  size_t audio_budget; /* audio bytes held (received, not yet encoded) over all requests */
  int max_audio_s;
  int max_prompt_bytes;
  int max_requests;       /* running + queued */
  int prefill_chunk;      /* prompt tokens per prefill step */
  int extra_microbatches; /* in flight per replica beyond one per stage */
  int step_timeout_ms;
  int heartbeat_timeout_ms;
  int encode_timeout_ms;
  char default_system[1024];
} coord_opts_t;

/* The model facts the request and planner need; filled by main.c. */
typedef struct {
  int hidden_size;
  int num_layers;
  int max_position_embeddings;
  int32_t tok_eot, tok_think_end, tok_audio_patch; /* -1 if absent */
} coord_model_t;

typedef struct coord_request coord_request_t;

typedef enum {
  COORD_CHAIN_WAIT = 0, /* waiting for prefill, fork or replay */
  COORD_CHAIN_DECODE,   /* ready for its next decode step */
  COORD_CHAIN_DONE,
} coord_chain_state_t;

/* One chain of thought of a request: a sequence on its replica's stages.
 * Written by request.c only. */
typedef struct {
  int idx;
  uint64_t seq_id;
  coord_chain_state_t state;
  int replayed;  /* after a failover: tokens of its stream re-prefilled */
  bool inflight; /* a decode or replay entry of it is in a batch */
  bool freed;    /* Free sent to the stages (or nothing there to free) */
  int32_t *tokens; /* the token log */
  int n_tokens_streamed; /* of them, counted in a delta sent so far */
  int n_tokens, cap_tokens;
  int32_t next_input; /* token fed at its next decode step */
  int reasoning_tokens, answer_tokens;
  uint64_t t_last_token_ns; /* for the inter-token latency */
  char held[COORD_STOP_BYTES]; /* text not streamed yet: it may begin a stop string */
  int n_held;
  bool stop_hit;
  bool in_answer; /* </think> seen */
  Sa__FinishReason finish;
  sa_detok_t detok;
  char *reasoning;
  size_t reasoning_len, reasoning_cap;
  char *answer;
  size_t answer_len, answer_cap;
  char normalized[COORD_ANSWER_MAX];
} coord_chain_t;

typedef enum {
  COORD_REQ_NEW = 0, /* accepted; encoding or prompt building not started */
  COORD_REQ_ENCODING,
  COORD_REQ_QUEUED, /* waiting for a replica with free KV blocks */
  COORD_REQ_PREFILL,
  COORD_REQ_FORKING,
  COORD_REQ_DECODING,
  COORD_REQ_REPLAY, /* after a failover: every chain re-prefills its stream */
  COORD_REQ_DONE,   /* finished, failed or cancelled; reaped once idle */
} coord_req_state_t;

#define COORD_MAX_PARTS 64 /* text and audio parts of the conversation */

/* One part of the conversation, in order: text (audio NULL) or audio bytes
 * in any container (text NULL), in a turn of `role`. A part opens a new turn
 * when it is the first, when new_turn is set, or when its role differs from
 * the part before. Borrowed by coord_request_new, which copies. */
typedef struct {
  const char *text;
  const uint8_t *audio;
  size_t audio_len;
  sa_chat_role_t role; /* zero: the human's */
  bool new_turn;
} coord_part_t;

/* The parameters of a request, as validated by its front end. Strings and
 * audio are borrowed by coord_request_new, which copies them. */
typedef struct {
  const char *request_id; /* "" or NULL: the coordinator makes one */
  const char *owner;      /* who may cancel it or see its progress: the
                             client's public key, "http" ("" in plain text) */
  const char *system;     /* "" or NULL: the default system prompt */
  coord_part_t parts[COORD_MAX_PARTS]; /* the turns after the system text;
                                          each audio part is encoded on its
                                          own, its rows go where it stands */
  int n_parts;
  unsigned chat_flags; /* SA_CHAT_CONTINUE / SA_CHAT_NO_GEN_PROMPT */
  int max_tokens;
  int n_chains;
  Sa__VoteRule vote_rule;
  int vote_k;
  int think_budget;
  const char *stop[COORD_MAX_STOP]; /* stop strings (1..COORD_STOP_BYTES bytes):
                                      a chain whose text reaches one ends there,
                                      without it */
  int n_stop;
  Sa__SamplingParams sampling; /* no message pointers inside */
} coord_request_params_t;

/* A part of a request's conversation (request.c's copy). */
typedef struct {
  char *text;             /* NULL for audio */
  sa_chat_role_t role;
  bool new_turn;
  uint8_t *audio;         /* freed once encoded */
  size_t audio_len;
  int32_t *chunk_tokens;  /* audio: tokens per 25 s chunk, once encoded */
  int n_chunks;
} coord_req_part_t;

/* A request. Written by request.c only; the list links too. */
struct coord_request {
  coord_request_t *next, *prev; /* in the request set, oldest first */
  const struct coord_request_cbs *cbs; /* its front end's callbacks */
  void *client;                 /* the front end's handle, given at creation */
  uint64_t id;
  char request_id[64];
  char owner[48];
  coord_req_state_t state;
  bool cancel_asked; /* recorded by coord_request_cancel, applied by the pass */
  bool ended;        /* the end event went up */
  sa_status_t end_status; /* once ended: how, and why (for a resumed stream) */
  char end_msg[256];
  uint64_t keep_until_ms; /* ended with no client to take the result: kept
                             for Coordinator/Resume until then (0: not kept) */
  int pending_ops;   /* encode / fork / free calls outstanding */
  int max_tokens;
  int n_chains;
  Sa__VoteRule vote_rule;
  int vote_k;
  int think_budget;
  Sa__SamplingParams sampling;
  char *system_text;
  unsigned chat_flags; /* SA_CHAT_CONTINUE / SA_CHAT_NO_GEN_PROMPT */
  char stop[COORD_MAX_STOP][COORD_STOP_BYTES + 1];
  int n_stop;
  coord_req_part_t parts[COORD_MAX_PARTS];
  int n_parts;
  size_t audio_bytes;  /* over all audio parts */
  int encode_part;     /* the audio part being encoded, -1 */
  int encode_attempts; /* for that part */
  int encoder;         /* worker index of the encoder in use, -1 */
  uint64_t t_encoder_wait_ms; /* no encoder was up: waiting for one since (0: not) */
  /* the prompt */
  int32_t *prompt; /* token ids, audio patch slots included */
  int prompt_len;
  int32_t *audio_pos; /* prompt position of each audio row */
  float *audio_rows;  /* [n_audio_rows, H] fp32 */
  int n_audio_rows, hidden;
  int prefilled;        /* prompt tokens through prefill */
  bool prefill_inflight; /* a prefill chunk of chain 0 is in a batch */
  bool fork_inflight;    /* Stage/Fork of chains 1.. is out */
  int epoch;   /* bumped at each failover: older results are stale */
  int replays; /* failovers so far */
  bool replay; /* admitted again after a failover */
  /* placement */
  int replica;
  int64_t kv_reserved;
  /* chains */
  coord_chain_t chains[COORD_MAX_CHAINS];
  int chains_done;
  int vote_order[COORD_MAX_CHAINS]; /* chains that finished by themselves,
                                       in finishing order */
  int n_vote_order;
  int64_t tokens_saved;
  /* timing (sa_now_ms; _ns: sa_now_ns) */
  uint64_t t_start_ms, t_first_token_ms;
  uint64_t t_encode_ns, t_queued_ns;
};

#endif /* SA_COORD_H */
