/*
 * bench-pipeline internals: the three kinds of measurement the CLI
 * (bench_pipeline.c) runs and prints. Not a library: these functions are for
 * this benchmark only, may allocate and print, and report failures as a
 * negative SA_E* code with a reason on stderr.
 *
 *   inproc.c   decode steps of sa_decoder in this process (the code path a
 *              sa-worker's compute thread runs, sampler included)
 *   cluster.c  real sa-coordinator + sa-worker processes on loopback, and B
 *              concurrent Coordinator/Submit streams timed token by token
 *   hop.c      a raw ZeroMQ DEALER/ROUTER round trip to a forked process
 */
#ifndef BENCH_PIPELINE_H
#define BENCH_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define BP_MAX_STAGES 8

/* ------------------------------------------------------------- in-process */

typedef struct {
  const char *model_dir;
  const int32_t *prompt; /* prompt ids every sequence starts from */
  int prompt_len;
  int warmup;  /* decode steps run before timing */
  int steps;   /* decode steps timed */
  double *sample_s; /* if set: steps * reps sampling times of the last stage
                       (part of step_s), or zeros for other stages */
} bp_inproc_opts_t;

/* Decode steps of batch B over layers [first, last) (last -1 = all) with a
 * `threads`-thread CPU backend. For the last stage the LM head runs on every
 * row and each row is sampled greedily, as a last sa-worker does. Each
 * repeat prefills B fresh sequences with the prompt, runs o->warmup steps,
 * then times o->steps steps. step_s gets reps * steps step times (caller
 * allocates); tps[rep] gets B * steps / the repeat's decode time. */
int bp_inproc_decode(const bp_inproc_opts_t *o, int first, int last,
                     int threads, int B, int reps, double *step_s,
                     double *tps);

/* ------------------------------------------------------------------ cluster */

typedef struct {
  char bin_dir[1024];      /* sa-coordinator, sa-worker */
  char model_dir[1024];    /* weights (workers) */
  char coord_model[1024];  /* config + tokenizer the coordinator reads */
  char log_dir[1024];      /* logs of every process */
  int n_stages;
  int first[BP_MAX_STAGES], last[BP_MAX_STAGES]; /* layer ranges */
  int threads_per_stage;
  const char *kv_mem; /* per worker, e.g. "128MiB" */
  int extra_microbatches; /* sa-coordinator --extra-microbatches */
  const char *http;       /* sa-coordinator --http HOST:PORT, or NULL */
  bool curve;             /* CurveZMQ on every link (keys made in log_dir/keys);
                             else --insecure */
} bp_cluster_opts_t;

typedef struct {
  pid_t pids[BP_MAX_STAGES + 1];
  int n_pids;
  char endpoint[256]; /* the coordinator's */
  char http_url[300];  /* with opts.http: "http://127.0.0.1:PORT" */
} bp_cluster_t;

/* Starts the coordinator and the stages, waits until the replica is ready
 * (timeout_s). On failure everything started is stopped. */
int bp_cluster_start(const bp_cluster_opts_t *o, double timeout_s,
                     bp_cluster_t *c);
/* SIGTERM, then SIGKILL after a grace period; reaps every process. */
void bp_cluster_stop(bp_cluster_t *c);
/* Stops every cluster still running (for atexit and signal handlers). */
void bp_cluster_stop_all(void);

/* One request's timeline, seconds on sa_bench_now(). */
typedef struct {
  double t_submit, t_end;
  double *t_tok; /* arrival of each token's delta */
  int n_tok, cap;
  int tokens_generated, prompt_tokens;
  int status; /* sa_status_t of the stream's end */
} bp_req_t;

/* One Coordinator/Status sample: each stage's busy fraction (compute time
 * over the last heartbeat interval, about 1 s, as the worker reports it). */
typedef struct {
  double t;
  float load[BP_MAX_STAGES];
} bp_load_t;

/* Submits B text-only greedy requests (prompt, max_tokens each) at once
 * over one channel and runs until every stream has ended or timeout_s.
 * reqs[B] are filled (t_tok allocated here; bp_reqs_free). Meanwhile polls
 * Coordinator/Status every 250 ms into loads[cap] (*n_loads samples; loads
 * may be NULL). Returns 0 if every request ended OK with max_tokens
 * tokens. */
int bp_cluster_submit(const char *endpoint, const char *prompt, int max_tokens,
                      int B, double timeout_s, bp_req_t *reqs, bp_load_t *loads,
                      int cap, int *n_loads);
void bp_reqs_free(bp_req_t *reqs, int B);

/* Writes dst/{config.json,tokenizer.json,tokenizer_config.json}: the
 * model's config and tokenizer, with the tokenizer's vocabulary extended to
 * every id the LM head can emit (" v<id>" for ids the synthetic tokenizer
 * lacks), so that the coordinator streams one text delta per sampled token.
 * Prompt ids are unchanged (the new entries have no merges). Reused if
 * present. */
int bp_coord_model_write(const char *model_dir, const char *dst, int vocab);

/* --------------------------------------------------------------------- hop */

typedef struct {
  double rtt_ack_med, rtt_ack_p99;   /* payload out, 8-byte ack back */
  double rtt_echo_med, rtt_echo_p99; /* payload out and back */
} bp_hop_t;

/* ZeroMQ DEALER (here) -> ROUTER (a forked child) over tcp loopback with a
 * payload of `bytes`; reps round trips after a warm-up; CurveZMQ on both
 * ends with curve. Seconds. */
int bp_hop_measure(size_t bytes, int reps, bool curve, bp_hop_t *out);

#endif /* BENCH_PIPELINE_H */
