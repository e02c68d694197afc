/*
 * safetensors — mmap loader for Hugging Face safetensors checkpoints.
 *
 * Opens a folder holding model.safetensors, or shards listed in
 * model.safetensors.index.json, or a single .safetensors file. Tensors are
 * looked up by name and returned as borrowed pointers into the mapping
 * (little-endian, as stored). Opening can be restricted to the tensors a
 * layer range needs (a name filter), so a stage maps and validates only its
 * shards. Every malformed file gives an error naming the file and the tensor;
 * nothing here crashes on bad bytes. This module does no dtype conversion.
 */
#ifndef SA_SAFETENSORS_H
#define SA_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include "tensor.h"

typedef struct sa_st sa_st_t;

typedef struct {
  const char *name;      /* borrowed from the sa_st_t */
  sa_tensor_desc_t desc;
  const void *data;      /* borrowed: valid until sa_st_close */
  size_t nbytes;
  const char *file;      /* the file it came from (borrowed) */
} sa_st_tensor_t;

/* Decides whether a tensor name is wanted; NULL filter = all. */
typedef bool (*sa_st_filter_fn)(const char *name, void *arg);

/* Opens `path` (folder or .safetensors file). With a filter, only shards
 * holding at least one wanted tensor are mapped and only wanted tensors are
 * indexed. On error returns a negative SA_E* code, *out stays NULL and
 * `err` (if not NULL) receives a message naming the file and tensor.
 * Caller owns *out; close with sa_st_close. */
int sa_st_open(const char *path, sa_st_filter_fn filter, void *filter_arg,
               sa_st_t **out, char *err, size_t err_cap);
void sa_st_close(sa_st_t **st);

/* Looks a tensor up by name; returns NULL if absent. Borrowed result. */
const sa_st_tensor_t *sa_st_find(const sa_st_t *st, const char *name);
/* Like sa_st_find but checks dtype and shape: returns 0, SA_ENOENT (missing)
 * or SA_EFORMAT (dtype/shape disagree), with a message naming the tensor. */
int sa_st_get(const sa_st_t *st, const char *name, sa_dtype_t dtype, int ndim,
              const int64_t *shape, const sa_st_tensor_t **out, char *err,
              size_t err_cap);
size_t sa_st_count(const sa_st_t *st);
/* i-th tensor in name order; borrowed. */
const sa_st_tensor_t *sa_st_at(const sa_st_t *st, size_t i);

/* Parses one safetensors file held in memory (header + data); used by the
 * loader and the fuzz target. `len` is the buffer size. Returns 0 or SA_EFORMAT
 * with a message. Caller owns *out (tensors point into buf, which must outlive
 * it). */
int sa_st_parse_buffer(const void *buf, size_t len, const char *file_label,
                       sa_st_t **out, char *err, size_t err_cap);

/* Writes a single-file safetensors checkpoint (for sa-model init and tests).
 * tensors[i].data is read, .file ignored. Returns 0 or SA_EIO. */
int sa_st_write(const char *path, const sa_st_tensor_t *tensors, size_t n,
                char *err, size_t err_cap);

#endif /* SA_SAFETENSORS_H */
