/*
 * wal — the coordinator's journal of requests (see wal.h).
 */
#include "wal.h"

#include "log.h"

#include <stdlib.h>
#include <string.h>

enum { REC_ACCEPT = 1, REC_PROMPT = 2, REC_TOKENS = 3, REC_END = 4 };

#define COMPACT_FLOOR (64u << 20) /* no compaction below this size */

struct coord_wal {
  sa_journal_t *j;
  uint64_t size_after_compaction;
};

int coord_wal_open(const char *dir, coord_wal_t **out, char *err, size_t cap) {
  coord_wal_t *w = calloc(1, sizeof *w);
  if (!w) {
    sa_set_err(err, cap, "out of memory");
    return SA_ENOMEM;
  }
  int rc = sa_journal_open(dir, &w->j, err, cap);
  if (rc) {
    free(w);
    return rc;
  }
  *out = w;
  return 0;
}

void coord_wal_close(coord_wal_t **w) {
  if (!w || !*w)
    return;
  sa_journal_close(&(*w)->j);
  free(*w);
  *w = NULL;
}

uint64_t coord_wal_size(const coord_wal_t *w) { return sa_journal_size(w->j); }

/* Packs msg and appends it as a record of `type`. */
static int append_pb(coord_wal_t *w, uint8_t type, const ProtobufCMessage *msg) {
  size_t len = protobuf_c_message_get_packed_size(msg);
  uint8_t stackbuf[1024];
  uint8_t *buf = len <= sizeof stackbuf ? stackbuf : malloc(len);
  if (!buf)
    return SA_ENOMEM;
  protobuf_c_message_pack(msg, buf);
  int rc = sa_journal_append(w->j, type, buf, len);
  if (buf != stackbuf)
    free(buf);
  return rc;
}

/* ------------------------------------------------------------ encoding */

int coord_wal_accept(coord_wal_t *w, const coord_request_t *r) {
  Sa__JournalAccept a = SA__JOURNAL_ACCEPT__INIT;
  Sa__JournalPart parts[COORD_MAX_PARTS], *pp[COORD_MAX_PARTS];
  char *stop[COORD_MAX_STOP];
  Sa__SamplingParams sp = r->sampling;
  a.uid = r->id;
  a.request_id = (char *)r->request_id;
  a.owner = (char *)r->owner;
  a.system = r->system_text;
  for (int k = 0; k < r->n_parts; k++) {
    const coord_req_part_t *q = &r->parts[k];
    sa__journal_part__init(&parts[k]);
    parts[k].text = q->text ? q->text : "";
    parts[k].is_audio = !q->text;
    if (q->audio) {
      parts[k].audio.data = q->audio;
      parts[k].audio.len = q->audio_len;
    }
    parts[k].role = (int32_t)q->role;
    parts[k].new_turn = q->new_turn;
    pp[k] = &parts[k];
  }
  a.parts = pp;
  a.n_parts = (size_t)r->n_parts;
  a.chat_flags = r->chat_flags;
  a.max_tokens = r->max_tokens;
  a.n_chains = r->n_chains;
  a.vote_rule = r->vote_rule;
  a.vote_k = r->vote_k;
  a.think_budget = r->think_budget;
  for (int k = 0; k < r->n_stop; k++)
    stop[k] = (char *)r->stop[k];
  a.stop = stop;
  a.n_stop = (size_t)r->n_stop;
  a.sampling = &sp;
  return append_pb(w, REC_ACCEPT, &a.base);
}

int coord_wal_prompt(coord_wal_t *w, const coord_request_t *r) {
  Sa__JournalPrompt p = SA__JOURNAL_PROMPT__INIT;
  p.uid = r->id;
  p.ids = (int32_t *)r->prompt;
  p.n_ids = (size_t)r->prompt_len;
  p.audio_pos = (int32_t *)r->audio_pos;
  p.n_audio_pos = (size_t)r->n_audio_rows;
  p.audio_rows.data = (uint8_t *)r->audio_rows;
  p.audio_rows.len = r->audio_rows ? sizeof(float) * (size_t)r->n_audio_rows * (size_t)r->hidden : 0;
  p.hidden = r->hidden;
  return append_pb(w, REC_PROMPT, &p.base);
}

int coord_wal_tokens(coord_wal_t *w, uint64_t uid, int chain, int n_before,
                     const int32_t *tokens, int n) {
  Sa__JournalTokens t = SA__JOURNAL_TOKENS__INIT;
  t.uid = uid;
  t.chain = chain;
  t.n_before = n_before;
  t.tokens = (int32_t *)tokens;
  t.n_tokens = (size_t)n;
  return append_pb(w, REC_TOKENS, &t.base);
}

int coord_wal_end(coord_wal_t *w, uint64_t uid, sa_status_t st, const char *msg) {
  Sa__JournalEnd e = SA__JOURNAL_END__INIT;
  e.uid = uid;
  e.status = (Sa__StatusCode)st;
  e.message = (char *)(msg ? msg : "");
  return append_pb(w, REC_END, &e.base);
}

int coord_wal_commit(coord_wal_t *w) { return sa_journal_commit(w->j); }

bool coord_wal_wants_compaction(const coord_wal_t *w) {
  uint64_t size = sa_journal_size(w->j);
  return size > COMPACT_FLOOR && size > 2 * w->size_after_compaction;
}

int coord_wal_compact_begin(coord_wal_t *w) { return sa_journal_compact_begin(w->j); }

int coord_wal_compact_end(coord_wal_t *w) {
  int rc = sa_journal_compact_end(w->j);
  if (rc == 0)
    w->size_after_compaction = sa_journal_size(w->j);
  return rc;
}

