/*
 * encoder_service — the Encoder/Encode RPC of sa-encoder: audio bytes in,
 * embedding rows out (docs/architecture.md §1, proto/sa.proto EncodeRequest/Response).
 *
 * One libuv loop owns the RPC server; requests are checked on the loop,
 * admitted into a bounded queue (RESOURCE_EXHAUSTED when `threads + queue`
 * requests are already in the service) and run by a pool of worker threads:
 * FFmpeg decode and the log-mel run in parallel on the workers, the encoder
 * itself runs under one lock because the backend interface does not promise
 * concurrent calls. Results go back to the loop through a uv_async and are
 * replied there. Every bad request gets INVALID_ARGUMENT with the reason and
 * the service keeps serving.
 *
 * This is not the coordinator client (registrar.h) nor the command line
 * (main.c). It exposes no libuv types beyond the loop pointer.
 */
#ifndef SA_ENCODER_SERVICE_H
#define SA_ENCODER_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include "audio_encoder.h"
#include "rpc.h"

typedef struct sa_encoder_service sa_encoder_service_t;

typedef struct {
  int threads;          /* worker threads (>= 1) */
  int queue;            /* requests waiting beyond the busy workers (>= 0) */
  size_t max_bytes;     /* largest audio payload (0 = model/audio default) */
  double max_seconds;   /* longest audio (0 = model/audio default) */
  const char *test_gate; /* test only: a FIFO each worker reads one byte
                            from before it starts a request; NULL = off */
} sa_encoder_service_opts_t;

/* Registers Encoder/Encode on srv and starts the workers, each with its own
 * workspace of enc. enc, srv and loop are borrowed and must outlive the
 * service. Runs on the loop's thread. Returns 0, SA_EINVAL or SA_ENOMEM.
 * Caller owns *out. */
int sa_encoder_service_start(struct uv_loop_s *loop, sa_rpc_server_t *srv,
                             const sa_audio_encoder_t *enc,
                             const sa_encoder_service_opts_t *opts,
                             sa_encoder_service_t **out);

/* Requests in the service (queued + running) and the busy fraction of the
 * workers since the previous call (for heartbeats). Loop thread only. */
int sa_encoder_service_depth(const sa_encoder_service_t *svc);
float sa_encoder_service_load(sa_encoder_service_t *svc);

/* Stops the workers (a request being encoded finishes first), answers every
 * request still held with UNAVAILABLE, closes the async handle and frees the
 * service once the loop has run its close callback. Sets *svc NULL. Loop
 * thread only; destroy the RPC server afterwards. */
void sa_encoder_service_stop(sa_encoder_service_t **svc);

#endif /* SA_ENCODER_SERVICE_H */
