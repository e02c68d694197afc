/*
 * sa_nccl without NCCL: this build found no CUDA or no nccl.h. Every call
 * says so (SA_EUNIMPL) and sa_nccl_available() is 0, so the worker compiles
 * and links everywhere and keeps activations on ZeroMQ.
 */
#ifndef SA_HAVE_NCCL
#include "sa_nccl.h"

#include "sa_error.h"

int sa_nccl_available(void) { return 0; }

int sa_nccl_get_unique_id(uint8_t out[SA_NCCL_ID_BYTES]) {
  (void)out;
  return SA_EUNIMPL;
}

int sa_nccl_comm_new(sa_nccl_comm_t **out, const uint8_t id[SA_NCCL_ID_BYTES], int nranks,
                     int rank, sa_backend_t *be, int timeout_ms) {
  (void)id, (void)nranks, (void)rank, (void)be, (void)timeout_ms;
  if (out)
    *out = NULL;
  return SA_EUNIMPL;
}

int sa_nccl_send(sa_nccl_comm_t *c, const void *buf, size_t n, int peer, uint64_t *ticket) {
  (void)c, (void)buf, (void)n, (void)peer, (void)ticket;
  return SA_EUNIMPL;
}

int sa_nccl_send_wait(sa_nccl_comm_t *c, uint64_t ticket, int timeout_ms) {
  (void)c, (void)ticket, (void)timeout_ms;
  return SA_EUNIMPL;
}

int sa_nccl_recv(sa_nccl_comm_t *c, void *buf, size_t n, int peer, int timeout_ms) {
  (void)c, (void)buf, (void)n, (void)peer, (void)timeout_ms;
  return SA_EUNIMPL;
}

void sa_nccl_comm_destroy(sa_nccl_comm_t **c, int abort) {
  (void)abort;
  if (c)
    *c = NULL;
}
#endif /* !SA_HAVE_NCCL */
