/* Tests for core/rpc: a real ROUTER server and DEALER channel on tcp
 * loopback with free ports (tcp://127.0.0.1:*), mostly on one libuv loop in
 * one thread; the blocking call runs against a server on a second thread.
 * Bad input is sent as raw frames from a plain ZeroMQ DEALER. No test
 * depends on timing: waits are "until this happens", with a generous guard
 * that fails the test if it never does. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>
#include <zmq.h>

#include "log.h"
#include "rpc.h"
#include "rpc_internal.h"
#include "sa.pb-c.h"

#define GUARD_MS 20000

/* ------------------------------------------------------------- helpers */

static void guard_cb(uv_timer_t *t) { *(bool *)t->data = true; }

/* Runs loop until cond holds or the guard fires; fails the test on the
 * guard. */
#define RUN_UNTIL(loop, cond, what)                                            \
  do {                                                                         \
    uv_timer_t g_;                                                             \
    bool f_ = false;                                                           \
    uv_timer_init((loop), &g_);                                                \
    g_.data = &f_;                                                             \
    uv_timer_start(&g_, guard_cb, GUARD_MS, 0);                                \
    while (!(cond) && !f_)                                                     \
      uv_run((loop), UV_RUN_ONCE);                                             \
    uv_close((uv_handle_t *)&g_, NULL);                                        \
    uv_run((loop), UV_RUN_NOWAIT);                                             \
    if (!(cond))                                                               \
      fail_msg("timed out waiting for: %s", (what));                           \
  } while (0)

#define run_until(loop, flag, what) RUN_UNTIL(loop, *(flag), what)

static uint64_t hash64(const void *p, size_t n) {
  /* FNV-1a over bytes, 8 at a time folded with a multiply: independent of
   * the rpc code, sensitive to every byte and to order. */
  const unsigned char *b = p;
  uint64_t h = 1469598103934665603ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, b + i, 8);
    h = (h ^ w) * 1099511628211ull;
    h ^= h >> 29;
  }
  for (; i < n; i++)
    h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

typedef struct {
  uv_loop_t loop;
  sa_rpc_server_t *srv;
  sa_rpc_channel_t *ch;
  char endpoint[256];
  /* held calls */
  sa_rpc_call_t *held[1100];
  int n_held;
  int cancels;
  sa_status_t cancel_status;
  int defer_until; /* Test/Defer replies all once this many are held */
  /* streaming producer */
  sa_rpc_call_t *stream_call;
  uint32_t stream_total, stream_sent;
  uv_timer_t stream_timer;
  int stream_efull;
} fx_t;

static void echo_handler(sa_rpc_call_t *call, void *user) {
  (void)user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  sa_rpc_frame_t fr[4];
  int n = sa_rpc_call_n_tensors(call);
  for (int i = 0; i < n && i < 4; i++)
    assert_int_equal(sa_rpc_call_forward_tensor(call, i, &fr[i]), 0);
  assert_int_equal(sa_rpc_call_reply(call, SA_STATUS_OK, NULL, body, len, fr,
                                     n < 4 ? n : 4),
                   0);
}

/* Replies with the hash of tensor 0 and the tensor itself (forwarded). */
static void sum_handler(sa_rpc_call_t *call, void *user) {
  (void)user;
  const sa_rpc_tensor_t *t = sa_rpc_call_tensor(call, 0);
  if (!t) {
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, "need a tensor", NULL, 0,
                      NULL, 0);
    return;
  }
  uint64_t h = hash64(t->data, t->nbytes);
  sa_rpc_frame_t fr;
  assert_int_equal(sa_rpc_call_forward_tensor(call, 0, &fr), 0);
  assert_int_equal(sa_rpc_call_reply(call, SA_STATUS_OK, NULL, &h, sizeof h, &fr, 1), 0);
}

static void hold_cancel_cb(sa_rpc_call_t *call, void *user) {
  fx_t *fx = user;
  fx->cancels++;
  sa_rpc_call_is_cancelled(call, &fx->cancel_status);
}

static void hold_handler(sa_rpc_call_t *call, void *user) {
  fx_t *fx = user;
  fx->held[fx->n_held++] = call;
  sa_rpc_call_set_cancel_cb(call, hold_cancel_cb, fx);
}

static void hold_stream_handler(sa_rpc_call_t *call, void *user) {
  uint32_t first = 7;
  assert_int_equal(sa_rpc_call_send(call, &first, sizeof first, NULL, 0), 0);
  hold_handler(call, user);
}

static void defer_handler(sa_rpc_call_t *call, void *user) {
  fx_t *fx = user;
  fx->held[fx->n_held++] = call;
  assert_int_equal(sa_rpc_server_inflight(fx->srv), fx->n_held);
  if (fx->n_held == fx->defer_until) {
    for (int i = 0; i < fx->n_held; i++) {
      size_t len;
      const void *b = sa_rpc_call_request(fx->held[i], &len);
      assert_int_equal(
          sa_rpc_call_reply(fx->held[i], SA_STATUS_OK, NULL, b, len, NULL, 0), 0);
    }
    fx->n_held = 0;
  }
}

static void stream_pump(fx_t *fx);
static void stream_timer_cb(uv_timer_t *t) { stream_pump(t->data); }

