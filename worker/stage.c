/* stage — see stage.h. */
#include "stage.h"
#include "sa_time.h"

#include "log.h"
#include "sa_error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define OUT_POOL 8

struct hist {
  uint64_t id;
  int32_t *tok;
  int n, cap;
};

/* ------------------------------------------------------------- histories */

static struct hist *hist_find(stage_t *st, uint64_t id) {
  for (int i = 0; i < st->n_hist; i++)
    if (st->hist[i].id == id)
      return &st->hist[i];
  return NULL;
}

static struct hist *hist_get(stage_t *st, uint64_t id) {
  struct hist *h = hist_find(st, id);
  if (h)
    return h;
  if (st->n_hist == st->cap_hist) {
    int nc = st->cap_hist ? st->cap_hist * 2 : 64;
    struct hist *nh = realloc(st->hist, sizeof *nh * (size_t)nc);
    if (!nh)
      return NULL;
    st->hist = nh;
    st->cap_hist = nc;
  }
  h = &st->hist[st->n_hist++];
  memset(h, 0, sizeof *h);
  h->id = id;
  return h;
}

static int hist_append(struct hist *h, const int32_t *t, int n) {
  if (h->n + n > h->cap) {
    int nc = h->cap ? h->cap : 256;
    while (nc < h->n + n)
      nc *= 2;
    int32_t *nt = realloc(h->tok, sizeof(int32_t) * (size_t)nc);
    if (!nt)
      return SA_ENOMEM;
    h->tok = nt;
    h->cap = nc;
  }
  memcpy(h->tok + h->n, t, sizeof(int32_t) * (size_t)n);
  h->n += n;
  return 0;
}

static void hist_drop(stage_t *st, uint64_t id) {
  struct hist *h = hist_find(st, id);
  if (!h)
    return;
  free(h->tok);
  *h = st->hist[--st->n_hist];
}

/* ------------------------------------------------------------ out buffers */

static float *out_acquire(stage_t *st) {
  pthread_mutex_lock(&st->out_mu);
  while (st->out_free_top == 0)
    pthread_cond_wait(&st->out_cv, &st->out_mu);
  float *b = st->out_pool[st->out_free[--st->out_free_top]];
  pthread_mutex_unlock(&st->out_mu);
  return b;
}

void stage_out_release(void *data, void *hint) {
  stage_t *st = hint;
  pthread_mutex_lock(&st->out_mu);
  for (int i = 0; i < st->out_pool_n; i++)
    if (st->out_pool[i] == data) {
      st->out_free[st->out_free_top++] = i;
      break;
    }
  pthread_cond_signal(&st->out_cv);
  pthread_mutex_unlock(&st->out_mu);
}

/* ------------------------------------------------------------------ jobs */

static void to_sampler_params(const Sa__SamplingParams *in, sa_sampler_params_t *p) {
  sa_sampler_params_default(p);
  if (!in || in->temperature <= 0) {
    p->greedy = true;
    p->temperature = 0;
  } else {
    p->temperature = in->temperature;
  }
  if (in) {
    p->top_k = in->top_k > 0 ? in->top_k : 0;
    p->top_p = in->top_p > 0 && in->top_p < 1 ? in->top_p : 1.0f;
    p->min_p = in->min_p > 0 ? in->min_p : 0;
    p->repetition_penalty = in->repetition_penalty > 0 ? in->repetition_penalty : 1.0f;
  }
}

/* ----------------------------------------------------------- NCCL links */

static struct stage_link *link_find(struct stage_link *tab, const char *addr) {
  for (int i = 0; addr && i < STAGE_MAX_LINKS; i++)
    if (tab[i].comm && !strcmp(tab[i].addr, addr))
      return &tab[i];
  return NULL;
}

/* Drops a link; abort: the peer may be gone, abandon what is pending. */
static void link_drop(stage_t *st, struct stage_link *l, int abort) {
  for (int i = 0; i < STAGE_OUTBOX; i++)
    if (st->outbox_comm[i] == l->comm) {
      st->outbox_busy[i] = false;
      st->outbox_comm[i] = NULL;
    }
  sa_nccl_comm_destroy(&l->comm, abort);
  l->addr[0] = 0;
}

