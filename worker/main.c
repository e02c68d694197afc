/*
 * sa-worker — serves one contiguous layer range [A, B) of the decoder
 * (docs/architecture.md §1): Stage/Step, Stage/Fork, Stage/Free over the RPC layer. Stage 0
 * embeds tokens and splices audio rows; each stage forwards its activations
 * to the next stage of the route directly; the last stage samples and its
 * StepResult travels back along the chain of calls. Registers with the
 * coordinator and heartbeats. A CUDA stage built with NCCL offers the next
 * stage of a route an NCCL link (Stage/Link); once both joined, activations
 * go GPU to GPU and the StepBatch travels alone (act_via_nccl).
 */
#include "log.h"
#include "memtrim.h"
#include "sa_time.h"
#include "registrar.h"
#include "rpc.h"
#include "sa.pb-c.h"
#include "security.h"
#include "sa_error.h"
#include "check.h"
#include "stage.h"

#include <ctype.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <uv.h>

#define MAX_NEXT 8

typedef struct {
  uv_loop_t *loop;
  stage_t st;
  sa_rpc_server_t *srv;
  char listen[256];
  char advertise[256];
  char coordinator[256];
  char replica[64];
  char node_id[128];
  char model_dir[512];
  sa_registrar_t *reg; /* membership: Register + Heartbeat */
  uv_signal_t sigterm, sigint;
  struct {
    char addr[256];
    char key[41]; /* the next stage's public key ("" in plain text) */
    sa_rpc_channel_t *ch;
  } next[MAX_NEXT];
  sa_sec_t sec;
  sa_memtrim_t *trim;
  uv_timer_t drain_timer;
  bool draining, stopped;
  uint64_t drain_start_ms;
  int drain_grace_s; /* --drain-grace-s */
  int64_t kv_total;
  int block_tokens;
  double last_busy_ms;
  uint64_t last_hb_ms;
  int max_queue;
  char host[256];  /* gethostname: NCCL links only between stages of one host */
  bool no_nccl;    /* --no-nccl */
  /* NCCL link offers to next stages (loop thread): none, offered, up, refused */
  struct {
    char addr[256];
    enum { LINK_NONE, LINK_OFFERED, LINK_UP, LINK_REFUSED } state;
  } offers[MAX_NEXT];
} worker_t;

static worker_t W;


static void usage(FILE *f) {
  fprintf(f,
          "usage: sa-worker --model DIR --layers A:B [options]\n"
          "\n"
          "Serves decoder layers [A, B) as one pipeline stage.\n"
          "\n"
          "  --model DIR          checkpoint folder\n"
          "  --layers A:B         layer range (B may be omitted for 'to the end')\n"
          "  --listen ADDR        ZeroMQ endpoint to bind (default tcp://127.0.0.1:*);\n"
          "                       the bound endpoint is printed on stdout as\n"
          "                       'listening ENDPOINT'\n"
          "  --advertise ADDR     address others use to reach this worker (default:\n"
          "                       the bound endpoint)\n"
          "  --coordinator ADDR   register and heartbeat there (default: none)\n"
          "  --replica NAME       pipeline replica this stage belongs to (default: none;\n"
          "                       the coordinator assembles pipelines from stages\n"
          "                       without a name whose layer ranges chain to [0, L))\n"
          "  --kv-mem SIZE        KV cache budget, e.g. 512MiB, 2GiB (default 256MiB);\n"
          "                       bf16 keys and values (SA_KV_TYPE=f32 in the\n"
          "                       environment: fp32, half the tokens)\n"
          "  --device DEV         cpu | ref | cuda[:N] (default cpu)\n"
          "  --threads N          CPU threads (default 0 = one per core)\n"
          "  --max-batch N        sequences per step (default 64)\n"
          "  --max-tokens N       tokens per step (default 512)\n"
          "  --node-id ID         stable id (default host:pid)\n"
          "  --no-nccl            keep activations on ZeroMQ even between CUDA stages\n"
          "                       of one host (default: offer the next stage an NCCL\n"
          "                       link when this stage runs on CUDA)\n"
          "  --drain-grace-s N    on SIGTERM, drain first: no new work comes here and\n"
          "                       running sequences finish, for at most N s (default\n"
          "                       30; 0 = stop at once); a second signal stops at once\n"
          SA_SEC_USAGE
          "  -h, --help\n");
}

