/*
 * mel — Step-Audio log-mel front end. See mel.h for the definition, layout
 * and contract. Not the encoder; no decoding.
 *
 * Speed: per frame one complex FFT of length 200 (mixed radix 4*2*5*5,
 * kissfft-style decimation in time) turned into the 201-bin real spectrum
 * of the 400-sample frame, then a sparse filterbank (each mel filter covers
 * a few FFT bins). A 25 s chunk (2502 frames) is a few milliseconds.
 */
#include "mel.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "sa_error.h"

#define FFT_M (SA_MEL_N_FFT / 2) /* complex FFT length */
#define MAX_FACTORS 16
#define MAX_RADIX 8

typedef struct {
  double re, im;
} cpx_t;

struct sa_mel {
  size_t max_samples;
  double window[SA_MEL_N_FFT];
  /* complex FFT of length FFT_M */
  int factors[2 * MAX_FACTORS];
  cpx_t tw[FFT_M];           /* exp(-2 pi i k / FFT_M) */
  cpx_t rtw[SA_MEL_N_FREQS]; /* exp(-2 pi i k / N_FFT), k = 0..200 */
  /* filterbank: float32 as librosa stores it, plus each row's nonzero span */
  float filters[SA_MEL_N_MELS * SA_MEL_N_FREQS];
  int lo[SA_MEL_N_MELS], hi[SA_MEL_N_MELS];
  /* scratch */
  double *padded; /* max_samples + 479 + 400 */
  cpx_t zin[FFT_M], zout[FFT_M];
  double power[SA_MEL_N_FREQS];
};

size_t sa_mel_frames(size_t n_samples) {
  if (n_samples == 0)
    return 0;
  return (n_samples + SA_MEL_RIGHT_PAD) / SA_MEL_HOP;
}

size_t sa_mel_valid_len(size_t n_samples) {
  size_t t = sa_mel_frames(n_samples);
  return t >= 2 ? t - 2 : 0;
}

/* --- librosa's Slaney mel scale ------------------------------------------ */

static const double k_f_sp = 200.0 / 3.0;
static const double k_min_log_hz = 1000.0;

static double hz_to_mel(double f) {
  double min_log_mel = k_min_log_hz / k_f_sp;
  double logstep = log(6.4) / 27.0;
  if (f >= k_min_log_hz)
    return min_log_mel + log(f / k_min_log_hz) / logstep;
  return f / k_f_sp;
}

static double mel_to_hz(double m) {
  double min_log_mel = k_min_log_hz / k_f_sp;
  double logstep = log(6.4) / 27.0;
  if (m >= min_log_mel)
    return k_min_log_hz * exp(logstep * (m - min_log_mel));
  return k_f_sp * m;
}

/* librosa.filters.mel(sr=16000, n_fft=400, n_mels=128, fmin=0, fmax=8000,
 * htk=False, norm="slaney", dtype=float32), step by step as librosa does:
 * triangles computed in float64 and stored as float32, then multiplied by the
 * float64 Slaney norm 2 / (f[i+2] - f[i]) and stored as float32 again. */
static void build_filters(sa_mel_t *m) {
  const int nm = SA_MEL_N_MELS, nf = SA_MEL_N_FREQS;
  double mel_f[SA_MEL_N_MELS + 2];
  double mlo = hz_to_mel(0.0), mhi = hz_to_mel(8000.0);
  double step = (mhi - mlo) / (nm + 1);
  for (int i = 0; i < nm + 2; i++)
    mel_f[i] = mel_to_hz(i == nm + 1 ? mhi : (double)i * step + mlo);
  for (int i = 0; i < nm; i++) {
    double fd0 = mel_f[i + 1] - mel_f[i], fd1 = mel_f[i + 2] - mel_f[i + 1];
    double enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
    m->lo[i] = nf;
    m->hi[i] = 0;
    for (int k = 0; k < nf; k++) {
      double fk = (double)k * (8000.0 / (nf - 1));
      double lower = -(mel_f[i] - fk) / fd0;
      double upper = (mel_f[i + 2] - fk) / fd1;
      double w = fmax(0.0, fmin(lower, upper));
      float w32 = (float)w;
      float v = (float)((double)w32 * enorm);
      m->filters[i * nf + k] = v;
      if (v != 0.0f) {
        if (k < m->lo[i])
          m->lo[i] = k;
        m->hi[i] = k + 1;
      }
    }
    if (m->lo[i] > m->hi[i])
      m->lo[i] = m->hi[i] = 0; /* an empty filter (not with these settings) */
  }
}

