/*
 * registry — encoders and stage workers that registered, their heartbeats,
 * and the pipeline replicas assembled from stages covering [0, L).
 */
#include "coord.h"

#include "log.h"
#include "sa_error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static worker_t *find_worker(coord_t *co, const char *node_id) {
  for (int i = 0; i < COORD_MAX_WORKERS; i++)
    if (co->workers[i].used && strcmp(co->workers[i].node_id, node_id) == 0)
      return &co->workers[i];
  return NULL;
}

static int find_replica(coord_t *co, const char *name, bool create) {
  int free_slot = -1;
  for (int i = 0; i < COORD_MAX_REPLICAS; i++) {
    if (co->replicas[i].used && strcmp(co->replicas[i].name, name) == 0)
      return i;
    if (!co->replicas[i].used && free_slot < 0)
      free_slot = i;
  }
  if (!create || free_slot < 0)
    return -1;
  replica_t *r = &co->replicas[free_slot];
  memset(r, 0, sizeof *r);
  r->used = true;
  snprintf(r->name, sizeof r->name, "%s", name);
  return free_slot;
}

/* Re-derives every replica's stage list and readiness from the registry. */
static void assemble_replicas(coord_t *co) {
  for (int ri = 0; ri < COORD_MAX_REPLICAS; ri++) {
    replica_t *r = &co->replicas[ri];
    if (!r->used)
      continue;
    bool was_ready = r->ready;
    r->n_stages = 0;
    r->ready = false;
    int at = 0;
    int64_t cap = INT64_MAX;
    int bt = 0, mb = INT32_MAX, mt = INT32_MAX;
    bool ok = true;
    while (at < co->cfg.num_hidden_layers && r->n_stages < COORD_MAX_STAGES) {
      int found = -1;
      for (int i = 0; i < COORD_MAX_WORKERS; i++) {
        worker_t *w = &co->workers[i];
        if (w->used && w->healthy && w->role == SA__ROLE__ROLE_STAGE &&
            w->replica == ri && w->first == at) {
          found = i;
          break;
        }
      }
      if (found < 0) {
        ok = false;
        break;
      }
      worker_t *w = &co->workers[found];
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
    if (ok && at == co->cfg.num_hidden_layers && r->n_stages > 0) {
      r->ready = true;
      r->kv_capacity = cap;
      r->block_tokens = bt;
      r->max_batch = mb;
      r->max_tokens_per_step = mt;
    }
    if (was_ready && !r->ready) {
      SA_LOG_WARN("replica %s is no longer complete", r->name);
      coord_fail_replica_requests(co, ri, "a stage of its replica went away");
    } else if (!was_ready && r->ready) {
      SA_LOG_INFO("replica %s ready: %d stages, %lld KV blocks of %d tokens",
                  r->name, r->n_stages, (long long)r->kv_capacity, bt);
      co->epoch++;
    }
  }
}


static void register_handler(sa_rpc_call_t *call, void *user) {
  coord_t *co = user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__RegisterRequest *rq = sa__register_request__unpack(NULL, len, body);
  if (!rq) {
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, "malformed RegisterRequest", NULL, 0, NULL, 0);
    return;
  }
  char msg[256] = "";
  if (!rq->node_id[0] || !rq->address[0] || strlen(rq->node_id) >= 128 ||
      strlen(rq->address) >= 256) {
    snprintf(msg, sizeof msg, "node_id and address are required (and short)");
  } else if (rq->role == SA__ROLE__ROLE_STAGE &&
             (rq->first_layer < 0 || rq->last_layer <= rq->first_layer ||
              rq->last_layer > co->cfg.num_hidden_layers ||
              rq->num_layers != co->cfg.num_hidden_layers)) {
    snprintf(msg, sizeof msg,
             "layer range %d:%d of a %d-layer model does not fit this "
             "coordinator's %d-layer model",
             rq->first_layer, rq->last_layer, rq->num_layers,
             co->cfg.num_hidden_layers);
  } else if (rq->role == SA__ROLE__ROLE_STAGE &&
             (rq->kv_blocks_total <= 0 || rq->kv_block_tokens <= 0 ||
              rq->max_batch <= 0 || rq->max_tokens_per_step <= 0)) {
    snprintf(msg, sizeof msg, "a stage must report KV blocks, block size and batch limits");
  } else if (rq->role == SA__ROLE__ROLE_ENCODER && rq->hidden_size &&
             rq->hidden_size != co->cfg.hidden_size) {
    snprintf(msg, sizeof msg, "encoder hidden size %d != model hidden size %d",
             rq->hidden_size, co->cfg.hidden_size);
  } else if (rq->role != SA__ROLE__ROLE_STAGE && rq->role != SA__ROLE__ROLE_ENCODER) {
    snprintf(msg, sizeof msg, "unknown role");
  }
  if (msg[0]) {
    SA_LOG_WARN("refused registration of %s: %s", rq->node_id, msg);
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, msg, NULL, 0, NULL, 0);
    sa__register_request__free_unpacked(rq, NULL);
    return;
  }
  worker_t *w = find_worker(co, rq->node_id);
  if (w && strcmp(w->address, rq->address) != 0) {
    sa_rpc_channel_destroy(&w->ch); /* moved: reconnect */
  }
  if (!w) {
    for (int i = 0; i < COORD_MAX_WORKERS; i++)
      if (!co->workers[i].used) {
        w = &co->workers[i];
        memset(w, 0, sizeof *w);
        w->replica = -1;
        break;
      }
  }
  if (!w) {
    sa_rpc_call_reply(call, SA_STATUS_RESOURCE_EXHAUSTED, "registry full", NULL, 0, NULL, 0);
    sa__register_request__free_unpacked(rq, NULL);
    return;
  }
  w->used = true;
  snprintf(w->node_id, sizeof w->node_id, "%s", rq->node_id);
  snprintf(w->address, sizeof w->address, "%s", rq->address);
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
  w->last_seen_ms = coord_now_ms();
  w->healthy = true;
  if (!w->ch) {
    sa_rpc_opts_t o;
    sa_rpc_opts_default(&o);
    if (sa_rpc_channel_new(co->loop, w->address, &o, &w->ch)) {
      SA_LOG_ERROR("cannot open a channel to %s", w->address);
      w->healthy = false;
    }
  }
  Sa__RegisterResponse resp = SA__REGISTER_RESPONSE__INIT;
  resp.node_id = w->node_id;
  resp.heartbeat_interval_ms = 1000;
  if (w->role == SA__ROLE__ROLE_STAGE) {
    const char *rn = rq->replica_name && rq->replica_name[0] ? rq->replica_name : "r0";
    snprintf(w->replica_name, sizeof w->replica_name, "%s", rn);
    w->replica = find_replica(co, rn, true);
    resp.replica = w->replica;
  }
  SA_LOG_INFO("registered %s %s at %s%s%s", w->role == SA__ROLE__ROLE_STAGE ? "stage" : "encoder",
              w->node_id, w->address, w->role == SA__ROLE__ROLE_STAGE ? " replica " : "",
              w->role == SA__ROLE__ROLE_STAGE ? w->replica_name : "");
  sa__register_request__free_unpacked(rq, NULL);
  assemble_replicas(co);
  resp.epoch = co->epoch;
  sa_rpc_call_reply_pb(call, &resp.base);
  coord_schedule(co);
}

