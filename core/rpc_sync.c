/*
 * rpc_sync — the blocking convenience call of core/rpc (see rpc.h): a
 * private loop and a one-call channel, for CLIs and tests.
 */
#include "rpc.h"

#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "log.h"
#include "rpc_endpoint.h"

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

int sa_rpc_call_sync(const char *endpoint, const sa_rpc_opts_t *opts, const char *method,
                     const void *body, size_t len, const sa_rpc_frame_t *tensors,
                     int n_tensors, int64_t timeout_ms, sa_rpc_reply_t **out) {
  *out = NULL;
  if (timeout_ms <= 0) {
    sa__rpc_release_frames(tensors, n_tensors);
    return SA_EINVAL;
  }
  uv_loop_t loop;
  int rc = uv_loop_init(&loop);
  if (rc != 0) {
    sa__rpc_release_frames(tensors, n_tensors);
    return SA_EIO;
  }
  sa_rpc_channel_t *ch = NULL;
  sa_rpc_opts_t o;
  if (opts)
    o = *opts;
  else
    sa_rpc_opts_default(&o);
  o.max_inflight = 1;
  rc = sa_rpc_channel_new(&loop, endpoint, &o, &ch);
  if (rc != 0) {
    sa__rpc_release_frames(tensors, n_tensors);
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
