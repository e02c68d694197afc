/*
 * make-seeds — writes the seed corpora of the fuzz targets whose inputs are
 * wire messages or checkpoints, with the project's own packers and writer
 * (the bytes real peers and real tools produce):
 *
 *   OUT/corpus_envelope/     frames of real calls in fuzz_envelope's layout
 *                            (a request with a deadline, a trace id and two
 *                            tensors; a response with a status; a stream
 *                            message; a stream end; a cancel)
 *   OUT/corpus_step_check/   packed StepBatches and a LinkRequest: prefill
 *                            with audio spans, decode of several chains,
 *                            a route with keys, an NCCL step
 *   OUT/corpus_safetensors/  small checkpoints from sa_st_write (bf16, f32,
 *                            i32, scalar and 3-d tensors)
 *
 * usage: make-seeds OUT   (tests/fuzz/README.md says when to rerun it)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "rpc_internal.h"
#include "sa.pb-c.h"
#include "safetensors.h"

static const char *g_out;

static void put(const char *dir, const char *name, const void *data, size_t len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", g_out, dir);
  mkdir(path, 0755);
  snprintf(path, sizeof path, "%s/%s/%s", g_out, dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len || fclose(f)) {
    fprintf(stderr, "make-seeds: cannot write %s\n", path);
    exit(1);
  }
}

/* fuzz_envelope's layout: frame count, then per frame a 2-byte LE length
 * and the bytes. */
static void envelope(const char *name, const sa__rpc_env_out_t *e, const void *body, size_t blen,
                     const void *const *tensors, const size_t *tlen, int nt) {
  uint8_t env[4096], out[8192];
  size_t el = sa__rpc_env_pack(e, env, sizeof env), n = 0;
  out[n++] = (uint8_t)(2 + nt);
  const void *frames[10] = {env, body};
  size_t lens[10] = {el, blen};
  for (int i = 0; i < nt; i++) {
    frames[2 + i] = tensors[i];
    lens[2 + i] = tlen[i];
  }
  for (int i = 0; i < 2 + nt; i++) {
    out[n++] = (uint8_t)(lens[i] & 0xff);
    out[n++] = (uint8_t)(lens[i] >> 8);
    if (lens[i])
      memcpy(out + n, frames[i], lens[i]);
    n += lens[i];
  }
  put("corpus_envelope", name, out, n);
}

static void envelopes(void) {
  float a[6] = {1, 2, 3, 4, 5, 6};
  int32_t ids[4] = {151644, 8, 9, 151645};
  sa_rpc_frame_t t[2] = {
      {.desc = {.dtype = SA_DTYPE_F32, .ndim = 2, .shape = {2, 3}}, .data = a, .nbytes = 24},
      {.desc = {.dtype = SA_DTYPE_I32, .ndim = 1, .shape = {4}}, .data = ids, .nbytes = 16},
  };
  const void *td[2] = {a, ids};
  size_t tl[2] = {24, 16};
  sa__rpc_env_out_t req = {.call_id = 1048577, .kind = SA__RPC_REQUEST, .method = "Stage/Step",
                           .deadline_ms = 60000, .trace_id = "req-5f2c", .tensors = t,
                           .n_tensors = 2};
  envelope("request", &req, "\x08\x01", 2, td, tl, 2);
  sa__rpc_env_out_t resp = {.call_id = 7, .kind = SA__RPC_RESPONSE,
                            .status = SA_STATUS_RESOURCE_EXHAUSTED,
                            .status_msg = "server busy: 1024 calls in progress"};
  envelope("response", &resp, NULL, 0, NULL, NULL, 0);
  sa__rpc_env_out_t msg = {.call_id = 9, .kind = SA__RPC_STREAM_MSG};
  envelope("stream_msg", &msg, "\x0a\x03req", 5, NULL, NULL, 0);
  sa__rpc_env_out_t end = {.call_id = 9, .kind = SA__RPC_STREAM_END, .status = SA_STATUS_OK};
  envelope("stream_end", &end, NULL, 0, NULL, NULL, 0);
  sa__rpc_env_out_t cancel = {.call_id = 9, .kind = SA__RPC_CANCEL};
  envelope("cancel", &cancel, NULL, 0, NULL, NULL, 0);
}

static void pack_step(const char *name, Sa__StepBatch *b) {
  size_t n = sa__step_batch__get_packed_size(b);
  uint8_t *buf = malloc(n);
  sa__step_batch__pack(b, buf);
  put("corpus_step_check", name, buf, n);
  free(buf);
}