/* Sends the remaining stream messages; on a full queue, resumes from a timer
 * (back-pressure, nothing dropped). */
static void stream_pump(fx_t *fx) {
  while (fx->stream_sent < fx->stream_total) {
    uint32_t i = fx->stream_sent;
    int rc = sa_rpc_call_send(fx->stream_call, &i, sizeof i, NULL, 0);
    if (rc == SA_EFULL) {
      fx->stream_efull++;
      uv_timer_start(&fx->stream_timer, stream_timer_cb, 1, 0);
      return;
    }
    assert_int_equal(rc, 0);
    fx->stream_sent++;
  }
  int rc = sa_rpc_call_finish(fx->stream_call, SA_STATUS_OK, NULL);
  if (rc == SA_EFULL) { /* the end did not fit either: the call is still open */
    fx->stream_efull++;
    uv_timer_start(&fx->stream_timer, stream_timer_cb, 1, 0);
    return;
  }
  assert_int_equal(rc, 0);
  fx->stream_call = NULL;
}

static void stream_handler(sa_rpc_call_t *call, void *user) {
  fx_t *fx = user;
  size_t len;
  const void *b = sa_rpc_call_request(call, &len);
  assert_int_equal(len, 4);
  memcpy(&fx->stream_total, b, 4);
  fx->stream_sent = 0;
  fx->stream_call = call;
  stream_pump(fx);
}

static void fx_register(fx_t *fx) {
  assert_int_equal(sa_rpc_server_register(fx->srv, "Test/Echo", SA_RPC_UNARY,
                                          echo_handler, fx), 0);
  assert_int_equal(sa_rpc_server_register(fx->srv, "Test/Echo", SA_RPC_UNARY,
                                          echo_handler, fx), SA_EEXIST);
  assert_int_equal(sa_rpc_server_register(fx->srv, "Test/Sum", SA_RPC_UNARY,
                                          sum_handler, fx), 0);
  assert_int_equal(sa_rpc_server_register(fx->srv, "Test/Hold", SA_RPC_UNARY,
                                          hold_handler, fx), 0);
  assert_int_equal(sa_rpc_server_register(fx->srv, "Test/HoldStream",
                                          SA_RPC_STREAM, hold_stream_handler, fx), 0);
  assert_int_equal(sa_rpc_server_register(fx->srv, "Test/Defer", SA_RPC_UNARY,
                                          defer_handler, fx), 0);
  assert_int_equal(sa_rpc_server_register(fx->srv, "Test/Stream", SA_RPC_STREAM,
                                          stream_handler, fx), 0);
}

static fx_t *fx_new(const sa_rpc_opts_t *srv_opts, const sa_rpc_opts_t *ch_opts) {
  fx_t *fx = calloc(1, sizeof *fx);
  assert_non_null(fx);
  assert_int_equal(uv_loop_init(&fx->loop), 0);
  uv_timer_init(&fx->loop, &fx->stream_timer);
  fx->stream_timer.data = fx;
  assert_int_equal(sa_rpc_server_new(&fx->loop, srv_opts, &fx->srv), 0);
  fx_register(fx);
  assert_int_equal(sa_rpc_server_bind(fx->srv, "tcp://127.0.0.1:*"), 0);
  snprintf(fx->endpoint, sizeof fx->endpoint, "%s", sa_rpc_server_endpoint(fx->srv));
  assert_true(strncmp(fx->endpoint, "tcp://127.0.0.1:", 16) == 0);
  assert_int_equal(sa_rpc_channel_new(&fx->loop, fx->endpoint, ch_opts, &fx->ch), 0);
  return fx;
}

/* Destroys everything and checks that no handle is left on the loop. */
static void fx_free(fx_t *fx) {
  sa_rpc_channel_destroy(&fx->ch);
  sa_rpc_server_destroy(&fx->srv);
  uv_close((uv_handle_t *)&fx->stream_timer, NULL);
  assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  free(fx);
}

/* ----------------------------------------------------- client callbacks */

typedef struct {
  bool done;
  int calls;
  sa_status_t status;
  char msg[256];
  uint8_t body[64];
  size_t body_len;
  uint64_t tensor_hash;
  sa_tensor_desc_t tensor_desc;
  int n_tensors;
  /* stream */
  uint32_t next;
  bool in_order;
  sa_rpc_channel_t *cancel_on_first;
  uint64_t id;
} res_t;

static void unary_cb(sa_rpc_channel_t *ch, const sa_rpc_result_t *r, void *user) {
  (void)ch;
  res_t *s = user;
  s->calls++;
  s->done = true;
  s->status = r->status;
  snprintf(s->msg, sizeof s->msg, "%s", r->status_msg);
  s->body_len = r->body_len;
  if (r->body_len <= sizeof s->body && r->body_len)
    memcpy(s->body, r->body, r->body_len);
  s->n_tensors = r->n_tensors;
  if (r->n_tensors) {
    s->tensor_desc = r->tensors[0].desc;
    s->tensor_hash = hash64(r->tensors[0].data, r->tensors[0].nbytes);
  }
}

