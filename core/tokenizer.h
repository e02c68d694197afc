/*
 * tokenizer — byte-level BPE loaded from a Hugging Face tokenizer.json.
 *
 * Supports what Qwen2-family tokenizers (and Step-Audio-R1's, which shares the
 * Qwen BPE vocabulary) use: the NFC normalizer (utf8proc), a Split
 * pre-tokenizer whose regex is read from the file (PCRE2 with UTF + UCP; the
 * Qwen2 pattern is the default when the file has none) followed by ByteLevel,
 * a BPE model with merges by rank, added tokens matched in the text before
 * BPE (leftmost, then longest; tokens with "normalized": false are matched in
 * the raw text, those with "normalized": true in the NFC text), and the
 * ByteLevel decoder. A streaming decoder (sa_detok_*) turns ids into chunks of
 * valid UTF-8 for token-by-token output.
 *
 * It is not a general tokenizers port: no WordPiece/Unigram models, no BPE
 * dropout, no post-processor templates (no BOS/EOS are ever added), no
 * truncation or padding. Files that ask for unsupported parts are refused at
 * load with a message.
 *
 * Threads: a loaded tokenizer is read-only; any number of threads may encode,
 * decode and look up concurrently. A sa_detok_t belongs to one thread.
 */
#ifndef SA_TOKENIZER_H
#define SA_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sa_tokenizer sa_tokenizer_t;

/* Encode flags. */
enum {
  /* Added tokens marked "special": true are not matched in the text; their
   * strings are tokenized as plain text (HF's split_special_tokens). Non-special
   * added tokens (e.g. Qwen's <think>) are still matched. Use it for untrusted
   * text inside a prompt template. */
  SA_TOKENIZER_NO_SPECIAL = 1u << 0,
};

/* Loads path_or_dir (a tokenizer.json file, or a folder that holds one).
 * Returns a new tokenizer (caller owns it; free with sa_tokenizer_destroy) or
 * NULL with a one-line reason in err (err may be NULL; cap its size). */
sa_tokenizer_t *sa_tokenizer_load(const char *path_or_dir, char *err,
                                  size_t cap);

/* Frees *tok and sets it NULL; NULL or *tok == NULL is a no-op. */
void sa_tokenizer_destroy(sa_tokenizer_t **tok);

/* Number of ids: one more than the largest id of the vocabulary and the added
 * tokens. Ids below this without a token (holes) decode to nothing. */
size_t sa_tokenizer_vocab_size(const sa_tokenizer_t *tok);

/* Length in bytes of the longest decoded token (for sizing decode buffers). */
size_t sa_tokenizer_max_token_bytes(const sa_tokenizer_t *tok);

/* Encodes len bytes of UTF-8 text (not NUL-terminated; NUL bytes are text)
 * into token ids; no BOS/EOS are added. flags: SA_TOKENIZER_* bits.
 * On success *ids is a new array of *n ids (caller frees with free(); NULL
 * when *n is 0). Returns 0, SA_EINVAL for invalid UTF-8 (err says where),
 * SA_ENOMEM, or SA_EINTERNAL if the regex engine fails. Thread-safe. */
int sa_tokenizer_encode(const sa_tokenizer_t *tok, const char *text,
                        size_t len, unsigned flags, int32_t **ids, size_t *n,
                        char *err, size_t cap);

/* Like sa_tokenizer_encode but writes into the caller's ids[cap_ids].
 * *n is set to the number of ids the text needs even when that is more than
 * cap_ids, in which case nothing useful is in ids and SA_ERANGE is returned. */
int sa_tokenizer_encode_into(const sa_tokenizer_t *tok, const char *text,
                             size_t len, unsigned flags, int32_t *ids,
                             size_t cap_ids, size_t *n, char *err, size_t cap);

/* Decodes ids into raw bytes: byte-level tokens map back to their bytes,
 * added tokens emit their content. The result may be invalid UTF-8 when the
 * ids cut a character (use sa_detok_* for streaming). *out is a new
 * NUL-terminated buffer of *out_len bytes (caller frees with free()).
 * Returns 0, SA_ERANGE for an id outside [0, vocab_size) or SA_ENOMEM. */
int sa_tokenizer_decode(const sa_tokenizer_t *tok, const int32_t *ids,
                        size_t n, char **out, size_t *out_len);

/* Returns the id of a token given as written in tokenizer.json (an added
 * token's content such as "<|EOT|>", or a vocabulary key such as "Ġthe"),
 * or -1 if there is none. Added tokens are looked up first. */
int32_t sa_tokenizer_token_id(const sa_tokenizer_t *tok, const char *token);

/* Writes the tokenizer.json string of id (NUL-terminated) into buf[cap].
 * Returns its length, or SA_ERANGE (bad id or buf too small; buf holds "" if
 * cap > 0), or SA_ENOENT for a hole in the id space. */
int sa_tokenizer_id_to_token(const sa_tokenizer_t *tok, int32_t id, char *buf,
                             size_t cap);

/* True if id is an added token with "special": true. */
bool sa_tokenizer_is_special(const sa_tokenizer_t *tok, int32_t id);

/* --- streaming decode ------------------------------------------------------
 * Feeds ids one at a time and emits only complete, valid UTF-8: bytes of a
 * character cut at a token boundary are held back until the rest arrives;
 * bytes that can never form a valid character become U+FFFD (as HF's lossy
 * decode does). The struct is caller-allocated; no allocation, no cleanup. */
typedef struct {
  const sa_tokenizer_t *tok; /* borrowed; must outlive the decoder */
  unsigned char pending[4];  /* held-back start of an incomplete character */
  size_t n_pending;
} sa_detok_t;

/* Binds d to tok and clears it. */
void sa_detok_init(sa_detok_t *d, const sa_tokenizer_t *tok);

/* Appends the text of id to out[cap] (no NUL added); *out_len is the number
 * of bytes written. cap >= sa_tokenizer_max_token_bytes(tok) * 3 + 8 always
 * suffices (the worst case is every byte invalid -> 3-byte U+FFFD).
 * Returns 0, SA_ERANGE for a bad id or a too small buffer (d unchanged). */
int sa_detok_push(sa_detok_t *d, int32_t id, char *out, size_t cap,
                  size_t *out_len);

/* Ends the stream: held-back bytes become U+FFFD (at most 3 bytes written per
 * byte sequence held, so cap >= 3 suffices). Returns 0 or SA_ERANGE. d is cleared. */
int sa_detok_flush(sa_detok_t *d, char *out, size_t cap, size_t *out_len);

#endif /* SA_TOKENIZER_H */
