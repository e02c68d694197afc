/*
 * request — the request and chain lifecycle (see request.h).
 *
 * A request goes NEW -> ENCODING (audio only) -> QUEUED -> PREFILL ->
 * [FORKING, n > 1] -> DECODING -> DONE. A replica failure moves it back to
 * QUEUED and then REPLAY, where every chain re-prefills its prompt and the
 * tokens it has so far on another replica and decoding resumes with the
 * same RNG keys (token-identical to an undisturbed run); results of batches
 * sent before the failover carry an older epoch and are dropped.
 *
 * A chain ends once (chain_end): by itself (EOT, max_tokens, a stop string), by the vote,
 * by the client, or by a failure. A request ends once (request_end) and is
 * freed by reap() only when no step, fork, free or encode of it is out.
 */
#define _GNU_SOURCE /* memmem */
#include "request.h"

#include "answer.h"
#include "chat.h"
#include "log.h"
#include "sa_time.h"
#include "sampler.h"
#include "vote.h"

#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REPLAYS 3      /* failovers before a request fails */
#define MAX_ENCODE_TRIES 3 /* encoders tried for one request */
#define ENCODER_WAIT_MS 30000 /* a request waits this long for an encoder to come up */
#define MAX_PASS_ROUNDS 16

typedef enum {
  REC_STEP,
  REC_FORK,
  REC_FREE,
  REC_ENCODE,
  REC_REPLICA_LOST,
} record_kind_t;

struct coord_record {
  coord_record_t *next;
  record_kind_t kind;
  coord_request_t *r;
  coord_step_t *step;     /* REC_STEP */
  coord_encoded_t *enc;   /* REC_ENCODE (NULL: out of memory) */
  int replica;            /* REC_REPLICA_LOST */
  sa_status_t status;     /* REC_FORK */
  char msg[300];
};

/* ------------------------------------------------------------ histograms */

static double since_s(uint64_t t_ns) { return (double)(sa_now_ns() - t_ns) * 1e-9; }

/* ------------------------------------------------------------- recording */

static void record(coord_requests_t *set, coord_record_t *rec) {
  rec->next = NULL;
  if (set->rec_tail)
    set->rec_tail->next = rec;
  else
    set->rec_head = rec;
  set->rec_tail = rec;
  set->dirty = true;
}

static coord_record_t *new_record(record_kind_t kind, coord_request_t *r) {
  coord_record_t *rec = calloc(1, sizeof *rec);
  SA_ASSERT(rec, "out of memory recording an event"); /* losing it would leak a request */
  rec->kind = kind;
  rec->r = r;
  return rec;
}

static void on_step_done(void *user, coord_step_t *step) {
  coord_record_t *rec = new_record(REC_STEP, NULL);
  rec->step = step;
  record(user, rec);
}

static void on_fork_done(void *user, coord_request_t *r, sa_status_t st, const char *msg) {
  coord_record_t *rec = new_record(REC_FORK, r);
  rec->status = st;
  snprintf(rec->msg, sizeof rec->msg, "%s", msg ? msg : "");
  record(user, rec);
}

static void on_free_done(void *user, coord_request_t *r) {
  record(user, new_record(REC_FREE, r));
}

static void on_encode_done(void *user, coord_request_t *r, coord_encoded_t *enc) {
  coord_record_t *rec = new_record(REC_ENCODE, r);
  rec->enc = enc;
  record(user, rec);
}

static void on_replica_lost(void *user, int ri, const char *why) {
  coord_record_t *rec = new_record(REC_REPLICA_LOST, NULL);
  rec->replica = ri;
  snprintf(rec->msg, sizeof rec->msg, "%s", why);
  record(user, rec);
}

static void on_changed(void *user) { ((coord_requests_t *)user)->dirty = true; }

const coord_pipeline_cbs_t coord_requests_pipeline_cbs = {
    .step_done = on_step_done,
    .fork_done = on_fork_done,
    .free_done = on_free_done,
    .encode_done = on_encode_done,
};

const coord_registry_cbs_t coord_requests_registry_cbs = {
    .replica_lost = on_replica_lost,
    .changed = on_changed,
};

/* ------------------------------------------------------------- the set */

void coord_requests_init(coord_requests_t *set, const coord_opts_t *opts,
                         const coord_model_t *model, const sa_tokenizer_t *tok,
                         coord_registry_t *reg, const coord_pipeline_ops_t *pl_ops, void *pl) {
  memset(set, 0, sizeof *set);
  set->opts = opts;
  set->model = model;
  set->tok = tok;
  set->reg = reg;
  set->pl_ops = pl_ops;
  set->pl = pl;
}

static void request_destroy(coord_requests_t *set, coord_request_t *r) {
  for (int c = 0; c < r->n_chains; c++) {
    free(r->chains[c].tokens);
    free(r->chains[c].reasoning);
    free(r->chains[c].answer);
  }
  free(r->prompt);
  free(r->audio_pos);
  free(r->audio_rows);
  for (int k = 0; k < r->n_parts; k++) {
    free(r->parts[k].text);
    if (r->parts[k].audio)
      set->audio_held -= r->parts[k].audio_len;
    free(r->parts[k].audio);
    free(r->parts[k].chunk_tokens);
  }
  free(r->system_text);
  free(r);
}

static void free_record(coord_record_t *rec) {
  free(rec->step);
  coord_encoded_free(&rec->enc);
  free(rec);
}

void coord_requests_close(coord_requests_t *set) {
  for (coord_record_t *rec = set->rec_head, *next; rec; rec = next) {
    next = rec->next;
    free_record(rec);
  }
  set->rec_head = set->rec_tail = NULL;
  for (coord_request_t *r = set->head, *next; r; r = next) {
    next = r->next;
    request_destroy(set, r);
  }
  set->head = set->tail = NULL;
  set->n = 0;
  set->n_live = 0;
}

