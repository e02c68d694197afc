/* Unit tests for model/audio: decoding from memory across containers,
 * codecs, rates and channel layouts (files made at run time with the ffmpeg
 * command line into a temp dir), 25 s chunking, and every kind of bad input.
 * Expected values are worked out from the generated signal (duration, a
 * 440 Hz tone's frequency and amplitude after downmix), never from our own
 * output. The fixture clips come from tests/fixtures; the ffmpeg-made
 * cases are skipped when the ffmpeg command is missing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "audio.h"
#include "mel.h"
#include "sa_error.h"

#define AUDIO_DIR SA_FIXTURES_DIR "/audio"

static char g_tmp[256];
static int g_have_ffmpeg;

/* --- helpers ------------------------------------------------------------- */

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

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...) {
  char cmd[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  int rc = system(cmd);
  if (rc != 0)
    fail_msg("command failed (%d): %s", rc, cmd);
}

static void put32(uint8_t *p, uint32_t v) {
  p[0] = v & 255; p[1] = (v >> 8) & 255; p[2] = (v >> 16) & 255; p[3] = v >> 24;
}
static void put16(uint8_t *p, uint16_t v) { p[0] = v & 255; p[1] = v >> 8; }

/* A 16-bit PCM WAV in memory; samples interleaved, frames per channel. */
static uint8_t *make_wav(const int16_t *s, size_t frames, int rate, int ch,
                         size_t *len) {
  size_t data = frames * ch * 2;
  uint8_t *b = malloc(44 + data);
  memcpy(b, "RIFF", 4); put32(b + 4, (uint32_t)(36 + data));
  memcpy(b + 8, "WAVEfmt ", 8); put32(b + 16, 16); put16(b + 20, 1);
  put16(b + 22, (uint16_t)ch); put32(b + 24, (uint32_t)rate);
  put32(b + 28, (uint32_t)(rate * ch * 2)); put16(b + 32, (uint16_t)(ch * 2));
  put16(b + 34, 16); memcpy(b + 36, "data", 4); put32(b + 40, (uint32_t)data);
  for (size_t i = 0; i < frames * ch; i++)
    put16(b + 44 + 2 * i, (uint16_t)s[i]);
  *len = 44 + data;
  return b;
}

/* A mono 16 kHz WAV of n samples of a quiet ramp-free pattern. */
static uint8_t *make_wav16k(size_t n, size_t *len) {
  int16_t *s = malloc((n ? n : 1) * sizeof(int16_t));
  for (size_t i = 0; i < n; i++)
    s[i] = (int16_t)(3000.0 * sin(2 * M_PI * 440.0 * (double)i / 16000.0));
  uint8_t *w = make_wav(s, n, 16000, 1, len);
  free(s);
  return w;
}

/* Amplitude of the f Hz component of x[0..n) (rectangular window). */
static double tone_amp(const float *x, size_t n, double f) {
  double re = 0, im = 0;
  for (size_t i = 0; i < n; i++) {
    double ph = 2 * M_PI * f * (double)i / 16000.0;
    re += x[i] * cos(ph);
    im -= x[i] * sin(ph);
  }
  return 2.0 * sqrt(re * re + im * im) / (double)n;
}

static int decode_file(const char *path, const sa_audio_limits_t *lim,
                       float **pcm, size_t *n, char *err, size_t cap) {
  size_t len = 0;
  void *b = read_all(path, &len);
  assert_non_null(b);
  int rc = sa_audio_decode(b, len, lim, pcm, n, err, cap);
  free(b);
  return rc;
}

/* Checks a bad input: SA_EINVAL (wire INVALID_ARGUMENT), NULL output and a
 * reason containing `word`. */
static void expect_bad(const void *data, size_t len,
                       const sa_audio_limits_t *lim, const char *word) {
  float *pcm = (float *)(uintptr_t)1;
  size_t n = 99;
  char err[256];
  int rc = sa_audio_decode(data, len, lim, &pcm, &n, err, sizeof err);
  printf("  rejected (%s): %s\n", sa_err_name(rc), err);
  assert_int_equal(rc, SA_EINVAL);
  assert_int_equal(sa_err_to_status(rc), SA_STATUS_INVALID_ARGUMENT);
  assert_null(pcm);
  assert_int_equal(n, 0);
  assert_true(strlen(err) > 0);
  if (word && !strstr(err, word))
    fail_msg("reason '%s' lacks '%s'", err, word);
}

/* --- format x rate x channel matrix -------------------------------------- */

typedef struct {
  const char *ext, *codec_args;
  double len_tol_ms; /* decoded length vs the 1 s made */
  double amp_tol;    /* relative tone amplitude tolerance */
} fmt_case_t;

static void test_formats_rates_layouts(void **state) {
  (void)state;
  if (!g_have_ffmpeg)
    skip();
  const fmt_case_t fmts[] = {
      {"wav", "-c:a pcm_s16le", 1.0, 0.01},
      {"flac", "-c:a flac", 1.0, 0.01},
      {"mp3", "-c:a libmp3lame -b:a 128k", 5.0, 0.10},
      {"ogg", "-c:a libopus -b:a 96k", 5.0, 0.10},
  };
  const int rates[] = {8000, 16000, 24000, 44100, 48000};
  double worst_ms = 0;
  for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++)
    for (size_t r = 0; r < 5; r++)
      for (int ch = 1; ch <= 2; ch++) {
        char path[512];
        snprintf(path, sizeof path, "%s/tone_%d_%d.%s", g_tmp, rates[r], ch,
                 fmts[f].ext);
        /* Stereo: the tone on the left only, silence on the right, so the
         * average has half the amplitude (an energy-preserving 0.707 mix
         * would not). lavfi's sine has amplitude 1/8. */
        sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i "
           "'sine=frequency=440:sample_rate=%d:duration=1' %s %s '%s'",
           rates[r], ch == 2 ? "-af 'pan=stereo|c0=c0|c1=0*c0'" : "",
           fmts[f].codec_args, path);
        float *pcm = NULL;
        size_t n = 0;
        char err[256];
        int rc = decode_file(path, NULL, &pcm, &n, err, sizeof err);
        if (rc)
          fail_msg("%s: %s", path, err);
        double dms = fabs((double)n - 16000.0) / 16.0;
        worst_ms = dms > worst_ms ? dms : worst_ms;
        /* the middle half second: 220 whole cycles of 440 Hz */
        const float *mid = pcm + 4000;
        double a440 = tone_amp(mid, 8000, 440.0);
        double best_f = 0, best_a = -1;
        for (double fq = 400; fq <= 480; fq += 2) {
          double a = tone_amp(mid, 8000, fq);
          if (a > best_a) {
            best_a = a;
            best_f = fq;
          }
        }
        double want = ch == 2 ? 0.0625 : 0.125;
        printf("%-5s %5d Hz %d ch: %zu samples (%+.2f ms), peak %.0f Hz, "
               "amp %.4f (want %.4f)\n",
               fmts[f].ext, rates[r], ch, n, ((double)n - 16000.0) / 16.0,
               best_f, a440, want);
        assert_true(dms <= fmts[f].len_tol_ms);
        assert_true(best_f == 440.0);
        assert_true(fabs(a440 - want) <= fmts[f].amp_tol * want);
        free(pcm);
      }
  printf("worst length error %.2f ms\n", worst_ms);
}