static void stream_msg_cb(sa_rpc_channel_t *ch, const sa_rpc_result_t *r,
                          void *user) {
  (void)ch;
  res_t *s = user;
  uint32_t v;
  assert_int_equal(r->body_len, 4);
  memcpy(&v, r->body, 4);
  if (v != s->next)
    s->in_order = false;
  s->next++;
  if (s->cancel_on_first)
    assert_int_equal(sa_rpc_channel_cancel(s->cancel_on_first, s->id), 0);
}

/* A good call that must succeed. */
static void expect_echo_ok(fx_t *fx) {
  res_t r = {0};
  const char hello[] = "hello";
  sa_rpc_call_opts_t o = {.timeout_ms = GUARD_MS, .wait_for_ready = true};
  assert_int_equal(sa_rpc_channel_call(fx->ch, "Test/Echo", hello, sizeof hello,
                                       NULL, 0, &o, unary_cb, &r, NULL), 0);
  run_until(&fx->loop, &r.done, "echo reply");
  assert_int_equal(r.status, SA_STATUS_OK);
  assert_int_equal(r.body_len, sizeof hello);
  assert_memory_equal(r.body, hello, sizeof hello);
}

/* ------------------------------------------------------------------ tests */

static void test_round_trip(void **state) {
  (void)state;
  fx_t *fx = fx_new(NULL, NULL);
  expect_echo_ok(fx);

  /* body + a copied tensor frame, trace id */
  float data[6] = {1, 2, 3, 4, 5, 6.5f};
  sa_rpc_frame_t fr = {.desc = {.dtype = SA_DTYPE_F32, .ndim = 2, .shape = {2, 3}},
                       .data = data, .nbytes = sizeof data};
  res_t r = {0};
  sa_rpc_call_opts_t o = {.timeout_ms = GUARD_MS, .trace_id = "trace-1"};
  uint64_t id = 0;
  assert_int_equal(sa_rpc_channel_call(fx->ch, "Test/Echo", "abc", 3, &fr, 1, &o,
                                       unary_cb, &r, &id), 0);
  assert_true(id != 0);
  assert_int_equal(sa_rpc_channel_inflight(fx->ch), 1);
  run_until(&fx->loop, &r.done, "echo with tensor");
  assert_int_equal(r.calls, 1);
  assert_int_equal(r.status, SA_STATUS_OK);
  assert_int_equal(r.body_len, 3);
  assert_memory_equal(r.body, "abc", 3);
  assert_int_equal(r.n_tensors, 1);
  assert_int_equal(r.tensor_desc.dtype, SA_DTYPE_F32);
  assert_int_equal(r.tensor_desc.ndim, 2);
  assert_int_equal(r.tensor_desc.shape[1], 3);
  assert_int_equal(r.tensor_hash, hash64(data, sizeof data));
  assert_int_equal(sa_rpc_channel_inflight(fx->ch), 0);

  /* unknown method through the channel */
  res_t u = {0};
  assert_int_equal(sa_rpc_channel_call(fx->ch, "Test/Nope", NULL, 0, NULL, 0, NULL,
                                       unary_cb, &u, NULL), 0);
  run_until(&fx->loop, &u.done, "unknown method reply");
  assert_int_equal(u.status, SA_STATUS_UNIMPLEMENTED);
  assert_non_null(strstr(u.msg, "Test/Nope"));

  /* bad arguments fail without calling back */
  res_t b = {0};
  sa_rpc_frame_t bad = fr;
  bad.nbytes = 5;
  assert_int_equal(sa_rpc_channel_call(fx->ch, "Test/Echo", NULL, 0, &bad, 1, NULL,
                                       unary_cb, &b, NULL), SA_EINVAL);
  assert_int_equal(sa_rpc_channel_call(fx->ch, "", NULL, 0, NULL, 0, NULL,
                                       unary_cb, &b, NULL), SA_EINVAL);
  assert_int_equal(sa_rpc_channel_cancel(fx->ch, 12345), SA_ENOENT);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
  assert_int_equal(b.calls, 0);

  sa_rpc_opts_t curve;
  sa_rpc_opts_default(&curve);
  curve.curve_public_key = "not a key"; /* CurveZMQ itself: test_rpc_curve */
  sa_rpc_channel_t *c2 = NULL;
  assert_int_equal(sa_rpc_channel_new(&fx->loop, fx->endpoint, &curve, &c2),
                   SA_EINVAL);
  assert_null(c2);
  fx_free(fx);
}

static void stream_end_cb(sa_rpc_channel_t *ch, const sa_rpc_result_t *r,
                          void *user) {
  (void)ch;
  res_t *s = user;
  s->calls++;
  s->done = true;
  s->status = r->status;
  snprintf(s->msg, sizeof s->msg, "%s", r->status_msg);
}

