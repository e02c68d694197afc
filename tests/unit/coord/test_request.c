/*
 * test_request — the request lifecycle of coordinator/request.c without
 * sockets: a registry with no loop, a pipeline of this test's own behind
 * coord_pipeline_ops_t that records every call, and events fed back
 * through the same callback tables sa-coordinator wires. Each test asserts
 * the calls made, the plans sent, the events that went up (counted, in
 * order) and the state left. The last test runs the pass from a uv_prepare
 * on a real loop, as main.c does, with replies coming from timers, and ends
 * with a clean uv_loop_close.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "request.h"
#include "sa_time.h"
#include "tokenizer_synth.h"

/* ------------------------------------------------------- the fake pipeline */

#define MAX_OUT 64

typedef struct {
  coord_plan_t plan;       /* as sent (entries' pointers stay valid) */
  int epochs[COORD_MAX_SEQS_PER_BATCH];
  uint64_t seqs[COORD_MAX_SEQS_PER_BATCH];
  int32_t tokens[COORD_MAX_SEQS_PER_BATCH][8]; /* first tokens of each entry */
  bool open;
} sent_step_t;

static struct {
  char calls[2048]; /* S<replica> step, K fork, F<replica> free, E<worker> encode */
  size_t n_calls;
  sent_step_t steps[MAX_OUT];
  int n_steps;
  int inflight[COORD_MAX_REPLICAS];
  int step_rc; /* what the next step returns */
  coord_request_t *free_owner[256];
  int n_frees, frees_open;
  coord_request_t *fork_owner;
  coord_request_t *encode_owner;
  int encode_worker;
} fp;

static void call_log(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fp.n_calls += (size_t)vsnprintf(fp.calls + fp.n_calls, sizeof fp.calls - fp.n_calls, fmt, ap);
  va_end(ap);
}

static int fake_step(void *pl, const coord_plan_t *plan) {
  (void)pl;
  if (fp.step_rc)
    return fp.step_rc;
  assert_true(fp.n_steps < MAX_OUT);
  sent_step_t *s = &fp.steps[fp.n_steps++];
  s->plan = *plan;
  for (int i = 0; i < plan->n; i++) {
    const coord_plan_entry_t *e = &plan->e[i];
    s->epochs[i] = e->req->epoch;
    s->seqs[i] = e->req->chains[e->chain].seq_id;
    for (int k = 0; k < e->n_tokens && k < 8; k++)
      s->tokens[i][k] = e->tokens[k];
  }
  s->open = true;
  fp.inflight[plan->replica]++;
  call_log("S%d ", plan->replica);
  return 0;
}

static int fake_fork(void *pl, coord_request_t *r) {
  (void)pl;
  fp.fork_owner = r;
  call_log("K ");
  return 0;
}

static int fake_free(void *pl, int ri, uint64_t seq, coord_request_t *owner) {
  (void)pl;
  (void)seq;
  fp.free_owner[fp.n_frees++] = owner;
  fp.frees_open++;
  call_log("F%d ", ri);
  return 0;
}

static int fake_encode(void *pl, int wi, coord_request_t *r) {
  (void)pl;
  fp.encode_owner = r;
  fp.encode_worker = wi;
  call_log("E%d ", wi);
  return 0;
}

static int fake_inflight(void *pl, int ri) {
  (void)pl;
  return fp.inflight[ri];
}

static const coord_pipeline_ops_t k_fake_ops = {
    .step = fake_step,
    .fork = fake_fork,
    .free_seq = fake_free,
    .encode = fake_encode,
    .inflight = fake_inflight,
};

/* ------------------------------------------------------ the events up */

static struct {
  char log[4096]; /* D<chain>[a] delta, X<chain> chain done, P encoded, R final, .<status> end */
  size_t n;
  char text[COORD_MAX_CHAINS][512];
  int ends;
  sa_status_t end_status;
} up;

static void up_log(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  up.n += (size_t)vsnprintf(up.log + up.n, sizeof up.log - up.n, fmt, ap);
  va_end(ap);
}

