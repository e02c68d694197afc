/*
 * sa_cuda — small C helpers around the CUDA backend for tests, benchmarks and
 * the NCCL helpers. The backend itself is reached through kernels.h
 * (sa_backend_new("cuda:N")). This header exposes no CUDA types; it is not a
 * general device-management API.
 */
#ifndef SA_CUDA_H
#define SA_CUDA_H

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when there is no GPU or no driver (never
 * an error). Any thread. */
int sa_cuda_device_count(void);

/* The backend's stream as an opaque pointer (a cudaStream_t), for code that
 * must enqueue work in order with the backend's ops (NCCL). `be` is borrowed
 * and must be a CUDA backend; NULL otherwise. */
void *sa_cuda_backend_stream(sa_backend_t *be);

/* The device index a CUDA backend runs on; -1 when `be` is not one. */
int sa_cuda_backend_device(sa_backend_t *be);

#ifdef __cplusplus
}
#endif
#endif /* SA_CUDA_H */