static void test_stream_10000(void **state) {
  (void)state;
  sa_rpc_opts_t so; /* small queues: the producer meets back-pressure */
  sa_rpc_opts_default(&so);
  so.sndhwm = 500;
  fx_t *fx = fx_new(&so, NULL);
  res_t r = {.in_order = true};
  uint32_t n = 10000;
  assert_int_equal(sa_rpc_channel_stream(fx->ch, "Test/Stream", &n, sizeof n, NULL,
                                         0, NULL, stream_msg_cb, stream_end_cb, &r,
                                         NULL), 0);
  run_until(&fx->loop, &r.done, "end of stream");
  assert_int_equal(r.status, SA_STATUS_OK);
  assert_int_equal(r.calls, 1);
  assert_int_equal(r.next, 10000);
  assert_true(r.in_order);
  print_message("stream: 10000 messages, producer saw a full queue %d times\n",
                fx->stream_efull);
  fx_free(fx);
}

static void test_deadline(void **state) {
  (void)state;
  fx_t *fx = fx_new(NULL, NULL);
  res_t r = {0};
  sa_rpc_call_opts_t o = {.timeout_ms = 100};
  assert_int_equal(sa_rpc_channel_call(fx->ch, "Test/Hold", NULL, 0, NULL, 0, &o,
                                       unary_cb, &r, NULL), 0);
  RUN_UNTIL(&fx->loop, fx->n_held == 1 || r.done, "server has the call");
  if (fx->n_held == 1) {
    int64_t left = sa_rpc_call_remaining_ms(fx->held[0]);
    assert_true(left >= 0 && left <= 100);
  }
  run_until(&fx->loop, &r.done, "client deadline");
  assert_int_equal(r.status, SA_STATUS_DEADLINE_EXCEEDED);
  /* the server's own timer fires too */
  RUN_UNTIL(&fx->loop, fx->cancels > 0, "server-side deadline");
  assert_int_equal(fx->n_held, 1);
  assert_int_equal(fx->cancel_status, SA_STATUS_DEADLINE_EXCEEDED);
  sa_status_t st;
  assert_true(sa_rpc_call_is_cancelled(fx->held[0], &st));
  /* a late reply is dropped */
  assert_int_equal(sa_rpc_call_reply(fx->held[0], SA_STATUS_OK, NULL, "late", 4,
                                     NULL, 0), SA_ETIMEDOUT);
  fx->n_held = 0;
  assert_int_equal(r.calls, 1);
  expect_echo_ok(fx);
  assert_int_equal(r.calls, 1);
  fx_free(fx);
}

static void test_cancel(void **state) {
  (void)state;
  fx_t *fx = fx_new(NULL, NULL);
  res_t r = {.in_order = true, .next = 7, .cancel_on_first = fx->ch};
  assert_int_equal(sa_rpc_channel_stream(fx->ch, "Test/HoldStream", NULL, 0, NULL,
                                         0, NULL, stream_msg_cb, stream_end_cb, &r,
                                         &r.id), 0);
  run_until(&fx->loop, &r.done, "cancelled stream end");
  assert_int_equal(r.status, SA_STATUS_CANCELLED);
  assert_int_equal(r.next, 8); /* the one message before the cancel */
  assert_int_equal(sa_rpc_channel_cancel(fx->ch, r.id), SA_ENOENT);
  RUN_UNTIL(&fx->loop, fx->cancels > 0, "cancel reaches the handler");
  assert_int_equal(fx->cancel_status, SA_STATUS_CANCELLED);
  assert_int_equal(fx->n_held, 1);
  assert_int_equal(sa_rpc_call_send(fx->held[0], "x", 1, NULL, 0), SA_ECANCELED);
  assert_int_equal(sa_rpc_call_finish(fx->held[0], SA_STATUS_OK, NULL), SA_ECANCELED);
  fx->n_held = 0;
  assert_int_equal(sa_rpc_server_inflight(fx->srv), 0);
  assert_int_equal(r.calls, 1);
  expect_echo_ok(fx);
  fx_free(fx);
}

static atomic_int g_freed;
static void free_big(void *data, void *hint) {
  (void)hint;
  free(data);
  atomic_fetch_add(&g_freed, 1);
}

static void test_big_tensor(void **state) {
  (void)state;
  fx_t *fx = fx_new(NULL, NULL);
  size_t n = (size_t)64 << 20;
  uint8_t *buf = malloc(n);
  assert_non_null(buf);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    memcpy(buf + i, &x, 8);
  }
  uint64_t want = hash64(buf, n);
  atomic_store(&g_freed, 0);
  sa_rpc_frame_t fr = {.desc = {.dtype = SA_DTYPE_U8, .ndim = 1, .shape = {(int64_t)n}},
                       .data = buf, .nbytes = n, .free_fn = free_big};
  res_t r = {0};
  /* ownership of buf passes to the call (zero-copy) */
  assert_int_equal(sa_rpc_channel_call(fx->ch, "Test/Sum", NULL, 0, &fr, 1, NULL,
                                       unary_cb, &r, NULL), 0);
  run_until(&fx->loop, &r.done, "64 MiB echo");
  assert_int_equal(r.status, SA_STATUS_OK);
  uint64_t got;
  assert_int_equal(r.body_len, 8);
  memcpy(&got, r.body, 8);
  assert_int_equal(got, want);           /* server saw the bytes intact */
  assert_int_equal(r.n_tensors, 1);
  assert_int_equal(r.tensor_desc.shape[0], (int64_t)n);
  assert_int_equal(r.tensor_hash, want); /* and they came back intact */
  fx_free(fx);
  assert_int_equal(atomic_load(&g_freed), 1);
}

