/*
 * registrar — sa-encoder's membership in a cluster: Coordinator/Register once
 * and Coordinator/Heartbeat every interval the coordinator asks for.
 *
 * A coordinator that is down or slow never stops the encoder from serving:
 * failed calls are logged and retried with a capped backoff, a heartbeat
 * answered `known = false` (the coordinator restarted) re-registers. This is
 * not the Encode service (encoder_service.h).
 */
#ifndef SA_ENCODER_REGISTRAR_H
#define SA_ENCODER_REGISTRAR_H

#include <stdint.h>

#include "encoder_service.h"

typedef struct sa_registrar sa_registrar_t;

typedef struct {
  const char *coordinator; /* endpoint of the coordinator */
  const char *node_id;     /* stable id of this process */
  const char *address;     /* endpoint others reach Encode at */
  const char *model_id;
  const char *backend;     /* "cpu", "cuda:0" */
  int hidden_size;
  int max_audio_s;
  int64_t retry_ms;        /* first retry delay (0 = 500 ms; capped at 5 s) */
} sa_registrar_opts_t;

/* Starts registering on loop (strings are copied). svc (borrowed, may be
 * NULL) supplies the load and queue depth of heartbeats. Loop thread only.
 * Returns 0, SA_EINVAL or SA_ENOMEM. Caller owns *out. */
int sa_registrar_start(struct uv_loop_s *loop, const sa_registrar_opts_t *opts,
                       sa_encoder_service_t *svc, sa_registrar_t **out);

/* True once the coordinator accepted the registration (and has not since
 * forgotten us). */
int sa_registrar_registered(const sa_registrar_t *r);

/* Stops the timers and the channel; frees once the loop has closed them.
 * Sets *r NULL. Loop thread only. */
void sa_registrar_stop(sa_registrar_t **r);

#endif /* SA_ENCODER_REGISTRAR_H */
