/*
 * request — Coordinator/Submit: validation, encoding on an encoder node, the
 * chat template, admission to a replica, streaming deltas back to the client,
 * and the final result. Scheduling of the steps themselves is sched.c's.
 */
#include "coord.h"

#include "chat.h"
#include "log.h"
#include "sa_error.h"
#include "sampler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void request_unlink(request_t *r) {
  coord_t *co = r->co;
  if (r->prev)
    r->prev->next = r->next;
  else
    co->requests = r->next;
  if (r->next)
    r->next->prev = r->prev;
  else
    co->requests_tail = r->prev;
  r->next = r->prev = NULL;
  co->n_requests--;
}

static void request_destroy(request_t *r) {
  for (int c = 0; c < r->n_chains; c++) {
    free(r->chains[c].tokens);
    free(r->chains[c].reasoning);
    free(r->chains[c].answer);
  }
  free(r->prompt);
  free(r->audio_pos);
  free(r->audio_rows);
  free(r->audio);
  free(r->prompt_text);
  free(r->system_text);
  free(r);
}

/* Frees r once nothing refers to it any more: its stream ended, no chain in
 * flight, no encode/fork/free outstanding. Safe to call often. */
static void request_maybe_reap(request_t *r) {
  if (r->state != REQ_DONE || r->call || r->pending_ops > 0 || r->prefill_inflight)
    return;
  for (int c = 0; c < r->n_chains; c++)
    if (r->chains[c].inflight)
      return;
  if (r->replica >= 0) {
    r->co->replicas[r->replica].kv_reserved -= r->kv_reserved;
    r->kv_reserved = 0;
  }
  request_unlink(r);
  request_destroy(r);
}

static int send_event(request_t *r, Sa__SubmitEvent *ev) {
  if (!r->call)
    return SA_ECANCELED;
  ev->request_id = r->request_id;
  size_t len = sa__submit_event__get_packed_size(ev);
  uint8_t stackbuf[4096];
  uint8_t *buf = len <= sizeof stackbuf ? stackbuf : malloc(len);
  if (!buf)
    return SA_ENOMEM;
  sa__submit_event__pack(ev, buf);
  int rc = sa_rpc_call_send(r->call, buf, len, NULL, 0);
  if (buf != stackbuf)
    free(buf);
  if (rc == SA_EFULL)
    SA_LOG_WARN("request %s: client is not reading; an event was dropped", r->request_id);
  else if (rc == SA_EUNAVAIL || rc == SA_ECANCELED || rc == SA_ETIMEDOUT)
    r->client_lost = true; /* acted on by the caller's next check */
  return rc;
}

static void end_stream(request_t *r, sa_status_t st, const char *msg) {
  if (!r->call)
    return;
  sa_rpc_call_t *call = r->call;
  r->call = NULL;
  sa_rpc_call_finish(call, st, msg);
}

void coord_request_fail(request_t *r, sa_status_t st, const char *msg) {
  if (r->state == REQ_DONE) { /* a chain that was in flight came back */
    for (int c = 0; c < r->n_chains; c++)
      coord_chain_free(r, &r->chains[c]);
    request_maybe_reap(r);
    return;
  }
  SA_LOG_INFO("request %s failed: %s: %s", r->request_id, sa_status_name(st), msg);
  r->failed = true;
  for (int c = 0; c < r->n_chains; c++) {
    chain_t *ch = &r->chains[c];
    if (ch->state != CHAIN_DONE) {
      ch->state = CHAIN_DONE;
      ch->finish = SA__FINISH_REASON__FINISH_ERROR;
      r->chains_done++;
    }
    coord_chain_free(r, ch);
  }
  r->state = REQ_DONE;
  end_stream(r, st, msg);
  request_maybe_reap(r);
}

void coord_fail_replica_requests(coord_t *co, int replica, const char *why) {
  for (request_t *r = co->requests, *next; r; r = next) {
    next = r->next;
    if (r->replica == replica && r->state != REQ_DONE)
      coord_request_requeue(r, SA_STATUS_UNAVAILABLE, why);
  }
}

#define MAX_REPLAYS 3

