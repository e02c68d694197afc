/*
 * testmodel — writes random test checkpoints with the exact Step-Audio-R1
 * layout (`sa-model init`; docs/model.md "Test models"). Test support:
 * linked by tests, benchmarks and sa-model, never by the services.
 *
 * A preset fixes the sizes: "tiny" (a few hundred KB, runs in milliseconds;
 * used by the oracle tests) and "small" (a Qwen2.5-0.5B-sized decoder for
 * benchmarks, about 1 GB). The folder gets config.json (flat R1 form with
 * audio_encoder_config), model.safetensors (bf16: decoder `model.*` and
 * `lm_head.weight` unless tied, Whisper-style `encoder.*`, adaptor
 * `adapter.*`) and tokenizer.json / tokenizer_config.json (the synthetic
 * byte-level BPE with the Step special tokens). Weights are normal with a
 * preset standard deviation, norms near 1, drawn from Philox keyed by the
 * seed and the tensor's index: the same preset and seed give the same bytes
 * on every machine. This module does no math on the weights beyond drawing
 * them; it writes files and nothing else.
 */
#ifndef SA_TESTMODEL_H
#define SA_TESTMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Fills *cfg with a preset's configuration ("tiny" or "small") and
 * *n_merges with its tokenizer merge count. Returns 0 or SA_EINVAL for an
 * unknown preset. vocab_size is the padded size the preset uses. */
int sa_testmodel_preset(const char *preset, sa_model_config_t *cfg,
                        int *n_merges);

/* Writes the preset's checkpoint into dir (created if missing). Returns 0 or
 * a negative SA_E* code with a reason in err. Single-threaded; allocates the
 * whole safetensors payload in host memory while writing. */
int sa_testmodel_write(const char *preset, uint64_t seed, const char *dir,
                       char *err, size_t err_cap);

#endif /* SA_TESTMODEL_H */
