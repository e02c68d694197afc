/*
 * topology — a local cluster's shape, read from a deploy/local/NAME.yaml file:
 * the model folder, the coordinator, the encoders and the pipeline replicas
 * with their stages' layer ranges. Parsing only; starting processes is
 * main.c's job.
 */
#ifndef SA_CLUSTER_TOPOLOGY_H
#define SA_CLUSTER_TOPOLOGY_H

#include <stddef.h>

#define SA_TOPO_MAX 64

typedef struct {
  char listen[128];
  int first, last; /* layer range [first, last); -1 = split evenly */
} sa_topo_stage_t;

typedef struct {
  char name[64];
  char kv_mem[32];
  int n_stages;
  sa_topo_stage_t stages[SA_TOPO_MAX];
} sa_topo_replica_t;

typedef struct {
  char model[512];
  char run_dir[512];
  int threads;
  char coordinator[128];
  char coordinator_http[128];
  int n_encoders;
  char encoders[SA_TOPO_MAX][128];
  int n_replicas;
  sa_topo_replica_t replicas[SA_TOPO_MAX];
} sa_topo_t;

/* Parses YAML text into *t (zeroed first). Returns 0 or SA_EFORMAT with a
 * message naming the key in err. */
int sa_topo_parse(const char *yaml, size_t len, sa_topo_t *t, char *err,
                  size_t cap);
/* Splits stages whose layer range is unset evenly over n_layers and checks
 * every replica covers [0, n_layers) without gaps. 0 or SA_EINVAL. */
int sa_topo_resolve_layers(sa_topo_t *t, int n_layers, char *err, size_t cap);

#endif
