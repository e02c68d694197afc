/*
 * submit — client RPCs and the events they stream (see submit.h).
 */
#include "submit.h"

#include "log.h"
#include "sa_error.h"
#include "sa_time.h"
#include "sampler.h"
#include "utf8.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One client's Submit stream. Lives from the handler until the request's
 * end (or, if the stream could not be finished, for good with r NULL). */
typedef struct {
  coord_submit_t *sub;
  sa_rpc_call_t *call;
  coord_request_t *r; /* NULL once the request ended */
  char request_id[64];
} client_t;

void coord_submit_init(coord_submit_t *sub, const coord_opts_t *opts, coord_requests_t *set,
                       coord_registry_t *reg, const coord_pipeline_t *pl) {
  sub->opts = opts;
  sub->set = set;
  sub->reg = reg;
  sub->pl = pl;
}

/* ------------------------------------------------------------ events out */

static void send_event(client_t *cl, Sa__SubmitEvent *ev) {
  ev->request_id = (char *)cl->request_id;
  size_t len = sa__submit_event__get_packed_size(ev);
  uint8_t stackbuf[4096];
  uint8_t *buf = len <= sizeof stackbuf ? stackbuf : malloc(len);
  if (!buf) {
    SA_LOG_WARN("request %s: out of memory for an event; cancelling", cl->request_id);
    if (cl->r)
      coord_request_cancel(cl->sub->set, cl->r);
    return;
  }
  sa__submit_event__pack(ev, buf);
  int rc = sa_rpc_call_send(cl->call, buf, len, NULL, 0);
  if (buf != stackbuf)
    free(buf);
  if (rc == SA_EFULL)
    SA_LOG_WARN("request %s: client is not reading; an event was dropped", cl->request_id);
  else if ((rc == SA_EUNAVAIL || rc == SA_ECANCELED || rc == SA_ETIMEDOUT) && cl->r)
    coord_request_cancel(cl->sub->set, cl->r); /* the client went away */
}

/* A delta of chain's text: len bytes at offset in its stream. */
static void send_delta(client_t *cl, int chain, bool answer, const char *t, size_t len,
                       int64_t offset, int tokens) {
  char stackbuf[512];
  char *text = len < sizeof stackbuf ? stackbuf : malloc(len + 1);
  if (!text) {
    if (cl->r)
      coord_request_cancel(cl->sub->set, cl->r);
    return;
  }
  memcpy(text, t, len);
  text[len] = '\0';
  Sa__SubmitEvent ev = SA__SUBMIT_EVENT__INIT;
  Sa__SubmitEvent__Delta d = SA__SUBMIT_EVENT__DELTA__INIT;
  ev.payload_case = SA__SUBMIT_EVENT__PAYLOAD_DELTA;
  ev.delta = &d;
  d.chain = chain;
  d.kind = answer ? SA__DELTA_KIND__DELTA_ANSWER : SA__DELTA_KIND__DELTA_REASONING;
  d.text = text;
  d.token_count = tokens;
  d.offset = offset;
  send_event(cl, &ev);
  if (text != stackbuf)
    free(text);
}

static void send_chain_done(client_t *cl, const coord_request_t *r, int chain) {
  const coord_chain_t *c = &r->chains[chain];
  Sa__SubmitEvent ev = SA__SUBMIT_EVENT__INIT;
  Sa__Progress pr = SA__PROGRESS__INIT;
  ev.payload_case = SA__SUBMIT_EVENT__PAYLOAD_PROGRESS;
  ev.progress = &pr;
  pr.stage = "chain_done";
  pr.chain = c->idx;
  pr.finish_reason = c->finish;
  pr.chain_answer = (char *)c->normalized;
  pr.chain_tokens = c->n_tokens;
  pr.chains_finished = r->chains_done;
  pr.chains_running = r->n_chains - r->chains_done;
  int votes = 0;
  const char *leader = "";
  coord_request_vote(r, &votes, &leader);
  pr.leading_answer = (char *)leader;
  pr.leading_votes = votes;
  pr.prompt_tokens = r->prompt_len;
  pr.audio_tokens = r->n_audio_rows;
  send_event(cl, &ev);
}

