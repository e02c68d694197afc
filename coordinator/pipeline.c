/*
 * pipeline — Stage/Step, Stage/Fork, Stage/Free and Encoder/Encode calls and
 * the batches in flight (see pipeline.h).
 */
#include "pipeline.h"

#include "log.h"
#include "sa_time.h"
#include "sampler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void coord_pipeline_init(coord_pipeline_t *pl, const coord_opts_t *opts,
                         const coord_model_t *model, coord_registry_t *reg,
                         const coord_pipeline_cbs_t *cbs, void *user) {
  memset(pl, 0, sizeof *pl);
  pl->opts = opts;
  pl->model = model;
  pl->reg = reg;
  pl->cbs = *cbs;
  pl->user = user;
}

void coord_encoded_free(coord_encoded_t **enc) {
  if (!enc || !*enc)
    return;
  free((*enc)->rows);
  free((*enc)->chunk_tokens);
  free(*enc);
  *enc = NULL;
}

static sa_rpc_channel_t *stage_channel(const coord_pipeline_t *pl, const coord_replica_t *rp,
                                       int s) {
  const coord_worker_t *w = coord_registry_worker(pl->reg, rp->stage[s]);
  return w ? w->ch : NULL;
}

/* ------------------------------------------------------------------ step */


/* The batch's embed spans for entry e: runs of consecutive prompt positions
 * among its audio rows (one run per 25 s audio chunk). Returns the count. */
static int embed_spans(const coord_plan_entry_t *e, Sa__EmbedSpan *spans, Sa__EmbedSpan **ptrs,
                       int cap) {
  const coord_request_t *r = e->req;
  int n = 0;
  for (int k = 0; k < e->emb_n && n < cap;) {
    int row = e->emb_first + k, run = 1;
    while (k + run < e->emb_n && r->audio_pos[row + run] == r->audio_pos[row] + run)
      run++;
    sa__embed_span__init(&spans[n]);
    spans[n].frame = 0;
    spans[n].first_row = k;
    spans[n].n_rows = run;
    spans[n].at_token = r->audio_pos[row] - e->position;
    ptrs[n] = &spans[n];
    n++;
    k += run;
  }
  return n;
}

/* A step in flight: the event to be, and who reports it. */
typedef struct {
  coord_pipeline_t *pl;
  coord_step_t *st;
  uint64_t t_sent_ns;
} batch_t;

static void on_step_done(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user);

