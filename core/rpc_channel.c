/*
 * rpc_channel — the caller side of core/rpc (see rpc.h): a DEALER socket on
 * the endpoint base (rpc_endpoint.c) with a monitor for connection state,
 * and the calls in flight matched by call id, with deadlines and
 * cancellation.
 */
#include "rpc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "rpc_endpoint.h"

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
  uv_timer_t *timer; /* the base's timer of this slot */
} ccall_t;

struct sa_rpc_channel {
  sa__rpc_ep_t ep; /* first: the base */
  char endpoint[256];
  void *mon;         /* PAIR socket receiving the DEALER's monitor events */
  uv_poll_t mon_poll;
  bool connected, ever_connected;
  bool in_handshake;     /* CurveZMQ: connected, handshake not done */
  bool warned_handshake; /* a failed handshake was logged once */
  bool polls_ref;
  uint64_t seq;
  ccall_t *calls;
};

/* The base's vt->free: what the channel added. */
static void channel_free(sa__rpc_ep_t *ep) {
  sa_rpc_channel_t *ch = (sa_rpc_channel_t *)ep;
  free(ch->calls);
  free(ch);
}

/* The channel's polls keep the loop alive only while calls are in flight. */
static void channel_update_ref(sa_rpc_channel_t *ch) {
  bool want = ch->ep.n_live > 0 && !ch->ep.closing;
  if (want == ch->polls_ref)
    return;
  ch->polls_ref = want;
  if (want) {
    uv_ref((uv_handle_t *)&ch->ep.poll);
    uv_ref((uv_handle_t *)&ch->mon_poll);
  } else {
    uv_unref((uv_handle_t *)&ch->ep.poll);
    uv_unref((uv_handle_t *)&ch->mon_poll);
  }
}

static ccall_t *ccall_find(sa_rpc_channel_t *ch, uint64_t call_id) {
  uint32_t idx = (uint32_t)(call_id & SA__RPC_CALL_IDX_MASK);
  if (idx >= (uint32_t)ch->ep.opts.max_inflight)
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
  uv_timer_stop(c->timer);
  c->live = false;
  c->cancelled = false;
  sa__rpc_ep_slot_put(&ch->ep, (int)c->idx);
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
  for (int i = 0; i < ch->ep.opts.max_inflight; i++)
    if (ch->calls[i].live)
      ccall_fail(&ch->calls[i], st, msg);
}

static void channel_on_message(sa__rpc_ep_t *ep, int n, int overflow) {
  sa_rpc_channel_t *ch = (sa_rpc_channel_t *)ep;
  sa__rpc_span_t spans[SA__RPC_MAX_TENSORS + 2];
  for (int i = 0; i < n; i++) {
    spans[i].data = zmq_msg_data(&ch->ep.rx[i]);
    spans[i].len = zmq_msg_size(&ch->ep.rx[i]);
  }
  sa__rpc_limits_t lim = {ch->ep.opts.max_msg_bytes, ch->ep.opts.max_tensors};
  sa__rpc_env_t *env = &ch->ep.env;
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

static int channel_mon_drain(sa__rpc_ep_t *ep) {
  sa_rpc_channel_t *ch = (sa_rpc_channel_t *)ep;
  int got = 0;
  while (!ch->ep.closing && ch->mon && sa__rpc_readable(ch->mon)) {
    zmq_msg_t m[2];
    int overflow;
    size_t total;
    int n = sa__rpc_recv(ch->mon, m, 2, &overflow, &total);
    if (n <= 0)
      break;
    got++;
    uint16_t event = 0;
    uint32_t value = 0;
    if (zmq_msg_size(&m[0]) >= 6) {
      memcpy(&event, zmq_msg_data(&m[0]), 2);
      memcpy(&value, (char *)zmq_msg_data(&m[0]) + 2, 4);
    }
    sa__rpc_close_msgs(m, n);
    bool curve = ch->ep.opts.curve_secret_key != NULL;
    if ((event == ZMQ_EVENT_CONNECTED && !curve) || event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
      if (!ch->connected)
        SA_LOG_DEBUG("rpc: channel to %s is up", ch->endpoint);
      ch->connected = true;
      ch->ever_connected = true;
      ch->in_handshake = false;
    } else if (event == ZMQ_EVENT_CONNECTED) {
      ch->in_handshake = true;
    } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ||
               event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ||
               event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL ||
               (event == ZMQ_EVENT_DISCONNECTED && ch->in_handshake)) {
      char why[300];
      if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        snprintf(why, sizeof why, "the server at %s refused this key (ZAP status %u)",
                 ch->endpoint, (unsigned)value);
      else
        snprintf(why, sizeof why,
                 "the CurveZMQ handshake with %s failed: the server has another key than "
                 "the one given, or does not accept this one",
                 ch->endpoint);
      ch->in_handshake = false;
      ch->connected = false;
      if (ch->ep.n_live > 0 || !ch->warned_handshake)
        SA_LOG_WARN("rpc: %s; %d calls fail with UNAUTHENTICATED", why, ch->ep.n_live);
      ch->warned_handshake = true;
      channel_fail_all(ch, SA_STATUS_UNAUTHENTICATED, why);
    } else if (event == ZMQ_EVENT_DISCONNECTED) {
      bool was = ch->connected;
      ch->connected = false;
      if (was || ch->ever_connected) {
        SA_LOG_WARN("rpc: connection to %s lost; %d calls fail with UNAVAILABLE",
                    ch->endpoint, ch->ep.n_live);
        channel_fail_all(ch, SA_STATUS_UNAVAILABLE, "connection to the server lost");
      }
    }
  }
  return got;
}

