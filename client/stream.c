/*
 * stream — one request's event stream, resumed across coordinator restarts
 * (see stream.h).
 */
#include "stream.h"

#include "sa_error.h"
#include "sa_time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

struct sa_submit_stream {
  sa_rpc_channel_t *ch;
  sa_submit_stream_cbs_t cbs;
  void *user;
  uint64_t call_id;
  char request_id[64];
  uint8_t *submit_buf; /* the packed SubmitRequest, while it may be sent again */
  size_t submit_len;
  sa_rpc_call_opts_t call_opts;
  double deadline;
  bool accepted;  /* an event came: the coordinator has the request */
  bool cancelled;
  bool in_call;   /* a Submit or Resume is in flight (else a retry waits) */
  bool ended;
  bool encoded_seen;
  int n_chains;
  bool *chain_done_seen;
  int64_t *have; /* bytes of each chain's text received */
  int resumes, gaps;
  double backoff;
  uv_timer_t retry;
};

/* Drops what a resumed stream sends again: the part of a delta we hold
 * already (by its offset), a chain_done or "encoded" seen before. Returns
 * false if nothing of ev is new. */
static bool dedupe(sa_submit_stream_t *s, Sa__SubmitEvent *ev) {
  s->accepted = true;
  if (ev->payload_case == SA__SUBMIT_EVENT__PAYLOAD_DELTA) {
    Sa__SubmitEvent__Delta *d = ev->delta;
    if (d->chain < 0 || d->chain >= s->n_chains)
      return false;
    int64_t len = (int64_t)strlen(d->text), have = s->have[d->chain];
    if (d->offset > have) {
      fprintf(stderr, "\nrequest %s: the stream of chain %d skipped bytes %lld..%lld\n",
              s->request_id, d->chain, (long long)have, (long long)d->offset);
      s->gaps++;
    } else if (d->offset < have) {
      if (d->offset + len <= have)
        return false;
      memmove(d->text, d->text + (have - d->offset), (size_t)(d->offset + len - have) + 1);
      len -= have - d->offset;
      d->offset = have;
    }
    s->have[d->chain] = d->offset + len;
    return len > 0;
  }
  if (ev->payload_case == SA__SUBMIT_EVENT__PAYLOAD_PROGRESS) {
    const Sa__Progress *p = ev->progress;
    if (!strcmp(p->stage, "encoded")) {
      if (s->encoded_seen)
        return false;
      s->encoded_seen = true;
    } else if (!strcmp(p->stage, "chain_done") && p->chain >= 0 && p->chain < s->n_chains) {
      if (s->chain_done_seen[p->chain])
        return false;
      s->chain_done_seen[p->chain] = true;
    }
  }
  return true;
}

static void on_msg(sa_rpc_channel_t *ch, const sa_rpc_result_t *msg, void *user) {
  sa_submit_stream_t *s = user;
  (void)ch;
  Sa__SubmitEvent *ev = sa__submit_event__unpack(NULL, msg->body_len, msg->body);
  if (!ev) {
    fprintf(stderr, "request %s: malformed event from the coordinator (ignored)\n",
            s->request_id);
    return;
  }
  if (dedupe(s, ev))
    s->cbs.on_event(s->user, ev);
  sa__submit_event__free_unpacked(ev, NULL);
}

static void on_end(sa_rpc_channel_t *ch, const sa_rpc_result_t *end, void *user);

/* Sends the Submit (resume false) or a Resume from the bytes we hold. */
static int start_call(sa_submit_stream_t *s, bool resume) {
  double left = s->deadline - sa_now_s();
  if (left <= 0)
    return SA_ETIMEDOUT;
  s->call_opts.timeout_ms = (int64_t)(left * 1000) + 1;
  int rc;
  if (!resume) {
    rc = sa_rpc_channel_stream(s->ch, "Coordinator/Submit", s->submit_buf, s->submit_len, NULL,
                               0, &s->call_opts, on_msg, on_end, s, &s->call_id);
  } else {
    Sa__ResumeRequest rq = SA__RESUME_REQUEST__INIT;
    rq.request_id = s->request_id;
    rq.offsets = s->have;
    rq.n_offsets = (size_t)s->n_chains;
    size_t len = sa__resume_request__get_packed_size(&rq);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
      return SA_ENOMEM;
    sa__resume_request__pack(&rq, buf);
    rc = sa_rpc_channel_stream(s->ch, "Coordinator/Resume", buf, len, NULL, 0, &s->call_opts,
                               on_msg, on_end, s, &s->call_id);
    free(buf);
  }
  s->in_call = rc == 0;
  return rc;
}

static void end_once(sa_submit_stream_t *s, int status, const char *msg) {
  if (s->ended)
    return;
  s->ended = true;
  s->cbs.on_end(s->user, status, msg ? msg : "");
}

