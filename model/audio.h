/*
 * audio — decode any audio container/codec from a memory buffer to 16 kHz
 * mono float PCM, and split it into the model's 25 s chunks.
 *
 * Decoding uses FFmpeg (libavformat/libavcodec/libswresample) over a custom
 * in-memory AVIOContext: the container is recognised from the bytes, never
 * from a file name, so an MP3 named "x.wav" decodes as MP3. Every channel
 * layout is downmixed to mono by averaging the channels with equal weight;
 * every sample rate is resampled to 16 kHz. Bad input (empty, truncated, not
 * audio, no samples, over the configured limits) is answered with SA_EINVAL
 * and a human-readable reason; it never crashes or hangs.
 *
 * This module is not the mel front end (see mel.h), opens no files and no
 * sockets (FFmpeg's own nested opens — HLS segments, playlists, references —
 * are refused), and exposes no FFmpeg types. FFmpeg's own logging is routed
 * into our log at debug level.
 */
#ifndef SA_AUDIO_H
#define SA_AUDIO_H

#include <stddef.h>

/* The model's input: 16 kHz mono, cut into chunks of 25 s. */
#define SA_AUDIO_SAMPLE_RATE 16000
/* The highest input rate accepted (studio audio goes to 384 kHz; a header
 * claiming more is refused as absurd). */
#define SA_AUDIO_MAX_RATE 384000
#define SA_AUDIO_CHUNK_SAMPLES 400000 /* 25 s at 16 kHz */

/* Defaults of sa_audio_limits_t. */
#define SA_AUDIO_DEFAULT_MAX_BYTES ((size_t)64 << 20) /* 64 MiB */
#define SA_AUDIO_DEFAULT_MAX_SECONDS 1200.0            /* 20 min */

/* Limits applied to one decode. A zero field means "use the default". */
typedef struct {
  size_t max_bytes;   /* input size in bytes */
  double max_seconds; /* decoded duration (and any duration the container
                         declares) in seconds */
} sa_audio_limits_t;

/* Fills *lim with the defaults (64 MiB, 20 min). */
void sa_audio_limits_default(sa_audio_limits_t *lim);

/* Decodes `len` bytes at `data` (borrowed, only read during the call) to
 * 16 kHz mono float PCM in [-1, 1] for integer sources (float sources keep
 * their range). `lim` may be NULL for the defaults.
 *
 * On success returns 0, stores a malloc'ed buffer in *pcm (caller owns it and
 * frees it with free()) and its length in *n_samples (always > 0).
 * On failure returns SA_EINVAL for bad input (empty, truncated, not audio,
 * zero-length audio, over a limit), SA_ENOMEM or SA_EINTERNAL otherwise;
 * *pcm is set to NULL, *n_samples to 0, and a one-line reason is written to
 * err (cap bytes, always NUL-terminated; err may be NULL when cap is 0).
 * Thread-safe: calls on different buffers may run concurrently. */
int sa_audio_decode(const void *data, size_t len, const sa_audio_limits_t *lim,
                    float **pcm, size_t *n_samples, char *err, size_t cap);

/* Number of 25 s chunks for n_samples of 16 kHz audio: ceil(n / 400000);
 * 0 for n == 0. */
size_t sa_audio_chunk_count(size_t n_samples);

/* Range of chunk i (0-based) of n_samples: every chunk holds 400000 samples
 * except the last, which holds the rest (1..400000). Stores the first sample
 * in *offset and the count in *len. Returns 0 or SA_EINVAL when i is not a
 * chunk of n_samples. */
int sa_audio_chunk_range(size_t n_samples, size_t i, size_t *offset,
                         size_t *len);

#endif /* SA_AUDIO_H */
