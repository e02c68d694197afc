/* libFuzzer target over sa_st_parse_buffer: any bytes must give either an
 * error with a message or a table whose every tensor lies inside the buffer,
 * has a byte size equal to dtype x shape, and is found again by name. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sa_error.h"
#include "safetensors.h"

#define CHECK(c)                                                               \
  do {                                                                         \
    if (!(c))                                                                  \
      __builtin_trap();                                                        \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sa_st_t *st = NULL;
  char err[256];
  err[0] = '\0';
  int rc = sa_st_parse_buffer(data, size, "fuzz.safetensors", &st, err,
                              sizeof err);
  if (rc != 0) {
    CHECK(st == NULL);
    CHECK(rc == SA_EFORMAT || rc == SA_ENOMEM);
    CHECK(err[0] != '\0');
    return 0;
  }
  CHECK(st != NULL);
  size_t n = sa_st_count(st);
  const uint8_t *end = data + size;
  for (size_t i = 0; i < n; i++) {
    const sa_st_tensor_t *t = sa_st_at(st, i);
    CHECK(t && t->name && t->file);
    size_t nb;
    CHECK(sa_tensor_desc_nbytes(&t->desc, &nb) == 0 && nb == t->nbytes);
    const uint8_t *p = t->data;
    CHECK(p >= data && p <= end && t->nbytes <= (size_t)(end - p));
    if (i > 0)
      CHECK(strcmp(sa_st_at(st, i - 1)->name, t->name) < 0);
    CHECK(sa_st_find(st, t->name) == t);
    const sa_st_tensor_t *g = NULL;
    CHECK(sa_st_get(st, t->name, t->desc.dtype, t->desc.ndim, t->desc.shape,
                    &g, err, sizeof err) == 0 && g == t);
    /* touch the bytes so ASan sees any out-of-bounds view */
    volatile uint8_t sink = 0;
    for (size_t k = 0; k < t->nbytes; k++)
      sink ^= p[k];
    (void)sink;
  }
  CHECK(sa_st_at(st, n) == NULL);
  sa_st_close(&st);
  CHECK(st == NULL);
  return 0;
}