static void test_multichannel_average(void **state) {
  (void)state;
  if (!g_have_ffmpeg)
    skip();
  /* 5.1 at 48 kHz with the tone in one channel: the mono mix is 1/6 of it. */
  char path[512];
  snprintf(path, sizeof path, "%s/tone51.flac", g_tmp);
  sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i "
     "'sine=frequency=440:sample_rate=48000:duration=1' -af "
     "'pan=5.1|c0=0*c0|c1=c0|c2=0*c0|c3=0*c0|c4=0*c0|c5=0*c0' -c:a flac '%s'",
     path);
  float *pcm = NULL;
  size_t n = 0;
  char err[256];
  assert_int_equal(decode_file(path, NULL, &pcm, &n, err, sizeof err), 0);
  assert_true(labs((long)n - 16000) <= 16);
  double a = tone_amp(pcm + 4000, 8000, 440.0);
  printf("5.1 -> mono: amp %.5f (want %.5f)\n", a, 0.125 / 6);
  assert_true(fabs(a - 0.125 / 6) < 0.01 * 0.125 / 6);
  free(pcm);
}

static void test_rate_change_midstream(void **state) {
  (void)state;
  if (!g_have_ffmpeg)
    skip();
  /* Two MP3s (44.1 kHz then 22.05 kHz, 1 s each, no Xing header) back to
   * back: the frames change rate mid-stream; the resampler is rebuilt and
   * both seconds come out, with the tone at 440 Hz in each. */
  const int rates[] = {44100, 22050};
  char path[2][512], cat[512];
  for (int i = 0; i < 2; i++) {
    snprintf(path[i], sizeof path[i], "%s/part%d.mp3", g_tmp, i);
    sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i "
       "'sine=frequency=440:sample_rate=%d:duration=1' -c:a libmp3lame "
       "-write_xing 0 -id3v2_version 0 '%s'", rates[i], path[i]);
  }
  snprintf(cat, sizeof cat, "%s/chain.mp3", g_tmp);
  sh("cat '%s' '%s' > '%s'", path[0], path[1], cat);
  float *pcm = NULL;
  size_t n = 0;
  char err[256];
  assert_int_equal(decode_file(cat, NULL, &pcm, &n, err, sizeof err), 0);
  /* 2 s plus untrimmed encoder delay/padding of each part (< 0.1 s each) */
  printf("chained 44.1k + 22.05k MP3: %zu samples (%.3f s)\n", n, n / 16000.0);
  assert_true(n >= 32000 && n <= 32000 + 3200);
  const size_t starts[] = {4000, 20000};
  for (int h = 0; h < 2; h++) {
    double a = tone_amp(pcm + starts[h], 8000, 440.0);
    assert_true(a > 0.1 && a < 0.14);
    assert_true(tone_amp(pcm + starts[h], 8000, 400.0) < 0.1 * a);
  }
  free(pcm);
}