static void send_final(client_t *cl, const coord_request_t *r) {
  Sa__SubmitEvent ev = SA__SUBMIT_EVENT__INIT;
  Sa__FinalResult fr = SA__FINAL_RESULT__INIT;
  Sa__ChainResult crs[COORD_MAX_CHAINS];
  Sa__ChainResult *cp[COORD_MAX_CHAINS];
  int64_t gen = 0;
  for (int i = 0; i < r->n_chains; i++) {
    const coord_chain_t *c = &r->chains[i];
    sa__chain_result__init(&crs[i]);
    crs[i].chain = i;
    crs[i].answer = c->answer ? c->answer : "";
    crs[i].normalized_answer = (char *)c->normalized;
    crs[i].finish_reason = c->finish;
    crs[i].reasoning_tokens = c->reasoning_tokens;
    crs[i].answer_tokens = c->answer_tokens;
    crs[i].reasoning = c->reasoning ? c->reasoning : "";
    crs[i].tokens = c->tokens;
    crs[i].n_tokens = (size_t)c->n_tokens;
    crs[i].seed = sa_rng_chain_seed(r->sampling.seed, (uint32_t)i);
    cp[i] = &crs[i];
    gen += c->n_tokens;
  }
  fr.chains = cp;
  fr.n_chains = (size_t)r->n_chains;
  int votes = 0;
  const coord_chain_t *win = coord_request_vote(r, &votes, NULL);
  fr.answer = win && win->answer ? win->answer : "";
  fr.votes = win ? votes : 0;
  fr.prompt_tokens = r->prompt_len;
  fr.audio_tokens = r->n_audio_rows;
  fr.tokens_generated = gen;
  fr.tokens_saved = r->tokens_saved;
  fr.elapsed_s = (double)(sa_now_ms() - r->t_start_ms) / 1000.0;
  fr.time_to_first_token_s =
      r->t_first_token_ms ? (double)(r->t_first_token_ms - r->t_start_ms) / 1000.0 : 0;
  ev.payload_case = SA__SUBMIT_EVENT__PAYLOAD_FINAL;
  ev.final = &fr;
  send_event(cl, &ev);
}

static void on_event(coord_request_t *r, const coord_event_t *e) {
  client_t *cl = r->client;
  if (!cl || !cl->call)
    return;
  Sa__SubmitEvent ev = SA__SUBMIT_EVENT__INIT;
  switch (e->kind) {
  case COORD_EV_ENCODED: {
    Sa__Progress pr = SA__PROGRESS__INIT;
    ev.payload_case = SA__SUBMIT_EVENT__PAYLOAD_PROGRESS;
    ev.progress = &pr;
    pr.stage = "encoded";
    pr.prompt_tokens = r->prompt_len;
    pr.audio_tokens = r->n_audio_rows;
    send_event(cl, &ev);
    break;
  }
  case COORD_EV_DELTA:
    send_delta(cl, e->chain, e->answer, e->text, e->len, e->offset, e->tokens);
    break;
  case COORD_EV_CHAIN_DONE:
    send_chain_done(cl, r, e->chain);
    break;
  case COORD_EV_FINAL:
    send_final(cl, r);
    break;
  }
}

static void on_end(coord_request_t *r, sa_status_t st, const char *msg) {
  client_t *cl = r->client;
  if (!cl)
    return;
  cl->r = NULL;
  if (sa_rpc_call_finish(cl->call, st, msg) == SA_EFULL) {
    /* the client's queue is full even for the end: leave the stream to
     * its deadline; cl stays for its cancel callback */
    SA_LOG_WARN("request %s: could not end the client's stream (queue full)", r->request_id);
    return;
  }
  free(cl);
}

/* A resume elsewhere took the request: this stream ends. */
static void on_detach(coord_request_t *r) {
  client_t *cl = r->client;
  if (!cl)
    return;
  cl->r = NULL;
  if (sa_rpc_call_finish(cl->call, SA_STATUS_ABORTED,
                         "the request was resumed by another stream") == SA_EFULL)
    return; /* left to its deadline; cl stays for its cancel callback */
  free(cl);
}

static const coord_request_cbs_t k_cbs = {.event = on_event, .end = on_end, .detach = on_detach};

/* ---------------------------------------------------------------- Submit */

