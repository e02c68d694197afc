/*
 * registry — the encoders and stage workers that registered, their
 * heartbeats, the pipeline replicas assembled from stages that cover
 * [0, L), and the KV blocks promised to admitted requests.
 *
 * The registry is the only writer of everything here; other modules read
 * the records through the const getters and change them through the
 * functions below. It reports up through coord_registry_cbs_t, whose
 * callbacks must only record (they run inside registry calls).
 *
 * It is not the scheduler (it never looks at requests) and does no I/O of
 * its own except the channels it opens to the workers that register (none
 * when it was given no loop: that is how the unit tests run it) and the
 * Register/Heartbeat handlers it serves. Loop thread only.
 */
#ifndef SA_COORD_REGISTRY_H
#define SA_COORD_REGISTRY_H

#include <stdbool.h>
#include <stdint.h>

#include "coord.h"
#include "rpc.h"
#include "sa.pb-c.h"

struct uv_loop_s;

/* A registered encoder or stage. */
typedef struct {
  bool used;
  char node_id[128];
  Sa__Role role;
  char address[256];
  char key[41]; /* its CurveZMQ public key, "" in plain text: only this key
                   may re-register the node id; channels expect it */
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
  int encodes; /* encoder calls in flight (for picking the least busy) */
  sa_rpc_channel_t *ch; /* NULL without a loop; made anew at each registration */
  bool draining;        /* takes no new work (Coordinator/Drain) */
  bool elastic;         /* a stage registered without a replica name: the
                           coordinator puts it into a pipeline */
  uint64_t down_since_ms;
  int replica;          /* index of its replica, -1 if none */
} coord_worker_t;

/* A pipeline replica: the stages with one replica name, in layer order. */
typedef struct {
  bool used;
  char name[64];
  int n_stages;
  int stage[COORD_MAX_STAGES]; /* worker indices in layer order */
  bool ready;                  /* the stages cover [0, L) */
  int64_t kv_capacity;         /* blocks per stage (min over stages) */
  int64_t kv_reserved;         /* blocks promised to admitted requests */
  int block_tokens;
  int max_batch, max_tokens_per_step;
  uint64_t suspect_until_ms; /* a step failed here: admit nothing before
                                this (its heartbeats decide by then) */
  bool elastic;   /* assembled by the coordinator from stages without a name */
  bool dissolved; /* elastic, lost a stage: its members went back to the pool;
                     the stage list stays, so stale sequences are freed where
                     they are, and the slot is reused after forget_ms */
  uint64_t dissolved_ms;
  int last_stage[COORD_MAX_STAGES]; /* the stage list when it was last ready */
  int last_n;
} coord_replica_t;

typedef struct {
  /* Replica ri was complete and is not any more (a stage went down or
   * moved). Record only: the requests on it are the caller's to move. */
  void (*replica_lost)(void *user, int ri, const char *why);
  /* Something may now be admitted or scheduled (a replica became ready, an
   * encoder registered). Record only. */
  void (*changed)(void *user);
} coord_registry_cbs_t;

typedef struct coord_registry {
  struct uv_loop_s *loop; /* NULL: no channels are opened */
  int num_layers, hidden_size;
  int heartbeat_timeout_ms;
  coord_registry_cbs_t cbs;
  void *user;
  int64_t epoch; /* bumped whenever a replica becomes ready */
  const struct sa_sec *sec; /* keys for channels to workers; NULL: plain text */
  int max_audio_s;          /* bounds an encoder's reply (default 1200) */
  uint64_t instance_id;     /* random per process: workers see a restart */
  int forget_ms;            /* a worker down this long is forgotten (default 65 s) */
  int next_pipeline;        /* numbers the elastic pipelines: p0, p1, ... */
  coord_worker_t workers[COORD_MAX_WORKERS];
  coord_replica_t replicas[COORD_MAX_REPLICAS];
} coord_registry_t;

/* Initialises reg (caller-allocated) for a model of num_layers decoder
 * layers and hidden size. loop may be NULL (no channels). cbs is copied,
 * user borrowed. */
