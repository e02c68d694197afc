/*
 * openai — the body of POST /v1/chat/completions (OpenAI's chat format, as
 * Step-Audio-R1's vLLM client sends it) turned into a request's parameters.
 * Pure: JSON bytes in, parameters or an error naming the parameter out; no
 * I/O, no state. Fuzzed by tests/fuzz/fuzz_openai.c.
 *
 * What it accepts: `model`; `messages` with roles system, user, human
 * (Step-Audio-R1's client says human) and assistant, `content` a string or
 * a list of parts {"type":"text"}, {"type":"input_audio","input_audio":
 * {"data":BASE64,"format":…}}, {"type":"audio_url","audio_url":{"url":
 * "data:audio/…;base64,…"}}; unknown fields anywhere are ignored. Sampling:
 * max_tokens / max_completion_tokens, temperature, top_p, top_k (-1 = off),
 * min_p, repetition_penalty, seed, n, stream, stream_options.include_usage,
 * stop (up to 4 strings of at most 64 bytes), stop_token_ids,
 * skip_special_tokens, add_generation_prompt,
 * continue_final_message, and our think_budget and vote.
 *
 * Conversations: the first system message is the system text; user/human,
 * assistant and later system messages become turns in order (assistant and
 * system text only; earlier assistant turns are rendered as sent, reasoning
 * and all). A last assistant message with continue_final_message is a
 * prefix generation continues (the client sends "<think>\n"); otherwise
 * add_generation_prompt (default true) ends the prompt with the template's
 * own generation prompt.
 *
 * A turn's parts keep their order (adjacent text parts join, as the
 * rendered template string would); each audio part is encoded on its own
 * and its rows stand where it stood — Step-Audio-R1's client sends a long
 * clip as consecutive <= 25 s WAV parts. At most COORD_MAX_PARTS parts in
 * the conversation.
 *
 * Not accepted (a clear 400 naming the parameter): audio outside user
 * turns, audio URLs that are not data: URLs.
 */
#ifndef SA_COORD_OPENAI_H
#define SA_COORD_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord.h"

typedef struct {
  char model[256];
  bool stream;
  bool include_usage;
  bool skip_special_tokens;
  int32_t stop_token_ids[16];
  int n_stop_token_ids;
  bool max_tokens_given;
  coord_request_params_t p; /* its strings and audio point into the fields below */
  char *system;  /* owned; "" if none */
  char *prompt;  /* owned: every text part joined ("" if none), for checks */
  void *owned[COORD_MAX_PARTS]; /* owned: each part's text or decoded audio */
  size_t audio_bytes;           /* over all audio parts */
  sa_chat_role_t role;          /* while parsing: the message being read */
  bool turn_pending;            /*   its first part is still to come */
  int n_audio;
  char stop[COORD_MAX_STOP][COORD_STOP_BYTES + 1]; /* the stop strings */
} coord_openai_req_t;

typedef struct {
  size_t max_audio_bytes; /* decoded */
  int default_max_tokens;
} coord_openai_limits_t;

/* Parses body[len] into *out (zeroed first; free with coord_openai_free
 * whatever the result). Returns 0, or SA_EINVAL with the reason in
 * err[cap] and the offending parameter's name in param[pcap] ("" if none),
 * or SA_ENOMEM. Checks shapes and types; range checks against the
 * coordinator's limits are the caller's (coord_submit_validate). */
int coord_openai_parse(const char *body, size_t len, const coord_openai_limits_t *lim,
                       coord_openai_req_t *out, char *err, size_t cap, char *param,
                       size_t pcap);

/* Frees what *r owns; r may be zeroed or partly filled. */
void coord_openai_free(coord_openai_req_t *r);

#endif /* SA_COORD_OPENAI_H */
