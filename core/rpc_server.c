/*
 * rpc_server — the server side of core/rpc (see rpc.h): a ROUTER socket on
 * the endpoint base (rpc_endpoint.c), its methods, and the calls in
 * progress with their deadlines, cancellation and replies.
 */
#include "rpc.h"

#include <errno.h>
#include <protobuf-c/protobuf-c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "rpc_endpoint.h"
#include "sa_time.h"

#define MAX_PEER_ID 256

typedef struct {
  char *name;
  sa_rpc_kind_t kind;
  sa_rpc_handler_cb handler;
  void *user;
} method_t;

struct sa_rpc_call {
  sa_rpc_server_t *srv;
  int idx;
  bool live;
  bool cancelled;
  sa_status_t cancel_status;
  uint64_t call_id;
  sa_rpc_kind_t kind;
  const method_t *m;
  char trace_id[SA__RPC_MAX_TRACE];
  unsigned char peer[MAX_PEER_ID];
  size_t peer_len;
  char peer_user[128]; /* the authenticator's user id of the peer */
  uint64_t deadline_ms; /* absolute, uv_hrtime() clock; 0 = none */
  uv_timer_t *timer; /* the base's timer of this slot */
  sa_rpc_cancel_cb cancel_cb;
  void *cancel_user;
  zmq_msg_t *frames; /* [body, tensors...] */
  int n_frames;
  sa_rpc_tensor_t *tensors;
  int n_tensors;
};

struct sa_rpc_server {
  sa__rpc_ep_t ep; /* first: the base */
  char endpoint[256];
  method_t *methods;
  int n_methods, cap_methods;
  sa_rpc_call_t *calls; /* max_inflight */
  zmq_msg_t *call_frames; /* max_inflight * (max_tensors + 1) */
  sa_rpc_tensor_t *call_tensors;
  sa_rpc_guard_cb guard;
  void *guard_user;
};

/* The base's vt->free: what the server added. */
static void server_free(sa__rpc_ep_t *ep) {
  sa_rpc_server_t *srv = (sa_rpc_server_t *)ep;
  for (int i = 0; i < srv->n_methods; i++)
    free(srv->methods[i].name);
  free(srv->methods);
  free(srv->calls);
  free(srv->call_frames);
  free(srv->call_tensors);
  free(srv);
}

static void call_release(sa_rpc_call_t *c) {
  sa_rpc_server_t *srv = c->srv;
  SA_ASSERT(c->live, "a call is ended exactly once");
  if (c->deadline_ms && !srv->ep.closing)
    uv_timer_stop(c->timer);
  sa__rpc_close_msgs(c->frames, c->n_frames);
  c->n_frames = 0;
  c->live = false;
  c->cancel_cb = NULL;
  sa__rpc_ep_slot_put(&srv->ep, c->idx);
}

static void call_cancel(sa_rpc_call_t *c, sa_status_t why) {
  if (c->cancelled)
    return;
  c->cancelled = true;
  c->cancel_status = why;
  if (c->cancel_cb)
    c->cancel_cb(c, c->cancel_user);
}

static void call_deadline_cb(uv_timer_t *t) {
  sa_rpc_call_t *c = t->data;
  SA_LOG_DEBUG("rpc: call %llu (%s) passed its deadline",
               (unsigned long long)c->call_id, c->m->name);
  call_cancel(c, SA_STATUS_DEADLINE_EXCEEDED);
}

/* Sends [peer, envelope, body, tensors] on the server socket. Consumes the
 * tensor frames. */
static int server_send(sa_rpc_server_t *srv, const unsigned char *peer,
                       size_t peer_len, const sa__rpc_env_out_t *e,
                       const void *body, size_t len) {
  if (!srv->ep.sock) {
    sa__rpc_release_frames(e->tensors, e->n_tensors);
    return SA_EUNAVAIL;
  }
  if (zmq_msg_init_size(&srv->ep.tx[0], peer_len) != 0) {
    sa__rpc_release_frames(e->tensors, e->n_tensors);
    return SA_ENOMEM;
  }
  memcpy(zmq_msg_data(&srv->ep.tx[0]), peer, peer_len);
  int n = sa__rpc_build_msgs(&srv->ep.tx[1], e, body, len);
  if (n < 0) {
    zmq_msg_close(&srv->ep.tx[0]);
    return n;
  }
  return sa__rpc_send_msgs(srv->ep.sock, srv->ep.tx, n + 1);
}

