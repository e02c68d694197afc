/*
 * test_sched — coordinator/sched.c, the pure planner: requests built by
 * hand in every state, plans checked entry by entry. No sockets, no loop:
 * the planner has neither.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sched.h"

/* A request on `replica` with a prompt of prompt_len ids (id = position)
 * and n chains; the caller sets the state. Linked after *tail. */
static coord_request_t *make(coord_request_t **head, int replica, int prompt_len, int n) {
  coord_request_t *r = calloc(1, sizeof *r);
  assert_non_null(r);
  r->replica = replica;
  r->n_chains = n;
  r->prompt_len = prompt_len;
  r->prompt = malloc(sizeof(int32_t) * (size_t)prompt_len);
  for (int i = 0; i < prompt_len; i++)
    r->prompt[i] = 1000 + i;
  for (int c = 0; c < n; c++) {
    r->chains[c].idx = c;
    r->chains[c].seq_id = 100 + (uint64_t)c;
  }
  if (!*head) {
    *head = r;
  } else {
    coord_request_t *t = *head;
    while (t->next)
      t = t->next;
    t->next = r;
    r->prev = t;
  }
  return r;
}

static void drop(coord_request_t *head) {
  while (head) {
    coord_request_t *next = head->next;
    for (int c = 0; c < head->n_chains; c++)
      free(head->chains[c].tokens);
    free(head->prompt);
    free(head->audio_pos);
    free(head);
    head = next;
  }
}

static void decoding(coord_request_t *r, int n_tokens) {
  r->state = COORD_REQ_DECODING;
  for (int c = 0; c < r->n_chains; c++) {
    r->chains[c].state = COORD_CHAIN_DECODE;
    r->chains[c].n_tokens = n_tokens;
    r->chains[c].next_input = 7 + c;
  }
}

static coord_plan_limits_t limits(int replica, int max_seqs, int budget, int chunk) {
  coord_plan_limits_t l = {
      .replica = replica, .max_seqs = max_seqs, .token_budget = budget, .prefill_chunk = chunk};
  return l;
}

static coord_plan_t g_plan;

static void test_empty(void **state) {
  (void)state;
  coord_plan_limits_t l = limits(0, 8, 64, 16);
  assert_int_equal(coord_sched_plan(NULL, &l, &g_plan), 0);
  assert_int_equal(coord_sched_ready(NULL, 0), 0);
  coord_request_t *head = NULL;
  coord_request_t *r = make(&head, 0, 10, 1);
  r->state = COORD_REQ_QUEUED; /* not admitted: nothing to plan */
  assert_int_equal(coord_sched_ready(head, 0), 0);
  assert_int_equal(coord_sched_plan(head, &l, &g_plan), 0);
  drop(head);
}

static void test_decode_first_then_one_prefill(void **state) {
  (void)state;
  coord_request_t *head = NULL;
  coord_request_t *p1 = make(&head, 0, 40, 1); /* older prefill */
  p1->state = COORD_REQ_PREFILL;
  p1->prefilled = 16;
  coord_request_t *d = make(&head, 0, 10, 3);
  decoding(d, 5);
  d->chains[1].inflight = true; /* already in a batch */
  coord_request_t *p2 = make(&head, 0, 30, 1);
  p2->state = COORD_REQ_PREFILL;
  coord_request_t *other = make(&head, 1, 10, 2); /* another replica */
  decoding(other, 0);

  assert_int_equal(coord_sched_ready(head, 0), 2 + 1 + 1);
  assert_int_equal(coord_sched_ready(head, 1), 2);
  coord_plan_limits_t l = limits(0, 8, 64, 16);
  assert_int_equal(coord_sched_plan(head, &l, &g_plan), 3);
  assert_int_equal(g_plan.replica, 0);
  /* decode entries first, chain 1 skipped, position = prompt - 1 + tokens */
  assert_int_equal(g_plan.e[0].kind, COORD_STEP_DECODE);
  assert_ptr_equal(g_plan.e[0].req, d);
  assert_int_equal(g_plan.e[0].chain, 0);
  assert_int_equal(g_plan.e[0].position, 10 - 1 + 5);
  assert_int_equal(g_plan.e[0].tokens[0], 7);
  assert_int_equal(g_plan.e[1].chain, 2);
  assert_int_equal(g_plan.e[1].tokens[0], 9);
  /* then one prefill chunk, of the oldest request, from where it stopped */
  assert_int_equal(g_plan.e[2].kind, COORD_STEP_PREFILL);
  assert_ptr_equal(g_plan.e[2].req, p1);
  assert_int_equal(g_plan.e[2].position, 16);
  assert_int_equal(g_plan.e[2].n_tokens, 16);
  assert_int_equal(g_plan.e[2].tokens[0], 1016);
  assert_true(g_plan.has_prefill);
  assert_int_equal(g_plan.total_tokens, 1 + 1 + 16);
  drop(head);
}