static void run_link(stage_t *st, job_t *job) {
  struct stage_link *tab = job->link_rank == 0 ? st->links_out : st->links_in;
  struct stage_link *l = link_find(tab, job->link_addr);
  if (l) /* a new offer replaces the old link (the peer restarted) */
    link_drop(st, l, 1);
  if (job->link_drop)
    return;
  for (int i = 0; !l && i < STAGE_MAX_LINKS; i++)
    if (!tab[i].comm)
      l = &tab[i];
  if (!l) { /* full: evict the first */
    l = &tab[0];
    link_drop(st, l, 1);
  }
  if (job->link_rank == 0)
    for (int i = 0; i < STAGE_OUTBOX; i++)
      if (!st->outbox[i] &&
          !(st->outbox[i] = st->be->ops->alloc(st->be, sizeof(float) * (size_t)st->max_tokens *
                                                           (size_t)st->hidden))) {
        job->rc = SA_ENOMEM;
        snprintf(job->err, sizeof job->err, "no device memory for the NCCL outbox");
        return;
      }
  /* the peer joins when its compute thread reaches its own JOB_LINK */
  int rc = sa_nccl_comm_new(&l->comm, job->link_id, 2, job->link_rank, st->be,
                            2 * st->link_timeout_ms);
  if (rc) {
    job->rc = rc;
    snprintf(job->err, sizeof job->err, "joining the NCCL link %s %s failed: %s",
             job->link_rank == 0 ? "to" : "from", job->link_addr, sa_strerror(rc));
    return;
  }
  snprintf(l->addr, sizeof l->addr, "%s", job->link_addr);
  l->seq = 0;
}

/* After a successful step of a non-last stage whose output rows are in the
 * decoder's device buffer: send them over the link (job->out_nccl), or, if
 * the link fails, bring them to a host buffer for ZeroMQ. 0 or an error. */
static int send_or_download(stage_t *st, job_t *job, struct stage_link *out, int M) {
  size_t bytes = sizeof(float) * (size_t)M * (size_t)st->hidden;
  void *dev = sa_decoder_hidden_dev(st->dec);
  if (out) {
    int k = st->outbox_next, rc = 0;
    if (st->outbox_busy[k])
      rc = sa_nccl_send_wait(st->outbox_comm[k], st->outbox_ticket[k], st->link_timeout_ms);
    uint64_t ticket = 0;
    if (!rc)
      rc = st->be->ops->copy(st->be, st->outbox[k], dev, bytes);
    if (!rc)
      rc = sa_nccl_send(out->comm, st->outbox[k], bytes, 1, &ticket);
    if (!rc) {
      st->outbox_busy[k] = true;
      st->outbox_comm[k] = out->comm;
      st->outbox_ticket[k] = ticket;
      st->outbox_next = (k + 1) % STAGE_OUTBOX;
      job->out_nccl = true;
      job->nccl_seq = out->seq++;
      return 0;
    }
    SA_LOG_WARN("NCCL link to %s failed (%s): activations go over ZeroMQ from now on",
                out->addr, sa_strerror(rc));
    link_drop(st, out, 1);
    job->link_broken = true;
  }
  job->act_out = out_acquire(st);
  int rc = st->be->ops->download(st->be, job->act_out, dev, bytes);
  if (!rc)
    rc = st->be->ops->sync(st->be);
  return rc;
}

