/* sa-model pcm / mel / encode — dump the audio path's intermediate results as
 * .npy: 16 kHz mono PCM, one chunk's log-mel, and the embedding rows of the
 * audio encoder + adaptor (what sa-encoder serves). */
#include "sa_model.h"

#include "audio.h"
#include "audio_encoder.h"
#include "config.h"
#include "mel.h"
#include "npy.h"
#include "sa_error.h"
#include "safetensors.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a whole file (caller frees); NULL and a message on failure. */
static void *read_all(const char *cmd, const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "%s: cannot open %s\n", cmd, path);
    return NULL;
  }
  void *buf = NULL;
  if (fseek(f, 0, SEEK_END) == 0) {
    long n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) {
      buf = malloc((size_t)n + 1);
      if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
      } else if (buf) {
        *len = (size_t)n;
      }
    }
  }
  fclose(f);
  if (!buf)
    fprintf(stderr, "%s: cannot read %s\n", cmd, path);
  return buf;
}

int sa_model_decode_audio_file(const char *cmd, const char *path, double max_s,
                               float **pcm, size_t *n) {
  size_t len = 0;
  void *bytes = read_all(cmd, path, &len);
  if (!bytes)
    return 1;
  sa_audio_limits_t lim;
  sa_audio_limits_default(&lim);
  lim.max_bytes = len > lim.max_bytes ? len : lim.max_bytes;
  if (max_s > 0)
    lim.max_seconds = max_s;
  char err[256];
  int rc = sa_audio_decode(bytes, len, &lim, pcm, n, err, sizeof err);
  free(bytes);
  if (rc != 0) {
    fprintf(stderr, "%s: %s: %s\n", cmd, path, err);
    return 1;
  }
  return 0;
}

static bool parse_seconds(const char *cmd, const char *s, double *out) {
  float f;
  if (!sa_model_parse_f32(s, &f) || f <= 0) {
    fprintf(stderr, "%s: bad --max-seconds\n", cmd);
    return false;
  }
  *out = f;
  return true;
}

/* ------------------------------------------------------------------ pcm */

static void pcm_help(FILE *f) {
  fprintf(f,
          "usage: sa-model pcm --audio FILE --out PCM.npy [--max-seconds S]\n"
          "Decodes any audio container/codec (FFmpeg) to 16 kHz mono and\n"
          "writes float32 [N] samples.\n");
}

int sa_model_cmd_pcm(int argc, char **argv) {
  const char *audio = NULL, *out = NULL;
  double max_s = 0;
  static const struct option lo[] = {{"audio", 1, 0, 'a'},
                                     {"out", 1, 0, 'o'},
                                     {"max-seconds", 1, 0, 's'},
                                     {"help", 0, 0, 'h'},
                                     {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
    case 'a': audio = optarg; break;
    case 'o': out = optarg; break;
    case 's':
      if (!parse_seconds("pcm", optarg, &max_s))
        return 2;
      break;
    case 'h': pcm_help(stdout); return 0;
    default: pcm_help(stderr); return 2;
    }
  }
  if (!audio || !out || optind != argc) {
    pcm_help(stderr);
    return 2;
  }
  float *pcm = NULL;
  size_t n = 0;
  if (sa_model_decode_audio_file("pcm", audio, max_s, &pcm, &n) != 0)
    return 1;
  int64_t shape[1] = {(int64_t)n};
  int rc = sa_npy_write_f32(out, pcm, 1, shape);
  free(pcm);
  if (rc != 0) {
    fprintf(stderr, "pcm: cannot write %s: %s\n", out, sa_strerror(rc));
    return 1;
  }
  printf("%zu samples (%.3f s) -> %s\n", n, (double)n / SA_AUDIO_SAMPLE_RATE,
         out);
  return 0;
}

/* ------------------------------------------------------------------ mel */