void coord_request_requeue(request_t *r, sa_status_t st, const char *why) {
  coord_t *co = r->co;
  if (r->state == REQ_DONE) {
    coord_request_fail(r, st, why); /* frees what is left, reaps */
    return;
  }
  if (r->replays >= MAX_REPLAYS || r->replica < 0) {
    char msg[400];
    snprintf(msg, sizeof msg, "%s (after %d failovers)", why, r->replays);
    coord_request_fail(r, st, msg);
    return;
  }
  int old = r->replica;
  r->replays++;
  r->epoch++; /* results of batches already sent are stale now */
  int64_t replay_tokens = 0;
  for (int c = 0; c < r->n_chains; c++) {
    chain_t *ch = &r->chains[c];
    if (!ch->freed && !ch->inflight) /* in-flight ones are freed when they come back */
      coord_free_seq(co, old, ch->seq_id, r);
    ch->freed = false;
    if (ch->state == CHAIN_DONE) {
      ch->freed = true; /* nothing of it on the new replica */
      continue;
    }
    ch->seq_id = ++co->next_seq_id;
    ch->state = CHAIN_WAIT;
    ch->replayed = 0;
    replay_tokens += r->prompt_len - 1 + ch->n_tokens;
  }
  co->replicas[old].kv_reserved -= r->kv_reserved;
  co->replicas[old].suspect_until_ms = coord_now_ms() + (uint64_t)co->opts.heartbeat_timeout_ms + 500;
  r->kv_reserved = 0;
  r->replica = -1;
  r->replay = true;
  r->state = REQ_QUEUED;
  SA_LOG_WARN("request %s: %s; failing over (try %d): %lld tokens to re-prefill on another "
              "replica",
              r->request_id, why, r->replays, (long long)replay_tokens);
  coord_admit(co);
}

static void on_client_gone(sa_rpc_call_t *call, void *user) {
  request_t *r = user;
  (void)call;
  if (r->state == REQ_DONE)
    return;
  SA_LOG_INFO("request %s: client went away; cancelling", r->request_id);
  r->cancelled = true;
  for (int c = 0; c < r->n_chains; c++) {
    chain_t *ch = &r->chains[c];
    if (ch->state != CHAIN_DONE) {
      ch->state = CHAIN_DONE;
      ch->finish = SA__FINISH_REASON__FINISH_CLIENT_CANCELLED;
      r->chains_done++;
    }
    coord_chain_free(r, ch);
  }
  r->state = REQ_DONE;
  end_stream(r, SA_STATUS_CANCELLED, "cancelled by the client");
  request_maybe_reap(r);
}

/* ------------------------------------------------------------ the prompt */

static int build_prompt(request_t *r, const int32_t *chunk_tokens, int n_chunks,
                        char *err, size_t cap) {
  coord_t *co = r->co;
  sa_chat_part_t parts[3];
  size_t np = 0;
  sa_chat_part_t text = {.kind = SA_CHAT_PART_TEXT,
                         .text = r->prompt_text,
                         .text_len = strlen(r->prompt_text)};
  if (r->text_before_audio && text.text_len)
    parts[np++] = text;
  if (n_chunks > 0)
    parts[np++] = (sa_chat_part_t){.kind = SA_CHAT_PART_AUDIO,
                                   .chunk_tokens = chunk_tokens,
                                   .n_chunks = (size_t)n_chunks};
  if (!r->text_before_audio && text.text_len)
    parts[np++] = text;
  sa_chat_prompt_t p;
  int rc = sa_chat_build(co->tok, r->system_text[0] ? r->system_text : NULL, parts, np, 0,
                         &p, err, cap);
  if (rc)
    return rc;
  r->prompt = p.ids;
  r->prompt_len = (int)p.n_ids;
  p.ids = NULL;
  r->audio_pos = malloc(sizeof(int32_t) * (size_t)(r->n_audio_rows ? r->n_audio_rows : 1));
  if (!r->audio_pos) {
    sa_chat_prompt_free(&p);
    return SA_ENOMEM;
  }
  int row = 0;
  for (size_t sp = 0; sp < p.n_spans; sp++)
    for (size_t k = 0; k < p.spans[sp].count; k++)
      if (row < r->n_audio_rows)
        r->audio_pos[row++] = (int32_t)(p.spans[sp].first + k);
  sa_chat_prompt_free(&p);
  if (row != r->n_audio_rows) {
    snprintf(err, cap, "internal: %d audio slots for %d embedding rows", row, r->n_audio_rows);
    return SA_EINTERNAL;
  }
  if (r->prompt_len < 2) {
    snprintf(err, cap, "the prompt is too short");
    return SA_EINVAL;
  }
  return 0;
}

