/*
 * rpc — server, channel and blocking call over ZeroMQ in libuv (see rpc.h).
 *
 * Event handling: each ZeroMQ socket's ZMQ_FD sits in a uv_poll. That fd is
 * edge-triggered (it signals "something changed", not "readable"), and a
 * zmq_send/zmq_getsockopt may consume the edge, so:
 *  - the poll callback drains while ZMQ_EVENTS has POLLIN;
 *  - a uv_prepare handle (runs right before the loop blocks for I/O, and
 *    before libuv computes the poll timeout) drains again, which covers
 *    every send made from any callback in the previous loop iteration.
 * Calls live in fixed pools sized by max_inflight (allocated at _new), with
 * their deadline timers initialised once, so starting and ending a call
 * allocates nothing but the ZeroMQ messages themselves.
 */
#include "rpc.h"
#include "sa_time.h"

#include <errno.h>
#include <protobuf-c/protobuf-c.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>
#include <zmq.h>

#include "log.h"
#include "rpc_internal.h"

#define DEFAULT_MAX_MSG ((size_t)512 << 20)
#define CALL_IDX_BITS 20
#define CALL_IDX_MASK ((1u << CALL_IDX_BITS) - 1u)
#define MAX_PEER_ID 256

/* ------------------------------------------------------------ shared bits */

static void *g_ctx;
static pthread_once_t g_ctx_once = PTHREAD_ONCE_INIT;

static void ctx_init(void) {
  g_ctx = zmq_ctx_new();
  if (!g_ctx)
    return;
  int io = 1;
  const char *s = getenv("SA_RPC_IO_THREADS");
  if (s && atoi(s) > 0 && atoi(s) <= 64)
    io = atoi(s);
  zmq_ctx_set(g_ctx, ZMQ_IO_THREADS, io);
  zmq_ctx_set(g_ctx, ZMQ_MAX_SOCKETS, 65536);
}

/* The process-wide ZeroMQ context (never terminated: sockets may outlive any
 * one owner). NULL if ZeroMQ could not create one. */
static void *rpc_ctx(void) {
  pthread_once(&g_ctx_once, ctx_init);
  return g_ctx;
}

void sa_rpc_free_none(void *data, void *hint) {
  (void)data;
  (void)hint;
}

/* Marks a frame that forwards a received message (hint = its zmq_msg_t). */
static void forward_marker(void *data, void *hint) {
  (void)data;
  (void)hint;
}

void sa_rpc_opts_default(sa_rpc_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->max_msg_bytes = DEFAULT_MAX_MSG;
  o->max_tensors = 16;
  o->max_inflight = 1024;
  o->sndhwm = 10000;
  o->rcvhwm = 10000;
  o->heartbeat_ivl_ms = 1000;
  o->heartbeat_timeout_ms = 5000;
  o->reconnect_ivl_ms = 100;
}

static int opts_resolve(const sa_rpc_opts_t *in, sa_rpc_opts_t *o) {
  sa_rpc_opts_default(o);
  if (!in)
    return 0;
  if (in->curve_public_key || in->curve_secret_key || in->curve_server_key) {
    SA_LOG_ERROR("rpc: CurveZMQ keys were given but encryption is not implemented yet");
    return SA_EUNIMPL;
  }
  if (in->max_msg_bytes)
    o->max_msg_bytes = in->max_msg_bytes;
  if (in->max_tensors)
    o->max_tensors = in->max_tensors;
  if (in->max_inflight)
    o->max_inflight = in->max_inflight;
  if (in->sndhwm)
    o->sndhwm = in->sndhwm;
  if (in->rcvhwm)
    o->rcvhwm = in->rcvhwm;
  o->heartbeat_ivl_ms = in->heartbeat_ivl_ms;
  o->heartbeat_timeout_ms = in->heartbeat_timeout_ms;
  if (in->reconnect_ivl_ms)
    o->reconnect_ivl_ms = in->reconnect_ivl_ms;
  if (o->max_tensors < 0 || o->max_tensors > SA__RPC_MAX_TENSORS ||
      o->max_inflight < 1 || o->max_inflight > (int)CALL_IDX_MASK ||
      o->sndhwm < 0 || o->rcvhwm < 0 || o->heartbeat_ivl_ms < 0 ||
      o->heartbeat_timeout_ms < 0) {
    SA_LOG_ERROR("rpc: invalid options (max_tensors %d, max_inflight %d)",
                 o->max_tensors, o->max_inflight);
    return SA_EINVAL;
  }
  return 0;
}

static int sock_setup(void *s, const sa_rpc_opts_t *o) {
  int zero = 0;
  int64_t maxmsg = (int64_t)o->max_msg_bytes;
  if (maxmsg < INT64_MAX / 4)
    maxmsg *= 4; /* hard cap; the soft cap is answered with an error */
  else
    maxmsg = -1;
  if (zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) ||
      zmq_setsockopt(s, ZMQ_SNDHWM, &o->sndhwm, sizeof o->sndhwm) ||
      zmq_setsockopt(s, ZMQ_RCVHWM, &o->rcvhwm, sizeof o->rcvhwm) ||
      zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg))
    return SA_EIO;
  if (o->heartbeat_ivl_ms > 0) {
    if (zmq_setsockopt(s, ZMQ_HEARTBEAT_IVL, &o->heartbeat_ivl_ms, sizeof(int)))
      return SA_EIO;
    if (o->heartbeat_timeout_ms > 0 &&
        (zmq_setsockopt(s, ZMQ_HEARTBEAT_TIMEOUT, &o->heartbeat_timeout_ms,
                        sizeof(int)) ||
         zmq_setsockopt(s, ZMQ_HEARTBEAT_TTL, &o->heartbeat_timeout_ms,
                        sizeof(int))))
      return SA_EIO;
  }
  return 0;
}

static bool sock_readable(void *s) {
  int ev = 0;
  size_t sz = sizeof ev;
  if (zmq_getsockopt(s, ZMQ_EVENTS, &ev, &sz) != 0)
    return false;
  return (ev & ZMQ_POLLIN) != 0;
}

