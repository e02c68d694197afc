/*
 * registry — encoders and stage workers, their heartbeats, the pipeline
 * replicas assembled from stages covering [0, L), and KV reservations
 * (see registry.h).
 */
#include "registry.h"

#include "log.h"
#include "sa_error.h"
#include "sa_time.h"
#include "security.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void coord_registry_init(coord_registry_t *reg, struct uv_loop_s *loop, int num_layers,
                         int hidden_size, int heartbeat_timeout_ms,
                         const coord_registry_cbs_t *cbs, void *user) {
  memset(reg, 0, sizeof *reg);
  reg->loop = loop;
  reg->num_layers = num_layers;
  reg->hidden_size = hidden_size;
  reg->heartbeat_timeout_ms = heartbeat_timeout_ms;
  reg->max_audio_s = 1200;
  reg->forget_ms = 65000;
  randombytes_buf(&reg->instance_id, sizeof reg->instance_id);
  reg->instance_id |= 1; /* never 0 */
  if (cbs)
    reg->cbs = *cbs;
  reg->user = user;
}

void coord_registry_close(coord_registry_t *reg) {
  for (int i = 0; i < COORD_MAX_WORKERS; i++)
    sa_rpc_channel_destroy(&reg->workers[i].ch);
}

static coord_worker_t *find_worker(coord_registry_t *reg, const char *node_id) {
  for (int i = 0; i < COORD_MAX_WORKERS; i++)
    if (reg->workers[i].used && strcmp(reg->workers[i].node_id, node_id) == 0)
      return &reg->workers[i];
  return NULL;
}

static int find_replica(coord_registry_t *reg, const char *name, bool create) {
  int free_slot = -1;
  for (int i = 0; i < COORD_MAX_REPLICAS; i++) {
    if (reg->replicas[i].used && strcmp(reg->replicas[i].name, name) == 0)
      return i;
    if (!reg->replicas[i].used && free_slot < 0)
      free_slot = i;
  }
  if (!create || free_slot < 0)
    return -1;
  coord_replica_t *r = &reg->replicas[free_slot];
  memset(r, 0, sizeof *r);
  r->used = true;
  snprintf(r->name, sizeof r->name, "%s", name);
  return free_slot;
}

/* The healthy stage of replica ri whose range starts at layer `at`, or -1. */
static int stage_at(const coord_registry_t *reg, int ri, int at) {
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    const coord_worker_t *w = &reg->workers[i];
    if (w->used && w->healthy && w->role == SA__ROLE__ROLE_STAGE && w->replica == ri &&
        w->first == at)
      return i;
  }
  return -1;
}

/* Re-derives every replica's stage list and readiness from the workers and
 * reports replicas that were lost or became ready. */
static void derive_replicas(coord_registry_t *reg) {
  for (int ri = 0; ri < COORD_MAX_REPLICAS; ri++) {
    coord_replica_t *r = &reg->replicas[ri];
    if (!r->used || r->dissolved)
      continue;
    bool was_ready = r->ready;
    r->n_stages = 0;
    r->ready = false;
    int at = 0;
    int64_t cap = INT64_MAX;
    int bt = 0, mb = INT32_MAX, mt = INT32_MAX;
    bool ok = true;
    while (at < reg->num_layers && r->n_stages < COORD_MAX_STAGES) {
      int found = stage_at(reg, ri, at);
      if (found < 0) {
        ok = false;
        break;
      }
      const coord_worker_t *w = &reg->workers[found];
      r->stage[r->n_stages++] = found;
      at = w->last;
      if (w->kv_total < cap)
        cap = w->kv_total;
      if (bt && w->kv_block_tokens != bt)
        ok = false;
      bt = w->kv_block_tokens;
      if (w->max_batch < mb)
        mb = w->max_batch;
      if (w->max_tokens_per_step < mt)
        mt = w->max_tokens_per_step;
    }
    if (ok && at == reg->num_layers && r->n_stages > 0) {
      r->ready = true;
      memcpy(r->last_stage, r->stage, sizeof r->stage);
      r->last_n = r->n_stages;
      r->kv_capacity = cap;
      r->block_tokens = bt;
      r->max_batch = mb;
      r->max_tokens_per_step = mt;
    }
    if (!r->ready && r->last_n > 0) {
      /* keep the last complete stage list: the frees of its requests'
       * sequences must reach every stage that still holds them */
      memcpy(r->stage, r->last_stage, sizeof r->stage);
      r->n_stages = r->last_n;
    }
    if (was_ready && !r->ready) {
      SA_LOG_WARN("replica %s is no longer complete", r->name);
      if (reg->cbs.replica_lost)
        reg->cbs.replica_lost(reg->user, ri, "a stage of its replica went away");
    } else if (!was_ready && r->ready) {
      SA_LOG_INFO("replica %s ready: %d stages, %lld KV blocks of %d tokens", r->name,
                  r->n_stages, (long long)r->kv_capacity, bt);
      reg->epoch++;
      if (reg->cbs.changed)
        reg->cbs.changed(reg->user);
    }
  }
}

