/*
 * registrar — Register + Heartbeat against the coordinator (see registrar.h).
 */
#include "registrar.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "log.h"
#include "sa.pb-c.h"
#include "rpc.h"
#include "sa_error.h"

#define RPC_TIMEOUT_MS 3000
#define RETRY_CAP_MS 5000

struct sa_registrar {
  uv_loop_t *loop;
  sa_registrar_load_cb load_cb;
  void *user;
  sa_rpc_channel_t *ch;
  uv_timer_t timer;
  sa_registrar_opts_t o; /* the numbers; its strings are NULL (copies below) */
  char *coordinator, *node_id, *address, *model_id, *backend, *replica;
  int64_t retry_first_ms, retry_ms, heartbeat_ms, epoch;
  bool registered, in_flight, stopping;
  int failures;
  uint64_t call_id;
  uint64_t coordinator_id; /* of the coordinator we registered with last */
};

static void schedule(sa_registrar_t *r, int64_t ms);

static void note_failure(sa_registrar_t *r, const char *what,
                         const sa_rpc_result_t *res) {
  r->failures++;
  /* Log the first failure and then every tenth, so a missing coordinator
   * does not flood the log. */
  if (r->failures == 1 || r->failures % 10 == 0)
    SA_LOG_WARN("coordinator %s: %s failed: %s%s%s (attempt %d; serving "
                "anyway, retrying)", r->coordinator, what,
                sa_status_name(res->status), res->status_msg[0] ? ": " : "",
                res->status_msg, r->failures);
  r->retry_ms = r->retry_ms ? r->retry_ms * 2 : r->retry_first_ms;
  if (r->retry_ms > RETRY_CAP_MS)
    r->retry_ms = RETRY_CAP_MS;
}

static void register_cb(sa_rpc_channel_t *ch, const sa_rpc_result_t *res,
                        void *user) {
  (void)ch;
  sa_registrar_t *r = user;
  r->in_flight = false;
  if (r->stopping)
    return;
  if (res->status != SA_STATUS_OK) {
    note_failure(r, "Register", res);
    schedule(r, r->retry_ms);
    return;
  }
  Sa__RegisterResponse *rr = sa__register_response__unpack(
      NULL, res->body_len, (const uint8_t *)res->body);
  if (!rr) {
    SA_LOG_WARN("coordinator %s: malformed RegisterResponse; retrying",
                r->coordinator);
    r->retry_ms = RETRY_CAP_MS;
    schedule(r, r->retry_ms);
    return;
  }
  r->registered = true;
  r->failures = 0;
  r->retry_ms = 0;
  r->epoch = rr->epoch;
  uint64_t was = r->coordinator_id;
  r->coordinator_id = rr->coordinator_id;
  if (was && rr->coordinator_id && was != rr->coordinator_id) {
    SA_LOG_WARN("coordinator %s restarted: what the old one left here is released",
                r->coordinator);
    if (r->o.coordinator_changed)
      r->o.coordinator_changed(r->user);
  }
  r->heartbeat_ms = rr->heartbeat_interval_ms > 0 ? rr->heartbeat_interval_ms
                                                  : 1000;
  if (r->o.role == SA_REGISTRAR_STAGE)
    SA_LOG_INFO("registered with %s as %s (replica %s, layers %d:%d)", r->coordinator,
                r->node_id, r->replica[0] ? r->replica : "any", r->o.first_layer,
                r->o.last_layer);
  else
    SA_LOG_INFO("registered with coordinator %s as %s (heartbeat every %lld ms)",
                r->coordinator, rr->node_id[0] ? rr->node_id : r->node_id,
                (long long)r->heartbeat_ms);
  sa__register_response__free_unpacked(rr, NULL);
  schedule(r, r->heartbeat_ms);
}

static void heartbeat_cb(sa_rpc_channel_t *ch, const sa_rpc_result_t *res,
                         void *user) {
  (void)ch;
  sa_registrar_t *r = user;
  r->in_flight = false;
  if (r->stopping)
    return;
  if (res->status != SA_STATUS_OK) {
    note_failure(r, "Heartbeat", res);
    schedule(r, r->heartbeat_ms < r->retry_ms ? r->heartbeat_ms : r->retry_ms);
    return;
  }
  r->failures = 0;
  r->retry_ms = 0;
  Sa__HeartbeatResponse *hr = sa__heartbeat_response__unpack(
      NULL, res->body_len, (const uint8_t *)res->body);
  if (hr && !hr->known) {
    SA_LOG_INFO("coordinator %s forgot this %s; registering again", r->coordinator,
                r->o.role == SA_REGISTRAR_STAGE ? "stage" : "encoder");
    r->registered = false;
  } else if (hr) {
    r->epoch = hr->epoch;
  }
  if (hr)
    sa__heartbeat_response__free_unpacked(hr, NULL);
  schedule(r, r->registered ? r->heartbeat_ms : 0);
}