static void on_event(coord_request_t *r, const coord_event_t *ev) {
  assert_false(r->ended);
  switch (ev->kind) {
  case COORD_EV_ENCODED: up_log("P "); break;
  case COORD_EV_DELTA:
    up_log("D%d%s ", ev->chain, ev->answer ? "a" : "");
    strncat(up.text[ev->chain], ev->text, ev->len);
    break;
  case COORD_EV_CHAIN_DONE: up_log("X%d ", ev->chain); break;
  case COORD_EV_FINAL: up_log("R "); break;
  }
}

static void on_end(coord_request_t *r, sa_status_t st, const char *msg) {
  (void)msg;
  assert_true(r->ended);
  up.ends++;
  up.end_status = st;
  up_log(".%d ", (int)st);
}

static const coord_request_cbs_t k_up = {.event = on_event, .end = on_end};

/* --------------------------------------------------------------- fixture */

static char g_dir[64];
static sa_tokenizer_t *g_tok;
static coord_opts_t g_opts;
static coord_model_t g_model;
static coord_registry_t g_reg;
static coord_requests_t g_set;
static int32_t T_A, T_B, T_END, T_EOT; /* two text tokens, </think>, <|EOT|> */

static int setup_all(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "/tmp/sa-test-request.XXXXXX");
  if (!mkdtemp(g_dir))
    return -1;
  char err[256];
  if (sa_tokenizer_write_synthetic(g_dir, 200, err, sizeof err))
    return -1;
  g_tok = sa_tokenizer_load(g_dir, err, sizeof err);
  if (!g_tok)
    return -1;
  int32_t *ids;
  size_t n;
  if (sa_tokenizer_encode(g_tok, "a", 1, 0, &ids, &n, err, sizeof err) || n != 1)
    return -1;
  T_A = ids[0];
  free(ids);
  if (sa_tokenizer_encode(g_tok, "b", 1, 0, &ids, &n, err, sizeof err) || n != 1)
    return -1;
  T_B = ids[0];
  free(ids);
  T_END = sa_tokenizer_token_id(g_tok, "</think>");
  T_EOT = sa_tokenizer_token_id(g_tok, "<|EOT|>");
  return T_END < 0 || T_EOT < 0;
}

