/*
 * encoder_service — Encoder/Encode: admission on the loop, decode + mel +
 * encoder on worker threads, replies on the loop (see encoder_service.h).
 */
#include "encoder_service.h"
#include "sa_time.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "audio.h"
#include "log.h"
#include "sa.pb-c.h"
#include "sa_error.h"
#include "tensor.h"

typedef struct job {
  struct job *next;
  sa_encoder_service_t *svc;
  sa_rpc_call_t *call; /* loop thread only */
  Sa__EncodeRequest *req;
  sa_dtype_t out_dtype;
  atomic_int cancelled;
  /* results, written by the worker */
  int rc;
  sa_status_t status;
  char err[256];
  void *rows; /* malloc'ed; ownership passes to the rpc layer */
  size_t rows_bytes;
  int64_t n_rows;
  int *chunk_tokens;
  int n_chunks;
  double audio_s;
  double encode_ms;
} job_t;

typedef struct {
  sa_encoder_service_t *svc;
  sa_audio_encoder_ws_t *ws;
  pthread_t thr;
  bool started;
} worker_t;

struct sa_encoder_service {
  uv_loop_t *loop;
  sa_rpc_server_t *srv;
  const sa_audio_encoder_t *enc;
  sa_encoder_service_opts_t opts;
  sa_audio_limits_t limits;
  uv_async_t async;
  bool async_init;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_mutex_t backend_lock;
  job_t *q_head, *q_tail;       /* admitted, waiting for a worker */
  job_t *done_head, *done_tail; /* finished, waiting for the loop */
  bool stopping;
  int in_service; /* loop thread: admitted and not yet replied */
  worker_t *workers;
  int gate_fd;
  uint64_t busy_ns;   /* under mu */
  uint64_t load_busy_prev, load_wall_prev;
};

static void job_free(job_t *j) {
  if (!j)
    return;
  if (j->req)
    sa__encode_request__free_unpacked(j->req, NULL);
  free(j->rows);
  free(j->chunk_tokens);
  free(j);
}

static void free_rows(void *data, void *hint) {
  (void)hint;
  free(data);
}

/* ------------------------------------------------------------- worker side */