static void mel_help(FILE *f) {
  fprintf(f,
          "usage: sa-model mel --audio FILE --out MEL.npy [--chunk K]\n"
          "                    [--max-seconds S]\n"
          "Writes the log-mel spectrogram of 25 s chunk K (default 0) as\n"
          "float32 [128, T], T = floor((N + 479) / 160) for the chunk's N\n"
          "samples. Prints the chunk count and T.\n");
}

int sa_model_cmd_mel(int argc, char **argv) {
  const char *audio = NULL, *out = NULL;
  int64_t chunk = 0;
  double max_s = 0;
  static const struct option lo[] = {{"audio", 1, 0, 'a'},
                                     {"out", 1, 0, 'o'},
                                     {"chunk", 1, 0, 'k'},
                                     {"max-seconds", 1, 0, 's'},
                                     {"help", 0, 0, 'h'},
                                     {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
    case 'a': audio = optarg; break;
    case 'o': out = optarg; break;
    case 'k':
      if (!sa_model_parse_i64(optarg, &chunk) || chunk < 0) {
        fprintf(stderr, "mel: bad --chunk\n");
        return 2;
      }
      break;
    case 's':
      if (!parse_seconds("mel", optarg, &max_s))
        return 2;
      break;
    case 'h': mel_help(stdout); return 0;
    default: mel_help(stderr); return 2;
    }
  }
  if (!audio || !out || optind != argc) {
    mel_help(stderr);
    return 2;
  }
  float *pcm = NULL;
  size_t n = 0;
  if (sa_model_decode_audio_file("mel", audio, max_s, &pcm, &n) != 0)
    return 1;
  int status = 1;
  sa_mel_t *mel = NULL;
  float *buf = NULL;
  size_t n_chunks = sa_audio_chunk_count(n), off = 0, len = 0;
  if (sa_audio_chunk_range(n, (size_t)chunk, &off, &len) != 0) {
    fprintf(stderr, "mel: --chunk %lld: the audio has %zu chunk(s)\n",
            (long long)chunk, n_chunks);
    goto out;
  }
  size_t T = sa_mel_frames(len), frames = 0;
  mel = sa_mel_new(SA_AUDIO_CHUNK_SAMPLES);
  buf = malloc(SA_MEL_N_MELS * T * sizeof(float) + 1);
  if (!mel || !buf) {
    fprintf(stderr, "mel: out of memory\n");
    goto out;
  }
  int rc = sa_mel_compute(mel, pcm + off, len, buf, SA_MEL_N_MELS * T,
                          &frames, NULL);
  if (rc != 0) {
    fprintf(stderr, "mel: %s\n", sa_strerror(rc));
    goto out;
  }
  int64_t shape[2] = {SA_MEL_N_MELS, (int64_t)frames};
  if ((rc = sa_npy_write_f32(out, buf, 2, shape)) != 0) {
    fprintf(stderr, "mel: cannot write %s: %s\n", out, sa_strerror(rc));
    goto out;
  }
  printf("chunk %lld of %zu: %zu samples, T = %zu frames, %d audio tokens -> "
         "%s\n", (long long)chunk, n_chunks, len, frames,
         sa_audio_chunk_tokens((int)frames), out);
  status = 0;
out:
  sa_mel_destroy(&mel);
  free(buf);
  free(pcm);
  return status;
}

/* --------------------------------------------------------------- encode */

static void encode_help(FILE *f) {
  fprintf(f,
          "usage: sa-model encode --model DIR --audio FILE --out EMB.npy\n"
          "                       [--device cpu|ref|cuda[:N]] [--threads N]\n"
          "                       [--max-seconds S]\n"
          "Runs decode, log-mel, the audio encoder and the adaptor over every\n"
          "25 s chunk and writes float32 [audio tokens, hidden], the chunks'\n"
          "rows in order. Prints the tokens of each chunk.\n");
}

