/*
 * rpc_endpoint — what the server (rpc_server.c) and the channel
 * (rpc_channel.c) share, as libuv's stream.c is shared by tcp.c and pipe.c:
 * the ZeroMQ context and socket helpers, the message builders, and the
 * endpoint base — one ZeroMQ socket in a libuv loop, its poll / prepare /
 * kick handles, the drain loop, the pool of call slots with their deadline
 * timers, and the close protocol that frees the endpoint once every handle
 * has closed and no call is live. Not a public API: only core/rpc_*.c
 * include it.
 *
 * Event handling: the socket's ZMQ_FD sits in a uv_poll. That fd is
 * edge-triggered (it signals "something changed", not "readable"), and a
 * zmq_send/zmq_getsockopt may consume the edge, so the poll callback drains
 * while ZMQ_EVENTS has POLLIN, and a uv_prepare (run right before the loop
 * blocks for I/O, and before libuv computes the poll timeout) drains again,
 * which covers every send made from any callback in the previous iteration.
 * Work done there starts an idle handle so that the loop then polls with
 * timeout 0 instead of sleeping although callbacks just ran.
 *
 * Call slots live in a fixed pool sized by max_inflight (allocated at init)
 * with their timers initialised once, so starting and ending a call
 * allocates nothing but the ZeroMQ messages themselves.
 */
#ifndef SA_RPC_ENDPOINT_H
#define SA_RPC_ENDPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>
#include <zmq.h>

#include "rpc.h"
#include "rpc_internal.h"

#define SA__RPC_CALL_IDX_BITS 20
#define SA__RPC_CALL_IDX_MASK ((1u << SA__RPC_CALL_IDX_BITS) - 1u)

typedef struct sa__rpc_ep sa__rpc_ep_t;

/* What a variant (server, channel) adds to the base. */
typedef struct {
  const char *what; /* "server", "channel": for log lines */
  /* One received message in ep->rx[0..n); `overflow` frames beyond rx_cap
   * were dropped. The base closes the frames afterwards. */
  void (*on_message)(sa__rpc_ep_t *ep, int n, int overflow);
  /* Other sockets to drain in the prepare phase (NULL: none); returns the
   * messages handled. */
  int (*drain_extra)(sa__rpc_ep_t *ep);
  /* Frees the variant's own memory and the object that embeds ep, once the
   * base has released its own. */
  void (*free)(sa__rpc_ep_t *ep);
} sa__rpc_ep_vt_t;

struct sa__rpc_ep {
  const sa__rpc_ep_vt_t *vt;
  uv_loop_t *loop;
  sa_rpc_opts_t opts; /* its strings point at keys[] below */
  char keys[4][64];   /* public, secret, server key, ZAP domain */
  void *sock;
  uv_poll_t poll;
  uv_prepare_t prep;
  uv_idle_t kick;
  bool started; /* the handles exist */
  bool closing;
  bool draining;
  int pending_closes;
  zmq_msg_t *rx, *tx; /* rx_cap messages each */
  int rx_cap;
  sa__rpc_env_t env; /* the decoded envelope of the message in hand */
  uv_timer_t *timers; /* max_inflight: timers[i] belongs to call slot i */
  int *free_idx;
  int n_free, n_live;
};

/* --- shared helpers --- */

/* The process-wide ZeroMQ context (never terminated). NULL if ZeroMQ could
 * not create one. */
void *sa__rpc_ctx(void);
/* opts (may be NULL) with defaults filled in, checked (keys: Z85 of 40
 * characters, a pair or none; a domain of <= 63 bytes). 0 or SA_EINVAL. The
 * strings still point at in's. */
int sa__rpc_opts_resolve(const sa_rpc_opts_t *in, sa_rpc_opts_t *o);
/* True while the process's authenticator runs (rpc_auth.c). */
bool sa__rpc_auth_live(void);
/* True if a message is waiting on socket s (ZMQ_EVENTS has POLLIN). */
bool sa__rpc_readable(void *s);
/* Receives one multipart message into rx[0..cap); frames beyond cap are
 * dropped and counted in *overflow. Returns the frames kept, 0 if nothing
 * was waiting, -1 on a receive error. *total gets the bytes of all frames. */
int sa__rpc_recv(void *sock, zmq_msg_t *rx, int cap, int *overflow, size_t *total);
void sa__rpc_close_msgs(zmq_msg_t *m, int n);
/* Calls free_fn of frames that carry one (ownership passes in all cases). */
void sa__rpc_release_frames(const sa_rpc_frame_t *t, int n);
/* 0, or SA_EINVAL with why[cap] filled, for frames that do not match their
 * descriptors or exceed max_tensors. */
int sa__rpc_check_frames(const sa_rpc_frame_t *t, int n, int max_tensors, char *why, size_t cap);
/* Builds the messages of one outgoing message into out[] (envelope, body,
 * tensors), consuming the frames' ownership. Returns the count or a
 * negative code (everything released). */
int sa__rpc_build_msgs(zmq_msg_t *out, const sa__rpc_env_out_t *e, const void *body, size_t len);
/* Sends msgs[0..n) as one multipart message, closing what was not handed
 * over. 0, SA_EFULL (queue full), SA_EUNAVAIL (unroutable peer) or SA_EIO. */
int sa__rpc_send_msgs(void *sock, zmq_msg_t *msgs, int n);
/* The free_fn that marks a frame forwarding a received message (hint: its
 * zmq_msg_t); see sa_rpc_call_forward_tensor. */
void sa__rpc_forward_marker(void *data, void *hint);

/* --- the endpoint base --- */

/* Step 1: resolves opts (copying its strings), allocates the message arrays
 * (rx_cap each) and the slot pool, creates a socket of zmq_type with the
 * common options and, with keys, CurveZMQ's (ROUTER: as the server). No
 * handle exists yet: on a later failure call sa__rpc_ep_abandon. */
int sa__rpc_ep_init(sa__rpc_ep_t *ep, const sa__rpc_ep_vt_t *vt, uv_loop_t *loop,
                    const sa_rpc_opts_t *opts, int zmq_type, int rx_cap);
/* Undoes step 1 (socket closed, arrays freed); ep's container is the
 * caller's to free. */
void sa__rpc_ep_abandon(sa__rpc_ep_t *ep);
/* Step 2: the poll, prepare and kick handles and the slot timers (their
 * data is the caller's to set), polling started. From here on the endpoint
 * ends only through sa__rpc_ep_close. 0 or SA_EIO. */
int sa__rpc_ep_start(sa__rpc_ep_t *ep);
/* Drains the socket (not re-entrant: returns 0 if already draining).
 * Returns the messages handled. */
int sa__rpc_ep_drain(sa__rpc_ep_t *ep);
/* A free slot index, or -1 when all max_inflight are live. */
int sa__rpc_ep_slot_take(sa__rpc_ep_t *ep);
/* Returns slot idx to the pool; may free the endpoint if it is closing. */
void sa__rpc_ep_slot_put(sa__rpc_ep_t *ep, int idx);
/* Closes one more handle of the variant with the base's accounting. */
void sa__rpc_ep_close_handle(sa__rpc_ep_t *ep, uv_handle_t *h);
/* Starts closing: every handle and timer, then the socket. The memory goes
 * once all closes have run and no slot is live. */
void sa__rpc_ep_close(sa__rpc_ep_t *ep);

#endif /* SA_RPC_ENDPOINT_H */