static void job_fail(job_t *j, int rc, sa_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void job_fail(job_t *j, int rc, sa_status_t st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(j->err, sizeof j->err, fmt, ap);
  va_end(ap);
  j->rc = rc;
  j->status = st;
}

/* Converts n f32 values to 16-bit ones in place (dst[i] only overwrites bytes
 * of src elements <= i, which were read already). */
static void narrow_in_place(void *buf, size_t n, sa_dtype_t dt) {
  float *src = buf;
  uint16_t *dst = buf;
  for (size_t i = 0; i < n; i++) {
    float f = src[i];
    dst[i] = dt == SA_DTYPE_BF16 ? sa_f32_to_bf16(f) : sa_f32_to_f16(f);
  }
}

static void run_job(worker_t *w, job_t *j) {
  sa_encoder_service_t *svc = w->svc;
  const Sa__EncodeRequest *rq = j->req;
  uint64_t t0 = sa_now_ns();
  sa_audio_limits_t lim = svc->limits;
  if (rq->max_audio_s > 0 && rq->max_audio_s < lim.max_seconds)
    lim.max_seconds = rq->max_audio_s;
  float *pcm = NULL;
  size_t n = 0;
  char why[200];
  int rc = sa_audio_decode(rq->audio.data, rq->audio.len, &lim, &pcm, &n, why,
                           sizeof why);
  if (rc != 0) {
    job_fail(j, rc, rc == SA_EINVAL ? SA_STATUS_INVALID_ARGUMENT
                                    : sa_err_to_status(rc),
             "audio: %s", why);
    return;
  }
  int n_chunks = 0;
  int64_t total = 0;
  sa_audio_count_tokens((int64_t)n, &n_chunks, &total);
  if (rq->max_tokens > 0 && total > rq->max_tokens) {
    job_fail(j, SA_EINVAL, SA_STATUS_INVALID_ARGUMENT,
             "audio of %.2f s makes %lld audio tokens, over max_tokens %d",
             (double)n / SA_AUDIO_SAMPLE_RATE, (long long)total,
             rq->max_tokens);
    goto out;
  }
  const int H = sa_audio_encoder_hidden(svc->enc);
  j->chunk_tokens = calloc((size_t)n_chunks + 1, sizeof(int));
  j->rows_bytes = (size_t)total * H * sizeof(float);
  j->rows = malloc(j->rows_bytes ? j->rows_bytes : 1);
  if (!j->chunk_tokens || !j->rows) {
    job_fail(j, SA_ENOMEM, SA_STATUS_RESOURCE_EXHAUSTED,
             "out of memory for %lld rows", (long long)total);
    goto out;
  }
  int64_t got = 0;
  rc = sa_audio_encoder_encode_pcm(svc->enc, w->ws, pcm, n, j->rows, total,
                                   j->chunk_tokens, n_chunks, &got,
                                   &svc->backend_lock);
  if (rc != 0 || got != total) {
    job_fail(j, rc ? rc : SA_EINTERNAL, SA_STATUS_INTERNAL,
             "encoder failed: %s", sa_strerror(rc ? rc : SA_EINTERNAL));
    goto out;
  }
  if (j->out_dtype != SA_DTYPE_F32) {
    narrow_in_place(j->rows, (size_t)total * H, j->out_dtype);
    j->rows_bytes = (size_t)total * H * sizeof(uint16_t);
  }
  j->n_rows = total;
  j->n_chunks = n_chunks;
  j->audio_s = (double)n / SA_AUDIO_SAMPLE_RATE;
  j->rc = 0;
  j->status = SA_STATUS_OK;
out:
  free(pcm);
  j->encode_ms = (double)(sa_now_ns() - t0) / 1e6;
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  sa_encoder_service_t *svc = w->svc;
  for (;;) {
    pthread_mutex_lock(&svc->mu);
    while (!svc->stopping && !svc->q_head)
      pthread_cond_wait(&svc->cv, &svc->mu);
    if (svc->stopping) {
      pthread_mutex_unlock(&svc->mu);
      break;
    }
    job_t *j = svc->q_head;
    svc->q_head = j->next;
    if (!svc->q_head)
      svc->q_tail = NULL;
    j->next = NULL;
    pthread_mutex_unlock(&svc->mu);

    if (svc->gate_fd >= 0) { /* test only: wait for the test to let us go */
      char c;
      ssize_t r;
      do {
        r = read(svc->gate_fd, &c, 1);
      } while (r < 0 && errno == EINTR);
    }
    uint64_t t0 = sa_now_ns();
    if (atomic_load(&j->cancelled))
      job_fail(j, SA_ECANCELED, SA_STATUS_CANCELLED, "cancelled");
    else
      run_job(w, j);
    uint64_t dt = sa_now_ns() - t0;

    pthread_mutex_lock(&svc->mu);
    svc->busy_ns += dt;
    if (svc->done_tail)
      svc->done_tail->next = j;
    else
      svc->done_head = j;
    svc->done_tail = j;
    pthread_mutex_unlock(&svc->mu);
    uv_async_send(&svc->async);
  }
  return NULL;
}

/* --------------------------------------------------------------- loop side */

static void reply_job(sa_encoder_service_t *svc, job_t *j) {
  if (j->status != SA_STATUS_OK) {
    SA_LOG_INFO("encode %s: %s: %s", j->req && j->req->request_id[0]
                                         ? j->req->request_id : "-",
                sa_status_name(j->status), j->err);
    sa_rpc_call_reply(j->call, j->status, j->err, NULL, 0, NULL, 0);
    goto done;
  }
  Sa__EncodeResponse resp = SA__ENCODE_RESPONSE__INIT;
  int32_t *ct = calloc((size_t)j->n_chunks + 1, sizeof(int32_t));
  if (!ct) {
    sa_rpc_call_reply(j->call, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory",
                      NULL, 0, NULL, 0);
    goto done;
  }
  for (int i = 0; i < j->n_chunks; i++)
    ct[i] = j->chunk_tokens[i];
  resp.n_chunk_tokens = (size_t)j->n_chunks;
  resp.chunk_tokens = ct;
  resp.hidden_size = sa_audio_encoder_hidden(svc->enc);
  resp.total_tokens = j->n_rows;
  resp.audio_seconds = j->audio_s;
  resp.sample_rate = SA_AUDIO_SAMPLE_RATE;
  resp.encode_ms = j->encode_ms;
  size_t blen = sa__encode_response__get_packed_size(&resp);
  uint8_t *body = malloc(blen + 1);
  if (!body) {
    free(ct);
    sa_rpc_call_reply(j->call, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory",
                      NULL, 0, NULL, 0);
    goto done;
  }
  sa__encode_response__pack(&resp, body);
  sa_rpc_frame_t fr = {.desc = {.dtype = j->out_dtype, .ndim = 2,
                                .shape = {j->n_rows, resp.hidden_size}},
                       .data = j->rows,
                       .nbytes = j->rows_bytes,
                       .free_fn = free_rows};
  j->rows = NULL; /* the rpc layer frees it now, on every path */
  int rc = sa_rpc_call_reply(j->call, SA_STATUS_OK, NULL, body, blen, &fr, 1);
  if (rc != 0)
    SA_LOG_WARN("encode %s: reply not delivered: %s",
                j->req->request_id[0] ? j->req->request_id : "-",
                sa_strerror(rc));
  else
    SA_LOG_DEBUG("encode %s: %lld rows in %.1f ms",
                 j->req->request_id[0] ? j->req->request_id : "-",
                 (long long)j->n_rows, j->encode_ms);
  free(body);
  free(ct);
done:
  j->call = NULL;
  svc->in_service--;
  job_free(j);
}

static void async_cb(uv_async_t *h) {
  sa_encoder_service_t *svc = h->data;
  pthread_mutex_lock(&svc->mu);
  job_t *list = svc->done_head;
  svc->done_head = svc->done_tail = NULL;
  pthread_mutex_unlock(&svc->mu);
  while (list) {
    job_t *next = list->next;
    reply_job(svc, list);
    list = next;
  }
}

static void on_cancel(sa_rpc_call_t *call, void *user) {
  (void)call;
  job_t *j = user;
  atomic_store(&j->cancelled, 1);
}

static void reply_error(sa_rpc_call_t *call, sa_status_t st, const char *fmt,
                        ...) __attribute__((format(printf, 3, 4)));
static void reply_error(sa_rpc_call_t *call, sa_status_t st, const char *fmt,
                        ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  SA_LOG_INFO("encode: %s: %s", sa_status_name(st), msg);
  sa_rpc_call_reply(call, st, msg, NULL, 0, NULL, 0);
}

static void on_encode(sa_rpc_call_t *call, void *user) {
  sa_encoder_service_t *svc = user;
  if (svc->stopping) {
    reply_error(call, SA_STATUS_UNAVAILABLE, "encoder is shutting down");
    return;
  }
  if (sa_rpc_call_n_tensors(call) != 0) {
    reply_error(call, SA_STATUS_INVALID_ARGUMENT,
                "Encode takes no tensor frames (got %d)",
                sa_rpc_call_n_tensors(call));
    return;
  }
  size_t len = 0;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__EncodeRequest *rq =
      sa__encode_request__unpack(NULL, len, (const uint8_t *)body);
  if (!rq) {
    reply_error(call, SA_STATUS_INVALID_ARGUMENT,
                "malformed EncodeRequest (%zu bytes)", len);
    return;
  }
  sa_dtype_t dt = SA_DTYPE_BF16; /* the proto's native dtype */
  if (rq->out_dtype_set) {
    switch (rq->out_dtype) {
    case SA__DTYPE__DTYPE_F32: dt = SA_DTYPE_F32; break;
    case SA__DTYPE__DTYPE_BF16: dt = SA_DTYPE_BF16; break;
    case SA__DTYPE__DTYPE_F16: dt = SA_DTYPE_F16; break;
    default:
      reply_error(call, SA_STATUS_INVALID_ARGUMENT,
                  "out_dtype %d not supported (f32, f16 or bf16)",
                  (int)rq->out_dtype);
      sa__encode_request__free_unpacked(rq, NULL);
      return;
    }
  }
  const char *bad = NULL;
  char why[160];
  if (rq->audio.len == 0)
    bad = "empty audio";
  else if (rq->max_audio_s < 0)
    bad = "max_audio_s is negative";
  else if (rq->max_tokens < 0)
    bad = "max_tokens is negative";
  else if (rq->audio.len > svc->limits.max_bytes) {
    snprintf(why, sizeof why, "audio of %zu bytes is over the limit of %zu",
             rq->audio.len, svc->limits.max_bytes);
    bad = why;
  }
  if (bad) {
    reply_error(call, SA_STATUS_INVALID_ARGUMENT, "%s", bad);
    sa__encode_request__free_unpacked(rq, NULL);
    return;
  }
  int cap = svc->opts.threads + svc->opts.queue;
  if (svc->in_service >= cap) {
    reply_error(call, SA_STATUS_RESOURCE_EXHAUSTED,
                "encoder queue full (%d requests in service, %d workers + "
                "%d queued)", svc->in_service, svc->opts.threads,
                svc->opts.queue);
    sa__encode_request__free_unpacked(rq, NULL);
    return;
  }
  job_t *j = calloc(1, sizeof *j);
  if (!j) {
    reply_error(call, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    sa__encode_request__free_unpacked(rq, NULL);
    return;
  }
  j->svc = svc;
  j->call = call;
  j->req = rq;
  j->out_dtype = dt;
  atomic_init(&j->cancelled, 0);
  svc->in_service++;
  sa_rpc_call_set_cancel_cb(call, on_cancel, j);
  pthread_mutex_lock(&svc->mu);
  if (svc->q_tail)
    svc->q_tail->next = j;
  else
    svc->q_head = j;
  svc->q_tail = j;
  pthread_cond_signal(&svc->cv);
  pthread_mutex_unlock(&svc->mu);
}

int sa_encoder_service_depth(const sa_encoder_service_t *svc) {
  return svc->in_service;
}

float sa_encoder_service_load(sa_encoder_service_t *svc) {
  pthread_mutex_lock(&svc->mu);
  uint64_t busy = svc->busy_ns;
  pthread_mutex_unlock(&svc->mu);
  uint64_t wall = sa_now_ns();
  uint64_t db = busy - svc->load_busy_prev, dw = wall - svc->load_wall_prev;
  svc->load_busy_prev = busy;
  svc->load_wall_prev = wall;
  if (dw == 0)
    return 0.0f;
  double l = (double)db / ((double)dw * svc->opts.threads);
  return (float)(l > 1.0 ? 1.0 : l);
}

static void svc_free(sa_encoder_service_t *svc) {
  if (svc->workers) {
    for (int i = 0; i < svc->opts.threads; i++)
      sa_audio_encoder_ws_destroy(&svc->workers[i].ws);
    free(svc->workers);
  }
  if (svc->gate_fd >= 0)
    close(svc->gate_fd);
  pthread_mutex_destroy(&svc->mu);
  pthread_cond_destroy(&svc->cv);
  pthread_mutex_destroy(&svc->backend_lock);
  free(svc);
}

static void async_close_cb(uv_handle_t *h) { svc_free(h->data); }

int sa_encoder_service_start(struct uv_loop_s *loop, sa_rpc_server_t *srv,
                             const sa_audio_encoder_t *enc,
                             const sa_encoder_service_opts_t *opts,
                             sa_encoder_service_t **out) {
  if (!loop || !srv || !enc || !opts || !out || opts->threads < 1 ||
      opts->threads > 256 || opts->queue < 0)
    return SA_EINVAL;
  *out = NULL;
  sa_encoder_service_t *svc = calloc(1, sizeof *svc);
  if (!svc)
    return SA_ENOMEM;
  svc->loop = loop;
  svc->srv = srv;
  svc->enc = enc;
  svc->opts = *opts;
  svc->opts.test_gate = NULL;
  svc->gate_fd = -1;
  sa_audio_limits_default(&svc->limits);
  if (opts->max_bytes)
    svc->limits.max_bytes = opts->max_bytes;
  if (opts->max_seconds > 0)
    svc->limits.max_seconds = opts->max_seconds;
  pthread_mutex_init(&svc->mu, NULL);
  pthread_cond_init(&svc->cv, NULL);
  pthread_mutex_init(&svc->backend_lock, NULL);
  svc->load_wall_prev = sa_now_ns();
  int rc = 0;
  if (opts->test_gate) {
    /* O_RDWR keeps the FIFO open without a writer, so reads block. */
    svc->gate_fd = open(opts->test_gate, O_RDWR | O_CLOEXEC);
    if (svc->gate_fd < 0) {
      SA_LOG_ERROR("cannot open test gate %s: %s", opts->test_gate,
                   strerror(errno));
      rc = SA_EINVAL;
      goto fail;
    }
  }
  svc->workers = calloc((size_t)opts->threads, sizeof *svc->workers);
  if (!svc->workers) {
    rc = SA_ENOMEM;
    goto fail;
  }
  for (int i = 0; i < opts->threads; i++) {
    svc->workers[i].svc = svc;
    if ((rc = sa_audio_encoder_ws_new(enc, &svc->workers[i].ws)) != 0)
      goto fail;
  }
  if ((rc = sa_rpc_server_register(srv, "Encoder/Encode", SA_RPC_UNARY,
                                   on_encode, svc)) != 0)
    goto fail;
  if (uv_async_init(loop, &svc->async, async_cb) != 0) {
    rc = SA_EIO;
    goto fail; /* the method stays registered with a dead user: the caller
                  must destroy the server on this error */
  }
  svc->async.data = svc;
  svc->async_init = true;
  for (int i = 0; i < opts->threads; i++) {
    if (pthread_create(&svc->workers[i].thr, NULL, worker_main,
                       &svc->workers[i]) != 0) {
      SA_LOG_ERROR("cannot start encoder worker %d", i);
      sa_encoder_service_stop(&svc);
      return SA_ENOMEM;
    }
    svc->workers[i].started = true;
  }
  *out = svc;
  return 0;
fail:
  svc_free(svc);
  return rc;
}

void sa_encoder_service_stop(sa_encoder_service_t **svcp) {
  if (!svcp || !*svcp)
    return;
  sa_encoder_service_t *svc = *svcp;
  *svcp = NULL;
  pthread_mutex_lock(&svc->mu);
  svc->stopping = true;
  pthread_cond_broadcast(&svc->cv);
  pthread_mutex_unlock(&svc->mu);
  if (svc->gate_fd >= 0) { /* release workers parked on the test gate */
    char g[256];
    memset(g, 'g', sizeof g);
    if (write(svc->gate_fd, g, (size_t)svc->opts.threads) < 0)
      SA_LOG_WARN("test gate: %s", strerror(errno));
  }
  for (int i = 0; i < svc->opts.threads; i++)
    if (svc->workers[i].started)
      pthread_join(svc->workers[i].thr, NULL);
  /* Finished work is replied; work never started is refused. */
  async_cb(&svc->async);
  job_t *q = svc->q_head;
  svc->q_head = svc->q_tail = NULL;
  while (q) {
    job_t *next = q->next;
    job_fail(q, SA_EUNAVAIL, SA_STATUS_UNAVAILABLE,
             "encoder is shutting down");
    reply_job(svc, q);
    q = next;
  }
  if (svc->async_init)
    uv_close((uv_handle_t *)&svc->async, async_close_cb);
  else
    svc_free(svc);
}
