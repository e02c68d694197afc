/* Service tests of sa-encoder: real processes on loopback (free ports chosen
 * by the server), driven with the blocking RPC call.
 *  - Encode round trip against the in-process result of the same pipeline
 *    (model/audio + model/audio_encoder), f32 and the default bf16;
 *  - every bad input answered INVALID_ARGUMENT with a reason, and the
 *    service still serves a good request afterwards;
 *  - a full queue answered RESOURCE_EXHAUSTED (deterministic: workers wait on
 *    a FIFO gate that the test opens only after the refusal arrived);
 *  - an unreachable coordinator does not stop the service;
 *  - clean exit on SIGTERM. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>

#include "audio.h"
#include "audio_encoder.h"
#include "config.h"
#include "encoder_test_util.h"
#include "kernels.h"
#include "log.h"
#include "rpc.h"
#include "sa.pb-c.h"
#include "safetensors.h"

/* the clip bundled with the repository (deploy/clips, from the fixtures) */
#define CLIP SA_SOURCE_DIR "/deploy/clips/mmau_test.wav"
#define CALL_TIMEOUT_MS 120000

static char g_model[256];

static uint8_t *pack_req(const void *audio, size_t len, int dtype, int max_s,
                         int max_tokens, size_t *out_len) {
  Sa__EncodeRequest rq = SA__ENCODE_REQUEST__INIT;
  rq.audio.data = (uint8_t *)audio;
  rq.audio.len = len;
  if (dtype >= 0) {
    rq.out_dtype = (Sa__DType)dtype;
    rq.out_dtype_set = 1;
  }
  rq.max_audio_s = max_s;
  rq.max_tokens = max_tokens;
  rq.request_id = "test";
  *out_len = sa__encode_request__get_packed_size(&rq);
  uint8_t *b = malloc(*out_len + 1);
  assert_non_null(b);
  sa__encode_request__pack(&rq, b);
  return b;
}

static sa_rpc_reply_t *call_raw(const char *ep, const void *body, size_t len,
                                const sa_rpc_frame_t *fr, int nfr) {
  sa_rpc_reply_t *r = NULL;
  assert_int_equal(sa_rpc_call_sync(ep, NULL, "Encoder/Encode", body, len, fr, nfr,
                                    CALL_TIMEOUT_MS, &r),
                   0);
  assert_non_null(r);
  return r;
}

static sa_rpc_reply_t *call_encode(const char *ep, const void *audio,
                                   size_t len, int dtype, int max_s,
                                   int max_tokens) {
  size_t bl;
  uint8_t *b = pack_req(audio, len, dtype, max_s, max_tokens, &bl);
  sa_rpc_reply_t *r = call_raw(ep, b, bl, NULL, 0);
  free(b);
  return r;
}

/* The in-process result: decode + encode with the same library code. */
static float *in_process(const void *bytes, size_t len, int64_t *rows,
                         int *hidden, int *chunk_tokens, int *n_chunks) {
  char err[256];
  sa_model_config_t cfg;
  assert_int_equal(sa_config_load(g_model, &cfg, err, sizeof err), 0);
  sa_st_t *st = NULL;
  assert_int_equal(sa_st_open(g_model, NULL, NULL, &st, err, sizeof err), 0);
  sa_backend_t *be = sa_backend_new("cpu", 1);
  assert_non_null(be);
  sa_audio_encoder_t *enc = NULL;
  assert_int_equal(sa_audio_encoder_new(be, &cfg, st, &enc, err, sizeof err),
                   0);
  sa_audio_encoder_ws_t *ws = NULL;
  assert_int_equal(sa_audio_encoder_ws_new(enc, &ws), 0);
  float *pcm = NULL;
  size_t n = 0;
  assert_int_equal(sa_audio_decode(bytes, len, NULL, &pcm, &n, err, sizeof err),
                   0);
  int64_t total = 0;
  sa_audio_count_tokens((int64_t)n, n_chunks, &total);
  *hidden = sa_audio_encoder_hidden(enc);
  float *out = malloc((size_t)(total ? total : 1) * *hidden * sizeof(float));
  assert_int_equal(sa_audio_encoder_encode_pcm(enc, ws, pcm, n, out, total,
                                               chunk_tokens, 8, rows, NULL),
                   0);
  free(pcm);
  sa_audio_encoder_ws_destroy(&ws);
  sa_audio_encoder_destroy(&enc);
  sa_backend_destroy(&be);
  sa_st_close(&st);
  return out;
}

