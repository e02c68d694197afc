/*
 * sa_nccl — point-to-point transfer of activation buffers between two
 * co-located pipeline stages on different GPUs of one host, over NCCL.
 * The ncclUniqueId travels as 128 opaque bytes in our own RPC; this module
 * does no rendezvous and no collectives. Named sa_nccl.h (not nccl.h) so it
 * never shadows the system <nccl.h>. Exposes no CUDA or NCCL types.
 * Without NCCL at build time (SA_HAVE_NCCL unset) every call returns
 * SA_EUNIMPL and logs why.
 */
#ifndef SA_NCCL_H
#define SA_NCCL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SA_NCCL_ID_BYTES 128

typedef struct sa_nccl_comm sa_nccl_comm_t;

/* Creates a fresh unique id (on the rank that will hand it out) into out.
 * Returns 0, SA_ECUDA (NCCL failure) or SA_EUNIMPL. Any thread. */
int sa_nccl_get_unique_id(uint8_t out[SA_NCCL_ID_BYTES]);

/* Joins the communicator named by id as `rank` of `nranks` on backend be's
 * device; blocks until every rank has joined. `be` (a CUDA backend, borrowed)
 * must outlive the communicator; send/recv run on its stream, ordered with
 * its ops. On success *out is set; caller owns it (sa_nccl_comm_destroy).
 * Returns 0, SA_EINVAL (not a CUDA backend, bad rank), SA_ENOMEM, SA_ECUDA or
 * SA_EUNIMPL. */
int sa_nccl_comm_new(sa_nccl_comm_t **out, const uint8_t id[SA_NCCL_ID_BYTES],
                     int nranks, int rank, sa_backend_t *be);

/* Enqueues sending n bytes of device memory buf to rank peer on the
 * backend's stream; the peer must post a matching sa_nccl_recv. Returns
 * before the transfer ends: buf must stay untouched until be's ops->sync.
 * Returns 0, SA_EINVAL, SA_ECUDA or SA_EUNIMPL. */
int sa_nccl_send(sa_nccl_comm_t *c, const void *buf, size_t n, int peer);

/* Enqueues receiving n bytes from rank peer into device memory buf; the data
 * is there after be's ops->sync (or for later ops on the same stream).
 * Returns 0, SA_EINVAL, SA_ECUDA or SA_EUNIMPL. */
int sa_nccl_recv(sa_nccl_comm_t *c, void *buf, size_t n, int peer);

/* Destroys *c (may be NULL) and sets it NULL. */
void sa_nccl_comm_destroy(sa_nccl_comm_t **c);

#ifdef __cplusplus
}
#endif
#endif /* SA_NCCL_H */