int sa_model_cmd_encode(int argc, char **argv) {
  const char *model = NULL, *audio = NULL, *out = NULL, *dev = "cpu";
  int64_t threads = 0;
  double max_s = 0;
  static const struct option lo[] = {
      {"model", 1, 0, 'm'},  {"audio", 1, 0, 'a'},       {"out", 1, 0, 'o'},
      {"device", 1, 0, 'd'}, {"threads", 1, 0, 't'},     {"max-seconds", 1, 0, 's'},
      {"help", 0, 0, 'h'},   {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
    case 'm': model = optarg; break;
    case 'a': audio = optarg; break;
    case 'o': out = optarg; break;
    case 'd': dev = optarg; break;
    case 't':
      if (!sa_model_parse_i64(optarg, &threads) || threads < 0 ||
          threads > 1024) {
        fprintf(stderr, "encode: bad --threads\n");
        return 2;
      }
      break;
    case 's':
      if (!parse_seconds("encode", optarg, &max_s))
        return 2;
      break;
    case 'h': encode_help(stdout); return 0;
    default: encode_help(stderr); return 2;
    }
  }
  if (!model || !audio || !out || optind != argc) {
    encode_help(stderr);
    return 2;
  }
  char err[512] = "";
  int status = 1, rc;
  sa_model_config_t cfg;
  sa_st_t *st = NULL;
  sa_backend_t *be = NULL;
  sa_audio_encoder_t *enc = NULL;
  sa_audio_encoder_ws_t *ws = NULL;
  float *pcm = NULL, *rows = NULL;
  int *ct = NULL;
  size_t n = 0;
  if ((rc = sa_config_load(model, &cfg, err, sizeof err)) != 0 ||
      (rc = sa_st_open(model, NULL, NULL, &st, err, sizeof err)) != 0) {
    fprintf(stderr, "encode: %s\n", err);
    goto out;
  }
  if (!(be = sa_model_backend(dev, (int)threads)))
    goto out;
  if ((rc = sa_audio_encoder_new(be, &cfg, st, &enc, err, sizeof err)) != 0) {
    fprintf(stderr, "encode: %s\n", err);
    goto out;
  }
  if ((rc = sa_audio_encoder_ws_new(enc, &ws)) != 0) {
    fprintf(stderr, "encode: %s\n", sa_strerror(rc));
    goto out;
  }
  if (sa_model_decode_audio_file("encode", audio, max_s, &pcm, &n) != 0)
    goto out;
  int n_chunks = 0;
  int64_t total = 0, got = 0;
  sa_audio_count_tokens((int64_t)n, &n_chunks, &total);
  const int H = sa_audio_encoder_hidden(enc);
  rows = malloc((size_t)(total ? total : 1) * H * sizeof(float));
  ct = calloc((size_t)n_chunks + 1, sizeof(int));
  if (!rows || !ct) {
    fprintf(stderr, "encode: out of memory\n");
    goto out;
  }
  if ((rc = sa_audio_encoder_encode_pcm(enc, ws, pcm, n, rows, total, ct,
                                        n_chunks, &got, NULL)) != 0) {
    fprintf(stderr, "encode: %s\n", sa_strerror(rc));
    goto out;
  }
  int64_t shape[2] = {got, H};
  if ((rc = sa_npy_write_f32(out, rows, 2, shape)) != 0) {
    fprintf(stderr, "encode: cannot write %s: %s\n", out, sa_strerror(rc));
    goto out;
  }
  printf("%.3f s, %d chunk(s), tokens per chunk:", (double)n / SA_AUDIO_SAMPLE_RATE,
         n_chunks);
  for (int i = 0; i < n_chunks; i++)
    printf(" %d", ct[i]);
  printf("; [%lld, %d] -> %s\n", (long long)got, H, out);
  status = 0;
out:
  free(ct);
  free(rows);
  free(pcm);
  sa_audio_encoder_ws_destroy(&ws);
  sa_audio_encoder_destroy(&enc);
  sa_backend_destroy(&be);
  sa_st_close(&st);
  return status;
}
