/*
 * tokenizer_impl — internals shared by tokenizer.c (load, encode, decode) and
 * tokenizer_synth.c (the synthetic tokenizer writer). Not a public header:
 * only the tokenizer module includes it.
 */
#ifndef SA_TOKENIZER_IMPL_H
#define SA_TOKENIZER_IMPL_H

#include <stddef.h>
#include <stdint.h>

/* The Qwen2 pre-tokenizer split pattern (used when tokenizer.json has a
 * ByteLevel pre-tokenizer with use_regex but no Split, and by the writer). */
extern const char sa__tokenizer_qwen2_pattern[];

/* GPT-2's bytes_to_unicode: byte b is written as code point
 * sa__bytelevel_cp(b) in vocabulary strings. */
uint32_t sa__bytelevel_cp(uint8_t b);

/* Inverse: the byte of code point cp, or -1 if cp is not a byte-level char. */
int sa__bytelevel_byte(uint32_t cp);

/* Writes the byte-level string of raw[0..n) (UTF-8, NUL-terminated) into
 * out[cap]; returns its length or -1 if it does not fit. */
long sa__bytelevel_encode(const uint8_t *raw, size_t n, char *out, size_t cap);


#endif /* SA_TOKENIZER_IMPL_H */