static void count_cb(sa_rpc_channel_t *ch, const sa_rpc_result_t *r, void *user) {
  (void)ch;
  int *ok = user; /* user points at slot i of an int array holding i */
  uint32_t v = 0xffffffffu;
  if (r->status == SA_STATUS_OK && r->body_len == 4)
    memcpy(&v, r->body, 4);
  ok[0] = (v == (uint32_t)ok[1]) ? 1 : -1;
}

static void test_concurrent_1000(void **state) {
  (void)state;
  fx_t *fx = fx_new(NULL, NULL);
  fx->defer_until = 1000;
  static int slots[1000][2];
  for (uint32_t i = 0; i < 1000; i++) {
    slots[i][0] = 0;
    slots[i][1] = (int)i;
    assert_int_equal(sa_rpc_channel_call(fx->ch, "Test/Defer", &i, sizeof i, NULL,
                                         0, NULL, count_cb, slots[i], NULL), 0);
  }
  assert_int_equal(sa_rpc_channel_inflight(fx->ch), 1000);
  RUN_UNTIL(&fx->loop, sa_rpc_channel_inflight(fx->ch) == 0, "1000 replies");
  for (int i = 0; i < 1000; i++)
    assert_int_equal(slots[i][0], 1);
  fx_free(fx);
}

static void test_bounds(void **state) {
  (void)state;
  sa_rpc_opts_t so, co;
  sa_rpc_opts_default(&so);
  so.max_inflight = 2;
  sa_rpc_opts_default(&co);
  co.max_inflight = 4;
  fx_t *fx = fx_new(&so, &co);
  res_t r[5] = {0};
  for (int i = 0; i < 4; i++)
    assert_int_equal(sa_rpc_channel_call(fx->ch, "Test/Hold", NULL, 0, NULL, 0,
                                         NULL, unary_cb, &r[i], NULL), 0);
  /* the channel is full: immediate error, no callback */
  assert_int_equal(sa_rpc_channel_call(fx->ch, "Test/Hold", NULL, 0, NULL, 0, NULL,
                                       unary_cb, &r[4], NULL), SA_EFULL);
  /* the server holds 2; the other two get RESOURCE_EXHAUSTED */
  run_until(&fx->loop, &r[3].done, "third and fourth call refused");
  run_until(&fx->loop, &r[2].done, "third call refused");
  assert_int_equal(r[2].status, SA_STATUS_RESOURCE_EXHAUSTED);
  assert_int_equal(r[3].status, SA_STATUS_RESOURCE_EXHAUSTED);
  assert_int_equal(fx->n_held, 2);
  assert_int_equal(sa_rpc_server_inflight(fx->srv), 2);
  for (int i = 0; i < 2; i++)
    assert_int_equal(sa_rpc_call_reply(fx->held[i], SA_STATUS_ABORTED, "nope",
                                       NULL, 0, NULL, 0), 0);
  fx->n_held = 0;
  run_until(&fx->loop, &r[1].done, "held replies");
  run_until(&fx->loop, &r[0].done, "held replies");
  assert_int_equal(r[0].status, SA_STATUS_ABORTED);
  assert_string_equal(r[0].msg, "nope");
  assert_int_equal(r[4].calls, 0);
  /* channel destroy completes what is in flight with CANCELLED, inside */
  res_t last = {0};
  assert_int_equal(sa_rpc_channel_call(fx->ch, "Test/Hold", NULL, 0, NULL, 0, NULL,
                                       unary_cb, &last, NULL), 0);
  sa_rpc_channel_destroy(&fx->ch);
  assert_true(last.done);
  assert_int_equal(last.status, SA_STATUS_CANCELLED);
  /* the server call (if it arrived) is cancelled by server destroy */
  sa_rpc_server_destroy(&fx->srv);
  for (int i = 0; i < fx->n_held; i++)
    assert_int_equal(sa_rpc_call_reply(fx->held[i], SA_STATUS_OK, NULL, NULL, 0,
                                       NULL, 0), SA_EUNAVAIL);
  fx->n_held = 0;
  fx_free(fx);
}