static void heartbeat_handler(sa_rpc_call_t *call, void *user) {
  coord_t *co = user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__HeartbeatRequest *hb = sa__heartbeat_request__unpack(NULL, len, body);
  if (!hb) {
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, "malformed HeartbeatRequest", NULL, 0, NULL, 0);
    return;
  }
  worker_t *w = find_worker(co, hb->node_id);
  Sa__HeartbeatResponse resp = SA__HEARTBEAT_RESPONSE__INIT;
  resp.known = w != NULL;
  if (w) {
    bool was = w->healthy;
    w->last_seen_ms = coord_now_ms();
    w->load = hb->load;
    w->kv_used = hb->kv_blocks_used;
    w->kv_free = hb->kv_blocks_free;
    w->kv_shared = hb->kv_blocks_shared;
    w->sequences = hb->sequences;
    w->healthy = true;
    if (!was)
      assemble_replicas(co);
  }
  resp.epoch = co->epoch;
  sa__heartbeat_request__free_unpacked(hb, NULL);
  sa_rpc_call_reply_pb(call, &resp.base);
}

void coord_registry_check(coord_t *co) {
  uint64_t now = coord_now_ms();
  bool changed = false;
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    worker_t *w = &co->workers[i];
    if (!w->used || !w->healthy)
      continue;
    if (now - w->last_seen_ms > (uint64_t)co->opts.heartbeat_timeout_ms) {
      SA_LOG_WARN("%s (%s) missed its heartbeats for %llu ms: marked down",
                  w->node_id, w->address, (unsigned long long)(now - w->last_seen_ms));
      w->healthy = false;
      changed = true;
    }
  }
  if (changed)
    assemble_replicas(co);
}

