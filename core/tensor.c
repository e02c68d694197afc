/* tensor — see tensor.h. */
#include "tensor.h"

#include "sa_error.h"

#include <stdio.h>
#include <strings.h>

static const struct {
  const char *name;
  const char *st_name; /* safetensors spelling */
  size_t size;
} k_dtypes[SA_DTYPE_COUNT_] = {
    [SA_DTYPE_F32] = {"f32", "F32", 4},   [SA_DTYPE_F16] = {"f16", "F16", 2},
    [SA_DTYPE_BF16] = {"bf16", "BF16", 2}, [SA_DTYPE_I32] = {"i32", "I32", 4},
    [SA_DTYPE_I64] = {"i64", "I64", 8},   [SA_DTYPE_U8] = {"u8", "U8", 1},
    [SA_DTYPE_I8] = {"i8", "I8", 1},      [SA_DTYPE_F64] = {"f64", "F64", 8},
};

size_t sa_dtype_size(sa_dtype_t dt) {
  if ((int)dt < 0 || dt >= SA_DTYPE_COUNT_)
    return 0;
  return k_dtypes[dt].size;
}

const char *sa_dtype_name(sa_dtype_t dt) {
  if ((int)dt < 0 || dt >= SA_DTYPE_COUNT_)
    return "?";
  return k_dtypes[dt].name;
}

int sa_dtype_parse(const char *s, sa_dtype_t *out) {
  if (!s)
    return SA_EINVAL;
  for (int i = 0; i < SA_DTYPE_COUNT_; i++) {
    if (strcasecmp(s, k_dtypes[i].name) == 0 ||
        strcasecmp(s, k_dtypes[i].st_name) == 0) {
      *out = (sa_dtype_t)i;
      return 0;
    }
  }
  if (strcasecmp(s, "float32") == 0) { *out = SA_DTYPE_F32; return 0; }
  if (strcasecmp(s, "float16") == 0) { *out = SA_DTYPE_F16; return 0; }
  if (strcasecmp(s, "bfloat16") == 0) { *out = SA_DTYPE_BF16; return 0; }
  return SA_EINVAL;
}

int sa_tensor_desc_nbytes(const sa_tensor_desc_t *d, size_t *nbytes) {
  size_t es = sa_dtype_size(d->dtype);
  if (es == 0 || d->ndim < 0 || d->ndim > SA_TENSOR_MAX_DIMS)
    return SA_EINVAL;
  size_t total = es;
  for (int i = 0; i < d->ndim; i++) {
    if (d->shape[i] < 0)
      return SA_EINVAL;
    if (d->shape[i] != 0 && total > SIZE_MAX / (size_t)d->shape[i])
      return SA_EINVAL;
    total *= (size_t)d->shape[i];
  }
  *nbytes = total;
  return 0;
}

int64_t sa_tensor_desc_numel(const sa_tensor_desc_t *d) {
  int64_t n = 1;
  for (int i = 0; i < d->ndim; i++)
    n *= d->shape[i];
  return n;
}

char *sa_tensor_desc_str(const sa_tensor_desc_t *d, char *buf, size_t cap) {
  if (cap == 0)
    return buf;
  size_t n = (size_t)snprintf(buf, cap, "%s[", sa_dtype_name(d->dtype));
  for (int i = 0; i < d->ndim && i < SA_TENSOR_MAX_DIMS && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, i ? ",%lld" : "%lld",
                          (long long)d->shape[i]);
  if (n < cap)
    snprintf(buf + n, cap - n, "]");
  return buf;
}

float sa_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else { /* subnormal: normalise */
      int e = -1;
      do {
        e++;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + (127 - 15)) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

uint16_t sa_f32_to_f16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u)
    return (uint16_t)(sign | 0x7e00u); /* NaN */
  if (absu >= 0x477ff000u)              /* rounds to >= 65520: inf */
    return (uint16_t)(sign | 0x7c00u);
  if (absu < 0x38800000u) { /* below smallest normal: subnormal or zero */
    if (absu < 0x33000000u)
      return (uint16_t)sign; /* < 2^-25 rounds to zero */
    uint32_t man = (absu & 0x7fffffu) | 0x800000u;
    int shift = 126 - (int)(absu >> 23); /* 14..24 */
    uint32_t v = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (v & 1u)))
      v++;
    return (uint16_t)(sign | v);
  }
  uint32_t v = ((absu >> 13) - (112u << 10));
  uint32_t rem = absu & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (v & 1u)))
    v++;
  return (uint16_t)(sign | v);
}

void sa_bf16_to_f32_n(float *dst, const uint16_t *src, size_t n) {
  for (size_t i = 0; i < n; i++)
    dst[i] = sa_bf16_to_f32(src[i]);
}

void sa_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n) {
  for (size_t i = 0; i < n; i++)
    dst[i] = sa_f32_to_bf16(src[i]);
}

void sa_f16_to_f32_n(float *dst, const uint16_t *src, size_t n) {
  for (size_t i = 0; i < n; i++)
    dst[i] = sa_f16_to_f32(src[i]);
}

void sa_f32_to_f16_n(uint16_t *dst, const float *src, size_t n) {
  for (size_t i = 0; i < n; i++)
    dst[i] = sa_f32_to_f16(src[i]);
}

int sa_to_f32_n(float *dst, const void *src, sa_dtype_t dt, size_t n) {
  switch (dt) {
  case SA_DTYPE_F32:
    memcpy(dst, src, n * 4);
    return 0;
  case SA_DTYPE_BF16:
    sa_bf16_to_f32_n(dst, src, n);
    return 0;
  case SA_DTYPE_F16:
    sa_f16_to_f32_n(dst, src, n);
    return 0;
  default:
    return SA_EINVAL;
  }
}