static int sock_fd(void *s, int *fd) {
  size_t sz = sizeof *fd;
  return zmq_getsockopt(s, ZMQ_FD, fd, &sz) == 0 ? 0 : SA_EIO;
}


/* Receives one multipart message into rx[0..cap). Frames beyond cap are
 * received and dropped; *overflow counts them. Returns the number of frames
 * kept, 0 if nothing was waiting, or -1 on a receive error. *total gets the
 * bytes of all frames. */
static int recv_multipart(void *sock, zmq_msg_t *rx, int cap, int *overflow,
                          size_t *total) {
  int n = 0;
  *overflow = 0;
  *total = 0;
  for (;;) {
    zmq_msg_t tmp;
    zmq_msg_t *m = n < cap ? &rx[n] : &tmp;
    zmq_msg_init(m);
    int rc = zmq_msg_recv(m, sock, ZMQ_DONTWAIT);
    if (rc < 0) {
      zmq_msg_close(m);
      if (n == 0 && *overflow == 0 && errno == EAGAIN)
        return 0;
      SA_LOG_ERROR("rpc: receive failed mid-message: %s", zmq_strerror(errno));
      for (int i = 0; i < n; i++)
        zmq_msg_close(&rx[i]);
      return -1;
    }
    *total += zmq_msg_size(m);
    int more = zmq_msg_more(m);
    if (m == &tmp) {
      zmq_msg_close(&tmp);
      (*overflow)++;
    } else {
      n++;
    }
    if (!more)
      return n;
  }
}

static void close_msgs(zmq_msg_t *m, int n) {
  for (int i = 0; i < n; i++)
    zmq_msg_close(&m[i]);
}

/* Calls free_fn of frames that carry one (ownership passes in all cases). */
static void release_frames(const sa_rpc_frame_t *t, int n) {
  for (int i = 0; i < n; i++) {
    if (t[i].free_fn && t[i].free_fn != sa_rpc_free_none &&
        t[i].free_fn != forward_marker)
      t[i].free_fn((void *)t[i].data, t[i].hint);
  }
}

static int check_frames(const sa_rpc_frame_t *t, int n, int max_tensors,
                        char *why, size_t cap) {
  if (n < 0 || n > max_tensors || (n > 0 && !t)) {
    snprintf(why, cap, "%d tensor frames (limit %d)", n, max_tensors);
    return SA_EINVAL;
  }
  for (int i = 0; i < n; i++) {
    size_t nb;
    if (sa_tensor_desc_nbytes(&t[i].desc, &nb) != 0 || nb != t[i].nbytes ||
        (nb > 0 && !t[i].data)) {
      snprintf(why, cap, "tensor frame %d: descriptor does not match %zu bytes",
               i, t[i].nbytes);
      return SA_EINVAL;
    }
  }
  return 0;
}

/* Builds the ZeroMQ messages of one outgoing message into out[] (envelope,
 * body, tensors). Consumes the tensor frames' ownership. Returns the number
 * of messages, or a negative code (everything released). */
static int build_msgs(zmq_msg_t *out, const sa__rpc_env_out_t *e,
                      const void *body, size_t len) {
  size_t esz = sa__rpc_env_packed_size(e);
  if (esz > SA__RPC_MAX_ENVELOPE || zmq_msg_init_size(&out[0], esz) != 0) {
    release_frames(e->tensors, e->n_tensors);
    return SA_ENOMEM;
  }
  sa__rpc_env_pack(e, zmq_msg_data(&out[0]), esz);
  if (zmq_msg_init_size(&out[1], len) != 0) {
    zmq_msg_close(&out[0]);
    release_frames(e->tensors, e->n_tensors);
    return SA_ENOMEM;
  }
  if (len)
    memcpy(zmq_msg_data(&out[1]), body, len);
  int n = 2;
  for (int i = 0; i < e->n_tensors; i++) {
    const sa_rpc_frame_t *f = &e->tensors[i];
    zmq_msg_t *m = &out[n];
    int rc;
    if (f->free_fn == forward_marker) {
      zmq_msg_init(m);
      rc = zmq_msg_copy(m, (zmq_msg_t *)f->hint);
    } else if (f->nbytes == 0) {
      rc = zmq_msg_init(m);
      if (f->free_fn && f->free_fn != sa_rpc_free_none)
        f->free_fn((void *)f->data, f->hint);
    } else if (!f->free_fn) {
      rc = zmq_msg_init_size(m, f->nbytes);
      if (rc == 0)
        memcpy(zmq_msg_data(m), f->data, f->nbytes);
    } else {
      rc = zmq_msg_init_data(m, (void *)f->data, f->nbytes,
                             (zmq_free_fn *)f->free_fn, f->hint);
    }
    if (rc != 0) {
      close_msgs(out, n);
      release_frames(e->tensors + i + 1, e->n_tensors - i - 1);
      return SA_ENOMEM;
    }
    n++;
  }
  return n;
}

/* Sends msgs[0..n) as one multipart message; closes every message that was
 * not handed to ZeroMQ. Returns 0, SA_EFULL (queue full), SA_EUNAVAIL
 * (unroutable peer) or SA_EIO. */
static int send_msgs(void *sock, zmq_msg_t *msgs, int n) {
  for (int i = 0; i < n; i++) {
    int flags = ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0);
    if (zmq_msg_send(&msgs[i], sock, flags) < 0) {
      int e = errno;
      close_msgs(msgs + i, n - i);
      if (e == EAGAIN)
        return SA_EFULL;
      if (e == EHOSTUNREACH)
        return SA_EUNAVAIL;
      SA_LOG_ERROR("rpc: send failed: %s", zmq_strerror(e));
      return SA_EIO;
    }
  }
  return 0;
}