static int teardown_all(void **state) {
  (void)state;
  sa_tokenizer_destroy(&g_tok);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void add_stage(const char *id, const char *replica, int kv) {
  Sa__RegisterRequest rq = SA__REGISTER_REQUEST__INIT;
  rq.node_id = (char *)id;
  rq.address = "tcp://127.0.0.1:1";
  rq.role = SA__ROLE__ROLE_STAGE;
  rq.first_layer = 0;
  rq.last_layer = 2;
  rq.num_layers = 2;
  rq.kv_blocks_total = kv;
  rq.kv_block_tokens = 16;
  rq.max_batch = 32;
  rq.max_tokens_per_step = 512;
  rq.replica_name = (char *)replica;
  char err[256];
  assert_true(coord_registry_register(&g_reg, &rq, "", sa_now_ms(), err, sizeof err) >= 0);
}

static int add_encoder(const char *id) {
  Sa__RegisterRequest rq = SA__REGISTER_REQUEST__INIT;
  rq.node_id = (char *)id;
  rq.address = "tcp://127.0.0.1:2";
  rq.role = SA__ROLE__ROLE_ENCODER;
  char err[256];
  int wi = coord_registry_register(&g_reg, &rq, "", sa_now_ms(), err, sizeof err);
  assert_true(wi >= 0);
  return wi;
}

static int setup(void **state) {
  (void)state;
  memset(&fp, 0, sizeof fp);
  memset(&up, 0, sizeof up);
  memset(&g_opts, 0, sizeof g_opts);
  g_opts.max_tokens_limit = 1000;
  g_opts.max_chains = 16;
  g_opts.prefill_chunk = 256;
  g_opts.heartbeat_timeout_ms = 1000;
  g_model.hidden_size = 4;
  g_model.num_layers = 2;
  g_model.max_position_embeddings = 4096;
  g_model.tok_eot = T_EOT;
  g_model.tok_think_end = T_END;
  g_model.tok_audio_patch = sa_tokenizer_token_id(g_tok, "<audio_patch>");
  coord_registry_init(&g_reg, NULL, 2, 4, 1000, &coord_requests_registry_cbs, &g_set);
  coord_requests_init(&g_set, &g_opts, &g_model, g_tok, &g_reg, &k_fake_ops, NULL);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  coord_requests_close(&g_set);
  return 0;
}

static coord_request_t *submit(const char *prompt, int n, int max_tokens, Sa__VoteRule rule) {
  coord_request_params_t p = {.n_chains = n, .max_tokens = max_tokens, .vote_rule = rule};
  p.parts[p.n_parts++] = (coord_part_t){.text = prompt};
  sa__sampling_params__init(&p.sampling);
  char err[128];
  coord_request_t *r = coord_request_new(&g_set, &p, &k_up, NULL, err, sizeof err);
  assert_non_null(r);
  return r;
}

/* Answers sent step i: OK with tokens[k] for its k-th entry (decode), or
 * the whole step failed with st. */
static void reply(int i, sa_status_t st, const int32_t *tokens) {
  sent_step_t *s = &fp.steps[i];
  assert_true(s->open);
  s->open = false;
  fp.inflight[s->plan.replica]--;
  coord_step_t *out = calloc(1, sizeof *out);
  out->replica = s->plan.replica;
  out->batch_id = (uint64_t)i;
  out->status = st;
  snprintf(out->msg, sizeof out->msg, "test: %s", sa_status_name(st));
  out->n = s->plan.n;
  for (int k = 0; k < s->plan.n; k++) {
    const coord_plan_entry_t *e = &s->plan.e[k];
    out->e[k] = (coord_step_entry_t){.req = e->req,
                                     .chain = e->chain,
                                     .seq_id = s->seqs[k],
                                     .epoch = s->epochs[k],
                                     .kind = e->kind,
                                     .n_tokens = e->n_tokens,
                                     .token = tokens ? tokens[k] : -1};
  }
  coord_requests_pipeline_cbs.step_done(&g_set, out);
}

static void frees_done(void) {
  for (int i = fp.n_frees - fp.frees_open; i < fp.n_frees; i++)
    if (fp.free_owner[i])
      coord_requests_pipeline_cbs.free_done(&g_set, fp.free_owner[i]);
  fp.frees_open = 0;
}

static void process(void) { coord_requests_process(&g_set); }

/* ----------------------------------------------------------------- tests */

static void test_one_chain_to_the_end(void **state) {
  (void)state;
  add_stage("s0", "r0", 1000);
  coord_request_t *r = submit("a b a", 1, 10, SA__VOTE_RULE__VOTE_NONE);
  assert_int_equal(r->state, COORD_REQ_NEW);
  assert_string_equal(fp.calls, ""); /* nothing happens before the pass */
  process();
  assert_int_equal(r->state, COORD_REQ_PREFILL);
  assert_int_equal(r->replica, 0);
  assert_true(g_reg.replicas[0].kv_reserved > 0);
  assert_string_equal(fp.calls, "S0 ");
  const coord_plan_t *p = &fp.steps[0].plan;
  assert_int_equal(p->n, 1);
  assert_int_equal(p->e[0].kind, COORD_STEP_PREFILL);
  assert_int_equal(p->e[0].n_tokens, r->prompt_len - 1);
  process(); /* nothing recorded: no new call */
  assert_string_equal(fp.calls, "S0 ");

  reply(0, SA_STATUS_OK, NULL);
  assert_string_equal(fp.calls, "S0 "); /* recorded only */
  process();
  assert_int_equal(r->state, COORD_REQ_DECODING);
  assert_string_equal(fp.calls, "S0 S0 ");
  assert_int_equal(fp.steps[1].plan.e[0].kind, COORD_STEP_DECODE);
  assert_int_equal(fp.steps[1].plan.e[0].position, r->prompt_len - 1);
  assert_int_equal(fp.steps[1].tokens[0][0], r->prompt[r->prompt_len - 1]);

  int32_t script[] = {T_A, T_B, T_END, T_A, T_EOT};
  for (int i = 0; i < 5; i++) {
    reply(1 + i, SA_STATUS_OK, &script[i]);
    process();
    if (i < 4) /* the token just sampled is the next step's input */
      assert_int_equal(fp.steps[2 + i].tokens[0][0], script[i]);
  }
  assert_string_equal(up.log, "D0 D0 D0a X0 R .0 ");
  assert_string_equal(up.text[0], "aba");
  assert_string_equal(r->chains[0].reasoning, "ab");
  assert_string_equal(r->chains[0].answer, "a");
  assert_int_equal(r->chains[0].finish, SA__FINISH_REASON__FINISH_EOT);
  assert_string_equal(r->chains[0].normalized, "a");
  assert_int_equal(r->chains[0].reasoning_tokens, 2);
  assert_int_equal(r->chains[0].answer_tokens, 1);
  assert_string_equal(fp.calls, "S0 S0 S0 S0 S0 S0 F0 ");
  /* still there until the stages answered the Free */
  assert_int_equal(g_set.n, 1);
  frees_done();
  process();
  assert_int_equal(g_set.n, 0);
  assert_int_equal(g_reg.replicas[0].kv_reserved, 0);
  assert_int_equal(up.ends, 1);
}

static void test_fork_and_vote(void **state) {
  (void)state;
  add_stage("s0", "r0", 1000);
  coord_request_t *r = submit("b", 4, 50, SA__VOTE_RULE__VOTE_MAJORITY);
  process();
  reply(0, SA_STATUS_OK, NULL); /* prefill */
  process();
  assert_int_equal(r->state, COORD_REQ_FORKING);
  assert_string_equal(fp.calls, "S0 K ");
  assert_ptr_equal(fp.fork_owner, r);
  coord_requests_pipeline_cbs.fork_done(&g_set, r, SA_STATUS_OK, "");
  process();
  assert_int_equal(r->state, COORD_REQ_DECODING);
  assert_int_equal(fp.steps[1].plan.n, 4); /* the four chains in one batch */
  int32_t s1[] = {T_END, T_END, T_END, T_END};
  reply(1, SA_STATUS_OK, s1);
  process();
  int32_t s2[] = {T_A, T_A, T_A, T_A};
  reply(2, SA_STATUS_OK, s2);
  process();
  /* chains 2 and 0 end with "a": two votes, two running, and no other
   * answer can overtake: decided, 1 and 3 are cancelled */
  int32_t s3[] = {T_EOT, T_B, T_EOT, T_B};
  reply(3, SA_STATUS_OK, s3);
  process();
  assert_int_equal(r->chains[0].finish, SA__FINISH_REASON__FINISH_EOT);
  assert_int_equal(r->chains[2].finish, SA__FINISH_REASON__FINISH_EOT);
  assert_int_equal(r->chains[1].finish, SA__FINISH_REASON__FINISH_CANCELLED);
  assert_int_equal(r->chains[3].finish, SA__FINISH_REASON__FINISH_CANCELLED);
  assert_int_equal(r->tokens_saved, (50 - 3) + (50 - 2)); /* 3 had not got its b yet */
  int votes;
  const char *leader;
  const coord_chain_t *win = coord_request_vote(r, &votes, &leader);
  assert_ptr_equal(win, &r->chains[0]);
  assert_int_equal(votes, 2);
  assert_string_equal(leader, "a");
  /* the vote's chain-done events and the final came up in order */
  assert_string_equal(strstr(up.log, "X0"), "X0 D1a X2 R .0 ");
  assert_string_equal(fp.calls, "S0 K S0 S0 S0 F0 F0 F0 F0 ");
  assert_int_equal(fp.n_steps, 4); /* nothing more was sent */
  frees_done();
  process();
  assert_int_equal(g_set.n, 0);
}

static void test_failover_replays(void **state) {
  (void)state;
  g_opts.extra_microbatches = 1; /* two micro-batches in flight */
  add_stage("s0", "r0", 1000);
  add_stage("s1", "r1", 1000);
  coord_request_t *r = submit("a", 2, 50, SA__VOTE_RULE__VOTE_NONE);
  process();
  assert_int_equal(r->replica, 0);
  reply(0, SA_STATUS_OK, NULL);
  process();
  coord_requests_pipeline_cbs.fork_done(&g_set, r, SA_STATUS_OK, "");
  process();
  assert_int_equal(fp.n_steps, 3); /* one chain in each micro-batch */
  assert_int_equal(fp.steps[1].plan.n, 1);
  assert_int_equal(fp.steps[2].plan.n, 1);
  int32_t a = T_A, b = T_B;
  reply(1, SA_STATUS_OK, &a); /* chain 0: "a" */
  reply(2, SA_STATUS_OK, &b); /* chain 1: "b" */
  process();
  uint64_t old0 = r->chains[0].seq_id;
  /* chain 0's next step fails: the request moves to r1 */
  reply(3, SA_STATUS_UNAVAILABLE, NULL);
  process();
  assert_int_equal(r->replays, 1);
  assert_int_equal(r->epoch, 1);
  assert_int_equal(r->replica, 1);
  assert_int_equal(r->state, COORD_REQ_REPLAY);
  assert_true(r->chains[0].seq_id != old0);
  assert_true(g_reg.replicas[0].suspect_until_ms > 0);
  assert_int_equal(g_reg.replicas[0].kv_reserved, 0);
  /* chain 1's step was out on r0: its late answer is stale, dropped, freed */
  reply(4, SA_STATUS_OK, &a);
  process();
  assert_int_equal(r->chains[1].n_tokens, 1); /* not 2 */
  /* replay chunks on r1: prompt + the chain's tokens but the last */
  int replayed[2] = {0, 0};
  for (int i = 5; i < fp.n_steps; i++) {
    const coord_plan_entry_t *e = &fp.steps[i].plan.e[0];
    if (fp.steps[i].plan.replica != 1 || e->kind != COORD_STEP_REPLAY)
      continue;
    replayed[e->chain] += e->n_tokens;
    reply(i, SA_STATUS_OK, NULL);
    process();
  }
  assert_int_equal(replayed[0], r->prompt_len); /* prompt_len - 1 + 1 token */
  assert_int_equal(replayed[1], r->prompt_len);
  assert_int_equal(r->state, COORD_REQ_DECODING);
  /* decoding resumes where it stopped: each chain feeds its last token */
  int resumed = 0;
  for (int i = 5; i < fp.n_steps; i++)
    if (fp.steps[i].open && fp.steps[i].plan.e[0].kind == COORD_STEP_DECODE) {
      const coord_plan_entry_t *e = &fp.steps[i].plan.e[0];
      assert_int_equal(fp.steps[i].plan.replica, 1);
      assert_int_equal(e->position, r->prompt_len - 1 + 1);
      assert_int_equal(fp.steps[i].tokens[0][0], e->chain == 0 ? T_A : T_B);
      resumed++;
    }
  assert_int_equal(resumed, 2);
  /* the old sequences were freed on r0 (chain 0 at the failover, chain 1
   * when its stale step came back) */
  assert_non_null(strstr(fp.calls, "F0 "));
  assert_string_equal(up.log, "D0 D1 "); /* no gap, no duplicate */
}

static void test_cancel_waits_for_inflight(void **state) {
  (void)state;
  add_stage("s0", "r0", 1000);
  coord_request_t *r = submit("a", 1, 50, SA__VOTE_RULE__VOTE_NONE);
  process();
  /* cancelled while its prefill chunk is out: ends at once, but its
   * sequence is freed only after the chunk came back */
  coord_request_cancel(&g_set, r);
  process();
  assert_int_equal(up.ends, 1);
  assert_int_equal(up.end_status, SA_STATUS_CANCELLED);
  assert_string_equal(fp.calls, "S0 ");
  assert_int_equal(g_set.n, 1);
  coord_request_cancel(&g_set, r); /* again: nothing more */
  reply(0, SA_STATUS_OK, NULL);
  process();
  assert_string_equal(fp.calls, "S0 F0 ");
  assert_int_equal(r->chains[0].finish, SA__FINISH_REASON__FINISH_CLIENT_CANCELLED);
  frees_done();
  process();
  assert_int_equal(g_set.n, 0);
  assert_int_equal(up.ends, 1);
  assert_string_equal(up.log, ".1 ");
}

static void test_encode_retry_and_limits(void **state) {
  (void)state;
  add_stage("s0", "r0", 4); /* 4 blocks of 16 tokens */
  int e1 = add_encoder("e1"), e2 = add_encoder("e2");
  coord_request_params_t p = {.n_chains = 1, .max_tokens = 8};
  sa__sampling_params__init(&p.sampling);
  uint8_t audio[4] = {1, 2, 3, 4};
  p.parts[p.n_parts++] = (coord_part_t){.text = "a"};
  p.parts[p.n_parts++] = (coord_part_t){.audio = audio, .audio_len = sizeof audio};
  char err[128];
  coord_request_t *r = coord_request_new(&g_set, &p, &k_up, NULL, err, sizeof err);
  process();
  assert_int_equal(r->state, COORD_REQ_ENCODING);
  assert_int_equal(fp.encode_worker, e1);
  /* the first encoder is unavailable: another one is asked */
  coord_encoded_t *enc = calloc(1, sizeof *enc);
  enc->status = SA_STATUS_UNAVAILABLE;
  enc->encoder = e1;
  coord_requests_pipeline_cbs.encode_done(&g_set, r, enc);
  process();
  assert_int_equal(fp.encode_worker, e2);
  enc = calloc(1, sizeof *enc);
  enc->encoder = e2;
  enc->n_rows = 3;
  enc->rows = calloc(3 * 4, sizeof(float));
  enc->n_chunks = 1;
  enc->chunk_tokens = malloc(sizeof(int32_t));
  enc->chunk_tokens[0] = 3;
  coord_requests_pipeline_cbs.encode_done(&g_set, r, enc);
  process();
  assert_string_equal(up.log, "P ");
  assert_int_equal(r->n_audio_rows, 3);
  for (int k = 0; k < 3; k++)
    assert_int_equal(r->prompt[r->audio_pos[k]], g_model.tok_audio_patch);
  assert_int_equal(r->state, COORD_REQ_PREFILL);
  assert_int_equal(fp.steps[0].plan.e[0].emb_n, 3);

  /* a request that no replica could ever hold fails at once (and, with
   * nothing out, is freed in the same pass) */
  submit("a", 4, 200, SA__VOTE_RULE__VOTE_NONE);
  process();
  assert_int_equal(up.ends, 1);
  assert_int_equal(up.end_status, SA_STATUS_RESOURCE_EXHAUSTED);
  assert_int_equal(g_set.n, 1);
  /* one that fits later waits (FIFO) */
  coord_request_t *later = submit("b", 1, 8, SA__VOTE_RULE__VOTE_NONE);
  process();
  assert_int_equal(later->state, COORD_REQ_QUEUED);
  /* shutdown fails everything still running; the queued one is freed at
   * once, r once its prefill chunk is back */
  coord_requests_shutdown(&g_set);
  process();
  assert_int_equal(r->state, COORD_REQ_DONE);
  assert_int_equal(up.end_status, SA_STATUS_UNAVAILABLE);
  assert_int_equal(up.ends, 3);
  assert_int_equal(g_set.n, 1);
  reply(0, SA_STATUS_OK, NULL);
  process();
  frees_done();
  process();
  assert_int_equal(g_set.n, 0);
}

/* Request ids the coordinator makes are unguessable (Coordinator/Cancel
 * takes one): "req-" and 32 hex digits of randomness; a client's own id is
 * kept as given. */
static void test_request_ids(void **state) {
  (void)state;
  coord_request_t *a = submit("a", 1, 10, SA__VOTE_RULE__VOTE_NONE);
  coord_request_t *b = submit("b", 1, 10, SA__VOTE_RULE__VOTE_NONE);
  assert_int_equal(strlen(a->request_id), 4 + 32);
  assert_memory_equal(a->request_id, "req-", 4);
  for (int i = 4; i < 36; i++)
    assert_non_null(strchr("0123456789abcdef", a->request_id[i]));
  assert_string_not_equal(a->request_id, b->request_id);
  assert_ptr_equal(coord_requests_find(&g_set, b->request_id), b);
  coord_request_params_t p = {.request_id = "mine-1", .n_chains = 1, .max_tokens = 4};
  sa__sampling_params__init(&p.sampling);
  p.parts[p.n_parts++] = (coord_part_t){.text = "c"};
  char err[64];
  coord_request_t *c = coord_request_new(&g_set, &p, &k_up, NULL, err, sizeof err);
  assert_string_equal(c->request_id, "mine-1");
}

static void run_chain(coord_request_t *r, const int32_t *script, int n) {
  process();
  reply(fp.n_steps - 1, SA_STATUS_OK, NULL); /* prefill */
  process();
  for (int i = 0; i < n && r->chains[0].state != COORD_CHAIN_DONE; i++) {
    reply(fp.n_steps - 1, SA_STATUS_OK, &script[i]);
    process();
  }
}

static void test_stop_strings(void **state) {
  (void)state;
  add_stage("s0", "r0", 1000);
  coord_request_params_t p = {.n_chains = 1, .max_tokens = 20, .n_stop = 1, .stop = {"ba"}};
  sa__sampling_params__init(&p.sampling);
  p.parts[p.n_parts++] = (coord_part_t){.text = "x"};
  char err[128];
  coord_request_t *r = coord_request_new(&g_set, &p, &k_up, NULL, err, sizeof err);
  /* "a" goes out; "b" may begin "ba" and waits; "a" completes it: the
   * chain ends before the stop string, which is never streamed */
  int32_t script[] = {T_A, T_B, T_A, T_A, T_EOT};
  run_chain(r, script, 5);
  assert_int_equal(r->chains[0].finish, SA__FINISH_REASON__FINISH_STOP);
  assert_int_equal(r->chains[0].n_tokens, 3);
  assert_string_equal(r->chains[0].reasoning, "a");
  assert_string_equal(up.text[0], "a");
  assert_string_equal(up.log, "D0 X0 R .0 ");
  frees_done();
  process();

  /* held text is released when the chain ends otherwise */
  memset(&up, 0, sizeof up);
  p.stop[0] = "bz";
  r = coord_request_new(&g_set, &p, &k_up, NULL, err, sizeof err);
  int32_t script2[] = {T_A, T_B, T_EOT};
  run_chain(r, script2, 3);
  assert_int_equal(r->chains[0].finish, SA__FINISH_REASON__FINISH_EOT);
  assert_string_equal(up.text[0], "ab");
  assert_string_equal(r->chains[0].reasoning, "ab");
  assert_string_equal(up.log, "D0 D0 X0 R .0 ");
}

/* ------------------------------------------------ under a real loop */

static struct {
  uv_loop_t loop;
  uv_prepare_t pass;
  uv_timer_t answer;
  int passes, answers, script_at;
} lp;

static void on_pass(uv_prepare_t *h) {
  (void)h;
  lp.passes++;
  coord_requests_process(&g_set);
}

/* Answers every open step, one timer tick later, from a script. */
static void on_answer(uv_timer_t *t) {
  (void)t;
  const int32_t script[] = {T_A, T_END, T_B, T_EOT};
  for (int i = 0; i < fp.n_steps; i++) {
    if (!fp.steps[i].open)
      continue;
    lp.answers++;
    if (fp.steps[i].plan.e[0].kind == COORD_STEP_DECODE) {
      int32_t tok = script[lp.script_at++];
      reply(i, SA_STATUS_OK, &tok);
    } else {
      reply(i, SA_STATUS_OK, NULL);
    }
  }
  if (fp.frees_open)
    frees_done();
  if (g_set.n == 0) { /* reaped: done */
    uv_close((uv_handle_t *)&lp.pass, NULL);
    uv_close((uv_handle_t *)&lp.answer, NULL);
  }
}

static void test_under_a_loop(void **state) {
  (void)state;
  add_stage("s0", "r0", 1000);
  memset(&lp, 0, sizeof lp);
  assert_int_equal(uv_loop_init(&lp.loop), 0);
  uv_prepare_init(&lp.loop, &lp.pass);
  uv_prepare_start(&lp.pass, on_pass);
  uv_timer_init(&lp.loop, &lp.answer);
  uv_timer_start(&lp.answer, on_answer, 1, 1);
  submit("a", 1, 20, SA__VOTE_RULE__VOTE_NONE);
  assert_int_equal(uv_run(&lp.loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&lp.loop), 0); /* no handle left behind */
  /* prefill + 4 decode steps, every one answered once; more passes than
   * answers (each turn has one), the same events as without a loop */
  assert_int_equal(lp.answers, 5);
  assert_true(lp.passes >= lp.answers);
  assert_string_equal(up.log, "D0 D0a X0 R .0 ");
  assert_string_equal(fp.calls, "S0 S0 S0 S0 S0 F0 ");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_one_chain_to_the_end, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fork_and_vote, setup, teardown),
      cmocka_unit_test_setup_teardown(test_failover_replays, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_waits_for_inflight, setup, teardown),
      cmocka_unit_test_setup_teardown(test_encode_retry_and_limits, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stop_strings, setup, teardown),
      cmocka_unit_test_setup_teardown(test_request_ids, setup, teardown),
      cmocka_unit_test_setup_teardown(test_under_a_loop, setup, teardown),
  };
  return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
