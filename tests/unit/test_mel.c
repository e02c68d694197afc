/* Unit tests for model/mel: the log-mel front end against golden data from
 * the PyTorch/numpy oracle (tests/oracle/mel_oracle.py, float64 reference),
 * on every fixture clip decoded by model/audio, plus hand-derived cases
 * (frame counts, silence, a pure tone) and a timing print (not asserted).
 * Reads tests/fixtures/audio (unpacked into the build tree). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "audio.h"
#include "sa_time.h"
#include "mel.h"
#include "sa_error.h"

#define AUDIO_DIR SA_FIXTURES_DIR "/audio"
#define GOLDEN_DIR SA_SOURCE_DIR "/tests/oracle/golden/mel"
#define TOL 1e-4

static void *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  void *buf = malloc(n > 0 ? (size_t)n : 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static float *decode_clip(const char *name, size_t *n) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s.wav", AUDIO_DIR, name);
  size_t len = 0;
  void *bytes = read_all(path, &len);
  assert_non_null(bytes);
  float *pcm = NULL;
  char err[256];
  int rc = sa_audio_decode(bytes, len, NULL, &pcm, n, err, sizeof err);
  if (rc)
    fail_msg("decode %s: %s", name, err);
  free(bytes);
  return pcm;
}

static void test_frame_counts(void **state) {
  (void)state;
  /* T = floor((N + 479) / 160), x_len = T - 2, worked by hand. */
  assert_int_equal(sa_mel_frames(0), 0);
  assert_int_equal(sa_mel_frames(1), 3);          /* 480 / 160 */
  assert_int_equal(sa_mel_frames(160), 3);        /* 639 / 160 = 3.99 */
  assert_int_equal(sa_mel_frames(161), 4);        /* 640 / 160 */
  assert_int_equal(sa_mel_frames(400000), 2502);  /* 400479 / 160 = 2502.99 */
  assert_int_equal(sa_mel_valid_len(400000), 2500);
  assert_int_equal(sa_mel_valid_len(160), 1);
  assert_int_equal(sa_mel_frames(1600), 12);      /* 0.1 s: 2079 / 160 */
}

static void test_filters_vs_librosa_formula(void **state) {
  (void)state;
  sa_mel_t *m = sa_mel_new(16000);
  assert_non_null(m);
  size_t len = 0;
  float *ref = read_all(GOLDEN_DIR "/filters.bin", &len);
  assert_non_null(ref);
  assert_int_equal(len, SA_MEL_N_MELS * SA_MEL_N_FREQS * sizeof(float));
  const float *f = sa_mel_filters(m);
  double maxd = 0;
  int nonzero = 0;
  for (int i = 0; i < SA_MEL_N_MELS * SA_MEL_N_FREQS; i++) {
    double d = fabs((double)f[i] - ref[i]);
    if (d > maxd)
      maxd = d;
    nonzero += ref[i] != 0.0f;
  }
  printf("filterbank: max |C - numpy| = %.3g, %d nonzero weights\n", maxd,
         nonzero);
  assert_true(nonzero > 200);
  assert_true(maxd <= 1e-8);
  free(ref);
  sa_mel_destroy(&m);
  assert_null(m);
}

typedef struct {
  char name[128];
  size_t n, T, x_len, step;
  double max, min, mean;
} golden_t;

