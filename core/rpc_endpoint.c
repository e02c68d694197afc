/*
 * rpc_endpoint — the ZeroMQ helpers and the endpoint base shared by the
 * server and the channel (see rpc_endpoint.h).
 */
#include "rpc_endpoint.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define DEFAULT_MAX_MSG ((size_t)512 << 20)

/* ----------------------------------------------------------- helpers */

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
void *sa__rpc_ctx(void) {
  pthread_once(&g_ctx_once, ctx_init);
  return g_ctx;
}

void sa_rpc_free_none(void *data, void *hint) {
  (void)data;
  (void)hint;
}

/* Marks a frame that forwards a received message (hint = its zmq_msg_t). */
void sa__rpc_forward_marker(void *data, void *hint) {
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

int sa__rpc_opts_resolve(const sa_rpc_opts_t *in, sa_rpc_opts_t *o) {
  sa_rpc_opts_default(o);
  if (!in)
    return 0;
  const char *keys[3] = {in->curve_public_key, in->curve_secret_key, in->curve_server_key};
  for (int i = 0; i < 3; i++) {
    uint8_t raw[32];
    if (keys[i] && (strlen(keys[i]) != 40 || !zmq_z85_decode(raw, keys[i]))) {
      SA_LOG_ERROR("rpc: a CurveZMQ key is not 40 characters of Z85");
      return SA_EINVAL;
    }
  }
  if (!in->curve_public_key != !in->curve_secret_key) {
    SA_LOG_ERROR("rpc: a CurveZMQ public key needs its secret key, and the other way round");
    return SA_EINVAL;
  }
  if (in->zap_domain && strlen(in->zap_domain) > 63) {
    SA_LOG_ERROR("rpc: ZAP domain over 63 bytes");
    return SA_EINVAL;
  }
  o->curve_public_key = in->curve_public_key;
  o->curve_secret_key = in->curve_secret_key;
  o->curve_server_key = in->curve_server_key;
  o->zap_domain = in->zap_domain;
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
      o->max_inflight < 1 || o->max_inflight > (int)SA__RPC_CALL_IDX_MASK ||
      o->sndhwm < 0 || o->rcvhwm < 0 || o->heartbeat_ivl_ms < 0 ||
      o->heartbeat_timeout_ms < 0) {
    SA_LOG_ERROR("rpc: invalid options (max_tensors %d, max_inflight %d)",
                 o->max_tensors, o->max_inflight);
    return SA_EINVAL;
  }
  return 0;
}

/* CurveZMQ on a socket: ROUTER is the server (consults ZAP with the
 * domain), DEALER the client (needs the server's key). */
static int curve_setup(void *s, int zmq_type, const sa_rpc_opts_t *o) {
  if (!o->curve_secret_key)
    return 0;
  if (zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, o->curve_public_key, 40) ||
      zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, o->curve_secret_key, 40))
    return SA_EIO;
  if (zmq_type == ZMQ_ROUTER) {
    int one = 1;
    if (zmq_setsockopt(s, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        (o->zap_domain && o->zap_domain[0] &&
         zmq_setsockopt(s, ZMQ_ZAP_DOMAIN, o->zap_domain, strlen(o->zap_domain))))
      return SA_EIO;
    return 0;
  }
  if (!o->curve_server_key) {
    SA_LOG_ERROR("rpc: a channel with CurveZMQ keys needs the server's public key");
    return SA_EINVAL;
  }
  return zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, o->curve_server_key, 40) ? SA_EIO : 0;
}