/* Answers a message that never became a call (bad input, unknown method,
 * server busy). */
static void server_reject(sa_rpc_server_t *srv, const unsigned char *peer,
                          size_t peer_len, uint64_t call_id, sa_status_t st,
                          const char *why) {
  sa__rpc_env_out_t e = {.call_id = call_id,
                         .kind = SA__RPC_RESPONSE,
                         .status = st,
                         .status_msg = why};
  int rc = server_send(srv, peer, peer_len, &e, NULL, 0);
  if (rc != 0)
    SA_LOG_WARN("rpc: could not send %s to peer: %s", sa_status_name(st),
                sa_strerror(rc));
}

static const method_t *find_method(const sa_rpc_server_t *srv, const char *name) {
  for (int i = 0; i < srv->n_methods; i++)
    if (strcmp(srv->methods[i].name, name) == 0)
      return &srv->methods[i];
  return NULL;
}

static void server_on_message(sa__rpc_ep_t *ep, int n, int overflow) {
  sa_rpc_server_t *srv = (sa_rpc_server_t *)ep;
  zmq_msg_t *rx = srv->ep.rx;
  const unsigned char *peer = zmq_msg_data(&rx[0]);
  size_t peer_len = zmq_msg_size(&rx[0]);
  char err[256];
  if (peer_len == 0 || peer_len > MAX_PEER_ID) {
    SA_LOG_WARN("rpc: message without a routable peer id; dropped");
    return;
  }
  sa__rpc_span_t spans[SA__RPC_MAX_TENSORS + 3];
  int ns = n - 1;
  for (int i = 0; i < ns; i++) {
    spans[i].data = zmq_msg_data(&rx[i + 1]);
    spans[i].len = zmq_msg_size(&rx[i + 1]);
  }
  sa__rpc_limits_t lim = {srv->ep.opts.max_msg_bytes, srv->ep.opts.max_tensors};
  sa__rpc_env_t *env = &srv->ep.env;
  int rc;
  if (overflow) {
    /* decode only the envelope to address the error */
    sa__rpc_decode_frames(spans, 1, &lim, env, err, sizeof err);
    snprintf(err, sizeof err, "wrong frame count: %d frames exceed the limit of %d",
             ns + overflow, srv->ep.opts.max_tensors + 2);
    rc = SA_EPROTO;
  } else {
    rc = sa__rpc_decode_frames(spans, ns, &lim, env, err, sizeof err);
  }
  if (rc != 0) {
    sa_status_t st = sa_err_to_status(rc);
    SA_LOG_WARN("rpc: bad message (call %llu): %s -> %s",
                (unsigned long long)env->call_id, err, sa_status_name(st));
    if (!(env->have_call_id && env->kind == SA__RPC_CANCEL))
      server_reject(srv, peer, peer_len, env->have_call_id ? env->call_id : 0,
                    st, err);
    return;
  }
  if (env->kind == SA__RPC_CANCEL) {
    for (int i = 0; i < srv->ep.opts.max_inflight; i++) {
      sa_rpc_call_t *c = &srv->calls[i];
      if (c->live && c->call_id == env->call_id && c->peer_len == peer_len &&
          memcmp(c->peer, peer, peer_len) == 0) {
        SA_LOG_DEBUG("rpc: call %llu cancelled by the caller",
                     (unsigned long long)c->call_id);
        call_cancel(c, SA_STATUS_CANCELLED);
        break;
      }
    }
    return;
  }
  if (env->kind != SA__RPC_REQUEST) {
    snprintf(err, sizeof err, "a server accepts REQUEST and CANCEL, not kind %d",
             (int)env->kind);
    SA_LOG_WARN("rpc: bad message (call %llu): %s",
                (unsigned long long)env->call_id, err);
    server_reject(srv, peer, peer_len, env->call_id,
                  SA_STATUS_INVALID_ARGUMENT, err);
    return;
  }
  const method_t *m = find_method(srv, env->method);
  if (!m) {
    snprintf(err, sizeof err, "unknown method '%s'", env->method);
    SA_LOG_WARN("rpc: call %llu: %s", (unsigned long long)env->call_id, err);
    server_reject(srv, peer, peer_len, env->call_id, SA_STATUS_UNIMPLEMENTED,
                  err);
    return;
  }
  const char *who = zmq_msg_gets(&rx[1], "User-Id");
  if (!who)
    who = "";
  if (srv->guard && !srv->guard(m->name, who, srv->guard_user)) {
    snprintf(err, sizeof err, "'%s' may not call %s", who[0] ? who : "this peer", m->name);
    SA_LOG_WARN("rpc: call %llu refused: %s", (unsigned long long)env->call_id, err);
    server_reject(srv, peer, peer_len, env->call_id, SA_STATUS_PERMISSION_DENIED, err);
    return;
  }
  int idx = sa__rpc_ep_slot_take(&srv->ep);
  if (idx < 0) {
    snprintf(err, sizeof err, "server busy: %d calls in progress",
             srv->ep.n_live);
    SA_LOG_WARN("rpc: call %llu (%s): %s", (unsigned long long)env->call_id,
                env->method, err);
    server_reject(srv, peer, peer_len, env->call_id,
                  SA_STATUS_RESOURCE_EXHAUSTED, err);
    return;
  }
  sa_rpc_call_t *c = &srv->calls[idx];
  c->live = true;
  c->cancelled = false;
  c->cancel_status = SA_STATUS_OK;
  c->cancel_cb = NULL;
  c->cancel_user = NULL;
  c->call_id = env->call_id;
  c->m = m;
  c->kind = m->kind;
  memcpy(c->trace_id, env->trace_id, sizeof c->trace_id);
  memcpy(c->peer, peer, peer_len);
  c->peer_len = peer_len;
  snprintf(c->peer_user, sizeof c->peer_user, "%s", who);
  /* move body + tensor frames into the call: zero-copy, stable addresses */
  c->n_frames = ns - 1;
  for (int i = 0; i < c->n_frames; i++) {
    zmq_msg_init(&c->frames[i]);
    zmq_msg_move(&c->frames[i], &rx[i + 2]);
  }
  c->n_tensors = env->n_tensors;
  for (int i = 0; i < c->n_tensors; i++) {
    c->tensors[i].desc = env->tensors[i].desc;
    c->tensors[i].nbytes = env->tensors[i].nbytes;
    c->tensors[i].data = zmq_msg_data(&c->frames[i + 1]);
  }
  c->deadline_ms = 0;
  if (env->deadline_ms) {
    c->deadline_ms = sa_now_ms() + env->deadline_ms;
    uv_timer_start(c->timer, call_deadline_cb, env->deadline_ms, 0);
  }
  m->handler(c, m->user);
}