static int pipeline_step(void *impl, const coord_plan_t *plan) {
  coord_pipeline_t *pl = impl;
  const coord_replica_t *rp = coord_registry_replica(pl->reg, plan->replica);
  if (!rp || !rp->ready || plan->n < 1)
    return SA_EINVAL;
  sa_rpc_channel_t *ch0 = stage_channel(pl, rp, 0);
  if (!ch0)
    return SA_EUNAVAIL;
  coord_step_t *st = calloc(1, sizeof *st);
  batch_t *b = malloc(sizeof *b);
  if (!st || !b) {
    free(st);
    free(b);
    return SA_ENOMEM;
  }
  coord_step_msg_t *m = &pl->msg; /* reused: one loop thread, one message at a time */
  b->pl = pl;
  b->st = st;
  b->t_sent_ns = sa_now_ns();
  st->replica = plan->replica;
  st->batch_id = ++pl->next_batch_id;
  sa__step_batch__init(&m->sb);
  uint32_t flags = 0;
  const coord_plan_entry_t *audio = NULL;
  for (int i = 0; i < plan->n; i++) {
    const coord_plan_entry_t *e = &plan->e[i];
    const coord_request_t *r = e->req;
    const coord_chain_t *c = &r->chains[e->chain];
    Sa__SeqStep *s = &m->steps[i];
    sa__seq_step__init(s);
    s->seq_id = c->seq_id;
    s->request_id = r->id;
    s->chain = e->chain;
    s->position = e->position;
    s->n_tokens = e->n_tokens;
    s->token_ids = (int32_t *)e->tokens;
    s->n_token_ids = (size_t)e->n_tokens;
    if (e->kind == COORD_STEP_DECODE) {
      m->one_token[i] = e->tokens[0];
      s->token_ids = &m->one_token[i];
    }
    s->sampling = (Sa__SamplingParams *)&r->sampling;
    s->rng_seed = e->kind == COORD_STEP_PREFILL
                      ? r->sampling.seed
                      : sa_rng_chain_seed(r->sampling.seed, (uint32_t)e->chain);
    s->want_sample = e->kind == COORD_STEP_DECODE;
    s->flags = e->kind == COORD_STEP_DECODE ? SA__STEP_FLAGS__STEP_DECODE
                                            : SA__STEP_FLAGS__STEP_PREFILL;
    if (e->kind == COORD_STEP_DECODE)
      s->rng_position = s->position + 1;
    if (e->emb_n > 0) {
      s->n_embed_spans = (size_t)embed_spans(e, m->spans, m->span_ptrs, COORD_MAX_SEQS_PER_BATCH);
      s->embed_spans = m->span_ptrs;
      audio = e;
    }
    flags |= s->flags;
    m->step_ptrs[i] = s;
    coord_step_entry_t *se = &st->e[i];
    se->req = e->req;
    se->chain = e->chain;
    se->seq_id = c->seq_id;
    se->epoch = r->epoch;
    se->kind = e->kind;
    se->n_tokens = e->n_tokens;
    se->token = -1;
  }
  st->n = plan->n;
  m->sb.batch_id = st->batch_id;
  m->sb.replica = plan->replica;
  m->sb.hop = 0;
  m->sb.n_stages = rp->n_stages;
  m->sb.seqs = m->step_ptrs;
  m->sb.n_seqs = (size_t)plan->n;
  m->sb.flags = flags;
  m->sb.epoch = pl->reg->epoch;
  m->sb.total_tokens = plan->total_tokens;
  for (int s = 0; s < rp->n_stages; s++) {
    const coord_worker_t *w = coord_registry_worker(pl->reg, rp->stage[s]);
    m->route[s] = w ? (char *)w->address : "";
    m->route_keys[s] = w ? (char *)w->key : "";
  }
  m->sb.route = m->route;
  m->sb.n_route = (size_t)rp->n_stages;
  m->sb.route_keys = m->route_keys;
  m->sb.n_route_keys = m->route_keys[0][0] ? (size_t)rp->n_stages : 0;
  size_t len = sa__step_batch__get_packed_size(&m->sb);
  uint8_t *buf = malloc(len);
  int rc = SA_ENOMEM;
  if (buf) {
    sa__step_batch__pack(&m->sb, buf);
    sa_rpc_frame_t fr;
    int nf = 0;
    if (audio) {
      const coord_request_t *r = audio->req;
      memset(&fr, 0, sizeof fr);
      fr.desc.dtype = SA_DTYPE_F32;
      fr.desc.ndim = 2;
      fr.desc.shape[0] = audio->emb_n;
      fr.desc.shape[1] = r->hidden;
      fr.data = r->audio_rows + (size_t)audio->emb_first * (size_t)r->hidden;
      fr.nbytes = sizeof(float) * (size_t)audio->emb_n * (size_t)r->hidden;
      fr.free_fn = NULL; /* copied: the request may go away first */
      nf = 1;
    }
    sa_rpc_call_opts_t o = {.timeout_ms = pl->opts->step_timeout_ms};
    rc = sa_rpc_channel_call(ch0, "Stage/Step", buf, len, nf ? &fr : NULL, nf, &o, on_step_done,
                             b, NULL);
    free(buf);
  }
  if (rc) {
    free(st);
    free(b);
    return rc;
  }
  pl->inflight[plan->replica]++;
  return 0;
}