static void send_register(sa_registrar_t *r) {
  const sa_registrar_opts_t *o = &r->o;
  Sa__RegisterRequest rq = SA__REGISTER_REQUEST__INIT;
  rq.role = o->role == SA_REGISTRAR_STAGE ? SA__ROLE__ROLE_STAGE : SA__ROLE__ROLE_ENCODER;
  rq.node_id = r->node_id;
  rq.address = r->address;
  rq.model_id = r->model_id;
  rq.backend = r->backend;
  rq.hidden_size = o->hidden_size;
  rq.max_audio_s = o->max_audio_s;
  if (o->role == SA_REGISTRAR_STAGE) {
    rq.replica_name = r->replica;
    rq.first_layer = o->first_layer;
    rq.last_layer = o->last_layer;
    rq.num_layers = o->num_layers;
    rq.has_embed = o->has_embed;
    rq.has_lm_head = o->has_lm_head;
    rq.kv_blocks_total = o->kv_blocks_total;
    rq.kv_block_tokens = o->kv_block_tokens;
    rq.max_batch = o->max_batch;
    rq.max_tokens_per_step = o->max_tokens_per_step;
  }
  size_t n = sa__register_request__get_packed_size(&rq);
  uint8_t *buf = malloc(n + 1);
  if (!buf) {
    schedule(r, RETRY_CAP_MS);
    return;
  }
  sa__register_request__pack(&rq, buf);
  sa_rpc_call_opts_t co = {.timeout_ms = RPC_TIMEOUT_MS};
  int rc = sa_rpc_channel_call(r->ch, "Coordinator/Register", buf, n, NULL, 0,
                               &co, register_cb, r, &r->call_id);
  free(buf);
  if (rc != 0) {
    sa_rpc_result_t fake = {.status = sa_err_to_status(rc), .status_msg = ""};
    note_failure(r, "Register", &fake);
    schedule(r, r->retry_ms);
    return;
  }
  r->in_flight = true;
}

static void send_heartbeat(sa_registrar_t *r) {
  Sa__HeartbeatRequest rq = SA__HEARTBEAT_REQUEST__INIT;
  rq.node_id = r->node_id;
  rq.epoch = r->epoch;
  if (r->load_cb) {
    sa_registrar_load_t ld;
    memset(&ld, 0, sizeof ld);
    r->load_cb(r->user, &ld);
    rq.load = ld.load;
    rq.queue_depth = ld.queue_depth;
    rq.kv_blocks_used = ld.kv_blocks_used;
    rq.kv_blocks_free = ld.kv_blocks_free;
    rq.kv_blocks_shared = ld.kv_blocks_shared;
    rq.sequences = ld.sequences;
  }
  size_t n = sa__heartbeat_request__get_packed_size(&rq);
  uint8_t *buf = malloc(n + 1);
  if (!buf) {
    schedule(r, RETRY_CAP_MS);
    return;
  }
  sa__heartbeat_request__pack(&rq, buf);
  sa_rpc_call_opts_t co = {.timeout_ms = RPC_TIMEOUT_MS};
  int rc = sa_rpc_channel_call(r->ch, "Coordinator/Heartbeat", buf, n, NULL, 0,
                               &co, heartbeat_cb, r, &r->call_id);
  free(buf);
  if (rc != 0) {
    sa_rpc_result_t fake = {.status = sa_err_to_status(rc), .status_msg = ""};
    note_failure(r, "Heartbeat", &fake);
    schedule(r, r->retry_ms);
    return;
  }
  r->in_flight = true;
}

static void timer_cb(uv_timer_t *t) {
  sa_registrar_t *r = t->data;
  if (r->stopping || r->in_flight)
    return;
  if (r->registered)
    send_heartbeat(r);
  else
    send_register(r);
}