static void test_limits(void **state) {
  (void)state;
  coord_request_t *head = NULL;
  coord_request_t *d = make(&head, 0, 10, 6);
  decoding(d, 0);
  coord_request_t *p = make(&head, 0, 100, 1);
  p->state = COORD_REQ_PREFILL;
  /* max_seqs caps the decode entries; no room left for the prefill */
  coord_plan_limits_t l = limits(0, 4, 1000, 64);
  assert_int_equal(coord_sched_plan(head, &l, &g_plan), 4);
  assert_false(g_plan.has_prefill);
  /* the token budget cuts the prefill chunk: 6 decode + 10 prompt tokens */
  l = limits(0, 64, 16, 64);
  assert_int_equal(coord_sched_plan(head, &l, &g_plan), 7);
  assert_int_equal(g_plan.e[6].n_tokens, 10);
  assert_int_equal(g_plan.total_tokens, 16);
  /* prefill stops one token short of the prompt (the last is decoded) */
  p->prefilled = 95;
  l = limits(0, 64, 1000, 64);
  coord_sched_plan(head, &l, &g_plan);
  assert_int_equal(g_plan.e[6].n_tokens, 100 - 1 - 95);
  /* a prefill in flight is not planned again */
  p->prefill_inflight = true;
  assert_int_equal(coord_sched_plan(head, &l, &g_plan), 6);
  assert_int_equal(coord_sched_ready(head, 0), 6);
  drop(head);
}

static void test_audio_rows(void **state) {
  (void)state;
  coord_request_t *head = NULL;
  coord_request_t *r = make(&head, 0, 60, 1);
  r->state = COORD_REQ_PREFILL;
  /* two audio chunks: rows 0-9 at 5..14, rows 10-14 at 17..21 */
  r->n_audio_rows = 15;
  r->audio_pos = malloc(sizeof(int32_t) * 15);
  for (int k = 0; k < 10; k++)
    r->audio_pos[k] = 5 + k;
  for (int k = 10; k < 15; k++)
    r->audio_pos[k] = 17 + (k - 10);
  coord_plan_limits_t l = limits(0, 8, 1000, 8);
  coord_sched_plan(head, &l, &g_plan); /* tokens 0..7: rows 0-2 */
  assert_int_equal(g_plan.e[0].emb_first, 0);
  assert_int_equal(g_plan.e[0].emb_n, 3);
  r->prefilled = 8; /* tokens 8..15: rows 3-9 */
  coord_sched_plan(head, &l, &g_plan);
  assert_int_equal(g_plan.e[0].emb_first, 3);
  assert_int_equal(g_plan.e[0].emb_n, 7);
  r->prefilled = 12; /* tokens 12..19: rows 7-9 and 10-12, two runs */
  coord_sched_plan(head, &l, &g_plan);
  assert_int_equal(g_plan.e[0].emb_first, 7);
  assert_int_equal(g_plan.e[0].emb_n, 6);
  r->prefilled = 30; /* no audio */
  coord_sched_plan(head, &l, &g_plan);
  assert_int_equal(g_plan.e[0].emb_n, 0);
  drop(head);
}

static void test_replay(void **state) {
  (void)state;
  coord_request_t *head = NULL;
  coord_request_t *r = make(&head, 2, 6, 3);
  r->state = COORD_REQ_REPLAY;
  int32_t toks[2][4] = {{50, 51, 52, 53}, {60, 61, 62, 63}};
  r->chains[0].state = COORD_CHAIN_DONE; /* finished before the failover */
  for (int c = 1; c < 3; c++) {
    r->chains[c].state = COORD_CHAIN_WAIT;
    r->chains[c].n_tokens = 4;
    r->chains[c].tokens = malloc(sizeof toks[0]);
    memcpy(r->chains[c].tokens, toks[c - 1], sizeof toks[0]);
  }
  /* replay stream of a chain: prompt (6) + tokens but the last (3) = 9 */
  assert_int_equal(coord_sched_replay_len(r, &r->chains[1]), 9);
  assert_int_equal(coord_sched_ready(head, 2), 2);
  coord_plan_limits_t l = limits(2, 8, 1000, 4);
  assert_int_equal(coord_sched_plan(head, &l, &g_plan), 1); /* one replay chunk a batch */
  assert_int_equal(g_plan.e[0].kind, COORD_STEP_REPLAY);
  assert_int_equal(g_plan.e[0].chain, 1);
  assert_int_equal(g_plan.e[0].position, 0);
  assert_int_equal(g_plan.e[0].n_tokens, 4);
  r->chains[1].replayed = 4; /* the next chunk crosses into the tokens */
  coord_sched_plan(head, &l, &g_plan);
  int32_t want[4] = {1004, 1005, 50, 51};
  assert_memory_equal(g_plan.e[0].tokens, want, sizeof want);
  r->chains[1].replayed = 8;
  coord_sched_plan(head, &l, &g_plan);
  assert_int_equal(g_plan.e[0].n_tokens, 1);
  assert_int_equal(g_plan.e[0].tokens[0], 52);
  r->chains[1].replayed = 9; /* chain 1 done: chain 2's turn */
  coord_sched_plan(head, &l, &g_plan);
  assert_int_equal(g_plan.e[0].chain, 2);
  assert_int_equal(g_plan.e[0].tokens[0], 1000);
  /* a prefill chunk of another request takes the batch's audio frame first */
  coord_request_t *p = make(&head, 2, 20, 1);
  p->state = COORD_REQ_PREFILL;
  assert_int_equal(coord_sched_plan(head, &l, &g_plan), 1);
  assert_int_equal(g_plan.e[0].kind, COORD_STEP_PREFILL);
  drop(head);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty),
      cmocka_unit_test(test_decode_first_then_one_prefill),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_audio_rows),
      cmocka_unit_test(test_replay),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