static void run_step(stage_t *st, job_t *job) {
  const Sa__StepBatch *b = job->batch;
  int n = (int)b->n_seqs;
  int M = 0, n_emb = 0, n_logits = 0;
  uint64_t added[256];
  int n_added = 0;
  if (b->act_via_nccl) {
    /* first of all, whatever becomes of this step: the sender's NCCL stream
     * waits for this receive */
    struct stage_link *in = b->hop >= 1 ? link_find(st->links_in, b->route[b->hop - 1]) : NULL;
    const char *why = !in ? "no NCCL link from that stage"
                      : b->nccl_seq != in->seq ? "a step before this one never arrived"
                                               : NULL;
    int rc = why ? SA_EUNAVAIL
                 : sa_nccl_recv(in->comm, sa_decoder_hidden_dev(st->dec),
                                sizeof(float) * (size_t)b->total_tokens * (size_t)st->hidden, 0,
                                st->link_timeout_ms);
    if (in && !rc)
      in->seq++;
    if (rc) {
      /* out of step with the sender: drop the link (the sender times out
       * and goes back to ZeroMQ) rather than pair receives with wrong sends */
      if (in)
        link_drop(st, in, 1);
      job->rc = SA_EUNAVAIL;
      snprintf(job->err, sizeof job->err, "activations over NCCL from %s: %s",
               b->hop >= 1 ? b->route[b->hop - 1] : "?", why ? why : sa_strerror(rc));
      return;
    }
  }
  for (int i = 0; i < n; i++) {
    const Sa__SeqStep *s = b->seqs[i];
    st->seq_ids[i] = s->seq_id;
    st->n_new[i] = s->n_tokens;
    st->pos0[i] = (int32_t)s->position;
    if (!sa_kv_seq_exists(st->kv, s->seq_id)) {
      if (s->position != 0) {
        job->rc = SA_ESTATE;
        snprintf(job->err, sizeof job->err,
                 "sequence %llu is unknown here but the step starts at position %lld "
                 "(it was lost: re-prefill it)",
                 (unsigned long long)s->seq_id, (long long)s->position);
        goto undo;
      }
      int rc = sa_kv_seq_add(st->kv, s->seq_id);
      if (rc) {
        job->rc = rc;
        snprintf(job->err, sizeof job->err, "cannot add sequence %llu: %s",
                 (unsigned long long)s->seq_id, sa_strerror(rc));
        goto undo;
      }
      if (n_added < 256)
        added[n_added++] = s->seq_id;
    }
    if (st->is_first) {
      for (int k = 0; k < s->n_tokens; k++)
        st->tokens[M + k] = s->token_ids[k];
      for (size_t e = 0; e < s->n_embed_spans; e++) {
        const Sa__EmbedSpan *sp = s->embed_spans[e];
        for (int r = 0; r < sp->n_rows; r++) {
          st->embed_rows[n_emb] = M + sp->at_token + r;
          memcpy(st->embeds + (size_t)n_emb * st->hidden,
                 job->emb_in + (size_t)(sp->first_row + r) * st->hidden,
                 sizeof(float) * (size_t)st->hidden);
          n_emb++;
        }
      }
    }
    if (st->is_last && s->want_sample)
      st->logit_rows[n_logits++] = M + s->n_tokens - 1;
    M += s->n_tokens;
  }
  /* NCCL: rows from the previous stage arrive in the decoder's device
   * buffer; rows for the next stage leave from it */
  struct stage_link *out =
      !st->is_last && b->hop + 1 < (int)b->n_route ? link_find(st->links_out, b->route[b->hop + 1])
                                                    : NULL;
  bool dev_io = b->act_via_nccl || out;
  if (!st->is_first && !b->act_via_nccl && dev_io) {
    int rc = st->be->ops->upload(st->be, sa_decoder_hidden_dev(st->dec), job->act_in,
                                 sizeof(float) * (size_t)M * (size_t)st->hidden);
    if (rc) {
      job->rc = rc;
      snprintf(job->err, sizeof job->err, "upload of the activations failed: %s", sa_strerror(rc));
      goto undo;
    }
  }
  sa_decoder_batch_t db = {0};
  db.hidden_device = dev_io;
  db.n_seqs = n;
  db.seq_ids = st->seq_ids;
  db.n_new = st->n_new;
  db.pos0 = st->pos0;
  if (st->is_first) {
    db.tokens = st->tokens;
    db.n_embed = n_emb;
    db.embed_rows = st->embed_rows;
    db.embeds = st->embeds;
  } else {
    db.hidden_in = job->act_in;
  }
  if (st->is_last) {
    db.n_logits = n_logits;
    db.logit_rows = st->logit_rows;
    db.logits = st->logits;
  } else if (!dev_io) {
    job->act_out = out_acquire(st);
    db.hidden_out = job->act_out;
  }
  double t0 = (1e3 * sa_now_s());
  int rc = sa_decoder_step(st->dec, st->kv, &db);
  if (!rc && !st->is_last && dev_io)
    rc = send_or_download(st, job, out, M);
  job->compute_ms = (1e3 * sa_now_s()) - t0;
  if (rc) {
    job->rc = rc;
    snprintf(job->err, sizeof job->err, "decoder step failed: %s", sa_strerror(rc));
    if (job->act_out) {
      stage_out_release(job->act_out, st);
      job->act_out = NULL;
    }
    goto undo;
  }
  st->steps++;
  st->tokens_total += M;
  st->busy_ms += job->compute_ms;
  if (!st->is_last)
    return;
  /* last stage: histories and sampling */
  Sa__StepResult *res = malloc(sizeof *res);
  job->seq_results = calloc((size_t)n, sizeof *job->seq_results);
  job->seq_result_ptrs = calloc((size_t)n, sizeof *job->seq_result_ptrs);
  if (!res || !job->seq_results || !job->seq_result_ptrs) {
    free(res);
    job->rc = SA_ENOMEM;
    snprintf(job->err, sizeof job->err, "out of memory");
    return;
  }
  sa__step_result__init(res);
  job->result = res;
  res->batch_id = b->batch_id;
  int li = 0;
  for (int i = 0; i < n; i++) {
    const Sa__SeqStep *s = b->seqs[i];
    Sa__SeqResult *sr = &job->seq_results[i];
    sa__seq_result__init(sr);
    sr->seq_id = s->seq_id;
    sr->token = -1;
    job->seq_result_ptrs[i] = sr;
    struct hist *h = hist_get(st, s->seq_id);
    if (!h || hist_append(h, s->token_ids, s->n_tokens)) {
      sr->status = SA__STATUS_CODE__RESOURCE_EXHAUSTED;
      if (s->want_sample)
        li++;
      continue;
    }
    if (!s->want_sample)
      continue;
    sa_sampler_params_t p;
    to_sampler_params(s->sampling, &p);
    sa_sample_key_t key = {.seed = s->rng_seed, .chain = 0, .position = (uint64_t)s->rng_position};
    int32_t tok = -1;
    float lp = 0;
    bool want_lp = s->sampling && s->sampling->logprobs;
    int src = sa_sampler_sample(st->sampler, &p, st->logits + (size_t)li * st->vocab, st->vocab,
                                h->tok, (size_t)h->n, key, &tok, want_lp ? &lp : NULL);
    li++;
    if (src) {
      sr->status = SA__STATUS_CODE__INVALID_ARGUMENT;
      continue;
    }
    sr->token = tok;
    sr->logprob = lp;
  }
  res->results = job->seq_result_ptrs;
  res->n_results = (size_t)n;
  sa_kv_stats_t ks;
  sa_kv_stats(st->kv, &ks);
  res->kv_blocks_used = ks.blocks_used;
  res->kv_blocks_free = ks.blocks_free;
  double sampling_ms = (1e3 * sa_now_s()) - t0 - job->compute_ms; /* sampling is compute too */
  job->compute_ms += sampling_ms;
  st->busy_ms += sampling_ms;
  res->compute_ms = job->compute_ms;
  job->stage_ms = job->compute_ms;
  res->stage_compute_ms = &job->stage_ms;
  res->n_stage_compute_ms = 1;
  return;
undo:
  for (int i = 0; i < n_added; i++)
    sa_kv_free(st->kv, added[i]);
}

