/*
 * sa_nccl — NCCL send/recv between co-located pipeline stages (sa_nccl.h).
 * Not a collective library; compiled as stubs returning SA_EUNIMPL when the
 * build found no NCCL.
 */
#include "sa_nccl.h"

#include "log.h"
#include "sa_cuda.h"
#include "sa_error.h"

#include <stdlib.h>
#include <string.h>

#ifdef SA_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

_Static_assert(sizeof(ncclUniqueId) == SA_NCCL_ID_BYTES,
               "ncclUniqueId is 128 bytes");

struct sa_nccl_comm {
  ncclComm_t comm;
  cudaStream_t stream;
  int device;
  int nranks, rank;
};

#define NCK(call)                                                              \
  do {                                                                         \
    ncclResult_t r_ = (call);                                                  \
    if (r_ != ncclSuccess) {                                                   \
      SA_LOG_ERROR("nccl: %s: %s", #call, ncclGetErrorString(r_));             \
      return SA_ECUDA;                                                         \
    }                                                                          \
  } while (0)

int sa_nccl_get_unique_id(uint8_t out[SA_NCCL_ID_BYTES]) {
  if (!out)
    return SA_EINVAL;
  ncclUniqueId id;
  NCK(ncclGetUniqueId(&id));
  memcpy(out, &id, SA_NCCL_ID_BYTES);
  return 0;
}

int sa_nccl_comm_new(sa_nccl_comm_t **out, const uint8_t id[SA_NCCL_ID_BYTES],
                     int nranks, int rank, sa_backend_t *be) {
  if (!out || !id || nranks < 1 || rank < 0 || rank >= nranks)
    return SA_EINVAL;
  *out = NULL;
  void *stream = sa_cuda_backend_stream(be);
  if (!stream) {
    SA_LOG_ERROR("nccl: the backend is not a CUDA backend");
    return SA_EINVAL;
  }
  sa_nccl_comm_t *c = calloc(1, sizeof(*c));
  if (!c)
    return SA_ENOMEM;
  c->stream = (cudaStream_t)stream;
  c->device = sa_cuda_backend_device(be);
  c->nranks = nranks;
  c->rank = rank;
  cudaError_t e = cudaSetDevice(c->device);
  if (e != cudaSuccess) {
    SA_LOG_ERROR("nccl: cudaSetDevice(%d): %s", c->device,
                 cudaGetErrorString(e));
    free(c);
    return SA_ECUDA;
  }
  ncclUniqueId uid;
  memcpy(&uid, id, SA_NCCL_ID_BYTES);
  ncclResult_t r = ncclCommInitRank(&c->comm, nranks, uid, rank);
  if (r != ncclSuccess) {
    SA_LOG_ERROR("nccl: ncclCommInitRank(rank %d of %d): %s", rank, nranks,
                 ncclGetErrorString(r));
    free(c);
    return SA_ECUDA;
  }
  *out = c;
  return 0;
}

static int check_xfer(sa_nccl_comm_t *c, const void *buf, size_t n, int peer) {
  if (!c || (n && !buf) || peer < 0 || peer >= c->nranks || peer == c->rank)
    return SA_EINVAL;
  cudaError_t e = cudaSetDevice(c->device);
  if (e != cudaSuccess) {
    SA_LOG_ERROR("nccl: cudaSetDevice(%d): %s", c->device,
                 cudaGetErrorString(e));
    return SA_ECUDA;
  }
  return 0;
}

int sa_nccl_send(sa_nccl_comm_t *c, const void *buf, size_t n, int peer) {
  int rc = check_xfer(c, buf, n, peer);
  if (rc || n == 0)
    return rc;
  NCK(ncclSend(buf, n, ncclUint8, peer, c->comm, c->stream));
  return 0;
}

int sa_nccl_recv(sa_nccl_comm_t *c, void *buf, size_t n, int peer) {
  int rc = check_xfer(c, buf, n, peer);
  if (rc || n == 0)
    return rc;
  NCK(ncclRecv(buf, n, ncclUint8, peer, c->comm, c->stream));
  return 0;
}

void sa_nccl_comm_destroy(sa_nccl_comm_t **c) {
  if (!c || !*c)
    return;
  ncclResult_t r = ncclCommDestroy((*c)->comm);
  if (r != ncclSuccess)
    SA_LOG_ERROR("nccl: ncclCommDestroy: %s", ncclGetErrorString(r));
  free(*c);
  *c = NULL;
}

#else /* !SA_HAVE_NCCL */

int sa_nccl_get_unique_id(uint8_t out[SA_NCCL_ID_BYTES]) {
  (void)out;
  SA_LOG_ERROR("nccl: this build has no NCCL");
  return SA_EUNIMPL;
}

int sa_nccl_comm_new(sa_nccl_comm_t **out, const uint8_t id[SA_NCCL_ID_BYTES],
                     int nranks, int rank, sa_backend_t *be) {
  (void)id, (void)nranks, (void)rank, (void)be;
  if (out)
    *out = NULL;
  SA_LOG_ERROR("nccl: this build has no NCCL");
  return SA_EUNIMPL;
}

int sa_nccl_send(sa_nccl_comm_t *c, const void *buf, size_t n, int peer) {
  (void)c, (void)buf, (void)n, (void)peer;
  return SA_EUNIMPL;
}

int sa_nccl_recv(sa_nccl_comm_t *c, void *buf, size_t n, int peer) {
  (void)c, (void)buf, (void)n, (void)peer;
  return SA_EUNIMPL;
}

void sa_nccl_comm_destroy(sa_nccl_comm_t **c) {
  if (c)
    *c = NULL;
}

#endif /* SA_HAVE_NCCL */