static void on_retry(uv_timer_t *t) {
  sa_submit_stream_t *s = t->data;
  int rc = start_call(s, s->accepted || s->resumes > 0);
  if (rc)
    end_once(s, sa_err_to_status(rc), sa_strerror(rc));
}

/* The stream ended early with end->status: true if it is worth asking again
 * (the coordinator went away or is restarting; one with a journal resumes
 * the request, one without says NOT_FOUND). */
static bool should_resume(const sa_submit_stream_t *s, const sa_rpc_result_t *end) {
  if (s->cancelled || sa_now_s() >= s->deadline)
    return false;
  if (end->status == SA_STATUS_UNAVAILABLE)
    return true;
  /* a Submit with the id of a request the coordinator has: attach to it */
  if (end->status == SA_STATUS_ALREADY_EXISTS && !s->accepted && s->resumes == 0)
    return true;
  /* Resume said NOT_FOUND: the coordinator never got the Submit (it died
   * first): send it again, once */
  return end->status == SA_STATUS_NOT_FOUND && !s->accepted && s->resumes > 0 && s->submit_buf;
}

static void on_end(sa_rpc_channel_t *ch, const sa_rpc_result_t *end, void *user) {
  sa_submit_stream_t *s = user;
  (void)ch;
  s->in_call = false;
  if (end->status != SA_STATUS_OK && should_resume(s, end)) {
    if (end->status == SA_STATUS_NOT_FOUND) {
      if (s->cbs.on_retry)
        s->cbs.on_retry(s->user, end->status, end->status_msg, 0, true);
      int rc = start_call(s, false);
      free(s->submit_buf);
      s->submit_buf = NULL;
      if (rc == 0)
        return;
    } else {
      s->resumes++;
      s->backoff = s->backoff > 0 ? (s->backoff * 2 < 2.0 ? s->backoff * 2 : 2.0) : 0.2;
      if (s->cbs.on_retry)
        s->cbs.on_retry(s->user, end->status, end->status_msg, s->backoff, false);
      uv_timer_start(&s->retry, on_retry, (uint64_t)(s->backoff * 1000), 0);
      return;
    }
  }
  end_once(s, end->status, end->status_msg);
}

int sa_submit_stream_start(struct uv_loop_s *loop, sa_rpc_channel_t *ch, const char *request_id,
                           const uint8_t *submit, size_t len, int n_chains, double deadline_s,
                           const sa_submit_stream_cbs_t *cbs, void *user,
                           sa_submit_stream_t **out) {
  if (!ch || !request_id || strlen(request_id) >= 64 || n_chains < 1 || !cbs ||
      !cbs->on_event || !cbs->on_end)
    return SA_EINVAL;
  sa_submit_stream_t *s = calloc(1, sizeof *s);
  if (!s)
    return SA_ENOMEM;
  s->chain_done_seen = calloc((size_t)n_chains, sizeof *s->chain_done_seen);
  s->have = calloc((size_t)n_chains, sizeof *s->have);
  s->submit_buf = malloc(len ? len : 1);
  if (!s->chain_done_seen || !s->have || !s->submit_buf) {
    free(s->chain_done_seen);
    free(s->have);
    free(s->submit_buf);
    free(s);
    return SA_ENOMEM;
  }
  memcpy(s->submit_buf, submit, len);
  s->submit_len = len;
  s->ch = ch;
  s->cbs = *cbs;
  s->user = user;
  s->n_chains = n_chains;
  s->deadline = deadline_s;
  s->call_opts.wait_for_ready = true;
  snprintf(s->request_id, sizeof s->request_id, "%s", request_id);
  int rc = start_call(s, false);
  if (rc) {
    free(s->chain_done_seen);
    free(s->have);
    free(s->submit_buf);
    free(s);
    return rc;
  }
  uv_timer_init(loop, &s->retry);
  s->retry.data = s;
  *out = s;
  return 0;
}

void sa_submit_stream_cancel(sa_submit_stream_t *s) {
  if (!s || s->ended)
    return;
  s->cancelled = true;
  if (s->in_call) {
    sa_rpc_channel_cancel(s->ch, s->call_id); /* on_end follows, CANCELLED */
    return;
  }
  uv_timer_stop(&s->retry); /* between two streams */
  end_once(s, SA_STATUS_CANCELLED, "cancelled");
}

static void free_closed(uv_handle_t *h) {
  sa_submit_stream_t *s = h->data;
  free(s->chain_done_seen);
  free(s->have);
  free(s->submit_buf);
  free(s);
}

void sa_submit_stream_free(sa_submit_stream_t *s) {
  if (s)
    uv_close((uv_handle_t *)&s->retry, free_closed);
}

int sa_submit_stream_resumes(const sa_submit_stream_t *s) { return s->resumes; }

int sa_submit_stream_gaps(const sa_submit_stream_t *s) { return s->gaps; }