static void test_mp3_named_wav(void **state) {
  (void)state;
  if (!g_have_ffmpeg)
    skip();
  char path[512];
  snprintf(path, sizeof path, "%s/really_mp3.wav", g_tmp);
  sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i "
     "'sine=frequency=440:sample_rate=44100:duration=1' -c:a libmp3lame -f "
     "mp3 '%s'", path);
  size_t len = 0;
  uint8_t *b = read_all(path, &len);
  assert_non_null(b);
  assert_true(memcmp(b, "RIFF", 4) != 0); /* it is not a WAV inside */
  float *pcm = NULL;
  size_t n = 0;
  char err[256];
  assert_int_equal(sa_audio_decode(b, len, NULL, &pcm, &n, err, sizeof err), 0);
  assert_true(fabs((double)n - 16000.0) <= 80);
  assert_true(fabs(tone_amp(pcm + 4000, 8000, 440.0) - 0.125) < 0.0125);
  free(pcm);
  free(b);
}

/* --- lengths and chunks ------------------------------------------------- */

static void test_chunk_ranges(void **state) {
  (void)state;
  size_t off, len;
  assert_int_equal(sa_audio_chunk_count(0), 0);
  assert_int_equal(sa_audio_chunk_count(1), 1);
  assert_int_equal(sa_audio_chunk_count(400000), 1);
  assert_int_equal(sa_audio_chunk_count(400001), 2);
  assert_int_equal(sa_audio_chunk_range(400001, 1, &off, &len), 0);
  assert_int_equal(off, 400000);
  assert_int_equal(len, 1);
  assert_int_equal(sa_audio_chunk_range(400001, 2, &off, &len), SA_EINVAL);
  assert_int_equal(sa_audio_chunk_range(0, 0, &off, &len), SA_EINVAL);
}