int coord_pick_encoder(coord_t *co, int exclude) {
  int best = -1;
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    worker_t *w = &co->workers[i];
    if (!w->used || !w->healthy || w->role != SA__ROLE__ROLE_ENCODER || i == exclude || !w->ch)
      continue;
    if (best < 0 || w->inflight < co->workers[best].inflight)
      best = i;
  }
  if (best < 0 && exclude >= 0 && co->workers[exclude].used && co->workers[exclude].healthy)
    best = exclude; /* the only one left */
  return best;
}

int coord_pick_replica(coord_t *co, int64_t blocks_needed) {
  int best = -1;
  double best_load = 2.0;
  for (int i = 0; i < COORD_MAX_REPLICAS; i++) {
    replica_t *r = &co->replicas[i];
    if (!r->used || !r->ready || coord_now_ms() < r->suspect_until_ms)
      continue;
    if (r->kv_reserved + blocks_needed > r->kv_capacity)
      continue;
    double load = (double)r->kv_reserved / (double)r->kv_capacity + 0.01 * r->inflight;
    if (load < best_load) {
      best_load = load;
      best = i;
    }
  }
  return best;
}

void coord_status_handler(sa_rpc_call_t *call, void *user) {
  coord_t *co = user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__StatusRequest *rq = sa__status_request__unpack(NULL, len, body);
  if (!rq) {
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, "malformed StatusRequest", NULL, 0, NULL, 0);
    return;
  }
  Sa__StatusResponse resp = SA__STATUS_RESPONSE__INIT;
  static Sa__WorkerInfo infos[COORD_MAX_WORKERS];
  static Sa__WorkerInfo *ptrs[COORD_MAX_WORKERS];
  size_t n = 0;
  uint64_t now = coord_now_ms();
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    worker_t *w = &co->workers[i];
    if (!w->used)
      continue;
    Sa__WorkerInfo *wi = &infos[n];
    sa__worker_info__init(wi);
    wi->node_id = w->node_id;
    wi->role = w->role;
    wi->address = w->address;
    wi->replica = w->replica;
    wi->first_layer = w->first;
    wi->last_layer = w->last;
    wi->healthy = w->healthy;
    wi->load = w->role == SA__ROLE__ROLE_ENCODER ? (float)w->inflight : w->load;
    wi->kv_blocks_used = w->kv_used;
    wi->kv_blocks_free = w->kv_free;
    wi->last_heartbeat_ms_ago = (int64_t)(now - w->last_seen_ms);
    wi->replica_name = w->replica_name;
    wi->kv_blocks_shared = w->kv_shared;
    wi->sequences = w->sequences;
    ptrs[n] = wi;
    n++;
  }
  resp.n_workers = n;
  resp.workers = ptrs;
  int ready = 0;
  for (int i = 0; i < COORD_MAX_REPLICAS; i++)
    if (co->replicas[i].used && co->replicas[i].ready)
      ready++;
  resp.replicas_ready = ready;
  int running = 0, queued = 0, chains_running = 0;
  Sa__Progress prog = SA__PROGRESS__INIT;
  for (request_t *r = co->requests; r; r = r->next) {
    if (r->state == REQ_QUEUED || r->state == REQ_ENCODING)
      queued++;
    else
      running++;
    if (r->state != REQ_DONE)
      chains_running += r->n_chains - r->chains_done;
    if (rq->request_id[0] && strcmp(rq->request_id, r->request_id) == 0) {
      resp.request_found = true;
      int run = 0;
      int64_t toks = 0;
      for (int c = 0; c < r->n_chains; c++) {
        if (r->chains[c].state != CHAIN_DONE)
          run++;
        toks += r->chains[c].n_tokens;
      }
      prog.chains_running = run;
      prog.chains_finished = r->chains_done;
      prog.tokens_generated = toks;
      resp.request_progress = &prog;
    }
  }
  resp.requests_running = running;
  resp.requests_queued = queued;
  resp.chains_running = chains_running;
  resp.forks_total = co->forks_total;
  resp.requests_total = co->requests_total;
  resp.model_id = co->opts.model_dir;
  sa__status_request__free_unpacked(rq, NULL);
  sa_rpc_call_reply_pb(call, &resp.base);
}

void coord_registry_register(coord_t *co) {
  sa_rpc_server_register(co->srv, "Coordinator/Register", SA_RPC_UNARY, register_handler, co);
  sa_rpc_server_register(co->srv, "Coordinator/Heartbeat", SA_RPC_UNARY, heartbeat_handler, co);
  sa_rpc_server_register(co->srv, "Coordinator/Status", SA_RPC_UNARY, coord_status_handler, co);
}