/* ---------------------------------------------------------------- server */

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
  uint64_t deadline_ms; /* absolute, uv_hrtime() clock; 0 = none */
  uv_timer_t timer;
  sa_rpc_cancel_cb cancel_cb;
  void *cancel_user;
  zmq_msg_t *frames; /* [body, tensors...] */
  int n_frames;
  sa_rpc_tensor_t *tensors;
  int n_tensors;
};

struct sa_rpc_server {
  uv_loop_t *loop;
  sa_rpc_opts_t opts;
  void *sock;
  uv_poll_t poll;
  uv_prepare_t prep;
  uv_idle_t kick;
  bool closing;
  bool draining;
  int pending_closes;
  char endpoint[256];
  method_t *methods;
  int n_methods, cap_methods;
  sa_rpc_call_t *calls; /* max_inflight */
  int *free_idx;
  int n_free;
  int n_live;
  zmq_msg_t *call_frames; /* max_inflight * (max_tensors + 1) */
  sa_rpc_tensor_t *call_tensors;
  zmq_msg_t *rx; /* identity + envelope + body + tensors */
  int rx_cap;
  zmq_msg_t *tx;
  sa__rpc_env_t env;
};

static void server_maybe_free(sa_rpc_server_t *srv) {
  if (!srv->closing || srv->pending_closes > 0 || srv->n_live > 0)
    return;
  for (int i = 0; i < srv->n_methods; i++)
    free(srv->methods[i].name);
  free(srv->methods);
  free(srv->calls);
  free(srv->free_idx);
  free(srv->call_frames);
  free(srv->call_tensors);
  free(srv->rx);
  free(srv->tx);
  free(srv);
}

static void server_handle_closed(uv_handle_t *h) {
  sa_rpc_server_t *srv = h->data;
  srv->pending_closes--;
  server_maybe_free(srv);
}

static void call_timer_closed(uv_handle_t *h) {
  sa_rpc_call_t *c = h->data;
  sa_rpc_server_t *srv = c->srv;
  srv->pending_closes--;
  server_maybe_free(srv);
}