/* "tcp://10.0.0.5:7720" -> "10.0.0.5" in host[cap]. */
static void host_of(const char *address, char *host, size_t cap) {
  const char *h = strstr(address, "://");
  h = h ? h + 3 : address;
  size_t n = strcspn(h, ":");
  snprintf(host, cap, "%.*s", (int)(n < cap ? n : cap - 1), h);
}

/* A free, healthy elastic stage starting at layer `at`, preferring one on
 * host `near` (stages on one host pass activations locally); -1 if none. */
static int free_stage_at(const coord_registry_t *reg, int at, const char *near) {
  int any = -1;
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    const coord_worker_t *w = &reg->workers[i];
    if (!w->used || !w->healthy || !w->elastic || w->replica >= 0 || w->draining ||
        w->first != at)
      continue;
    char h[128];
    host_of(w->address, h, sizeof h);
    if (near && !strcmp(h, near))
      return i;
    if (any < 0)
      any = i;
  }
  return any;
}

/* A replica slot for a new elastic pipeline: unused, or dissolved long ago. */
static int new_pipeline_slot(coord_registry_t *reg, uint64_t now) {
  for (int i = 0; i < COORD_MAX_REPLICAS; i++) {
    coord_replica_t *r = &reg->replicas[i];
    if (r->used && !(r->dissolved && now - r->dissolved_ms > (uint64_t)reg->forget_ms))
      continue;
    memset(r, 0, sizeof *r);
    r->used = true;
    r->elastic = true;
    snprintf(r->name, sizeof r->name, "p%d", reg->next_pipeline++);
    return i;
  }
  return -1;
}

/* Elastic pipelines: a pipeline that lost a stage is dissolved (its live
 * stages go back to the pool; its requests already moved, replica_lost),
 * then chains of free stages covering [0, L) become new pipelines. */
static void assemble_elastic(coord_registry_t *reg) {
  uint64_t now = sa_now_ms();
  for (int ri = 0; ri < COORD_MAX_REPLICAS; ri++) {
    coord_replica_t *r = &reg->replicas[ri];
    if (!r->used || !r->elastic || r->dissolved || r->ready)
      continue;
    SA_LOG_INFO("pipeline %s dissolved: its stages are free again", r->name);
    r->dissolved = true;
    r->dissolved_ms = now;
    /* sequences it held are freed on the stages that held them */
    memcpy(r->stage, r->last_stage, sizeof r->stage);
    r->n_stages = r->last_n;
    for (int i = 0; i < COORD_MAX_WORKERS; i++)
      if (reg->workers[i].used && reg->workers[i].replica == ri)
        reg->workers[i].replica = -1;
  }
  for (;;) {
    int chain[COORD_MAX_STAGES], n = 0, at = 0;
    char near[128] = "";
    while (at < reg->num_layers && n < COORD_MAX_STAGES) {
      int wi = free_stage_at(reg, at, n ? near : NULL);
      if (wi < 0)
        break;
      /* not twice in one chain (a range that does not advance) */
      reg->workers[wi].replica = -2;
      chain[n++] = wi;
      host_of(reg->workers[wi].address, near, sizeof near);
      at = reg->workers[wi].last;
    }
    int ri = at == reg->num_layers && n > 0 ? new_pipeline_slot(reg, now) : -1;
    for (int k = 0; k < n; k++)
      reg->workers[chain[k]].replica = ri; /* -1: back to the pool */
    if (ri < 0)
      return;
    SA_LOG_INFO("pipeline %s assembled from %d free stages", reg->replicas[ri].name, n);
  }
}