static void test_round_trip(void **state) {
  (void)state;
  size_t len;
  void *wav = etu_read_file(CLIP, &len);
  assert_non_null(wav);
  int64_t rows;
  int H, ct[8], nc;
  float *ref = in_process(wav, len, &rows, &H, ct, &nc);
  assert_int_equal(nc, 1);
  assert_int_equal(ct[0], 125); /* 10 s: T 1002, enc_len 250 -> 125 */
  assert_int_equal(rows, 125);

  etu_server_t s;
  assert_int_equal(etu_server_start(&s, g_model, NULL), 0);
  sa_rpc_reply_t *r = call_encode(s.endpoint, wav, len, SA__DTYPE__DTYPE_F32,
                                  0, 0);
  assert_int_equal(r->status, SA_STATUS_OK);
  Sa__EncodeResponse *resp = sa__encode_response__unpack(
      NULL, r->body_len, (const uint8_t *)r->body);
  assert_non_null(resp);
  assert_int_equal(resp->n_chunk_tokens, 1);
  assert_int_equal(resp->chunk_tokens[0], 125);
  assert_int_equal(resp->total_tokens, 125);
  assert_int_equal(resp->hidden_size, H);
  assert_int_equal(resp->sample_rate, 16000);
  assert_true(fabs(resp->audio_seconds - 10.0) < 0.01);
  sa__encode_response__free_unpacked(resp, NULL);
  assert_int_equal(r->n_tensors, 1);
  assert_int_equal(r->tensors[0].desc.dtype, SA_DTYPE_F32);
  assert_int_equal(r->tensors[0].desc.ndim, 2);
  assert_int_equal(r->tensors[0].desc.shape[0], 125);
  assert_int_equal(r->tensors[0].desc.shape[1], H);
  assert_int_equal(r->tensors[0].nbytes, (size_t)125 * H * 4);
  const float *got = r->tensors[0].data;
  double mx = 0, md = 0;
  for (int64_t i = 0; i < rows * H; i++) {
    mx = fmax(mx, fabs(ref[i]));
    md = fmax(md, fabs(ref[i] - got[i]));
  }
  assert_true(mx > 0);
  /* same code, maybe another thread count: only summation order differs */
  assert_true(md <= 1e-5 * mx);
  sa_rpc_reply_free(&r);

  /* default dtype: bf16 (proto: the encoder's native dtype) */
  r = call_encode(s.endpoint, wav, len, -1, 0, 0);
  assert_int_equal(r->status, SA_STATUS_OK);
  assert_int_equal(r->tensors[0].desc.dtype, SA_DTYPE_BF16);
  assert_int_equal(r->tensors[0].nbytes, (size_t)125 * H * 2);
  const uint16_t *h = r->tensors[0].data;
  for (int64_t i = 0; i < rows * H; i++)
    assert_true(fabs(sa_bf16_to_f32(h[i]) - ref[i]) <=
                fabs(ref[i]) / 128.0 + 1e-5 * mx);
  sa_rpc_reply_free(&r);
  assert_int_equal(etu_server_stop(&s), 0);
  free(ref);
  free(wav);
}

static void expect_invalid(const char *ep, sa_rpc_reply_t *r,
                           const char *what) {
  (void)ep;
  if (r->status != SA_STATUS_INVALID_ARGUMENT)
    fail_msg("%s: got %s (%s), want INVALID_ARGUMENT", what,
             sa_status_name(r->status), r->status_msg ? r->status_msg : "");
  assert_non_null(r->status_msg);
  assert_true(strlen(r->status_msg) > 0);
  sa_rpc_reply_free(&r);
}

