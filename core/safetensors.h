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

/* Opens `path`: a folder (model.safetensors.index.json is preferred over
 * model.safetensors), an index .json file, or a single .safetensors file.
 * Files are mapped read-only (mmap) and every header is validated in full
 * (dtype known, shape x dtype = byte size, offsets inside the data and not
 * overlapping, no duplicate names). With a filter, only shards holding at
 * least one wanted tensor (per the index's weight_map) are mapped and only
 * wanted tensors are indexed; every wanted tensor the index lists must be in
 * its shard. The filter runs on the calling thread during this call only.
 * On error returns SA_ENOENT (a file or shard is missing), SA_EIO (read or
 * map failure), SA_EFORMAT (malformed file) or SA_ENOMEM; *out stays NULL
 * and `err` (if not NULL) receives a message naming the file and tensor.
 * Caller owns *out; close with sa_st_close. Not thread-safe while opening;
 * the opened object is immutable and may be read from any thread. */
int sa_st_open(const char *path, sa_st_filter_fn filter, void *filter_arg,
               sa_st_t **out, char *err, size_t err_cap);
/* Unmaps everything and frees *st; sets *st NULL. NULL or *st NULL is a no-op. */
void sa_st_close(sa_st_t **st);

/* Looks a tensor up by name (binary search over the name-sorted table);
 * returns NULL if absent. Borrowed result. */
const sa_st_tensor_t *sa_st_find(const sa_st_t *st, const char *name);
/* Like sa_st_find but checks dtype and shape: returns 0, SA_ENOENT (missing)
 * or SA_EFORMAT (dtype/shape disagree), with a message naming the tensor, the
 * file, and the expected and found dtype[shape]. Pass SA_ST_ANY_DTYPE to skip
 * the dtype check and ndim SA_ST_ANY_SHAPE (shape may be NULL) to skip the
 * shape check. *out is borrowed, valid until sa_st_close. */
#define SA_ST_ANY_DTYPE ((sa_dtype_t)SA_DTYPE_COUNT_)
#define SA_ST_ANY_SHAPE (-1)
int sa_st_get(const sa_st_t *st, const char *name, sa_dtype_t dtype, int ndim,
              const int64_t *shape, const sa_st_tensor_t **out, char *err,
              size_t err_cap);
/* Number of indexed tensors (only the wanted ones when a filter was given). */
size_t sa_st_count(const sa_st_t *st);
/* i-th tensor in name order; borrowed; NULL when i >= sa_st_count. */
const sa_st_tensor_t *sa_st_at(const sa_st_t *st, size_t i);
/* Number of files mapped by sa_st_open (0 for sa_st_parse_buffer). With a
 * filter this counts only the shards that hold a wanted tensor. */
size_t sa_st_num_files(const sa_st_t *st);

/* A ready-made filter for one pipeline stage or the encoder: pass a pointer
 * to this struct as filter_arg with sa_st_filter_layer_range. Wanted names:
 * "model.layers.<i>.*" for first <= i < last; "model.embed_tokens.*" when
 * embed; "model.norm.*" and "lm_head.*" when head; "encoder.*" and
 * "adapter.*" when audio. Every other name is unwanted. */
typedef struct {
  int first, last; /* decoder layer range [first, last) */
  bool embed;      /* stage 0 (or a last stage with tied embeddings) */
  bool head;       /* last stage: final norm and LM head */
  bool audio;      /* encoder node: audio encoder and adaptor */
} sa_st_layer_range_t;
bool sa_st_filter_layer_range(const char *name, void *arg);

/* Parses one safetensors file held in memory (header + data); used by the
 * loader and the fuzz target. `len` is the buffer size. Returns 0 or SA_EFORMAT
 * (SA_ENOMEM on allocation failure) with a message. Caller owns *out (close
 * with sa_st_close; tensors point into buf, which must outlive it).
 * Limits: header at most SA_ST_MAX_HEADER bytes, HF's own limit. */
#define SA_ST_MAX_HEADER ((size_t)100000000)
int sa_st_parse_buffer(const void *buf, size_t len, const char *file_label,
                       sa_st_t **out, char *err, size_t err_cap);

/* Writes a single-file safetensors checkpoint (for sa-model init and tests).
 * tensors[i].data is read (desc gives its size; .nbytes must be 0 or agree),
 * .file ignored. The header lists "__metadata__" {"format":"pt"} then the
 * tensors in name order, padded with spaces to a multiple of 8 bytes as HF
 * does; data follows in the same order. The file is written to a temporary
 * name and renamed into place. Returns 0, SA_EINVAL (bad descriptor,
 * duplicate name) or SA_EIO, with a message in err. */
int sa_st_write(const char *path, const sa_st_tensor_t *tensors, size_t n,
                char *err, size_t err_cap);

#endif /* SA_SAFETENSORS_H */