static void assemble_replicas(coord_registry_t *reg) {
  derive_replicas(reg);  /* transitions of named and elastic pipelines */
  assemble_elastic(reg); /* dissolve the broken, build from the free */
  derive_replicas(reg);  /* the new ones become ready */
}

static int check_register(const coord_registry_t *reg, const Sa__RegisterRequest *rq, char *err,
                          size_t cap) {
  if (!rq->node_id[0] || !rq->address[0] || strlen(rq->node_id) >= 128 ||
      strlen(rq->address) >= 256) {
    sa_set_err(err, cap, "node_id and address are required (and short)");
  } else if (rq->role == SA__ROLE__ROLE_STAGE &&
             (rq->first_layer < 0 || rq->last_layer <= rq->first_layer ||
              rq->last_layer > reg->num_layers || rq->num_layers != reg->num_layers)) {
    sa_set_err(err, cap,
               "layer range %d:%d of a %d-layer model does not fit this "
               "coordinator's %d-layer model",
               rq->first_layer, rq->last_layer, rq->num_layers, reg->num_layers);
  } else if (rq->role == SA__ROLE__ROLE_STAGE &&
             (rq->kv_blocks_total <= 0 || rq->kv_block_tokens <= 0 || rq->max_batch <= 0 ||
              rq->max_tokens_per_step <= 0)) {
    sa_set_err(err, cap, "a stage must report KV blocks, block size and batch limits");
  } else if (rq->role == SA__ROLE__ROLE_ENCODER && rq->hidden_size &&
             rq->hidden_size != reg->hidden_size) {
    sa_set_err(err, cap, "encoder hidden size %d != model hidden size %d", rq->hidden_size,
               reg->hidden_size);
  } else if (rq->role != SA__ROLE__ROLE_STAGE && rq->role != SA__ROLE__ROLE_ENCODER) {
    sa_set_err(err, cap, "unknown role");
  } else if (rq->role == SA__ROLE__ROLE_STAGE && rq->replica_name &&
             strlen(rq->replica_name) >= 64) {
    sa_set_err(err, cap, "replica name over 63 bytes");
  } else {
    return 0;
  }
  return SA_EINVAL;
}

/* A down entry a restarted process (new node id) takes over: the same key,
 * the same role and, for a stage, the same replica and layer range. The
 * registry so stays at the size of the cluster, not of its history. */
static coord_worker_t *replaceable(coord_registry_t *reg, const Sa__RegisterRequest *rq,
                                   const char *key) {
  const char *rn = rq->replica_name && rq->replica_name[0] ? rq->replica_name : "r0";
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    coord_worker_t *w = &reg->workers[i];
    if (!w->used || w->healthy || w->role != rq->role || strcmp(w->key, key) != 0 ||
        w->encodes > 0)
      continue;
    bool elastic = !(rq->replica_name && rq->replica_name[0]);
    if (rq->role == SA__ROLE__ROLE_STAGE &&
        (w->elastic != elastic || (!elastic && strcmp(w->replica_name, rn) != 0) ||
         w->first != rq->first_layer || w->last != rq->last_layer))
      continue;
    return w;
  }
  return NULL;
}

