/*
 * chat — the Step-Audio chat template (docs/model.md) rendered straight to
 * token ids, with the audio slots marked so embedding rows can replace them.
 *
 *   for each turn, in order:
 *     <|BOT|>{system|human|assistant}\n{parts in order}<|EOT|>
 *   then the generation prompt:
 *     <|BOT|>assistant\n<think>\n        (<think>\n left out with SA_CHAT_NO_THINK)
 *
 * With SA_CHAT_CONTINUE the last turn (an assistant prefix, e.g. "<think>\n")
 * is left open — no <|EOT|>, no generation prompt — and generation continues
 * it; with SA_CHAT_NO_GEN_PROMPT the prompt ends at the last <|EOT|>. Earlier
 * assistant turns are rendered as given (reasoning included if the caller
 * kept it). sa_chat_build is the common case: an optional system turn and
 * one human turn.
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
 * restores HF's behaviour); <think> and </think> are not special and are
 * matched everywhere. This module is not a Jinja engine and knows no other
 * template.
 *
 * Threads: sa_chat_render only reads the tokenizer; any thread may call it.
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

/* One piece of a turn. All pointers are borrowed for the call. */
typedef struct {
  sa_chat_part_kind_t kind;
  const char *text;            /* TEXT: UTF-8, text_len bytes */
  size_t text_len;
  const int32_t *chunk_tokens; /* AUDIO: audio tokens of each chunk (>= 0) */
  size_t n_chunks;
} sa_chat_part_t;

typedef enum {
  SA_CHAT_HUMAN = 0,
  SA_CHAT_ASSISTANT = 1,
  SA_CHAT_SYSTEM = 2,
} sa_chat_role_t;

/* One message of the conversation; parts borrowed for the call. */
typedef struct {
  sa_chat_role_t role;
  const sa_chat_part_t *parts;
  size_t n_parts; /* 0: an empty turn */
} sa_chat_turn_t;

/* Positions of one audio chunk's <audio_patch> tokens in the prompt ids. */
typedef struct {
  size_t first; /* index of the first patch in ids */
  size_t count; /* number of patches = embedding rows of the chunk */
} sa_chat_span_t;

/* The built prompt. Owned by the caller; release with
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
  /* Leave the last turn open (it must be an assistant turn): no <|EOT|>
   * after it and no generation prompt. */
  SA_CHAT_CONTINUE = 1u << 2,
  /* No generation prompt: the prompt ends with the last turn's <|EOT|>. */
  SA_CHAT_NO_GEN_PROMPT = 1u << 3,
};

/* Builds the prompt ids of turns[n_turns] (n_turns >= 1). On success fills
 * *out (caller owns it; sa_chat_prompt_free). Returns 0; SA_EINVAL for bad
 * arguments, an unknown role or part kind, invalid UTF-8 in a text, a
 * negative chunk count, or SA_CHAT_CONTINUE with a last turn that is not
 * the assistant's; SA_ENOENT if the tokenizer lacks one of the template's
 * tokens (err names it); SA_ENOMEM. On error *out is zeroed. */
int sa_chat_render(const sa_tokenizer_t *tok, const sa_chat_turn_t *turns, size_t n_turns,
                   unsigned flags, sa_chat_prompt_t *out, char *err, size_t cap);

/* sa_chat_render of an optional system turn (NUL-terminated; NULL = none,
 * "" = an empty system turn) and one human turn of n_parts parts. */
int sa_chat_build(const sa_tokenizer_t *tok, const char *system,
                  const sa_chat_part_t *parts, size_t n_parts, unsigned flags,
                  sa_chat_prompt_t *out, char *err, size_t cap);

/* Frees what p holds and zeroes it; safe on a zeroed prompt. */
void sa_chat_prompt_free(sa_chat_prompt_t *p);

#endif /* SA_CHAT_H */