static void test_bad_inputs(void **state) {
  (void)state;
  size_t len;
  uint8_t *wav = etu_read_file(CLIP, &len);
  assert_non_null(wav);
  etu_server_t s;
  char *extra[] = {"--max-audio-s", "60", "--max-bytes", "1000000", NULL};
  assert_int_equal(etu_server_start(&s, g_model, extra), 0);
  const char *ep = s.endpoint;

  expect_invalid(ep, call_encode(ep, NULL, 0, -1, 0, 0), "empty audio");
  expect_invalid(ep, call_encode(ep, wav, 30, -1, 0, 0), "truncated header");
  static const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n',
                                0, 0, 0, 13, 'I', 'H', 'D', 'R', 0, 0, 1, 0,
                                0, 0, 1, 0, 8, 6, 0, 0, 0, 0x5c, 0x72, 0xa8,
                                0x66, 0, 0, 0, 0, 'I', 'E', 'N', 'D'};
  expect_invalid(ep, call_encode(ep, png, sizeof png, -1, 0, 0), "png");
  const char *text = "This is not audio at all, just some text.\n"
                     "RIFF? no. WAVE? no. Just words, words, words.\n";
  expect_invalid(ep, call_encode(ep, text, strlen(text), -1, 0, 0), "text");
  /* a WAV header with no samples after it */
  expect_invalid(ep, call_encode(ep, wav, 44, -1, 0, 0), "no samples");
  /* not an EncodeRequest at all */
  static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
  expect_invalid(ep, call_raw(ep, junk, sizeof junk, NULL, 0), "junk body");
  /* limits: per request and per server */
  expect_invalid(ep, call_encode(ep, wav, len, -1, 5, 0), "max_audio_s 5");
  expect_invalid(ep, call_encode(ep, wav, len, -1, 0, 100), "max_tokens 100");
  expect_invalid(ep, call_encode(ep, wav, len, -1, -1, 0), "negative limit");
  expect_invalid(ep, call_encode(ep, wav, len, SA__DTYPE__DTYPE_I32, 0, 0),
                 "i32 rows");
  uint8_t *big = calloc(1, 1200000);
  memcpy(big, wav, 44);
  expect_invalid(ep, call_encode(ep, big, 1200000, -1, 0, 0), "over bytes");
  free(big);
  /* seventy seconds of silence: over the server's 60 s */
  {
    char dir[] = "/tmp/sa-enc-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char out[300];
    snprintf(out, sizeof out, "%s/long.flac", dir);
    char *argv[] = {"/usr/bin/ffmpeg", "-v", "error", "-y", "-f", "lavfi",
                    "-i", "anullsrc=r=8000:cl=mono", "-t", "70", out, NULL};
    assert_int_equal(etu_run(argv), 0);
    size_t fl;
    void *flac = etu_read_file(out, &fl);
    assert_non_null(flac);
    expect_invalid(ep, call_encode(ep, flac, fl, -1, 0, 0), "70 s > 60 s");
    free(flac);
    etu_rm_tree(dir);
  }
  /* a tensor frame the method does not take */
  {
    size_t bl;
    uint8_t *b = pack_req(wav, len, -1, 0, 0, &bl);
    float x[4] = {0};
    sa_rpc_frame_t fr = {.desc = {.dtype = SA_DTYPE_F32, .ndim = 1,
                                  .shape = {4}},
                         .data = x, .nbytes = sizeof x};
    expect_invalid(ep, call_raw(ep, b, bl, &fr, 1), "tensor frame");
    free(b);
  }
  /* still serving */
  sa_rpc_reply_t *r = call_encode(ep, wav, len, SA__DTYPE__DTYPE_F32, 0, 0);
  assert_int_equal(r->status, SA_STATUS_OK);
  assert_int_equal(r->tensors[0].desc.shape[0], 125);
  sa_rpc_reply_free(&r);
  assert_int_equal(etu_server_stop(&s), 0);
  free(wav);
}

typedef struct {
  const char *ep;
  const void *audio;
  size_t len;
  sa_status_t status;
  int done;
  pthread_mutex_t *mu;
  pthread_cond_t *cv;
} qcall_t;

static void *qcall_main(void *arg) {
  qcall_t *q = arg;
  size_t bl;
  uint8_t *b = pack_req(q->audio, q->len, SA__DTYPE__DTYPE_F32, 0, 0, &bl);
  sa_rpc_reply_t *r = NULL;
  int rc = sa_rpc_call_sync(q->ep, NULL, "Encoder/Encode", b, bl, NULL, 0,
                            CALL_TIMEOUT_MS, &r);
  free(b);
  pthread_mutex_lock(q->mu);
  q->status = rc == 0 ? r->status : SA_STATUS_UNKNOWN;
  q->done = 1;
  pthread_cond_broadcast(q->cv);
  pthread_mutex_unlock(q->mu);
  sa_rpc_reply_free(&r);
  return NULL;
}

