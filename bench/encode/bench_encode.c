/*
 * bench-encode — real-time factor of the audio path for one 25 s chunk: the
 * log-mel front end, and the audio encoder + adaptor on the tiny test model
 * and on a random-weight encoder of Step-Audio-R1's real size (state 1280,
 * 32 layers, 20 heads, adaptor 1280 -> 2048 -> 5120), beside the machine's
 * OpenBLAS sgemm peak measured in the same run. RTF = compute time / audio
 * time (below 1 is faster than real time). Prints medians.
 *
 * --layers L < 32 builds the R1-size encoder with L layers to save time and
 * memory, measures it and a 0-layer encoder (convolutions, pooling, adaptor),
 * and extrapolates linearly to 32 layers; the output says so. On a machine
 * shared with other work the figures move by tens of percent between runs.
 */
#include "audio.h"
#include "audio_encoder.h"
#include "config.h"
#include "kernels.h"
#include "log.h"
#include "mel.h"
#include "sa_bench.h"
#include "sa_error.h"
#include "safetensors.h"
#include "tensor.h"
#include "testmodel.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define AUDIO_S 25.0

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench-encode [--threads N] [--reps N] [--layers L] [--no-r1]\n"
          "                    [--device cpu|ref|cuda[:N]]\n"
          "  Prints the sgemm peak, then the RTF of the mel and of encoder +\n"
          "  adaptor for one 25 s chunk (tiny model, and R1 size with random\n"
          "  weights).\n"
          "  --threads N  backend / OpenBLAS threads (default 0 = online CPUs)\n"
          "  --reps N     samples per figure (default 3; R1 size: 1 + N/3)\n"
          "  --layers L   R1-size encoder layers to build, 1..32 (default 32; fewer\n"
          "               are measured and extrapolated to 32, said in output)\n"
          "  --no-r1      skip the R1-size encoder\n");
}

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* xorshift64*, uniform in [-1, 1) */
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  uint64_t r = g_rng * 2685821657736338717ull;
  return (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* FLOPs of one chunk of T frames (multiply-adds count 2). */
static double chunk_flops(int T, int n_mels, int S, int L, int A, int H) {
  double T2 = (T + 1) / 2, T3 = floor(T2 / 2), T4 = floor((T3 - 1) / 2) + 1;
  double tok = sa_audio_chunk_tokens(T), nv = T2 - 1;
  double f = 2.0 * T * S * n_mels * 3 + 2.0 * T2 * S * S * 3;
  f += L * (4 * 2.0 * T2 * S * S + 2 * 2.0 * T2 * S * 4.0 * S +
            2 * 2.0 * T2 * nv * S);
  f += 2.0 * T3 * S * 2.0 * S;                   /* average pool as a matmul */
  f += 2.0 * T4 * S * S * 3 + 2.0 * tok * S * A + 2.0 * tok * A * H;
  return f;
}

/* --- an in-memory safetensors checkpoint with random bf16 weights --- */
typedef struct {
  char name[96];
  int ndim;
  int64_t shape[3];
  int kind; /* 0 weight, 1 bias (small), 2 norm weight (1) */
} spec_t;

static int add(spec_t *s, int n, const char *name, int nd, int64_t a,
               int64_t b, int64_t c, int kind) {
  snprintf(s[n].name, sizeof s[n].name, "%s", name);
  s[n].ndim = nd;
  s[n].shape[0] = a;
  s[n].shape[1] = b;
  s[n].shape[2] = c;
  s[n].kind = kind;
  return n + 1;
}

static int make_specs(spec_t *s, int S, int L, int M, int ctx, int A, int H) {
  int n = 0;
  n = add(s, n, "encoder.conv1.weight", 3, S, M, 3, 0);
  n = add(s, n, "encoder.conv1.bias", 1, S, 0, 0, 1);
  n = add(s, n, "encoder.conv2.weight", 3, S, S, 3, 0);
  n = add(s, n, "encoder.conv2.bias", 1, S, 0, 0, 1);
  n = add(s, n, "encoder.positional_embedding.weight", 2, ctx, S, 0, 0);
  for (int i = 0; i < L; i++) {
    char p[96];
#define B(suffix, nd, a, b, kind)                                              \
  do {                                                                         \
    snprintf(p, sizeof p, "encoder.blocks.%d.%s", i, suffix);                  \
    n = add(s, n, p, nd, a, b, 0, kind);                                       \
  } while (0)
    B("attn_ln.weight", 1, S, 0, 2);
    B("attn_ln.bias", 1, S, 0, 1);
    B("attn.query.weight", 2, S, S, 0);
    B("attn.query.bias", 1, S, 0, 1);
    B("attn.key.weight", 2, S, S, 0);
    B("attn.value.weight", 2, S, S, 0);
    B("attn.value.bias", 1, S, 0, 1);
    B("attn.out.weight", 2, S, S, 0);
    B("attn.out.bias", 1, S, 0, 1);
    B("mlp_ln.weight", 1, S, 0, 2);
    B("mlp_ln.bias", 1, S, 0, 1);
    B("mlp.0.weight", 2, 4 * S, S, 0);
    B("mlp.0.bias", 1, 4 * S, 0, 1);
    B("mlp.2.weight", 2, S, 4 * S, 0);
    B("mlp.2.bias", 1, S, 0, 1);
#undef B
  }
  n = add(s, n, "encoder.after_norm.weight", 1, S, 0, 0, 2);
  n = add(s, n, "encoder.after_norm.bias", 1, S, 0, 0, 1);
  n = add(s, n, "adapter.conv.weight", 3, S, S, 3, 0);
  n = add(s, n, "adapter.conv.bias", 1, S, 0, 0, 1);
  n = add(s, n, "adapter.linear1.weight", 2, A, S, 0, 0);
  n = add(s, n, "adapter.linear1.bias", 1, A, 0, 0, 1);
  n = add(s, n, "adapter.linear2.weight", 2, H, A, 0, 0);
  n = add(s, n, "adapter.linear2.bias", 1, H, 0, 0, 1);
  return n;
}

/* Builds the safetensors bytes in one malloc'ed buffer (caller frees). */
static void *make_checkpoint(const spec_t *s, int n, size_t *len) {
  size_t cap = (size_t)n * 160 + 64, hl = 0;
  char *hdr = malloc(cap);
  if (!hdr)
    return NULL;
  size_t off = 0;
  hl += (size_t)snprintf(hdr + hl, cap - hl, "{");
  for (int i = 0; i < n; i++) {
    size_t numel = 1;
    char shp[64];
    size_t sl = 0;
    for (int d = 0; d < s[i].ndim; d++) {
      numel *= (size_t)s[i].shape[d];
      sl += (size_t)snprintf(shp + sl, sizeof shp - sl, "%s%lld", d ? "," : "",
                             (long long)s[i].shape[d]);
    }
    hl += (size_t)snprintf(hdr + hl, cap - hl,
                           "%s\"%s\":{\"dtype\":\"BF16\",\"shape\":[%s],"
                           "\"data_offsets\":[%zu,%zu]}",
                           i ? "," : "", s[i].name, shp, off, off + numel * 2);
    off += numel * 2;
  }
  hl += (size_t)snprintf(hdr + hl, cap - hl, "}");
  while (hl % 8)
    hdr[hl++] = ' ';
  uint8_t *buf = malloc(8 + hl + off);
  if (!buf) {
    free(hdr);
    return NULL;
  }
  uint64_t h64 = hl;
  memcpy(buf, &h64, 8);
  memcpy(buf + 8, hdr, hl);
  free(hdr);
  uint16_t *w = (uint16_t *)(buf + 8 + hl);
  size_t k = 0;
  for (int i = 0; i < n; i++) {
    size_t numel = 1;
    for (int d = 0; d < s[i].ndim; d++)
      numel *= (size_t)s[i].shape[d];
    size_t fan = s[i].ndim >= 2 ? (size_t)(numel / s[i].shape[0]) : 1;
    float sc = s[i].kind == 0 ? 1.7f / sqrtf((float)fan) : 0.02f;
    for (size_t j = 0; j < numel; j++, k++)
      w[k] = sa_f32_to_bf16(s[i].kind == 2 ? 1.0f + 0.05f * frand()
                                           : sc * frand());
  }
  *len = 8 + hl + off;
  return buf;
}

/* Median seconds of encoding one full chunk with enc. */
static double time_encoder(const sa_audio_encoder_t *enc, const float *mel,
                           int reps) {
  sa_audio_encoder_ws_t *ws = NULL;
  if (sa_audio_encoder_ws_new(enc, &ws) != 0)
    return -1;
  int H = sa_audio_encoder_hidden(enc);
  float *out = malloc((size_t)320 * H * sizeof(float));
  double *t = malloc(sizeof(double) * (size_t)(reps + 1));
  int T = SA_AUDIO_CHUNK_MAX_FRAMES, ct = 0;
  const float *mels[1] = {mel};
  double med = -1;
  if (!out || !t)
    goto out;
  for (int r = -1; r < reps; r++) { /* one warm-up */
    double t0 = sa_bench_now();
    if (sa_audio_encoder_run(enc, ws, mels, &T, 1, out, 320, &ct, NULL) != 0)
      goto out;
    if (r >= 0)
      t[r] = sa_bench_now() - t0;
  }
  med = sa_bench_median(t, reps);
out:
  free(t);
  free(out);
  sa_audio_encoder_ws_destroy(&ws);
  return med;
}

/* Builds a random R1-size encoder with L layers and times it. */
static double time_r1(sa_backend_t *be, int L, const float *mel, int reps) {
  const int S = 1280, nh = 20, M = 128, ctx = 1500, A = 2048, H = 5120;
  spec_t *specs = malloc(sizeof(spec_t) * (size_t)(16 + 15 * L));
  if (!specs)
    return -1;
  int n = make_specs(specs, S, L, M, ctx, A, H);
  size_t len = 0;
  double t0 = sa_bench_now();
  void *buf = make_checkpoint(specs, n, &len);
  free(specs);
  if (!buf)
    return -1;
  char err[256];
  sa_st_t *st = NULL;
  if (sa_st_parse_buffer(buf, len, "random-r1", &st, err, sizeof err) != 0) {
    fprintf(stderr, "bench-encode: %s\n", err);
    free(buf);
    return -1;
  }
  sa_model_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.hidden_size = H;
  cfg.audio.present = true;
  cfg.audio.n_mels = M;
  cfg.audio.n_state = S;
  cfg.audio.n_layer = L;
  cfg.audio.n_head = nh;
  cfg.audio.n_ctx = ctx;
  cfg.audio.adapter_hidden = A;
  cfg.audio.kernel_size = 3;
  cfg.audio.adapter_stride = 2;
  cfg.audio.llm_dim = H;
  sa_audio_encoder_t *enc = NULL;
  int rc = sa_audio_encoder_new(be, &cfg, st, &enc, err, sizeof err);
  sa_st_close(&st);
  free(buf);
  if (rc != 0) {
    fprintf(stderr, "bench-encode: %s\n", err);
    return -1;
  }
  fprintf(stderr, "  (built %d-layer R1-size encoder, %.2f GB of bf16, in %.1f s)\n",
          L, (double)len / 1e9, sa_bench_now() - t0);
  double t = time_encoder(enc, mel, reps);
  sa_audio_encoder_destroy(&enc);
  return t;
}

int main(int argc, char **argv) {
  int threads = 0, reps = 3, layers = 32, r1 = 1;
  const char *device = "cpu";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
      reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--layers") && i + 1 < argc)
      layers = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--device") && i + 1 < argc)
      device = argv[++i];
    else if (!strcmp(argv[i], "--no-r1"))
      r1 = 0;
    else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (reps < 1 || layers < 1 || layers > 32 || threads < 0) {
    usage(stderr);
    return 2;
  }
  sa_log_init("bench-encode");
  int nthr = threads ? threads : sa_bench_cpus();
  double peak = sa_bench_sgemm_peak(nthr);
  printf("bench-encode: %d threads, device %s\n", nthr, device);
  printf("machine: OpenBLAS sgemm peak %.1f GFLOP/s (%d threads)\n", peak, nthr);

  /* 25 s of a chirp plus noise: a non-trivial spectrum */
  float *pcm = malloc(sizeof(float) * SA_AUDIO_CHUNK_SAMPLES);
  float *mel = malloc(sizeof(float) * SA_MEL_N_MELS * SA_AUDIO_CHUNK_MAX_FRAMES);
  double *t = malloc(sizeof(double) * (size_t)(reps + 1));
  if (!pcm || !mel || !t)
    return 1;
  for (int i = 0; i < SA_AUDIO_CHUNK_SAMPLES; i++) {
    double s = (double)i / SA_AUDIO_SAMPLE_RATE;
    pcm[i] = (float)(0.3 * sin(2 * M_PI * (200 + 150 * s) * s) + 0.05 * frand());
  }
  sa_mel_t *m = sa_mel_new(SA_AUDIO_CHUNK_SAMPLES);
  if (!m)
    return 1;
  size_t frames = 0;
  for (int r = -1; r < reps; r++) {
    double t0 = sa_bench_now();
    sa_mel_compute(m, pcm, SA_AUDIO_CHUNK_SAMPLES, mel,
                   (size_t)SA_MEL_N_MELS * SA_AUDIO_CHUNK_MAX_FRAMES, &frames,
                   NULL);
    if (r >= 0)
      t[r] = sa_bench_now() - t0;
  }
  double tm = sa_bench_median(t, reps);
  sa_mel_destroy(&m);
  printf("mel, one 25 s chunk (128 x %zu, single thread):  %8.2f ms   RTF %.5f\n",
         frames, tm * 1e3, tm / AUDIO_S);

  sa_backend_t *be = sa_backend_new(device, threads);
  if (!be)
    return 1;
  /* tiny test model */
  {
    char dir[] = "/tmp/bench-encode-XXXXXX", err[256];
    if (!mkdtemp(dir))
      return 1;
    sa_model_config_t cfg;
    sa_st_t *st = NULL;
    sa_audio_encoder_t *enc = NULL;
    if (sa_testmodel_write("tiny", 1, dir, err, sizeof err) != 0 ||
        sa_config_load(dir, &cfg, err, sizeof err) != 0 ||
        sa_st_open(dir, NULL, NULL, &st, err, sizeof err) != 0 ||
        sa_audio_encoder_new(be, &cfg, st, &enc, err, sizeof err) != 0) {
      fprintf(stderr, "bench-encode: tiny model: %s\n", err);
      return 1;
    }
    double te = time_encoder(enc, mel, reps);
    double fl = chunk_flops(SA_AUDIO_CHUNK_MAX_FRAMES, 128, cfg.audio.n_state,
                            cfg.audio.n_layer, cfg.audio.adapter_hidden,
                            cfg.hidden_size);
    printf("encoder+adaptor, tiny (S %d, %d layers, %d heads, hidden %d):  "
           "%8.2f ms   RTF %.5f   %.2f GFLOP/s (%.1f%% of sgemm peak)\n",
           cfg.audio.n_state, cfg.audio.n_layer, cfg.audio.n_head,
           cfg.hidden_size, te * 1e3, te / AUDIO_S, fl / te / 1e9,
           100 * fl / te / 1e9 / peak);
    sa_audio_encoder_destroy(&enc);
    sa_st_close(&st);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
      fprintf(stderr, "bench-encode: could not remove %s\n", dir);
  }
  if (r1) {
    int r1_reps = 1 + reps / 3;
    double fl32 = chunk_flops(SA_AUDIO_CHUNK_MAX_FRAMES, 128, 1280, 32, 2048,
                              5120);
    double t32;
    if (layers == 32) {
      t32 = time_r1(be, 32, mel, r1_reps);
      if (t32 < 0)
        return 1;
      printf("encoder+adaptor, R1 size (S 1280, 32 layers, 20 heads, hidden "
             "5120), random bf16 weights, measured:\n");
    } else {
      double tl = time_r1(be, layers, mel, r1_reps);
      double t0 = time_r1(be, 0, mel, r1_reps);
      if (tl < 0 || t0 < 0)
        return 1;
      /* fixed part (convolutions, pooling, adaptor) from a 0-layer encoder,
       * per layer from the difference */
      double per = (tl - t0) / layers;
      t32 = t0 + 32 * per;
      printf("encoder+adaptor, R1 size (S 1280, 20 heads, hidden 5120), random "
             "bf16 weights: EXTRAPOLATED to 32 layers from measured runs with "
             "%d layers (%.3f s) and 0 layers (%.3f s): %.3f s per layer + "
             "%.3f s fixed:\n", layers, tl, t0, per, t0);
    }
    printf("    one 25 s chunk %8.2f s   RTF %.3f   %.1f GFLOP per chunk   "
           "%.1f GFLOP/s (%.1f%% of sgemm peak)\n", t32, t32 / AUDIO_S,
           fl32 / 1e9, fl32 / t32 / 1e9, 100 * fl32 / t32 / 1e9 / peak);
  }
  sa_backend_destroy(&be);
  free(pcm);
  free(mel);
  free(t);
  return 0;
}