static void schedule(sa_registrar_t *r, int64_t ms) {
  if (r->stopping)
    return;
  uv_timer_start(&r->timer, timer_cb, (uint64_t)(ms > 0 ? ms : 0), 0);
}

static void free_strings(sa_registrar_t *r) {
  free(r->coordinator);
  free(r->node_id);
  free(r->address);
  free(r->model_id);
  free(r->backend);
  free(r->replica);
}

int sa_registrar_start(struct uv_loop_s *loop, const sa_registrar_opts_t *o,
                       sa_registrar_load_cb load_cb, void *user, sa_registrar_t **out) {
  if (!loop || !o || !o->coordinator || !o->node_id || !o->address || !out)
    return SA_EINVAL;
  *out = NULL;
  sa_registrar_t *r = calloc(1, sizeof *r);
  if (!r)
    return SA_ENOMEM;
  r->loop = loop;
  r->load_cb = load_cb;
  r->user = user;
  r->o = *o;
  r->coordinator = strdup(o->coordinator);
  r->node_id = strdup(o->node_id);
  r->address = strdup(o->address);
  r->model_id = strdup(o->model_id ? o->model_id : "");
  r->backend = strdup(o->backend ? o->backend : "cpu");
  r->replica = strdup(o->replica ? o->replica : "");
  r->retry_first_ms = o->retry_ms > 0 ? o->retry_ms : 500;
  r->heartbeat_ms = 1000;
  int rc = SA_ENOMEM;
  r->o.coordinator = r->o.node_id = r->o.address = r->o.model_id = r->o.backend = NULL;
  r->o.replica = NULL;
  if (!r->coordinator || !r->node_id || !r->address || !r->model_id || !r->backend ||
      !r->replica)
    goto fail;
  sa_rpc_opts_t ro;
  if (o->rpc)
    ro = *o->rpc;
  else
    sa_rpc_opts_default(&ro);
  if ((rc = sa_rpc_channel_new(loop, r->coordinator, &ro, &r->ch)) != 0) {
    SA_LOG_ERROR("coordinator %s: cannot create channel: %s", r->coordinator,
                 sa_strerror(rc));
    goto fail;
  }
  uv_timer_init(loop, &r->timer);
  r->timer.data = r;
  schedule(r, 0);
  *out = r;
  return 0;
fail:
  free_strings(r);
  free(r);
  return rc;
}

typedef struct {
  void (*done)(void *user, bool ok);
  void *user;
} drain_ctx_t;

static void drain_cb(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  (void)ch;
  drain_ctx_t *d = user;
  if (res->status != SA_STATUS_OK)
    SA_LOG_WARN("drain: the coordinator answered %s: %s", sa_status_name(res->status),
                res->status_msg);
  if (d->done)
    d->done(d->user, res->status == SA_STATUS_OK);
  free(d);
}

int sa_registrar_drain(sa_registrar_t *r, void (*done)(void *user, bool ok), void *user) {
  if (!r || !r->ch)
    return SA_EINVAL;
  drain_ctx_t *d = calloc(1, sizeof *d);
  if (!d)
    return SA_ENOMEM;
  d->done = done;
  d->user = user;
  Sa__DrainRequest rq = SA__DRAIN_REQUEST__INIT;
  rq.target = r->node_id;
  uint8_t buf[256];
  size_t len = sa__drain_request__pack(&rq, buf);
  sa_rpc_call_opts_t o = {.timeout_ms = 5000};
  int rc = sa_rpc_channel_call(r->ch, "Coordinator/Drain", buf, len, NULL, 0, &o, drain_cb, d,
                               NULL);
  if (rc)
    free(d);
  return rc;
}

bool sa_registrar_registered(const sa_registrar_t *r) {
  return r && r->registered;
}

static void timer_close_cb(uv_handle_t *h) {
  sa_registrar_t *r = h->data;
  free_strings(r);
  free(r);
}

void sa_registrar_stop(sa_registrar_t **rp) {
  if (!rp || !*rp)
    return;
  sa_registrar_t *r = *rp;
  *rp = NULL;
  r->stopping = true;
  uv_timer_stop(&r->timer);
  /* Calls in flight complete with CANCELLED inside destroy; their callbacks
   * see `stopping` and do nothing. */
  sa_rpc_channel_destroy(&r->ch);
  uv_close((uv_handle_t *)&r->timer, timer_close_cb);
}