int coord_registry_register(coord_registry_t *reg, const Sa__RegisterRequest *rq, const char *key,
                            uint64_t now, char *err, size_t cap) {
  int rc = check_register(reg, rq, err, cap);
  if (rc)
    return rc;
  if (!key)
    key = "";
  coord_worker_t *w = find_worker(reg, rq->node_id);
  if (w && strcmp(w->key, key) != 0) {
    char fp[13];
    sa_key_fingerprint(w->key, fp);
    sa_set_err(err, cap, "node id %.64s belongs to another key (%s…)", rq->node_id, fp);
    return SA_EPERM;
  }
  if (w && strcmp(w->address, rq->address) != 0)
    sa_rpc_channel_destroy(&w->ch); /* moved: reconnect */
  if (!w && (w = replaceable(reg, rq, key)) != NULL) {
    SA_LOG_INFO("%s takes the place of %s (down; same key, %s)", rq->node_id, w->node_id,
                rq->role == SA__ROLE__ROLE_STAGE ? "replica and layers" : "role");
    sa_rpc_channel_destroy(&w->ch);
    memset(w, 0, sizeof *w);
    w->replica = -1;
  }
  if (!w) {
    for (int i = 0; i < COORD_MAX_WORKERS && !w; i++)
      if (!reg->workers[i].used) {
        w = &reg->workers[i];
        memset(w, 0, sizeof *w);
        w->replica = -1;
      }
  }
  if (!w) {
    sa_set_err(err, cap, "registry full");
    return SA_EFULL;
  }
  w->used = true;
  snprintf(w->node_id, sizeof w->node_id, "%s", rq->node_id);
  snprintf(w->address, sizeof w->address, "%s", rq->address);
  snprintf(w->key, sizeof w->key, "%s", key);
  w->role = rq->role;
  w->first = rq->first_layer;
  w->last = rq->last_layer;
  w->num_layers = rq->num_layers;
  w->has_embed = rq->has_embed;
  w->has_lm_head = rq->has_lm_head;
  w->kv_total = rq->kv_blocks_total;
  w->kv_free = rq->kv_blocks_total;
  w->kv_used = 0;
  w->kv_block_tokens = rq->kv_block_tokens;
  w->max_batch = rq->max_batch;
  w->max_tokens_per_step = rq->max_tokens_per_step;
  w->hidden_size = rq->hidden_size;
  w->last_seen_ms = now;
  w->healthy = true;
  if (!w->ch && reg->loop) {
    sa_rpc_opts_t o;
    sa_rpc_opts_default(&o);
    /* stages answer with StepResults; encoders with a row per audio token
     * (12.5 a second) of the model's width */
    o.max_msg_bytes = w->role == SA__ROLE__ROLE_STAGE
                          ? (16u << 20)
                          : (size_t)reg->max_audio_s * 13 * (size_t)reg->hidden_size *
                                    sizeof(float) + (1u << 20);
    if ((reg->sec && sa_sec_channel_opts(reg->sec, &o, w->key)) ||
        sa_rpc_channel_new(reg->loop, w->address, &o, &w->ch)) {
      SA_LOG_ERROR("cannot open a channel to %s", w->address);
      w->healthy = false;
    }
  }
  if (w->role == SA__ROLE__ROLE_STAGE && rq->replica_name && rq->replica_name[0]) {
    snprintf(w->replica_name, sizeof w->replica_name, "%s", rq->replica_name);
    w->replica = find_replica(reg, rq->replica_name, true);
    w->elastic = false;
  } else if (w->role == SA__ROLE__ROLE_STAGE && !w->elastic) {
    w->elastic = true; /* the assembler puts it into a pipeline */
    w->replica = -1;
    w->replica_name[0] = 0;
  }
  SA_LOG_INFO("registered %s %s at %s%s%s", w->role == SA__ROLE__ROLE_STAGE ? "stage" : "encoder",
              w->node_id, w->address, w->role == SA__ROLE__ROLE_STAGE ? " replica " : "",
              w->role != SA__ROLE__ROLE_STAGE ? "" : w->elastic ? "(any)" : w->replica_name);
  assemble_replicas(reg);
  if (w->role == SA__ROLE__ROLE_ENCODER && reg->cbs.changed)
    reg->cbs.changed(reg->user);
  return (int)(w - reg->workers);
}