static void steps(void) {
  /* prefill of one sequence: 6 tokens, 2 audio rows at token 2 */
  Sa__SeqStep s0 = SA__SEQ_STEP__INIT;
  int32_t tok[6] = {1, 2, 0, 0, 3, 4};
  Sa__EmbedSpan sp = SA__EMBED_SPAN__INIT, *spp = &sp;
  sp.frame = 1;
  sp.first_row = 0;
  sp.n_rows = 2;
  sp.at_token = 2;
  s0.seq_id = 11;
  s0.request_id = 5;
  s0.n_tokens = 6;
  s0.n_token_ids = 6;
  s0.token_ids = tok;
  s0.n_embed_spans = 1;
  s0.embed_spans = &spp;
  s0.want_sample = true;
  s0.rng_seed = 42;
  s0.rng_position = 6;
  Sa__SeqStep *ss[1] = {&s0};
  Sa__StepBatch b = SA__STEP_BATCH__INIT;
  b.batch_id = 1;
  b.n_stages = 2;
  b.n_seqs = 1;
  b.seqs = ss;
  b.total_tokens = 6;
  char *route[2] = {"tcp://127.0.0.1:7720", "tcp://127.0.0.1:7721"};
  char *keys[2] = {"rq>H(SdyE]*N5s@=LZ7d3QO(xwZX6wiT=A[0>EYi", "J@1-k!TZ7qo+pN5]fXW$uL0e4bHy3&m(Vz8cRg.D"};
  b.n_route = 2;
  b.route = route;
  b.n_route_keys = 2;
  b.route_keys = keys;
  pack_step("prefill_audio", &b);

  /* decode: 4 chains of one request, one token each, at the middle stage */
  Sa__SeqStep d[4], *dp[4];
  int32_t one[4] = {7, 8, 9, 10}, recent[3] = {7, 7, 8};
  for (int i = 0; i < 4; i++) {
    sa__seq_step__init(&d[i]);
    d[i].seq_id = 100 + (uint64_t)i;
    d[i].request_id = 6;
    d[i].chain = i;
    d[i].position = 40;
    d[i].n_tokens = 1;
    d[i].n_token_ids = 1;
    d[i].token_ids = &one[i];
    d[i].n_recent_tokens = 3;
    d[i].recent_tokens = recent;
    d[i].think_budget_left = 12;
    dp[i] = &d[i];
  }
  Sa__StepBatch c = SA__STEP_BATCH__INIT;
  c.batch_id = 2;
  c.hop = 1;
  c.n_stages = 3;
  c.n_seqs = 4;
  c.seqs = dp;
  c.total_tokens = 4;
  pack_step("decode_4_chains", &c);
  c.act_via_nccl = true;
  c.nccl_seq = 3;
  pack_step("decode_nccl", &c);

  Sa__LinkRequest l = SA__LINK_REQUEST__INIT;
  uint8_t id[128] = {1, 2, 3};
  l.nccl_id.data = id;
  l.nccl_id.len = sizeof id;
  l.from_address = "tcp://127.0.0.1:7720";
  l.host = "h";
  l.hidden_size = 16;
  l.max_tokens = 64;
  size_t n = sa__link_request__get_packed_size(&l);
  uint8_t *buf = malloc(n);
  sa__link_request__pack(&l, buf);
  put("corpus_step_check", "link_request", buf, n);
  free(buf);
}

static void checkpoints(void) {
  char err[256], path[1024];
  uint16_t bf[8] = {0x3f80, 0x4000, 0xbf80, 0, 0x7f80, 0x0001, 0x4040, 0x3f00};
  float f[3] = {0.5f, -1.0f, 2.0f};
  int32_t i[2] = {3, -4};
  sa_st_tensor_t t[4] = {
      {.name = "model.embed_tokens.weight", .desc = {SA_DTYPE_BF16, 2, {4, 2}}, .data = bf},
      {.name = "model.norm.weight", .desc = {SA_DTYPE_F32, 1, {3}}, .data = f},
      {.name = "ids", .desc = {SA_DTYPE_I32, 1, {2}}, .data = i},
      {.name = "scalar", .desc = {SA_DTYPE_F32, 0, {0}}, .data = f},
  };
  snprintf(path, sizeof path, "%s/corpus_safetensors", g_out);
  mkdir(path, 0755);
  snprintf(path, sizeof path, "%s/corpus_safetensors/four.safetensors", g_out);
  if (sa_st_write(path, t, 4, err, sizeof err))
    fprintf(stderr, "make-seeds: %s\n", err), exit(1);
  sa_st_tensor_t cube = {.name = "a.b.c", .desc = {SA_DTYPE_BF16, 3, {2, 2, 2}}, .data = bf};
  snprintf(path, sizeof path, "%s/corpus_safetensors/cube.safetensors", g_out);
  if (sa_st_write(path, &cube, 1, err, sizeof err))
    fprintf(stderr, "make-seeds: %s\n", err), exit(1);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: make-seeds OUT\n");
    return 2;
  }
  g_out = argv[1];
  mkdir(g_out, 0755);
  envelopes();
  steps();
  checkpoints();
  return 0;
}