/* ------------------------------------------------------------ decoding */

typedef struct {
  const coord_wal_replay_cbs_t *cbs;
  void *user;
  uint64_t skipped;
} replay_t;

static void replay_accept(replay_t *rp, const Sa__JournalAccept *a) {
  if (a->n_parts > COORD_MAX_PARTS || a->n_chains < 1 || a->n_chains > COORD_MAX_CHAINS ||
      a->max_tokens < 1 || strlen(a->request_id) >= 64) {
    rp->skipped++;
    return;
  }
  coord_request_params_t p = {
      .request_id = a->request_id,
      .owner = a->owner,
      .system = a->system,
      .chat_flags = a->chat_flags,
      .max_tokens = a->max_tokens,
      .n_chains = a->n_chains,
      .vote_rule = a->vote_rule,
      .vote_k = a->vote_k,
      .think_budget = a->think_budget,
  };
  for (size_t k = 0; k < a->n_parts; k++) {
    const Sa__JournalPart *q = a->parts[k];
    p.parts[p.n_parts++] = (coord_part_t){
        .text = q->is_audio ? NULL : q->text,
        .audio = q->is_audio ? q->audio.data : NULL,
        .audio_len = q->is_audio ? q->audio.len : 0,
        .role = (sa_chat_role_t)q->role,
        .new_turn = q->new_turn,
    };
  }
  for (size_t k = 0; k < a->n_stop && k < COORD_MAX_STOP; k++)
    p.stop[p.n_stop++] = a->stop[k];
  sa__sampling_params__init(&p.sampling);
  if (a->sampling) {
    p.sampling.temperature = a->sampling->temperature;
    p.sampling.top_p = a->sampling->top_p;
    p.sampling.top_k = a->sampling->top_k;
    p.sampling.min_p = a->sampling->min_p;
    p.sampling.repetition_penalty = a->sampling->repetition_penalty;
    p.sampling.seed = a->sampling->seed;
    p.sampling.logprobs = a->sampling->logprobs;
  }
  rp->cbs->accept(rp->user, a->uid, &p);
}

static void replay_prompt(replay_t *rp, const Sa__JournalPrompt *p) {
  size_t row_bytes = sizeof(float) * (size_t)(p->hidden > 0 ? p->hidden : 0);
  if (p->n_ids < 2 || p->n_ids > (1u << 24) || p->hidden < 0 ||
      (p->n_audio_pos && (!row_bytes || p->audio_rows.len != row_bytes * p->n_audio_pos)) ||
      (!p->n_audio_pos && p->audio_rows.len)) {
    rp->skipped++;
    return;
  }
  for (size_t k = 0; k < p->n_audio_pos; k++)
    if (p->audio_pos[k] < 0 || (size_t)p->audio_pos[k] >= p->n_ids) {
      rp->skipped++;
      return;
    }
  rp->cbs->prompt(rp->user, p->uid, p->ids, (int)p->n_ids, p->audio_pos,
                  p->audio_rows.len ? p->audio_rows.data : NULL, (int)p->n_audio_pos, p->hidden);
}

static int on_record(void *user, uint8_t type, const void *payload, size_t len) {
  replay_t *rp = user;
  const uint8_t *b = payload;
  switch (type) {
  case REC_ACCEPT: {
    Sa__JournalAccept *a = sa__journal_accept__unpack(NULL, len, b);
    if (a) {
      replay_accept(rp, a);
      sa__journal_accept__free_unpacked(a, NULL);
      return 0;
    }
    break;
  }
  case REC_PROMPT: {
    Sa__JournalPrompt *p = sa__journal_prompt__unpack(NULL, len, b);
    if (p) {
      replay_prompt(rp, p);
      sa__journal_prompt__free_unpacked(p, NULL);
      return 0;
    }
    break;
  }
  case REC_TOKENS: {
    Sa__JournalTokens *t = sa__journal_tokens__unpack(NULL, len, b);
    if (t) {
      if (t->chain >= 0 && t->chain < COORD_MAX_CHAINS && t->n_before >= 0 &&
          t->n_tokens <= (1u << 24))
        rp->cbs->tokens(rp->user, t->uid, t->chain, t->n_before, t->tokens, (int)t->n_tokens);
      else
        rp->skipped++;
      sa__journal_tokens__free_unpacked(t, NULL);
      return 0;
    }
    break;
  }
  case REC_END: {
    Sa__JournalEnd *e = sa__journal_end__unpack(NULL, len, b);
    if (e) {
      sa_status_t st = (int)e->status >= 0 && (int)e->status <= (int)SA_STATUS_UNAUTHENTICATED
                            ? (sa_status_t)e->status
                            : SA_STATUS_UNKNOWN;
      rp->cbs->end(rp->user, e->uid, st, e->message);
      sa__journal_end__free_unpacked(e, NULL);
      return 0;
    }
    break;
  }
  default:
    break;
  }
  rp->skipped++;
  return 0;
}

int coord_wal_replay(coord_wal_t *w, const coord_wal_replay_cbs_t *cbs, void *user,
                     sa_journal_replay_t *st) {
  replay_t rp = {.cbs = cbs, .user = user};
  int rc = sa_journal_replay(w->j, on_record, &rp, st);
  if (rp.skipped)
    SA_LOG_WARN("journal: %llu records skipped (unknown type or not decodable)",
                (unsigned long long)rp.skipped);
  w->size_after_compaction = sa_journal_size(w->j);
  return rc;
}