static void test_durations_and_chunks(void **state) {
  (void)state;
  /* n samples at 16 kHz -> expected chunk sizes, worked by hand */
  struct {
    size_t n;
    size_t nchunks;
    size_t sizes[3];
  } cases[] = {
      {1600, 1, {1600}},                      /* 0.1 s */
      {400000, 1, {400000}},                  /* exactly 25 s */
      {400160, 2, {400000, 160}},             /* 25.01 s */
      {976000, 3, {400000, 400000, 176000}},  /* 61 s */
  };
  for (size_t c = 0; c < 4; c++) {
    size_t len = 0;
    uint8_t *w = make_wav16k(cases[c].n, &len);
    float *pcm = NULL;
    size_t n = 0;
    char err[256];
    assert_int_equal(sa_audio_decode(w, len, NULL, &pcm, &n, err, sizeof err),
                     0);
    assert_int_equal(n, cases[c].n);
    /* 16 kHz s16 in -> samples are exactly s/32768 */
    assert_true(pcm[n / 3] == (float)(int16_t)(3000.0 * sin(2 * M_PI * 440.0 *
                                      (double)(n / 3) / 16000.0)) / 32768.0f);
    assert_int_equal(sa_audio_chunk_count(n), cases[c].nchunks);
    size_t total = 0;
    for (size_t i = 0; i < cases[c].nchunks; i++) {
      size_t off, cl;
      assert_int_equal(sa_audio_chunk_range(n, i, &off, &cl), 0);
      assert_int_equal(off, total);
      assert_int_equal(cl, cases[c].sizes[i]);
      total += cl;
    }
    assert_int_equal(total, n);
    free(pcm);
    free(w);
  }
}

static void test_resampled_61s_stereo(void **state) {
  (void)state;
  /* 61 s at 44.1 kHz stereo -> 976000 samples at 16 kHz (+-2), 3 chunks */
  size_t frames = 61 * 44100;
  int16_t *s = malloc(frames * 2 * sizeof(int16_t));
  for (size_t i = 0; i < frames; i++) {
    s[2 * i] = (int16_t)(8000.0 * sin(2 * M_PI * 440.0 * (double)i / 44100.0));
    s[2 * i + 1] = (int16_t)-s[2 * i]; /* opposite phase: the average is 0 */
  }
  size_t len = 0;
  uint8_t *w = make_wav(s, frames, 44100, 2, &len);
  free(s);
  float *pcm = NULL;
  size_t n = 0;
  char err[256];
  assert_int_equal(sa_audio_decode(w, len, NULL, &pcm, &n, err, sizeof err), 0);
  printf("61 s 44.1 kHz stereo -> %zu samples\n", n);
  assert_true(labs((long)n - 976000) <= 2);
  assert_int_equal(sa_audio_chunk_count(n), 3);
  double peak = 0;
  for (size_t i = 0; i < n; i++)
    peak = fabs(pcm[i]) > peak ? fabs(pcm[i]) : peak;
  assert_true(peak < 1e-4); /* L + R cancel when averaged */
  free(pcm);
  free(w);
}

static void test_silence_and_clipping(void **state) {
  (void)state;
  size_t len = 0;
  /* silence: decodes to exact zeros; mel is -1.5 everywhere (see test_mel) */
  int16_t *z = calloc(44100, sizeof(int16_t));
  uint8_t *w = make_wav(z, 16000, 16000, 1, &len);
  float *pcm = NULL;
  size_t n = 0;
  char err[256];
  assert_int_equal(sa_audio_decode(w, len, NULL, &pcm, &n, err, sizeof err), 0);
  assert_int_equal(n, 16000);
  for (size_t i = 0; i < n; i++)
    assert_true(pcm[i] == 0.0f);
  sa_mel_t *m = sa_mel_new(16000);
  float *out = malloc(SA_MEL_N_MELS * 200 * sizeof(float));
  size_t T = 0;
  assert_int_equal(sa_mel_compute(m, pcm, n, out, SA_MEL_N_MELS * 200, &T,
                                  NULL), 0);
  for (size_t i = 0; i < SA_MEL_N_MELS * T; i++)
    assert_true(out[i] == -1.5f);
  free(pcm);
  free(w);

  /* clipping: a full-scale square wave, at 16 kHz (exact) and at 44.1 kHz
   * (resampling overshoots past 1.0; float output keeps it, mel stays
   * finite) */
  const int rates[] = {16000, 44100};
  for (int r = 0; r < 2; r++) {
    size_t fr = (size_t)rates[r];
    for (size_t i = 0; i < fr; i++)
      z[i] = (i / 40) % 2 ? 32767 : -32768;
    w = make_wav(z, fr, rates[r], 1, &len);
    assert_int_equal(sa_audio_decode(w, len, NULL, &pcm, &n, err, sizeof err),
                     0);
    double peak = 0;
    for (size_t i = 0; i < n; i++)
      peak = fabs(pcm[i]) > peak ? fabs(pcm[i]) : peak;
    if (rates[r] == 16000) {
      assert_true(pcm[0] == -1.0f);
      assert_true(pcm[40] == 32767.0f / 32768.0f);
    }
    assert_true(peak >= 0.99 && peak < 1.5);
    assert_int_equal(sa_mel_compute(m, pcm, n, out, SA_MEL_N_MELS * 200, &T,
                                    NULL), 0);
    float mx = -1e30f;
    for (size_t i = 0; i < SA_MEL_N_MELS * T; i++) {
      assert_true(isfinite(out[i]));
      mx = out[i] > mx ? out[i] : mx;
    }
    assert_true(mx > 1.0f); /* loud: log10(mel) > 0 */
    free(pcm);
    free(w);
  }
  free(z);
  free(out);
  sa_mel_destroy(&m);
}

