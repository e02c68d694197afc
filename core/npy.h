/*
 * npy — NumPy .npy files (format 1.0, read 1.0/2.0): little-endian f32, f64,
 * i32, i64, C order.
 *
 * For tools that dump tensors (sa-model logits/mel/encode) and tests that
 * read golden data written by the PyTorch oracles. Not a general NumPy
 * reader: no Fortran order, no big-endian, no structured or object dtypes;
 * such files are refused with SA_EFORMAT.
 */
#ifndef SA_NPY_H
#define SA_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/* Writes data (desc->dtype F32, F64, I32 or I64; bytes as in memory on a
 * little-endian host) to path as .npy 1.0. Returns 0, SA_EINVAL (dtype or
 * shape) or SA_EIO. */
int sa_npy_write(const char *path, const sa_tensor_desc_t *desc,
                 const void *data);
/* Shorthand for a float32 array of ndim dims. */
int sa_npy_write_f32(const char *path, const float *data, int ndim,
                     const int64_t *shape);

/* Reads path. On success *data is a new buffer (caller frees with free())
 * of the size desc says. Returns 0, SA_ENOENT, SA_EIO or SA_EFORMAT (with a
 * reason in err, which may be NULL). */
int sa_npy_read(const char *path, sa_tensor_desc_t *desc, void **data,
                char *err, size_t err_cap);

#endif /* SA_NPY_H */