static int read_manifest(golden_t *g, int cap) {
  FILE *f = fopen(GOLDEN_DIR "/manifest.txt", "r");
  assert_non_null(f);
  char line[512];
  int k = 0;
  while (fgets(line, sizeof line, f) && k < cap) {
    if (line[0] == '#')
      continue;
    golden_t *e = &g[k];
    if (sscanf(line, "%127s %zu %zu %zu %zu %lf %lf %lf", e->name, &e->n,
               &e->T, &e->x_len, &e->step, &e->max, &e->min, &e->mean) == 8)
      k++;
  }
  fclose(f);
  return k;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The oracle's synthetic full chunk: all fixture clips, sorted by file name,
 * concatenated and cut at 400000 samples. */
static float *build_concat25s(size_t *n) {
  DIR *d = opendir(AUDIO_DIR);
  assert_non_null(d);
  char *names[32];
  int k = 0;
  struct dirent *de;
  while ((de = readdir(d)) && k < 32) {
    size_t l = strlen(de->d_name);
    if (l > 4 && strcmp(de->d_name + l - 4, ".wav") == 0)
      names[k++] = strndup(de->d_name, l - 4);
  }
  closedir(d);
  qsort(names, k, sizeof names[0], cmp_str);
  float *all = malloc(SA_AUDIO_CHUNK_SAMPLES * sizeof(float));
  size_t used = 0;
  for (int i = 0; i < k; i++) {
    size_t cn = 0;
    float *p = decode_clip(names[i], &cn);
    size_t take = cn < SA_AUDIO_CHUNK_SAMPLES - used ? cn
                                                     : SA_AUDIO_CHUNK_SAMPLES - used;
    memcpy(all + used, p, take * sizeof(float));
    used += take;
    free(p);
    free(names[i]);
  }
  *n = used;
  return all;
}

static void test_golden_clips(void **state) {
  (void)state;
  golden_t g[16];
  int ng = read_manifest(g, 16);
  assert_true(ng >= 5);
  sa_mel_t *m = sa_mel_new(0);
  assert_non_null(m);
  float *out = malloc(SA_MEL_N_MELS * 2600 * sizeof(float));
  for (int c = 0; c < ng; c++) {
    size_t n = 0;
    float *pcm = strcmp(g[c].name, "concat25s") == 0 ? build_concat25s(&n)
                                                      : decode_clip(g[c].name, &n);
    assert_int_equal(n, g[c].n); /* decoded length is exact for 16 kHz PCM */
    size_t T = 0, xl = 0;
    assert_int_equal(sa_mel_compute(m, pcm, n, out, SA_MEL_N_MELS * 2600, &T,
                                    &xl), 0);
    assert_int_equal(T, g[c].T);
    assert_int_equal(xl, g[c].x_len);
    char path[1024];
    snprintf(path, sizeof path, "%s/%.127s.bin", GOLDEN_DIR, g[c].name);
    size_t blen = 0;
    float *ref = read_all(path, &blen);
    assert_non_null(ref);
    size_t ncols = 0;
    for (size_t t = 0; t < T; t++)
      ncols += (t % g[c].step == 0 || t == T - 1);
    assert_int_equal(blen, SA_MEL_N_MELS * ncols * sizeof(float));
    double maxd = 0, mx = -1e30, mn = 1e30, sum = 0;
    for (size_t b = 0; b < SA_MEL_N_MELS; b++) {
      size_t col = 0;
      for (size_t t = 0; t < T; t++) {
        double v = out[b * T + t];
        mx = v > mx ? v : mx;
        mn = v < mn ? v : mn;
        sum += v;
        if (t % g[c].step == 0 || t == T - 1) {
          double d = fabs(v - ref[b * ncols + col]);
          maxd = d > maxd ? d : maxd;
          col++;
        }
      }
    }
    double mean = sum / (double)(SA_MEL_N_MELS * T);
    printf("%-44s T=%zu  max|C - torch| = %.3g  (max %.6f min %.6f mean "
           "%.6f)\n",
           g[c].name, T, maxd, mx, mn, mean);
    assert_true(maxd <= TOL);
    assert_true(fabs(mx - g[c].max) <= TOL);
    assert_true(fabs(mn - g[c].min) <= TOL);
    assert_true(fabs(mean - g[c].mean) <= TOL);
    free(ref);
    free(pcm);
  }
  free(out);
  sa_mel_destroy(&m);
}

static void test_silence(void **state) {
  (void)state;
  /* All-zero input: mel = 0 -> log10(1e-10) = -10 everywhere; the clamp at
   * max - 8 = -18 does nothing; (-10 + 4) / 4 = -1.5 exactly. */
  sa_mel_t *m = sa_mel_new(32000);
  size_t sizes[] = {1, 160, 16000, 32000};
  float *pcm = calloc(32000, sizeof(float));
  float *out = malloc(SA_MEL_N_MELS * 300 * sizeof(float));
  for (size_t s = 0; s < 4; s++) {
    size_t T = 0;
    assert_int_equal(
        sa_mel_compute(m, pcm, sizes[s], out, SA_MEL_N_MELS * 300, &T, NULL), 0);
    assert_int_equal(T, (sizes[s] + 479) / 160);
    for (size_t i = 0; i < SA_MEL_N_MELS * T; i++)
      assert_true(out[i] == -1.5f);
  }
  free(pcm);
  free(out);
  sa_mel_destroy(&m);
}

static void test_tone_and_dynamic_range(void **state) {
  (void)state;
  /* 440 Hz sits on FFT bin 11 (40 Hz per bin); the loudest mel bin of a
   * middle frame must be the filter that weighs bin 11 most (taken from the
   * oracle's filterbank file, not ours). Far-away bins sit on the floor
   * max - 8, i.e. exactly 2 below the chunk's top after the /4. */
  size_t len = 0;
  float *ref = read_all(GOLDEN_DIR "/filters.bin", &len);
  assert_non_null(ref);
  int want = 0;
  for (int b = 1; b < SA_MEL_N_MELS; b++)
    if (ref[b * SA_MEL_N_FREQS + 11] > ref[want * SA_MEL_N_FREQS + 11])
      want = b;
  sa_mel_t *m = sa_mel_new(16000);
  float *pcm = malloc(16000 * sizeof(float));
  for (int i = 0; i < 16000; i++)
    pcm[i] = (float)(0.5 * sin(2 * M_PI * 440.0 * i / 16000.0));
  size_t T = 0;
  float *out = malloc(SA_MEL_N_MELS * 200 * sizeof(float));
  assert_int_equal(sa_mel_compute(m, pcm, 16000, out, SA_MEL_N_MELS * 200, &T,
                                  NULL), 0);
  size_t t = T / 2;
  int best = 0;
  float top = -1e30f, bottom = 1e30f;
  for (int b = 0; b < SA_MEL_N_MELS; b++) {
    float v = out[b * T + t];
    if (v > out[best * T + t])
      best = b;
    top = v > top ? v : top;
    bottom = v < bottom ? v : bottom;
  }
  float gmax = -1e30f;
  for (size_t i = 0; i < SA_MEL_N_MELS * T; i++)
    gmax = out[i] > gmax ? out[i] : gmax;
  assert_int_equal(best, want);
  assert_true(top > gmax - 0.01f);
  assert_true(fabsf(bottom - (gmax - 2.0f)) < 1e-5f);
  free(out);
  free(pcm);
  free(ref);
  sa_mel_destroy(&m);
}

static void test_bad_args(void **state) {
  (void)state;
  sa_mel_t *m = sa_mel_new(1000);
  float pcm[2000] = {0};
  float out[SA_MEL_N_MELS * 20];
  size_t T = 0;
  assert_int_equal(sa_mel_compute(m, pcm, 0, out, sizeof out / 4, &T, NULL),
                   SA_EINVAL);
  assert_int_equal(sa_mel_compute(m, pcm, 1001, out, sizeof out / 4, &T, NULL),
                   SA_EINVAL);
  /* 1000 samples -> 9 frames; 8 frames of room is too little */
  assert_int_equal(sa_mel_compute(m, pcm, 1000, out, SA_MEL_N_MELS * 8, &T,
                                  NULL), SA_EINVAL);
  assert_int_equal(sa_mel_compute(m, pcm, 1000, out, SA_MEL_N_MELS * 9, &T,
                                  NULL), 0);
  assert_int_equal(T, 9);
  sa_mel_destroy(&m);
  sa_mel_destroy(&m); /* NULL-safe */
}

static void test_rtf_print(void **state) {
  (void)state;
  /* Timing is printed, never asserted. */
  sa_mel_t *m = sa_mel_new(0);
  float *pcm = malloc(SA_AUDIO_CHUNK_SAMPLES * sizeof(float));
  uint32_t x = 12345;
  for (int i = 0; i < SA_AUDIO_CHUNK_SAMPLES; i++) {
    x = x * 1664525u + 1013904223u;
    pcm[i] = (float)(0.3 * sin(i * 0.1) + ((double)x / 4294967296.0 - 0.5) * 0.1);
  }
  float *out = malloc(SA_MEL_N_MELS * 2502 * sizeof(float));
  size_t T = 0;
  double best = 1e9;
  for (int r = 0; r < 3; r++) {
    double t0 = sa_now_s();
    assert_int_equal(sa_mel_compute(m, pcm, SA_AUDIO_CHUNK_SAMPLES, out,
                                    SA_MEL_N_MELS * 2502, &T, NULL), 0);
    double dt = sa_now_s() - t0;
    best = dt < best ? dt : best;
  }
  printf("mel: 25 s chunk (T=%zu) in %.2f ms, real-time factor %.5f (1 core)\n",
         T, best * 1e3, best / 25.0);
  free(out);
  free(pcm);
  sa_mel_destroy(&m);
}

int main(void) {
  struct stat sb;
  if (stat(AUDIO_DIR, &sb) != 0) {
    fprintf(stderr, "fixtures not found at %s (re-run cmake)\n", AUDIO_DIR);
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_frame_counts),
      cmocka_unit_test(test_filters_vs_librosa_formula),
      cmocka_unit_test(test_golden_clips),
      cmocka_unit_test(test_silence),
      cmocka_unit_test(test_tone_and_dynamic_range),
      cmocka_unit_test(test_bad_args),
      cmocka_unit_test(test_rtf_print),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