static void run_fork(stage_t *st, job_t *job) {
  const Sa__ForkRequest *f = job->fork;
  for (size_t i = 0; i < f->n_child_seqs; i++) {
    int rc = sa_kv_fork(st->kv, f->parent_seq, f->child_seqs[i]);
    if (rc) {
      job->rc = rc;
      snprintf(job->err, sizeof job->err, "fork %llu -> %llu: %s",
               (unsigned long long)f->parent_seq, (unsigned long long)f->child_seqs[i],
               sa_strerror(rc));
      for (size_t k = 0; k < i; k++) { /* undo the children made so far */
        sa_kv_free(st->kv, f->child_seqs[k]);
        hist_drop(st, f->child_seqs[k]);
      }
      return;
    }
    if (st->is_last) {
      struct hist *ph = hist_find(st, f->parent_seq);
      struct hist *ch = hist_get(st, f->child_seqs[i]);
      ph = hist_find(st, f->parent_seq); /* hist_get may have moved the array */
      if (ch && ph)
        hist_append(ch, ph->tok, ph->n);
    }
    job->forked++;
  }
}

static void run_free(stage_t *st, job_t *job) {
  if (!job->free_rq) {
    job->freed = sa_kv_free_all(st->kv);
    while (st->n_hist > 0)
      hist_drop(st, st->hist[st->n_hist - 1].id);
    return;
  }
  for (size_t i = 0; i < job->free_rq->n_seq_ids; i++) {
    if (sa_kv_free(st->kv, job->free_rq->seq_ids[i]) == 0)
      job->freed++;
    hist_drop(st, job->free_rq->seq_ids[i]);
  }
}