static int parse_size(const char *s, size_t *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || v <= 0)
    return -1;
  while (isspace((unsigned char)*end))
    end++;
  double mul = 1;
  if (!strcasecmp(end, "") || !strcasecmp(end, "b")) mul = 1;
  else if (!strcasecmp(end, "k") || !strcasecmp(end, "kib") || !strcasecmp(end, "kb")) mul = 1024.0;
  else if (!strcasecmp(end, "m") || !strcasecmp(end, "mib") || !strcasecmp(end, "mb")) mul = 1024.0 * 1024;
  else if (!strcasecmp(end, "g") || !strcasecmp(end, "gib") || !strcasecmp(end, "gb")) mul = 1024.0 * 1024 * 1024;
  else return -1;
  *out = (size_t)(v * mul);
  return 0;
}

/* ---------------------------------------------------------------- replies */


/* The channel to the stage at addr whose key is key (from the route). */
static sa_rpc_channel_t *next_channel(const char *addr, const char *key) {
  int free_slot = -1;
  for (int i = 0; i < MAX_NEXT; i++) {
    if (W.next[i].ch && !strcmp(W.next[i].addr, addr) && !strcmp(W.next[i].key, key))
      return W.next[i].ch;
    if (!W.next[i].ch && free_slot < 0)
      free_slot = i;
  }
  if (free_slot < 0) { /* evict the first */
    sa_rpc_channel_destroy(&W.next[0].ch);
    free_slot = 0;
  }
  sa_rpc_opts_t o;
  sa_rpc_opts_default(&o);
  o.max_msg_bytes = 4u << 20; /* replies are StepResults and acks */
  if (sa_sec_channel_opts(&W.sec, &o, key)) {
    SA_LOG_WARN("the route names no key for the stage at %s", addr);
    return NULL;
  }
  if (sa_rpc_channel_new(W.loop, addr, &o, &W.next[free_slot].ch))
    return NULL;
  snprintf(W.next[free_slot].addr, sizeof W.next[free_slot].addr, "%s", addr);
  snprintf(W.next[free_slot].key, sizeof W.next[free_slot].key, "%s", key);
  return W.next[free_slot].ch;
}

typedef struct {
  sa_rpc_call_t *up; /* the upstream call to answer */
  job_t *job;
  bool nccl;         /* its activations went over the NCCL link to addr */
  double compute_ms; /* this stage's, appended to the StepResult going up */
  char addr[256];
} fwd_t;

static void drop_out_link(const char *addr);

static void on_downstream(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  fwd_t *f = user;
  (void)ch;
  if (f->nccl && res->status != SA_STATUS_OK && res->status != SA_STATUS_CANCELLED)
    drop_out_link(f->addr); /* the peer may never post its receive */
  if (f->up) {
    if (res->status == SA_STATUS_OK) {
      /* the downstream StepResult with this stage's compute time appended:
       * a field appended to a protobuf message is part of it (field 6,
       * stage_compute_ms, unpacked double: tag 0x31 + 8 bytes little-endian,
       * the host's order on the little-endian CPUs we build for) */
      uint8_t stackbuf[16384]; /* a StepResult of 256 sequences is ~4 KB */
      uint8_t *buf = res->body_len + 9 <= sizeof stackbuf ? stackbuf : malloc(res->body_len + 9);
      if (buf) {
        memcpy(buf, res->body, res->body_len);
        buf[res->body_len] = 0x31;
        memcpy(buf + res->body_len + 1, &f->compute_ms, 8);
      }
      sa_rpc_call_reply(f->up, SA_STATUS_OK, NULL, buf ? buf : res->body,
                        buf ? res->body_len + 9 : res->body_len, NULL, 0);
      if (buf != stackbuf)
        free(buf);
    } else {
      char msg[512];
      snprintf(msg, sizeof msg, "next stage: %s", res->status_msg);
      sa_rpc_call_reply(f->up, res->status, msg, NULL, 0, NULL, 0);
    }
  }
  free(f);
}

/* This stage, as the message checks (check.h) see it. */
static void limits(worker_limits_t *l) {
  const stage_t *st = &W.st;
  *l = (worker_limits_t){.is_first = st->is_first,
                         .is_cuda = st->is_cuda,
                         .nccl_built = sa_nccl_available() != 0,
                         .no_nccl = W.no_nccl,
                         .max_seqs = st->max_seqs,
                         .max_tokens = st->max_tokens,
                         .vocab = st->vocab,
                         .hidden = st->hidden,
                         .host = W.host};
}

/* ------------------------------------------------------------ NCCL links */

static int offer_slot(const char *addr, bool create) {
  for (int i = 0; i < MAX_NEXT; i++)
    if (W.offers[i].addr[0] && !strcmp(W.offers[i].addr, addr))
      return i;
  if (!create)
    return -1;
  for (int i = 0; i < MAX_NEXT; i++)
    if (!W.offers[i].addr[0]) {
      snprintf(W.offers[i].addr, sizeof W.offers[i].addr, "%s", addr);
      W.offers[i].state = LINK_NONE;
      return i;
    }
  return -1;
}