static void channel_mon_poll_cb(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  channel_mon_drain(&((sa_rpc_channel_t *)h->data)->ep);
}

static void channel_on_message(sa__rpc_ep_t *ep, int n, int overflow);
static int channel_mon_drain(sa__rpc_ep_t *ep);

static const sa__rpc_ep_vt_t channel_vt = {.what = "channel",
                                           .on_message = channel_on_message,
                                           .drain_extra = channel_mon_drain,
                                           .free = channel_free};

int sa_rpc_channel_new(uv_loop_t *loop, const char *endpoint,
                       const sa_rpc_opts_t *opts, sa_rpc_channel_t **out) {
  *out = NULL;
  if (!loop || !endpoint || strlen(endpoint) >= 256)
    return SA_EINVAL;
  sa_rpc_opts_t o;
  int rc = sa__rpc_opts_resolve(opts, &o);
  if (rc)
    return rc;
  static _Atomic unsigned mon_seq;
  sa_rpc_channel_t *ch = calloc(1, sizeof *ch);
  if (!ch)
    return SA_ENOMEM;
  /* envelope + body + tensors */
  if ((rc = sa__rpc_ep_init(&ch->ep, &channel_vt, loop, opts, ZMQ_DEALER, o.max_tensors + 2))) {
    free(ch);
    return rc;
  }
  snprintf(ch->endpoint, sizeof ch->endpoint, "%s", endpoint);
  ch->calls = calloc((size_t)o.max_inflight, sizeof *ch->calls);
  if (!ch->calls) {
    rc = SA_ENOMEM;
    goto fail;
  }
  int ivl_max = o.reconnect_ivl_ms * 10;
  if (zmq_setsockopt(ch->ep.sock, ZMQ_RECONNECT_IVL, &o.reconnect_ivl_ms, sizeof(int)) ||
      zmq_setsockopt(ch->ep.sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof(int))) {
    rc = SA_EIO;
    goto fail;
  }
  char mon_addr[96];
  snprintf(mon_addr, sizeof mon_addr, "inproc://sa-rpc-mon-%p-%u", (void *)ch, mon_seq++);
  if (zmq_socket_monitor(ch->ep.sock, mon_addr,
                         ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED |
                             ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                             ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                             ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0) {
    SA_LOG_ERROR("rpc: socket monitor: %s", zmq_strerror(errno));
    rc = SA_EIO;
    goto fail;
  }
  ch->mon = zmq_socket(sa__rpc_ctx(), ZMQ_PAIR);
  int zero = 0;
  if (!ch->mon || zmq_setsockopt(ch->mon, ZMQ_LINGER, &zero, sizeof zero) ||
      zmq_connect(ch->mon, mon_addr) != 0) {
    rc = SA_EIO;
    goto fail;
  }
  if (zmq_connect(ch->ep.sock, endpoint) != 0) {
    SA_LOG_ERROR("rpc: connect %s: %s", endpoint, zmq_strerror(errno));
    rc = SA_EINVAL;
    goto fail;
  }
  int mfd;
  size_t sz = sizeof mfd;
  if (zmq_getsockopt(ch->mon, ZMQ_FD, &mfd, &sz) != 0 || (rc = sa__rpc_ep_start(&ch->ep))) {
    rc = rc ? rc : SA_EIO;
    goto fail;
  }
  uv_poll_init(loop, &ch->mon_poll, mfd);
  ch->mon_poll.data = ch;
  for (int i = 0; i < o.max_inflight; i++) {
    ccall_t *c = &ch->calls[i];
    c->ch = ch;
    c->idx = (uint32_t)i;
    c->timer = &ch->ep.timers[i];
    c->timer->data = c;
  }
  uv_poll_start(&ch->mon_poll, UV_READABLE, channel_mon_poll_cb);
  /* the polls keep the loop alive only while calls are in flight */
  uv_unref((uv_handle_t *)&ch->ep.poll);
  uv_unref((uv_handle_t *)&ch->mon_poll);
  *out = ch;
  return 0;

fail:
  if (ch->mon)
    zmq_close(ch->mon);
  sa__rpc_ep_abandon(&ch->ep);
  free(ch->calls);
  free(ch);
  return rc;
}

bool sa_rpc_channel_was_connected(const sa_rpc_channel_t *ch) { return ch->ever_connected; }

bool sa_rpc_channel_is_connected(const sa_rpc_channel_t *ch) {
  return ch->connected;
}

int sa_rpc_channel_inflight(const sa_rpc_channel_t *ch) { return ch->ep.n_live; }

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
    sa__rpc_release_frames(tensors, n_tensors);
    return SA_EINVAL;
  }
  if (sa__rpc_check_frames(tensors, n_tensors, ch->ep.opts.max_tensors, why, sizeof why)) {
    SA_LOG_ERROR("rpc: call %s: %s", method, why);
    sa__rpc_release_frames(tensors, n_tensors);
    return SA_EINVAL;
  }
  if (ch->ep.closing) {
    sa__rpc_release_frames(tensors, n_tensors);
    return SA_ECANCELED;
  }
  if (ch->ever_connected && !ch->connected && !(opts && opts->wait_for_ready)) {
    sa__rpc_release_frames(tensors, n_tensors);
    return SA_EUNAVAIL;
  }
  int slot = sa__rpc_ep_slot_take(&ch->ep);
  if (slot < 0) {
    sa__rpc_release_frames(tensors, n_tensors);
    return SA_EFULL;
  }
  uint32_t idx = (uint32_t)slot;
  uint64_t id = (++ch->seq << SA__RPC_CALL_IDX_BITS) | idx;
  sa__rpc_env_out_t e = {.call_id = id,
                         .kind = SA__RPC_REQUEST,
                         .method = method,
                         .deadline_ms = opts ? (uint64_t)opts->timeout_ms : 0,
                         .trace_id = opts ? opts->trace_id : NULL,
                         .tensors = tensors,
                         .n_tensors = n_tensors};
  int n = sa__rpc_build_msgs(ch->ep.tx, &e, body, len);
  rc = n < 0 ? n : sa__rpc_send_msgs(ch->ep.sock, ch->ep.tx, n);
  if (rc != 0) {
    sa__rpc_ep_slot_put(&ch->ep, slot);
    return rc;
  }
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
    uv_timer_start(c->timer, ccall_timer_cb, (uint64_t)opts->timeout_ms, 0);
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
  if (!ch || ch->ep.closing)
    return SA_EINVAL;
  ccall_t *c = ccall_find(ch, call_id);
  if (!c || c->cancelled)
    return SA_ENOENT;
  c->cancelled = true;
  sa__rpc_env_out_t e = {.call_id = call_id, .kind = SA__RPC_CANCEL};
  int n = sa__rpc_build_msgs(ch->ep.tx, &e, NULL, 0);
  if (n > 0) {
    int rc = sa__rpc_send_msgs(ch->ep.sock, ch->ep.tx, n);
    if (rc != 0)
      SA_LOG_WARN("rpc: could not send CANCEL for call %llu: %s",
                  (unsigned long long)call_id, sa_strerror(rc));
  }
  uv_timer_start(c->timer, ccall_timer_cb, 0, 0);
  return 0;
}

void sa_rpc_channel_destroy(sa_rpc_channel_t **pch) {
  if (!pch || !*pch)
    return;
  sa_rpc_channel_t *ch = *pch;
  *pch = NULL;
  if (ch->ep.closing)
    return;
  /* closing first: callbacks of the calls failed below cannot start new
   * ones; the handles are still open, so their timers can be stopped */
  ch->ep.closing = true;
  for (int i = 0; i < ch->ep.opts.max_inflight; i++)
    if (ch->calls[i].live)
      ccall_fail(&ch->calls[i], SA_STATUS_CANCELLED, "channel closed");
  sa__rpc_ep_close_handle(&ch->ep, (uv_handle_t *)&ch->mon_poll);
  zmq_socket_monitor(ch->ep.sock, NULL, 0);
  zmq_close(ch->mon);
  ch->mon = NULL;
  sa__rpc_ep_close(&ch->ep);
}