/* --- bad input ---------------------------------------------------------- */

static void test_bad_inputs(void **state) {
  (void)state;
  char err[256];
  float *pcm;
  size_t n;
  expect_bad(NULL, 0, NULL, "empty");
  expect_bad("x", 0, NULL, "empty");
  assert_int_equal(sa_audio_decode("x", 1, NULL, NULL, &n, err, sizeof err),
                   SA_EINVAL);

  const char *text = "This is a plain text file, not audio at all.\n"
                     "It has a few lines of words and nothing else.\n";
  expect_bad(text, strlen(text), NULL, NULL);

  /* a tiny but valid PNG (1x1, from the PNG spec's layout) */
  static const uint8_t png[] = {
      0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d,
      0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01,
      0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00,
      0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
      0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00,
      0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};
  expect_bad(png, sizeof png, NULL, NULL);

  /* zero-length audio: a valid WAV header with an empty data chunk */
  size_t len = 0;
  uint8_t *w = make_wav(NULL, 0, 16000, 1, &len);
  expect_bad(w, len, NULL, "no audio");
  free(w);

  /* a header claiming an absurd rate (1 MHz; the limit is 384 kHz) */
  int16_t tone[2000] = {0};
  w = make_wav(tone, 2000, 1000000, 1, &len);
  expect_bad(w, len, NULL, "sample rate");
  free(w);
  w = make_wav(tone, 2000, 384000, 1, &len); /* the highest accepted */
  assert_int_equal(sa_audio_decode(w, len, NULL, &pcm, &n, err, sizeof err), 0);
  free(pcm);
  free(w);

  /* truncated: the first 100 bytes of a 1 s WAV and of a 0.1 s WAV */
  w = make_wav16k(16000, &len);
  expect_bad(w, 100, NULL, "truncated");
  expect_bad(w, 40, NULL, NULL); /* cut inside the header */
  free(w);
  w = make_wav16k(1600, &len);
  expect_bad(w, 100, NULL, "truncated");

  /* over the byte limit, and over the duration limit */
  sa_audio_limits_t lim;
  sa_audio_limits_default(&lim);
  assert_int_equal(lim.max_bytes, (size_t)64 << 20);
  assert_true(lim.max_seconds == 1200.0);
  lim.max_bytes = len - 1;
  expect_bad(w, len, &lim, "limit");
  free(w);
  sa_audio_limits_default(&lim);
  lim.max_seconds = 0.5; /* the header says 1 s: caught while decoding */
  w = make_wav16k(16000, &len);
  expect_bad(w, len, &lim, "limit");
  free(w);
  lim.max_seconds = 10; /* the header says 61 s: caught before decoding */
  w = make_wav16k(976000, &len);
  expect_bad(w, len, &lim, "limit");
  lim.max_seconds = 61.0; /* exactly at the limit passes */
  assert_int_equal(sa_audio_decode(w, len, &lim, &pcm, &n, err, sizeof err), 0);
  assert_int_equal(n, 976000);
  free(pcm);
  free(w);
}