static void server_on_message(sa__rpc_ep_t *ep, int n, int overflow);

static const sa__rpc_ep_vt_t server_vt = {
    .what = "server", .on_message = server_on_message, .free = server_free};

int sa_rpc_server_new(uv_loop_t *loop, const sa_rpc_opts_t *opts,
                      sa_rpc_server_t **out) {
  *out = NULL;
  sa_rpc_opts_t o;
  int rc = sa__rpc_opts_resolve(opts, &o);
  if (rc)
    return rc;
  sa_rpc_server_t *srv = calloc(1, sizeof *srv);
  if (!srv)
    return SA_ENOMEM;
  /* identity + envelope + body + tensors */
  if ((rc = sa__rpc_ep_init(&srv->ep, &server_vt, loop, opts, ZMQ_ROUTER, o.max_tensors + 3))) {
    free(srv);
    return rc;
  }
  int per_call = o.max_tensors + 1;
  srv->calls = calloc((size_t)o.max_inflight, sizeof *srv->calls);
  srv->call_frames = calloc((size_t)o.max_inflight * per_call, sizeof(zmq_msg_t));
  srv->call_tensors = calloc((size_t)o.max_inflight * per_call, sizeof(sa_rpc_tensor_t));
  int one = 1;
  if (!srv->calls || !srv->call_frames || !srv->call_tensors) {
    rc = SA_ENOMEM;
    goto fail;
  }
  if (zmq_setsockopt(srv->ep.sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0) {
    SA_LOG_ERROR("rpc: server socket options: %s", zmq_strerror(errno));
    rc = SA_EIO;
    goto fail;
  }
  if ((rc = sa__rpc_ep_start(&srv->ep)) != 0)
    goto fail;
  for (int i = 0; i < o.max_inflight; i++) {
    sa_rpc_call_t *c = &srv->calls[i];
    c->srv = srv;
    c->idx = i;
    c->frames = &srv->call_frames[(size_t)i * per_call];
    c->tensors = &srv->call_tensors[(size_t)i * per_call];
    c->timer = &srv->ep.timers[i];
    c->timer->data = c;
  }
  *out = srv;
  return 0;

fail:
  sa__rpc_ep_abandon(&srv->ep);
  free(srv->calls);
  free(srv->call_frames);
  free(srv->call_tensors);
  free(srv);
  return rc;
}

int sa_rpc_server_bind(sa_rpc_server_t *srv, const char *endpoint) {
  if (!srv || !endpoint || srv->ep.closing)
    return SA_EINVAL;
  if (zmq_bind(srv->ep.sock, endpoint) != 0) {
    SA_LOG_ERROR("rpc: bind %s: %s", endpoint, zmq_strerror(errno));
    return SA_EIO;
  }
  size_t sz = sizeof srv->endpoint;
  if (zmq_getsockopt(srv->ep.sock, ZMQ_LAST_ENDPOINT, srv->endpoint, &sz) != 0)
    snprintf(srv->endpoint, sizeof srv->endpoint, "%s", endpoint);
  SA_LOG_DEBUG("rpc: server bound to %s", srv->endpoint);
  return 0;
}

const char *sa_rpc_server_endpoint(const sa_rpc_server_t *srv) {
  return srv->endpoint;
}

int sa_rpc_server_register(sa_rpc_server_t *srv, const char *method,
                           sa_rpc_kind_t kind, sa_rpc_handler_cb handler,
                           void *user) {
  if (!srv || !method || !handler || !method[0] ||
      strlen(method) >= SA__RPC_MAX_METHOD ||
      (kind != SA_RPC_UNARY && kind != SA_RPC_STREAM))
    return SA_EINVAL;
  if (find_method(srv, method))
    return SA_EEXIST;
  if (srv->n_methods == srv->cap_methods) {
    int cap = srv->cap_methods ? 2 * srv->cap_methods : 8;
    method_t *m = realloc(srv->methods, (size_t)cap * sizeof *m);
    if (!m)
      return SA_ENOMEM;
    srv->methods = m;
    srv->cap_methods = cap;
  }
  char *name = strdup(method);
  if (!name)
    return SA_ENOMEM;
  srv->methods[srv->n_methods++] =
      (method_t){.name = name, .kind = kind, .handler = handler, .user = user};
  return 0;
}

int sa_rpc_server_inflight(const sa_rpc_server_t *srv) { return srv->ep.n_live; }

void sa_rpc_server_set_guard(sa_rpc_server_t *srv, sa_rpc_guard_cb guard, void *user) {
  srv->guard = guard;
  srv->guard_user = user;
}

void sa_rpc_server_destroy(sa_rpc_server_t **psrv) {
  if (!psrv || !*psrv)
    return;
  sa_rpc_server_t *srv = *psrv;
  *psrv = NULL;
  if (srv->ep.closing)
    return;
  sa__rpc_ep_close(&srv->ep);
  for (int i = 0; i < srv->ep.opts.max_inflight; i++)
    if (srv->calls[i].live)
      call_cancel(&srv->calls[i], SA_STATUS_CANCELLED);
}

/* --- call accessors --- */

const char *sa_rpc_call_method(const sa_rpc_call_t *c) { return c->m->name; }
uint64_t sa_rpc_call_id(const sa_rpc_call_t *c) { return c->call_id; }
const char *sa_rpc_call_trace_id(const sa_rpc_call_t *c) { return c->trace_id; }

const char *sa_rpc_call_peer(const sa_rpc_call_t *c) { return c->peer_user; }

const void *sa_rpc_call_request(const sa_rpc_call_t *c, size_t *len) {
  size_t n = c->n_frames > 0 ? zmq_msg_size(&c->frames[0]) : 0;
  if (len)
    *len = n;
  return n ? zmq_msg_data((zmq_msg_t *)&c->frames[0]) : NULL;
}

int sa_rpc_call_n_tensors(const sa_rpc_call_t *c) { return c->n_tensors; }

const sa_rpc_tensor_t *sa_rpc_call_tensor(const sa_rpc_call_t *c, int i) {
  if (i < 0 || i >= c->n_tensors)
    return NULL;
  return &c->tensors[i];
}

int sa_rpc_call_forward_tensor(sa_rpc_call_t *c, int i, sa_rpc_frame_t *out) {
  if (i < 0 || i >= c->n_tensors || !out)
    return SA_EINVAL;
  out->desc = c->tensors[i].desc;
  out->data = c->tensors[i].data;
  out->nbytes = c->tensors[i].nbytes;
  out->free_fn = sa__rpc_forward_marker;
  out->hint = &c->frames[i + 1];
  return 0;
}

int64_t sa_rpc_call_remaining_ms(const sa_rpc_call_t *c) {
  if (!c->deadline_ms)
    return -1;
  uint64_t now = sa_now_ms();
  return now >= c->deadline_ms ? 0 : (int64_t)(c->deadline_ms - now);
}

bool sa_rpc_call_is_cancelled(const sa_rpc_call_t *c, sa_status_t *status) {
  if (status)
    *status = c->cancel_status;
  return c->cancelled;
}

void sa_rpc_call_set_cancel_cb(sa_rpc_call_t *c, sa_rpc_cancel_cb cb, void *user) {
  c->cancel_cb = cb;
  c->cancel_user = user;
  if (c->cancelled && cb)
    cb(c, user);
}

/* Whether a message of call c may still go out; if not, the error to return. */
static int call_gone(sa_rpc_call_t *c) {
  if (c->srv->ep.closing)
    return SA_EUNAVAIL;
  if (!c->cancelled && c->deadline_ms && sa_now_ms() >= c->deadline_ms) {
    c->cancelled = true; /* no callback from inside the handler's own send */
    c->cancel_status = SA_STATUS_DEADLINE_EXCEEDED;
  }
  if (c->cancelled)
    return c->cancel_status == SA_STATUS_DEADLINE_EXCEEDED ? SA_ETIMEDOUT
           : c->cancel_status == SA_STATUS_UNAVAILABLE     ? SA_EUNAVAIL
                                                           : SA_ECANCELED;
  return 0;
}

static int call_emit(sa_rpc_call_t *c, sa__rpc_kind_t kind, sa_status_t st,
                     const char *msg, const void *body, size_t len,
                     const sa_rpc_frame_t *tensors, int n_tensors) {
  int gone = call_gone(c);
  if (gone) {
    sa__rpc_release_frames(tensors, n_tensors);
    SA_LOG_DEBUG("rpc: call %llu: reply dropped (%s)",
                 (unsigned long long)c->call_id, sa_strerror(gone));
    return gone;
  }
  char why[160];
  if (sa__rpc_check_frames(tensors, n_tensors, c->srv->ep.opts.max_tensors, why,
                   sizeof why) != 0 ||
      (len && !body)) {
    sa__rpc_release_frames(tensors, n_tensors);
    if (len && !body)
      snprintf(why, sizeof why, "body of %zu bytes without data", len);
    SA_LOG_ERROR("rpc: handler of %s produced a bad reply: %s", c->m->name, why);
    if (kind != SA__RPC_STREAM_MSG) {
      char m2[200];
      snprintf(m2, sizeof m2, "server error: %s", why);
      sa__rpc_env_out_t e = {.call_id = c->call_id, .kind = kind,
                             .status = SA_STATUS_INTERNAL, .status_msg = m2};
      server_send(c->srv, c->peer, c->peer_len, &e, NULL, 0);
    }
    return SA_EINVAL;
  }
  sa__rpc_env_out_t e = {.call_id = c->call_id,
                         .kind = kind,
                         .status = st,
                         .status_msg = msg,
                         .trace_id = c->trace_id,
                         .tensors = tensors,
                         .n_tensors = n_tensors};
  int rc = server_send(c->srv, c->peer, c->peer_len, &e, body, len);
  if (rc == SA_EUNAVAIL) {
    SA_LOG_WARN("rpc: call %llu (%s): caller is gone", (unsigned long long)c->call_id,
                c->m->name);
    c->cancelled = true;
    c->cancel_status = SA_STATUS_UNAVAILABLE;
  }
  return rc;
}

int sa_rpc_call_reply(sa_rpc_call_t *c, sa_status_t status, const char *msg,
                      const void *body, size_t len,
                      const sa_rpc_frame_t *tensors, int n_tensors) {
  if (!c || !c->live) {
    sa__rpc_release_frames(tensors, n_tensors);
    return SA_EINVAL;
  }
  int rc;
  if (c->kind != SA_RPC_UNARY) {
    sa__rpc_release_frames(tensors, n_tensors);
    rc = call_emit(c, SA__RPC_STREAM_END, status, msg, NULL, 0, NULL, 0);
    if (rc == 0)
      rc = SA_EINVAL;
  } else {
    rc = call_emit(c, SA__RPC_RESPONSE, status, msg, body, len, tensors,
                   n_tensors);
  }
  if (rc == SA_EFULL)
    return rc; /* nothing sent; the call stays open for a retry */
  call_release(c);
  return rc;
}

int sa_rpc_call_send(sa_rpc_call_t *c, const void *body, size_t len,
                     const sa_rpc_frame_t *tensors, int n_tensors) {
  if (!c || !c->live || c->kind != SA_RPC_STREAM) {
    sa__rpc_release_frames(tensors, n_tensors);
    return SA_EINVAL;
  }
  return call_emit(c, SA__RPC_STREAM_MSG, SA_STATUS_OK, NULL, body, len,
                   tensors, n_tensors);
}

int sa_rpc_call_finish(sa_rpc_call_t *c, sa_status_t status, const char *msg) {
  if (!c || !c->live)
    return SA_EINVAL;
  int rc = call_emit(c, c->kind == SA_RPC_STREAM ? SA__RPC_STREAM_END
                                                 : SA__RPC_RESPONSE,
                     status, msg, NULL, 0, NULL, 0);
  if (rc == SA_EFULL)
    return rc; /* nothing sent; the call stays open for a retry */
  call_release(c);
  return rc;
}

int sa_rpc_call_reply_pb(sa_rpc_call_t *call, const void *msg) {
  const ProtobufCMessage *m = msg;
  size_t len = protobuf_c_message_get_packed_size(m);
  uint8_t stackbuf[1024];
  uint8_t *buf = len <= sizeof stackbuf ? stackbuf : malloc(len);
  if (!buf)
    return sa_rpc_call_reply(call, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL, 0,
                             NULL, 0);
  protobuf_c_message_pack(m, buf);
  int rc = sa_rpc_call_reply(call, SA_STATUS_OK, NULL, buf, len, NULL, 0);
  if (buf != stackbuf)
    free(buf);
  return rc;
}
