/*
 * check — sa-worker's acceptance of wire messages (check.h).
 */
#include "check.h"

#include "sa_nccl.h"

#include <stdio.h>
#include <string.h>

/* Stage 0's embed spans of one sequence: frame 0, rows within the sequence,
 * each at least one row, no two overlapping; their rows are added to *emb
 * (rows the decoder gets embeddings for) and the frame rows they need raise
 * *need. */
static const char *check_spans(const Sa__SeqStep *s, int64_t *emb, int64_t *need) {
  int64_t sum = 0;
  for (size_t e = 0; e < s->n_embed_spans; e++) {
    const Sa__EmbedSpan *sp = s->embed_spans[e];
    if (sp->frame != 0 || sp->first_row < 0 || sp->n_rows < 1 || sp->at_token < 0 ||
        (int64_t)sp->at_token + sp->n_rows > s->n_tokens || sp->first_row > INT64_MAX / 2)
      return "an embed span is out of range";
    sum += sp->n_rows;
    if (sum > s->n_tokens)
      return "embed spans cover more rows than the sequence has";
    for (size_t f = 0; f < e; f++) {
      const Sa__EmbedSpan *o = s->embed_spans[f];
      if (sp->at_token < o->at_token + o->n_rows && o->at_token < sp->at_token + sp->n_rows)
        return "embed spans overlap";
    }
    if (sp->first_row + sp->n_rows > *need)
      *need = sp->first_row + sp->n_rows;
  }
  *emb += sum;
  return NULL;
}

const char *worker_check_step(const worker_limits_t *lim, const Sa__StepBatch *b, int64_t *rows,
                              int64_t *emb_rows, char *msg, size_t cap) {
  *rows = 0;
  *emb_rows = 0;
  if ((int)b->n_route < 1 || b->hop < 0 || b->hop >= (int)b->n_route)
    return "bad route or hop";
  if (b->act_via_nccl && (lim->is_first || b->hop < 1))
    return "act_via_nccl on a first stage or without a previous hop";
  if (b->n_seqs == 0 || b->n_seqs > (size_t)lim->max_seqs)
    return "StepBatch has no sequences or more than this stage's max batch";
  int64_t M = 0, emb = 0;
  for (size_t i = 0; i < b->n_seqs; i++) {
    const Sa__SeqStep *s = b->seqs[i];
    if (s->n_tokens < 1 || s->n_tokens > lim->max_tokens || s->position < 0)
      return "a sequence has a bad token count or position";
    if (s->n_token_ids != (size_t)s->n_tokens) /* stage 0 embeds them, the last keeps them */
      return "token_ids must hold n_tokens ids";
    if (lim->is_first) {
      for (size_t k = 0; k < s->n_token_ids; k++)
        if (s->token_ids[k] < 0 || s->token_ids[k] >= lim->vocab)
          return "a token id is outside the vocabulary";
      const char *why = check_spans(s, &emb, emb_rows);
      if (why)
        return why;
    }
    M += s->n_tokens;
  }
  if (M > lim->max_tokens || M != b->total_tokens) {
    snprintf(msg, cap, "total_tokens %lld disagrees with the sequences (%lld) or is over %d",
             (long long)b->total_tokens, (long long)M, lim->max_tokens);
    return msg;
  }
  *rows = M;
  return NULL;
}

const char *worker_check_link(const worker_limits_t *lim, const Sa__LinkRequest *rq,
                              size_t link_addr_cap) {
  if (rq->nccl_id.len != SA_NCCL_ID_BYTES || !rq->from_address || !rq->from_address[0] ||
      strlen(rq->from_address) >= link_addr_cap || !rq->host)
    return "malformed offer (NCCL id of 128 bytes and the sender's address needed)";
  if (lim->no_nccl)
    return "this stage runs with --no-nccl";
  if (!lim->is_cuda)
    return "this stage does not run on CUDA";
  if (!lim->nccl_built)
    return "this build has no NCCL";
  if (lim->is_first)
    return "the first stage takes no activations";
  if (!lim->host || strcmp(rq->host, lim->host))
    return "the stages are on different hosts";
  if (rq->hidden_size != lim->hidden || rq->max_tokens < 1 || rq->max_tokens > lim->max_tokens)
    return "hidden size or tokens per step disagree";
  return NULL;
}
