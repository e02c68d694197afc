/* npy — see npy.h. */
#include "npy.h"

#include "sa_error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *descr_of(sa_dtype_t dt) {
  switch (dt) {
  case SA_DTYPE_F32: return "<f4";
  case SA_DTYPE_F64: return "<f8";
  case SA_DTYPE_I32: return "<i4";
  case SA_DTYPE_I64: return "<i8";
  default: return NULL;
  }
}

int sa_npy_write(const char *path, const sa_tensor_desc_t *desc,
                 const void *data) {
  const char *descr = descr_of(desc->dtype);
  size_t nbytes = 0;
  if (!path || !descr || sa_tensor_desc_nbytes(desc, &nbytes) != 0 ||
      (nbytes && !data))
    return SA_EINVAL;
  char hdr[512];
  int n = snprintf(hdr, sizeof hdr,
                   "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
  for (int i = 0; i < desc->ndim; i++)
    n += snprintf(hdr + n, sizeof hdr - (size_t)n, "%lld,%s",
                  (long long)desc->shape[i],
                  (i + 1 < desc->ndim) ? " " : "");
  if (desc->ndim > 1) /* "(2, 3)" rather than "(2, 3,)" */
    n--;
  n += snprintf(hdr + n, sizeof hdr - (size_t)n, "), }");
  /* magic(6) + version(2) + len(2) + header + '\n', padded to 64 */
  size_t total = 10 + (size_t)n + 1;
  size_t pad = (64 - total % 64) % 64;
  if ((size_t)n + pad + 1 >= sizeof hdr)
    return SA_EINVAL;
  memset(hdr + n, ' ', pad);
  hdr[n + pad] = '\n';
  uint16_t hlen = (uint16_t)(n + pad + 1);
  FILE *f = fopen(path, "wb");
  if (!f)
    return SA_EIO;
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                           (unsigned char)(hlen & 0xff),
                           (unsigned char)(hlen >> 8)};
  int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, hlen, f) == hlen &&
           (nbytes == 0 || fwrite(data, 1, nbytes, f) == nbytes);
  ok = (fclose(f) == 0) && ok;
  return ok ? 0 : SA_EIO;
}

int sa_npy_write_f32(const char *path, const float *data, int ndim,
                     const int64_t *shape) {
  sa_tensor_desc_t d = {.dtype = SA_DTYPE_F32, .ndim = ndim};
  if (ndim < 0 || ndim > SA_TENSOR_MAX_DIMS)
    return SA_EINVAL;
  for (int i = 0; i < ndim; i++)
    d.shape[i] = shape[i];
  return sa_npy_write(path, &d, data);
}

#define NPY_ERR(code, ...)                                                     \
  do {                                                                         \
    if (err)                                                                   \
      snprintf(err, err_cap, __VA_ARGS__);                                     \
    rc = (code);                                                               \
    goto fail;                                                                 \
  } while (0)

int sa_npy_read(const char *path, sa_tensor_desc_t *desc, void **data,
                char *err, size_t err_cap) {
  int rc = 0;
  char *hdr = NULL;
  void *buf = NULL;
  *data = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    if (err)
      snprintf(err, err_cap, "%s: %s", path, strerror(errno));
    return errno == ENOENT ? SA_ENOENT : SA_EIO;
  }
  unsigned char pre[12];
  if (fread(pre, 1, 8, f) != 8 || memcmp(pre, "\x93NUMPY", 6) != 0)
    NPY_ERR(SA_EFORMAT, "%s: not a .npy file", path);
  size_t hlen;
  if (pre[6] == 1) {
    if (fread(pre + 8, 1, 2, f) != 2)
      NPY_ERR(SA_EFORMAT, "%s: truncated header", path);
    hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
  } else if (pre[6] == 2 || pre[6] == 3) {
    if (fread(pre + 8, 1, 4, f) != 4)
      NPY_ERR(SA_EFORMAT, "%s: truncated header", path);
    hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 |
           (size_t)pre[11] << 24;
  } else {
    NPY_ERR(SA_EFORMAT, "%s: unsupported .npy version %d", path, pre[6]);
  }
  if (hlen > (1u << 20))
    NPY_ERR(SA_EFORMAT, "%s: header too long", path);
  hdr = malloc(hlen + 1);
  if (!hdr)
    NPY_ERR(SA_ENOMEM, "%s: out of memory", path);
  if (fread(hdr, 1, hlen, f) != hlen)
    NPY_ERR(SA_EFORMAT, "%s: truncated header", path);
  hdr[hlen] = 0;
  memset(desc, 0, sizeof *desc);
  const char *p = strstr(hdr, "'descr'");
  if (!p || !(p = strchr(p + 7, '\'')))
    NPY_ERR(SA_EFORMAT, "%s: no descr", path);
  p++;
  if (strncmp(p, "<f4'", 4) == 0 || strncmp(p, "float32'", 8) == 0)
    desc->dtype = SA_DTYPE_F32;
  else if (strncmp(p, "<f8'", 4) == 0)
    desc->dtype = SA_DTYPE_F64;
  else if (strncmp(p, "<i4'", 4) == 0)
    desc->dtype = SA_DTYPE_I32;
  else if (strncmp(p, "<i8'", 4) == 0)
    desc->dtype = SA_DTYPE_I64;
  else
    NPY_ERR(SA_EFORMAT, "%s: unsupported dtype in header %s", path, hdr);
  p = strstr(hdr, "'fortran_order'");
  if (!p || strncmp(p + 15 + strspn(p + 15, ": "), "False", 5) != 0)
    NPY_ERR(SA_EFORMAT, "%s: Fortran order not supported", path);
  p = strstr(hdr, "'shape'");
  if (!p || !(p = strchr(p, '(')))
    NPY_ERR(SA_EFORMAT, "%s: no shape", path);
  p++;
  for (;;) {
    while (*p == ' ' || *p == ',')
      p++;
    if (*p == ')')
      break;
    char *end;
    long long v = strtoll(p, &end, 10);
    if (end == p || v < 0 || desc->ndim >= SA_TENSOR_MAX_DIMS)
      NPY_ERR(SA_EFORMAT, "%s: bad shape", path);
    desc->shape[desc->ndim++] = v;
    p = end;
  }
  size_t nbytes;
  if (sa_tensor_desc_nbytes(desc, &nbytes) != 0)
    NPY_ERR(SA_EFORMAT, "%s: bad shape", path);
  buf = malloc(nbytes ? nbytes : 1);
  if (!buf)
    NPY_ERR(SA_ENOMEM, "%s: out of memory (%zu bytes)", path, nbytes);
  if (fread(buf, 1, nbytes, f) != nbytes)
    NPY_ERR(SA_EFORMAT, "%s: truncated data", path);
  fclose(f);
  free(hdr);
  *data = buf;
  return 0;
fail:
  fclose(f);
  free(hdr);
  free(buf);
  return rc;
}