coord_request_t *coord_request_new(coord_requests_t *set, const coord_request_params_t *p,
                                   const coord_request_cbs_t *cbs, void *client, char *err,
                                   size_t cap) {
  SA_ASSERT(p->n_chains >= 1 && p->n_chains <= COORD_MAX_CHAINS, "n_chains is validated above");
  coord_request_t *r = calloc(1, sizeof *r);
  if (!r) {
    sa_set_err(err, cap, "out of memory");
    return NULL;
  }
  r->cbs = cbs;
  r->client = client;
  r->id = ++set->next_id;
  if (p->request_id && p->request_id[0]) {
    snprintf(r->request_id, sizeof r->request_id, "%s", p->request_id);
  } else { /* unguessable: Coordinator/Cancel takes an id, so a counter would
              let any client cancel any other client's request */
    uint8_t rnd[16];
    randombytes_buf(rnd, sizeof rnd);
    char hex[2 * sizeof rnd + 1];
    sodium_bin2hex(hex, sizeof hex, rnd, sizeof rnd);
    snprintf(r->request_id, sizeof r->request_id, "req-%s", hex);
  }
  snprintf(r->owner, sizeof r->owner, "%s", p->owner ? p->owner : "");
  r->state = COORD_REQ_NEW;
  r->replica = -1;
  r->encoder = -1;
  r->max_tokens = p->max_tokens;
  r->n_chains = p->n_chains;
  r->vote_rule = p->vote_rule;
  r->vote_k = p->vote_k;
  r->think_budget = p->think_budget;
  r->sampling = p->sampling;
  r->chat_flags = p->chat_flags & (SA_CHAT_CONTINUE | SA_CHAT_NO_GEN_PROMPT);
  r->system_text = strdup(p->system && p->system[0] ? p->system : set->opts->default_system);
  r->t_start_ms = sa_now_ms();
  r->encode_part = -1;
  for (int k = 0; k < p->n_stop && k < COORD_MAX_STOP; k++)
    if (p->stop[k] && p->stop[k][0] && strlen(p->stop[k]) <= COORD_STOP_BYTES)
      snprintf(r->stop[r->n_stop++], sizeof r->stop[0], "%s", p->stop[k]);
  bool oom = !r->system_text;
  for (int k = 0; k < p->n_parts && k < COORD_MAX_PARTS && !oom; k++) {
    coord_req_part_t *q = &r->parts[r->n_parts++];
    q->role = p->parts[k].role;
    q->new_turn = p->parts[k].new_turn;
    if (p->parts[k].text) {
      oom = !(q->text = strdup(p->parts[k].text));
    } else if ((q->audio = malloc(p->parts[k].audio_len ? p->parts[k].audio_len : 1))) {
      memcpy(q->audio, p->parts[k].audio, p->parts[k].audio_len);
      q->audio_len = p->parts[k].audio_len;
      r->audio_bytes += q->audio_len;
      set->audio_held += q->audio_len;
    } else {
      oom = true;
    }
  }
  if (oom) {
    request_destroy(set, r);
    sa_set_err(err, cap, "out of memory");
    return NULL;
  }
  for (int c = 0; c < r->n_chains; c++) {
    coord_chain_t *ch = &r->chains[c];
    ch->idx = c;
    ch->seq_id = ++set->next_seq_id;
    ch->next_input = -1;
    sa_detok_init(&ch->detok, set->tok);
  }
  if (set->wal && !set->replaying && coord_wal_accept(set->wal, r)) {
    request_destroy(set, r); /* not journaled: a crash would lose it */
    sa_set_err(err, cap, "out of memory journaling the request");
    return NULL;
  }
  r->prev = set->tail;
  if (set->tail)
    set->tail->next = r;
  else
    set->head = r;
  set->tail = r;
  set->n++;
  set->n_live++;
  set->requests_total++;
  set->dirty = true;
  if (!set->replaying)
    SA_LOG_INFO("request %s: %zu audio bytes, %d chain(s), max %d tokens", r->request_id,
                r->audio_bytes, r->n_chains, r->max_tokens);
  return r;
}

int coord_request_attach(coord_requests_t *set, coord_request_t *r,
                         const coord_request_cbs_t *cbs, void *client) {
  if (r->ended)
    return SA_EINVAL;
  if (r->cbs && !r->cbs->detach)
    return SA_ESTATE; /* its front end cannot give it up */
  if (r->cbs)
    r->cbs->detach(r);
  r->cbs = cbs;
  r->client = client;
  set->dirty = true;
  return 0;
}

void coord_requests_migrate(coord_requests_t *set, int ri) {
  on_replica_lost(set, ri, "moved off a draining replica");
}

void coord_request_cancel(coord_requests_t *set, coord_request_t *r) {
  if (r->ended)
    return;
  r->cancel_asked = true;
  set->dirty = true;
}

coord_request_t *coord_requests_find(const coord_requests_t *set, const char *request_id) {
  for (coord_request_t *r = set->head; r; r = r->next)
    if (!r->ended && strcmp(r->request_id, request_id) == 0)
      return r;
  return NULL;
}

coord_request_t *coord_requests_find_any(const coord_requests_t *set, const char *request_id) {
  coord_request_t *kept = NULL;
  for (coord_request_t *r = set->head; r; r = r->next)
    if (strcmp(r->request_id, request_id) == 0) {
      if (!r->ended)
        return r;
      if (r->keep_until_ms)
        kept = r;
    }
  return kept;
}

void coord_requests_shutdown(coord_requests_t *set) {
  set->stopping = true;
  set->dirty = true;
}

void coord_requests_touch(coord_requests_t *set) { set->dirty = true; }

/* ------------------------------------------------------ chains and ends */

static void emit(coord_requests_t *set, coord_request_t *r, const coord_event_t *ev) {
  (void)set;
  if (!r->ended && r->cbs && r->cbs->event)
    r->cbs->event(r, ev);
}

static void request_end(coord_requests_t *set, coord_request_t *r, sa_status_t st,
                        const char *msg) {
  r->state = COORD_REQ_DONE;
  if (r->ended)
    return;
  r->ended = true;
  set->n_live--;
  r->end_status = st;
  snprintf(r->end_msg, sizeof r->end_msg, "%s", msg ? msg : "");
  if (!r->cbs && set->keep_ms > 0) /* nobody to take the result yet */
    r->keep_until_ms = sa_now_ms() + (uint64_t)set->keep_ms;
  if (set->replaying)
    return;
  /* a shutdown is no end: a coordinator started on the journal resumes it */
  if (set->wal && !set->stopping && coord_wal_end(set->wal, r->id, st, msg))
    set->wal_errors++;
  set->stats.ended[st == SA_STATUS_OK ? 0 : st == SA_STATUS_CANCELLED ? 2 : 1]++;
  if (st == SA_STATUS_OK)
    coord_hist_observe(&set->stats.e2e, (double)(sa_now_ms() - r->t_start_ms) / 1000.0);
  if (r->cbs && r->cbs->end)
    r->cbs->end(r, st, msg);
}

/* Frees chain c's sequence on its replica once nothing of it is in flight
 * (a Free that overtook a prefill chunk or a fork would leave the stage
 * holding blocks nobody frees; the step or fork's event frees it then). */
static void chain_free(coord_requests_t *set, coord_request_t *r, coord_chain_t *c) {
  if (c->freed || c->inflight || r->replica < 0 || (c->idx == 0 && r->prefill_inflight) ||
      (c->idx > 0 && r->fork_inflight))
    return;
  c->freed = true;
  if (set->pl_ops->free_seq(set->pl, r->replica, c->seq_id, r) == 0)
    r->pending_ops++;
}

/* Frees a sequence on replica ri that r no longer uses there. */
static void free_stale(coord_requests_t *set, coord_request_t *r, int ri, uint64_t seq_id) {
  if (set->pl_ops->free_seq(set->pl, ri, seq_id, r) == 0)
    r->pending_ops++;
}