int coord_registry_heartbeat(coord_registry_t *reg, const Sa__HeartbeatRequest *hb,
                             uint64_t now) {
  coord_worker_t *w = find_worker(reg, hb->node_id);
  if (!w)
    return -1;
  bool was = w->healthy;
  w->last_seen_ms = now;
  w->load = hb->load;
  w->kv_used = hb->kv_blocks_used;
  w->kv_free = hb->kv_blocks_free;
  w->kv_shared = hb->kv_blocks_shared;
  w->sequences = hb->sequences;
  /* a worker without a channel stays down; one marked down comes back
   * only once its server can be reached again */
  w->healthy = !reg->loop || (w->ch && (was || sa_rpc_channel_is_connected(w->ch)));
  if (!was && w->healthy) {
    assemble_replicas(reg);
    if (w->role == SA__ROLE__ROLE_ENCODER && reg->cbs.changed)
      reg->cbs.changed(reg->user);
  }
  return (int)(w - reg->workers);
}

void coord_registry_check(coord_registry_t *reg, uint64_t now) {
  bool changed = false;
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    coord_worker_t *w = &reg->workers[i];
    if (!w->used)
      continue;
    if (!w->healthy) {
      /* long gone: forgotten (a restart under a new id registers anew) */
      if (w->encodes == 0 && now - w->down_since_ms > (uint64_t)reg->forget_ms) {
        SA_LOG_INFO("forgot %s (%s): down for %llu s", w->node_id, w->address,
                    (unsigned long long)((now - w->down_since_ms) / 1000));
        sa_rpc_channel_destroy(&w->ch);
        memset(w, 0, sizeof *w);
        w->replica = -1;
        changed = true;
      }
      continue;
    }
    if (w->ch && sa_rpc_channel_was_connected(w->ch) && !sa_rpc_channel_is_connected(w->ch)) {
      /* it closed its connection (a crash, a stop) */
      SA_LOG_WARN("%s (%s) closed its connection: marked down", w->node_id, w->address);
      w->healthy = false;
      w->down_since_ms = now;
      changed = true;
    } else if (now > w->last_seen_ms &&
               now - w->last_seen_ms > (uint64_t)reg->heartbeat_timeout_ms) {
      SA_LOG_WARN("%s (%s) missed its heartbeats for %llu ms: marked down", w->node_id,
                  w->address, (unsigned long long)(now - w->last_seen_ms));
      w->healthy = false;
      w->down_since_ms = now;
      changed = true;
    }
  }
  if (changed)
    assemble_replicas(reg);
}

void coord_registry_mark_down(coord_registry_t *reg, int wi) {
  if (wi < 0 || wi >= COORD_MAX_WORKERS || !reg->workers[wi].used || !reg->workers[wi].healthy)
    return;
  SA_LOG_WARN("%s (%s) could not be reached: marked down", reg->workers[wi].node_id,
              reg->workers[wi].address);
  reg->workers[wi].healthy = false;
  reg->workers[wi].down_since_ms = sa_now_ms();
  assemble_replicas(reg);
}

const coord_worker_t *coord_registry_worker(const coord_registry_t *reg, int wi) {
  if (wi < 0 || wi >= COORD_MAX_WORKERS || !reg->workers[wi].used)
    return NULL;
  return &reg->workers[wi];
}

const coord_replica_t *coord_registry_replica(const coord_registry_t *reg, int ri) {
  if (ri < 0 || ri >= COORD_MAX_REPLICAS || !reg->replicas[ri].used)
    return NULL;
  return &reg->replicas[ri];
}

static bool encoder_usable(const coord_registry_t *reg, const coord_worker_t *w) {
  return w->used && w->healthy && !w->draining && w->role == SA__ROLE__ROLE_ENCODER &&
         (w->ch || !reg->loop);
}

const char *coord_registry_worker_replica(const coord_registry_t *reg, int wi) {
  const coord_worker_t *w = coord_registry_worker(reg, wi);
  if (!w || w->role != SA__ROLE__ROLE_STAGE)
    return "";
  if (!w->elastic)
    return w->replica_name;
  return w->replica >= 0 ? reg->replicas[w->replica].name : "";
}