/* Blocks a request needs on every stage: the prompt once (shared by the
 * chains), each chain's own tokens, and one copied partial block per chain. */
static int64_t blocks_needed(const request_t *r, int block_tokens) {
  int64_t bt = block_tokens > 0 ? block_tokens : 16;
  int64_t shared = (r->prompt_len + bt - 1) / bt;
  int64_t per_chain = (r->max_tokens + bt - 1) / bt + 1;
  if (r->replay) /* after a failover every chain holds its own prompt */
    return (int64_t)r->n_chains * (shared + per_chain);
  return shared + (int64_t)r->n_chains * per_chain;
}

/* Moves queued requests onto replicas with room, oldest first. */
void coord_admit(coord_t *co) {
  for (request_t *r = co->requests; r; r = r->next) {
    if (r->state != REQ_QUEUED)
      continue;
    int bt = 16;
    for (int i = 0; i < COORD_MAX_REPLICAS; i++)
      if (co->replicas[i].used && co->replicas[i].ready) {
        bt = co->replicas[i].block_tokens;
        break;
      }
    int64_t need = blocks_needed(r, bt);
    int rep = coord_pick_replica(co, need);
    if (rep < 0) {
      bool any_fits = false;
      for (int i = 0; i < COORD_MAX_REPLICAS; i++)
        if (co->replicas[i].used && co->replicas[i].ready &&
            need <= co->replicas[i].kv_capacity)
          any_fits = true;
      bool any_ready = false;
      for (int i = 0; i < COORD_MAX_REPLICAS; i++)
        if (co->replicas[i].used && co->replicas[i].ready)
          any_ready = true;
      if (any_ready && !any_fits) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "the request needs %lld KV blocks per stage; the largest "
                 "replica has fewer (use fewer chains, tokens or audio)",
                 (long long)need);
        coord_request_fail(r, SA_STATUS_RESOURCE_EXHAUSTED, msg);
        return coord_admit(co); /* the list changed */
      }
      break; /* FIFO: wait for room */
    }
    r->replica = rep;
    r->kv_reserved = need;
    co->replicas[rep].kv_reserved += need;
    r->state = r->replay ? REQ_REPLAY : REQ_PREFILL;
    SA_LOG_DEBUG("request %s admitted on replica %s (%lld blocks)", r->request_id,
                 co->replicas[rep].name, (long long)need);
  }
}

/* ------------------------------------------------------------- encoding */

static void start_encode(request_t *r);

