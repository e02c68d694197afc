/* libFuzzer target for model/audio's decode entry (any container, any codec,
 * from memory), followed by the mel front end on the first 50 ms of
 * whatever decoded (the mel is plain arithmetic; a longer slice only spends
 * the fuzzer's time in the FFT). Limits are kept small so each input stays
 * fast; the contract checked: 0 with a non-empty buffer, or an error with
 * NULL output and a reason, never a crash, a leak or a hang. Seeds:
 * tests/fuzz/corpus_audio (real WAV, MP3, FLAC, Ogg of a few ms); run with
 * -max_len=4096.
 *
 * Build: CC=clang cmake -S . -B build-fuzz -DSA_FUZZ=ON && cmake --build
 * build-fuzz --target fuzz_audio; run: build-fuzz/tests/fuzz_audio corpus/ */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "audio.h"
#include "log.h"
#include "mel.h"
#include "sa_error.h"

static sa_mel_t *g_mel;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!g_mel) {
    sa_log_set_level(SA_LOG_LEVEL_ERROR);
    g_mel = sa_mel_new(SA_AUDIO_CHUNK_SAMPLES);
    if (!g_mel)
      abort();
  }
  sa_audio_limits_t lim = {.max_bytes = 1 << 20, .max_seconds = 30.0};
  float *pcm = NULL;
  size_t n = 0;
  char err[256];
  int rc = sa_audio_decode(data, size, &lim, &pcm, &n, err, sizeof err);
  if (rc == 0) {
    if (!pcm || n == 0 || n > 30 * SA_AUDIO_SAMPLE_RATE)
      abort();
    size_t off, len;
    if (sa_audio_chunk_range(n, 0, &off, &len) != 0)
      abort();
    if (len > SA_AUDIO_SAMPLE_RATE / 20)
      len = SA_AUDIO_SAMPLE_RATE / 20;
    size_t T = sa_mel_frames(len);
    float *out = malloc((size_t)SA_MEL_N_MELS * T * sizeof(float));
    if (!out || sa_mel_compute(g_mel, pcm + off, len, out,
                               (size_t)SA_MEL_N_MELS * T, NULL, NULL) != 0)
      abort();
    free(out);
    free(pcm);
  } else {
    if (pcm || n != 0 || err[0] == '\0')
      abort();
  }
  return 0;
}
