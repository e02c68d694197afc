/* backend — picks a backend from a spec string (see kernels.h). */
#include "backend_impl.h"
#include "log.h"

#include "sa_error.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

sa_backend_t *sa_backend_new(const char *spec, int threads) {
  if (!spec || strcmp(spec, "cpu") == 0)
    return sa__backend_cpu_new(threads);
  if (strcmp(spec, "ref") == 0)
    return sa_backend_ref_new();
  if (strncmp(spec, "cuda", 4) == 0) {
    int dev = 0;
    if (spec[4] == ':') {
      char *end = NULL;
      long v = strtol(spec + 5, &end, 10);
      if (!end || *end || v < 0 || v > 1024) {
        SA_LOG_ERROR("bad device spec '%s' (want cpu, cuda or cuda:N)", spec);
        return NULL;
      }
      dev = (int)v;
    } else if (spec[4] != '\0') {
      SA_LOG_ERROR("bad device spec '%s' (want cpu, cuda or cuda:N)", spec);
      return NULL;
    }
#ifdef SA_HAVE_CUDA
    return sa__backend_cuda_new(dev);
#else
    (void)dev;
    SA_LOG_ERROR("device '%s': this build has no CUDA backend", spec);
    return NULL;
#endif
  }
  SA_LOG_ERROR("unknown device '%s' (want cpu, cuda or cuda:N)", spec);
  return NULL;
}

void sa_backend_destroy(sa_backend_t **be) {
  if (!be || !*be)
    return;
  (*be)->ops->destroy(*be);
  *be = NULL;
}

/* Buffers from this size on (weight matrices, KV pools, logits) are placed
 * on 2 MiB boundaries and asked to be backed by transparent huge pages
 * (Debian's default THP mode is "madvise": without the hint every weight
 * matrix sits on 4 KiB pages and the decode GEMV, streaming ~1 GB per step,
 * takes a TLB miss every 4 KiB). A hint: where THP is off it does nothing. */
#define HUGE_FROM ((size_t)1 << 20)
#define HUGE_PAGE ((size_t)2 << 20)

void *sa__host_alloc(sa_backend_t *be, size_t bytes) {
  (void)be;
  const char *off = getenv("SA_NO_THP");
  if (bytes >= HUGE_FROM && !(off && *off && strcmp(off, "0") != 0)) {
    size_t n = (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    void *p = aligned_alloc(HUGE_PAGE, n);
    if (p)
      (void)madvise(p, n, MADV_HUGEPAGE);
    return p;
  }
  size_t n = (bytes + 63) & ~(size_t)63;
  return aligned_alloc(64, n ? n : 64);
}

void sa__host_free(sa_backend_t *be, void *p) {
  (void)be;
  free(p);
}

int sa__host_copy(sa_backend_t *be, void *dst, const void *src, size_t n) {
  (void)be;
  if (n && (!dst || !src))
    return SA_EINVAL;
  if (n)
    memmove(dst, src, n);
  return 0;
}

int sa__host_memset0(sa_backend_t *be, void *dst, size_t n) {
  (void)be;
  if (n && !dst)
    return SA_EINVAL;
  if (n)
    memset(dst, 0, n);
  return 0;
}

int sa__host_sync(sa_backend_t *be) {
  (void)be;
  return 0;
}