void coord_registry_init(coord_registry_t *reg, struct uv_loop_s *loop, int num_layers,
                         int hidden_size, int heartbeat_timeout_ms,
                         const coord_registry_cbs_t *cbs, void *user);

/* Destroys every channel (their memory goes once the loop has run). */
void coord_registry_close(coord_registry_t *reg);

/* Drains (on) or undrains target: a replica's name (all its stages) or a
 * worker's node id. Returns the workers it names (0: none). A replica with a
 * draining stage gets no new requests; a draining encoder no new audio. */
int coord_registry_drain(coord_registry_t *reg, const char *target, bool on);

/* The name of the pipeline worker wi belongs to ("" for an encoder or a free
 * elastic stage). */
const char *coord_registry_worker_replica(const coord_registry_t *reg, int wi);

/* True if target names worker wi: its node id, or the name of the replica
 * or pipeline it belongs to. */
bool coord_registry_names(const coord_registry_t *reg, int wi, const char *target);

/* True if replica ri has a draining stage. */
bool coord_registry_replica_draining(const coord_registry_t *reg, int ri);

/* Serves Coordinator/Register and Coordinator/Heartbeat on srv. */
void coord_registry_serve(coord_registry_t *reg, sa_rpc_server_t *srv);

/* Registers (or re-registers) a worker at time now; key is the public key
 * it proved in the CurveZMQ handshake ("" in plain text). Returns its
 * index, or a negative SA_E* with the reason in err[cap]: SA_EINVAL for a
 * request that does not fit this model, SA_EPERM when the node id belongs
 * to another key, SA_EFULL when the registry is full. */
int coord_registry_register(coord_registry_t *reg, const Sa__RegisterRequest *rq, const char *key,
                            uint64_t now,
                            char *err, size_t cap);

/* A heartbeat from node_id at time now. Returns its index or -1 if unknown. */
int coord_registry_heartbeat(coord_registry_t *reg, const Sa__HeartbeatRequest *hb,
                             uint64_t now);

/* Marks workers silent for longer than the heartbeat timeout down. */
void coord_registry_check(coord_registry_t *reg, uint64_t now);

/* Marks worker wi down now (a call to it could not be started). */
void coord_registry_mark_down(coord_registry_t *reg, int wi);

/* Read-only views; NULL for an index out of range or a free slot. */
const coord_worker_t *coord_registry_worker(const coord_registry_t *reg, int wi);
const coord_replica_t *coord_registry_replica(const coord_registry_t *reg, int ri);

/* The healthy encoder with the fewest calls in flight, preferring any but
 * `exclude` (-1 for none); -1 if there is none. */
int coord_registry_pick_encoder(const coord_registry_t *reg, int exclude);
/* Counts an encoder call started (+1) or ended (-1) on wi. */
void coord_registry_encoder_busy(coord_registry_t *reg, int wi, int delta);

/* The ready, non-suspect replica with room for `blocks` more KV blocks and
 * the lowest load (reserved share + 0.01 per micro-batch in flight,
 * inflight[ri] given by the caller, may be NULL); -1 if none has room. */
int coord_registry_pick_replica(const coord_registry_t *reg, int64_t blocks, uint64_t now,
                                const int *inflight);
/* Whether any replica is ready (*any_ready) and whether any ready one could
 * ever hold `blocks` (the return value). */
bool coord_registry_could_fit(const coord_registry_t *reg, int64_t blocks, bool *any_ready);
/* KV block size of the first ready replica (16 if none). */
int coord_registry_block_tokens(const coord_registry_t *reg);

/* Promises (blocks > 0) or returns (blocks < 0) KV blocks of replica ri. */
void coord_registry_reserve(coord_registry_t *reg, int ri, int64_t blocks);
/* A step failed on ri: admit nothing there before `until`. */
void coord_registry_suspect(coord_registry_t *reg, int ri, uint64_t until);
/* KV use reported by worker wi in a step result (fresher than heartbeats). */
void coord_registry_note_kv(coord_registry_t *reg, int wi, int64_t used, int64_t free_blocks);

/* Number of ready replicas. */
int coord_registry_ready_replicas(const coord_registry_t *reg);

#endif /* SA_COORD_REGISTRY_H */