int coord_submit_validate(const coord_opts_t *o, const Sa__SubmitRequest *rq, int running,
                          size_t audio_held, char *msg, size_t cap) {
  if (rq->audio.len == 0 && !rq->prompt[0]) {
    sa_set_err(msg, cap, "empty request: send audio, a prompt, or both");
    return SA_EINVAL;
  }
  if (rq->audio.len > o->max_audio_bytes) {
    sa_set_err(msg, cap, "audio is %zu bytes; the limit is %zu", rq->audio.len,
               o->max_audio_bytes);
    return SA_EINVAL;
  }
  if (rq->max_tokens < 1 || rq->max_tokens > o->max_tokens_limit) {
    sa_set_err(msg, cap, "max_tokens must be between 1 and %d (got %d)", o->max_tokens_limit,
               rq->max_tokens);
    return SA_EINVAL;
  }
  int max_n = o->max_chains < COORD_MAX_CHAINS ? o->max_chains : COORD_MAX_CHAINS;
  if (rq->n > max_n) {
    sa_set_err(msg, cap, "n must be between 1 and %d (got %d)", max_n, rq->n);
    return SA_EINVAL;
  }
  size_t pl = strlen(rq->prompt), sl = strlen(rq->system);
  if (pl > (size_t)o->max_prompt_bytes || sl > (size_t)o->max_prompt_bytes) {
    sa_set_err(msg, cap, "prompt or system text over %d bytes", o->max_prompt_bytes);
    return SA_EINVAL;
  }
  if (!sa_utf8_valid(rq->prompt, pl) || !sa_utf8_valid(rq->system, sl)) {
    sa_set_err(msg, cap, "prompt and system text must be valid UTF-8");
    return SA_EINVAL;
  }
  if (strlen(rq->request_id) >= 64) {
    sa_set_err(msg, cap, "request_id over 63 bytes");
    return SA_EINVAL;
  }
  const Sa__SamplingParams *s = rq->sampling;
  if (s && (!(s->temperature >= 0 && s->temperature <= 100) || !(s->top_p >= 0 && s->top_p <= 1) ||
            s->top_k < 0 || !(s->min_p >= 0 && s->min_p <= 1) ||
            !(s->repetition_penalty >= 0 && s->repetition_penalty <= 100))) {
    sa_set_err(msg, cap,
               "sampling out of range: temperature 0..100, top_p 0..1, top_k >= 0, "
               "min_p 0..1, repetition_penalty 0..100");
    return SA_EINVAL;
  }
  if (rq->think_budget < 0 || rq->vote_k < 0) {
    sa_set_err(msg, cap, "think_budget and vote_k must be >= 0");
    return SA_EINVAL;
  }
  if (running >= o->max_requests) {
    sa_set_err(msg, cap, "the coordinator is at its limit of %d requests; retry later",
               o->max_requests);
    return SA_EFULL;
  }
  if (rq->audio.len && o->audio_budget && audio_held + rq->audio.len > o->audio_budget) {
    sa_set_err(msg, cap,
               "%zu bytes of audio are waiting to be encoded, and %zu more would pass the "
               "budget of %zu (--audio-budget); retry later",
               audio_held, rq->audio.len, o->audio_budget);
    return SA_EFULL;
  }
  return 0;
}

static void on_client_gone(sa_rpc_call_t *call, void *user) {
  client_t *cl = user;
  (void)call;
  if (cl->r)
    coord_request_cancel(cl->sub->set, cl->r);
}