static void test_queue_full(void **state) {
  (void)state;
  size_t len;
  void *wav = etu_read_file(CLIP, &len);
  assert_non_null(wav);
  char dir[] = "/tmp/sa-enc-test-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char fifo[300];
  snprintf(fifo, sizeof fifo, "%s/gate", dir);
  assert_int_equal(mkfifo(fifo, 0600), 0);
  etu_server_t s;
  char *extra[] = {"--threads", "1", "--queue", "1", "--test-gate", fifo,
                   NULL};
  assert_int_equal(etu_server_start(&s, g_model, extra), 0);

  /* one worker + one queue slot: of three concurrent requests, none can
   * finish before the gate opens, so exactly one is refused */
  pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
  qcall_t q[3];
  pthread_t t[3];
  for (int i = 0; i < 3; i++) {
    q[i] = (qcall_t){.ep = s.endpoint, .audio = wav, .len = len, .mu = &mu,
                     .cv = &cv};
    assert_int_equal(pthread_create(&t[i], NULL, qcall_main, &q[i]), 0);
  }
  pthread_mutex_lock(&mu);
  for (;;) {
    int n = q[0].done + q[1].done + q[2].done;
    if (n >= 1)
      break;
    pthread_cond_wait(&cv, &mu);
  }
  int refused = -1;
  for (int i = 0; i < 3; i++)
    if (q[i].done)
      refused = i;
  assert_int_equal(q[0].done + q[1].done + q[2].done, 1);
  pthread_mutex_unlock(&mu);
  assert_int_equal(q[refused].status, SA_STATUS_RESOURCE_EXHAUSTED);

  int fd = open(fifo, O_WRONLY);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, "gg", 2), 2);
  for (int i = 0; i < 3; i++)
    pthread_join(t[i], NULL);
  for (int i = 0; i < 3; i++)
    if (i != refused)
      assert_int_equal(q[i].status, SA_STATUS_OK);
  /* the gate needs one byte per request from now on */
  assert_int_equal(write(fd, "g", 1), 1);
  sa_rpc_reply_t *r = call_encode(s.endpoint, wav, len, SA__DTYPE__DTYPE_F32,
                                  0, 0);
  assert_int_equal(r->status, SA_STATUS_OK);
  sa_rpc_reply_free(&r);
  close(fd);
  assert_int_equal(etu_server_stop(&s), 0);
  etu_rm_tree(dir);
  free(wav);
}

static void test_unreachable_coordinator(void **state) {
  (void)state;
  size_t len;
  void *wav = etu_read_file(CLIP, &len);
  assert_non_null(wav);
  etu_server_t s;
  /* port 9 (discard) on loopback: nothing listens there. Two workers, three
   * requests at once: all served. */
  char *extra[] = {"--coordinator", "tcp://127.0.0.1:9", "--threads", "2",
                   NULL};
  assert_int_equal(etu_server_start(&s, g_model, extra), 0);
  pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
  qcall_t q[3];
  pthread_t t[3];
  for (int i = 0; i < 3; i++) {
    q[i] = (qcall_t){.ep = s.endpoint, .audio = wav, .len = len, .mu = &mu,
                     .cv = &cv};
    assert_int_equal(pthread_create(&t[i], NULL, qcall_main, &q[i]), 0);
  }
  for (int i = 0; i < 3; i++) {
    pthread_join(t[i], NULL);
    assert_int_equal(q[i].status, SA_STATUS_OK);
  }
  assert_int_equal(etu_server_stop(&s), 0);
  free(wav);
}

static int setup(void **state) {
  (void)state;
  return etu_make_tiny(g_model, sizeof g_model);
}

static int teardown(void **state) {
  (void)state;
  etu_rm_tree(g_model);
  return 0;
}

int main(void) {
  sa_log_init("test_sa_encoder");
  if (access(ETU_SA_ENCODER, X_OK) != 0) {
    printf("SKIPPED: %s not built\n", ETU_SA_ENCODER);
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_bad_inputs),
      cmocka_unit_test(test_queue_full),
      cmocka_unit_test(test_unreachable_coordinator),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
