/*
 * sched — continuous batching over pipeline replicas.
 *
 * Every chain of every admitted request is a sequence on the stages of its
 * replica. A micro-batch mixes prefill chunks and decode steps of sequences
 * that are not already in flight; with P stages up to P micro-batches are in
 * flight per replica so every stage has work (DESIGN §5). The coordinator
 * calls Stage/Step on stage 0 with the route of the replica; each stage
 * forwards activations to the next one directly, and the last stage's
 * StepResult travels back along the chain of calls.
 *
 * Prefill covers the prompt except its last token; chain i then forks from
 * chain 0 (shared prompt blocks, copy-on-write) and every chain feeds the last
 * prompt token as its first decode step, so each chain samples its first
 * token with its own RNG stream — the same tokens an independent request
 * with that chain's seed gets (kernels are batch-invariant).
 */
#include "coord.h"

#include "log.h"
#include "sa_error.h"
#include "sampler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void coord_emit_text(request_t *r, chain_t *c, int32_t tok);
void coord_chain_flush(request_t *r, chain_t *c);
void coord_request_progress(request_t *r);
void coord_request_chain_event(request_t *r, chain_t *c);
void coord_admit(coord_t *co);

#define MAX_SEQS_PER_BATCH 256
#define REPLAY_CHUNK_MAX 1024 /* tokens of one replay chunk */

typedef struct {
  coord_t *co;
  int replica;
  uint64_t batch_id;
  int n;
  chain_t *chains[MAX_SEQS_PER_BATCH];
  uint64_t seq_ids[MAX_SEQS_PER_BATCH];
  int epochs[MAX_SEQS_PER_BATCH];         /* the request's epoch when sent */
  int prefill_tokens[MAX_SEQS_PER_BATCH]; /* > 0: a prefill chunk of chain 0 */
  int replay_tokens[MAX_SEQS_PER_BATCH];  /* > 0: a replay chunk of the chain */
  uint64_t t_sent_ms;
} batch_t;

/* ------------------------------------------------------------ Free / Fork */

typedef struct {
  request_t *r;
  int pending;
  bool failed;
  char why[256];
} multi_t;

static void on_free_done(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  multi_t *m = user;
  (void)ch;
  if (res->status != SA_STATUS_OK)
    SA_LOG_WARN("Free on a stage failed: %s %s", sa_status_name(res->status), res->status_msg);
  if (--m->pending == 0) {
    if (m->r) {
      m->r->pending_ops--;
      coord_request_progress(m->r);
    }
    free(m);
  }
}

/* Sends Free(seq) to every stage of the replica (fire and forget, but the
 * request stays alive until the answers are in). */
void coord_chain_free(request_t *r, chain_t *c) {
  if (c->freed || c->inflight || r->replica < 0)
    return;
  c->freed = true;
  coord_free_seq(r->co, r->replica, c->seq_id, r);
}

void coord_free_seq(coord_t *co, int ri, uint64_t seq_id, request_t *r) {
  replica_t *rp = &co->replicas[ri];
  Sa__FreeRequest fq = SA__FREE_REQUEST__INIT;
  uint64_t id = seq_id;
  fq.seq_ids = &id;
  fq.n_seq_ids = 1;
  uint8_t buf[32];
  size_t len = sa__free_request__pack(&fq, buf);
  multi_t *m = calloc(1, sizeof *m);
  if (!m)
    return;
  m->r = r;
  for (int s = 0; s < rp->n_stages; s++) {
    worker_t *w = &co->workers[rp->stage[s]];
    if (!w->ch)
      continue;
    sa_rpc_call_opts_t o = {.timeout_ms = 5000};
    if (sa_rpc_channel_call(w->ch, "Stage/Free", buf, len, NULL, 0, &o, on_free_done, m, NULL) == 0)
      m->pending++;
  }
  if (m->pending == 0) {
    free(m);
    return;
  }
  if (r)
    r->pending_ops++;
}

static void on_fork_done(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  multi_t *m = user;
  (void)ch;
  if (res->status != SA_STATUS_OK && !m->failed) {
    m->failed = true;
    snprintf(m->why, sizeof m->why, "fork on a stage failed: %s: %s",
             sa_status_name(res->status), res->status_msg);
  }
  if (--m->pending)
    return;
  request_t *r = m->r;
  r->pending_ops--;
  if (r->state == REQ_FORKING) {
    if (m->failed) {
      coord_request_requeue(r, SA_STATUS_UNAVAILABLE, m->why);
    } else {
      r->state = REQ_DECODING;
      for (int c = 0; c < r->n_chains; c++)
        if (r->chains[c].state == CHAIN_WAIT)
          r->chains[c].state = CHAIN_DECODE;
    }
  }
  free(m);
  coord_request_progress(r);
  coord_schedule(r->co);
}