static void submit_handler(sa_rpc_call_t *call, void *user) {
  coord_submit_t *sub = user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__SubmitRequest *rq = sa__submit_request__unpack(NULL, len, body);
  if (!rq) {
    sa_rpc_call_finish(call, SA_STATUS_INVALID_ARGUMENT, "malformed SubmitRequest");
    return;
  }
  char msg[512];
  int rc = coord_submit_validate(sub->opts, rq, sub->set->n_live, sub->set->audio_held, msg,
                                 sizeof msg);
  if (rc) {
    SA_LOG_INFO("refused a request: %s", msg);
    sa_rpc_call_finish(call, sa_err_to_status(rc), msg);
    sa__submit_request__free_unpacked(rq, NULL);
    return;
  }
  coord_request_params_t p = {
      .request_id = rq->request_id,
      .owner = sa_sec_peer_key(sa_rpc_call_peer(call)),
      .system = rq->system,
      .max_tokens = rq->max_tokens,
      .n_chains = rq->n <= 0 ? 1 : rq->n,
      .vote_rule = rq->vote_rule,
      .vote_k = rq->vote_k,
      .think_budget = rq->think_budget,
  };
  /* the user turn: the prompt before or after the audio */
  if (rq->text_before_audio && rq->prompt[0])
    p.parts[p.n_parts++] = (coord_part_t){.text = rq->prompt};
  if (rq->audio.len)
    p.parts[p.n_parts++] = (coord_part_t){.audio = rq->audio.data, .audio_len = rq->audio.len};
  if (!rq->text_before_audio && rq->prompt[0])
    p.parts[p.n_parts++] = (coord_part_t){.text = rq->prompt};
  sa__sampling_params__init(&p.sampling);
  if (rq->sampling) {
    p.sampling.temperature = rq->sampling->temperature;
    p.sampling.top_p = rq->sampling->top_p;
    p.sampling.top_k = rq->sampling->top_k;
    p.sampling.min_p = rq->sampling->min_p;
    p.sampling.repetition_penalty = rq->sampling->repetition_penalty;
    p.sampling.seed = rq->sampling->seed;
  }
  if (rq->request_id[0] && coord_requests_find_any(sub->set, rq->request_id)) {
    sa__submit_request__free_unpacked(rq, NULL);
    sa_rpc_call_finish(call, SA_STATUS_ALREADY_EXISTS,
                       "a request with this id exists; Coordinator/Resume attaches to it");
    return;
  }
  client_t *cl = calloc(1, sizeof *cl);
  coord_request_t *r = cl ? coord_request_new(sub->set, &p, &k_cbs, cl, msg, sizeof msg) : NULL;
  sa__submit_request__free_unpacked(rq, NULL);
  if (!r) {
    free(cl);
    sa_rpc_call_finish(call, SA_STATUS_RESOURCE_EXHAUSTED, msg);
    return;
  }
  cl->sub = sub;
  cl->call = call;
  cl->r = r;
  snprintf(cl->request_id, sizeof cl->request_id, "%s", r->request_id);
  sa_rpc_call_set_cancel_cb(call, on_client_gone, cl);
}

/* ---------------------------------------------------------------- Resume */

/* What a resumed stream has not seen of chain c: its text from offset on
 * (reasoning, then answer). */
static void send_text_from(client_t *cl, const coord_chain_t *c, int64_t offset) {
  int64_t rl = (int64_t)c->reasoning_len, al = (int64_t)c->answer_len;
  if (offset < 0)
    offset = 0;
  if (offset < rl)
    send_delta(cl, c->idx, false, c->reasoning + offset, (size_t)(rl - offset), offset, 0);
  if (offset < rl + al) {
    int64_t from = offset > rl ? offset - rl : 0;
    send_delta(cl, c->idx, true, c->answer + from, (size_t)(al - from), rl + from, 0);
  }
}

