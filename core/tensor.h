/*
 * tensor — dtypes, tensor descriptors and bf16/fp16/fp32 conversion.
 *
 * A descriptor says what a block of little-endian bytes holds (dtype and
 * shape); it owns no memory. Used on the wire (tensor frames), in checkpoints
 * and between modules. This module does no math beyond conversion.
 */
#ifndef SA_TENSOR_H
#define SA_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
  SA_DTYPE_F32 = 0,
  SA_DTYPE_F16 = 1,
  SA_DTYPE_BF16 = 2,
  SA_DTYPE_I32 = 3,
  SA_DTYPE_I64 = 4,
  SA_DTYPE_U8 = 5,
  SA_DTYPE_I8 = 6,
  SA_DTYPE_F64 = 7,
  SA_DTYPE_COUNT_
} sa_dtype_t;

#define SA_TENSOR_MAX_DIMS 8

typedef struct {
  sa_dtype_t dtype;
  int ndim;
  int64_t shape[SA_TENSOR_MAX_DIMS];
} sa_tensor_desc_t;

/* Bytes per element; 0 for an invalid dtype. */
size_t sa_dtype_size(sa_dtype_t dt);
/* Short lowercase name ("bf16"); "?" for an invalid dtype. */
const char *sa_dtype_name(sa_dtype_t dt);
/* Parses our names and safetensors' ("BF16", "F32", "F16", "I32", ...),
 * case-insensitively. Returns 0 or SA_EINVAL. */
int sa_dtype_parse(const char *s, sa_dtype_t *out);

/* Validates a descriptor (known dtype, 0 <= ndim <= MAX, dims >= 0, no
 * overflow) and stores its byte size in *nbytes. Returns 0 or SA_EINVAL. */
int sa_tensor_desc_nbytes(const sa_tensor_desc_t *d, size_t *nbytes);
/* Number of elements (product of the shape; 1 for ndim 0). No validation. */
int64_t sa_tensor_desc_numel(const sa_tensor_desc_t *d);
/* Formats "bf16[2,3]" into buf (always NUL-terminated); returns buf. */
char *sa_tensor_desc_str(const sa_tensor_desc_t *d, char *buf, size_t cap);

/* --- scalar conversions (exact IEEE semantics: round to nearest even,
 * NaN stays NaN, overflow goes to inf) --- */
static inline float sa_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t sa_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet NaN */
    return (uint16_t)((u >> 16) | 0x0040u);
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)((u + rounding) >> 16);
}

float sa_f16_to_f32(uint16_t h);
uint16_t sa_f32_to_f16(float f);

/* --- bulk conversions; n elements, src and dst must not overlap --- */
void sa_bf16_to_f32_n(float *dst, const uint16_t *src, size_t n);
void sa_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n);
void sa_f16_to_f32_n(float *dst, const uint16_t *src, size_t n);
void sa_f32_to_f16_n(uint16_t *dst, const float *src, size_t n);
/* Converts n elements of any float dtype (f32, f16, bf16) to f32.
 * Returns 0 or SA_EINVAL for a non-float dtype. */
int sa_to_f32_n(float *dst, const void *src, sa_dtype_t dt, size_t n);

#endif /* SA_TENSOR_H */