static void start_fork(request_t *r) {
  coord_t *co = r->co;
  replica_t *rp = &co->replicas[r->replica];
  uint64_t kids[COORD_MAX_CHAINS];
  for (int c = 1; c < r->n_chains; c++)
    kids[c - 1] = r->chains[c].seq_id;
  Sa__ForkRequest fq = SA__FORK_REQUEST__INIT;
  fq.parent_seq = r->chains[0].seq_id;
  fq.child_seqs = kids;
  fq.n_child_seqs = (size_t)(r->n_chains - 1);
  uint8_t buf[16 + 10 * COORD_MAX_CHAINS];
  size_t len = sa__fork_request__pack(&fq, buf);
  multi_t *m = calloc(1, sizeof *m);
  if (!m) {
    coord_request_fail(r, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  m->r = r;
  r->state = REQ_FORKING;
  co->forks_total += r->n_chains - 1;
  for (int s = 0; s < rp->n_stages; s++) {
    worker_t *w = &co->workers[rp->stage[s]];
    sa_rpc_call_opts_t o = {.timeout_ms = co->opts.step_timeout_ms};
    if (w->ch && sa_rpc_channel_call(w->ch, "Stage/Fork", buf, len, NULL, 0, &o, on_fork_done,
                                     m, NULL) == 0)
      m->pending++;
    else
      m->failed = true;
  }
  if (m->pending == 0) {
    free(m);
    coord_request_fail(r, SA_STATUS_UNAVAILABLE, "could not reach the stages to fork");
    return;
  }
  if (m->failed)
    snprintf(m->why, sizeof m->why, "could not reach every stage to fork");
  r->pending_ops++;
}

/* ---------------------------------------------------------- token results */

static void chain_finish(request_t *r, chain_t *c, Sa__FinishReason why) {
  if (c->state == CHAIN_DONE)
    return;
  c->state = CHAIN_DONE;
  c->finish = why;
  r->chains_done++;
  coord_chain_flush(r, c);
  coord_chain_done(r, c);
  coord_request_chain_event(r, c);
  coord_chain_free(r, c);
}

/* Handles the token sampled for chain c. */
static void chain_token(request_t *r, chain_t *c, int32_t tok) {
  coord_t *co = r->co;
  if (c->n_tokens == c->cap_tokens) {
    int nc = c->cap_tokens ? c->cap_tokens * 2 : 64;
    int32_t *nt = realloc(c->tokens, sizeof(int32_t) * (size_t)nc);
    if (!nt) {
      coord_request_fail(r, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      return;
    }
    c->tokens = nt;
    c->cap_tokens = nc;
  }
  /* the think budget: once reasoning reaches it, </think> is forced */
  if (!c->in_answer && r->think_budget > 0 && c->reasoning_tokens >= r->think_budget &&
      tok != co->tok_think_end && co->tok_think_end >= 0)
    tok = co->tok_think_end;
  c->tokens[c->n_tokens++] = tok;
  c->next_input = tok;
  if (r->t_first_token_ms == 0) /* a token, even one that makes no text yet */
    r->t_first_token_ms = coord_now_ms();
  if (tok == co->tok_eot) {
    chain_finish(r, c, SA__FINISH_REASON__FINISH_EOT);
    return;
  }
  if (tok == co->tok_think_end && !c->in_answer) {
    coord_chain_flush(r, c);
    sa_detok_init(&c->detok, co->tok);
    c->in_answer = true; /* </think> itself counts as neither */
  } else {
    if (c->in_answer)
      c->answer_tokens++;
    else
      c->reasoning_tokens++;
    coord_emit_text(r, c, tok);
  }
  if (c->n_tokens >= r->max_tokens)
    chain_finish(r, c, SA__FINISH_REASON__FINISH_LENGTH);
}

/* The stream chain c re-prefills after a failover: the prompt, then its
 * tokens, all but the last (which is fed by the first decode step). */
static int replay_len(const request_t *r, const chain_t *c) {
  return r->prompt_len - 1 + c->n_tokens;
}

static int32_t replay_token(const request_t *r, const chain_t *c, int p) {
  return p < r->prompt_len ? r->prompt[p] : c->tokens[p - r->prompt_len];
}

/* True for a step failure another replica may not have. */
static bool retryable(sa_status_t st) {
  return st == SA_STATUS_UNAVAILABLE || st == SA_STATUS_DEADLINE_EXCEEDED ||
         st == SA_STATUS_FAILED_PRECONDITION || st == SA_STATUS_ABORTED;
}

/* An entry of a batch sent before its request failed over: the sequence is
 * gone with the old replica's KV; free it there and drop the result. */
static void stale_entry(batch_t *b, int i) {
  chain_t *c = b->chains[i];
  request_t *r = c->req;
  if (b->prefill_tokens[i])
    r->prefill_inflight = 0; /* prefill entries never mark the chain */
  else
    c->inflight = false;
  coord_free_seq(b->co, b->replica, b->seq_ids[i], r);
  coord_request_progress(r);
}

static void on_step_done(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  batch_t *b = user;
  coord_t *co = b->co;
  (void)ch;
  replica_t *rp = &co->replicas[b->replica];
  rp->inflight--;
  Sa__StepResult *sr = NULL;
  if (res->status == SA_STATUS_OK)
    sr = sa__step_result__unpack(NULL, res->body_len, res->body);
  if (!sr) {
    char why[300];
    sa_status_t st = res->status == SA_STATUS_OK ? SA_STATUS_INTERNAL : res->status;
    snprintf(why, sizeof why, "pipeline step failed: %s%s%s", sa_status_name(res->status),
             res->status_msg[0] ? ": " : "", res->status_msg);
    SA_LOG_WARN("replica %s batch %llu: %s", rp->name, (unsigned long long)b->batch_id, why);
    /* one entry at a time: a request is reaped only once none of its
     * chains is in flight, i.e. after its last entry in this batch */
    for (int i = 0; i < b->n; i++) {
      chain_t *c = b->chains[i];
      request_t *r = c->req;
      if (b->epochs[i] != r->epoch) {
        stale_entry(b, i);
        continue;
      }
      c->inflight = false;
      if (b->prefill_tokens[i])
        r->prefill_inflight = 0;
      if (retryable(st))
        coord_request_requeue(r, st, why);
      else
        coord_request_fail(r, st, why);
    }
    free(b);
    coord_schedule(co);
    return;
  }
  rp->steps++;
  for (int i = 0; i < b->n; i++) {
    chain_t *c = b->chains[i];
    request_t *r = c->req;
    if (b->epochs[i] != r->epoch) {
      stale_entry(b, i);
      continue;
    }
    c->inflight = false;
    const Sa__SeqResult *res_i = NULL;
    for (size_t k = 0; k < sr->n_results; k++)
      if (sr->results[k]->seq_id == b->seq_ids[i]) {
        res_i = sr->results[k];
        break;
      }
    if (b->prefill_tokens[i]) {
      r->prefill_inflight = 0;
      rp->tokens += (uint64_t)b->prefill_tokens[i];
      if (r->state == REQ_PREFILL) {
        r->prefilled += b->prefill_tokens[i];
        if (r->prefilled >= r->prompt_len - 1) {
          for (int k = 0; k < r->n_chains; k++)
            r->chains[k].next_input = r->prompt[r->prompt_len - 1];
          if (r->n_chains > 1) {
            start_fork(r);
          } else {
            r->state = REQ_DECODING;
            r->chains[0].state = CHAIN_DECODE;
          }
        }
      }
      coord_request_progress(r);
      continue;
    }
    if (b->replay_tokens[i]) {
      rp->tokens += (uint64_t)b->replay_tokens[i];
      if (r->state == REQ_REPLAY && c->state == CHAIN_WAIT) {
        c->replayed += b->replay_tokens[i];
        if (c->replayed >= replay_len(r, c)) {
          c->next_input = c->n_tokens ? c->tokens[c->n_tokens - 1] : r->prompt[r->prompt_len - 1];
          c->state = CHAIN_DECODE;
          bool all = true;
          for (int k = 0; k < r->n_chains; k++)
            all = all && r->chains[k].state != CHAIN_WAIT;
          if (all) {
            r->state = REQ_DECODING;
            SA_LOG_INFO("request %s: re-prefilled on replica %s; decoding resumes",
                        r->request_id, rp->name);
          }
        }
      } else {
        coord_chain_free(r, c);
      }
      coord_request_progress(r);
      continue;
    }
    rp->tokens++;
    if (c->state != CHAIN_DECODE || r->state == REQ_DONE) {
      coord_chain_free(r, c); /* cancelled or decided while in flight */
      coord_request_progress(r);
      continue;
    }
    if (!res_i || res_i->status != SA__STATUS_CODE__OK || res_i->token < 0) {
      coord_request_fail(r, SA_STATUS_INTERNAL, "the last stage returned no token");
      continue;
    }
    chain_token(r, c, res_i->token);
    if (coord_request_check_client(r))
      continue;
    coord_request_try_finish(r);
    coord_request_progress(r);
  }
  if (rp->n_stages > 0) { /* the last stage's KV use, fresher than heartbeats */
    worker_t *w = &co->workers[rp->stage[rp->n_stages - 1]];
    w->kv_used = sr->kv_blocks_used;
    w->kv_free = sr->kv_blocks_free;
  }
  sa__step_result__free_unpacked(sr, NULL);
  free(b);
  coord_schedule(co);
}

/* -------------------------------------------------------------- batching */

typedef struct {
  Sa__StepBatch sb;
  Sa__SeqStep steps[MAX_SEQS_PER_BATCH];
  Sa__SeqStep *step_ptrs[MAX_SEQS_PER_BATCH];
  Sa__SamplingParams sampling[MAX_SEQS_PER_BATCH];
  Sa__EmbedSpan span;
  Sa__EmbedSpan *span_ptr;
  int32_t one_token[MAX_SEQS_PER_BATCH];
  int32_t replay_ids[REPLAY_CHUNK_MAX];
  char *route[COORD_MAX_STAGES];
} batch_msg_t;

static batch_msg_t g_msg; /* one loop thread: reused, never on two batches at once */

/* Builds and sends one micro-batch for replica ri. Returns the number of
 * sequences sent (0 = nothing to do). */
static int send_batch(coord_t *co, int ri, int share) {
  replica_t *rp = &co->replicas[ri];
  batch_t *b = calloc(1, sizeof *b);
  if (!b)
    return 0;
  b->co = co;
  b->replica = ri;
  b->batch_id = ++co->next_batch_id;
  batch_msg_t *m = &g_msg;
  memset(&m->sb, 0, sizeof m->sb);
  sa__step_batch__init(&m->sb);
  int max_seqs = rp->max_batch < MAX_SEQS_PER_BATCH ? rp->max_batch : MAX_SEQS_PER_BATCH;
  if (share > 0 && share < max_seqs)
    max_seqs = share;
  int budget = rp->max_tokens_per_step;
  int64_t total = 0;
  uint32_t flags = 0;
  const float *emb_rows = NULL;
  int emb_first = 0, emb_n = 0;
  /* decode steps first (latency), then at most one prefill chunk */
  for (request_t *r = co->requests; r && b->n < max_seqs && budget > 0; r = r->next) {
    if (r->replica != ri || r->state != REQ_DECODING)
      continue;
    for (int k = 0; k < r->n_chains && b->n < max_seqs && budget > 0; k++) {
      chain_t *c = &r->chains[k];
      if (c->state != CHAIN_DECODE || c->inflight)
        continue;
      int i = b->n++;
      Sa__SeqStep *s = &m->steps[i];
      sa__seq_step__init(s);
      m->sampling[i] = r->sampling;
      s->seq_id = c->seq_id;
      s->request_id = r->id;
      s->chain = c->idx;
      s->position = r->prompt_len - 1 + c->n_tokens;
      s->n_tokens = 1;
      m->one_token[i] = c->next_input;
      s->token_ids = &m->one_token[i];
      s->n_token_ids = 1;
      s->sampling = &m->sampling[i];
      s->rng_seed = sa_rng_chain_seed(r->sampling.seed, (uint32_t)c->idx);
      s->rng_position = s->position + 1;
      s->flags = SA__STEP_FLAGS__STEP_DECODE;
      s->want_sample = true;
      m->step_ptrs[i] = s;
      b->chains[i] = c;
      b->seq_ids[i] = c->seq_id;
      b->epochs[i] = r->epoch;
      c->inflight = true;
      budget--;
      total++;
      flags |= SA__STEP_FLAGS__STEP_DECODE;
    }
  }
  for (request_t *r = co->requests; r && b->n < max_seqs && budget > 0; r = r->next) {
    if (r->replica != ri || r->state != REQ_PREFILL || r->prefill_inflight)
      continue;
    int left = r->prompt_len - 1 - r->prefilled;
    if (left <= 0)
      continue;
    int n = left < co->opts.prefill_chunk ? left : co->opts.prefill_chunk;
    if (n > budget)
      n = budget;
    chain_t *c = &r->chains[0];
    int i = b->n++;
    Sa__SeqStep *s = &m->steps[i];
    sa__seq_step__init(s);
    m->sampling[i] = r->sampling;
    s->seq_id = c->seq_id;
    s->request_id = r->id;
    s->chain = 0;
    s->position = r->prefilled;
    s->n_tokens = n;
    s->token_ids = r->prompt + r->prefilled;
    s->n_token_ids = (size_t)n;
    s->sampling = &m->sampling[i];
    s->rng_seed = r->sampling.seed;
    s->flags = SA__STEP_FLAGS__STEP_PREFILL;
    s->want_sample = false;
    /* audio rows inside this chunk: one span (rows are contiguous) */
    int a0 = -1, an = 0;
    for (int k = 0; k < r->n_audio_rows; k++) {
      int p = r->audio_pos[k];
      if (p >= r->prefilled && p < r->prefilled + n) {
        if (a0 < 0)
          a0 = k;
        an++;
      }
    }
    if (an > 0) {
      sa__embed_span__init(&m->span);
      m->span.frame = 0;
      m->span.first_row = 0;
      m->span.n_rows = an;
      m->span.at_token = r->audio_pos[a0] - r->prefilled;
      m->span_ptr = &m->span;
      s->embed_spans = &m->span_ptr;
      s->n_embed_spans = 1;
      emb_rows = r->audio_rows + (size_t)a0 * (size_t)r->hidden;
      emb_first = a0;
      emb_n = an;
    }
    m->step_ptrs[i] = s;
    b->chains[i] = c;
    b->seq_ids[i] = c->seq_id;
    b->epochs[i] = r->epoch;
    b->prefill_tokens[i] = n;
    r->prefill_inflight = 1;
    total += n;
    budget -= n;
    flags |= SA__STEP_FLAGS__STEP_PREFILL;
    break; /* one audio frame per batch: at most one prefill chunk */
  }
  /* after a failover: one chain's replay chunk (prompt + its tokens), if no
   * prefill chunk took the batch's audio frame */
  bool have_prefill = flags & SA__STEP_FLAGS__STEP_PREFILL;
  for (request_t *r = co->requests; r && !have_prefill && b->n < max_seqs && budget > 0;
       r = r->next) {
    if (r->replica != ri || r->state != REQ_REPLAY || r->prefill_inflight)
      continue;
    chain_t *c = NULL;
    for (int k = 0; k < r->n_chains && !c; k++)
      if (r->chains[k].state == CHAIN_WAIT && !r->chains[k].inflight &&
          r->chains[k].replayed < replay_len(r, &r->chains[k]))
        c = &r->chains[k];
    if (!c)
      continue;
    int at = c->replayed;
    int n = replay_len(r, c) - at;
    if (n > co->opts.prefill_chunk)
      n = co->opts.prefill_chunk;
    if (n > budget)
      n = budget;
    if (n > REPLAY_CHUNK_MAX)
      n = REPLAY_CHUNK_MAX;
    for (int k = 0; k < n; k++)
      m->replay_ids[k] = replay_token(r, c, at + k);
    int i = b->n++;
    Sa__SeqStep *s = &m->steps[i];
    sa__seq_step__init(s);
    m->sampling[i] = r->sampling;
    s->seq_id = c->seq_id;
    s->request_id = r->id;
    s->chain = c->idx;
    s->position = at;
    s->n_tokens = n;
    s->token_ids = m->replay_ids;
    s->n_token_ids = (size_t)n;
    s->sampling = &m->sampling[i];
    s->rng_seed = sa_rng_chain_seed(r->sampling.seed, (uint32_t)c->idx);
    s->flags = SA__STEP_FLAGS__STEP_PREFILL;
    s->want_sample = false;
    int a0 = -1, an = 0;
    for (int k = 0; k < r->n_audio_rows; k++) {
      int p = r->audio_pos[k];
      if (p >= at && p < at + n) {
        if (a0 < 0)
          a0 = k;
        an++;
      }
    }
    if (an > 0) {
      sa__embed_span__init(&m->span);
      m->span.frame = 0;
      m->span.first_row = 0;
      m->span.n_rows = an;
      m->span.at_token = r->audio_pos[a0] - at;
      m->span_ptr = &m->span;
      s->embed_spans = &m->span_ptr;
      s->n_embed_spans = 1;
      emb_rows = r->audio_rows + (size_t)a0 * (size_t)r->hidden;
      emb_n = an;
    }
    m->step_ptrs[i] = s;
    b->chains[i] = c;
    b->seq_ids[i] = c->seq_id;
    b->epochs[i] = r->epoch;
    b->replay_tokens[i] = n;
    c->inflight = true;
    total += n;
    budget -= n;
    flags |= SA__STEP_FLAGS__STEP_PREFILL;
    break;
  }
  (void)emb_first;
  if (b->n == 0) {
    free(b);
    return 0;
  }
  m->sb.batch_id = b->batch_id;
  m->sb.replica = ri;
  m->sb.hop = 0;
  m->sb.n_stages = rp->n_stages;
  m->sb.seqs = m->step_ptrs;
  m->sb.n_seqs = (size_t)b->n;
  m->sb.flags = flags;
  m->sb.epoch = co->epoch;
  m->sb.total_tokens = total;
  for (int s = 0; s < rp->n_stages; s++)
    m->route[s] = co->workers[rp->stage[s]].address;
  m->sb.route = m->route;
  m->sb.n_route = (size_t)rp->n_stages;
  size_t len = sa__step_batch__get_packed_size(&m->sb);
  uint8_t *buf = malloc(len);
  int rc = SA_ENOMEM;
  if (buf) {
    sa__step_batch__pack(&m->sb, buf);
    sa_rpc_frame_t fr;
    int nf = 0;
    if (emb_n > 0) {
      memset(&fr, 0, sizeof fr);
      fr.desc.dtype = SA_DTYPE_F32;
      fr.desc.ndim = 2;
      fr.desc.shape[0] = emb_n;
      fr.desc.shape[1] = co->cfg.hidden_size;
      fr.data = emb_rows;
      fr.nbytes = sizeof(float) * (size_t)emb_n * (size_t)co->cfg.hidden_size;
      fr.free_fn = NULL; /* copied: the request may go away first */
      nf = 1;
    }
    sa_rpc_call_opts_t o = {.timeout_ms = co->opts.step_timeout_ms};
    worker_t *w0 = &co->workers[rp->stage[0]];
    rc = w0->ch ? sa_rpc_channel_call(w0->ch, "Stage/Step", buf, len, nf ? &fr : NULL, nf, &o,
                                      on_step_done, b, NULL)
                : SA_EUNAVAIL;
    free(buf);
  }
  if (rc) {
    SA_LOG_WARN("replica %s: could not send a step: %s", rp->name, sa_strerror(rc));
    for (int i = 0; i < b->n; i++) {
      request_t *r = b->chains[i]->req;
      if (b->prefill_tokens[i])
        r->prefill_inflight = 0;
      else
        b->chains[i]->inflight = false;
      if (rc != SA_EFULL) /* EFULL: the sequences simply wait for the next round */
        coord_request_fail(r, sa_err_to_status(rc), "could not reach the first stage of the replica");
    }
    free(b);
    return 0;
  }
  rp->inflight++;
  b->t_sent_ms = coord_now_ms();
  return b->n;
}

static int ready_sequences(coord_t *co, int ri) {
  int n = 0;
  for (request_t *r = co->requests; r; r = r->next) {
    if (r->replica != ri)
      continue;
    if (r->state == REQ_DECODING)
      for (int k = 0; k < r->n_chains; k++)
        n += r->chains[k].state == CHAIN_DECODE && !r->chains[k].inflight;
    else if (r->state == REQ_PREFILL && !r->prefill_inflight)
      n++;
    else if (r->state == REQ_REPLAY && !r->prefill_inflight)
      for (int k = 0; k < r->n_chains; k++)
        n += r->chains[k].state == CHAIN_WAIT && !r->chains[k].inflight &&
             r->chains[k].replayed < replay_len(r, &r->chains[k]);
  }
  return n;
}

void coord_schedule(coord_t *co) {
  if (co->stopping)
    return;
  coord_admit(co);
  for (int ri = 0; ri < COORD_MAX_REPLICAS; ri++) {
    replica_t *rp = &co->replicas[ri];
    if (!rp->used || !rp->ready)
      continue;
    /* keep at least P micro-batches in flight: split the ready sequences
     * over the free pipeline slots */
    int slots = rp->n_stages + co->opts.extra_microbatches;
    while (rp->inflight < slots) {
      int ready = ready_sequences(co, ri);
      if (ready == 0)
        break;
      int free_slots = slots - rp->inflight;
      int share = (ready + free_slots - 1) / free_slots;
      if (send_batch(co, ri, share) == 0)
        break;
    }
  }
}