static void on_step_done(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  batch_t *b = user;
  coord_pipeline_t *pl = b->pl;
  coord_step_t *st = b->st;
  (void)ch;
  coord_hist_observe(&pl->stats[st->replica].step, (double)(sa_now_ns() - b->t_sent_ns) * 1e-9);
  free(b);
  pl->inflight[st->replica]--;
  Sa__StepResult *sr = NULL;
  if (res->status == SA_STATUS_OK)
    sr = sa__step_result__unpack(NULL, res->body_len, res->body);
  if (!sr) {
    st->status = res->status == SA_STATUS_OK ? SA_STATUS_INTERNAL : res->status;
    snprintf(st->msg, sizeof st->msg, "pipeline step failed: %s%s%s",
             sa_status_name(res->status), res->status_msg[0] ? ": " : "",
             res->status == SA_STATUS_OK ? "malformed StepResult" : res->status_msg);
    pl->cbs.step_done(pl->user, st);
    return;
  }
  coord_replica_stats_t *stats = &pl->stats[st->replica];
  int rows = 0;
  for (int i = 0; i < st->n; i++) {
    coord_step_entry_t *e = &st->e[i];
    stats->tokens += (uint64_t)e->n_tokens;
    rows += e->n_tokens;
    if (e->kind != COORD_STEP_DECODE)
      continue;
    for (size_t k = 0; k < sr->n_results; k++)
      if (sr->results[k]->seq_id == e->seq_id) {
        if (sr->results[k]->status == SA__STATUS_CODE__OK)
          e->token = sr->results[k]->token;
        break;
      }
  }
  coord_rows_observe(&stats->rows, rows);
  const coord_replica_t *rp = coord_registry_replica(pl->reg, st->replica);
  if (rp) /* every stage's compute time, the last stage first */
    for (size_t j = 0; j < sr->n_stage_compute_ms && (int)j < rp->n_stages; j++) {
      double ms = sr->stage_compute_ms[j];
      if (ms >= 0 && ms < 3.6e6)
        coord_hist_observe(&pl->stage_compute[rp->stage[rp->n_stages - 1 - (int)j]], ms / 1e3);
    }
  if (rp && rp->n_stages > 0) /* the last stage's KV use, fresher than heartbeats */
    coord_registry_note_kv(pl->reg, rp->stage[rp->n_stages - 1], sr->kv_blocks_used,
                           sr->kv_blocks_free);
  sa__step_result__free_unpacked(sr, NULL);
  pl->cbs.step_done(pl->user, st);
}

static int pipeline_inflight(void *impl, int ri) {
  coord_pipeline_t *pl = impl;
  return ri >= 0 && ri < COORD_MAX_REPLICAS ? pl->inflight[ri] : 0;
}

/* ------------------------------------------------------------ Free / Fork */

/* One call fanned out to every stage of a replica. */
typedef struct {
  coord_pipeline_t *pl;
  coord_request_t *r;
  int pending;
  bool failed;
  char why[256];
} multi_t;

static void on_free_done(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  multi_t *m = user;
  (void)ch;
  if (res->status != SA_STATUS_OK)
    SA_LOG_WARN("Free on a stage failed: %s %s", sa_status_name(res->status), res->status_msg);
  if (--m->pending > 0)
    return;
  if (m->r)
    m->pl->cbs.free_done(m->pl->user, m->r);
  free(m);
}

static int pipeline_free(void *impl, int ri, uint64_t seq_id, coord_request_t *owner) {
  coord_pipeline_t *pl = impl;
  const coord_replica_t *rp = coord_registry_replica(pl->reg, ri);
  if (!rp)
    return SA_EINVAL;
  Sa__FreeRequest fq = SA__FREE_REQUEST__INIT;
  uint64_t id = seq_id;
  fq.seq_ids = &id;
  fq.n_seq_ids = 1;
  uint8_t buf[32];
  size_t len = sa__free_request__pack(&fq, buf);
  multi_t *m = calloc(1, sizeof *m);
  if (!m)
    return SA_ENOMEM;
  m->pl = pl;
  m->r = owner;
  for (int s = 0; s < rp->n_stages; s++) {
    sa_rpc_channel_t *ch = stage_channel(pl, rp, s);
    sa_rpc_call_opts_t o = {.timeout_ms = 5000};
    if (ch && sa_rpc_channel_call(ch, "Stage/Free", buf, len, NULL, 0, &o, on_free_done, m,
                                  NULL) == 0)
      m->pending++;
  }
  if (m->pending == 0) {
    free(m);
    return SA_EUNAVAIL;
  }
  return 0;
}