static void on_encoded(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  request_t *r = user;
  coord_t *co = r->co;
  (void)ch;
  r->pending_ops--;
  if (r->encoder >= 0)
    co->workers[r->encoder].inflight--;
  if (r->state != REQ_ENCODING) { /* cancelled meanwhile */
    request_maybe_reap(r);
    return;
  }
  if (res->status == SA_STATUS_UNAVAILABLE || res->status == SA_STATUS_DEADLINE_EXCEEDED ||
      res->status == SA_STATUS_RESOURCE_EXHAUSTED) {
    if (r->encode_attempts < 3) {
      SA_LOG_WARN("request %s: encoder %s: %s (%s); retrying elsewhere", r->request_id,
                  r->encoder >= 0 ? co->workers[r->encoder].node_id : "?",
                  sa_status_name(res->status), res->status_msg);
      start_encode(r);
      return;
    }
  }
  if (res->status != SA_STATUS_OK) {
    char msg[512];
    snprintf(msg, sizeof msg, "audio: %s", res->status_msg);
    coord_request_fail(r, res->status, msg);
    return;
  }
  Sa__EncodeResponse *er = sa__encode_response__unpack(NULL, res->body_len, res->body);
  char err[512] = "";
  if (!er || res->n_tensors != 1 || res->tensors[0].desc.ndim != 2 ||
      res->tensors[0].desc.shape[1] != co->cfg.hidden_size ||
      (res->tensors[0].desc.dtype != SA_DTYPE_F32 && res->tensors[0].desc.dtype != SA_DTYPE_BF16)) {
    if (er)
      sa__encode_response__free_unpacked(er, NULL);
    coord_request_fail(r, SA_STATUS_INTERNAL, "malformed EncodeResponse from the encoder");
    return;
  }
  int64_t rows = res->tensors[0].desc.shape[0];
  int64_t sum = 0;
  for (size_t i = 0; i < er->n_chunk_tokens; i++)
    sum += er->chunk_tokens[i] < 0 ? 1 << 30 : er->chunk_tokens[i];
  if (sum != rows) {
    sa__encode_response__free_unpacked(er, NULL);
    coord_request_fail(r, SA_STATUS_INTERNAL, "encoder rows disagree with its chunk counts");
    return;
  }
  r->hidden = co->cfg.hidden_size;
  r->n_audio_rows = (int)rows;
  r->audio_rows = malloc(sizeof(float) * (size_t)(rows ? rows : 1) * (size_t)r->hidden);
  if (!r->audio_rows) {
    sa__encode_response__free_unpacked(er, NULL);
    coord_request_fail(r, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory for audio rows");
    return;
  }
  sa_to_f32_n(r->audio_rows, res->tensors[0].data, res->tensors[0].desc.dtype,
              (size_t)rows * (size_t)r->hidden);
  free(r->audio);
  r->audio = NULL;
  int rc = build_prompt(r, er->chunk_tokens, (int)er->n_chunk_tokens, err, sizeof err);
  sa__encode_response__free_unpacked(er, NULL);
  if (rc) {
    coord_request_fail(r, sa_err_to_status(rc), err);
    return;
  }
  if (r->prompt_len + r->max_tokens > co->cfg.max_position_embeddings) {
    snprintf(err, sizeof err,
             "prompt (%d tokens, audio included) + max_tokens (%d) exceeds the "
             "model's context of %d",
             r->prompt_len, r->max_tokens, co->cfg.max_position_embeddings);
    coord_request_fail(r, SA_STATUS_INVALID_ARGUMENT, err);
    return;
  }
  Sa__SubmitEvent ev = SA__SUBMIT_EVENT__INIT;
  Sa__Progress pr = SA__PROGRESS__INIT;
  ev.payload_case = SA__SUBMIT_EVENT__PAYLOAD_PROGRESS;
  ev.progress = &pr;
  pr.stage = "encoded";
  pr.prompt_tokens = r->prompt_len;
  pr.audio_tokens = r->n_audio_rows;
  send_event(r, &ev);
  r->state = REQ_QUEUED;
  coord_admit(co);
  coord_schedule(co);
}

static void start_encode(request_t *r) {
  coord_t *co = r->co;
  int enc = coord_pick_encoder(co, r->encoder);
  if (enc < 0) {
    coord_request_fail(r, SA_STATUS_UNAVAILABLE, "no audio encoder is registered and healthy");
    return;
  }
  r->encoder = enc;
  r->encode_attempts++;
  Sa__EncodeRequest er = SA__ENCODE_REQUEST__INIT;
  er.audio.data = r->audio;
  er.audio.len = r->audio_len;
  er.max_audio_s = co->opts.max_audio_s;
  er.out_dtype = SA__DTYPE__DTYPE_F32;
  er.out_dtype_set = true;
  er.request_id = r->request_id;
  size_t len = sa__encode_request__get_packed_size(&er);
  uint8_t *buf = malloc(len);
  if (!buf) {
    coord_request_fail(r, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  sa__encode_request__pack(&er, buf);
  sa_rpc_call_opts_t o = {.timeout_ms = co->opts.encode_timeout_ms, .trace_id = r->request_id};
  int rc = sa_rpc_channel_call(co->workers[enc].ch, "Encoder/Encode", buf, len, NULL, 0,
                               &o, on_encoded, r, NULL);
  free(buf);
  if (rc) {
    if (r->encode_attempts < 3) {
      co->workers[enc].healthy = rc == SA_EFULL;
      start_encode(r);
      return;
    }
    coord_request_fail(r, sa_err_to_status(rc), "could not reach an audio encoder");
    return;
  }
  co->workers[enc].inflight++;
  r->pending_ops++;
}

/* ---------------------------------------------------------------- Submit */

static int valid_utf8(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    unsigned c = p[i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!len || i + len > n)
      return 0;
    unsigned cp = len == 1 ? c : len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
    for (int k = 1; k < len; k++) {
      if ((p[i + k] & 0xc0) != 0x80)
        return 0;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return 0;
    i += (size_t)len;
  }
  return 1;
}

static int validate(coord_t *co, const Sa__SubmitRequest *rq, char *msg, size_t cap) {
  const coord_opts_t *o = &co->opts;
  if (rq->audio.len == 0 && !rq->prompt[0]) {
    snprintf(msg, cap, "empty request: send audio, a prompt, or both");
    return SA_EINVAL;
  }
  if (rq->audio.len > o->max_audio_bytes) {
    snprintf(msg, cap, "audio is %zu bytes; the limit is %zu", rq->audio.len, o->max_audio_bytes);
    return SA_EINVAL;
  }
  if (rq->max_tokens < 1 || rq->max_tokens > o->max_tokens_limit) {
    snprintf(msg, cap, "max_tokens must be between 1 and %d (got %d)", o->max_tokens_limit,
             rq->max_tokens);
    return SA_EINVAL;
  }
  int n = rq->n <= 0 ? 1 : rq->n;
  if (n > o->max_chains || n > COORD_MAX_CHAINS) {
    snprintf(msg, cap, "n must be between 1 and %d (got %d)",
             o->max_chains < COORD_MAX_CHAINS ? o->max_chains : COORD_MAX_CHAINS, rq->n);
    return SA_EINVAL;
  }
  size_t pl = strlen(rq->prompt), sl = strlen(rq->system);
  if (pl > (size_t)o->max_prompt_bytes || sl > (size_t)o->max_prompt_bytes) {
    snprintf(msg, cap, "prompt or system text over %d bytes", o->max_prompt_bytes);
    return SA_EINVAL;
  }
  if (!valid_utf8(rq->prompt, pl) || !valid_utf8(rq->system, sl)) {
    snprintf(msg, cap, "prompt and system text must be valid UTF-8");
    return SA_EINVAL;
  }
  if (strlen(rq->request_id) >= 64) {
    snprintf(msg, cap, "request_id over 63 bytes");
    return SA_EINVAL;
  }
  const Sa__SamplingParams *s = rq->sampling;
  if (s && (!(s->temperature >= 0 && s->temperature <= 100) || !(s->top_p >= 0 && s->top_p <= 1) ||
            s->top_k < 0 || !(s->min_p >= 0 && s->min_p <= 1) ||
            !(s->repetition_penalty >= 0 && s->repetition_penalty <= 100))) {
    snprintf(msg, cap,
             "sampling out of range: temperature 0..100, top_p 0..1, top_k >= 0, "
             "min_p 0..1, repetition_penalty 0..100");
    return SA_EINVAL;
  }
  if (rq->think_budget < 0 || rq->vote_k < 0) {
    snprintf(msg, cap, "think_budget and vote_k must be >= 0");
    return SA_EINVAL;
  }
  if (co->n_requests >= o->max_requests) {
    snprintf(msg, cap, "the coordinator is at its limit of %d requests; retry later",
             o->max_requests);
    return SA_EFULL;
  }
  return 0;
}

void coord_submit_handler(sa_rpc_call_t *call, void *user) {
  coord_t *co = user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__SubmitRequest *rq = sa__submit_request__unpack(NULL, len, body);
  if (!rq) {
    sa_rpc_call_finish(call, SA_STATUS_INVALID_ARGUMENT, "malformed SubmitRequest");
    return;
  }
  char msg[512];
  int rc = validate(co, rq, msg, sizeof msg);
  if (rc) {
    SA_LOG_INFO("refused a request: %s", msg);
    sa_rpc_call_finish(call, sa_err_to_status(rc), msg);
    sa__submit_request__free_unpacked(rq, NULL);
    return;
  }
  request_t *r = calloc(1, sizeof *r);
  if (!r) {
    sa_rpc_call_finish(call, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    sa__submit_request__free_unpacked(rq, NULL);
    return;
  }
  r->co = co;
  r->id = ++co->next_request_id;
  co->requests_total++;
  if (rq->request_id[0])
    snprintf(r->request_id, sizeof r->request_id, "%s", rq->request_id);
  else
    snprintf(r->request_id, sizeof r->request_id, "req-%llu", (unsigned long long)r->id);
  r->call = call;
  r->replica = -1;
  r->encoder = -1;
  r->max_tokens = rq->max_tokens;
  r->n_chains = rq->n <= 0 ? 1 : rq->n;
  r->vote_rule = rq->vote_rule;
  r->vote_k = rq->vote_k;
  r->think_budget = rq->think_budget;
  sa__sampling_params__init(&r->sampling);
  if (rq->sampling) {
    r->sampling.temperature = rq->sampling->temperature;
    r->sampling.top_p = rq->sampling->top_p;
    r->sampling.top_k = rq->sampling->top_k;
    r->sampling.min_p = rq->sampling->min_p;
    r->sampling.repetition_penalty = rq->sampling->repetition_penalty;
    r->sampling.seed = rq->sampling->seed;
  }
  r->stream_reasoning = true;
  r->text_before_audio = rq->text_before_audio;
  r->prompt_text = strdup(rq->prompt);
  r->system_text = strdup(rq->system[0] ? rq->system : co->opts.default_system);
  r->t_start_ms = coord_now_ms();
  if (rq->audio.len) {
    r->audio = malloc(rq->audio.len);
    if (r->audio) {
      memcpy(r->audio, rq->audio.data, rq->audio.len);
      r->audio_len = rq->audio.len;
    }
  }
  sa__submit_request__free_unpacked(rq, NULL);
  if (!r->prompt_text || !r->system_text || (r->audio_len == 0 && r->audio)) {
    sa_rpc_call_finish(call, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    r->call = NULL;
    request_destroy(r);
    return;
  }
  for (int c = 0; c < r->n_chains; c++) {
    chain_t *ch = &r->chains[c];
    ch->req = r;
    ch->idx = c;
    ch->seq_id = ++co->next_seq_id;
    ch->next_input = -1;
    sa_detok_init(&ch->detok, co->tok);
  }
  /* link */
  r->prev = co->requests_tail;
  if (co->requests_tail)
    co->requests_tail->next = r;
  else
    co->requests = r;
  co->requests_tail = r;
  co->n_requests++;
  sa_rpc_call_set_cancel_cb(call, on_client_gone, r);
  if (r->state == REQ_DONE) /* cancelled before we got here */
    return;
  SA_LOG_INFO("request %s: %zu audio bytes, %d chain(s), max %d tokens", r->request_id,
              r->audio_len, r->n_chains, r->max_tokens);
  if (r->audio_len) {
    r->state = REQ_ENCODING;
    start_encode(r);
  } else {
    char err[512];
    int brc = build_prompt(r, NULL, 0, err, sizeof err);
    if (brc) {
      coord_request_fail(r, sa_err_to_status(brc), err);
      return;
    }
    r->state = REQ_QUEUED;
    coord_admit(co);
    coord_schedule(co);
  }
}

/* ----------------------------------------------------- tokens and results */

static int append(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
  if (*len + n + 1 > *cap) {
    size_t nc = (*cap ? *cap * 2 : 256);
    while (nc < *len + n + 1)
      nc *= 2;
    char *nb = realloc(*buf, nc);
    if (!nb)
      return SA_ENOMEM;
    *buf = nb;
    *cap = nc;
  }
  memcpy(*buf + *len, s, n);
  *len += n;
  (*buf)[*len] = '\0';
  return 0;
}

/* Streams the text of one generated token of chain c. */
void coord_emit_text(request_t *r, chain_t *c, int32_t tok) {
  char text[256];
  size_t n = 0;
  if (sa_detok_push(&c->detok, tok, text, sizeof text, &n) || n == 0)
    return;
  Sa__SubmitEvent ev = SA__SUBMIT_EVENT__INIT;
  Sa__SubmitEvent__Delta d = SA__SUBMIT_EVENT__DELTA__INIT;
  ev.payload_case = SA__SUBMIT_EVENT__PAYLOAD_DELTA;
  ev.delta = &d;
  d.chain = c->idx;
  d.kind = c->in_answer ? SA__DELTA_KIND__DELTA_ANSWER : SA__DELTA_KIND__DELTA_REASONING;
  d.text = text;
  text[n] = '\0';
  d.token_count = 1;
  if (c->in_answer)
    append(&c->answer, &c->answer_len, &c->answer_cap, text, n);
  else
    append(&c->reasoning, &c->reasoning_len, &c->reasoning_cap, text, n);
  if (r->t_first_token_ms == 0)
    r->t_first_token_ms = coord_now_ms();
  send_event(r, &ev);
}

/* The client's stream failed (it went away or its deadline passed): cancel
 * the request as if the RPC layer had reported it. Returns true if so. */
bool coord_request_check_client(request_t *r) {
  if (!r->client_lost || r->state == REQ_DONE)
    return false;
  on_client_gone(r->call, r);
  return true;
}

/* Trims and flushes a chain's held-back bytes at its end. */
void coord_chain_flush(request_t *r, chain_t *c) {
  char text[32];
  size_t n = 0;
  if (sa_detok_flush(&c->detok, text, sizeof text, &n) == 0 && n) {
    text[n] = '\0';
    if (c->in_answer)
      append(&c->answer, &c->answer_len, &c->answer_cap, text, n);
    else
      append(&c->reasoning, &c->reasoning_len, &c->reasoning_cap, text, n);
  }
  (void)r;
}

void coord_request_try_finish(request_t *r) {
  if (r->state == REQ_DONE || r->chains_done < r->n_chains)
    return;
  coord_t *co = r->co;
  Sa__SubmitEvent ev = SA__SUBMIT_EVENT__INIT;
  Sa__FinalResult fr = SA__FINAL_RESULT__INIT;
  Sa__ChainResult crs[COORD_MAX_CHAINS];
  Sa__ChainResult *cp[COORD_MAX_CHAINS];
  int64_t gen = 0;
  for (int i = 0; i < r->n_chains; i++) {
    chain_t *c = &r->chains[i];
    sa__chain_result__init(&crs[i]);
    crs[i].chain = i;
    crs[i].answer = c->answer ? c->answer : "";
    crs[i].normalized_answer = c->normalized;
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
  coord_vote(r, &fr);
  fr.prompt_tokens = r->prompt_len;
  fr.audio_tokens = r->n_audio_rows;
  fr.tokens_generated = gen;
  fr.tokens_saved = r->tokens_saved;
  fr.elapsed_s = (double)(coord_now_ms() - r->t_start_ms) / 1000.0;
  fr.time_to_first_token_s =
      r->t_first_token_ms ? (double)(r->t_first_token_ms - r->t_start_ms) / 1000.0 : 0;
  ev.payload_case = SA__SUBMIT_EVENT__PAYLOAD_FINAL;
  ev.final = &fr;
  send_event(r, &ev);
  SA_LOG_INFO("request %s done: %lld tokens in %.2f s", r->request_id, (long long)gen,
              fr.elapsed_s);
  r->state = REQ_DONE;
  end_stream(r, SA_STATUS_OK, NULL);
  (void)co;
  request_maybe_reap(r);
}

/* Tells the client that chain c finished by itself (sched.c calls it after
 * the vote saw the chain): its finish reason, normalized answer, tokens and
 * the vote's current leader. */
void coord_request_chain_event(request_t *r, chain_t *c) {
  Sa__SubmitEvent ev = SA__SUBMIT_EVENT__INIT;
  Sa__Progress pr = SA__PROGRESS__INIT;
  ev.payload_case = SA__SUBMIT_EVENT__PAYLOAD_PROGRESS;
  ev.progress = &pr;
  pr.stage = "chain_done";
  pr.chain = c->idx;
  pr.finish_reason = c->finish;
  pr.chain_answer = c->normalized;
  pr.chain_tokens = c->n_tokens;
  pr.chains_finished = r->chains_done;
  pr.chains_running = r->n_chains - r->chains_done;
  int votes = 0;
  pr.leading_answer = (char *)coord_vote_leader(r, &votes);
  pr.leading_votes = votes;
  pr.prompt_tokens = r->prompt_len;
  pr.audio_tokens = r->n_audio_rows;
  send_event(r, &ev);
}

/* Called by sched.c whenever a chain or a pending op of r completes. */
void coord_request_progress(request_t *r) { request_maybe_reap(r); }

static void cancel_handler_impl(sa_rpc_call_t *call, void *user) {
  coord_t *co = user;
  size_t len;
  const void *body = sa_rpc_call_request(call, &len);
  Sa__CancelRequest *rq = sa__cancel_request__unpack(NULL, len, body);
  if (!rq) {
    sa_rpc_call_reply(call, SA_STATUS_INVALID_ARGUMENT, "malformed CancelRequest", NULL, 0, NULL, 0);
    return;
  }
  Sa__CancelResponse resp = SA__CANCEL_RESPONSE__INIT;
  for (request_t *r = co->requests; r; r = r->next)
    if (strcmp(r->request_id, rq->request_id) == 0 && r->state != REQ_DONE) {
      resp.found = true;
      on_client_gone(NULL, r);
      break;
    }
  sa__cancel_request__free_unpacked(rq, NULL);
  uint8_t buf[16];
  size_t n = sa__cancel_response__pack(&resp, buf);
  sa_rpc_call_reply(call, SA_STATUS_OK, NULL, buf, n, NULL, 0);
}

void coord_cancel_handler(sa_rpc_call_t *call, void *user) { cancel_handler_impl(call, user); }