typedef struct {
  int slot;
  uint8_t id[SA_NCCL_ID_BYTES];
} offer_t;

static void on_link_reply(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  (void)ch;
  offer_t *o = user;
  int i = o->slot;
  Sa__LinkResponse *r =
      res->status == SA_STATUS_OK ? sa__link_response__unpack(NULL, res->body_len, res->body) : NULL;
  if (!r || !r->accepted) {
    SA_LOG_INFO("next stage %s keeps activations on ZeroMQ: %s", W.offers[i].addr,
                r ? r->reason : res->status_msg);
    W.offers[i].state = LINK_REFUSED;
  } else {
    job_t *job = calloc(1, sizeof *job);
    if (!job) {
      W.offers[i].state = LINK_REFUSED;
    } else { /* join as rank 0 on the compute thread; the peer joins as rank 1 */
      job->kind = JOB_LINK;
      job->link_rank = 0;
      memcpy(job->link_id, o->id, SA_NCCL_ID_BYTES);
      snprintf(job->link_addr, sizeof job->link_addr, "%s", W.offers[i].addr);
      stage_submit(&W.st, job);
    }
  }
  if (r)
    sa__link_response__free_unpacked(r, NULL);
  free(o);
}

/* The link to addr failed: the compute thread drops it (in order with the
 * steps) and activations to addr go over ZeroMQ from now on. */
static void drop_out_link(const char *addr) {
  int i = offer_slot(addr, false);
  if (i < 0 || W.offers[i].state != LINK_UP)
    return;
  W.offers[i].state = LINK_REFUSED;
  job_t *job = calloc(1, sizeof *job);
  if (!job)
    return;
  job->kind = JOB_LINK;
  job->link_rank = 0;
  job->link_drop = true;
  snprintf(job->link_addr, sizeof job->link_addr, "%s", addr);
  stage_submit(&W.st, job);
  SA_LOG_WARN("NCCL link to %s dropped after a failed step", addr);
}

/* Offers the next stage at addr an NCCL link, once (loop thread). */
static void maybe_offer_link(sa_rpc_channel_t *ch, const char *addr) {
  if (W.no_nccl || !W.st.is_cuda || !sa_nccl_available())
    return;
  int i = offer_slot(addr, true);
  if (i < 0 || W.offers[i].state != LINK_NONE)
    return;
  W.offers[i].state = LINK_REFUSED; /* unless all below works */
  offer_t *o = calloc(1, sizeof *o);
  if (!o)
    return;
  o->slot = i;
  int rc = sa_nccl_get_unique_id(o->id);
  if (rc) {
    SA_LOG_WARN("no NCCL id (%s): activations to %s go over ZeroMQ", sa_strerror(rc), addr);
    free(o);
    return;
  }
  Sa__LinkRequest rq = SA__LINK_REQUEST__INIT;
  rq.nccl_id.data = o->id;
  rq.nccl_id.len = SA_NCCL_ID_BYTES;
  rq.from_address = W.advertise;
  rq.host = W.host;
  rq.hidden_size = W.st.hidden;
  rq.max_tokens = W.st.max_tokens;
  size_t len = sa__link_request__get_packed_size(&rq);
  uint8_t *buf = malloc(len);
  if (!buf) {
    free(o);
    return;
  }
  sa__link_request__pack(&rq, buf);
  sa_rpc_call_opts_t co = {.timeout_ms = 10000};
  rc = sa_rpc_channel_call(ch, "Stage/Link", buf, len, NULL, 0, &co, on_link_reply, o, NULL);
  free(buf);
  if (rc) {
    free(o);
    return;
  }
  W.offers[i].state = LINK_OFFERED;
}

/* Stage/Link: the previous stage offers an NCCL link. Accepted only between
 * CUDA stages with NCCL on one host with matching shapes. */
static void link_handler(sa_rpc_call_t *call, void *user) {
  (void)user;
  stage_t *st = &W.st;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__LinkRequest *rq = sa__link_request__unpack(NULL, len, body);
  if (!rq) {
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, "malformed LinkRequest", NULL, 0, NULL,
                      0);
    return;
  }
  worker_limits_t lim;
  limits(&lim);
  const char *why = worker_check_link(&lim, rq, sizeof ((job_t *)0)->link_addr);
  Sa__LinkResponse r = SA__LINK_RESPONSE__INIT;
  r.accepted = why == NULL;
  r.reason = (char *)(why ? why : "");
  job_t *job = NULL;
  if (!why && !(job = calloc(1, sizeof *job))) {
    r.accepted = false;
    r.reason = "out of memory";
  }
  sa_rpc_call_reply_pb(call, &r.base);
  if (job) { /* join as rank 1 on the compute thread, before any later step */
    job->kind = JOB_LINK;
    job->link_rank = 1;
    memcpy(job->link_id, rq->nccl_id.data, SA_NCCL_ID_BYTES);
    snprintf(job->link_addr, sizeof job->link_addr, "%s", rq->from_address);
    stage_submit(st, job);
    SA_LOG_INFO("joining an NCCL link from %s", rq->from_address);
  }
  sa__link_request__free_unpacked(rq, NULL);
}