static void on_fork_done(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  multi_t *m = user;
  (void)ch;
  if (res->status != SA_STATUS_OK && !m->failed) {
    m->failed = true;
    snprintf(m->why, sizeof m->why, "fork on a stage failed: %s: %s",
             sa_status_name(res->status), res->status_msg);
  }
  if (--m->pending > 0)
    return;
  m->pl->cbs.fork_done(m->pl->user, m->r, m->failed ? SA_STATUS_UNAVAILABLE : SA_STATUS_OK,
                       m->failed ? m->why : "");
  free(m);
}

static int pipeline_fork(void *impl, coord_request_t *r) {
  coord_pipeline_t *pl = impl;
  const coord_replica_t *rp = coord_registry_replica(pl->reg, r->replica);
  if (!rp)
    return SA_EINVAL;
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
  if (!m)
    return SA_ENOMEM;
  m->pl = pl;
  m->r = r;
  for (int s = 0; s < rp->n_stages; s++) {
    sa_rpc_channel_t *ch = stage_channel(pl, rp, s);
    sa_rpc_call_opts_t o = {.timeout_ms = pl->opts->step_timeout_ms};
    if (ch && sa_rpc_channel_call(ch, "Stage/Fork", buf, len, NULL, 0, &o, on_fork_done, m,
                                  NULL) == 0)
      m->pending++;
    else
      m->failed = true;
  }
  if (m->pending == 0) {
    free(m);
    return SA_EUNAVAIL;
  }
  if (m->failed)
    snprintf(m->why, sizeof m->why, "could not reach every stage to fork");
  pl->forks_total += r->n_chains - 1;
  return 0;
}

/* ---------------------------------------------------------------- encode */

typedef struct {
  coord_pipeline_t *pl;
  coord_request_t *r;
  int wi;
} encode_call_t;

/* Checks and copies an EncodeResponse into enc; returns 0 or fills msg. */
static int take_encoding(const coord_pipeline_t *pl, const sa_rpc_result_t *res,
                         coord_encoded_t *enc) {
  Sa__EncodeResponse *er = sa__encode_response__unpack(NULL, res->body_len, res->body);
  if (!er || res->n_tensors != 1 || res->tensors[0].desc.ndim != 2 ||
      res->tensors[0].desc.shape[1] != pl->model->hidden_size ||
      (res->tensors[0].desc.dtype != SA_DTYPE_F32 && res->tensors[0].desc.dtype != SA_DTYPE_BF16)) {
    if (er)
      sa__encode_response__free_unpacked(er, NULL);
    snprintf(enc->msg, sizeof enc->msg, "malformed EncodeResponse from the encoder");
    return SA_EPROTO;
  }
  int64_t rows = res->tensors[0].desc.shape[0];
  int64_t sum = 0;
  for (size_t i = 0; i < er->n_chunk_tokens; i++)
    sum += er->chunk_tokens[i] < 0 ? 1 << 30 : er->chunk_tokens[i];
  if (sum != rows || rows > INT32_MAX / 2) {
    sa__encode_response__free_unpacked(er, NULL);
    snprintf(enc->msg, sizeof enc->msg, "encoder rows disagree with its chunk counts");
    return SA_EPROTO;
  }
  size_t hidden = (size_t)pl->model->hidden_size;
  enc->rows = malloc(sizeof(float) * (size_t)(rows ? rows : 1) * hidden);
  enc->chunk_tokens = malloc(sizeof(int32_t) * (er->n_chunk_tokens ? er->n_chunk_tokens : 1));
  if (!enc->rows || !enc->chunk_tokens) {
    sa__encode_response__free_unpacked(er, NULL);
    snprintf(enc->msg, sizeof enc->msg, "out of memory for audio rows");
    return SA_ENOMEM;
  }
  sa_to_f32_n(enc->rows, res->tensors[0].data, res->tensors[0].desc.dtype,
              (size_t)rows * hidden);
  enc->n_rows = (int)rows;
  memcpy(enc->chunk_tokens, er->chunk_tokens, sizeof(int32_t) * er->n_chunk_tokens);
  enc->n_chunks = (int)er->n_chunk_tokens;
  sa__encode_response__free_unpacked(er, NULL);
  return 0;
}