/* --- FFT -------------------------------------------------------------------- */

static void factorize(int n, int *factors) {
  int p = 4, i = 0;
  while (n > 1) {
    while (n % p) {
      switch (p) {
      case 4: p = 2; break;
      case 2: p = 3; break;
      default: p += 2; break;
      }
      if (p * p > n)
        p = n;
    }
    n /= p;
    SA_ASSERT(i < MAX_FACTORS && p <= MAX_RADIX, "FFT length must be smooth");
    factors[2 * i] = p;
    factors[2 * i + 1] = n;
    i++;
  }
}

/* Generic radix-p butterfly over p sub-transforms of length mm (kissfft's
 * kf_bfly_generic), twiddles of the full length FFT_M. */
static void bfly(cpx_t *out, size_t fstride, const cpx_t *tw, int mm, int p) {
  cpx_t scratch[MAX_RADIX];
  for (int u = 0; u < mm; u++) {
    for (int q = 0, k = u; q < p; q++, k += mm)
      scratch[q] = out[k];
    for (int q1 = 0, k = u; q1 < p; q1++, k += mm) {
      size_t twidx = 0;
      cpx_t acc = scratch[0];
      for (int q = 1; q < p; q++) {
        twidx += fstride * (size_t)k;
        if (twidx >= FFT_M)
          twidx -= FFT_M;
        const cpx_t a = scratch[q], w = tw[twidx];
        acc.re += a.re * w.re - a.im * w.im;
        acc.im += a.re * w.im + a.im * w.re;
      }
      out[k] = acc;
    }
  }
}

static void fft_work(const sa_mel_t *m, cpx_t *out, const cpx_t *in,
                     size_t fstride, const int *factors) {
  const int p = factors[0], mm = factors[1];
  if (mm == 1) {
    for (int k = 0; k < p; k++)
      out[k] = in[(size_t)k * fstride];
  } else {
    for (int k = 0; k < p; k++)
      fft_work(m, out + (size_t)k * mm, in + (size_t)k * fstride,
               fstride * (size_t)p, factors + 2);
  }
  bfly(out, fstride, m->tw, mm, p);
}

/* Power spectrum |X[k]|^2, k = 0..200, of the 400 real samples x, through one
 * complex FFT of length 200 of z[n] = x[2n] + i x[2n+1]. */
static void power_spectrum(sa_mel_t *m, const double *x) {
  for (int n = 0; n < FFT_M; n++) {
    m->zin[n].re = x[2 * n];
    m->zin[n].im = x[2 * n + 1];
  }
  fft_work(m, m->zout, m->zin, 1, m->factors);
  const cpx_t *Z = m->zout;
  for (int k = 0; k <= FFT_M; k++) {
    cpx_t a = Z[k % FFT_M], b = Z[(FFT_M - k) % FFT_M];
    /* E = (a + conj b) / 2, O = (a - conj b) / (2i) */
    double er = 0.5 * (a.re + b.re), ei = 0.5 * (a.im - b.im);
    double dr = a.re - b.re, di = a.im + b.im;
    double or_ = 0.5 * di, oi = -0.5 * dr;
    const cpx_t w = m->rtw[k];
    double xr = er + (w.re * or_ - w.im * oi);
    double xi = ei + (w.re * oi + w.im * or_);
    m->power[k] = xr * xr + xi * xi;
  }
}

/* --- public ------------------------------------------------------------- */

