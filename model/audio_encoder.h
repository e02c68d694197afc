/*
 * audio_encoder — the Step-Audio 2 audio encoder (Whisper-style, 25 Hz) and
 * adaptor (12.5 Hz) of docs/model.md: log-mel chunk in, one embedding row per
 * audio token out.
 *
 * Split per STYLE.md into immutable shared state and per-call state:
 *  - sa_audio_encoder_t holds the weights (`encoder.*`, `adapter.*`) converted
 *    to bf16 and uploaded to a backend once, plus the positional embedding in
 *    fp32. It is read-only after sa_audio_encoder_new.
 *  - sa_audio_encoder_ws_t is the scratch of one forward: every activation
 *    buffer and a mel front end with its output, sized at creation for one
 *    full 25 s chunk (T = 2502 mel frames). Encoding allocates nothing.
 *
 * Each chunk is encoded alone with its own frame count T (a batch of one in
 * the Python reference), so a tail chunk's result does not depend on what it
 * is batched with.
 *
 * This module does not decode audio or compute the mel (model/audio,
 * model/mel), reads no files and opens no sockets: the caller hands it an
 * opened checkpoint (core/safetensors) and a parsed config (core/config).
 */
#ifndef SA_AUDIO_ENCODER_H
#define SA_AUDIO_ENCODER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "audio.h" /* SA_AUDIO_CHUNK_SAMPLES */
#include "config.h"
#include "kernels.h"
#include "safetensors.h"

/* Mel frames of one full chunk (SA_AUDIO_CHUNK_SAMPLES = 25 s at 16 kHz). */
#define SA_AUDIO_CHUNK_MAX_FRAMES 2502

typedef struct sa_audio_encoder sa_audio_encoder_t;
typedef struct sa_audio_encoder_ws sa_audio_encoder_ws_t;

/* --- length formulas (docs/model.md; divisions round toward -inf) --- */

/* Mel frames of a chunk of n_samples samples: floor((n + 479) / 160).
 * Returns 0 for n_samples <= 0. */
int sa_audio_mel_frames(int64_t n_samples);
/* Encoder output length of a chunk of T mel frames: x_len = T - 2,
 * floor(floor((x_len + 1) / 2) / 2). May be 0 (never negative for T >= 0). */
int sa_audio_encoder_len(int T);
/* Audio tokens of a chunk of T mel frames: floor((enc_len - 1) / 2) + 1,
 * 0 when enc_len is 0. 313 for a full 25 s chunk. */
int sa_audio_chunk_tokens(int T);
/* Number of 25 s chunks and the total audio tokens of n_samples samples; the
 * last chunk may be shorter (and may have 0 tokens). Either out may be NULL. */
void sa_audio_count_tokens(int64_t n_samples, int *n_chunks,
                           int64_t *total_tokens);

/* --- model --- */

/* Loads and validates the audio encoder and adaptor of checkpoint `st` with
 * the hyper-parameters of `cfg` (cfg->audio.present must be true; the shapes
 * of every tensor are checked against it), converts them to bf16 and uploads
 * them to `be`. Accepts `encoder.positional_embedding.weight` (the name in
 * Step-Audio 2 checkpoints, an nn.Embedding) or `encoder.positional_embedding`.
 * `be` is borrowed and must outlive the encoder; `st` and `cfg` are only read
 * during the call. Returns 0, SA_ENOENT (a tensor missing), SA_EFORMAT (a
 * shape or dtype disagrees), SA_EINVAL (bad config) or SA_ENOMEM, with a
 * message in err. Caller owns *out. */
int sa_audio_encoder_new(sa_backend_t *be, const sa_model_config_t *cfg,
                         const sa_st_t *st, sa_audio_encoder_t **out,
                         char *err, size_t err_cap);
/* Frees the weights; *enc becomes NULL. Workspaces must be gone first. */
void sa_audio_encoder_destroy(sa_audio_encoder_t **enc);

/* Width of the output rows (the decoder hidden size). */
int sa_audio_encoder_hidden(const sa_audio_encoder_t *enc);
/* Number of mel bins the encoder expects. */
int sa_audio_encoder_n_mels(const sa_audio_encoder_t *enc);
/* The backend it runs on (borrowed). */
sa_backend_t *sa_audio_encoder_backend(const sa_audio_encoder_t *enc);

/* Reserves the scratch for one forward of a full chunk on enc's backend.
 * Returns 0 or SA_ENOMEM. Caller owns *out; it borrows enc. */
int sa_audio_encoder_ws_new(const sa_audio_encoder_t *enc,
                            sa_audio_encoder_ws_t **out);
void sa_audio_encoder_ws_destroy(sa_audio_encoder_ws_t **ws);

/* Encodes n_chunks chunks in order. Chunk c is mels[c], host memory holding
 * float [n_mels, T[c]] row-major (the layout of `sa-model mel`'s npy),
 * 3 <= T[c] <= SA_AUDIO_CHUNK_MAX_FRAMES, or any T[c] >= 0 whose token count
 * is 0 (such a chunk is skipped). Writes the rows of all chunks one after the
 * other into host `out` (float [rows, hidden]) and chunk c's row count into
 * chunk_tokens[c]; *total_rows (may be NULL) gets the sum. Fails with
 * SA_ERANGE, writing nothing further, if the rows would exceed out_cap_rows,
 * and SA_EINVAL for a bad T. Allocates nothing. Runs on the calling thread;
 * calls with different workspaces may run concurrently only if the backend
 * allows concurrent calls (the CPU backends make no such promise, so
 * callers serialise). */
int sa_audio_encoder_run(const sa_audio_encoder_t *enc,
                         sa_audio_encoder_ws_t *ws, const float *const *mels,
                         const int *T, int n_chunks, float *out,
                         int64_t out_cap_rows, int *chunk_tokens,
                         int64_t *total_rows);

/* Encodes 16 kHz mono PCM (host, borrowed) end to end: cuts it into 25 s
 * chunks, computes each chunk's log-mel (model/mel) into the workspace and
 * encodes it, writing the rows of every chunk in order into host `out`
 * (float [rows, hidden], out_cap_rows rows) and the per-chunk token counts
 * into chunk_tokens (chunk_cap entries; sa_audio_count_tokens says how many
 * are needed). If backend_lock is not NULL it is held around each chunk's
 * backend work only, so several workspaces can compute mels in parallel
 * while one backend encodes. Returns 0, SA_EINVAL (n_samples 0), SA_ERANGE
 * (out or chunk_tokens too small) or a backend error. Allocates nothing. */
int sa_audio_encoder_encode_pcm(const sa_audio_encoder_t *enc,
                                sa_audio_encoder_ws_t *ws, const float *pcm,
                                size_t n_samples, float *out,
                                int64_t out_cap_rows, int *chunk_tokens,
                                int chunk_cap, int64_t *total_rows,
                                pthread_mutex_t *backend_lock);

#endif /* SA_AUDIO_ENCODER_H */
