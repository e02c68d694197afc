/* backend — picks a backend from a spec string (see kernels.h). */
#include "backend_impl.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

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