/* A compute job finished (loop thread). */
static void on_job_done(job_t *job, void *user) {
  (void)user;
  stage_t *st = &W.st;
  if (job->kind == JOB_LINK && job->link_drop) {
    stage_job_free(st, job);
    return;
  }
  if (job->kind == JOB_LINK) {
    int i = job->link_rank == 0 ? offer_slot(job->link_addr, false) : -1;
    if (job->rc)
      SA_LOG_WARN("%s", job->err);
    else
      SA_LOG_INFO("NCCL link %s %s is up", job->link_rank == 0 ? "to" : "from", job->link_addr);
    if (i >= 0)
      W.offers[i].state = job->rc ? LINK_REFUSED : LINK_UP;
    stage_job_free(st, job);
    return;
  }
  if (job->link_broken && job->batch && job->batch->hop + 1 < (int)job->batch->n_route) {
    int i = offer_slot(job->batch->route[job->batch->hop + 1], false);
    if (i >= 0)
      W.offers[i].state = LINK_REFUSED; /* ZeroMQ from now on */
  }
  if (job->rc) {
    if (job->call)
      sa_rpc_call_reply(job->call, sa_err_to_status(job->rc), job->err, NULL, 0, NULL, 0);
    stage_job_free(st, job);
    return;
  }
  switch (job->kind) {
  case JOB_STEP:
    if (st->is_last) {
      if (job->call)
        sa_rpc_call_reply_pb(job->call, &job->result->base);
    } else {
      /* forward activations to route[hop + 1] */
      Sa__StepBatch *b = job->batch;
      int next = b->hop + 1;
      const char *key = next < (int)b->n_route_keys ? b->route_keys[next] : "";
      sa_rpc_channel_t *ch = next < (int)b->n_route ? next_channel(b->route[next], key) : NULL;
      if (!ch) {
        if (job->act_out)
          stage_out_release(job->act_out, st);
        if (job->call)
          sa_rpc_call_reply(job->call, SA_STATUS_UNAVAILABLE, "no route to the next stage", NULL,
                            0, NULL, 0);
        break;
      }
      b->hop = next;
      b->act_via_nccl = job->out_nccl; /* (it said where our input came from) */
      b->nccl_seq = job->nccl_seq;
      size_t len = sa__step_batch__get_packed_size(b);
      uint8_t *buf = malloc(len);
      fwd_t *f = malloc(sizeof *f);
      if (!buf || !f) {
        free(buf);
        free(f);
        if (job->act_out)
          stage_out_release(job->act_out, st);
        if (job->call)
          sa_rpc_call_reply(job->call, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL, 0,
                            NULL, 0);
        break;
      }
      sa__step_batch__pack(b, buf);
      sa_rpc_frame_t fr = {0};
      fr.desc.dtype = SA_DTYPE_F32;
      fr.desc.ndim = 2;
      fr.desc.shape[0] = b->total_tokens;
      fr.desc.shape[1] = st->hidden;
      fr.data = job->act_out;
      fr.nbytes = sizeof(float) * (size_t)b->total_tokens * (size_t)st->hidden;
      fr.free_fn = stage_out_release; /* zero-copy: back to the pool when sent */
      fr.hint = st;
      f->up = job->call;
      f->job = NULL;
      f->nccl = job->out_nccl;
      f->compute_ms = job->compute_ms;
      snprintf(f->addr, sizeof f->addr, "%s", b->route[next]);
      int64_t left = job->call ? sa_rpc_call_remaining_ms(job->call) : 30000;
      sa_rpc_call_opts_t o = {.timeout_ms = left > 0 ? left : 30000};
      int rc = sa_rpc_channel_call(ch, "Stage/Step", buf, len, job->out_nccl ? NULL : &fr,
                                   job->out_nccl ? 0 : 1, &o, on_downstream, f, NULL);
      free(buf);
      if (!rc)
        maybe_offer_link(ch, b->route[next]);
      if (rc) {
        free(f);
        if (job->out_nccl)
          drop_out_link(b->route[next]);
        if (job->call)
          sa_rpc_call_reply(job->call, sa_err_to_status(rc), "cannot reach the next stage", NULL,
                            0, NULL, 0);
      }
      job->call = NULL; /* answered by on_downstream */
    }
    break;
  case JOB_FORK: {
    Sa__ForkResult r = SA__FORK_RESULT__INIT;
    sa_kv_stats_t ks;
    stage_kv_stats(st, &ks);
    r.forked = job->forked;
    r.kv_blocks_used = ks.blocks_used;
    r.kv_blocks_free = ks.blocks_free;
    if (job->call)
      sa_rpc_call_reply_pb(job->call, &r.base);
    break;
  }
  case JOB_FREE: {
    Sa__FreeResult r = SA__FREE_RESULT__INIT;
    sa_kv_stats_t ks;
    stage_kv_stats(st, &ks);
    r.freed = job->freed;
    r.kv_blocks_used = ks.blocks_used;
    r.kv_blocks_free = ks.blocks_free;
    if (job->call)
      sa_rpc_call_reply_pb(job->call, &r.base);
    else if (!job->free_rq)
      SA_LOG_INFO("freed the KV of %d sequences of the previous coordinator", job->freed);
    break;
  }
  default:
    break;
  }
  stage_job_free(st, job);
}