sa_mel_t *sa_mel_new(size_t max_samples) {
  if (max_samples == 0)
    max_samples = 400000;
  sa_mel_t *m = calloc(1, sizeof *m);
  if (!m)
    goto fail;
  m->max_samples = max_samples;
  if (max_samples > (SIZE_MAX / sizeof(double)) - 1024)
    goto fail;
  m->padded = malloc((max_samples + SA_MEL_RIGHT_PAD + SA_MEL_N_FFT) *
                     sizeof(double));
  if (!m->padded)
    goto fail;
  for (int n = 0; n < SA_MEL_N_FFT; n++) /* periodic Hann */
    m->window[n] = 0.5 - 0.5 * cos(2.0 * M_PI * n / SA_MEL_N_FFT);
  factorize(FFT_M, m->factors);
  for (int k = 0; k < FFT_M; k++) {
    double ph = -2.0 * M_PI * k / FFT_M;
    m->tw[k] = (cpx_t){cos(ph), sin(ph)};
  }
  for (int k = 0; k < SA_MEL_N_FREQS; k++) {
    double ph = -2.0 * M_PI * k / SA_MEL_N_FFT;
    m->rtw[k] = (cpx_t){cos(ph), sin(ph)};
  }
  build_filters(m);
  return m;
fail:
  SA_LOG_ERROR("mel: out of memory for max_samples %zu", max_samples);
  if (m)
    free(m->padded);
  free(m);
  return NULL;
}

void sa_mel_destroy(sa_mel_t **m) {
  if (!m || !*m)
    return;
  free((*m)->padded);
  free(*m);
  *m = NULL;
}

const float *sa_mel_filters(const sa_mel_t *m) { return m->filters; }

int sa_mel_compute(sa_mel_t *m, const float *pcm, size_t n, float *out,
                   size_t out_cap, size_t *n_frames, size_t *x_len) {
  if (!m || !pcm || !out || n == 0 || n > m->max_samples)
    return SA_EINVAL;
  const size_t T = sa_mel_frames(n);
  const size_t pad = SA_MEL_N_FFT / 2;
  if (out_cap / SA_MEL_N_MELS < T)
    return SA_EINVAL;
  /* y = pcm ++ 479 zeros (length L); padded = reflect(y, 200) both sides.
   * L >= 480 > 200, so reflection never leaves y. */
  const size_t L = n + SA_MEL_RIGHT_PAD;
  double *P = m->padded;
  for (size_t i = 0; i < L + 2 * pad; i++) {
    long long j = (long long)i - (long long)pad;
    if (j < 0)
      j = -j;
    else if (j >= (long long)L)
      j = 2 * ((long long)L - 1) - j;
    P[i] = (size_t)j < n ? (double)pcm[j] : 0.0;
  }
  double mx = -INFINITY;
  double frame[SA_MEL_N_FFT];
  for (size_t t = 0; t < T; t++) {
    const double *src = P + t * SA_MEL_HOP;
    for (int j = 0; j < SA_MEL_N_FFT; j++)
      frame[j] = src[j] * m->window[j];
    power_spectrum(m, frame);
    for (int b = 0; b < SA_MEL_N_MELS; b++) {
      const float *w = m->filters + b * SA_MEL_N_FREQS;
      double acc = 0.0;
      for (int k = m->lo[b]; k < m->hi[b]; k++)
        acc += (double)w[k] * m->power[k];
      double lg = log10(acc > 1e-10 ? acc : 1e-10);
      if (lg > mx)
        mx = lg;
      out[(size_t)b * T + t] = (float)lg;
    }
  }
  const double floor_ = mx - 8.0;
  for (size_t i = 0; i < (size_t)SA_MEL_N_MELS * T; i++) {
    double v = out[i];
    if (v < floor_)
      v = floor_;
    out[i] = (float)((v + 4.0) / 4.0);
  }
  if (n_frames)
    *n_frames = T;
  if (x_len)
    *x_len = T - 2;
  return 0;
}
