/* health — see health.h. */
#include "health.h"

#include "rpc.h"
#include "sa.pb-c.h"
#include "sa_error.h"

#include <stdio.h>
#include <string.h>

int sa_cluster_health(const sa_topo_t *t, const sa_rpc_opts_t *o, sa_cluster_health_t *h,
                      char *why, size_t cap) {
  memset(h, 0, sizeof *h);
  Sa__StatusRequest req = SA__STATUS_REQUEST__INIT;
  uint8_t buf[64];
  size_t len = sa__status_request__pack(&req, buf);
  sa_rpc_reply_t *rep = NULL;
  int rc = sa_rpc_call_sync(t->coordinator, o, "Coordinator/Status", buf, len,
                            NULL, 0, 1000, &rep);
  if (rc) {
    snprintf(why, cap, "%s", sa_strerror(rc));
    return rc;
  }
  if (rep->status != SA_STATUS_OK) {
    snprintf(why, cap, "%s: %s", sa_status_name(rep->status),
             rep->status_msg ? rep->status_msg : "");
    rc = sa_status_to_err(rep->status);
    sa_rpc_reply_free(&rep);
    return rc;
  }
  Sa__StatusResponse *st =
      sa__status_response__unpack(NULL, rep->body_len, rep->body);
  sa_rpc_reply_free(&rep);
  if (!st) {
    snprintf(why, cap, "malformed StatusResponse");
    return SA_EPROTO;
  }
  for (size_t i = 0; i < st->n_workers; i++) {
    const Sa__WorkerInfo *w = st->workers[i];
    if (!w->healthy)
      continue;
    if (w->role == SA__ROLE__ROLE_ENCODER)
      h->encoders++;
    else if (w->role == SA__ROLE__ROLE_STAGE)
      h->stages++;
  }
  h->replicas = st->replicas_ready;
  h->ready = h->encoders >= t->n_encoders && h->replicas >= t->n_replicas;
  sa__status_response__free_unpacked(st, NULL);
  return 0;
}