/* ------------------------------------------------------------- handlers */

static bool queue_full(sa_rpc_call_t *call) {
  if (stage_queued(&W.st) >= W.max_queue) {
    sa_rpc_call_reply(call, SA_STATUS_RESOURCE_EXHAUSTED, "stage queue full", NULL, 0, NULL, 0);
    return true;
  }
  return false;
}

static void bad(sa_rpc_call_t *call, Sa__StepBatch *b, const char *msg) {
  SA_LOG_WARN("refused a step: %s", msg);
  sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, msg, NULL, 0, NULL, 0);
  if (b)
    sa__step_batch__free_unpacked(b, NULL);
}

static void step_handler(sa_rpc_call_t *call, void *user) {
  (void)user;
  stage_t *st = &W.st;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__StepBatch *b = sa__step_batch__unpack(NULL, len, body);
  char msg[256];
  if (!b)
    return bad(call, NULL, "malformed StepBatch");
  /* a step whose rows come over NCCL is never refused for a full queue:
   * its sender is already waiting for the matching receive (the sender's
   * outbox bounds how many there are) */
  if (!b->act_via_nccl && queue_full(call)) {
    sa__step_batch__free_unpacked(b, NULL);
    return;
  }
  worker_limits_t lim;
  limits(&lim);
  int64_t M = 0, need_rows = 0;
  const char *why = worker_check_step(&lim, b, &M, &need_rows, msg, sizeof msg);
  if (why)
    return bad(call, b, why);
  job_t *job = calloc(1, sizeof *job);
  if (!job) {
    sa_rpc_call_reply(call, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL, 0, NULL, 0);
    sa__step_batch__free_unpacked(b, NULL);
    return;
  }
  job->kind = JOB_STEP;
  job->call = call;
  job->batch = b;
  int nt = sa_rpc_call_n_tensors(call);
  if (st->is_first) {
    if (need_rows > 0) {
      const sa_rpc_tensor_t *t = nt >= 1 ? sa_rpc_call_tensor(call, 0) : NULL;
      if (!t || t->desc.dtype != SA_DTYPE_F32 || t->desc.ndim != 2 ||
          t->desc.shape[1] != st->hidden || t->desc.shape[0] < need_rows) {
        free(job);
        return bad(call, b, "embedding frame missing or not f32 [rows, hidden]");
      }
      job->emb_in = t->data;
      job->emb_rows = t->desc.shape[0];
    }
  } else if (!b->act_via_nccl) {
    const sa_rpc_tensor_t *t = nt >= 1 ? sa_rpc_call_tensor(call, 0) : NULL;
    if (!t || t->desc.dtype != SA_DTYPE_F32 || t->desc.ndim != 2 || t->desc.shape[0] != M ||
        t->desc.shape[1] != st->hidden) {
      free(job);
      return bad(call, b, "activation frame missing or not f32 [total_tokens, hidden]");
    }
    job->act_in = t->data;
  }
  stage_submit(st, job);
}

static void fork_handler(sa_rpc_call_t *call, void *user) {
  (void)user;
  if (queue_full(call))
    return;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__ForkRequest *f = sa__fork_request__unpack(NULL, len, body);
  if (!f || f->n_child_seqs == 0 || f->n_child_seqs > 256) {
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, "malformed ForkRequest", NULL, 0, NULL, 0);
    if (f)
      sa__fork_request__free_unpacked(f, NULL);
    return;
  }
  job_t *job = calloc(1, sizeof *job);
  if (!job) {
    sa__fork_request__free_unpacked(f, NULL);
    sa_rpc_call_reply(call, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL, 0, NULL, 0);
    return;
  }
  job->kind = JOB_FORK;
  job->call = call;
  job->fork = f;
  stage_submit(&W.st, job);
}

