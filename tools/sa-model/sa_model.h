/*
 * sa_model — internal header of the sa-model tool: the command entry points
 * and small helpers shared by the cmd_*.c files. Not a library interface.
 */
#ifndef SA_MODEL_TOOL_H
#define SA_MODEL_TOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

/* Each command gets argv[0] = its own name; returns the exit status. */
int sa_model_cmd_init(int argc, char **argv);
int sa_model_cmd_inspect(int argc, char **argv);
int sa_model_cmd_tokenize(int argc, char **argv);
int sa_model_cmd_logits(int argc, char **argv);
int sa_model_cmd_generate(int argc, char **argv);
int sa_model_cmd_quantize(int argc, char **argv);
/* Audio commands live in cmd_audio.c (the audio helper's); weak so that
 * either order of landing builds. */
int sa_model_cmd_pcm(int argc, char **argv) __attribute__((weak));
int sa_model_cmd_mel(int argc, char **argv) __attribute__((weak));
int sa_model_cmd_encode(int argc, char **argv) __attribute__((weak));

/* True if argv[i] is -h or --help. */
bool sa_model_is_help(const char *a);
/* Parses a whole decimal integer / float; false on junk or overflow. */
bool sa_model_parse_i64(const char *s, int64_t *out);
bool sa_model_parse_f32(const char *s, float *out);
/* Parses "1,2,3" or "1 2 3" into a new array (caller frees). */
int sa_model_parse_ids(const char *s, int32_t **ids, size_t *n);
/* Creates the backend named by dev ("cpu", "ref", "cuda[:N]"). */
sa_backend_t *sa_model_backend(const char *dev, int threads);

/* Reads and decodes an audio file to 16 kHz mono float (model/audio, the
 * default limits, max_s > 0 overrides the duration limit). Caller frees
 * *pcm. Returns 0, or 1 after printing "cmd: path: reason" to stderr. */
int sa_model_decode_audio_file(const char *cmd, const char *path, double max_s,
                               float **pcm, size_t *n);

#endif