static void call_release(sa_rpc_call_t *c) {
  sa_rpc_server_t *srv = c->srv;
  SA_ASSERT(c->live, "a call is ended exactly once");
  if (c->deadline_ms && !srv->closing)
    uv_timer_stop(&c->timer);
  close_msgs(c->frames, c->n_frames);
  c->n_frames = 0;
  c->live = false;
  c->cancel_cb = NULL;
  srv->free_idx[srv->n_free++] = c->idx;
  srv->n_live--;
  server_maybe_free(srv);
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
  if (!srv->sock) {
    release_frames(e->tensors, e->n_tensors);
    return SA_EUNAVAIL;
  }
  if (zmq_msg_init_size(&srv->tx[0], peer_len) != 0) {
    release_frames(e->tensors, e->n_tensors);
    return SA_ENOMEM;
  }
  memcpy(zmq_msg_data(&srv->tx[0]), peer, peer_len);
  int n = build_msgs(&srv->tx[1], e, body, len);
  if (n < 0) {
    zmq_msg_close(&srv->tx[0]);
    return n;
  }
  return send_msgs(srv->sock, srv->tx, n + 1);
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

static void server_on_message(sa_rpc_server_t *srv, int n, int overflow) {
  zmq_msg_t *rx = srv->rx;
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
  sa__rpc_limits_t lim = {srv->opts.max_msg_bytes, srv->opts.max_tensors};
  sa__rpc_env_t *env = &srv->env;
  int rc;
  if (overflow) {
    /* decode only the envelope to address the error */
    sa__rpc_decode_frames(spans, 1, &lim, env, err, sizeof err);
    snprintf(err, sizeof err, "wrong frame count: %d frames exceed the limit of %d",
             ns + overflow, srv->opts.max_tensors + 2);
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
    for (int i = 0; i < srv->opts.max_inflight; i++) {
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
  if (srv->n_free == 0) {
    snprintf(err, sizeof err, "server busy: %d calls in progress",
             srv->n_live);
    SA_LOG_WARN("rpc: call %llu (%s): %s", (unsigned long long)env->call_id,
                env->method, err);
    server_reject(srv, peer, peer_len, env->call_id,
                  SA_STATUS_RESOURCE_EXHAUSTED, err);
    return;
  }
  sa_rpc_call_t *c = &srv->calls[srv->free_idx[--srv->n_free]];
  srv->n_live++;
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
    uv_timer_start(&c->timer, call_deadline_cb, env->deadline_ms, 0);
  }
  m->handler(c, m->user);
}

static int server_drain(sa_rpc_server_t *srv) {
  if (srv->draining)
    return 0; /* a handler re-entered the loop machinery */
  int got = 0;
  srv->draining = true;
  while (!srv->closing && sock_readable(srv->sock)) {
    int overflow;
    size_t total;
    int n = recv_multipart(srv->sock, srv->rx, srv->rx_cap, &overflow, &total);
    if (n <= 0)
      break;
    got++;
    server_on_message(srv, n, overflow);
    close_msgs(srv->rx, n);
  }
  srv->draining = false;
  return got;
}

static void server_poll_cb(uv_poll_t *h, int status, int events) {
  (void)events;
  sa_rpc_server_t *srv = h->data;
  if (status < 0)
    SA_LOG_ERROR("rpc: server poll error: %s", uv_strerror(status));
  server_drain(srv);
}

static void kick_cb(uv_idle_t *h) { uv_idle_stop(h); }

/* Work done in the prepare phase must not be followed by a blocking poll:
 * callers that run the loop with UV_RUN_ONCE (or wait for a condition) would
 * sleep although callbacks just ran. An idle handle makes libuv poll with
 * timeout 0 (libuv computes the timeout after the prepare phase). */
static void server_prepare_cb(uv_prepare_t *h) {
  sa_rpc_server_t *srv = h->data;
  if (server_drain(srv) > 0 && !srv->closing)
    uv_idle_start(&srv->kick, kick_cb);
}

int sa_rpc_server_new(uv_loop_t *loop, const sa_rpc_opts_t *opts,
                      sa_rpc_server_t **out) {
  *out = NULL;
  if (!loop)
    return SA_EINVAL;
  sa_rpc_opts_t o;
  int rc = opts_resolve(opts, &o);
  if (rc)
    return rc;
  void *ctx = rpc_ctx();
  if (!ctx)
    return SA_EIO;
  sa_rpc_server_t *srv = calloc(1, sizeof *srv);
  if (!srv)
    return SA_ENOMEM;
  srv->loop = loop;
  srv->opts = o;
  int per_call = o.max_tensors + 1;
  srv->rx_cap = o.max_tensors + 3;
  srv->calls = calloc((size_t)o.max_inflight, sizeof *srv->calls);
  srv->free_idx = calloc((size_t)o.max_inflight, sizeof *srv->free_idx);
  srv->call_frames = calloc((size_t)o.max_inflight * per_call, sizeof(zmq_msg_t));
  srv->call_tensors =
      calloc((size_t)o.max_inflight * (o.max_tensors + 1), sizeof(sa_rpc_tensor_t));
  srv->rx = calloc((size_t)srv->rx_cap, sizeof(zmq_msg_t));
  srv->tx = calloc((size_t)srv->rx_cap, sizeof(zmq_msg_t));
  if (!srv->calls || !srv->free_idx || !srv->call_frames || !srv->call_tensors ||
      !srv->rx || !srv->tx) {
    rc = SA_ENOMEM;
    goto fail;
  }
  srv->sock = zmq_socket(ctx, ZMQ_ROUTER);
  if (!srv->sock) {
    rc = SA_EIO;
    goto fail;
  }
  int one = 1;
  if (sock_setup(srv->sock, &o) != 0 ||
      zmq_setsockopt(srv->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0) {
    SA_LOG_ERROR("rpc: server socket options: %s", zmq_strerror(errno));
    rc = SA_EIO;
    goto fail;
  }
  int fd;
  if (sock_fd(srv->sock, &fd) != 0) {
    rc = SA_EIO;
    goto fail;
  }
  /* from here on handles exist: failures go through destroy */
  uv_poll_init(loop, &srv->poll, fd);
  srv->poll.data = srv;
  uv_prepare_init(loop, &srv->prep);
  srv->prep.data = srv;
  uv_idle_init(loop, &srv->kick);
  srv->kick.data = srv;
  uv_unref((uv_handle_t *)&srv->kick);
  for (int i = 0; i < o.max_inflight; i++) {
    sa_rpc_call_t *c = &srv->calls[i];
    c->srv = srv;
    c->idx = i;
    c->frames = &srv->call_frames[(size_t)i * per_call];
    c->tensors = &srv->call_tensors[(size_t)i * (o.max_tensors + 1)];
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    srv->free_idx[srv->n_free++] = o.max_inflight - 1 - i;
  }
  uv_poll_start(&srv->poll, UV_READABLE, server_poll_cb);
  uv_prepare_start(&srv->prep, server_prepare_cb);
  uv_unref((uv_handle_t *)&srv->prep);
  *out = srv;
  return 0;

fail:
  if (srv->sock)
    zmq_close(srv->sock);
  free(srv->calls);
  free(srv->free_idx);
  free(srv->call_frames);
  free(srv->call_tensors);
  free(srv->rx);
  free(srv->tx);
  free(srv);
  return rc;
}

int sa_rpc_server_bind(sa_rpc_server_t *srv, const char *endpoint) {
  if (!srv || !endpoint || srv->closing)
    return SA_EINVAL;
  if (zmq_bind(srv->sock, endpoint) != 0) {
    SA_LOG_ERROR("rpc: bind %s: %s", endpoint, zmq_strerror(errno));
    return SA_EIO;
  }
  size_t sz = sizeof srv->endpoint;
  if (zmq_getsockopt(srv->sock, ZMQ_LAST_ENDPOINT, srv->endpoint, &sz) != 0)
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

int sa_rpc_server_inflight(const sa_rpc_server_t *srv) { return srv->n_live; }

void sa_rpc_server_destroy(sa_rpc_server_t **psrv) {
  if (!psrv || !*psrv)
    return;
  sa_rpc_server_t *srv = *psrv;
  *psrv = NULL;
  if (srv->closing)
    return;
  srv->closing = true;
  uv_close((uv_handle_t *)&srv->poll, server_handle_closed);
  uv_close((uv_handle_t *)&srv->prep, server_handle_closed);
  uv_close((uv_handle_t *)&srv->kick, server_handle_closed);
  srv->pending_closes = 3;
  for (int i = 0; i < srv->opts.max_inflight; i++) {
    uv_close((uv_handle_t *)&srv->calls[i].timer, call_timer_closed);
    srv->pending_closes++;
  }
  zmq_close(srv->sock);
  srv->sock = NULL;
  for (int i = 0; i < srv->opts.max_inflight; i++)
    if (srv->calls[i].live)
      call_cancel(&srv->calls[i], SA_STATUS_CANCELLED);
}

/* --- call accessors --- */

const char *sa_rpc_call_method(const sa_rpc_call_t *c) { return c->m->name; }
uint64_t sa_rpc_call_id(const sa_rpc_call_t *c) { return c->call_id; }
const char *sa_rpc_call_trace_id(const sa_rpc_call_t *c) { return c->trace_id; }

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
  out->free_fn = forward_marker;
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
  if (c->srv->closing)
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
    release_frames(tensors, n_tensors);
    SA_LOG_DEBUG("rpc: call %llu: reply dropped (%s)",
                 (unsigned long long)c->call_id, sa_strerror(gone));
    return gone;
  }
  char why[160];
  if (check_frames(tensors, n_tensors, c->srv->opts.max_tensors, why,
                   sizeof why) != 0 ||
      (len && !body)) {
    release_frames(tensors, n_tensors);
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
    release_frames(tensors, n_tensors);
    return SA_EINVAL;
  }
  int rc;
  if (c->kind != SA_RPC_UNARY) {
    release_frames(tensors, n_tensors);
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
    release_frames(tensors, n_tensors);
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

/* ---------------------------------------------------------------- channel */

typedef struct {
  sa_rpc_channel_t *ch;
  uint32_t idx;
  bool live;
  bool stream;
  bool cancelled; /* completion with CANCELLED is queued on the timer */
  uint64_t call_id;
  sa_rpc_unary_cb cb;
  sa_rpc_stream_msg_cb msg_cb;
  sa_rpc_stream_end_cb end_cb;
  void *user;
  uv_timer_t timer;
} ccall_t;

struct sa_rpc_channel {
  uv_loop_t *loop;
  sa_rpc_opts_t opts;
  char endpoint[256];
  void *sock;
  void *mon;
  uv_poll_t poll, mon_poll;
  uv_prepare_t prep;
  uv_idle_t kick;
  bool connected, ever_connected;
  bool closing;
  bool draining;
  bool polls_ref;
  int pending_closes;
  uint64_t seq;
  ccall_t *calls;
  uint32_t *free_idx;
  int n_free, n_live;
  zmq_msg_t *rx;
  int rx_cap;
  zmq_msg_t *tx;
  sa__rpc_env_t env;
};

static void channel_maybe_free(sa_rpc_channel_t *ch) {
  if (!ch->closing || ch->pending_closes > 0)
    return;
  free(ch->calls);
  free(ch->free_idx);
  free(ch->rx);
  free(ch->tx);
  free(ch);
}

static void channel_handle_closed(uv_handle_t *h) {
  sa_rpc_channel_t *ch = h->data;
  ch->pending_closes--;
  channel_maybe_free(ch);
}

static void ccall_timer_closed(uv_handle_t *h) {
  ccall_t *c = h->data;
  sa_rpc_channel_t *ch = c->ch;
  ch->pending_closes--;
  channel_maybe_free(ch);
}

/* The channel's polls keep the loop alive only while calls are in flight. */
static void channel_update_ref(sa_rpc_channel_t *ch) {
  bool want = ch->n_live > 0 && !ch->closing;
  if (want == ch->polls_ref)
    return;
  ch->polls_ref = want;
  if (want) {
    uv_ref((uv_handle_t *)&ch->poll);
    uv_ref((uv_handle_t *)&ch->mon_poll);
  } else {
    uv_unref((uv_handle_t *)&ch->poll);
    uv_unref((uv_handle_t *)&ch->mon_poll);
  }
}

static ccall_t *ccall_find(sa_rpc_channel_t *ch, uint64_t call_id) {
  uint32_t idx = (uint32_t)(call_id & CALL_IDX_MASK);
  if (idx >= (uint32_t)ch->opts.max_inflight)
    return NULL;
  ccall_t *c = &ch->calls[idx];
  return c->live && c->call_id == call_id ? c : NULL;
}

/* Releases the slot, then runs the completion callback (which may start new
 * calls or destroy the channel). */
static void ccall_complete(ccall_t *c, const sa_rpc_result_t *res) {
  sa_rpc_channel_t *ch = c->ch;
  bool stream = c->stream;
  sa_rpc_unary_cb cb = c->cb;
  sa_rpc_stream_end_cb end_cb = c->end_cb;
  void *user = c->user;
  uv_timer_stop(&c->timer);
  c->live = false;
  c->cancelled = false;
  ch->free_idx[ch->n_free++] = c->idx;
  ch->n_live--;
  channel_update_ref(ch);
  if (stream)
    end_cb(ch, res, user);
  else
    cb(ch, res, user);
}

static void ccall_fail(ccall_t *c, sa_status_t st, const char *msg) {
  sa_rpc_result_t r = {.call_id = c->call_id, .status = st, .status_msg = msg};
  ccall_complete(c, &r);
}

static void ccall_timer_cb(uv_timer_t *t) {
  ccall_t *c = t->data;
  if (!c->live)
    return;
  if (c->cancelled)
    ccall_fail(c, SA_STATUS_CANCELLED, "cancelled by the caller");
  else
    ccall_fail(c, SA_STATUS_DEADLINE_EXCEEDED, "deadline exceeded");
}

static void channel_fail_all(sa_rpc_channel_t *ch, sa_status_t st, const char *msg) {
  for (int i = 0; i < ch->opts.max_inflight; i++)
    if (ch->calls[i].live)
      ccall_fail(&ch->calls[i], st, msg);
}

static void channel_on_message(sa_rpc_channel_t *ch, int n, int overflow) {
  sa__rpc_span_t spans[SA__RPC_MAX_TENSORS + 2];
  for (int i = 0; i < n; i++) {
    spans[i].data = zmq_msg_data(&ch->rx[i]);
    spans[i].len = zmq_msg_size(&ch->rx[i]);
  }
  sa__rpc_limits_t lim = {ch->opts.max_msg_bytes, ch->opts.max_tensors};
  sa__rpc_env_t *env = &ch->env;
  char err[256];
  int rc = sa__rpc_decode_frames(spans, overflow ? 1 : n, &lim, env, err,
                                 sizeof err);
  if (overflow) {
    snprintf(err, sizeof err, "wrong frame count: %d frames exceed the limit",
             n + overflow);
    rc = SA_EPROTO;
  }
  if (rc != 0) {
    SA_LOG_WARN("rpc: bad message from %s (call %llu): %s", ch->endpoint,
                (unsigned long long)env->call_id, err);
    ccall_t *c = env->have_call_id ? ccall_find(ch, env->call_id) : NULL;
    if (c && !c->cancelled) {
      char m2[300];
      snprintf(m2, sizeof m2, "malformed reply: %s", err);
      ccall_fail(c, SA_STATUS_INTERNAL, m2);
    }
    return;
  }
  if (env->call_id == 0) { /* cannot happen: decode refuses call_id 0 */
    return;
  }
  ccall_t *c = ccall_find(ch, env->call_id);
  if (!c || c->cancelled) {
    SA_LOG_DEBUG("rpc: message for call %llu that is no longer in flight",
                 (unsigned long long)env->call_id);
    return;
  }
  sa_rpc_result_t r = {.call_id = env->call_id,
                       .status = env->status,
                       .status_msg = env->status_msg,
                       .body = env->body,
                       .body_len = env->body_len,
                       .tensors = env->tensors,
                       .n_tensors = env->n_tensors};
  switch (env->kind) {
  case SA__RPC_STREAM_MSG:
    if (!c->stream) {
      ccall_fail(c, SA_STATUS_INTERNAL, "server streamed to a unary call");
      return;
    }
    r.status = SA_STATUS_OK;
    c->msg_cb(ch, &r, c->user);
    return;
  case SA__RPC_RESPONSE:
  case SA__RPC_STREAM_END:
    if (c->stream) {
      r.body = NULL;
      r.body_len = 0;
      r.tensors = NULL;
      r.n_tensors = 0;
    }
    ccall_complete(c, &r);
    return;
  default:
    SA_LOG_WARN("rpc: server sent kind %d for call %llu", (int)env->kind,
                (unsigned long long)env->call_id);
    ccall_fail(c, SA_STATUS_INTERNAL, "server sent a request-side message");
    return;
  }
}

static int channel_drain(sa_rpc_channel_t *ch) {
  if (ch->draining)
    return 0;
  int got = 0;
  ch->draining = true;
  while (!ch->closing && sock_readable(ch->sock)) {
    int overflow;
    size_t total;
    int n = recv_multipart(ch->sock, ch->rx, ch->rx_cap, &overflow, &total);
    if (n <= 0)
      break;
    got++;
    channel_on_message(ch, n, overflow);
    close_msgs(ch->rx, n);
  }
  ch->draining = false;
  return got;
}

static int channel_mon_drain(sa_rpc_channel_t *ch) {
  int got = 0;
  while (!ch->closing && ch->mon && sock_readable(ch->mon)) {
    zmq_msg_t m[2];
    int overflow;
    size_t total;
    int n = recv_multipart(ch->mon, m, 2, &overflow, &total);
    if (n <= 0)
      break;
    got++;
    uint16_t event = 0;
    if (zmq_msg_size(&m[0]) >= 2)
      memcpy(&event, zmq_msg_data(&m[0]), 2);
    close_msgs(m, n);
    if (event == ZMQ_EVENT_CONNECTED || event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
      if (!ch->connected)
        SA_LOG_DEBUG("rpc: channel to %s is up", ch->endpoint);
      ch->connected = true;
      ch->ever_connected = true;
    } else if (event == ZMQ_EVENT_DISCONNECTED) {
      bool was = ch->connected;
      ch->connected = false;
      if (was || ch->ever_connected) {
        SA_LOG_WARN("rpc: connection to %s lost; %d calls fail with UNAVAILABLE",
                    ch->endpoint, ch->n_live);
        channel_fail_all(ch, SA_STATUS_UNAVAILABLE, "connection to the server lost");
      }
    }
  }
  return got;
}

static void channel_poll_cb(uv_poll_t *h, int status, int events) {
  (void)events;
  if (status < 0)
    SA_LOG_ERROR("rpc: channel poll error: %s", uv_strerror(status));
  channel_drain(h->data);
}

static void channel_mon_poll_cb(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  channel_mon_drain(h->data);
}

static void channel_prepare_cb(uv_prepare_t *h) {
  sa_rpc_channel_t *ch = h->data;
  int got = channel_mon_drain(ch);
  got += channel_drain(ch);
  if (got > 0 && !ch->closing)
    uv_idle_start(&ch->kick, kick_cb);
}

int sa_rpc_channel_new(uv_loop_t *loop, const char *endpoint,
                       const sa_rpc_opts_t *opts, sa_rpc_channel_t **out) {
  *out = NULL;
  if (!loop || !endpoint || strlen(endpoint) >= 256)
    return SA_EINVAL;
  sa_rpc_opts_t o;
  int rc = opts_resolve(opts, &o);
  if (rc)
    return rc;
  void *ctx = rpc_ctx();
  if (!ctx)
    return SA_EIO;
  static _Atomic unsigned mon_seq;
  sa_rpc_channel_t *ch = calloc(1, sizeof *ch);
  if (!ch)
    return SA_ENOMEM;
  ch->loop = loop;
  ch->opts = o;
  snprintf(ch->endpoint, sizeof ch->endpoint, "%s", endpoint);
  ch->rx_cap = o.max_tensors + 2;
  ch->calls = calloc((size_t)o.max_inflight, sizeof *ch->calls);
  ch->free_idx = calloc((size_t)o.max_inflight, sizeof *ch->free_idx);
  ch->rx = calloc((size_t)ch->rx_cap, sizeof(zmq_msg_t));
  ch->tx = calloc((size_t)ch->rx_cap, sizeof(zmq_msg_t));
  if (!ch->calls || !ch->free_idx || !ch->rx || !ch->tx) {
    rc = SA_ENOMEM;
    goto fail;
  }
  ch->sock = zmq_socket(ctx, ZMQ_DEALER);
  if (!ch->sock) {
    rc = SA_EIO;
    goto fail;
  }
  int ivl_max = o.reconnect_ivl_ms * 10;
  if (sock_setup(ch->sock, &o) != 0 ||
      zmq_setsockopt(ch->sock, ZMQ_RECONNECT_IVL, &o.reconnect_ivl_ms, sizeof(int)) ||
      zmq_setsockopt(ch->sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof(int))) {
    rc = SA_EIO;
    goto fail;
  }
  char mon_addr[96];
  snprintf(mon_addr, sizeof mon_addr, "inproc://sa-rpc-mon-%p-%u", (void *)ch,
           mon_seq++);
  if (zmq_socket_monitor(ch->sock, mon_addr,
                         ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) != 0) {
    SA_LOG_ERROR("rpc: socket monitor: %s", zmq_strerror(errno));
    rc = SA_EIO;
    goto fail;
  }
  ch->mon = zmq_socket(ctx, ZMQ_PAIR);
  int zero = 0;
  if (!ch->mon || zmq_setsockopt(ch->mon, ZMQ_LINGER, &zero, sizeof zero) ||
      zmq_connect(ch->mon, mon_addr) != 0) {
    rc = SA_EIO;
    goto fail;
  }
  if (zmq_connect(ch->sock, endpoint) != 0) {
    SA_LOG_ERROR("rpc: connect %s: %s", endpoint, zmq_strerror(errno));
    rc = SA_EINVAL;
    goto fail;
  }
  int fd, mfd;
  if (sock_fd(ch->sock, &fd) != 0 || sock_fd(ch->mon, &mfd) != 0) {
    rc = SA_EIO;
    goto fail;
  }
  uv_poll_init(loop, &ch->poll, fd);
  ch->poll.data = ch;
  uv_poll_init(loop, &ch->mon_poll, mfd);
  ch->mon_poll.data = ch;
  uv_prepare_init(loop, &ch->prep);
  ch->prep.data = ch;
  uv_idle_init(loop, &ch->kick);
  ch->kick.data = ch;
  uv_unref((uv_handle_t *)&ch->kick);
  for (int i = 0; i < o.max_inflight; i++) {
    ccall_t *c = &ch->calls[i];
    c->ch = ch;
    c->idx = (uint32_t)i;
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    ch->free_idx[ch->n_free++] = (uint32_t)(o.max_inflight - 1 - i);
  }
  uv_poll_start(&ch->poll, UV_READABLE, channel_poll_cb);
  uv_poll_start(&ch->mon_poll, UV_READABLE, channel_mon_poll_cb);
  uv_prepare_start(&ch->prep, channel_prepare_cb);
  uv_unref((uv_handle_t *)&ch->prep);
  uv_unref((uv_handle_t *)&ch->poll);
  uv_unref((uv_handle_t *)&ch->mon_poll);
  *out = ch;
  return 0;

fail:
  if (ch->mon)
    zmq_close(ch->mon);
  if (ch->sock)
    zmq_close(ch->sock);
  free(ch->calls);
  free(ch->free_idx);
  free(ch->rx);
  free(ch->tx);
  free(ch);
  return rc;
}

bool sa_rpc_channel_is_connected(const sa_rpc_channel_t *ch) {
  return ch->connected;
}

int sa_rpc_channel_inflight(const sa_rpc_channel_t *ch) { return ch->n_live; }

static int channel_start(sa_rpc_channel_t *ch, bool stream, const char *method,
                         const void *body, size_t len,
                         const sa_rpc_frame_t *tensors, int n_tensors,
                         const sa_rpc_call_opts_t *opts, sa_rpc_unary_cb cb,
                         sa_rpc_stream_msg_cb msg_cb, sa_rpc_stream_end_cb end_cb,
                         void *user, uint64_t *call_id) {
  char why[160];
  int rc;
  if (!ch || !method || !method[0] || strlen(method) >= SA__RPC_MAX_METHOD ||
      (len && !body) || (stream ? (!msg_cb || !end_cb) : !cb) ||
      (opts && (opts->timeout_ms < 0 ||
                (opts->trace_id && strlen(opts->trace_id) >= SA__RPC_MAX_TRACE)))) {
    release_frames(tensors, n_tensors);
    return SA_EINVAL;
  }
  if (check_frames(tensors, n_tensors, ch->opts.max_tensors, why, sizeof why)) {
    SA_LOG_ERROR("rpc: call %s: %s", method, why);
    release_frames(tensors, n_tensors);
    return SA_EINVAL;
  }
  if (ch->closing) {
    release_frames(tensors, n_tensors);
    return SA_ECANCELED;
  }
  if (ch->ever_connected && !ch->connected && !(opts && opts->wait_for_ready)) {
    release_frames(tensors, n_tensors);
    return SA_EUNAVAIL;
  }
  if (ch->n_free == 0) {
    release_frames(tensors, n_tensors);
    return SA_EFULL;
  }
  uint32_t idx = ch->free_idx[ch->n_free - 1];
  uint64_t id = (++ch->seq << CALL_IDX_BITS) | idx;
  sa__rpc_env_out_t e = {.call_id = id,
                         .kind = SA__RPC_REQUEST,
                         .method = method,
                         .deadline_ms = opts ? (uint64_t)opts->timeout_ms : 0,
                         .trace_id = opts ? opts->trace_id : NULL,
                         .tensors = tensors,
                         .n_tensors = n_tensors};
  int n = build_msgs(ch->tx, &e, body, len);
  if (n < 0)
    return n;
  rc = send_msgs(ch->sock, ch->tx, n);
  if (rc != 0)
    return rc;
  ch->n_free--;
  ccall_t *c = &ch->calls[idx];
  c->live = true;
  c->stream = stream;
  c->cancelled = false;
  c->call_id = id;
  c->cb = cb;
  c->msg_cb = msg_cb;
  c->end_cb = end_cb;
  c->user = user;
  if (opts && opts->timeout_ms > 0)
    uv_timer_start(&c->timer, ccall_timer_cb, (uint64_t)opts->timeout_ms, 0);
  ch->n_live++;
  channel_update_ref(ch);
  if (call_id)
    *call_id = id;
  return 0;
}

int sa_rpc_channel_call(sa_rpc_channel_t *ch, const char *method,
                        const void *body, size_t len,
                        const sa_rpc_frame_t *tensors, int n_tensors,
                        const sa_rpc_call_opts_t *opts, sa_rpc_unary_cb cb,
                        void *user, uint64_t *call_id) {
  return channel_start(ch, false, method, body, len, tensors, n_tensors, opts,
                       cb, NULL, NULL, user, call_id);
}

int sa_rpc_channel_stream(sa_rpc_channel_t *ch, const char *method,
                          const void *body, size_t len,
                          const sa_rpc_frame_t *tensors, int n_tensors,
                          const sa_rpc_call_opts_t *opts,
                          sa_rpc_stream_msg_cb msg_cb,
                          sa_rpc_stream_end_cb end_cb, void *user,
                          uint64_t *call_id) {
  return channel_start(ch, true, method, body, len, tensors, n_tensors, opts,
                       NULL, msg_cb, end_cb, user, call_id);
}

int sa_rpc_channel_cancel(sa_rpc_channel_t *ch, uint64_t call_id) {
  if (!ch || ch->closing)
    return SA_EINVAL;
  ccall_t *c = ccall_find(ch, call_id);
  if (!c || c->cancelled)
    return SA_ENOENT;
  c->cancelled = true;
  sa__rpc_env_out_t e = {.call_id = call_id, .kind = SA__RPC_CANCEL};
  int n = build_msgs(ch->tx, &e, NULL, 0);
  if (n > 0) {
    int rc = send_msgs(ch->sock, ch->tx, n);
    if (rc != 0)
      SA_LOG_WARN("rpc: could not send CANCEL for call %llu: %s",
                  (unsigned long long)call_id, sa_strerror(rc));
  }
  uv_timer_start(&c->timer, ccall_timer_cb, 0, 0);
  return 0;
}

void sa_rpc_channel_destroy(sa_rpc_channel_t **pch) {
  if (!pch || !*pch)
    return;
  sa_rpc_channel_t *ch = *pch;
  *pch = NULL;
  if (ch->closing)
    return;
  /* closing first: callbacks of the calls failed below cannot start new
   * ones; the handles are still open, so their timers can be stopped */
  ch->closing = true;
  for (int i = 0; i < ch->opts.max_inflight; i++)
    if (ch->calls[i].live)
      ccall_fail(&ch->calls[i], SA_STATUS_CANCELLED, "channel closed");
  uv_close((uv_handle_t *)&ch->poll, channel_handle_closed);
  uv_close((uv_handle_t *)&ch->mon_poll, channel_handle_closed);
  uv_close((uv_handle_t *)&ch->prep, channel_handle_closed);
  uv_close((uv_handle_t *)&ch->kick, channel_handle_closed);
  ch->pending_closes = 4;
  for (int i = 0; i < ch->opts.max_inflight; i++) {
    uv_close((uv_handle_t *)&ch->calls[i].timer, ccall_timer_closed);
    ch->pending_closes++;
  }
  zmq_socket_monitor(ch->sock, NULL, 0);
  zmq_close(ch->mon);
  ch->mon = NULL;
  zmq_close(ch->sock);
  ch->sock = NULL;
}

/* ---------------------------------------------------------- blocking call */

typedef struct {
  bool done;
  sa_rpc_reply_t *reply;
  int err;
} sync_state_t;

static void sync_cb(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  (void)ch;
  sync_state_t *s = user;
  s->done = true;
  sa_rpc_reply_t *r = calloc(1, sizeof *r);
  if (!r)
    goto oom;
  r->status = res->status;
  r->status_msg = strdup(res->status_msg ? res->status_msg : "");
  if (!r->status_msg)
    goto oom;
  if (res->body_len) {
    r->body = malloc(res->body_len);
    if (!r->body)
      goto oom;
    memcpy(r->body, res->body, res->body_len);
    r->body_len = res->body_len;
  }
  if (res->n_tensors) {
    r->tensors = calloc((size_t)res->n_tensors, sizeof *r->tensors);
    if (!r->tensors)
      goto oom;
    for (int i = 0; i < res->n_tensors; i++) {
      r->tensors[i].desc = res->tensors[i].desc;
      r->tensors[i].nbytes = res->tensors[i].nbytes;
      void *d = malloc(res->tensors[i].nbytes ? res->tensors[i].nbytes : 1);
      if (!d)
        goto oom;
      memcpy(d, res->tensors[i].data, res->tensors[i].nbytes);
      r->tensors[i].data = d;
      r->n_tensors = i + 1;
    }
  }
  s->reply = r;
  return;
oom:
  sa_rpc_reply_free(&r);
  s->err = SA_ENOMEM;
}

int sa_rpc_call_sync(const char *endpoint, const char *method, const void *body,
                     size_t len, const sa_rpc_frame_t *tensors, int n_tensors,
                     int64_t timeout_ms, sa_rpc_reply_t **out) {
  *out = NULL;
  if (timeout_ms <= 0) {
    release_frames(tensors, n_tensors);
    return SA_EINVAL;
  }
  uv_loop_t loop;
  int rc = uv_loop_init(&loop);
  if (rc != 0) {
    release_frames(tensors, n_tensors);
    return SA_EIO;
  }
  sa_rpc_channel_t *ch = NULL;
  sa_rpc_opts_t o;
  sa_rpc_opts_default(&o);
  o.max_inflight = 1;
  rc = sa_rpc_channel_new(&loop, endpoint, &o, &ch);
  if (rc != 0) {
    release_frames(tensors, n_tensors);
    goto done;
  }
  sync_state_t s = {0};
  sa_rpc_call_opts_t co = {.timeout_ms = timeout_ms, .wait_for_ready = true};
  rc = sa_rpc_channel_call(ch, method, body, len, tensors, n_tensors, &co,
                           sync_cb, &s, NULL);
  if (rc == 0) {
    while (!s.done)
      uv_run(&loop, UV_RUN_ONCE);
    rc = s.err;
    *out = s.reply;
  }
  sa_rpc_channel_destroy(&ch);
done:
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0)
    SA_LOG_WARN("rpc: sync call loop still had handles at close");
  return rc;
}

void sa_rpc_reply_free(sa_rpc_reply_t **pr) {
  if (!pr || !*pr)
    return;
  sa_rpc_reply_t *r = *pr;
  *pr = NULL;
  for (int i = 0; i < r->n_tensors; i++)
    free((void *)r->tensors[i].data);
  free(r->tensors);
  free(r->body);
  free(r->status_msg);
  free(r);
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