static int sock_setup(void *s, const sa_rpc_opts_t *o) {
  int zero = 0;
  /* ZeroMQ refuses a frame over this before buffering it (the connection is
   * dropped); a message whose frames together pass it is answered with an
   * error after decoding */
  int64_t maxmsg = o->max_msg_bytes < (size_t)INT64_MAX ? (int64_t)o->max_msg_bytes : -1;
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

bool sa__rpc_readable(void *s) {
  int ev = 0;
  size_t sz = sizeof ev;
  if (zmq_getsockopt(s, ZMQ_EVENTS, &ev, &sz) != 0)
    return false;
  return (ev & ZMQ_POLLIN) != 0;
}


/* Receives one multipart message into rx[0..cap). Frames beyond cap are
 * received and dropped; *overflow counts them. Returns the number of frames
 * kept, 0 if nothing was waiting, or -1 on a receive error. *total gets the
 * bytes of all frames. */
int sa__rpc_recv(void *sock, zmq_msg_t *rx, int cap, int *overflow,
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

void sa__rpc_close_msgs(zmq_msg_t *m, int n) {
  for (int i = 0; i < n; i++)
    zmq_msg_close(&m[i]);
}

/* Calls free_fn of frames that carry one (ownership passes in all cases). */
void sa__rpc_release_frames(const sa_rpc_frame_t *t, int n) {
  for (int i = 0; i < n; i++) {
    if (t[i].free_fn && t[i].free_fn != sa_rpc_free_none &&
        t[i].free_fn != sa__rpc_forward_marker)
      t[i].free_fn((void *)t[i].data, t[i].hint);
  }
}

int sa__rpc_check_frames(const sa_rpc_frame_t *t, int n, int max_tensors,
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
int sa__rpc_build_msgs(zmq_msg_t *out, const sa__rpc_env_out_t *e,
                      const void *body, size_t len) {
  size_t esz = sa__rpc_env_packed_size(e);
  if (esz > SA__RPC_MAX_ENVELOPE || zmq_msg_init_size(&out[0], esz) != 0) {
    sa__rpc_release_frames(e->tensors, e->n_tensors);
    return SA_ENOMEM;
  }
  sa__rpc_env_pack(e, zmq_msg_data(&out[0]), esz);
  if (zmq_msg_init_size(&out[1], len) != 0) {
    zmq_msg_close(&out[0]);
    sa__rpc_release_frames(e->tensors, e->n_tensors);
    return SA_ENOMEM;
  }
  if (len)
    memcpy(zmq_msg_data(&out[1]), body, len);
  int n = 2;
  for (int i = 0; i < e->n_tensors; i++) {
    const sa_rpc_frame_t *f = &e->tensors[i];
    zmq_msg_t *m = &out[n];
    int rc;
    if (f->free_fn == sa__rpc_forward_marker) {
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
      sa__rpc_close_msgs(out, n);
      sa__rpc_release_frames(e->tensors + i + 1, e->n_tensors - i - 1);
      return SA_ENOMEM;
    }
    n++;
  }
  return n;
}

/* Sends msgs[0..n) as one multipart message; closes every message that was
 * not handed to ZeroMQ. Returns 0, SA_EFULL (queue full), SA_EUNAVAIL
 * (unroutable peer) or SA_EIO. */
int sa__rpc_send_msgs(void *sock, zmq_msg_t *msgs, int n) {
  for (int i = 0; i < n; i++) {
    int flags = ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0);
    if (zmq_msg_send(&msgs[i], sock, flags) < 0) {
      int e = errno;
      sa__rpc_close_msgs(msgs + i, n - i);
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

/* ------------------------------------------------------------ the base */

static void ep_maybe_free(sa__rpc_ep_t *ep) {
  if (!ep->closing || !ep->started || ep->pending_closes > 0 || ep->n_live > 0)
    return;
  if (ep->sock) /* close() has not run yet */
    return;
  free(ep->rx);
  free(ep->tx);
  free(ep->timers);
  free(ep->free_idx);
  ep->vt->free(ep);
}

static void ep_handle_closed(uv_handle_t *h) {
  sa__rpc_ep_t *ep = h->data;
  ep->pending_closes--;
  ep_maybe_free(ep);
}

int sa__rpc_ep_init(sa__rpc_ep_t *ep, const sa__rpc_ep_vt_t *vt, uv_loop_t *loop,
                    const sa_rpc_opts_t *opts, int zmq_type, int rx_cap) {
  memset(ep, 0, sizeof *ep);
  if (!loop)
    return SA_EINVAL;
  ep->vt = vt;
  ep->loop = loop;
  int rc = sa__rpc_opts_resolve(opts, &ep->opts);
  if (rc)
    return rc;
  const char **strs[4] = {&ep->opts.curve_public_key, &ep->opts.curve_secret_key,
                          &ep->opts.curve_server_key, &ep->opts.zap_domain};
  for (int i = 0; i < 4; i++)
    if (*strs[i]) {
      snprintf(ep->keys[i], sizeof ep->keys[i], "%s", *strs[i]);
      *strs[i] = ep->keys[i];
    }
  if (zmq_type == ZMQ_ROUTER && ep->opts.curve_secret_key && !sa__rpc_auth_live()) {
    SA_LOG_ERROR("rpc: a server with CurveZMQ keys needs the process's authenticator "
                 "(sa_rpc_auth_new) first");
    return SA_EINVAL;
  }
  void *ctx = sa__rpc_ctx();
  if (!ctx)
    return SA_EIO;
  int n = ep->opts.max_inflight;
  ep->rx_cap = rx_cap;
  ep->rx = calloc((size_t)rx_cap, sizeof(zmq_msg_t));
  ep->tx = calloc((size_t)rx_cap, sizeof(zmq_msg_t));
  ep->timers = calloc((size_t)n, sizeof *ep->timers);
  ep->free_idx = calloc((size_t)n, sizeof *ep->free_idx);
  if (!ep->rx || !ep->tx || !ep->timers || !ep->free_idx) {
    sa__rpc_ep_abandon(ep);
    return SA_ENOMEM;
  }
  for (int i = 0; i < n; i++) /* slot 0 is taken first */
    ep->free_idx[ep->n_free++] = n - 1 - i;
  ep->sock = zmq_socket(ctx, zmq_type);
  if (!ep->sock || sock_setup(ep->sock, &ep->opts) != 0 ||
      (rc = curve_setup(ep->sock, zmq_type, &ep->opts)) != 0) {
    SA_LOG_ERROR("rpc: %s socket: %s", vt->what, zmq_strerror(errno));
    sa__rpc_ep_abandon(ep);
    return rc == SA_EINVAL ? SA_EINVAL : SA_EIO;
  }
  return 0;
}

void sa__rpc_ep_abandon(sa__rpc_ep_t *ep) {
  if (ep->sock)
    zmq_close(ep->sock);
  ep->sock = NULL;
  free(ep->rx);
  free(ep->tx);
  free(ep->timers);
  free(ep->free_idx);
  ep->rx = ep->tx = NULL;
  ep->timers = NULL;
  ep->free_idx = NULL;
}

static void ep_poll_cb(uv_poll_t *h, int status, int events) {
  (void)events;
  sa__rpc_ep_t *ep = h->data;
  if (status < 0)
    SA_LOG_ERROR("rpc: %s poll error: %s", ep->vt->what, uv_strerror(status));
  sa__rpc_ep_drain(ep);
}

static void kick_cb(uv_idle_t *h) { uv_idle_stop(h); }

static void ep_prepare_cb(uv_prepare_t *h) {
  sa__rpc_ep_t *ep = h->data;
  int got = ep->vt->drain_extra ? ep->vt->drain_extra(ep) : 0;
  got += sa__rpc_ep_drain(ep);
  if (got > 0 && !ep->closing)
    uv_idle_start(&ep->kick, kick_cb);
}

int sa__rpc_ep_start(sa__rpc_ep_t *ep) {
  int fd;
  size_t sz = sizeof fd;
  if (zmq_getsockopt(ep->sock, ZMQ_FD, &fd, &sz) != 0)
    return SA_EIO;
  uv_poll_init(ep->loop, &ep->poll, fd);
  ep->poll.data = ep;
  uv_prepare_init(ep->loop, &ep->prep);
  ep->prep.data = ep;
  uv_idle_init(ep->loop, &ep->kick);
  ep->kick.data = ep;
  uv_unref((uv_handle_t *)&ep->kick);
  for (int i = 0; i < ep->opts.max_inflight; i++)
    uv_timer_init(ep->loop, &ep->timers[i]);
  ep->started = true;
  uv_poll_start(&ep->poll, UV_READABLE, ep_poll_cb);
  uv_prepare_start(&ep->prep, ep_prepare_cb);
  uv_unref((uv_handle_t *)&ep->prep);
  return 0;
}

int sa__rpc_ep_drain(sa__rpc_ep_t *ep) {
  if (ep->draining)
    return 0; /* a callback re-entered the loop machinery */
  int got = 0;
  ep->draining = true;
  while (!ep->closing && sa__rpc_readable(ep->sock)) {
    int overflow;
    size_t total;
    int n = sa__rpc_recv(ep->sock, ep->rx, ep->rx_cap, &overflow, &total);
    if (n <= 0)
      break;
    got++;
    ep->vt->on_message(ep, n, overflow);
    sa__rpc_close_msgs(ep->rx, n);
  }
  ep->draining = false;
  return got;
}

int sa__rpc_ep_slot_take(sa__rpc_ep_t *ep) {
  if (ep->n_free == 0)
    return -1;
  ep->n_live++;
  return ep->free_idx[--ep->n_free];
}

void sa__rpc_ep_slot_put(sa__rpc_ep_t *ep, int idx) {
  ep->free_idx[ep->n_free++] = idx;
  ep->n_live--;
  ep_maybe_free(ep);
}

void sa__rpc_ep_close_handle(sa__rpc_ep_t *ep, uv_handle_t *h) {
  h->data = ep;
  ep->pending_closes++;
  uv_close(h, ep_handle_closed);
}

void sa__rpc_ep_close(sa__rpc_ep_t *ep) {
  ep->closing = true;
  sa__rpc_ep_close_handle(ep, (uv_handle_t *)&ep->poll);
  sa__rpc_ep_close_handle(ep, (uv_handle_t *)&ep->prep);
  sa__rpc_ep_close_handle(ep, (uv_handle_t *)&ep->kick);
  for (int i = 0; i < ep->opts.max_inflight; i++)
    sa__rpc_ep_close_handle(ep, (uv_handle_t *)&ep->timers[i]);
  zmq_close(ep->sock);
  ep->sock = NULL;
}
