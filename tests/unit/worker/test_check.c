/* sa-worker's message checks (worker/check.c): a good stage-0 step with an
 * audio span passes with its row counts; overlapping spans, spans covering
 * more rows than the sequence (which used to overrun the stage's embedding
 * buffer), ids outside the vocabulary, missing token ids, a wrong total,
 * act_via_nccl at hop 0 or into stage 0 are refused with a reason; link
 * offers are accepted only between CUDA stages with NCCL on one host. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "check.h"
#include "sa_nccl.h"

static const worker_limits_t FIRST = {.is_first = true, .max_seqs = 4, .max_tokens = 32,
                                      .vocab = 100, .hidden = 8, .host = "h"};

typedef struct {
  Sa__SeqStep s;
  Sa__SeqStep *sp;
  Sa__EmbedSpan span[3];
  Sa__EmbedSpan *spans[3];
  int32_t ids[8];
  Sa__StepBatch b;
  char *route[2];
} step_t;

/* one sequence of 8 tokens at hop 0, two audio spans: rows 1..3, 5..6 */
static void make(step_t *t) {
  memset(t, 0, sizeof *t);
  sa__seq_step__init(&t->s);
  t->s.n_tokens = 8;
  for (int i = 0; i < 8; i++)
    t->ids[i] = i + 1;
  t->s.token_ids = t->ids;
  t->s.n_token_ids = 8;
  for (int i = 0; i < 3; i++) {
    sa__embed_span__init(&t->span[i]);
    t->spans[i] = &t->span[i];
  }
  t->span[0].at_token = 1;
  t->span[0].n_rows = 3;
  t->span[1].at_token = 5;
  t->span[1].n_rows = 2;
  t->span[1].first_row = 3;
  t->s.embed_spans = t->spans;
  t->s.n_embed_spans = 2;
  t->sp = &t->s;
  sa__step_batch__init(&t->b);
  t->b.seqs = &t->sp;
  t->b.n_seqs = 1;
  t->b.total_tokens = 8;
  t->route[0] = "a";
  t->route[1] = "b";
  t->b.route = t->route;
  t->b.n_route = 2;
}

static const char *check(const worker_limits_t *lim, step_t *t, int64_t *rows, int64_t *emb) {
  static char msg[256];
  return worker_check_step(lim, &t->b, rows, emb, msg, sizeof msg);
}

static void test_steps(void **state) {
  (void)state;
  step_t t;
  int64_t rows, emb;
  make(&t);
  assert_null(check(&FIRST, &t, &rows, &emb));
  assert_int_equal(rows, 8);
  assert_int_equal(emb, 5); /* frame rows 0..4 */

  make(&t);
  t.span[1].at_token = 3; /* overlaps row 3 */
  assert_non_null(strstr(check(&FIRST, &t, &rows, &emb), "overlap"));

  make(&t); /* the same rows again and again: more embed rows than tokens */
  t.span[1] = t.span[0];
  t.span[2] = t.span[0];
  t.s.n_embed_spans = 3;
  assert_non_null(check(&FIRST, &t, &rows, &emb));

  make(&t);
  t.span[0].n_rows = 0;
  assert_non_null(strstr(check(&FIRST, &t, &rows, &emb), "out of range"));
  make(&t);
  t.span[1].at_token = 7; /* 7 + 2 > 8 */
  assert_non_null(strstr(check(&FIRST, &t, &rows, &emb), "out of range"));
  make(&t);
  t.span[1].at_token = INT32_MAX; /* no overflow on the way */
  assert_non_null(check(&FIRST, &t, &rows, &emb));

  make(&t);
  t.ids[4] = 100;
  assert_non_null(strstr(check(&FIRST, &t, &rows, &emb), "vocabulary"));
  make(&t);
  t.s.n_token_ids = 7;
  assert_non_null(strstr(check(&FIRST, &t, &rows, &emb), "token_ids"));
  make(&t);
  t.b.total_tokens = 9;
  assert_non_null(strstr(check(&FIRST, &t, &rows, &emb), "total_tokens"));
  make(&t);
  t.b.hop = 2;
  assert_non_null(strstr(check(&FIRST, &t, &rows, &emb), "route"));

  /* NCCL rows: never at hop 0, never into stage 0 */
  worker_limits_t mid = FIRST;
  mid.is_first = false;
  make(&t);
  t.b.act_via_nccl = true;
  assert_non_null(check(&FIRST, &t, &rows, &emb));
  assert_non_null(check(&mid, &t, &rows, &emb));
  t.b.hop = 1;
  assert_null(check(&mid, &t, &rows, &emb));
  assert_int_equal(rows, 8);
  assert_int_equal(emb, 0); /* spans are stage 0's business */
}

static void test_links(void **state) {
  (void)state;
  uint8_t id[SA_NCCL_ID_BYTES] = {0};
  Sa__LinkRequest rq = SA__LINK_REQUEST__INIT;
  rq.nccl_id.data = id;
  rq.nccl_id.len = sizeof id;
  rq.from_address = "tcp://10.0.0.1:7720";
  rq.host = "h";
  rq.hidden_size = 8;
  rq.max_tokens = 32;
  worker_limits_t cuda = FIRST;
  cuda.is_first = false;
  cuda.is_cuda = true;
  cuda.nccl_built = true;
  assert_null(worker_check_link(&cuda, &rq, 256));
  worker_limits_t l = cuda;
  l.is_cuda = false;
  assert_non_null(strstr(worker_check_link(&l, &rq, 256), "CUDA"));
  l = cuda;
  l.nccl_built = false;
  assert_non_null(strstr(worker_check_link(&l, &rq, 256), "NCCL"));
  l = cuda;
  l.no_nccl = true;
  assert_non_null(worker_check_link(&l, &rq, 256));
  l = cuda;
  l.is_first = true;
  assert_non_null(worker_check_link(&l, &rq, 256));
  rq.host = "other";
  assert_non_null(strstr(worker_check_link(&cuda, &rq, 256), "hosts"));
  rq.host = "h";
  rq.max_tokens = 33;
  assert_non_null(worker_check_link(&cuda, &rq, 256));
  rq.max_tokens = 32;
  assert_non_null(worker_check_link(&cuda, &rq, 8)); /* address too long to keep */
  rq.nccl_id.len = 127;
  assert_non_null(strstr(worker_check_link(&cuda, &rq, 256), "malformed"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_steps),
      cmocka_unit_test(test_links),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
