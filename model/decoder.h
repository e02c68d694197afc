/*
 * decoder — the forward pass of a contiguous layer range [first, last) of the
 * Qwen2 decoder (docs/model.md), batched over sequences, on one backend.
 *
 * A step takes a batch of sequences, each with some new tokens (a prefill
 * chunk or one decode token; prefill and decode mix freely). Rows of the
 * batch are the new tokens of sequence 0, then sequence 1, and so on (M rows
 * in all). The first stage (first == 0) embeds token ids, and any row can
 * instead take a given embedding row (audio). Other stages take hidden states
 * [M, H] in. Each layer:
 *   h = RMSNorm(x); qkv = h·Wqkvᵀ + b (q|k|v fused at load); RoPE (rotate-half,
 *   theta rope_theta) on q and k at each token's absolute position; write k, v
 *   into the paged KV cache; causal GQA attention over the cache;
 *   x += attn·Woᵀ; h = RMSNorm(x); x += down(silu(gate(h)) * up(h)) (gate|up
 *   fused at load).
 * The last stage (last == L) applies the final RMSNorm and the LM head
 * (lm_head.weight, or embed_tokens when tie_word_embeddings) to the rows the
 * caller asks for only; other stages return hidden states.
 *
 * Only the tensors of the layer range are read from the checkpoint; weights
 * stay bf16 and are uploaded to the backend once. Workspaces are sized at
 * load for at most max_tokens rows, max_seqs sequences, max_logit_rows LM-head
 * rows and max_seq_len tokens per sequence: a step beyond them is SA_EINVAL,
 * never a reallocation. The weights (sa_decoder_t) are immutable after load;
 * the KV cache (model/kv) is per-stage state passed to each step.
 *
 * This module does no sampling, scheduling, tokenizing or I/O besides the
 * checkpoint read at load. One thread steps a decoder at a time (the
 * workspaces live in it).
 */
#ifndef SA_DECODER_H
#define SA_DECODER_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "kernels.h"
#include "kv.h"

typedef struct sa_decoder sa_decoder_t;

typedef struct {
  int first_layer;    /* >= 0 */
  int last_layer;     /* <= L; -1 = L */
  int max_tokens;     /* rows per step (sum of new tokens); 0 = 512 */
  int max_seqs;       /* sequences per step; 0 = 64 */
  int max_logit_rows; /* LM-head rows per step; 0 = max_seqs */
  int max_seq_len;    /* tokens per sequence; 0 = 4096 */
  int block_size;     /* KV block size the caches use; 0 = 16 */
} sa_decoder_opts_t;

/* One step's batch. Host pointers, borrowed for the call. */
typedef struct {
  int n_seqs;
  const uint64_t *seq_ids; /* [n_seqs] KV sequence ids (must exist in kv) */
  const int32_t *n_new;    /* [n_seqs] new tokens per sequence, >= 1 */
  const int32_t *pos0;     /* [n_seqs] position of each first new token, or
                              NULL; must equal the cached length */
  /* first stage */
  const int32_t *tokens;     /* [M] ids; rows given in embed_rows ignored */
  int n_embed;               /* rows taking a given embedding */
  const int32_t *embed_rows; /* [n_embed] row indices in [0, M) */
  const float *embeds;       /* [n_embed, H] */
  /* later stages */
  const float *hidden_in; /* [M, H] */
  /* outputs */
  float *hidden_out;         /* [M, H] (stages other than the last) */
  /* Activations in backend memory instead of hidden_in / hidden_out: a later
   * stage finds its M input rows already in sa_decoder_hidden_dev (the
   * caller put them there, e.g. an NCCL receive on the backend's stream), and
   * a stage other than the last leaves its M output rows there (the caller
   * copies or sends them before the next step). hidden_in / hidden_out are
   * then unused and may be NULL. */
  bool hidden_device;
  int n_logits;              /* last stage: rows to run the LM head on */
  const int32_t *logit_rows; /* [n_logits] row indices in [0, M) */
  float *logits;             /* [n_logits, V] */
} sa_decoder_batch_t;

typedef struct {
  size_t layer_bytes;   /* bf16 bytes of the stage's layers */
  size_t embed_bytes;   /* embedding table (0 if not held) */
  size_t lm_head_bytes; /* LM head (0 if not the last stage; shared with
                           embed_bytes when tied) */
  size_t norm_bytes;    /* final norm */
  size_t ws_bytes;      /* workspaces */
  /* weight matrices (fused ones counted once) held in each in-memory
   * format: [0] bf16, [SA_WQ_*] quantized, after the backend's pack_q */
  int matrices[SA_WQ_COUNT_];
} sa_decoder_info_t;