bool coord_registry_names(const coord_registry_t *reg, int wi, const char *target) {
  const coord_worker_t *w = coord_registry_worker(reg, wi);
  return w && (!strcmp(w->node_id, target) ||
               (w->role == SA__ROLE__ROLE_STAGE &&
                !strcmp(coord_registry_worker_replica(reg, wi), target)));
}

int coord_registry_drain(coord_registry_t *reg, const char *target, bool on) {
  int n = 0;
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    coord_worker_t *w = &reg->workers[i];
    if (!coord_registry_names(reg, i, target))
      continue;
    if (w->draining != on)
      SA_LOG_INFO("%s %s (%s)", on ? "draining" : "undraining", w->node_id, w->address);
    w->draining = on;
    n++;
  }
  if (n && !on && reg->cbs.changed) /* work may start there again */
    reg->cbs.changed(reg->user);
  return n;
}

bool coord_registry_replica_draining(const coord_registry_t *reg, int ri) {
  if (ri < 0 || ri >= COORD_MAX_REPLICAS || !reg->replicas[ri].used)
    return false;
  const coord_replica_t *r = &reg->replicas[ri];
  for (int s = 0; s < r->n_stages; s++)
    if (reg->workers[r->stage[s]].draining)
      return true;
  return false;
}

int coord_registry_pick_encoder(const coord_registry_t *reg, int exclude) {
  int best = -1;
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    const coord_worker_t *w = &reg->workers[i];
    if (i == exclude || !encoder_usable(reg, w))
      continue;
    if (best < 0 || w->encodes < reg->workers[best].encodes)
      best = i;
  }
  if (best < 0 && exclude >= 0 && exclude < COORD_MAX_WORKERS &&
      encoder_usable(reg, &reg->workers[exclude]))
    best = exclude; /* the only one left */
  return best;
}

void coord_registry_encoder_busy(coord_registry_t *reg, int wi, int delta) {
  if (wi >= 0 && wi < COORD_MAX_WORKERS)
    reg->workers[wi].encodes += delta;
}

int coord_registry_pick_replica(const coord_registry_t *reg, int64_t blocks, uint64_t now,
                                const int *inflight) {
  int best = -1;
  double best_load = 2.0;
  for (int i = 0; i < COORD_MAX_REPLICAS; i++) {
    const coord_replica_t *r = &reg->replicas[i];
    if (!r->used || !r->ready || now < r->suspect_until_ms ||
        coord_registry_replica_draining(reg, i))
      continue;
    if (r->kv_reserved + blocks > r->kv_capacity)
      continue;
    double load = (double)r->kv_reserved / (double)r->kv_capacity +
                  0.01 * (inflight ? inflight[i] : 0);
    if (load < best_load) {
      best_load = load;
      best = i;
    }
  }
  return best;
}

bool coord_registry_could_fit(const coord_registry_t *reg, int64_t blocks, bool *any_ready) {
  bool fits = false;
  *any_ready = false;
  for (int i = 0; i < COORD_MAX_REPLICAS; i++) {
    const coord_replica_t *r = &reg->replicas[i];
    if (!r->used || !r->ready || coord_registry_replica_draining(reg, i))
      continue;
    *any_ready = true;
    fits = fits || blocks <= r->kv_capacity;
  }
  return fits;
}

int coord_registry_block_tokens(const coord_registry_t *reg) {
  for (int i = 0; i < COORD_MAX_REPLICAS; i++)
    if (reg->replicas[i].used && reg->replicas[i].ready)
      return reg->replicas[i].block_tokens;
  return 16;
}

void coord_registry_reserve(coord_registry_t *reg, int ri, int64_t blocks) {
  if (ri < 0 || ri >= COORD_MAX_REPLICAS)
    return;
  reg->replicas[ri].kv_reserved += blocks;
  SA_ASSERT(reg->replicas[ri].kv_reserved >= 0, "more KV blocks returned than reserved");
}

void coord_registry_suspect(coord_registry_t *reg, int ri, uint64_t until) {
  if (ri >= 0 && ri < COORD_MAX_REPLICAS)
    reg->replicas[ri].suspect_until_ms = until;
}