static void test_restart(void **state) {
  (void)state;
  sa_rpc_opts_t o;
  sa_rpc_opts_default(&o);
  o.reconnect_ivl_ms = 20;
  fx_t *fx = fx_new(&o, &o);
  expect_echo_ok(fx);
  assert_true(sa_rpc_channel_is_connected(fx->ch));
  res_t pending = {0};
  assert_int_equal(sa_rpc_channel_call(fx->ch, "Test/Hold", NULL, 0, NULL, 0, NULL,
                                       unary_cb, &pending, NULL), 0);
  RUN_UNTIL(&fx->loop, fx->n_held == 1, "server holds the call");
  /* "kill" the server: socket closed under the caller (linger 0) */
  sa_rpc_server_destroy(&fx->srv);
  assert_int_equal(fx->cancels, 1);
  assert_int_equal(sa_rpc_call_reply(fx->held[0], SA_STATUS_OK, NULL, NULL, 0,
                                     NULL, 0), SA_EUNAVAIL);
  fx->n_held = 0;
  run_until(&fx->loop, &pending.done, "UNAVAILABLE after server death");
  assert_int_equal(pending.status, SA_STATUS_UNAVAILABLE);
  assert_false(sa_rpc_channel_is_connected(fx->ch));
  res_t early = {0};
  assert_int_equal(sa_rpc_channel_call(fx->ch, "Test/Echo", NULL, 0, NULL, 0, NULL,
                                       unary_cb, &early, NULL), SA_EUNAVAIL);
  /* restart on the same endpoint (the old listener may take a moment) */
  assert_int_equal(sa_rpc_server_new(&fx->loop, &o, &fx->srv), 0);
  fx_register(fx);
  int rc = -1;
  for (int i = 0; i < 400 && rc != 0; i++) {
    rc = sa_rpc_server_bind(fx->srv, fx->endpoint);
    if (rc != 0) {
      uv_sleep(25);
      uv_run(&fx->loop, UV_RUN_NOWAIT);
    }
  }
  assert_int_equal(rc, 0);
  RUN_UNTIL(&fx->loop, sa_rpc_channel_is_connected(fx->ch), "reconnect");
  expect_echo_ok(fx);
  assert_int_equal(early.calls, 0);
  fx_free(fx);
}

/* --- bad input from a raw DEALER --- */

typedef struct {
  void *ctx, *sock;
} raw_t;

static void raw_send(raw_t *raw, const sa__rpc_span_t *f, int n) {
  for (int i = 0; i < n; i++)
    assert_true(zmq_send(raw->sock, f[i].data, f[i].len,
                         i + 1 < n ? ZMQ_SNDMORE : 0) >= 0);
}

/* Waits for the server's answer, decodes its envelope. */
static Sa__Envelope *raw_reply(fx_t *fx, raw_t *raw) {
  for (int i = 0; i < GUARD_MS / 5; i++) {
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    zmq_pollitem_t it = {raw->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 5) > 0) {
      zmq_msg_t m;
      zmq_msg_init(&m);
      assert_true(zmq_msg_recv(&m, raw->sock, 0) >= 0);
      Sa__Envelope *e = sa__envelope__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
      assert_non_null(e);
      int more = zmq_msg_more(&m);
      while (more) { /* drop the rest */
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        zmq_msg_recv(&m, raw->sock, 0);
        more = zmq_msg_more(&m);
      }
      zmq_msg_close(&m);
      return e;
    }
  }
  fail_msg("no answer to bad input");
  return NULL;
}

static size_t pack_env(uint8_t *buf, uint64_t id, const char *method,
                       const sa_rpc_frame_t *t, int n) {
  sa__rpc_env_out_t e = {.call_id = id, .kind = SA__RPC_REQUEST, .method = method,
                         .tensors = t, .n_tensors = n};
  return sa__rpc_env_pack(&e, buf, 4096);
}

static void expect_reject(fx_t *fx, raw_t *raw, uint64_t id, sa_status_t st,
                          const char *needle) {
  Sa__Envelope *e = raw_reply(fx, raw);
  assert_int_equal(e->call_id, id);
  assert_int_equal(e->kind, SA__ENVELOPE__KIND__RESPONSE);
  assert_int_equal((int)e->status, (int)st);
  if (!strstr(e->status_message, needle))
    fail_msg("status message '%s' lacks '%s'", e->status_message, needle);
  sa__envelope__free_unpacked(e, NULL);
  expect_echo_ok(fx); /* and the server keeps serving */
}

