/*
 * registrar — a process's membership in a cluster, for encoders and stage
 * workers alike: Coordinator/Register once, then Coordinator/Heartbeat every
 * interval the coordinator asks for, carrying the load the owner reports.
 *
 * A coordinator that is down or slow never stops the process from serving:
 * failed calls are logged (the first and every tenth) and retried with a
 * backoff capped at 5 s; a heartbeat answered `known = false` (the
 * coordinator restarted) registers again. It is not the service itself and
 * knows nothing of encoders or stages beyond what it sends.
 *
 * Threads: one libuv loop; every function on its thread, callbacks on it.
 */
#ifndef SA_REGISTRAR_H
#define SA_REGISTRAR_H

#include <stdbool.h>
#include <stdint.h>

#include "rpc.h"

struct uv_loop_s;

typedef enum {
  SA_REGISTRAR_ENCODER = 0,
  SA_REGISTRAR_STAGE = 1,
} sa_registrar_role_t;

/* What the process registers as. Strings are copied by start. */
typedef struct {
  sa_registrar_role_t role;
  const char *coordinator; /* endpoint of the coordinator */
  const char *node_id;     /* stable id of this process */
  const char *address;     /* endpoint others reach it at */
  const char *model_id;
  const char *backend;     /* "cpu", "cuda:0" */
  int hidden_size;
  int max_audio_s;         /* encoder */
  /* stage */
  const char *replica;     /* replica name ("" = r0) */
  int first_layer, last_layer, num_layers;
  bool has_embed, has_lm_head;
  int64_t kv_blocks_total;
  int kv_block_tokens, max_batch, max_tokens_per_step;
  int64_t retry_ms; /* first retry delay (0 = 500 ms; capped at 5 s) */
  /* the channel's options (keys for CurveZMQ: sa_sec_channel_opts with the
   * coordinator's key); NULL = defaults, plain text. Copied by start. */
  const sa_rpc_opts_t *rpc;
  /* Called (with start's user) when a registration finds a coordinator
   * other than the one before it (it restarted): the owner drops whatever
   * it held for the old one (a stage: the KV of every sequence). May be
   * NULL. */
  void (*coordinator_changed)(void *user);
} sa_registrar_opts_t;

/* The figures a heartbeat carries; the owner fills them. */
typedef struct {
  float load; /* 0..1 */
  int32_t queue_depth;
  int64_t kv_blocks_used, kv_blocks_free, kv_blocks_shared;
  int32_t sequences;
} sa_registrar_load_t;

/* Fills *out (zeroed) before each heartbeat. Loop thread. */
typedef void (*sa_registrar_load_cb)(void *user, sa_registrar_load_t *out);

typedef struct sa_registrar sa_registrar_t;

/* Starts registering on loop. load_cb may be NULL (zeros); user borrowed.
 * Returns 0, SA_EINVAL, SA_ENOMEM or the channel's error. Caller owns *out. */
int sa_registrar_start(struct uv_loop_s *loop, const sa_registrar_opts_t *opts,
                       sa_registrar_load_cb load_cb, void *user, sa_registrar_t **out);

/* True once the coordinator accepted the registration (and has not since
 * forgotten us). */
bool sa_registrar_registered(const sa_registrar_t *r);

/* Asks the coordinator to drain this process (Coordinator/Drain with its
 * own node id: no new work comes here). done (may be NULL) runs once with
 * whether the coordinator agreed. Returns 0 if the call went out. */
int sa_registrar_drain(sa_registrar_t *r, void (*done)(void *user, bool ok), void *user);

/* Stops the timers and the channel; frees once the loop has closed them.
 * Sets *r NULL. */
void sa_registrar_stop(sa_registrar_t **r);

#endif /* SA_REGISTRAR_H */
