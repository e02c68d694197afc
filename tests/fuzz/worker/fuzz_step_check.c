/* libFuzzer target over sa-worker's message checks (worker/check.c): any
 * bytes, unpacked as a StepBatch and as a LinkRequest, checked against a
 * first, a middle and a last stage. A step that passes must be one the
 * compute thread can run without going out of its buffers: rows = sum of
 * n_tokens <= max_tokens, token ids where stage 0 needs them, embed rows
 * within their sequence and at most rows in all, frame rows in range. */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "sa_nccl.h"

#define CHECK(c)                                                               \
  do {                                                                         \
    if (!(c))                                                                  \
      __builtin_trap();                                                        \
  } while (0)

static void step(const worker_limits_t *lim, const Sa__StepBatch *b) {
  char msg[256];
  int64_t rows = -1, need = -1;
  const char *why = worker_check_step(lim, b, &rows, &need, msg, sizeof msg);
  if (why) {
    CHECK(why[0] != '\0');
    return;
  }
  CHECK(b->n_seqs >= 1 && b->n_seqs <= (size_t)lim->max_seqs);
  CHECK(b->hop >= 0 && b->hop < (int)b->n_route);
  CHECK(!b->act_via_nccl || (!lim->is_first && b->hop >= 1));
  int64_t m = 0, emb = 0;
  for (size_t i = 0; i < b->n_seqs; i++) {
    const Sa__SeqStep *s = b->seqs[i];
    CHECK(s->n_tokens >= 1 && s->n_token_ids == (size_t)s->n_tokens && s->position >= 0);
    for (size_t e = 0; lim->is_first && e < s->n_embed_spans; e++) {
      const Sa__EmbedSpan *sp = s->embed_spans[e];
      CHECK(sp->at_token >= 0 && sp->n_rows >= 1 && sp->at_token + sp->n_rows <= s->n_tokens);
      CHECK(sp->first_row >= 0 && sp->first_row + sp->n_rows <= need);
      emb += sp->n_rows;
    }
    for (size_t k = 0; lim->is_first && k < s->n_token_ids; k++)
      CHECK(s->token_ids[k] >= 0 && s->token_ids[k] < lim->vocab);
    m += s->n_tokens;
  }
  CHECK(rows == m && rows == b->total_tokens && rows <= lim->max_tokens);
  CHECK(emb <= rows);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  worker_limits_t first = {.is_first = true, .max_seqs = 8, .max_tokens = 64, .vocab = 100,
                           .hidden = 16, .host = "h"};
  worker_limits_t mid = first, cuda = first;
  mid.is_first = false;
  cuda.is_first = false;
  cuda.is_cuda = true;
  cuda.nccl_built = true;
  Sa__StepBatch *b = sa__step_batch__unpack(NULL, size, data);
  if (b) {
    step(&first, b);
    step(&mid, b);
    sa__step_batch__free_unpacked(b, NULL);
  }
  Sa__LinkRequest *rq = sa__link_request__unpack(NULL, size, data);
  if (rq) {
    const char *why = worker_check_link(&cuda, rq, 256);
    if (!why) {
      CHECK(rq->nccl_id.len == SA_NCCL_ID_BYTES && strlen(rq->from_address) < 256);
      CHECK(!strcmp(rq->host, "h") && rq->hidden_size == 16);
      CHECK(rq->max_tokens >= 1 && rq->max_tokens <= 64);
    }
    CHECK(worker_check_link(&first, rq, 256) != NULL); /* never into stage 0 */
    sa__link_request__free_unpacked(rq, NULL);
  }
  return 0;
}