static void test_bad_input(void **state) {
  (void)state;
  sa_rpc_opts_t so;
  sa_rpc_opts_default(&so);
  so.max_msg_bytes = 1 << 20;
  fx_t *fx = fx_new(&so, NULL);
  expect_echo_ok(fx);
  raw_t raw;
  raw.ctx = zmq_ctx_new();
  raw.sock = zmq_socket(raw.ctx, ZMQ_DEALER);
  int zero = 0;
  zmq_setsockopt(raw.sock, ZMQ_LINGER, &zero, sizeof zero);
  assert_int_equal(zmq_connect(raw.sock, fx->endpoint), 0);
  uint8_t env[4096];
  sa__rpc_span_t f[4];

  /* 1. truncated envelope */
  size_t n = pack_env(env, 11, "Test/Echo", NULL, 0);
  assert_true(n > 6);
  f[0] = (sa__rpc_span_t){env, 6};
  f[1] = (sa__rpc_span_t){"", 0};
  raw_send(&raw, f, 2);
  expect_reject(fx, &raw, 0, SA_STATUS_INVALID_ARGUMENT, "malformed envelope");

  /* 2. wrong frame count: one descriptor, no tensor frame */
  uint32_t payload[4] = {1, 2, 3, 4};
  sa_rpc_frame_t t = {.desc = {.dtype = SA_DTYPE_I32, .ndim = 1, .shape = {4}},
                      .data = payload, .nbytes = 16};
  n = pack_env(env, 12, "Test/Echo", &t, 1);
  f[0] = (sa__rpc_span_t){env, n};
  f[1] = (sa__rpc_span_t){"", 0};
  raw_send(&raw, f, 2);
  expect_reject(fx, &raw, 12, SA_STATUS_INVALID_ARGUMENT, "wrong frame count");

  /* 3. a descriptor claiming more bytes than sent */
  f[2] = (sa__rpc_span_t){payload, 8};
  raw_send(&raw, f, 3);
  expect_reject(fx, &raw, 12, SA_STATUS_INVALID_ARGUMENT, "claims 16 bytes");

  /* 4. unknown method */
  n = pack_env(env, 14, "Nope/Nothing", NULL, 0);
  f[0] = (sa__rpc_span_t){env, n};
  raw_send(&raw, f, 2);
  expect_reject(fx, &raw, 14, SA_STATUS_UNIMPLEMENTED, "unknown method");

  /* 5. garbage bytes (as one frame, then as two) */
  uint8_t junk[64];
  for (int i = 0; i < 64; i++)
    junk[i] = (uint8_t)(i * 37 + 11);
  f[0] = (sa__rpc_span_t){junk, sizeof junk};
  raw_send(&raw, f, 1);
  expect_reject(fx, &raw, 0, SA_STATUS_INVALID_ARGUMENT, "malformed envelope");
  f[1] = (sa__rpc_span_t){junk, 10};
  raw_send(&raw, f, 2);
  expect_reject(fx, &raw, 0, SA_STATUS_INVALID_ARGUMENT, "malformed envelope");

  /* 6. oversize message: two frames of 0.75 MiB, each under the 1 MiB
   * limit ZeroMQ enforces per frame, 1.5 MiB together: answered */
  size_t big = (size_t)3 << 18;
  uint8_t *blob = calloc(1, big);
  n = pack_env(env, 16, "Test/Echo", NULL, 0);
  f[0] = (sa__rpc_span_t){env, n};
  f[1] = (sa__rpc_span_t){blob, big};
  f[2] = (sa__rpc_span_t){blob, big};
  raw_send(&raw, f, 3);
  expect_reject(fx, &raw, 16, SA_STATUS_RESOURCE_EXHAUSTED, "exceeds the limit");
  free(blob);

  /* 7. a response-kind message sent to a server */
  sa__rpc_env_out_t e = {.call_id = 17, .kind = SA__RPC_RESPONSE};
  n = sa__rpc_env_pack(&e, env, sizeof env);
  f[0] = (sa__rpc_span_t){env, n};
  f[1] = (sa__rpc_span_t){"", 0};
  raw_send(&raw, f, 2);
  expect_reject(fx, &raw, 17, SA_STATUS_INVALID_ARGUMENT, "REQUEST");

  /* 8. one frame over the limit is refused by ZeroMQ before it is
   * buffered: the connection drops, nothing is answered, the server goes
   * on serving */
  n = pack_env(env, 18, "Test/Echo", NULL, 0);
  f[0] = (sa__rpc_span_t){env, n};
  blob = calloc(1, (size_t)3 << 19);
  f[1] = (sa__rpc_span_t){blob, (size_t)3 << 19};
  raw_send(&raw, f, 2);
  free(blob);
  expect_echo_ok(fx);

  zmq_close(raw.sock);
  zmq_ctx_term(raw.ctx);
  fx_free(fx);
}

/* Direct checks of the decoder on crafted frames. */
static void test_decode(void **state) {
  (void)state;
  sa__rpc_limits_t lim = {1 << 20, 4};
  static sa__rpc_env_t out;
  char err[256];
  uint8_t env[4096];
  int16_t data[6] = {0};
  sa_rpc_frame_t t = {.desc = {.dtype = SA_DTYPE_BF16, .ndim = 2, .shape = {2, 3}},
                      .data = data, .nbytes = 12};
  size_t n = pack_env(env, 5, "A/B", &t, 1);
  sa__rpc_span_t f[3] = {{env, n}, {"xy", 2}, {data, 12}};
  assert_int_equal(sa__rpc_decode_frames(f, 3, &lim, &out, err, sizeof err), 0);
  assert_int_equal(out.call_id, 5);
  assert_string_equal(out.method, "A/B");
  assert_int_equal(out.n_tensors, 1);
  assert_int_equal(out.tensors[0].desc.shape[1], 3);
  assert_ptr_equal(out.tensors[0].data, data);
  assert_int_equal(out.body_len, 2);
  /* shape and nbytes disagree */
  t.nbytes = 14;
  n = pack_env(env, 5, "A/B", &t, 1);
  f[0].len = n;
  f[2].len = 14;
  assert_int_equal(sa__rpc_decode_frames(f, 3, &lim, &out, err, sizeof err), SA_EPROTO);
  assert_non_null(strstr(err, "shape needs 12"));
  assert_true(out.have_call_id);
  /* negative dim */
  t.nbytes = 12;
  t.desc.shape[0] = -2;
  n = pack_env(env, 5, "A/B", &t, 1);
  f[0].len = n;
  f[2].len = 12;
  assert_int_equal(sa__rpc_decode_frames(f, 3, &lim, &out, err, sizeof err), SA_EPROTO);
  /* too many descriptors */
  sa_rpc_frame_t many[5];
  for (int i = 0; i < 5; i++)
    many[i] = (sa_rpc_frame_t){.desc = {.dtype = SA_DTYPE_U8, .ndim = 0}, .nbytes = 1};
  n = pack_env(env, 6, "A/B", many, 5);
  f[0].len = n;
  assert_int_equal(sa__rpc_decode_frames(f, 3, &lim, &out, err, sizeof err), SA_EPROTO);
  assert_non_null(strstr(err, "exceed the limit of 4"));
  /* request without call id / method */
  n = pack_env(env, 0, "A/B", NULL, 0);
  f[0].len = n;
  assert_int_equal(sa__rpc_decode_frames(f, 2, &lim, &out, err, sizeof err), SA_EPROTO);
  assert_false(out.have_call_id);
  n = pack_env(env, 3, NULL, NULL, 0);
  f[0].len = n;
  assert_int_equal(sa__rpc_decode_frames(f, 2, &lim, &out, err, sizeof err), SA_EPROTO);
  assert_non_null(strstr(err, "without a method"));
  /* empty */
  assert_int_equal(sa__rpc_decode_frames(f, 0, &lim, &out, err, sizeof err), SA_EPROTO);
  /* dtype out of range, written by hand: field 8 (tensors) { dtype=99 } */
  n = pack_env(env, 3, "A/B", NULL, 0);
  env[n++] = 0x42; /* field 8, length-delimited */
  env[n++] = 0x02;
  env[n++] = 0x08; /* field 1 varint */
  env[n++] = 99;
  f[0].len = n;
  static const uint8_t one = 0;
  f[2] = (sa__rpc_span_t){&one, 0};
  assert_int_equal(sa__rpc_decode_frames(f, 3, &lim, &out, err, sizeof err), SA_EPROTO);
}

