/*
 * chat — the Step-Audio chat template (docs/model.md) rendered straight to
 * token ids, with the audio slots marked so embedding rows can replace them.
 *
 *   [<|BOT|>system\n{system}<|EOT|>]      only when system != NULL
 *   <|BOT|>human\n{parts in order}<|EOT|>
 *   <|BOT|>assistant\n<think>\n          (<think>\n left out with SA_CHAT_NO_THINK)
 *
 * Each audio chunk becomes <audio_start> + n x <audio_patch> + <audio_end>;
 * the prompt reports, per chunk, the position of its first patch and n, so
 * the n embedding rows of that chunk replace exactly those positions. A chunk
 * with n = 0 (a tail chunk too short for one audio token) still emits
 * <audio_start><audio_end> and a span with count 0.
 *
 * Token strings are looked up in the tokenizer, never hard-coded ids. The
 * text is tokenized as Hugging Face would tokenize the whole rendered string
 * (the role line and the text that follows it form one piece, consecutive
 * text parts are joined), except that by default added tokens marked special
 * are NOT matched inside system and user text: a user typing "<audio_patch>"
 * or "<|EOT|>" gets plain text, not control tokens (SA_CHAT_TEXT_SPECIAL
 * restores HF's behaviour). This module is not a Jinja engine and knows no
 * other template, and handles a single human turn (no history).
 *
 * Threads: sa_chat_build only reads the tokenizer; any thread may call it.
 */
#ifndef SA_CHAT_H
#define SA_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

typedef enum {
  SA_CHAT_PART_TEXT = 0,
  SA_CHAT_PART_AUDIO = 1,
} sa_chat_part_kind_t;

/* One piece of the human turn. All pointers are borrowed for the call. */
typedef struct {
  sa_chat_part_kind_t kind;
  const char *text;            /* TEXT: UTF-8, text_len bytes */
  size_t text_len;
  const int32_t *chunk_tokens; /* AUDIO: audio tokens of each chunk (>= 0) */
  size_t n_chunks;
} sa_chat_part_t;

/* Positions of one audio chunk's <audio_patch> tokens in the prompt ids. */
typedef struct {
  size_t first; /* index of the first patch in ids */
  size_t count; /* number of patches = embedding rows of the chunk */
} sa_chat_span_t;

/* The built prompt. Owned by whoever called sa_chat_build; release with
 * sa_chat_prompt_free. */
typedef struct {
  int32_t *ids;
  size_t n_ids;
  sa_chat_span_t *spans; /* one per audio chunk, in prompt order */
  size_t n_spans;
} sa_chat_prompt_t;

enum {
  /* Match special added tokens inside system/user text, as HF would when
   * tokenizing the rendered template (trusted text only). */
  SA_CHAT_TEXT_SPECIAL = 1u << 0,
  /* End the prompt at "<|BOT|>assistant\n" (no "<think>\n"). */
  SA_CHAT_NO_THINK = 1u << 1,
};

/* Builds the prompt ids for system (NUL-terminated, NULL = no system turn;
 * "" = an empty system turn) and the human turn's parts. On success fills
 * *out (caller owns it; sa_chat_prompt_free). Returns 0; SA_EINVAL for bad
 * arguments, invalid UTF-8 in a text or a negative chunk count; SA_ENOENT if
 * the tokenizer lacks one of the template's tokens (err names it);
 * SA_ENOMEM. On error *out is zeroed. */
int sa_chat_build(const sa_tokenizer_t *tok, const char *system,
                  const sa_chat_part_t *parts, size_t n_parts, unsigned flags,
                  sa_chat_prompt_t *out, char *err, size_t cap);

/* Frees what p holds and zeroes it; safe on a zeroed prompt. */
void sa_chat_prompt_free(sa_chat_prompt_t *p);

#endif /* SA_CHAT_H */
