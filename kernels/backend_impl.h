/* backend_impl — private constructors of the backends (not a public header). */
#ifndef SA_BACKEND_IMPL_H
#define SA_BACKEND_IMPL_H
#include "kernels.h"

/* kernels/cpu: the optimised CPU backend (runtime SIMD dispatch, OpenBLAS). */
sa_backend_t *sa__backend_cpu_new(int threads);
/* Memory ops of the backends whose memory is host memory (ref, cpu):
 * 64-byte aligned allocations, memmove copies (upload/download/copy),
 * memset, and a sync that has nothing to wait for. */
void *sa__host_alloc(sa_backend_t *be, size_t bytes);
void sa__host_free(sa_backend_t *be, void *p);
int sa__host_copy(sa_backend_t *be, void *dst, const void *src, size_t n);
int sa__host_memset0(sa_backend_t *be, void *dst, size_t n);
int sa__host_sync(sa_backend_t *be);

#ifdef SA_HAVE_CUDA
/* kernels/cuda: device index `device`; NULL (and a log line) with no GPU. */
sa_backend_t *sa__backend_cuda_new(int device);
#endif
#endif
