/*
 * submit — the coordinator's client RPCs: Coordinator/Submit (validation,
 * then the request's events as SubmitEvents on the client's stream),
 * Coordinator/Cancel and Coordinator/Status.
 *
 * It owns each client's stream (the sa_rpc_call) and nothing of the
 * request: it creates requests (with its coord_request_cbs_t, which
 * receives their events), asks to cancel them and reads them. Loop thread
 * only.
 */
#ifndef SA_COORD_SUBMIT_H
#define SA_COORD_SUBMIT_H

#include "coord.h"
#include "pipeline.h"
#include "registry.h"
#include "request.h"
#include "rpc.h"
#include "security.h"

typedef struct {
  const coord_opts_t *opts;
  coord_requests_t *set;
  coord_registry_t *reg;        /* Drain marks workers */
  const coord_pipeline_t *pl; /* for Status figures */
  const sa_sec_t *sec;        /* for Status; NULL: plain text */
} coord_submit_t;

/* Initialises sub (caller-allocated); everything is borrowed for its life. */
void coord_submit_init(coord_submit_t *sub, const coord_opts_t *opts, coord_requests_t *set,
                       coord_registry_t *reg, const coord_pipeline_t *pl);

/* Serves Coordinator/Submit, Cancel and Status on srv. */
void coord_submit_serve(coord_submit_t *sub, sa_rpc_server_t *srv);

/* Checks a SubmitRequest against the limits in opts with `running`
 * requests already accepted and audio_held bytes of their audio not yet
 * encoded (opts->audio_budget bounds the sum). Returns 0, or SA_EINVAL /
 * SA_EFULL with the reason in msg[cap]. Pure. */
int coord_submit_validate(const coord_opts_t *opts, const Sa__SubmitRequest *rq, int running,
                          size_t audio_held, char *msg, size_t cap);

#endif /* SA_COORD_SUBMIT_H */