static void *compute_main(void *arg) {
  stage_t *st = arg;
  for (;;) {
    pthread_mutex_lock(&st->mu);
    while (!st->q_head && !st->stop)
      pthread_cond_wait(&st->cv, &st->mu);
    if (st->stop && !st->q_head) {
      pthread_mutex_unlock(&st->mu);
      return NULL;
    }
    job_t *job = st->q_head;
    st->q_head = job->next;
    if (!st->q_head)
      st->q_tail = NULL;
    st->queued--;
    pthread_mutex_unlock(&st->mu);
    job->next = NULL;
    switch (job->kind) {
    case JOB_STEP: run_step(st, job); break;
    case JOB_FORK: run_fork(st, job); break;
    case JOB_FREE: run_free(st, job); break;
    case JOB_RESET: break;
    case JOB_LINK: run_link(st, job); break;
    }
    sa_kv_stats_t ks;
    sa_kv_stats(st->kv, &ks);
    pthread_mutex_lock(&st->mu);
    st->kv_snap = ks;
    if (st->done_tail)
      st->done_tail->next = job;
    else
      st->done_head = job;
    st->done_tail = job;
    pthread_mutex_unlock(&st->mu);
    uv_async_send(&st->async);
  }
}

static void on_async(uv_async_t *a) {
  stage_t *st = a->data;
  pthread_mutex_lock(&st->mu);
  job_t *list = st->done_head;
  st->done_head = st->done_tail = NULL;
  pthread_mutex_unlock(&st->mu);
  while (list) {
    job_t *next = list->next;
    list->next = NULL;
    st->on_done(list, st->user);
    list = next;
  }
}

void stage_kv_stats(stage_t *st, sa_kv_stats_t *out) {
  pthread_mutex_lock(&st->mu);
  *out = st->kv_snap;
  pthread_mutex_unlock(&st->mu);
}

int stage_queued(stage_t *st) {
  pthread_mutex_lock(&st->mu);
  int n = st->queued;
  pthread_mutex_unlock(&st->mu);
  return n;
}

void stage_submit(stage_t *st, job_t *job) {
  job->next = NULL;
  pthread_mutex_lock(&st->mu);
  if (st->q_tail)
    st->q_tail->next = job;
  else
    st->q_head = job;
  st->q_tail = job;
  st->queued++;
  pthread_cond_signal(&st->cv);
  pthread_mutex_unlock(&st->mu);
}

void stage_job_free(stage_t *st, job_t *job) {
  (void)st;
  if (job->batch)
    sa__step_batch__free_unpacked(job->batch, NULL);
  if (job->fork)
    sa__fork_request__free_unpacked(job->fork, NULL);
  if (job->free_rq)
    sa__free_request__free_unpacked(job->free_rq, NULL);
  free(job->result);
  free(job->seq_results);
  free(job->seq_result_ptrs);
  free(job);
}