static void on_encoded(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  encode_call_t *ec = user;
  coord_pipeline_t *pl = ec->pl;
  (void)ch;
  coord_registry_encoder_busy(pl->reg, ec->wi, -1);
  coord_encoded_t *enc = calloc(1, sizeof *enc);
  if (enc) {
    enc->encoder = ec->wi;
    enc->status = res->status;
    snprintf(enc->msg, sizeof enc->msg, "%s", res->status_msg);
    if (res->status == SA_STATUS_OK) {
      int rc = take_encoding(pl, res, enc);
      if (rc) {
        enc->status = sa_err_to_status(rc) == SA_STATUS_RESOURCE_EXHAUSTED
                          ? SA_STATUS_RESOURCE_EXHAUSTED
                          : SA_STATUS_INTERNAL;
        free(enc->rows);
        free(enc->chunk_tokens);
        enc->rows = NULL;
        enc->chunk_tokens = NULL;
      }
    }
  }
  pl->cbs.encode_done(pl->user, ec->r, enc); /* enc NULL: out of memory */
  free(ec);
}

static int pipeline_encode(void *impl, int wi, coord_request_t *r) {
  coord_pipeline_t *pl = impl;
  const coord_worker_t *w = coord_registry_worker(pl->reg, wi);
  if (!w || !w->ch)
    return SA_EUNAVAIL;
  Sa__EncodeRequest er = SA__ENCODE_REQUEST__INIT;
  if (r->encode_part < 0 || r->encode_part >= r->n_parts || !r->parts[r->encode_part].audio)
    return SA_EINVAL;
  er.audio.data = r->parts[r->encode_part].audio;
  er.audio.len = r->parts[r->encode_part].audio_len;
  er.max_audio_s = pl->opts->max_audio_s;
  er.out_dtype = SA__DTYPE__DTYPE_F32;
  er.out_dtype_set = true;
  er.request_id = r->request_id;
  size_t len = sa__encode_request__get_packed_size(&er);
  uint8_t *buf = malloc(len);
  encode_call_t *ec = calloc(1, sizeof *ec);
  if (!buf || !ec) {
    free(buf);
    free(ec);
    return SA_ENOMEM;
  }
  sa__encode_request__pack(&er, buf);
  ec->pl = pl;
  ec->r = r;
  ec->wi = wi;
  sa_rpc_call_opts_t o = {.timeout_ms = pl->opts->encode_timeout_ms, .trace_id = r->request_id};
  int rc = sa_rpc_channel_call(w->ch, "Encoder/Encode", buf, len, NULL, 0, &o, on_encoded, ec,
                               NULL);
  free(buf);
  if (rc) {
    free(ec);
    return rc;
  }
  coord_registry_encoder_busy(pl->reg, wi, +1);
  return 0;
}

const coord_pipeline_ops_t coord_pipeline_ops = {
    .step = pipeline_step,
    .fork = pipeline_fork,
    .free_seq = pipeline_free,
    .encode = pipeline_encode,
    .inflight = pipeline_inflight,
};
