/* health — asks the coordinator whether the local cluster is ready. */
#ifndef SA_CLUSTER_HEALTH_H
#define SA_CLUSTER_HEALTH_H

#include <stdbool.h>
#include <stddef.h>
#include "rpc.h"
#include "topology.h"

typedef struct {
  int encoders; /* healthy encoders registered */
  int stages;   /* healthy stages registered */
  int replicas; /* replicas the coordinator reports ready */
  bool ready;   /* every encoder and every replica of the topology is up */
} sa_cluster_health_t;

/* One Coordinator/Status call (1 s timeout) with the channel options o (the
 * client key; NULL = plain text). Returns 0 with *h filled, or a negative
 * SA_E* code with the reason in why. */
int sa_cluster_health(const sa_topo_t *t, const sa_rpc_opts_t *o, sa_cluster_health_t *h,
                      char *why, size_t cap);

#endif
