/*
 * check — what sa-worker accepts from the wire, as pure functions (no I/O,
 * no stage state): the loop thread calls them before a job is made, the
 * fuzz target tests/fuzz/worker/fuzz_step_check.c calls them on any bytes.
 * Not a public header.
 */
#ifndef SA_WORKER_CHECK_H
#define SA_WORKER_CHECK_H

#include <stdbool.h>
#include <stdint.h>

#include "sa.pb-c.h"

/* The stage as far as checking a message goes. */
typedef struct {
  bool is_first, is_cuda, nccl_built, no_nccl;
  int max_seqs, max_tokens, vocab, hidden;
  const char *host; /* gethostname */
} worker_limits_t;

/* A StepBatch this stage can run: sequences, token counts and ids, total
 * rows, route and hop, embed spans (stage 0: within their sequence, no
 * overlap, at most n_tokens rows per sequence), act_via_nccl only past hop
 * 0. Returns NULL, with *rows = total rows and *emb_rows = rows frame 0 must
 * hold (stage 0), or the reason it is refused (written to msg, cap bytes). */
const char *worker_check_step(const worker_limits_t *lim, const Sa__StepBatch *b, int64_t *rows,
                              int64_t *emb_rows, char *msg, size_t cap);

/* Why an NCCL link offer is refused, or NULL to accept it. link_addr_cap:
 * the longest sender address (with its NUL) the stage can keep. */
const char *worker_check_link(const worker_limits_t *lim, const Sa__LinkRequest *rq,
                              size_t link_addr_cap);

#endif
