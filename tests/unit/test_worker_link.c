/* sa-worker's NCCL link protocol where no GPU can join one (a real process on
 * loopback, driven with the blocking RPC call; the tiny model):
 *  - Stage/Link from a would-be sender is refused with a reason (this stage
 *    runs on the CPU), and a malformed offer is INVALID_ARGUMENT;
 *  - a StepBatch that says its rows come over NCCL while no link exists gets
 *    UNAVAILABLE (never a step on rows that did not arrive), one at hop 0 is
 *    INVALID_ARGUMENT;
 *  - after each of those the stage still serves an ordinary step whose rows
 *    travel as a tensor frame. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>

#include "config.h"
#include "encoder_test_util.h"
#include "log.h"
#include "rpc.h"
#include "sa.pb-c.h"
#include "sa_nccl.h"

#define SA_WORKER SA_BINARY_DIR "/bin/sa-worker"
#define CALL_MS 60000

static char g_model[256];
static etu_server_t g_w;
static int g_hidden;

static sa_rpc_reply_t *call(const char *method, const ProtobufCMessage *m, const void *raw,
                            size_t raw_len, const sa_rpc_frame_t *fr, int nfr) {
  size_t len = m ? protobuf_c_message_get_packed_size(m) : raw_len;
  uint8_t *buf = malloc(len + 1);
  assert_non_null(buf);
  if (m)
    protobuf_c_message_pack(m, buf);
  else
    memcpy(buf, raw, len);
  sa_rpc_reply_t *r = NULL;
  assert_int_equal(sa_rpc_call_sync(g_w.endpoint, NULL, method, buf, len, fr, nfr, CALL_MS, &r), 0);
  assert_non_null(r);
  free(buf);
  return r;
}

/* One sequence of 3 rows at position pos; via_nccl: no frame. */
static sa_rpc_reply_t *step(uint64_t seq, int pos, bool via_nccl, int hop) {
  Sa__SeqStep s = SA__SEQ_STEP__INIT;
  s.seq_id = seq;
  s.request_id = seq;
  s.position = pos;
  s.n_tokens = 3;
  int32_t ids[3] = {5, 6, 7};
  s.token_ids = ids;
  s.n_token_ids = 3;
  s.want_sample = true;
  Sa__SeqStep *sp = &s;
  Sa__StepBatch b = SA__STEP_BATCH__INIT;
  b.batch_id = 7;
  b.seqs = &sp;
  b.n_seqs = 1;
  b.total_tokens = 3;
  b.hop = hop;
  b.n_stages = 2;
  char *route[2] = {"tcp://127.0.0.1:9", g_w.endpoint};
  b.route = route;
  b.n_route = 2;
  b.act_via_nccl = via_nccl;
  float *rows = malloc(sizeof(float) * 3 * (size_t)g_hidden);
  assert_non_null(rows);
  for (int i = 0; i < 3 * g_hidden; i++)
    rows[i] = (float)((i * 37) % 19) * 0.05f - 0.45f;
  sa_rpc_frame_t fr = {0};
  fr.desc.dtype = SA_DTYPE_F32;
  fr.desc.ndim = 2;
  fr.desc.shape[0] = 3;
  fr.desc.shape[1] = g_hidden;
  fr.data = rows;
  fr.nbytes = sizeof(float) * 3 * (size_t)g_hidden;
  sa_rpc_reply_t *r = call("Stage/Step", &b.base, NULL, 0, via_nccl ? NULL : &fr, via_nccl ? 0 : 1);
  free(rows);
  return r;
}

/* An ordinary step is served: one sampled token in the vocabulary. */
static void expect_serves(uint64_t seq) {
  sa_rpc_reply_t *r = step(seq, 0, false, 1);
  assert_int_equal(r->status, SA_STATUS_OK);
  Sa__StepResult *res = sa__step_result__unpack(NULL, r->body_len, r->body);
  assert_non_null(res);
  assert_int_equal(res->n_results, 1);
  assert_true(res->results[0]->token >= 0);
  sa__step_result__free_unpacked(res, NULL);
  sa_rpc_reply_free(&r);
}

