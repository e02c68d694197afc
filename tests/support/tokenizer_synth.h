/*
 * tokenizer_synth — a small tokenizer for test models, written to a folder
 * (test support: linked by tests, benchmarks and `sa-model init`, never by
 * the services).
 */
#ifndef SA_TOKENIZER_SYNTH_H
#define SA_TOKENIZER_SYNTH_H

#include <stddef.h>

/* Writes DIR/tokenizer.json and DIR/tokenizer_config.json for test models: a
 * Qwen-shaped byte-level BPE (NFC, the Qwen2 Split regex + ByteLevel,
 * ByteLevel decoder) whose vocabulary is the 256 byte tokens plus n_merges
 * merges learned deterministically (plain BPE training) from a small built-in
 * English/code/multilingual text, then the added tokens <|endoftext|>,
 * <|BOT|>, <|EOT|>, <audio_start>, <audio_end>, <audio_patch> (special) and
 * <think>, </think> (non-special, as in Qwen) with the ids that follow.
 * DIR must exist. n_merges in [0, 2000] (else SA_EINVAL); SA_ERANGE if the
 * built-in text runs out of pairs to merge (it allows 1290 merges). Returns 0 or a negative SA_E* code with
 * a reason in err. Same n_merges, same bytes, on every machine. */
int sa_tokenizer_write_synthetic(const char *dir, int n_merges, char *err,
                                 size_t cap);

#endif /* SA_TOKENIZER_SYNTH_H */