/* --- blocking call against a server on another thread --- */

typedef struct {
  uv_loop_t loop;
  uv_async_t stop;
  sa_rpc_server_t *srv;
  char endpoint[256];
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool ready;
} thr_srv_t;

static void thr_stop_cb(uv_async_t *a) {
  thr_srv_t *t = a->data;
  sa_rpc_server_destroy(&t->srv);
  uv_close((uv_handle_t *)a, NULL);
}

static void *thr_main(void *arg) {
  thr_srv_t *t = arg;
  uv_loop_init(&t->loop);
  uv_async_init(&t->loop, &t->stop, thr_stop_cb);
  t->stop.data = t;
  sa_rpc_server_new(&t->loop, NULL, &t->srv);
  sa_rpc_server_register(t->srv, "Test/Echo", SA_RPC_UNARY, echo_handler, NULL);
  sa_rpc_server_bind(t->srv, "tcp://127.0.0.1:*");
  pthread_mutex_lock(&t->mu);
  snprintf(t->endpoint, sizeof t->endpoint, "%s", sa_rpc_server_endpoint(t->srv));
  t->ready = true;
  pthread_cond_signal(&t->cv);
  pthread_mutex_unlock(&t->mu);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  uv_loop_close(&t->loop);
  return NULL;
}

static void test_sync(void **state) {
  (void)state;
  thr_srv_t t = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, thr_main, &t), 0);
  pthread_mutex_lock(&t.mu);
  while (!t.ready)
    pthread_cond_wait(&t.cv, &t.mu);
  pthread_mutex_unlock(&t.mu);
  uint8_t vec[32];
  for (int i = 0; i < 32; i++)
    vec[i] = (uint8_t)(255 - i);
  sa_rpc_frame_t fr = {.desc = {.dtype = SA_DTYPE_U8, .ndim = 1, .shape = {32}},
                       .data = vec, .nbytes = 32};
  sa_rpc_reply_t *r = NULL;
  assert_int_equal(sa_rpc_call_sync(t.endpoint, NULL, "Test/Echo", "ping", 4, &fr, 1,
                                    GUARD_MS, &r), 0);
  assert_non_null(r);
  assert_int_equal(r->status, SA_STATUS_OK);
  assert_int_equal(r->body_len, 4);
  assert_memory_equal(r->body, "ping", 4);
  assert_int_equal(r->n_tensors, 1);
  assert_memory_equal(r->tensors[0].data, vec, 32);
  sa_rpc_reply_free(&r);
  assert_null(r);
  assert_int_equal(sa_rpc_call_sync(t.endpoint, NULL, "Test/Missing", NULL, 0, NULL, 0,
                                    GUARD_MS, &r), 0);
  assert_int_equal(r->status, SA_STATUS_UNIMPLEMENTED);
  sa_rpc_reply_free(&r);
  uv_async_send(&t.stop);
  pthread_join(th, NULL);
}

int main(void) {
  sa_log_init("test_rpc");
  if (getenv("TEST_RPC_FILTER")) /* e.g. TEST_RPC_FILTER=test_restart */
    cmocka_set_test_filter(getenv("TEST_RPC_FILTER"));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_decode),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_stream_10000),
      cmocka_unit_test(test_deadline),
      cmocka_unit_test(test_cancel),
      cmocka_unit_test(test_big_tensor),
      cmocka_unit_test(test_concurrent_1000),
      cmocka_unit_test(test_bounds),
      cmocka_unit_test(test_restart),
      cmocka_unit_test(test_bad_input),
      cmocka_unit_test(test_sync),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
