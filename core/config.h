/*
 * config — a checkpoint's config.json: the decoder (Qwen2) and audio encoder
 * hyper-parameters, validated.
 *
 * Accepts the flat form (Step-Audio-R1: decoder fields at top level plus
 * `audio_encoder_config`) and the nested form (`text_config` +
 * `audio_encoder_config`). Missing optional fields take Qwen2 / Step-Audio
 * defaults (documented in config.c). Validation: sizes positive, heads divide
 * hidden and each other, head_dim even, dtype known. This module reads no
 * weights.
 */
#ifndef SA_CONFIG_H
#define SA_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include "tensor.h"

typedef struct {
  /* decoder */
  int hidden_size;          /* H */
  int num_hidden_layers;    /* L */
  int num_attention_heads;  /* nh */
  int num_key_value_heads;  /* nkv */
  int head_dim;             /* hd = H / nh unless given */
  int intermediate_size;    /* I */
  int vocab_size;           /* V */
  int max_position_embeddings;
  float rms_norm_eps;
  float rope_theta;
  bool tie_word_embeddings;
  sa_dtype_t dtype;         /* torch_dtype */
  /* audio encoder (present = false when the checkpoint has none) */
  struct {
    bool present;
    int n_mels;             /* 128 */
    int n_state;            /* S */
    int n_layer;
    int n_head;
    int n_ctx;              /* positional embedding rows */
    int adapter_hidden;     /* 2048 (linear1 output) */
    int kernel_size;        /* adaptor conv kernel, 3 */
    int adapter_stride;     /* 2 */
    int llm_dim;            /* adaptor output; must equal hidden_size */
  } audio;
} sa_model_config_t;

/* Parses and validates config.json text (len bytes, need not be
 * NUL-terminated). Each decoder field is looked up in `text_config` first
 * (nested form) and then at top level (flat form). Returns 0, or SA_EFORMAT
 * (SA_ENOMEM) with a message in err naming the field; *out is fully written
 * only on success. Reentrant; caller owns *out. */
int sa_config_parse(const char *json, size_t len, sa_model_config_t *out,
                    char *err, size_t err_cap);
/* Reads DIR/config.json (or DIR itself when it names a .json file) and parses
 * it. Returns 0, SA_ENOENT, SA_EIO or SA_EFORMAT, with the path in err. */
/* The name a checkpoint folder goes by: the last component of dir (trailing
 * slashes ignored; "model" when there is none, as for "/"), written into
 * out[cap] (cut to fit). The default name clients use for the served model. */
void sa_config_model_name(const char *dir, char *out, size_t cap);

int sa_config_load(const char *dir, sa_model_config_t *out, char *err,
                   size_t err_cap);
/* Checks a filled struct by the same rules as sa_config_parse (head_dim is
 * taken as given). Returns 0 or SA_EFORMAT with a message naming the field.
 * For configs built in code (sa-model init presets). */
int sa_config_validate(const sa_model_config_t *c, char *err, size_t err_cap);
/* Writes the config in the flat R1 form to path (for sa-model init): decoder
 * fields at top level (head_dim included), plus audio_encoder_config when
 * c->audio.present. Validates first. Returns 0, SA_EFORMAT (invalid config,
 * nothing written) or SA_EIO. Parsing the file gives back *c exactly. */
int sa_config_write(const char *path, const sa_model_config_t *c);

#endif /* SA_CONFIG_H */