static void resume_handler(sa_rpc_call_t *call, void *user) {
  coord_submit_t *sub = user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__ResumeRequest *rq = sa__resume_request__unpack(NULL, len, body);
  if (!rq || !rq->request_id[0]) {
    if (rq)
      sa__resume_request__free_unpacked(rq, NULL);
    sa_rpc_call_finish(call, SA_STATUS_INVALID_ARGUMENT, "a ResumeRequest needs a request_id");
    return;
  }
  coord_request_t *r = coord_requests_find_any(sub->set, rq->request_id);
  if (r && strcmp(r->owner, sa_sec_peer_key(sa_rpc_call_peer(call))) != 0)
    r = NULL; /* another client's: not found, whatever its id */
  if (!r) {
    sa__resume_request__free_unpacked(rq, NULL);
    sa_rpc_call_finish(call, SA_STATUS_NOT_FOUND,
                       "no such request (unknown, or ended and forgotten)");
    return;
  }
  client_t *cl = calloc(1, sizeof *cl);
  if (!cl) {
    sa__resume_request__free_unpacked(rq, NULL);
    sa_rpc_call_finish(call, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  cl->sub = sub;
  cl->call = call;
  snprintf(cl->request_id, sizeof cl->request_id, "%s", r->request_id);
  SA_LOG_INFO("request %s: resumed by its client%s", r->request_id,
              r->ended ? " (it has ended)" : "");
  for (int c = 0; c < r->n_chains; c++)
    send_text_from(cl, &r->chains[c], (size_t)c < rq->n_offsets ? rq->offsets[c] : 0);
  sa__resume_request__free_unpacked(rq, NULL);
  for (int i = 0; i < r->n_vote_order; i++)
    send_chain_done(cl, r, r->vote_order[i]);
  if (r->ended) {
    if (r->end_status == SA_STATUS_OK)
      send_final(cl, r);
    if (sa_rpc_call_finish(call, r->end_status, r->end_msg) != SA_EFULL)
      free(cl);
    return;
  }
  cl->r = r;
  int rc = coord_request_attach(sub->set, r, &k_cbs, cl);
  if (rc) {
    cl->r = NULL;
    if (sa_rpc_call_finish(call, SA_STATUS_FAILED_PRECONDITION,
                           "this request's stream cannot move (an HTTP request)") != SA_EFULL)
      free(cl);
    return;
  }
  sa_rpc_call_set_cancel_cb(call, on_client_gone, cl);
}

static void cancel_handler(sa_rpc_call_t *call, void *user) {
  coord_submit_t *sub = user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__CancelRequest *rq = sa__cancel_request__unpack(NULL, len, body);
  if (!rq) {
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, "malformed CancelRequest", NULL, 0, NULL,
                      0);
    return;
  }
  Sa__CancelResponse resp = SA__CANCEL_RESPONSE__INIT;
  /* another client's request is not found, whatever its id */
  coord_request_t *r = coord_requests_find(sub->set, rq->request_id);
  if (r && strcmp(r->owner, sa_sec_peer_key(sa_rpc_call_peer(call))) != 0)
    r = NULL;
  if (r) {
    resp.found = true;
    coord_request_cancel(sub->set, r);
  }
  sa__cancel_request__free_unpacked(rq, NULL);
  sa_rpc_call_reply_pb(call, &resp.base);
}

/* ----------------------------------------------------------------- Drain */

static void drain_handler(sa_rpc_call_t *call, void *user) {
  coord_submit_t *sub = user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__DrainRequest *rq = sa__drain_request__unpack(NULL, len, body);
  if (!rq || !rq->target[0] || strlen(rq->target) >= 128) {
    if (rq)
      sa__drain_request__free_unpacked(rq, NULL);
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT,
                      "a DrainRequest needs a target: a replica name or a node id", NULL, 0,
                      NULL, 0);
    return;
  }
  /* a stage or encoder may drain only itself (before a planned stop) */
  const char *peer = sa_rpc_call_peer(call);
  sa_role_t role = sa_sec_peer_role(peer);
  if (role == SA_ROLE_STAGE || role == SA_ROLE_ENCODER) {
    bool own = false;
    for (int i = 0; i < COORD_MAX_WORKERS && !own; i++) {
      const coord_worker_t *w = coord_registry_worker(sub->reg, i);
      own = w && !strcmp(w->node_id, rq->target) && !strcmp(w->key, sa_sec_peer_key(peer));
    }
    if (!own || rq->migrate || rq->undrain) {
      sa__drain_request__free_unpacked(rq, NULL);
      sa_rpc_call_reply(call, SA_STATUS_PERMISSION_DENIED,
                        "a worker may only drain itself", NULL, 0, NULL, 0);
      return;
    }
  }
  Sa__DrainResponse resp = SA__DRAIN_RESPONSE__INIT;
  resp.workers = coord_registry_drain(sub->reg, rq->target, !rq->undrain);
  bool draining = !rq->undrain;
  int64_t encodes = 0;
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    const coord_worker_t *w = coord_registry_worker(sub->reg, i);
    if (!w || !coord_registry_names(sub->reg, i, rq->target))
      continue;
    resp.sequences += w->sequences;
    encodes += w->encodes;
  }
  for (int ri = 0; ri < COORD_MAX_REPLICAS; ri++) {
    const coord_replica_t *rp = coord_registry_replica(sub->reg, ri);
    if (!rp || !coord_registry_replica_draining(sub->reg, ri))
      continue;
    bool targeted = false;
    for (int s = 0; s < rp->n_stages; s++)
      targeted |= coord_registry_names(sub->reg, rp->stage[s], rq->target);
    if (!targeted)
      continue;
    if (rq->migrate && draining)
      coord_requests_migrate(sub->set, ri);
    for (const coord_request_t *r = sub->set->head; r; r = r->next)
      if (r->replica == ri && r->state != COORD_REQ_DONE)
        resp.requests++;
  }
  resp.requests += (int32_t)encodes;
  resp.done = draining && resp.workers > 0 && resp.requests == 0;
  if (resp.workers)
    SA_LOG_INFO("drain %s%s: %d workers, %d requests running, %lld sequences",
                rq->target, rq->undrain ? " undone" : rq->migrate ? " with migration" : "",
                resp.workers, resp.requests, (long long)resp.sequences);
  sa__drain_request__free_unpacked(rq, NULL);
  sa_rpc_call_reply_pb(call, &resp.base);
}

/* ---------------------------------------------------------------- Status */