static void free_handler(sa_rpc_call_t *call, void *user) {
  (void)user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__FreeRequest *f = sa__free_request__unpack(NULL, len, body);
  if (!f) {
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, "malformed FreeRequest", NULL, 0, NULL, 0);
    return;
  }
  job_t *job = calloc(1, sizeof *job);
  if (!job) {
    sa__free_request__free_unpacked(f, NULL);
    sa_rpc_call_reply(call, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL, 0, NULL, 0);
    return;
  }
  job->kind = JOB_FREE;
  job->call = call;
  job->free_rq = f;
  stage_submit(&W.st, job); /* never refused: freeing must always work */
}

/* ---------------------------------------------------- registration, beats */

/* The coordinator restarted: it knows none of the sequences here, so their
 * KV is freed (on the compute thread, in queue order). */
static void coordinator_changed(void *user) {
  (void)user;
  job_t *job = calloc(1, sizeof *job);
  if (!job) {
    SA_LOG_ERROR("out of memory: the old coordinator's KV stays");
    return;
  }
  job->kind = JOB_FREE; /* free_rq NULL: every sequence */
  stage_submit(&W.st, job);
}

/* The stage's figures for each heartbeat: load since the last one, KV. */
static void report_load(void *user, sa_registrar_load_t *out) {
  (void)user;
  sa_kv_stats_t ks;
  stage_kv_stats(&W.st, &ks);
  uint64_t now = sa_now_ms();
  double busy = W.st.busy_ms;
  double dt = (double)(now - W.last_hb_ms);
  out->load = dt > 0 ? (float)((busy - W.last_busy_ms) / dt) : 0;
  if (out->load > 1)
    out->load = 1;
  W.last_busy_ms = busy;
  W.last_hb_ms = now;
  out->kv_blocks_used = ks.blocks_used;
  out->kv_blocks_free = ks.blocks_free;
  out->kv_blocks_shared = ks.blocks_shared;
  out->sequences = ks.n_seqs;
  out->queue_depth = stage_queued(&W.st);
}

static void stop_now(void) {
  if (W.stopped) /* e.g. the drain call's callback, cancelled by the stop itself */
    return;
  W.stopped = true;
  uv_close((uv_handle_t *)&W.sigterm, NULL);
  uv_close((uv_handle_t *)&W.sigint, NULL);
  uv_close((uv_handle_t *)&W.drain_timer, NULL);
  sa_rpc_server_destroy(&W.srv);
  sa_registrar_stop(&W.reg);
  sa_rpc_auth_destroy(&W.sec.auth);
  sa_memtrim_stop(&W.trim);
  for (int i = 0; i < MAX_NEXT; i++)
    sa_rpc_channel_destroy(&W.next[i].ch);
  stage_stop(&W.st);
}

/* While draining: stop once no sequence is left here, or at the grace
 * period's end (the coordinator moves what is left elsewhere). */
static void on_drain_tick(uv_timer_t *t) {
  (void)t;
  sa_kv_stats_t ks;
  stage_kv_stats(&W.st, &ks);
  double waited = (double)(sa_now_ms() - W.drain_start_ms) / 1000.0;
  if (ks.n_seqs == 0 || waited >= W.drain_grace_s) {
    if (ks.n_seqs)
      SA_LOG_WARN("drain: %d sequences still here after %.0f s; stopping", ks.n_seqs, waited);
    else
      SA_LOG_INFO("drained in %.1f s; stopping", waited);
    uv_timer_stop(&W.drain_timer);
    stop_now();
  }
}

static void on_drain_answer(void *user, bool ok) {
  (void)user;
  if (!ok) { /* the coordinator would not: stop now, failover does the rest */
    uv_timer_stop(&W.drain_timer);
    stop_now();
  }
}

/* SIGTERM: drain (the coordinator sends no new work, running sequences
 * finish here), then stop; a second signal, SIGINT, or no coordinator to
 * drain with: stop at once. */
static void on_signal(uv_signal_t *s, int sig) {
  (void)s;
  if (sig == SIGTERM && !W.draining && W.drain_grace_s > 0 && sa_registrar_registered(W.reg) &&
      sa_registrar_drain(W.reg, on_drain_answer, NULL) == 0) {
    SA_LOG_INFO("signal %d: draining (at most %d s), then stopping", sig, W.drain_grace_s);
    W.draining = true;
    W.drain_start_ms = sa_now_ms();
    uv_timer_start(&W.drain_timer, on_drain_tick, 200, 200);
    return;
  }
  SA_LOG_INFO("signal %d: stopping", sig);
  if (W.draining)
    uv_timer_stop(&W.drain_timer);
  stop_now();
}

