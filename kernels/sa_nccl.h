/*
 * sa_nccl — point-to-point transfer of activation buffers between two
 * co-located pipeline stages on different GPUs of one host, over NCCL.
 * The ncclUniqueId travels as 128 opaque bytes in our own RPC (Stage/Link);
 * this module does no rendezvous and no collectives. Named sa_nccl.h (not
 * nccl.h) so it never shadows the system <nccl.h>. Exposes no CUDA or NCCL
 * types. Without NCCL at build time (no CUDA, or CUDA without nccl.h) every
 * call returns SA_EUNIMPL (kernels/sa_nccl_none.c) and sa_nccl_available()
 * is 0, so callers compile and link everywhere.
 *
 * Threads: a communicator is used by one thread at a time (the stage's
 * compute thread). Receives run on the backend's stream (the data is there
 * for the backend's next ops); sends run on the communicator's own stream
 * after the backend's prior ops, so the sender's next step does not wait for
 * the peer to post its receive.
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

/* 1 when this build can use NCCL (it may still find no GPU at run time). */
int sa_nccl_available(void);

/* Creates a fresh unique id (on the rank that will hand it out) into out.
 * Returns 0, SA_ECUDA (NCCL failure) or SA_EUNIMPL. Any thread. */
int sa_nccl_get_unique_id(uint8_t out[SA_NCCL_ID_BYTES]);

/* Joins the communicator named by id as `rank` of `nranks` on backend be's
 * device; blocks until every rank has joined or timeout_ms passed (< 0: no
 * limit; the join is then abandoned). `be` (a CUDA backend, borrowed) must
 * outlive the communicator. On success *out is set; caller owns it
 * (sa_nccl_comm_destroy). Returns 0, SA_EINVAL (not a CUDA backend, bad
 * rank), SA_ENOMEM, SA_ETIMEDOUT, SA_ECUDA or SA_EUNIMPL. */
int sa_nccl_comm_new(sa_nccl_comm_t **out, const uint8_t id[SA_NCCL_ID_BYTES],
                     int nranks, int rank, sa_backend_t *be, int timeout_ms);

/* Enqueues sending n bytes of device memory buf to rank peer on the
 * communicator's own stream, ordered after every op enqueued so far on the
 * backend's stream. Returns before the transfer ends, with *ticket naming it:
 * buf must stay untouched until sa_nccl_send_wait(c, *ticket) returned 0.
 * Returns 0, SA_EINVAL, SA_ECUDA or SA_EUNIMPL. */
int sa_nccl_send(sa_nccl_comm_t *c, const void *buf, size_t n, int peer,
                 uint64_t *ticket);

/* Waits until the send `ticket` (and so every earlier one) has finished, at
 * most timeout_ms (< 0: no limit). Returns 0, SA_ETIMEDOUT (the peer never
 * posted its receive: the communicator should be aborted), SA_EINVAL,
 * SA_ECUDA or SA_EUNIMPL. */
int sa_nccl_send_wait(sa_nccl_comm_t *c, uint64_t ticket, int timeout_ms);

/* Receives n bytes from rank peer into device memory buf on the backend's
 * stream and waits until they have arrived, at most timeout_ms (< 0: no
 * limit): the data is there for the backend's later ops. A peer that died
 * between its send and ours would otherwise leave the backend's stream (and
 * the stage) blocked for good. Returns 0, SA_ETIMEDOUT (nothing came: the
 * communicator must be aborted, which also ends the pending receive),
 * SA_EINVAL, SA_ECUDA (NCCL reported an error) or SA_EUNIMPL. */
int sa_nccl_recv(sa_nccl_comm_t *c, void *buf, size_t n, int peer, int timeout_ms);

/* Destroys *c (may be NULL) and sets it NULL. With abort set, pending
 * operations are abandoned (ncclCommAbort: a peer that went away). */
void sa_nccl_comm_destroy(sa_nccl_comm_t **c, int abort);

#ifdef __cplusplus
}
#endif
#endif /* SA_NCCL_H */