static void status_handler(sa_rpc_call_t *call, void *user) {
  coord_submit_t *sub = user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__StatusRequest *rq = sa__status_request__unpack(NULL, len, body);
  if (!rq) {
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, "malformed StatusRequest", NULL, 0, NULL,
                      0);
    return;
  }
  Sa__StatusResponse resp = SA__STATUS_RESPONSE__INIT;
  Sa__WorkerInfo *infos = calloc(COORD_MAX_WORKERS, sizeof *infos);
  Sa__WorkerInfo **ptrs = calloc(COORD_MAX_WORKERS, sizeof *ptrs);
  if (!infos || !ptrs) {
    free(infos);
    free(ptrs);
    sa__status_request__free_unpacked(rq, NULL);
    sa_rpc_call_reply(call, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL, 0, NULL, 0);
    return;
  }
  size_t n = 0;
  uint64_t now = sa_now_ms();
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    const coord_worker_t *w = coord_registry_worker(sub->reg, i);
    if (!w)
      continue;
    Sa__WorkerInfo *wi = &infos[n];
    sa__worker_info__init(wi);
    wi->node_id = (char *)w->node_id;
    wi->role = w->role;
    wi->address = (char *)w->address;
    wi->replica = w->replica;
    wi->first_layer = w->first;
    wi->last_layer = w->last;
    wi->healthy = w->healthy;
    wi->load = w->role == SA__ROLE__ROLE_ENCODER ? (float)w->encodes : w->load;
    wi->kv_blocks_used = w->kv_used;
    wi->kv_blocks_free = w->kv_free;
    wi->last_heartbeat_ms_ago = (int64_t)(now - w->last_seen_ms);
    wi->replica_name = (char *)coord_registry_worker_replica(sub->reg, i);
    wi->kv_blocks_shared = w->kv_shared;
    wi->sequences = w->sequences;
    wi->draining = w->draining;
    ptrs[n++] = wi;
  }
  resp.n_workers = n;
  resp.workers = ptrs;
  resp.replicas_ready = coord_registry_ready_replicas(sub->reg);
  int running = 0, queued = 0, chains_running = 0;
  Sa__Progress prog = SA__PROGRESS__INIT;
  for (const coord_request_t *r = sub->set->head; r; r = r->next) {
    if (r->state == COORD_REQ_DONE)
      continue;
    if (r->state == COORD_REQ_NEW || r->state == COORD_REQ_QUEUED ||
        r->state == COORD_REQ_ENCODING)
      queued++;
    else
      running++;
    chains_running += r->n_chains - r->chains_done;
    if (rq->request_id[0] && strcmp(rq->request_id, r->request_id) == 0 &&
        strcmp(r->owner, sa_sec_peer_key(sa_rpc_call_peer(call))) == 0) {
      resp.request_found = true;
      int64_t toks = 0;
      for (int c = 0; c < r->n_chains; c++)
        toks += r->chains[c].n_tokens;
      prog.chains_running = r->n_chains - r->chains_done;
      prog.chains_finished = r->chains_done;
      prog.tokens_generated = toks;
      resp.request_progress = &prog;
    }
  }
  resp.requests_running = running;
  resp.requests_queued = queued;
  resp.chains_running = chains_running;
  resp.forks_total = sub->pl->forks_total;
  resp.requests_total = sub->set->requests_total;
  resp.model_id = (char *)sub->opts->model_dir;
  resp.insecure = !sub->sec || sub->sec->insecure;
  resp.handshakes_refused = sub->sec ? (int64_t)sub->sec->handshakes_refused : 0;
  sa_rpc_call_reply_pb(call, &resp.base);
  sa__status_request__free_unpacked(rq, NULL);
  free(infos);
  free(ptrs);
}

void coord_submit_serve(coord_submit_t *sub, sa_rpc_server_t *srv) {
  sa_rpc_server_register(srv, "Coordinator/Submit", SA_RPC_STREAM, submit_handler, sub);
  sa_rpc_server_register(srv, "Coordinator/Resume", SA_RPC_STREAM, resume_handler, sub);
  sa_rpc_server_register(srv, "Coordinator/Cancel", SA_RPC_UNARY, cancel_handler, sub);
  sa_rpc_server_register(srv, "Coordinator/Status", SA_RPC_UNARY, status_handler, sub);
  sa_rpc_server_register(srv, "Coordinator/Drain", SA_RPC_UNARY, drain_handler, sub);
}