int main(int argc, char **argv) {
  sa_log_init("sa-worker");
  const char *layers = NULL, *device = "cpu";
  size_t kv_bytes = 256u << 20;
  int threads = 0, max_batch = 64, max_tokens = 512;
  snprintf(W.listen, sizeof W.listen, "tcp://127.0.0.1:*");
  W.replica[0] = 0; /* none: the coordinator puts it into a pipeline */
  static const struct option longopts[] = {
      {"model", required_argument, 0, 'm'},     {"layers", required_argument, 0, 'L'},
      {"listen", required_argument, 0, 'l'},    {"advertise", required_argument, 0, 'a'},
      {"coordinator", required_argument, 0, 'c'}, {"replica", required_argument, 0, 'r'},
      {"kv-mem", required_argument, 0, 'k'},    {"device", required_argument, 0, 'd'},
      {"threads", required_argument, 0, 't'},   {"max-batch", required_argument, 0, 'B'},
      {"max-tokens", required_argument, 0, 'T'}, {"node-id", required_argument, 0, 'n'},
      {"no-nccl", no_argument, 0, 'N'},         {"help", no_argument, 0, 'h'},
      {"drain-grace-s", required_argument, 0, 'G'},
      SA_SEC_LONGOPTS,                          {0, 0, 0, 0}};
  W.drain_grace_s = 30;
  sa_sec_args_t sa = {0};
  int opt;
  while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'm': snprintf(W.model_dir, sizeof W.model_dir, "%s", optarg); break;
    case 'L': layers = optarg; break;
    case 'l': snprintf(W.listen, sizeof W.listen, "%s", optarg); break;
    case 'a': snprintf(W.advertise, sizeof W.advertise, "%s", optarg); break;
    case 'c': snprintf(W.coordinator, sizeof W.coordinator, "%s", optarg); break;
    case 'r': snprintf(W.replica, sizeof W.replica, "%s", optarg); break;
    case 'k':
      if (parse_size(optarg, &kv_bytes)) {
        fprintf(stderr, "sa-worker: bad --kv-mem '%s' (e.g. 512MiB)\n", optarg);
        return 2;
      }
      break;
    case 'd': device = optarg; break;
    case 't': threads = atoi(optarg); break;
    case 'B': max_batch = atoi(optarg); break;
    case 'T': max_tokens = atoi(optarg); break;
    case 'n': snprintf(W.node_id, sizeof W.node_id, "%s", optarg); break;
    case 'N': W.no_nccl = true; break;
    case 'G': W.drain_grace_s = atoi(optarg); break;
    case 'h': usage(stdout); return 0;
    default:
      if (sa_sec_args_take(&sa, opt, optarg))
        break;
      usage(stderr);
      return 2;
    }
  }
  if (!W.model_dir[0] || !layers) {
    fprintf(stderr, "sa-worker: --model and --layers are required\n");
    usage(stderr);
    return 2;
  }
  int first = -1, last = -1;
  char *end;
  first = (int)strtol(layers, &end, 10);
  if (end == layers || *end != ':' || first < 0) {
    fprintf(stderr, "sa-worker: --layers must be A:B (got '%s')\n", layers);
    return 2;
  }
  if (end[1]) {
    char *e2;
    last = (int)strtol(end + 1, &e2, 10);
    if (*e2 || last <= first) {
      fprintf(stderr, "sa-worker: --layers must be A:B with A < B (got '%s')\n", layers);
      return 2;
    }
  }
  if (max_batch < 1 || max_batch > 256 || max_tokens < 1 || threads < 0) {
    fprintf(stderr, "sa-worker: --max-batch 1..256, --max-tokens >= 1, --threads >= 0\n");
    return 2;
  }
  snprintf(W.host, sizeof W.host, "host");
  gethostname(W.host, sizeof W.host - 1);
  if (!W.node_id[0])
    snprintf(W.node_id, sizeof W.node_id, "stage-%.64s-%d", W.host, (int)getpid());
  char err[512];
  if (sa_sec_open_args(&W.sec, &sa, SA_ROLE_STAGE, err, sizeof err) ||
      sa_sec_check_bind(&W.sec, W.listen, sa.allow_insecure_network, err, sizeof err)) {
    fprintf(stderr, "sa-worker: %s\n", err);
    return 2;
  }
  sa_rpc_opts_t co;
  sa_rpc_opts_default(&co);
  co.max_msg_bytes = 1u << 20; /* Register and Heartbeat replies */
  if (W.coordinator[0] && sa_sec_coordinator_opts(&W.sec, &co, err, sizeof err)) {
    fprintf(stderr, "sa-worker: the coordinator's key: %s\n", err);
    return 2;
  }
  W.loop = uv_default_loop();
  W.max_queue = 64;
  int rc = stage_start(&W.st, W.loop, W.model_dir, first, last, device, threads, kv_bytes,
                       max_tokens, max_batch, on_job_done, NULL, err, sizeof err);
  if (rc) {
    fprintf(stderr, "sa-worker: %s\n", err);
    return 1;
  }
  sa_kv_stats_t ks;
  stage_kv_stats(&W.st, &ks);
  W.kv_total = ks.blocks_total;
  W.block_tokens = sa_kv_block_size(W.st.kv);
  sa_rpc_opts_t ro;
  char domain[32];
  sa_rpc_opts_default(&ro);
  sa_sec_server_opts(&W.sec, &ro, SA_ROLE_COORDINATOR | SA_ROLE_STAGE, domain);
  /* the largest legal Step: activations and audio rows of max_tokens rows
   * each (fp32 at most), plus the message itself */
  ro.max_msg_bytes = 2 * (size_t)W.st.max_tokens * (size_t)W.st.hidden * sizeof(float) + (1u << 20);
  rc = sa_sec_serve(&W.sec, W.loop);
  if (rc == 0)
    rc = sa_rpc_server_new(W.loop, &ro, &W.srv);
  if (rc == 0)
    rc = sa_rpc_server_bind(W.srv, W.listen);
  if (rc) {
    fprintf(stderr, "sa-worker: cannot listen on %s: %s\n", W.listen, sa_strerror(rc));
    return 1;
  }
  if (!W.advertise[0])
    snprintf(W.advertise, sizeof W.advertise, "%s", sa_rpc_server_endpoint(W.srv));
  sa_rpc_server_register(W.srv, "Stage/Step", SA_RPC_UNARY, step_handler, NULL);
  sa_rpc_server_register(W.srv, "Stage/Fork", SA_RPC_UNARY, fork_handler, NULL);
  sa_rpc_server_register(W.srv, "Stage/Free", SA_RPC_UNARY, free_handler, NULL);
  sa_rpc_server_register(W.srv, "Stage/Link", SA_RPC_UNARY, link_handler, NULL);
  static const sa_sec_rule_t rules[] = {
      {"Stage/Step", SA_ROLE_COORDINATOR | SA_ROLE_STAGE}, /* stage 0 from the coordinator */
      {"Stage/Fork", SA_ROLE_COORDINATOR},
      {"Stage/Free", SA_ROLE_COORDINATOR},
      {"Stage/Link", SA_ROLE_STAGE},
  };
  sa_sec_guard(W.srv, &W.sec, rules, (int)(sizeof rules / sizeof rules[0]));
  printf("listening %s\n", sa_rpc_server_endpoint(W.srv));
  fflush(stdout);
  SA_LOG_INFO("serving layers %d:%d of %d on %s (%s, %lld KV blocks of %d tokens, %s)",
              W.st.first, W.st.last, W.st.n_layers, W.advertise, device, (long long)W.kv_total,
              W.block_tokens, sa_kv_type_name(sa_kv_type(W.st.kv)));
  if (W.coordinator[0]) {
    sa_registrar_opts_t ro = {
        .role = SA_REGISTRAR_STAGE,
        .coordinator = W.coordinator,
        .node_id = W.node_id,
        .address = W.advertise,
        .model_id = W.model_dir,
        .backend = W.st.be->ops->name,
        .hidden_size = W.st.hidden,
        .replica = W.replica,
        .first_layer = W.st.first,
        .last_layer = W.st.last,
        .num_layers = W.st.n_layers,
        .has_embed = W.st.is_first,
        .has_lm_head = W.st.is_last,
        .kv_blocks_total = W.kv_total,
        .kv_block_tokens = W.block_tokens,
        .max_batch = W.st.max_seqs,
        .max_tokens_per_step = W.st.max_tokens,
        .coordinator_changed = coordinator_changed,
    };
    ro.rpc = &co;
    W.last_hb_ms = sa_now_ms();
    if (sa_registrar_start(W.loop, &ro, report_load, NULL, &W.reg)) {
      fprintf(stderr, "sa-worker: bad coordinator address %s\n", W.coordinator);
      return 1;
    }
  }
  uv_signal_init(W.loop, &W.sigterm);
  uv_signal_init(W.loop, &W.sigint);
  uv_signal_start(&W.sigterm, on_signal, SIGTERM);
  uv_timer_init(W.loop, &W.drain_timer);
  W.trim = sa_memtrim_start(W.loop, 2000);
  uv_signal_start(&W.sigint, on_signal, SIGINT);
  uv_run(W.loop, UV_RUN_DEFAULT);
  return 0;
}