static void test_link_refused_on_cpu(void **state) {
  (void)state;
  uint8_t id[SA_NCCL_ID_BYTES] = {1, 2, 3};
  Sa__LinkRequest rq = SA__LINK_REQUEST__INIT;
  rq.nccl_id.data = id;
  rq.nccl_id.len = sizeof id;
  rq.from_address = "tcp://127.0.0.1:9";
  rq.host = "localhost";
  rq.hidden_size = g_hidden;
  rq.max_tokens = 16;
  sa_rpc_reply_t *r = call("Stage/Link", &rq.base, NULL, 0, NULL, 0);
  assert_int_equal(r->status, SA_STATUS_OK);
  Sa__LinkResponse *lr = sa__link_response__unpack(NULL, r->body_len, r->body);
  assert_non_null(lr);
  assert_false(lr->accepted);
  assert_non_null(strstr(lr->reason, "CUDA"));
  sa__link_response__free_unpacked(lr, NULL);
  sa_rpc_reply_free(&r);
  /* an offer with a short id: malformed before anything else */
  rq.nccl_id.len = 5;
  r = call("Stage/Link", &rq.base, NULL, 0, NULL, 0);
  assert_int_equal(r->status, SA_STATUS_OK);
  lr = sa__link_response__unpack(NULL, r->body_len, r->body);
  assert_non_null(lr);
  assert_false(lr->accepted);
  assert_non_null(strstr(lr->reason, "malformed"));
  sa__link_response__free_unpacked(lr, NULL);
  sa_rpc_reply_free(&r);
  /* bytes that are no LinkRequest at all */
  static const uint8_t junk[] = {0xff, 0xff, 0xff, 0x0f, 0x12};
  r = call("Stage/Link", NULL, junk, sizeof junk, NULL, 0);
  assert_int_equal(r->status, SA_STATUS_INVALID_ARGUMENT);
  sa_rpc_reply_free(&r);
  expect_serves(1);
}

static void test_step_via_nccl_without_link(void **state) {
  (void)state;
  sa_rpc_reply_t *r = step(2, 0, true, 1);
  assert_int_equal(r->status, SA_STATUS_UNAVAILABLE);
  assert_non_null(r->status_msg);
  assert_non_null(strstr(r->status_msg, "no NCCL link"));
  sa_rpc_reply_free(&r);
  r = step(3, 0, true, 0); /* no previous hop to receive from */
  assert_int_equal(r->status, SA_STATUS_INVALID_ARGUMENT);
  sa_rpc_reply_free(&r);
  expect_serves(4);
  /* the refused steps left no sequence behind: 2 and 3 start afresh */
  expect_serves(2);
  expect_serves(3);
}

/* A step whose token ids are missing is refused (the last stage keeps them
 * for the repetition penalty; it used to crash on that), then the stage
 * serves. */
static void test_step_without_token_ids(void **state) {
  (void)state;
  Sa__SeqStep s = SA__SEQ_STEP__INIT;
  s.seq_id = 9;
  s.n_tokens = 3;
  s.want_sample = true;
  Sa__SeqStep *sp = &s;
  Sa__StepBatch b = SA__STEP_BATCH__INIT;
  b.seqs = &sp;
  b.n_seqs = 1;
  b.total_tokens = 3;
  b.hop = 1;
  char *route[2] = {"tcp://127.0.0.1:9", g_w.endpoint};
  b.route = route;
  b.n_route = 2;
  float rows[3 * 64] = {0};
  assert_true(g_hidden <= 64);
  sa_rpc_frame_t fr = {0};
  fr.desc.dtype = SA_DTYPE_F32;
  fr.desc.ndim = 2;
  fr.desc.shape[0] = 3;
  fr.desc.shape[1] = g_hidden;
  fr.data = rows;
  fr.nbytes = sizeof(float) * 3 * (size_t)g_hidden;
  sa_rpc_reply_t *r = call("Stage/Step", &b.base, NULL, 0, &fr, 1);
  assert_int_equal(r->status, SA_STATUS_INVALID_ARGUMENT);
  assert_non_null(strstr(r->status_msg, "token_ids"));
  sa_rpc_reply_free(&r);
  expect_serves(9);
}

static int setup(void **state) {
  (void)state;
  if (etu_make_tiny(g_model, sizeof g_model))
    return -1;
  sa_model_config_t cfg;
  char err[256];
  if (sa_config_load(g_model, &cfg, err, sizeof err))
    return -1;
  g_hidden = cfg.hidden_size;
  char layers[16];
  snprintf(layers, sizeof layers, "%d:", cfg.num_hidden_layers - 1);
  char *argv[] = {SA_WORKER, "--insecure", "--model", g_model, "--layers", layers, "--threads", "1",
                  "--kv-mem", "16MiB", NULL};
  return etu_spawn_listening(&g_w, argv);
}

static int teardown(void **state) {
  (void)state;
  int rc = etu_server_stop(&g_w);
  etu_rm_tree(g_model);
  return rc == 0 ? 0 : -1;
}

int main(void) {
  sa_log_init("test_worker_link");
  if (access(SA_WORKER, X_OK) != 0) {
    printf("SKIPPED: %s not built\n", SA_WORKER);
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_link_refused_on_cpu),
      cmocka_unit_test(test_step_via_nccl_without_link),
      cmocka_unit_test(test_step_without_token_ids),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
