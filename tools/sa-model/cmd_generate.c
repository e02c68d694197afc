/* sa-model generate — single-process reference generation.
 *
 * Runs the whole decoder [0, L) through model/decoder and samples with
 * model/sampler, exactly the per-token path the pipeline's workers take:
 * the prompt is prefilled in chunks of up to --chunk tokens, then one token
 * per step; token i of the output (absolute position p = prompt length + i)
 * is drawn with the RNG key (sa_rng_chain_seed(seed, chain), 0, p) — the key
 * chain `chain` of an n-way cluster request with that seed uses. With --audio
 * the clip is decoded and encoded in process (model/audio, model/mel,
 * model/audio_encoder: what sa-encoder runs) and its rows replace the audio
 * patch slots of the prompt, audio first, then the text. */
#include "sa_model.h"

#include "audio_encoder.h"
#include "chat.h"
#include "decoder.h"
#include "safetensors.h"
#include "kv.h"
#include "sa_error.h"
#include "sampler.h"
#include "tokenizer.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void help(FILE *f) {
  fprintf(f,
          "usage: sa-model generate --model DIR [--audio FILE] [--prompt TEXT]\n"
          "         --max-tokens N [--seed S] [--chain C] [--system TEXT] [--greedy]\n"
          "         [--temperature T] [--top-k K] [--top-p P] [--min-p P]\n"
          "         [--repetition-penalty R] [--ids] [--chunk N]\n"
          "         [--device cpu|ref] [--threads N]\n"
          "Builds the Step-Audio chat prompt with the audio (encoded in process)\n"
          "and TEXT as the user turn, then\n"
          "generates up to N tokens (stops at <|EOT|>) and prints the text.\n"
          "--ids also prints the prompt and generated token ids.\n"
          "Defaults: seed 0, chain 0, temperature 1, no top-k/top-p/min-p,\n"
          "no repetition penalty.\n");
}

/* Decodes and encodes the clip at path with the checkpoint's audio encoder on
 * be: *rows gets float [*n_rows, hidden] (caller frees), chunk_tokens the
 * audio tokens of each 25 s chunk (at most 64 chunks). 0 or an error. */
static int generate_audio_rows(sa_backend_t *be, const char *model, const char *path,
                               float **rows, int64_t *n_rows, int *chunk_tokens,
                               int *n_chunks, char *err, size_t cap) {
  int rc = SA_EIO;
  float *pcm = NULL;
  size_t n_pcm = 0;
  sa_st_t *st = NULL;
  sa_audio_encoder_t *enc = NULL;
  sa_audio_encoder_ws_t *ws = NULL;
  sa_model_config_t cfg;
  if (sa_model_decode_audio_file("generate", path, 0, &pcm, &n_pcm)) {
    snprintf(err, cap, "cannot use the audio of %s", path);
    return SA_EINVAL;
  }
  if ((rc = sa_config_load(model, &cfg, err, cap)))
    goto out;
  sa_st_layer_range_t want = {.audio = true};
  if ((rc = sa_st_open(model, sa_st_filter_layer_range, &want, &st, err, cap)) ||
      (rc = sa_audio_encoder_new(be, &cfg, st, &enc, err, cap)) ||
      (rc = sa_audio_encoder_ws_new(enc, &ws)))
    goto out;
  int64_t total = 0;
  int nc = 0;
  sa_audio_count_tokens((int64_t)n_pcm, &nc, &total);
  if (nc > 64) {
    snprintf(err, cap, "%s: more than 64 chunks of 25 s", path);
    rc = SA_ERANGE;
    goto out;
  }
  int H = sa_audio_encoder_hidden(enc);
  *rows = malloc(sizeof(float) * (size_t)(total > 0 ? total : 1) * (size_t)H);
  if (!*rows) {
    rc = SA_ENOMEM;
    goto out;
  }
  rc = sa_audio_encoder_encode_pcm(enc, ws, pcm, n_pcm, *rows, total, chunk_tokens, 64, n_rows,
                                   NULL);
  *n_chunks = nc;
  if (rc)
    snprintf(err, cap, "encoding %s: %s", path, sa_strerror(rc));
out:
  sa_audio_encoder_ws_destroy(&ws);
  sa_audio_encoder_destroy(&enc);
  sa_st_close(&st);
  free(pcm);
  return rc;
}

