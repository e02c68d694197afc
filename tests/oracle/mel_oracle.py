#!/usr/bin/python3
"""Golden log-mel data for tests/unit/test_mel.c, from an independent reference.

The Step-Audio front end (docs/model.md) computed with PyTorch
(torch.stft, periodic Hann window, center=True, pad_mode="reflect") and a mel
filterbank written in numpy from librosa's definition of
librosa.filters.mel(sr=16000, n_fft=400, n_mels=128) (Slaney scale, Slaney
norm, float32 weights exactly as librosa stores them). Clips are the WAVs in
tests/fixtures/audio, read with the `wave` module (16-bit PCM, 16 kHz;
stereo is averaged to mono).

The reference runs in float64 so the golden data is the exact definition; the
Step-Audio reference itself runs torch in float32, and this script prints how
far that float32 pipeline lands from the float64 one, for the record.

Writes to tests/oracle/golden/mel/ (kept small, well under 1.5 MB):
  filters.bin    float32 [128, 201], the filterbank
  <clip>.bin     float32 [128, C]: the columns t of the [128, T] log-mel with
                 t % step == 0 or t == T - 1 (step 1 = the full mel)
  concat25s.bin  the same for one full 25 s chunk (400000 samples): all clips,
                 sorted by file name, concatenated and cut at 400000
  manifest.txt   one line per clip: name n_samples T x_len step max min mean
                 (statistics of the full float64 log-mel)

Run: /usr/bin/python3 tests/oracle/mel_oracle.py [fixtures_audio_dir]
"""
import os
import sys
import wave

import numpy as np
import torch

SR, N_FFT, HOP, N_MELS, RIGHT_PAD = 16000, 400, 160, 128, 479
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "golden", "mel")
DEFAULT_AUDIO = os.path.join(HERE, "..", "fixtures", "audio")


# --- librosa's Slaney mel scale and filterbank, transcribed -----------------
def hz_to_mel(f):
    f = np.asanyarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    if f.ndim:
        log_t = f >= min_log_hz
        mels[log_t] = min_log_mel + np.log(f[log_t] / min_log_hz) / logstep
    elif f >= min_log_hz:
        mels = min_log_mel + np.log(f / min_log_hz) / logstep
    return mels


def mel_to_hz(mels):
    mels = np.asanyarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    return freqs


def mel_filters(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=None):
    fmax = sr / 2.0 if fmax is None else fmax
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    fftfreqs = np.linspace(0, sr / 2.0, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]  # float64 product stored as float32
    return weights


def log_mel(audio, filters, dtype):
    """audio: 1-D numpy array of one chunk; returns [128, T] numpy float64."""
    x = torch.from_numpy(np.asarray(audio, dtype=np.float64)).to(dtype)
    x = torch.nn.functional.pad(x, (0, RIGHT_PAD))
    window = torch.hann_window(N_FFT, periodic=True, dtype=dtype)
    stft = torch.stft(x, N_FFT, HOP, window=window, center=True,
                      pad_mode="reflect", return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = torch.from_numpy(filters).to(dtype) @ power
    lg = torch.clamp(mel, min=1e-10).log10()
    lg = torch.maximum(lg, lg.max() - 8.0)
    return ((lg + 4.0) / 4.0).double().numpy()


def read_wav(path):
    with wave.open(path, "rb") as w:
        assert w.getsampwidth() == 2 and w.getframerate() == SR, path
        ch = w.getnchannels()
        raw = w.readframes(w.getnframes())
    a = np.frombuffer(raw, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    a = a.reshape(-1, ch)
    if ch > 1:  # average the channels (float32, as the C decoder does)
        a = a.mean(axis=1, dtype=np.float32)
    else:
        a = a[:, 0]
    return a


def main():
    audio_dir = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_AUDIO
    clips = sorted(f for f in os.listdir(audio_dir) if f.endswith(".wav"))
    if not clips:
        sys.exit("no clips in " + audio_dir)
    os.makedirs(OUT, exist_ok=True)
    filters = mel_filters()
    filters.astype("<f4").tofile(os.path.join(OUT, "filters.bin"))
    decoded = {c: read_wav(os.path.join(audio_dir, c)) for c in clips}
    shortest = min(clips, key=lambda c: len(decoded[c]))
    decoded["concat25s.wav"] = np.concatenate([decoded[c] for c in clips])[:400000]
    assert len(decoded["concat25s.wav"]) == 400000
    lines = ["# name n_samples T x_len step max min mean"]
    for c in clips + ["concat25s.wav"]:
        a = decoded[c]
        assert len(a) <= 400000, "fixture clips are one chunk each"
        ref = log_mel(a, filters, torch.float64)
        f32 = log_mel(a, filters, torch.float32)
        T = ref.shape[1]
        assert T == (len(a) + RIGHT_PAD) // HOP
        step = 1 if c == shortest else 16 if c == "concat25s.wav" else 4
        cols = [t for t in range(T) if t % step == 0 or t == T - 1]
        ref[:, cols].astype("<f4").tofile(os.path.join(OUT, c[:-4] + ".bin"))
        lines.append("%s %d %d %d %d %.9g %.9g %.9g" % (
            c[:-4], len(a), T, T - 2, step, ref.max(), ref.min(), ref.mean()))
        print("%-48s N=%d T=%d cols=%d  torch fp32 vs fp64 max|diff| %.3g"
              % (c, len(a), T, len(cols), np.abs(f32 - ref).max()))
    with open(os.path.join(OUT, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print("wrote %s (%d bytes)" % (OUT, total))


if __name__ == "__main__":
    main()