void coord_registry_note_kv(coord_registry_t *reg, int wi, int64_t used, int64_t free_blocks) {
  if (wi < 0 || wi >= COORD_MAX_WORKERS || !reg->workers[wi].used)
    return;
  reg->workers[wi].kv_used = used;
  reg->workers[wi].kv_free = free_blocks;
}

int coord_registry_ready_replicas(const coord_registry_t *reg) {
  int n = 0;
  for (int i = 0; i < COORD_MAX_REPLICAS; i++)
    n += reg->replicas[i].used && reg->replicas[i].ready;
  return n;
}

/* ------------------------------------------------------------ handlers */

static void register_handler(sa_rpc_call_t *call, void *user) {
  coord_registry_t *reg = user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__RegisterRequest *rq = sa__register_request__unpack(NULL, len, body);
  if (!rq) {
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, "malformed RegisterRequest", NULL, 0,
                      NULL, 0);
    return;
  }
  char err[256] = "";
  const char *peer = sa_rpc_call_peer(call);
  sa_role_t want = rq->role == SA__ROLE__ROLE_STAGE ? SA_ROLE_STAGE : SA_ROLE_ENCODER;
  int wi;
  if (peer[0] && sa_sec_peer_role(peer) != want) {
    sa_set_err(err, sizeof err, "a %s key cannot register as %s",
               sa_role_name(sa_sec_peer_role(peer)), sa_role_name(want));
    wi = SA_EPERM;
  } else {
    wi = coord_registry_register(reg, rq, sa_sec_peer_key(peer), sa_now_ms(), err, sizeof err);
  }
  if (wi < 0) {
    SA_LOG_WARN("refused registration of %.128s: %s", rq->node_id, err);
    sa__register_request__free_unpacked(rq, NULL);
    sa_rpc_call_reply(call, sa_err_to_status(wi), err, NULL, 0, NULL, 0);
    return;
  }
  sa__register_request__free_unpacked(rq, NULL);
  const coord_worker_t *w = &reg->workers[wi];
  Sa__RegisterResponse resp = SA__REGISTER_RESPONSE__INIT;
  resp.node_id = (char *)w->node_id;
  resp.heartbeat_interval_ms = 1000;
  resp.replica = w->replica;
  resp.epoch = reg->epoch;
  resp.coordinator_id = reg->instance_id;
  sa_rpc_call_reply_pb(call, &resp.base);
}

static void heartbeat_handler(sa_rpc_call_t *call, void *user) {
  coord_registry_t *reg = user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__HeartbeatRequest *hb = sa__heartbeat_request__unpack(NULL, len, body);
  if (!hb) {
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, "malformed HeartbeatRequest", NULL, 0,
                      NULL, 0);
    return;
  }
  Sa__HeartbeatResponse resp = SA__HEARTBEAT_RESPONSE__INIT;
  /* only the key that registered a node id may keep it alive */
  const coord_worker_t *w = hb->node_id ? find_worker(reg, hb->node_id) : NULL;
  if (w && strcmp(w->key, sa_sec_peer_key(sa_rpc_call_peer(call))) != 0) {
    sa__heartbeat_request__free_unpacked(hb, NULL);
    sa_rpc_call_reply(call, SA_STATUS_PERMISSION_DENIED, "this node id belongs to another key",
                      NULL, 0, NULL, 0);
    return;
  }
  resp.known = coord_registry_heartbeat(reg, hb, sa_now_ms()) >= 0;
  resp.epoch = reg->epoch;
  sa__heartbeat_request__free_unpacked(hb, NULL);
  sa_rpc_call_reply_pb(call, &resp.base);
}

void coord_registry_serve(coord_registry_t *reg, sa_rpc_server_t *srv) {
  sa_rpc_server_register(srv, "Coordinator/Register", SA_RPC_UNARY, register_handler, reg);
  sa_rpc_server_register(srv, "Coordinator/Heartbeat", SA_RPC_UNARY, heartbeat_handler, reg);
}