int sa_model_cmd_generate(int argc, char **argv) {
  const char *model = NULL, *prompt = NULL, *dev = "cpu", *system = NULL;
  const char *audio_path = NULL;
  int64_t max_new = -1, seed = 0, chain = 0, threads = 0, chunk = 512, v;
  int print_ids = 0;
  sa_sampler_params_t sp;
  sa_sampler_params_default(&sp);
  static const struct option lo[] = {
      {"model", 1, 0, 'm'},       {"prompt", 1, 0, 'p'},
      {"max-tokens", 1, 0, 'n'},  {"seed", 1, 0, 's'},
      {"chain", 1, 0, 'c'},       {"temperature", 1, 0, 'T'},
      {"top-k", 1, 0, 'k'},       {"top-p", 1, 0, 'P'},
      {"min-p", 1, 0, 'M'},       {"repetition-penalty", 1, 0, 'r'},
      {"greedy", 0, 0, 'g'},      {"ids", 0, 0, 'i'},
      {"device", 1, 0, 'd'},      {"threads", 1, 0, 't'},
      {"chunk", 1, 0, 'C'},       {"system", 1, 0, 'S'},
      {"audio", 1, 0, 'a'},
      {"help", 0, 0, 'h'},        {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    bool ok = true;
    switch (c) {
    case 'm': model = optarg; break;
    case 'p': prompt = optarg; break;
    case 'a': audio_path = optarg; break;
    case 'S': system = optarg; break;
    case 'd': dev = optarg; break;
    case 'g': sp.greedy = true; break;
    case 'i': print_ids = 1; break;
    case 'n': ok = sa_model_parse_i64(optarg, &max_new) && max_new >= 0; break;
    case 's': ok = sa_model_parse_i64(optarg, &seed) && seed >= 0; break;
    case 'c': ok = sa_model_parse_i64(optarg, &chain) && chain >= 0 &&
                   chain <= UINT32_MAX; break;
    case 't': ok = sa_model_parse_i64(optarg, &threads) && threads >= 0 &&
                   threads <= 1024; break;
    case 'C': ok = sa_model_parse_i64(optarg, &chunk) && chunk > 0 &&
                   chunk <= 65536; break;
    case 'k': ok = sa_model_parse_i64(optarg, &v) && v >= 0 && v < (1 << 30);
      sp.top_k = (int)v; break;
    case 'T': ok = sa_model_parse_f32(optarg, &sp.temperature); break;
    case 'P': ok = sa_model_parse_f32(optarg, &sp.top_p); break;
    case 'M': ok = sa_model_parse_f32(optarg, &sp.min_p); break;
    case 'r': ok = sa_model_parse_f32(optarg, &sp.repetition_penalty); break;
    case 'h': help(stdout); return 0;
    default: help(stderr); return 2;
    }
    if (!ok) {
      fprintf(stderr, "generate: bad value '%s'\n", optarg);
      return 2;
    }
  }
  if (!prompt)
    prompt = "";
  if (!model || (!prompt[0] && !audio_path) || max_new < 0 || optind != argc) {
    help(stderr);
    return 2;
  }
  if (sa_sampler_params_check(&sp)) {
    fprintf(stderr, "generate: bad sampling parameters\n");
    return 2;
  }
  char err[512] = "";
  int status = 1, rc;
  sa_tokenizer_t *tok = NULL;
  sa_backend_t *be = NULL;
  sa_decoder_t *dec = NULL;
  sa_kv_t *kv = NULL;
  sa_sampler_t *smp = NULL;
  int32_t *seq = NULL;
  float *logits = NULL;
  size_t T0 = 0;
  /* audio */
  float *rows = NULL, *embeds = NULL;
  int32_t *audio_pos = NULL, *embed_rows = NULL;
  int64_t n_rows = 0;
  int chunk_tokens[64];
  int n_chunks = 0;

  tok = sa_tokenizer_load(model, err, sizeof err);
  if (!tok) {
    fprintf(stderr, "generate: %s\n", err);
    goto done;
  }
  be = sa_model_backend(dev, (int)threads);
  if (!be) {
    fprintf(stderr, "generate: no backend '%s'\n", dev);
    goto done;
  }
  if (audio_path && generate_audio_rows(be, model, audio_path, &rows, &n_rows, chunk_tokens,
                                        &n_chunks, err, sizeof err)) {
    fprintf(stderr, "generate: %s\n", err);
    goto done;
  }
  sa_chat_part_t parts[2];
  size_t np = 0;
  if (audio_path)
    parts[np++] = (sa_chat_part_t){.kind = SA_CHAT_PART_AUDIO, .chunk_tokens = chunk_tokens,
                                   .n_chunks = (size_t)n_chunks};
  if (prompt[0])
    parts[np++] = (sa_chat_part_t){.kind = SA_CHAT_PART_TEXT, .text = prompt,
                                   .text_len = strlen(prompt)};
  sa_chat_prompt_t cp = {0};
  if ((rc = sa_chat_build(tok, system, parts, np, 0, &cp, err, sizeof err))) {
    fprintf(stderr, "generate: prompt: %s\n", err);
    goto done;
  }
  T0 = cp.n_ids;
  audio_pos = malloc(sizeof(int32_t) * (size_t)(n_rows + 1));
  if (!audio_pos) {
    sa_chat_prompt_free(&cp);
    goto done;
  }
  {
    int64_t r = 0;
    for (size_t sp_i = 0; sp_i < cp.n_spans; sp_i++)
      for (size_t k = 0; k < cp.spans[sp_i].count && r < n_rows; k++)
        audio_pos[r++] = (int32_t)(cp.spans[sp_i].first + k);
    if (r != n_rows) {
      fprintf(stderr, "generate: %lld audio slots for %lld rows\n", (long long)r,
              (long long)n_rows);
      sa_chat_prompt_free(&cp);
      goto done;
    }
  }
  int32_t eot = sa_tokenizer_token_id(tok, "<|EOT|>");
  size_t total = T0 + (size_t)max_new;
  seq = malloc((total + 1) * sizeof(int32_t));
  if (!seq) {
    sa_chat_prompt_free(&cp);
    goto done;
  }
  memcpy(seq, cp.ids, T0 * sizeof(int32_t));
  sa_chat_prompt_free(&cp);

  int ch = (int)(chunk < (int64_t)T0 ? chunk : (int64_t)T0);
  sa_decoder_opts_t o = {.first_layer = 0, .last_layer = -1,
                         .max_tokens = ch > 0 ? ch : 1, .max_seqs = 1,
                         .max_logit_rows = 1, .max_seq_len = (int)total + 1};
  if ((rc = sa_decoder_load(be, model, NULL, &o, &dec, err, sizeof err))) {
    fprintf(stderr, "generate: %s\n", err);
    goto done;
  }
  sa_kv_opts_t ko;
  sa_decoder_kv_opts(dec, 0, (int)((total + 16) / 16), 1, &ko);
  if ((rc = sa_kv_new(be, &ko, &kv)) || (rc = sa_kv_seq_add(kv, 1))) {
    fprintf(stderr, "generate: KV cache: %s\n", sa_strerror(rc));
    goto done;
  }
  int V = sa_decoder_config(dec)->vocab_size;
  smp = sa_sampler_new(V);
  logits = malloc((size_t)V * sizeof(float));
  int H = sa_decoder_config(dec)->hidden_size;
  embeds = malloc(sizeof(float) * (size_t)o.max_tokens * (size_t)H);
  embed_rows = malloc(sizeof(int32_t) * (size_t)o.max_tokens);
  if (!smp || !logits || !embeds || !embed_rows)
    goto done;

  if (print_ids) {
    printf("prompt_ids:");
    for (size_t i = 0; i < T0; i++)
      printf(" %d", seq[i]);
    printf("\ntext: ");
  }
  sa_detok_t dt;
  sa_detok_init(&dt, tok);
  size_t cap = sa_tokenizer_max_token_bytes(tok) * 3 + 16;
  char *txt = malloc(cap);
  if (!txt)
    goto done;
  size_t len = 0; /* tokens in the KV cache */
  size_t n = T0;  /* tokens known */
  int n_gen = 0;
  uint64_t sid = 1;
  int32_t row = 0;
  while (n_gen < max_new) {
    /* feed everything not yet cached, in chunks; logits of the last row */
    while (len < n) {
      int32_t k = (int32_t)((n - len) < (size_t)o.max_tokens ? (n - len)
                                                              : (size_t)o.max_tokens);
      row = k - 1;
      int last = len + (size_t)k == n;
      int n_emb = 0; /* audio rows inside this chunk */
      for (int64_t a = 0; a < n_rows; a++)
        if (audio_pos[a] >= (int32_t)len && audio_pos[a] < (int32_t)len + k) {
          embed_rows[n_emb] = audio_pos[a] - (int32_t)len;
          memcpy(embeds + (size_t)n_emb * H, rows + (size_t)a * H, sizeof(float) * (size_t)H);
          n_emb++;
        }
      sa_decoder_batch_t b = {.n_seqs = 1, .seq_ids = &sid, .n_new = &k,
                              .tokens = seq + len, .n_logits = last ? 1 : 0,
                              .logit_rows = &row, .logits = logits,
                              .n_embed = n_emb, .embed_rows = embed_rows,
                              .embeds = embeds};
      if ((rc = sa_decoder_step(dec, kv, &b))) {
        fprintf(stderr, "generate: step failed: %s\n", sa_strerror(rc));
        free(txt);
        goto done;
      }
      len += (size_t)k;
    }
    int32_t t;
    float lp;
    sa_sample_key_t key = {sa_rng_chain_seed((uint64_t)seed, (uint32_t)chain), 0, (uint64_t)n};
    if ((rc = sa_sampler_sample(smp, &sp, logits, V, seq, n, key, &t, &lp))) {
      fprintf(stderr, "generate: sampling failed: %s\n", sa_strerror(rc));
      free(txt);
      goto done;
    }
    seq[n++] = t;
    n_gen++;
    if (t == eot)
      break;
    size_t ol = 0; /* ids the tokenizer lacks (vocab padding) print nothing */
    if (sa_detok_push(&dt, t, txt, cap, &ol) == 0)
      fwrite(txt, 1, ol, stdout);
    fflush(stdout);
  }
  size_t ol = 0;
  if (sa_detok_flush(&dt, txt, cap, &ol) == 0)
    fwrite(txt, 1, ol, stdout);
  free(txt);
  if (print_ids) {
    printf("\nids:");
    for (size_t i = T0; i < n; i++)
      printf(" %d", seq[i]);
  }
  printf("\n");
  status = 0;
done:
  free(rows);
  free(embeds);
  free(embed_rows);
  free(audio_pos);
  free(seq);
  free(logits);
  sa_sampler_destroy(&smp);
  sa_kv_destroy(&kv);
  sa_decoder_destroy(&dec);
  sa_backend_destroy(&be);
  sa_tokenizer_destroy(&tok);
  return status;
}
