/* backend_impl — private constructors of the backends (not a public header). */
#ifndef SA_BACKEND_IMPL_H
#define SA_BACKEND_IMPL_H
#include "kernels.h"

/* kernels/cpu: the optimised CPU backend (runtime SIMD dispatch, OpenBLAS). */
sa_backend_t *sa__backend_cpu_new(int threads);
#ifdef SA_HAVE_CUDA
/* kernels/cuda: device index `device`; NULL (and a log line) with no GPU. */
sa_backend_t *sa__backend_cuda_new(int device);
#endif
#endif
