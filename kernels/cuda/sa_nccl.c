/*
 * sa_nccl — NCCL send/recv between co-located pipeline stages (sa_nccl.h).
 * Not a collective library. Compiled only with NCCL (SA_HAVE_NCCL); without
 * it kernels/sa_nccl_none.c provides the same functions returning
 * SA_EUNIMPL.
 */
#ifdef SA_HAVE_NCCL
#include "sa_nccl.h"
#include "sa_time.h"

#include "log.h"
#include "sa_cuda.h"
#include "sa_error.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

_Static_assert(sizeof(ncclUniqueId) == SA_NCCL_ID_BYTES, "ncclUniqueId is 128 bytes");

/* Sends in flight per communicator before the oldest must have finished. */
#define SEND_RING 8

struct sa_nccl_comm {
  ncclComm_t comm;
  cudaStream_t be_stream;   /* the backend's (borrowed) */
  cudaStream_t send_stream; /* ours */
  cudaEvent_t ready;        /* backend's ops before a send */
  cudaEvent_t recvd;        /* the last receive has landed */
  cudaEvent_t sent[SEND_RING];
  uint64_t next_ticket, done_ticket; /* tickets < done_ticket are finished */
  uint64_t n_recv;                   /* receives posted (for the log) */
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

#define CK(call)                                                               \
  do {                                                                         \
    cudaError_t e_ = (call);                                                   \
    if (e_ != cudaSuccess) {                                                   \
      SA_LOG_ERROR("nccl: %s: %s", #call, cudaGetErrorString(e_));             \
      return SA_ECUDA;                                                         \
    }                                                                          \
  } while (0)

int sa_nccl_available(void) { return 1; }

int sa_nccl_get_unique_id(uint8_t out[SA_NCCL_ID_BYTES]) {
  if (!out)
    return SA_EINVAL;
  ncclUniqueId id;
  NCK(ncclGetUniqueId(&id));
  memcpy(out, &id, SA_NCCL_ID_BYTES);
  return 0;
}

static void release(sa_nccl_comm_t *c) {
  for (int i = 0; i < SEND_RING; i++)
    if (c->sent[i])
      cudaEventDestroy(c->sent[i]);
  if (c->ready)
    cudaEventDestroy(c->ready);
  if (c->recvd)
    cudaEventDestroy(c->recvd);
  if (c->send_stream)
    cudaStreamDestroy(c->send_stream);
  free(c);
}

/* The communicator is non-blocking (a peer that never joins must not hang
 * the caller): operations may answer ncclInProgress; wait until the
 * communicator says done, at most timeout_ms (< 0: no limit). */
static ncclResult_t settle(ncclComm_t comm, ncclResult_t r, int timeout_ms) {
  double t0 = (1e3 * sa_now_s());
  while (r == ncclInProgress) {
    if (timeout_ms >= 0 && (1e3 * sa_now_s()) - t0 > timeout_ms)
      return ncclInProgress;
    struct timespec nap = {0, 100000};
    nanosleep(&nap, NULL);
    ncclResult_t st = ncclCommGetAsyncError(comm, &r);
    if (st != ncclSuccess)
      return st;
  }
  return r;
}

int sa_nccl_comm_new(sa_nccl_comm_t **out, const uint8_t id[SA_NCCL_ID_BYTES], int nranks,
                     int rank, sa_backend_t *be, int timeout_ms) {
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
  c->be_stream = (cudaStream_t)stream;
  c->device = sa_cuda_backend_device(be);
  c->nranks = nranks;
  c->rank = rank;
  cudaError_t e = cudaSetDevice(c->device);
  if (e == cudaSuccess)
    e = cudaStreamCreateWithFlags(&c->send_stream, cudaStreamNonBlocking);
  if (e == cudaSuccess)
    e = cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming);
  if (e == cudaSuccess)
    e = cudaEventCreateWithFlags(&c->recvd, cudaEventDisableTiming);
  for (int i = 0; i < SEND_RING && e == cudaSuccess; i++)
    e = cudaEventCreateWithFlags(&c->sent[i], cudaEventDisableTiming);
  if (e != cudaSuccess) {
    SA_LOG_ERROR("nccl: stream/events on device %d: %s", c->device, cudaGetErrorString(e));
    release(c);
    return SA_ECUDA;
  }
  ncclUniqueId uid;
  memcpy(&uid, id, SA_NCCL_ID_BYTES);
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  ncclResult_t r = ncclCommInitRankConfig(&c->comm, nranks, uid, rank, &cfg);
  if (r == ncclSuccess || r == ncclInProgress)
    r = settle(c->comm, r, timeout_ms);
  if (r != ncclSuccess) {
    SA_LOG_ERROR("nccl: joining as rank %d of %d: %s", rank, nranks,
                 r == ncclInProgress ? "the peer did not join in time" : ncclGetErrorString(r));
    if (c->comm)
      ncclCommAbort(c->comm);
    release(c);
    return r == ncclInProgress ? SA_ETIMEDOUT : SA_ECUDA;
  }
  *out = c;
  return 0;
}

static int check_xfer(sa_nccl_comm_t *c, const void *buf, size_t n, int peer) {
  if (!c || (n && !buf) || peer < 0 || peer >= c->nranks || peer == c->rank)
    return SA_EINVAL;
  CK(cudaSetDevice(c->device));
  return 0;
}

/* Polls ev until it has happened, at most timeout_ms (< 0: no limit); an
 * asynchronous NCCL error (a peer that went away, a network error) ends the
 * wait early. `what` names the operation in the log. */
static int wait_event(sa_nccl_comm_t *c, cudaEvent_t ev, int timeout_ms, const char *what,
                      unsigned long long seq) {
  double t0 = (1e3 * sa_now_s());
  for (;;) {
    cudaError_t e = cudaEventQuery(ev);
    if (e == cudaSuccess)
      return 0;
    if (e != cudaErrorNotReady) {
      SA_LOG_ERROR("nccl: %s %llu: %s", what, seq, cudaGetErrorString(e));
      return SA_ECUDA;
    }
    ncclResult_t ar = ncclSuccess;
    if (ncclCommGetAsyncError(c->comm, &ar) != ncclSuccess ||
        (ar != ncclSuccess && ar != ncclInProgress)) {
      SA_LOG_ERROR("nccl: %s %llu: %s", what, seq, ncclGetErrorString(ar));
      return SA_ECUDA;
    }
    if (timeout_ms >= 0 && (1e3 * sa_now_s()) - t0 > timeout_ms)
      return SA_ETIMEDOUT;
    struct timespec nap = {0, 20000}; /* 20 us: transfers take microseconds */
    nanosleep(&nap, NULL);
  }
}

int sa_nccl_send_wait(sa_nccl_comm_t *c, uint64_t ticket, int timeout_ms) {
  if (!c || ticket >= c->next_ticket)
    return SA_EINVAL;
  if (ticket < c->done_ticket)
    return 0;
  CK(cudaSetDevice(c->device));
  int rc = wait_event(c, c->sent[ticket % SEND_RING], timeout_ms, "send",
                      (unsigned long long)ticket);
  if (rc)
    return rc;
  c->done_ticket = ticket + 1; /* sends complete in order on one stream */
  return 0;
}

int sa_nccl_send(sa_nccl_comm_t *c, const void *buf, size_t n, int peer, uint64_t *ticket) {
  int rc = check_xfer(c, buf, n, peer);
  if (rc || !ticket)
    return rc ? rc : SA_EINVAL;
  /* the ring slot this send records into must be free */
  if (c->next_ticket >= SEND_RING && (rc = sa_nccl_send_wait(c, c->next_ticket - SEND_RING, -1)))
    return rc;
  CK(cudaEventRecord(c->ready, c->be_stream));
  CK(cudaStreamWaitEvent(c->send_stream, c->ready, 0));
  if (n)
    NCK(settle(c->comm, ncclSend(buf, n, ncclUint8, peer, c->comm, c->send_stream), -1));
  CK(cudaEventRecord(c->sent[c->next_ticket % SEND_RING], c->send_stream));
  *ticket = c->next_ticket++;
  return 0;
}

int sa_nccl_recv(sa_nccl_comm_t *c, void *buf, size_t n, int peer, int timeout_ms) {
  int rc = check_xfer(c, buf, n, peer);
  if (rc || n == 0)
    return rc;
  ncclResult_t r = settle(c->comm, ncclRecv(buf, n, ncclUint8, peer, c->comm, c->be_stream),
                          timeout_ms);
  if (r == ncclInProgress)
    return SA_ETIMEDOUT;
  if (r != ncclSuccess) {
    SA_LOG_ERROR("nccl: ncclRecv: %s", ncclGetErrorString(r));
    return SA_ECUDA;
  }
  CK(cudaEventRecord(c->recvd, c->be_stream));
  return wait_event(c, c->recvd, timeout_ms, "receive", (unsigned long long)c->n_recv++);
}

void sa_nccl_comm_destroy(sa_nccl_comm_t **c, int abort) {
  if (!c || !*c)
    return;
  cudaSetDevice((*c)->device);
  ncclResult_t r = abort ? ncclCommAbort((*c)->comm) : ncclCommDestroy((*c)->comm);
  if (r != ncclSuccess)
    SA_LOG_ERROR("nccl: %s: %s", abort ? "ncclCommAbort" : "ncclCommDestroy",
                 ncclGetErrorString(r));
  release(*c);
  *c = NULL;
}
#endif /* SA_HAVE_NCCL */