int stage_start(stage_t *st, uv_loop_t *loop, const char *model_dir, int first, int last,
                const char *device, int threads, size_t kv_bytes, int max_tokens, int max_seqs,
                void (*on_done)(job_t *, void *), void *user, char *err, size_t cap) {
  memset(st, 0, sizeof *st);
  st->be = sa_backend_new(device, threads);
  if (!st->be) {
    snprintf(err, cap, "cannot create backend '%s'", device);
    return SA_ENODEV;
  }
  sa_decoder_opts_t o = {.first_layer = first,
                         .last_layer = last,
                         .max_tokens = max_tokens,
                         .max_seqs = max_seqs,
                         .max_logit_rows = max_seqs};
  int rc = sa_decoder_load(st->be, model_dir, NULL, &o, &st->dec, err, cap);
  if (rc)
    return rc;
  const sa_model_config_t *cfg = sa_decoder_config(st->dec);
  st->first = first;
  st->last = last < 0 ? cfg->num_hidden_layers : last;
  st->n_layers = cfg->num_hidden_layers;
  st->hidden = cfg->hidden_size;
  st->vocab = cfg->vocab_size;
  st->is_first = first == 0;
  st->is_last = st->last == cfg->num_hidden_layers;
  st->max_tokens = max_tokens;
  st->max_seqs = max_seqs;
  st->is_cuda = !strncmp(device, "cuda", 4);
  st->link_timeout_ms = 10000;
  sa_kv_opts_t ko;
  sa_decoder_kv_opts(st->dec, kv_bytes, 0, max_seqs * 8, &ko);
  rc = sa_kv_new(st->be, &ko, &st->kv);
  if (rc) {
    snprintf(err, cap, "cannot make a KV pool of %zu bytes: %s", kv_bytes, sa_strerror(rc));
    return rc;
  }
  size_t H = (size_t)st->hidden;
  st->seq_ids = calloc((size_t)max_seqs, sizeof *st->seq_ids);
  st->n_new = calloc((size_t)max_seqs, sizeof(int32_t));
  st->pos0 = calloc((size_t)max_seqs, sizeof(int32_t));
  st->tokens = calloc((size_t)max_tokens, sizeof(int32_t));
  st->embed_rows = calloc((size_t)max_tokens, sizeof(int32_t));
  st->logit_rows = calloc((size_t)max_seqs, sizeof(int32_t));
  st->embeds = st->is_first ? calloc((size_t)max_tokens * H, sizeof(float)) : NULL;
  st->logits = st->is_last ? calloc((size_t)max_seqs * (size_t)st->vocab, sizeof(float)) : NULL;
  st->sampler = st->is_last ? sa_sampler_new(st->vocab) : NULL;
  st->out_pool_n = st->is_last ? 0 : OUT_POOL;
  st->out_pool = calloc(OUT_POOL, sizeof(float *));
  st->out_free = calloc(OUT_POOL, sizeof(int));
  if (!st->seq_ids || !st->n_new || !st->pos0 || !st->tokens || !st->embed_rows ||
      !st->logit_rows || (st->is_first && !st->embeds) || (st->is_last && !st->logits) ||
      (st->is_last && !st->sampler) || !st->out_pool || !st->out_free) {
    snprintf(err, cap, "out of memory for step buffers");
    return SA_ENOMEM;
  }
  for (int i = 0; i < st->out_pool_n; i++) {
    st->out_pool[i] = aligned_alloc(64, ((size_t)max_tokens * H * sizeof(float) + 63) & ~(size_t)63);
    if (!st->out_pool[i]) {
      snprintf(err, cap, "out of memory for activation buffers");
      return SA_ENOMEM;
    }
    st->out_free[st->out_free_top++] = i;
  }
  pthread_mutex_init(&st->mu, NULL);
  pthread_cond_init(&st->cv, NULL);
  pthread_mutex_init(&st->out_mu, NULL);
  pthread_cond_init(&st->out_cv, NULL);
  st->on_done = on_done;
  st->user = user;
  uv_async_init(loop, &st->async, on_async);
  st->async.data = st;
  sa_kv_stats(st->kv, &st->kv_snap);
  if (pthread_create(&st->thread, NULL, compute_main, st)) {
    snprintf(err, cap, "cannot start the compute thread");
    return SA_EIO;
  }
  return 0;
}

void stage_stop(stage_t *st) {
  pthread_mutex_lock(&st->mu);
  st->stop = true;
  pthread_cond_signal(&st->cv);
  pthread_mutex_unlock(&st->mu);
  pthread_join(st->thread, NULL);
  uv_close((uv_handle_t *)&st->async, NULL);
  for (int i = 0; i < STAGE_MAX_LINKS; i++) {
    if (st->links_out[i].comm)
      link_drop(st, &st->links_out[i], 1);
    if (st->links_in[i].comm)
      link_drop(st, &st->links_in[i], 1);
  }
  for (int i = 0; i < STAGE_OUTBOX; i++)
    if (st->outbox[i])
      st->be->ops->free(st->be, st->outbox[i]);
  for (int i = 0; i < st->n_hist; i++)
    free(st->hist[i].tok);
  free(st->hist);
  sa_sampler_destroy(&st->sampler);
  sa_kv_destroy(&st->kv);
  sa_decoder_destroy(&st->dec);
  sa_backend_destroy(&st->be);
  /* the output pool may still be referenced by ZeroMQ until the sockets
   * close; the process is exiting, so it is left to the OS */
  free(st->seq_ids);
  free(st->n_new);
  free(st->pos0);
  free(st->tokens);
  free(st->embed_rows);
  free(st->logit_rows);
  free(st->embeds);
  free(st->logits);
}