/* Loads layers [first, last) of the checkpoint in dir (config.json and
 * safetensors) onto `be`. cfg may be NULL (read from dir) or a parsed config
 * (copied). Tensors stored as f32/f16 are converted to bf16. Returns 0,
 * SA_ENOENT (file or tensor missing), SA_EFORMAT (shape/dtype), SA_EINVAL
 * (bad range or options), SA_ENOMEM, with a message in err. Caller owns *out;
 * `be` is borrowed and must outlive it. */
int sa_decoder_load(sa_backend_t *be, const char *dir,
                    const sa_model_config_t *cfg,
                    const sa_decoder_opts_t *opts, sa_decoder_t **out,
                    char *err, size_t err_cap);
/* Frees *dec (may be NULL) and its backend memory; sets it NULL. */
void sa_decoder_destroy(sa_decoder_t **dec);

/* Runs one step (see the header comment). Appends the new tokens to each
 * sequence in kv (sa_kv_append) and writes their K/V; on any error the
 * sequences are truncated back to where they were. Synchronous: outputs are
 * in host memory on return. Returns 0, SA_EINVAL (shape beyond what was
 * reserved, missing input/output pointer, bad row index), SA_ERANGE (a token
 * id outside the vocabulary), SA_ENOENT (unknown sequence), SA_ESTATE (pos0
 * differs from the cached length), SA_EFULL (KV pool exhausted) or a backend
 * error. Allocates nothing. */
int sa_decoder_step(sa_decoder_t *dec, sa_kv_t *kv,
                    const sa_decoder_batch_t *b);

/* Per-op time of the steps run while profiling is on (seconds, summed over
 * steps and layers). Profiling syncs the backend after every op, so it
 * slows steps down a little; it is for benchmarks and diagnostics. */
typedef enum {
  SA_DEC_PROF_INPUT,     /* uploads of indices, embed / hidden rows in */
  SA_DEC_PROF_NORM,      /* RMSNorms */
  SA_DEC_PROF_QKV,       /* fused q|k|v matmul */
  SA_DEC_PROF_ROPE,
  SA_DEC_PROF_KV_WRITE,
  SA_DEC_PROF_ATTENTION,
  SA_DEC_PROF_O_PROJ,
  SA_DEC_PROF_GATE_UP,   /* fused gate|up matmul */
  SA_DEC_PROF_SILU_MUL,
  SA_DEC_PROF_DOWN,
  SA_DEC_PROF_LM_HEAD,   /* row gather + final norm + LM head matmul */
  SA_DEC_PROF_OUTPUT,    /* download of logits / hidden rows, final sync */
  SA_DEC_PROF_COUNT_
} sa_decoder_prof_op_t;

typedef struct {
  double seconds[SA_DEC_PROF_COUNT_];
  int steps;
} sa_decoder_prof_t;

/* Turns per-op profiling on (clearing the counters) or off. */
void sa_decoder_profile(sa_decoder_t *dec, int enable);
/* Copies the counters. sa_decoder_prof_name names each op. */
void sa_decoder_profile_read(const sa_decoder_t *dec, sa_decoder_prof_t *out);
const char *sa_decoder_prof_name(int op);

/* Options that make a kv pool for this decoder's layers, holding
 * budget_bytes (or n_blocks if > 0) and max_seqs sequences. */
void sa_decoder_kv_opts(const sa_decoder_t *dec, size_t budget_bytes,
                        int n_blocks, int max_seqs, sa_kv_opts_t *out);
/* The KV cache element type sa_decoder_kv_opts picks, from the environment
 * variable SA_KV_TYPE: "bf16" or unset (the default), "f32" (exact KV for
 * tests and comparisons) or "q8_0" (half of bf16's bytes; docs/quantization.md).
 * Another value is logged and gives -1, which the KV pool refuses. */
int sa_kv_type_default(void);
/* "f32", "bf16", "q8_0" ("?" for another value). */
const char *sa_kv_type_name(int kv_type);

/* The decoder's activation rows in backend memory ([max_tokens, H] f32;
 * device memory on CUDA): see sa_decoder_batch_t.hidden_device. Borrowed,
 * valid while dec lives; its contents change with every step. */
void *sa_decoder_hidden_dev(sa_decoder_t *dec);

/* Borrowed views, valid while dec lives. */
const sa_model_config_t *sa_decoder_config(const sa_decoder_t *dec);
const sa_decoder_opts_t *sa_decoder_opts(const sa_decoder_t *dec);
void sa_decoder_info(const sa_decoder_t *dec, sa_decoder_info_t *out);

#endif /* SA_DECODER_H */