static int append(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
  if (*len + n + 1 > *cap) {
    size_t nc = *cap ? *cap * 2 : 256;
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

static void chain_text(coord_chain_t *c, const char *text, size_t n) {
  if (c->in_answer)
    append(&c->answer, &c->answer_len, &c->answer_cap, text, n);
  else
    append(&c->reasoning, &c->reasoning_len, &c->reasoning_cap, text, n);
}

static void emit_piece(coord_requests_t *set, coord_request_t *r, coord_chain_t *c,
                       const char *t, size_t n);

/* The held-back bytes of c's detokeniser, at the end of a part. */
static void chain_flush(coord_requests_t *set, coord_request_t *r, coord_chain_t *c) {
  char text[32];
  size_t n = 0;
  if (sa_detok_flush(&c->detok, text, sizeof text, &n) == 0 && n)
    emit_piece(set, r, c, text, n);
}

/* Ends chain c with `why` (once); its sequence is freed when it is idle. */
static void chain_end(coord_requests_t *set, coord_request_t *r, coord_chain_t *c,
                      Sa__FinishReason why) {
  if (c->state != COORD_CHAIN_DONE) {
    c->state = COORD_CHAIN_DONE;
    c->finish = why;
    r->chains_done++;
  }
  chain_free(set, r, c);
}

/* The normalised answers of r's chains in finishing order. */
static int finished_answers(const coord_request_t *r, const char **answers) {
  int n = 0;
  for (int i = 0; i < r->n_vote_order && n < COORD_MAX_CHAINS; i++) {
    int c = r->vote_order[i];
    answers[n++] = c >= 0 && c < r->n_chains ? r->chains[c].normalized : "";
  }
  return n;
}

const coord_chain_t *coord_request_vote(const coord_request_t *r, int *votes,
                                        const char **leader) {
  const char *answers[COORD_MAX_CHAINS];
  int n = finished_answers(r, answers);
  bool decided;
  int pos = coord_vote_decide(answers, n, r->n_chains - r->chains_done, r->vote_rule, r->vote_k,
                              votes, &decided);
  if (leader)
    *leader = pos >= 0 ? answers[pos] : "";
  return pos >= 0 ? &r->chains[r->vote_order[pos]] : NULL;
}

/* Chain c finished by itself: its answer joins the vote, which may decide
 * and cancel the chains still running. */
static void chain_voted(coord_requests_t *set, coord_request_t *r, coord_chain_t *c) {
  c->normalized[0] = '\0';
  if (c->in_answer && c->answer)
    coord_answer_normalize(c->answer, c->normalized, sizeof c->normalized);
  if (r->n_vote_order < COORD_MAX_CHAINS)
    r->vote_order[r->n_vote_order++] = c->idx;
  if (r->n_chains < 2)
    return;
  const char *answers[COORD_MAX_CHAINS];
  int n = finished_answers(r, answers);
  int votes, running = r->n_chains - r->chains_done;
  bool decided;
  coord_vote_decide(answers, n, running, r->vote_rule, r->vote_k, &votes, &decided);
  if (!decided || running == 0)
    return;
  SA_LOG_DEBUG("request %s: vote decided after %d chain(s); cancelling %d", r->request_id, n,
               running);
  for (int i = 0; i < r->n_chains; i++) {
    coord_chain_t *o = &r->chains[i];
    if (o->state == COORD_CHAIN_DONE)
      continue;
    o->normalized[0] = '\0';
    if (r->max_tokens > o->n_tokens) {
      r->tokens_saved += r->max_tokens - o->n_tokens;
      set->stats.tokens_saved += r->max_tokens - o->n_tokens;
    }
    set->stats.chains_cancelled++;
    chain_end(set, r, o, SA__FINISH_REASON__FINISH_CANCELLED);
  }
}

static void emit_held(coord_requests_t *set, coord_request_t *r, coord_chain_t *c);

/* Chain c ends by itself (EOT, max_tokens or a stop string). */
static void chain_finish(coord_requests_t *set, coord_request_t *r, coord_chain_t *c,
                         Sa__FinishReason why) {
  if (c->state == COORD_CHAIN_DONE)
    return;
  if (!c->stop_hit)
    emit_held(set, r, c);
  c->state = COORD_CHAIN_DONE;
  c->finish = why;
  r->chains_done++;
  if (!c->stop_hit)
    chain_flush(set, r, c);
  chain_voted(set, r, c);
  coord_event_t ev = {.kind = COORD_EV_CHAIN_DONE, .chain = c->idx};
  emit(set, r, &ev);
  chain_free(set, r, c);
}

/* Ends r as failed (or cancelled): every chain still running ends with
 * `why`, the client gets st/msg. A request that ended already only frees
 * what came back. */
static void request_fail_as(coord_requests_t *set, coord_request_t *r, sa_status_t st,
                            const char *msg, Sa__FinishReason why) {
  if (r->state != COORD_REQ_DONE && st != SA_STATUS_CANCELLED)
    SA_LOG_INFO("request %s failed: %s: %s", r->request_id, sa_status_name(st), msg);
  for (int c = 0; c < r->n_chains; c++)
    chain_end(set, r, &r->chains[c], why);
  request_end(set, r, st, msg);
}

static void request_fail(coord_requests_t *set, coord_request_t *r, sa_status_t st,
                         const char *msg) {
  request_fail_as(set, r, st, msg, SA__FINISH_REASON__FINISH_ERROR);
}

/* Every chain done: the final result goes up and r ends OK. */
static void request_try_finish(coord_requests_t *set, coord_request_t *r) {
  if (r->state == COORD_REQ_DONE || r->chains_done < r->n_chains)
    return;
  coord_event_t ev = {.kind = COORD_EV_FINAL};
  emit(set, r, &ev);
  SA_LOG_INFO("request %s done in %.2f s", r->request_id,
              (double)(sa_now_ms() - r->t_start_ms) / 1000.0);
  request_end(set, r, SA_STATUS_OK, NULL);
}

/* The replica under r failed: move r to another replica, where every chain
 * re-prefills its prompt + tokens so far, or fail it after MAX_REPLAYS. */
static void request_requeue(coord_requests_t *set, coord_request_t *r, sa_status_t st,
                            const char *why) {
  if (r->state == COORD_REQ_DONE || r->replays >= MAX_REPLAYS || r->replica < 0) {
    char msg[400];
    snprintf(msg, sizeof msg, "%s (after %d failovers)", why, r->replays);
    request_fail(set, r, st, r->state == COORD_REQ_DONE ? why : msg);
    return;
  }
  int old = r->replica;
  r->replays++;
  set->stats.failovers++;
  r->epoch++; /* results of batches already sent are stale now */
  int64_t replay_tokens = 0;
  for (int c = 0; c < r->n_chains; c++) {
    coord_chain_t *ch = &r->chains[c];
    bool out = ch->inflight || (c == 0 && r->prefill_inflight);
    if (!ch->freed && !out) /* what is in flight is freed when it comes back */
      free_stale(set, r, old, ch->seq_id);
    ch->freed = false;
    if (ch->state == COORD_CHAIN_DONE) {
      ch->freed = true; /* nothing of it on the new replica */
      continue;
    }
    ch->seq_id = ++set->next_seq_id;
    ch->state = COORD_CHAIN_WAIT;
    ch->replayed = 0;
    replay_tokens += r->prompt_len - 1 + ch->n_tokens;
  }
  coord_registry_reserve(set->reg, old, -r->kv_reserved);
  coord_registry_suspect(set->reg, old,
                         sa_now_ms() + (uint64_t)set->opts->heartbeat_timeout_ms + 500);
  r->kv_reserved = 0;
  r->replica = -1;
  r->replay = true;
  r->state = COORD_REQ_QUEUED;
  SA_LOG_WARN("request %s: %s; failing over (try %d): %lld tokens to re-prefill on another "
              "replica",
              r->request_id, why, r->replays, (long long)replay_tokens);
}

/* ------------------------------------------------------------ the prompt */

/* r's audio is in its prompt now (and the journal has the rows: a
 * coordinator restarted on it does not encode again): the bytes go. */
static void drop_audio(coord_requests_t *set, coord_request_t *r) {
  for (int k = 0; k < r->n_parts; k++) {
    coord_req_part_t *q = &r->parts[k];
    if (q->audio)
      set->audio_held -= q->audio_len;
    free(q->audio);
    q->audio = NULL;
  }
}

static int build_prompt(coord_requests_t *set, coord_request_t *r, char *err, size_t cap) {
  sa_chat_part_t parts[COORD_MAX_PARTS + 1];
  sa_chat_turn_t turns[COORD_MAX_PARTS + 1];
  size_t np = 0, nt = 0;
  if (r->system_text[0]) {
    parts[np] = (sa_chat_part_t){.kind = SA_CHAT_PART_TEXT, .text = r->system_text,
                                 .text_len = strlen(r->system_text)};
    turns[nt++] = (sa_chat_turn_t){.role = SA_CHAT_SYSTEM, .parts = &parts[np++], .n_parts = 1};
  }
  for (int k = 0; k < r->n_parts; k++) {
    const coord_req_part_t *q = &r->parts[k];
    if (k == 0 || q->new_turn || q->role != r->parts[k - 1].role)
      turns[nt++] = (sa_chat_turn_t){.role = q->role, .parts = &parts[np]};
    if (q->text)
      parts[np++] = (sa_chat_part_t){
          .kind = SA_CHAT_PART_TEXT, .text = q->text, .text_len = strlen(q->text)};
    else
      parts[np++] = (sa_chat_part_t){.kind = SA_CHAT_PART_AUDIO,
                                     .chunk_tokens = q->chunk_tokens,
                                     .n_chunks = (size_t)q->n_chunks};
    turns[nt - 1].n_parts++;
  }
  if (r->n_parts == 0) /* no parts: an empty human turn */
    turns[nt++] = (sa_chat_turn_t){.role = SA_CHAT_HUMAN};
  sa_chat_prompt_t p;
  int rc = sa_chat_render(set->tok, turns, nt, r->chat_flags, &p, err, cap);
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
    sa_set_err(err, cap, "internal: %d audio slots for %d embedding rows", row, r->n_audio_rows);
    return SA_EINTERNAL;
  }
  if (r->prompt_len < 2) {
    sa_set_err(err, cap, "the prompt is too short");
    return SA_EINVAL;
  }
  set->stats.prompt_tokens += r->prompt_len;
  set->stats.audio_tokens += r->n_audio_rows;
  if (r->prompt_len + r->max_tokens > set->model->max_position_embeddings) {
    sa_set_err(err, cap,
               "prompt (%d tokens, audio included) + max_tokens (%d) exceeds the "
               "model's context of %d",
               r->prompt_len, r->max_tokens, set->model->max_position_embeddings);
    return SA_EINVAL;
  }
  drop_audio(set, r);
  if (set->wal && !set->replaying && coord_wal_prompt(set->wal, r)) {
    sa_set_err(err, cap, "out of memory journaling the prompt");
    return SA_ENOMEM;
  }
  return 0;
}

/* ------------------------------------------------------------- encoding */

/* The next audio part after `after` (-1: the first), or -1 if none. */
static int next_audio_part(const coord_request_t *r, int after) {
  for (int k = after + 1; k < r->n_parts; k++)
    if (!r->parts[k].text)
      return k;
  return -1;
}

/* Encodes part r->encode_part on an encoder, trying others on failure.
 * With no encoder up (a coordinator just restarted, encoders restarting)
 * the request waits for one, up to ENCODER_WAIT_MS; each pass asks again
 * (wait_for_encoders). */
static void start_encode(coord_requests_t *set, coord_request_t *r) {
  while (r->encode_attempts < MAX_ENCODE_TRIES) {
    int enc = coord_registry_pick_encoder(set->reg, r->encoder);
    if (enc < 0) {
      uint64_t now = sa_now_ms();
      if (!r->t_encoder_wait_ms)
        r->t_encoder_wait_ms = now;
      if (now - r->t_encoder_wait_ms >= ENCODER_WAIT_MS) {
        char msg[96];
        snprintf(msg, sizeof msg, "no audio encoder is registered and healthy (waited %d s)",
                 ENCODER_WAIT_MS / 1000);
        request_fail(set, r, SA_STATUS_UNAVAILABLE, msg);
      }
      return;
    }
    r->t_encoder_wait_ms = 0;
    r->encoder = enc;
    r->encode_attempts++;
    int rc = set->pl_ops->encode(set->pl, enc, r);
    if (rc == 0) {
      r->pending_ops++;
      r->t_encode_ns = sa_now_ns();
      return;
    }
    if (rc == SA_ENOMEM) {
      request_fail(set, r, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      return;
    }
    if (rc != SA_EFULL)
      coord_registry_mark_down(set->reg, enc);
  }
  request_fail(set, r, SA_STATUS_UNAVAILABLE, "could not reach an audio encoder");
}

static bool retryable_encode(sa_status_t st) {
  return st == SA_STATUS_UNAVAILABLE || st == SA_STATUS_DEADLINE_EXCEEDED ||
         st == SA_STATUS_RESOURCE_EXHAUSTED;
}

static void apply_encoded(coord_requests_t *set, coord_request_t *r, coord_encoded_t *enc) {
  r->pending_ops--;
  if (r->state != COORD_REQ_ENCODING) /* cancelled meanwhile */
    return;
  if (!enc) {
    request_fail(set, r, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory for audio rows");
    return;
  }
  if (enc->status != SA_STATUS_OK && retryable_encode(enc->status) &&
      r->encode_attempts < MAX_ENCODE_TRIES) {
    const coord_worker_t *w = coord_registry_worker(set->reg, enc->encoder);
    SA_LOG_WARN("request %s: encoder %s: %s (%s); retrying elsewhere", r->request_id,
                w ? w->node_id : "?", sa_status_name(enc->status), enc->msg);
    start_encode(set, r);
    return;
  }
  if (enc->status != SA_STATUS_OK) {
    char msg[600];
    snprintf(msg, sizeof msg, "%s%s", strncmp(enc->msg, "audio", 5) ? "audio: " : "", enc->msg);
    request_fail(set, r, enc->status, msg);
    return;
  }
  coord_hist_observe(&set->stats.encode, since_s(r->t_encode_ns));
  /* this part's rows join the request's, in part order */
  coord_req_part_t *q = &r->parts[r->encode_part];
  size_t hidden = (size_t)set->model->hidden_size;
  float *rows = realloc(r->audio_rows,
                        sizeof(float) * hidden * (size_t)(r->n_audio_rows + enc->n_rows + 1));
  if (!rows) {
    request_fail(set, r, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory for audio rows");
    return;
  }
  r->audio_rows = rows;
  memcpy(rows + hidden * (size_t)r->n_audio_rows, enc->rows,
         sizeof(float) * hidden * (size_t)enc->n_rows);
  r->n_audio_rows += enc->n_rows;
  r->hidden = (int)hidden;
  q->chunk_tokens = enc->chunk_tokens;
  q->n_chunks = enc->n_chunks;
  enc->chunk_tokens = NULL;
  int next = next_audio_part(r, r->encode_part);
  if (next >= 0) { /* the next part, with fresh tries */
    r->encode_part = next;
    r->encode_attempts = 0;
    r->encoder = -1;
    start_encode(set, r);
    return;
  }
  r->encode_part = -1;
  char err[512];
  int rc = build_prompt(set, r, err, sizeof err);
  if (rc) {
    request_fail(set, r, sa_err_to_status(rc), err);
    return;
  }
  coord_event_t ev = {.kind = COORD_EV_ENCODED};
  emit(set, r, &ev);
  r->state = COORD_REQ_QUEUED;
  r->t_queued_ns = sa_now_ns();
}

/* Requests waiting for an encoder to come up: asked again every pass. */
static void wait_for_encoders(coord_requests_t *set) {
  for (coord_request_t *r = set->head, *next; r; r = next) {
    next = r->next; /* start_encode may fail r */
    if (r->state == COORD_REQ_ENCODING && r->t_encoder_wait_ms && r->pending_ops == 0)
      start_encode(set, r);
  }
}

static void start_new(coord_requests_t *set) {
  for (coord_request_t *r = set->head; r; r = r->next) {
    if (r->state != COORD_REQ_NEW)
      continue;
    if ((r->encode_part = next_audio_part(r, -1)) >= 0) {
      r->state = COORD_REQ_ENCODING;
      start_encode(set, r);
      continue;
    }
    char err[512];
    int rc = build_prompt(set, r, err, sizeof err);
    if (rc) {
      request_fail(set, r, sa_err_to_status(rc), err);
    } else {
      r->state = COORD_REQ_QUEUED;
      r->t_queued_ns = sa_now_ns();
    }
  }
}

/* ------------------------------------------------------------- admission */

/* Blocks a request needs on every stage: the prompt once (shared by the
 * chains), each chain's own tokens, and one copied partial block per chain. */
static int64_t blocks_needed(const coord_request_t *r, int block_tokens) {
  int64_t bt = block_tokens > 0 ? block_tokens : 16;
  int64_t shared = (r->prompt_len + bt - 1) / bt;
  int64_t per_chain = (r->max_tokens + bt - 1) / bt + 1;
  if (r->replay) /* after a failover every chain holds its own prompt */
    return (int64_t)r->n_chains * (shared + per_chain);
  return shared + (int64_t)r->n_chains * per_chain;
}

/* Moves queued requests onto replicas with room, oldest first. */
static void admit(coord_requests_t *set) {
  int inflight[COORD_MAX_REPLICAS];
  for (int i = 0; i < COORD_MAX_REPLICAS; i++)
    inflight[i] = set->pl_ops->inflight(set->pl, i);
  uint64_t now = sa_now_ms();
  for (coord_request_t *r = set->head; r; r = r->next) {
    if (r->state != COORD_REQ_QUEUED)
      continue;
    int64_t need = blocks_needed(r, coord_registry_block_tokens(set->reg));
    int rep = coord_registry_pick_replica(set->reg, need, now, inflight);
    if (rep < 0) {
      bool any_ready;
      if (!coord_registry_could_fit(set->reg, need, &any_ready) && any_ready) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "the request needs %lld KV blocks per stage; the largest "
                 "replica has fewer (use fewer chains, tokens or audio)",
                 (long long)need);
        request_fail(set, r, SA_STATUS_RESOURCE_EXHAUSTED, msg);
        continue;
      }
      break; /* FIFO: wait for room */
    }
    r->replica = rep;
    r->kv_reserved = need;
    coord_registry_reserve(set->reg, rep, need);
    if (!r->replay)
      coord_hist_observe(&set->stats.queue, since_s(r->t_queued_ns));
    r->state = r->replay ? COORD_REQ_REPLAY : COORD_REQ_PREFILL;
    SA_LOG_DEBUG("request %s admitted on replica %s (%lld blocks)", r->request_id,
                 coord_registry_replica(set->reg, rep)->name, (long long)need);
  }
}

/* ------------------------------------------------------------ scheduling */

static void mark_inflight(coord_plan_t *plan, bool on) {
  for (int i = 0; i < plan->n; i++) {
    coord_plan_entry_t *e = &plan->e[i];
    if (e->kind == COORD_STEP_PREFILL)
      e->req->prefill_inflight = on;
    else
      e->req->chains[e->chain].inflight = on;
  }
}

/* Keeps n_stages (+ extra) micro-batches in flight on every ready replica,
 * splitting the ready sequences over the free pipeline slots. */
static void schedule(coord_requests_t *set) {
  for (int ri = 0; ri < COORD_MAX_REPLICAS; ri++) {
    const coord_replica_t *rp = coord_registry_replica(set->reg, ri);
    if (!rp || !rp->ready)
      continue;
    int slots = rp->n_stages + set->opts->extra_microbatches;
    int inflight;
    while ((inflight = set->pl_ops->inflight(set->pl, ri)) < slots) {
      int ready = coord_sched_ready(set->head, ri);
      if (ready == 0)
        break;
      int free_slots = slots - inflight;
      coord_plan_limits_t lim = {
          .replica = ri,
          .max_seqs = rp->max_batch,
          .token_budget = rp->max_tokens_per_step,
          .prefill_chunk = set->opts->prefill_chunk,
      };
      int share = (ready + free_slots - 1) / free_slots;
      if (share < lim.max_seqs)
        lim.max_seqs = share;
      coord_plan_t *plan = &set->plan;
      if (coord_sched_plan(set->head, &lim, plan) == 0)
        break;
      mark_inflight(plan, true);
      int rc = set->pl_ops->step(set->pl, plan);
      if (rc == 0) {
        SA_LOG_DEBUG("replica %s: step of %d tokens (%d sequences%s), %d ready over %d free "
                     "slots", rp->name, (int)plan->total_tokens, plan->n,
                     plan->has_prefill ? ", a prefill chunk" : "", ready, free_slots);
        continue;
      }
      mark_inflight(plan, false);
      SA_LOG_WARN("replica %s: could not send a step: %s", rp->name, sa_strerror(rc));
      if (rc == SA_EFULL) /* the sequences wait for the next pass */
        break;
      /* the first stage cannot be reached: the replica is out, and its
       * requests move to another (re-prefill, the same tokens) */
      for (int i = 0; i < plan->n; i++)
        if (plan->e[i].req->replica == ri)
          request_requeue(set, plan->e[i].req, SA_STATUS_UNAVAILABLE,
                          "could not reach the first stage of the replica");
      coord_registry_mark_down(set->reg, rp->stage[0]);
      break;
    }
  }
}

/* -------------------------------------------------------- token results */

/* Streams n bytes of chain c's text (and keeps them in its text). */
static void emit_piece(coord_requests_t *set, coord_request_t *r, coord_chain_t *c,
                       const char *t, size_t n) {
  if (memchr(t, '\0', n)) { /* a <0x00> byte token: no text carries it (protobuf
                               strings end at it), so none of ours does */
    char clean[COORD_STOP_BYTES + 256];
    size_t m = 0;
    for (size_t i = 0; i < n && m < sizeof clean; i++)
      if (t[i])
        clean[m++] = t[i];
    if (m < n) {
      emit_piece(set, r, c, clean, m);
      return;
    }
  }
  if (n == 0)
    return;
  int64_t offset = (int64_t)(c->reasoning_len + c->answer_len);
  chain_text(c, t, n);
  coord_event_t ev = {.kind = COORD_EV_DELTA,
                      .chain = c->idx,
                      .text = t,
                      .len = n,
                      .answer = c->in_answer,
                      .offset = offset,
                      .tokens = c->n_tokens - c->n_tokens_streamed};
  c->n_tokens_streamed = c->n_tokens;
  emit(set, r, &ev);
}

/* The text held back for the stop strings goes out (a part or chain ends). */
static void emit_held(coord_requests_t *set, coord_request_t *r, coord_chain_t *c) {
  char t[COORD_STOP_BYTES];
  size_t n = (size_t)c->n_held;
  memcpy(t, c->held, n);
  c->n_held = 0;
  emit_piece(set, r, c, t, n);
}

/* Streams the text of one generated token of chain c. With stop strings,
 * text that may begin one is held back until it cannot, and a match ends
 * the chain's text right before the stop string (c->stop_hit). */
static void emit_text(coord_requests_t *set, coord_request_t *r, coord_chain_t *c, int32_t tok) {
  char text[256];
  size_t n = 0;
  if (sa_detok_push(&c->detok, tok, text, sizeof text, &n) || n == 0)
    return;
  if (r->n_stop == 0) {
    emit_piece(set, r, c, text, n);
    return;
  }
  char buf[COORD_STOP_BYTES + sizeof text];
  size_t len = (size_t)c->n_held;
  memcpy(buf, c->held, len);
  memcpy(buf + len, text, n);
  len += n;
  c->n_held = 0;
  size_t hit = SIZE_MAX;
  for (int k = 0; k < r->n_stop; k++) {
    const char *p = memmem(buf, len, r->stop[k], strlen(r->stop[k]));
    if (p && (size_t)(p - buf) < hit)
      hit = (size_t)(p - buf);
  }
  if (hit != SIZE_MAX) {
    emit_piece(set, r, c, buf, hit);
    c->stop_hit = true;
    return;
  }
  size_t keep = 0; /* the longest tail that begins a stop string */
  for (int k = 0; k < r->n_stop; k++) {
    size_t sl = strlen(r->stop[k]);
    for (size_t t = sl - 1 < len ? sl - 1 : len; t > keep; t--)
      if (!memcmp(buf + len - t, r->stop[k], t)) {
        keep = t;
        break;
      }
  }
  emit_piece(set, r, c, buf, len - keep);
  memcpy(c->held, buf + len - keep, keep);
  c->n_held = (int)keep;
}

/* The token sampled for chain c. */
static void chain_token(coord_requests_t *set, coord_request_t *r, coord_chain_t *c,
                        int32_t tok) {
  const coord_model_t *m = set->model;
  if (c->n_tokens == c->cap_tokens) {
    int nc = c->cap_tokens ? c->cap_tokens * 2 : 64;
    int32_t *nt = realloc(c->tokens, sizeof(int32_t) * (size_t)nc);
    if (!nt) {
      request_fail(set, r, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      return;
    }
    c->tokens = nt;
    c->cap_tokens = nc;
  }
  /* the think budget: once reasoning reaches it, </think> is forced */
  if (!c->in_answer && r->think_budget > 0 && c->reasoning_tokens >= r->think_budget &&
      tok != m->tok_think_end && m->tok_think_end >= 0)
    tok = m->tok_think_end;
  c->tokens[c->n_tokens++] = tok;
  c->next_input = tok;
  if (!set->replaying) {
    set->stats.generated_tokens++;
    if (r->t_first_token_ms == 0) { /* a token, even one that makes no text yet */
      r->t_first_token_ms = sa_now_ms();
      coord_hist_observe(&set->stats.ttft,
                         (double)(r->t_first_token_ms - r->t_start_ms) / 1000.0);
    }
    uint64_t now_ns = sa_now_ns();
    if (c->t_last_token_ns)
      coord_hist_observe(&set->stats.itl, (double)(now_ns - c->t_last_token_ns) * 1e-9);
    c->t_last_token_ns = now_ns;
  }
  if (tok == m->tok_eot) {
    chain_finish(set, r, c, SA__FINISH_REASON__FINISH_EOT);
    return;
  }
  if (tok == m->tok_think_end && !c->in_answer) {
    emit_held(set, r, c);
    chain_flush(set, r, c);
    sa_detok_init(&c->detok, set->tok);
    c->in_answer = true; /* </think> itself counts as neither */
  } else {
    if (c->in_answer)
      c->answer_tokens++;
    else
      c->reasoning_tokens++;
    emit_text(set, r, c, tok);
    if (c->stop_hit) {
      chain_finish(set, r, c, SA__FINISH_REASON__FINISH_STOP);
      return;
    }
  }
  if (c->n_tokens >= r->max_tokens)
    chain_finish(set, r, c, SA__FINISH_REASON__FINISH_LENGTH);
}

/* True for a step failure another replica may not have. */
static bool retryable_step(sa_status_t st) {
  return st == SA_STATUS_UNAVAILABLE || st == SA_STATUS_DEADLINE_EXCEEDED ||
         st == SA_STATUS_FAILED_PRECONDITION || st == SA_STATUS_ABORTED;
}

static void start_fork(coord_requests_t *set, coord_request_t *r) {
  int rc = set->pl_ops->fork(set->pl, r);
  if (rc) {
    request_fail(set, r,
                 rc == SA_ENOMEM ? SA_STATUS_RESOURCE_EXHAUSTED : SA_STATUS_UNAVAILABLE,
                 rc == SA_ENOMEM ? "out of memory" : "could not reach the stages to fork");
    return;
  }
  r->state = COORD_REQ_FORKING;
  r->fork_inflight = true;
  r->pending_ops++;
}

static void apply_prefill(coord_requests_t *set, coord_request_t *r, const coord_step_entry_t *e) {
  if (r->state != COORD_REQ_PREFILL) { /* ended while the chunk was out */
    if (r->chains[0].state == COORD_CHAIN_DONE)
      chain_free(set, r, &r->chains[0]);
    return;
  }
  r->prefilled += e->n_tokens;
  if (r->prefilled < r->prompt_len - 1)
    return;
  for (int k = 0; k < r->n_chains; k++)
    r->chains[k].next_input = r->prompt[r->prompt_len - 1];
  if (r->n_chains > 1) {
    start_fork(set, r);
  } else {
    r->state = COORD_REQ_DECODING;
    r->chains[0].state = COORD_CHAIN_DECODE;
  }
}

static void apply_replay(coord_requests_t *set, coord_request_t *r, coord_chain_t *c,
                         const coord_step_entry_t *e, int ri) {
  if (r->state != COORD_REQ_REPLAY || c->state != COORD_CHAIN_WAIT) {
    chain_free(set, r, c);
    return;
  }
  c->replayed += e->n_tokens;
  if (c->replayed < coord_sched_replay_len(r, c))
    return;
  c->next_input = c->n_tokens ? c->tokens[c->n_tokens - 1] : r->prompt[r->prompt_len - 1];
  c->state = COORD_CHAIN_DECODE;
  for (int k = 0; k < r->n_chains; k++)
    if (r->chains[k].state == COORD_CHAIN_WAIT)
      return;
  r->state = COORD_REQ_DECODING;
  const coord_replica_t *rp = coord_registry_replica(set->reg, ri);
  SA_LOG_INFO("request %s: re-prefilled on replica %s; decoding resumes", r->request_id,
              rp ? rp->name : "?");
}

static void apply_step(coord_requests_t *set, const coord_step_t *st) {
  if (st->status != SA_STATUS_OK) {
    const coord_replica_t *rp = coord_registry_replica(set->reg, st->replica);
    SA_LOG_WARN("replica %s batch %llu: %s", rp ? rp->name : "?",
                (unsigned long long)st->batch_id, st->msg);
  }
  for (int i = 0; i < st->n; i++) {
    const coord_step_entry_t *e = &st->e[i];
    coord_request_t *r = e->req;
    coord_chain_t *c = &r->chains[e->chain];
    if (e->kind == COORD_STEP_PREFILL)
      r->prefill_inflight = false;
    else
      c->inflight = false;
    if (e->epoch != r->epoch) { /* sent before a failover: the KV is gone with it */
      free_stale(set, r, st->replica, e->seq_id);
      continue;
    }
    if (st->status != SA_STATUS_OK) {
      if (retryable_step(st->status))
        request_requeue(set, r, st->status, st->msg);
      else
        request_fail(set, r, st->status, st->msg);
      continue;
    }
    switch (e->kind) {
    case COORD_STEP_PREFILL:
      apply_prefill(set, r, e);
      break;
    case COORD_STEP_REPLAY:
      apply_replay(set, r, c, e, st->replica);
      break;
    case COORD_STEP_DECODE:
      if (c->state != COORD_CHAIN_DECODE || r->state == COORD_REQ_DONE) {
        chain_free(set, r, c); /* cancelled or decided while in flight */
        break;
      }
      if (e->token < 0) {
        request_fail(set, r, SA_STATUS_INTERNAL, "the last stage returned no token");
        break;
      }
      chain_token(set, r, c, e->token);
      request_try_finish(set, r);
      break;
    }
  }
}

static void apply_fork(coord_requests_t *set, coord_request_t *r, sa_status_t st,
                       const char *msg) {
  r->pending_ops--;
  r->fork_inflight = false;
  if (r->state != COORD_REQ_FORKING) { /* ended or failed over meanwhile */
    for (int c = 1; c < r->n_chains; c++)
      if (r->chains[c].state == COORD_CHAIN_DONE)
        chain_free(set, r, &r->chains[c]);
    return;
  }
  if (st != SA_STATUS_OK) {
    request_requeue(set, r, SA_STATUS_UNAVAILABLE, msg);
    return;
  }
  r->state = COORD_REQ_DECODING;
  for (int c = 0; c < r->n_chains; c++)
    if (r->chains[c].state == COORD_CHAIN_WAIT)
      r->chains[c].state = COORD_CHAIN_DECODE;
}

/* Write-ahead: the tokens of the step results about to be applied are
 * journaled and synced (one sync for all) before any of them reaches a
 * client. A token journaled here that the pass then drops (its chain was
 * decided meanwhile, or its batch turned stale) is harmless on replay: a
 * chain that is done takes no token, and a stale one is the very token a
 * re-prefill computes again (the same RNG key). */
static void journal_tokens(coord_requests_t *set) {
  if (!set->wal)
    return;
  for (coord_record_t *rec = set->rec_head; rec; rec = rec->next) {
    const coord_step_t *st = rec->step;
    if (rec->kind != REC_STEP || st->status != SA_STATUS_OK)
      continue;
    for (int i = 0; i < st->n; i++) {
      const coord_step_entry_t *e = &st->e[i];
      const coord_request_t *r = e->req;
      const coord_chain_t *c = &r->chains[e->chain];
      if (e->kind != COORD_STEP_DECODE || e->epoch != r->epoch || e->token < 0 ||
          c->state != COORD_CHAIN_DECODE || r->state == COORD_REQ_DONE)
        continue;
      if (coord_wal_tokens(set->wal, r->id, c->idx, c->n_tokens, &e->token, 1))
        set->wal_errors++;
    }
  }
  if (coord_wal_commit(set->wal))
    set->wal_errors++;
}

static void apply_records(coord_requests_t *set) {
  journal_tokens(set);
  coord_record_t *rec = set->rec_head;
  set->rec_head = set->rec_tail = NULL;
  for (coord_record_t *next; rec; rec = next) {
    next = rec->next;
    switch (rec->kind) {
    case REC_STEP:
      apply_step(set, rec->step);
      break;
    case REC_FORK:
      apply_fork(set, rec->r, rec->status, rec->msg);
      break;
    case REC_FREE:
      rec->r->pending_ops--;
      break;
    case REC_ENCODE:
      apply_encoded(set, rec->r, rec->enc);
      break;
    case REC_REPLICA_LOST:
      for (coord_request_t *r = set->head; r; r = r->next)
        if (r->replica == rec->replica && r->state != COORD_REQ_DONE)
          request_requeue(set, r, SA_STATUS_UNAVAILABLE, rec->msg);
      break;
    }
    free_record(rec);
  }
}

static void apply_cancels(coord_requests_t *set) {
  for (coord_request_t *r = set->head; r; r = r->next) {
    if (r->state == COORD_REQ_DONE)
      continue;
    if (set->stopping)
      request_fail(set, r, SA_STATUS_UNAVAILABLE, "the coordinator is shutting down");
    else if (r->cancel_asked) {
      SA_LOG_INFO("request %s: client went away or cancelled; cancelling", r->request_id);
      request_fail_as(set, r, SA_STATUS_CANCELLED, "cancelled by the client",
                      SA__FINISH_REASON__FINISH_CLIENT_CANCELLED);
    }
  }
}

/* Frees the requests that ended and that nothing refers to any more
 * (one kept for a resume stays until its time is up, holding no KV).
 * Returns true if KV blocks went back (admission may proceed). */
static bool reap(coord_requests_t *set) {
  bool released = false;
  uint64_t now = sa_now_ms();
  for (coord_request_t *r = set->head, *next; r; r = next) {
    next = r->next;
    if (r->state != COORD_REQ_DONE || !r->ended || r->pending_ops > 0 || r->prefill_inflight)
      continue;
    bool busy = false;
    for (int c = 0; c < r->n_chains && !busy; c++)
      busy = r->chains[c].inflight;
    if (busy)
      continue;
    if (r->replica >= 0 && r->kv_reserved) {
      coord_registry_reserve(set->reg, r->replica, -r->kv_reserved);
      r->kv_reserved = 0;
      released = true;
    }
    if (r->keep_until_ms > now && !r->cbs)
      continue;
    if (r->prev)
      r->prev->next = r->next;
    else
      set->head = r->next;
    if (r->next)
      r->next->prev = r->prev;
    else
      set->tail = r->prev;
    set->n--;
    request_destroy(set, r);
  }
  return released;
}

/* ------------------------------------------------------------- journal */

/* Rewrites the journal from the requests still kept: each one's accept
 * (its audio only while not encoded), prompt, tokens and end. The tokens of
 * chains that finished by themselves go last, in finishing order, so that
 * a replay decides the vote at the same point with the same chains. */
static void compact(coord_requests_t *set) {
  uint64_t before = coord_wal_size(set->wal);
  if (coord_wal_compact_begin(set->wal)) {
    set->wal_errors++;
    return;
  }
  int rc = 0;
  for (const coord_request_t *r = set->head; r && !rc; r = r->next) {
    rc = coord_wal_accept(set->wal, r);
    if (!rc && r->prompt)
      rc = coord_wal_prompt(set->wal, r);
    bool voted[COORD_MAX_CHAINS] = {0};
    for (int i = 0; i < r->n_vote_order; i++)
      voted[r->vote_order[i]] = true;
    for (int c = 0; c < r->n_chains && !rc; c++)
      if (!voted[c] && r->chains[c].n_tokens)
        rc = coord_wal_tokens(set->wal, r->id, c, 0, r->chains[c].tokens, r->chains[c].n_tokens);
    for (int i = 0; i < r->n_vote_order && !rc; i++) {
      const coord_chain_t *c = &r->chains[r->vote_order[i]];
      rc = coord_wal_tokens(set->wal, r->id, c->idx, 0, c->tokens, c->n_tokens);
    }
    if (!rc && r->ended)
      rc = coord_wal_end(set->wal, r->id, r->end_status, r->end_msg);
  }
  if (rc || coord_wal_compact_end(set->wal)) { /* the old journal stays */
    set->wal_errors++;
    SA_LOG_WARN("journal: compaction failed (%s); the journal keeps growing", sa_strerror(rc));
    return;
  }
  SA_LOG_INFO("journal: compacted %llu -> %llu bytes (%d requests kept)",
              (unsigned long long)before, (unsigned long long)coord_wal_size(set->wal), set->n);
}

bool coord_requests_process(coord_requests_t *set) {
  bool worked = set->dirty;
  for (int round = 0; round < MAX_PASS_ROUNDS && set->dirty; round++) {
    set->dirty = false;
    apply_records(set);
    apply_cancels(set);
    wait_for_encoders(set);
    start_new(set);
    admit(set);
    if (!set->stopping)
      schedule(set);
    if (reap(set))
      set->dirty = true;
    if (set->rec_head) /* recorded during the pass (a registry change) */
      set->dirty = true;
  }
  if (set->wal && worked) { /* accepts, prompts and ends of this pass */
    if (coord_wal_commit(set->wal))
      set->wal_errors++;
    if (coord_wal_wants_compaction(set->wal))
      compact(set);
  }
  return worked;
}

/* ------------------------------------------------------------- recovery */

typedef struct {
  coord_requests_t *set;
  coord_request_t *last; /* the last one found: records of one request cluster */
  int64_t skipped;
} recover_t;

static coord_request_t *by_uid(recover_t *rc, uint64_t uid) {
  if (rc->last && rc->last->id == uid)
    return rc->last;
  for (coord_request_t *r = rc->set->head; r; r = r->next)
    if (r->id == uid)
      return rc->last = r;
  rc->skipped++;
  return NULL;
}

static void rec_accept(void *user, uint64_t uid, const coord_request_params_t *p) {
  recover_t *rc = user;
  coord_requests_t *set = rc->set;
  char err[256];
  for (coord_request_t *r = set->head; r; r = r->next)
    if (r->id == uid) { /* twice: keep the first */
      rc->skipped++;
      return;
    }
  coord_request_t *r = coord_request_new(set, p, NULL, NULL, err, sizeof err);
  if (!r) {
    SA_LOG_ERROR("journal: request %s cannot be rebuilt: %s", p->request_id, err);
    rc->skipped++;
    return;
  }
  r->id = uid;
  if (uid > set->next_id)
    set->next_id = uid;
  rc->last = r;
}

static int32_t *dup_i32(const int32_t *v, int n) {
  int32_t *d = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
  if (d && n)
    memcpy(d, v, sizeof(int32_t) * (size_t)n);
  return d;
}

static void rec_prompt(void *user, uint64_t uid, const int32_t *ids, int n_ids,
                       const int32_t *audio_pos, const void *rows, int n_rows, int hidden) {
  recover_t *rc = user;
  coord_requests_t *set = rc->set;
  coord_request_t *r = by_uid(rc, uid);
  if (!r || r->prompt || r->ended)
    return;
  if (n_rows && hidden != set->model->hidden_size) {
    SA_LOG_ERROR("journal: request %s has audio rows %d wide; the model's are %d",
                 r->request_id, hidden, set->model->hidden_size);
    rc->skipped++;
    return;
  }
  r->prompt = dup_i32(ids, n_ids);
  r->audio_pos = dup_i32(audio_pos, n_rows);
  r->audio_rows = n_rows ? malloc(sizeof(float) * (size_t)n_rows * (size_t)hidden) : NULL;
  if (!r->prompt || !r->audio_pos || (n_rows && !r->audio_rows)) {
    request_fail(set, r, SA_STATUS_RESOURCE_EXHAUSTED, "out of memory rebuilding the prompt");
    return;
  }
  if (n_rows)
    memcpy(r->audio_rows, rows, sizeof(float) * (size_t)n_rows * (size_t)hidden);
  r->prompt_len = n_ids;
  r->n_audio_rows = n_rows;
  r->hidden = hidden;
  drop_audio(set, r);
}

static void rec_tokens(void *user, uint64_t uid, int chain, int n_before, const int32_t *toks,
                       int n) {
  recover_t *rc = user;
  coord_requests_t *set = rc->set;
  coord_request_t *r = by_uid(rc, uid);
  if (!r || !r->prompt || r->ended || chain >= r->n_chains)
    return;
  coord_chain_t *c = &r->chains[chain];
  if (n_before != c->n_tokens) /* a token journaled twice (see journal_tokens) */
    return;
  for (int i = 0; i < n && c->state != COORD_CHAIN_DONE && !r->ended; i++) {
    chain_token(set, r, c, toks[i]);
    request_try_finish(set, r);
  }
}

static void rec_end(void *user, uint64_t uid, sa_status_t st, const char *msg) {
  recover_t *rc = user;
  coord_request_t *r = by_uid(rc, uid);
  if (!r || r->ended)
    return;
  if (st == SA_STATUS_OK)
    request_fail(rc->set, r, SA_STATUS_DATA_LOSS,
                 "the journal holds the end of this request but not all of its tokens");
  else if (st == SA_STATUS_CANCELLED)
    request_fail_as(rc->set, r, st, msg, SA__FINISH_REASON__FINISH_CLIENT_CANCELLED);
  else
    request_fail(rc->set, r, st, msg);
}

static const coord_wal_replay_cbs_t k_recover_cbs = {
    .accept = rec_accept, .prompt = rec_prompt, .tokens = rec_tokens, .end = rec_end};

int coord_requests_recover(coord_requests_t *set, coord_wal_t *w, int keep_ms, int *resumed,
                           int *kept, char *err, size_t cap) {
  recover_t rc = {.set = set};
  sa_journal_replay_t st = {0};
  set->keep_ms = keep_ms;
  set->replaying = true;
  int e = coord_wal_replay(w, &k_recover_cbs, &rc, &st);
  set->replaying = false;
  if (e) {
    sa_set_err(err, cap, "cannot read the journal: %s", sa_strerror(e));
    return e;
  }
  int n_resumed = 0, n_kept = 0;
  uint64_t now = sa_now_ms();
  for (coord_request_t *r = set->head; r; r = r->next) {
    if (r->ended) {
      r->keep_until_ms = now + (uint64_t)keep_ms;
      n_kept++;
      continue;
    }
    n_resumed++;
    if (!r->prompt) { /* encode it again */
      r->state = COORD_REQ_NEW;
      continue;
    }
    /* as after a failover: every running chain re-prefills its prompt and
     * the tokens it has on the replica it is admitted to */
    r->state = COORD_REQ_QUEUED;
    r->replay = true;
    r->t_queued_ns = sa_now_ns();
    for (int k = 0; k < r->n_chains; k++) {
      coord_chain_t *c = &r->chains[k];
      c->freed = c->state == COORD_CHAIN_DONE;
      if (c->state != COORD_CHAIN_DONE) {
        c->state = COORD_CHAIN_WAIT;
        c->replayed = 0;
      }
    }
    SA_LOG_INFO("request %s resumes from the journal: %d chain(s) with %d token(s) in chain 0",
                r->request_id, r->n_chains, r->chains[0].n_tokens);
  }
  if (rc.skipped)
    SA_LOG_WARN("journal: %lld records name no request it holds (skipped)",
                (long long)rc.skipped);
  SA_LOG_INFO("journal: %llu records, %llu bytes read%s; %d request(s) resume, %d ended kept "
              "for %d s",
              (unsigned long long)st.records, (unsigned long long)st.bytes,
              st.dropped_bytes ? " (a torn tail was dropped)" : "", n_resumed, n_kept,
              keep_ms / 1000);
  set->wal = w;
  compact(set); /* only what is kept, and a clean tail */
  set->dirty = true;
  if (resumed)
    *resumed = n_resumed;
  if (kept)
    *kept = n_kept;
  return 0;
}
