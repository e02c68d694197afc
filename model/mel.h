/*
 * mel — the Step-Audio log-mel front end (docs/model.md), per chunk of
 * 16 kHz mono audio (at most 25 s = 400000 samples).
 *
 * For a chunk of N samples: pad 479 zeros on the right; STFT with n_fft 400,
 * hop 160, a periodic Hann window, centred with reflect padding of 200 on
 * both sides (torch.stft center=True, pad_mode="reflect"); power |X|^2; drop
 * the last frame, leaving T = floor((N + 479) / 160) frames; a 128 x 201 mel
 * filterbank equal to librosa.filters.mel(sr=16000, n_fft=400, n_mels=128)
 * (Slaney mel scale, Slaney area normalisation, 0-8000 Hz, weights rounded to
 * float32 as librosa stores them), computed here from its definition;
 * log10(max(mel, 1e-10)); clamp below at (max over the chunk - 8);
 * (x + 4) / 4. The encoder's valid length is x_len = T - 2.
 *
 * Output layout: float32 [128, T], mel-major like torch's (n_mels, frames):
 * out[m * T + t] is mel bin m of frame t.
 *
 * The arithmetic (window, real FFT via a mixed-radix complex FFT of length
 * 200, power, filterbank, log10) runs in double; the log is held in the
 * float32 output between the max pass and the clamp (error < 1e-6).
 * This module is not the encoder and does no audio decoding (see audio.h).
 */
#ifndef SA_MEL_H
#define SA_MEL_H

#include <stddef.h>

#define SA_MEL_N_MELS 128
#define SA_MEL_N_FFT 400
#define SA_MEL_HOP 160
#define SA_MEL_N_FREQS 201 /* n_fft / 2 + 1 */
#define SA_MEL_RIGHT_PAD 479

typedef struct sa_mel sa_mel_t;

/* Number of frames T = floor((n_samples + 479) / 160) of a chunk; 0 for 0. */
size_t sa_mel_frames(size_t n_samples);

/* Valid length x_len = T - 2 of a chunk of n_samples (> 0) samples. */
size_t sa_mel_valid_len(size_t n_samples);

/* Builds the window, FFT tables and the filterbank, and reserves scratch
 * for chunks of up to max_samples samples (0 means 400000). Caller owns the
 * result (free with sa_mel_destroy); NULL on allocation failure (logged).
 * The object is immutable after creation except for its scratch space, so
 * one sa_mel_t serves one thread at a time. */
sa_mel_t *sa_mel_new(size_t max_samples);

/* Frees *m (may be NULL) and sets it to NULL. */
void sa_mel_destroy(sa_mel_t **m);

/* The filterbank, float32 [128, 201] row-major (mel-major). Borrowed, valid
 * until sa_mel_destroy. */
const float *sa_mel_filters(const sa_mel_t *m);

/* Computes the log-mel of the chunk pcm[0..n) (borrowed) into out, which
 * holds out_cap floats; the result is [128, T] mel-major (see above).
 * Stores T in *n_frames and x_len in *x_len (either may be NULL).
 * Returns 0; SA_EINVAL if n is 0, over the max_samples given to
 * sa_mel_new, or if out_cap < 128 * T. Allocates nothing. Not reentrant on
 * the same m (it uses m's scratch); distinct objects may run in parallel. */
int sa_mel_compute(sa_mel_t *m, const float *pcm, size_t n, float *out,
                   size_t out_cap, size_t *n_frames, size_t *x_len);

#endif /* SA_MEL_H */