static void test_truncated_and_non_audio_files(void **state) {
  (void)state;
  if (!g_have_ffmpeg)
    skip();
  char path[512];
  /* first 100 bytes of an MP3 */
  snprintf(path, sizeof path, "%s/t.mp3", g_tmp);
  sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i "
     "'sine=frequency=440:sample_rate=44100:duration=2' -c:a libmp3lame '%s'",
     path);
  size_t len = 0;
  uint8_t *b = read_all(path, &len);
  assert_non_null(b);
  expect_bad(b, 100, NULL, NULL);
  free(b);
  /* a PNG made by ffmpeg, and a video-only file */
  snprintf(path, sizeof path, "%s/img.png", g_tmp);
  sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i "
     "'color=c=red:s=32x32' -frames:v 1 '%s'", path);
  b = read_all(path, &len);
  expect_bad(b, len, NULL, NULL);
  free(b);
  snprintf(path, sizeof path, "%s/video.mkv", g_tmp);
  sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i "
     "'testsrc=s=32x32:d=1' -c:v ffv1 '%s'", path);
  b = read_all(path, &len);
  expect_bad(b, len, NULL, "no audio stream");
  free(b);
}

static void test_garbage_does_not_crash(void **state) {
  (void)state;
  /* Random bytes and bit-flipped WAVs: any answer but a crash or a hang;
   * a failure must carry a reason. */
  uint32_t x = 7;
  size_t len = 0;
  uint8_t *w = make_wav16k(4000, &len);
  uint8_t *buf = malloc(len);
  for (int it = 0; it < 40; it++) {
    if (it < 10) {
      for (size_t i = 0; i < len; i++) {
        x = x * 1664525u + 1013904223u;
        buf[i] = (uint8_t)(x >> 24);
      }
    } else {
      memcpy(buf, w, len);
      for (int k = 0; k < 8; k++) {
        x = x * 1664525u + 1013904223u;
        buf[(x >> 8) % 64] ^= (uint8_t)(x >> 24); /* damage the header */
      }
    }
    float *pcm = NULL;
    size_t n = 0;
    char err[256];
    int rc = sa_audio_decode(buf, len, NULL, &pcm, &n, err, sizeof err);
    if (rc == 0) {
      assert_non_null(pcm);
      assert_true(n > 0);
    } else {
      assert_null(pcm);
      assert_true(strlen(err) > 0);
    }
    free(pcm);
  }
  free(buf);
  free(w);
}

static void test_fixture_clips(void **state) {
  (void)state;
  struct stat sb;
  if (stat(AUDIO_DIR, &sb) != 0) {
    fail_msg("fixtures not found at %s (re-run cmake)", AUDIO_DIR);
  }
  const char *names[] = {"mmau_test", "Speaker_Trait_Inference",
                         "spoken_mqa_test",
                         "music_playing_followed_by_a_woman_speaking"};
  const size_t want[] = {160000, 75093, 160118, 160000};
  for (int i = 0; i < 4; i++) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.wav", AUDIO_DIR, names[i]);
    float *pcm = NULL;
    size_t n = 0;
    char err[256];
    assert_int_equal(decode_file(path, NULL, &pcm, &n, err, sizeof err), 0);
    assert_int_equal(n, want[i]);
    free(pcm);
  }
}

static int setup(void **state) {
  (void)state;
  snprintf(g_tmp, sizeof g_tmp, "/tmp/sa_test_audio_XXXXXX");
  if (!mkdtemp(g_tmp))
    return -1;
  g_have_ffmpeg = system("ffmpeg -version >/dev/null 2>&1") == 0;
  if (!g_have_ffmpeg)
    printf("NOTE: ffmpeg command not found; ffmpeg-made cases skipped\n");
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
  return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_chunk_ranges),
      cmocka_unit_test(test_durations_and_chunks),
      cmocka_unit_test(test_resampled_61s_stereo),
      cmocka_unit_test(test_silence_and_clipping),
      cmocka_unit_test(test_bad_inputs),
      cmocka_unit_test(test_garbage_does_not_crash),
      cmocka_unit_test(test_fixture_clips),
      cmocka_unit_test(test_formats_rates_layouts),
      cmocka_unit_test(test_multichannel_average),
      cmocka_unit_test(test_mp3_named_wav),
      cmocka_unit_test(test_rate_change_midstream),
      cmocka_unit_test(test_truncated_and_non_audio_files),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
