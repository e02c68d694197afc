/*
 * rpc — gRPC-style calls over ZeroMQ, driven by a libuv loop (docs/protocol.md).
 *
 * What it is: a server (ROUTER, bind) that dispatches requests to handlers
 * registered per method name, unary or server-streaming; a channel (DEALER,
 * connect) that keeps many calls in flight matched by call id, with
 * deadlines, cancellation, gRPC status codes and zero-copy tensor frames;
 * and a blocking convenience call for CLIs and tests.
 *
 * What it is not: it does not know the messages of sa.proto (request and
 * response bodies are opaque bytes the caller packs with protobuf-c), it does
 * not retry, load-balance or discover peers, and it does not know who may
 * call what: with CurveZMQ keys in sa_rpc_opts_t every connection is
 * encrypted and the server asks the process's authenticator
 * (sa_rpc_auth_new, ZeroMQ's ZAP) whether to accept each peer's key; what
 * a peer may then call is the server's guard's business
 * (sa_rpc_server_set_guard), with the identity the authenticator gave it
 * (sa_rpc_call_peer).
 *
 * Wire format: every message is multipart — frame 0 an sa.Envelope, frame 1
 * the body (the method's protobuf message, possibly empty), frames 2.. raw
 * little-endian tensor bytes described by Envelope.tensors. Envelope
 * deadline_ms is RELATIVE (milliseconds left when the envelope was written).
 *
 * Threads: a server or channel belongs to the libuv loop it was created on;
 * every function taking one must be called on that loop's thread, and every
 * callback runs on it. The one exception is sa_rpc_free_fn, which may run on
 * a ZeroMQ I/O thread. Different loops on different threads may each own
 * servers and channels. No ZeroMQ, libuv or protobuf-c type appears here: the
 * loop is passed as `struct uv_loop_s *` (libuv's uv_loop_t), declared below.
 *
 * Lifetimes: _new objects are destroyed with _destroy, which closes the
 * libuv handles; the memory is released from their close callbacks, so the
 * loop must run (uv_run) after _destroy until those have fired. Destroy is
 * safe from inside the object's own callbacks.
 */
#ifndef SA_RPC_H
#define SA_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sa_error.h"
#include "tensor.h"

struct uv_loop_s; /* libuv's uv_loop_t */

typedef struct sa_rpc_server sa_rpc_server_t;
typedef struct sa_rpc_channel sa_rpc_channel_t;
typedef struct sa_rpc_call sa_rpc_call_t; /* one call, server side */

/* ---------------------------------------------------------------- options */

typedef struct {
  /* Largest message accepted, all frames together (default 512 MiB): set it
   * from the largest legal message of the socket's methods. A frame larger
   * than this is refused by ZeroMQ itself before it is buffered (the
   * connection is dropped); a message whose frames together are larger is
   * answered RESOURCE_EXHAUSTED. */
  size_t max_msg_bytes;
  /* Most tensor frames per message (default 16, at most 256). */
  int max_tensors;
  /* Channel: calls in flight at once; a call started beyond it fails with
   * SA_EFULL. Server: calls in progress at once; more are answered
   * RESOURCE_EXHAUSTED. Default 1024, at most 1<<20. */
  int max_inflight;
  /* ZeroMQ high-water marks in messages (default 10000 each). A send to a
   * peer whose queue is full fails with SA_EFULL; nothing is dropped
   * silently. */
  int sndhwm, rcvhwm;
  /* ZMTP heartbeats: ping every ivl ms, drop the connection after timeout ms
   * of silence (defaults 1000 and 5000; 0 = off). A dropped connection fails
   * the channel's calls in flight with UNAVAILABLE. */
  int heartbeat_ivl_ms, heartbeat_timeout_ms;
  /* Reconnect interval in ms for channels (default 100). */
  int reconnect_ivl_ms;
  /* CurveZMQ: this end's key pair (Z85, 40 characters each); NULL = plain
   * text. A server with keys needs the process's authenticator
   * (sa_rpc_auth_new) first, or _new fails with SA_EINVAL; a channel with
   * keys also needs curve_server_key. Copied by _new. */
  const char *curve_public_key;
  const char *curve_secret_key;
  const char *curve_server_key; /* channel: the server's public key */
  /* Server: the ZAP domain handed to the authenticator with every
   * handshake (e.g. which kinds of peer this server accepts); <= 63 bytes. */
  const char *zap_domain;
} sa_rpc_opts_t;

/* Fills *o with the defaults above. */
void sa_rpc_opts_default(sa_rpc_opts_t *o);

/* --------------------------------------------------------------- tensors */

/* Releases a zero-copy frame's data once ZeroMQ is done with it. May run on a
 * ZeroMQ I/O thread, never inside the call that queued the frame unless the
 * send failed. Same signature as zmq_free_fn. */
typedef void (*sa_rpc_free_fn)(void *data, void *hint);

/* A tensor frame to send.
 * - free_fn == NULL: the bytes are copied; the caller keeps its buffer.
 * - free_fn == sa_rpc_free_none: zero-copy; the caller guarantees the bytes
 *   stay valid and unchanged until the process is done with them (e.g.
 *   weights, static or pooled buffers that outlive the channel/server).
 * - any other free_fn: zero-copy; ownership of data passes to the rpc layer,
 *   which calls free_fn(data, hint) exactly once when ZeroMQ is done — on
 *   success and on every failure path alike.
 * desc must describe exactly nbytes bytes. */
typedef struct {
  sa_tensor_desc_t desc;
  const void *data;
  size_t nbytes;
  sa_rpc_free_fn free_fn;
  void *hint;
} sa_rpc_frame_t;

/* A no-op free_fn: marks a frame zero-copy with caller-guaranteed lifetime. */
void sa_rpc_free_none(void *data, void *hint);

/* A received tensor frame: borrowed, points into the received ZeroMQ
 * message (no copy). Valid as long as the object it came from (see there). */
typedef struct {
  sa_tensor_desc_t desc;
  const void *data;
  size_t nbytes;
} sa_rpc_tensor_t;

/* ----------------------------------------------------------------- server */

typedef enum {
  SA_RPC_UNARY = 0,  /* one response: sa_rpc_call_reply */
  SA_RPC_STREAM = 1, /* sa_rpc_call_send many times, then sa_rpc_call_finish */
} sa_rpc_kind_t;

/* Handles one call. The call stays valid until the handler (now or later, on
 * the same loop) ends it with sa_rpc_call_reply (unary) or
 * sa_rpc_call_finish (stream) — exactly once, also when it was cancelled or
 * its deadline passed. */
typedef void (*sa_rpc_handler_cb)(sa_rpc_call_t *call, void *user);

/* Called once when the caller cancels the call, its deadline passes, or the
 * server is destroyed. (A caller that vanished is seen when sending: send,
 * reply and finish return SA_EUNAVAIL.) The call remains valid until the
 * handler ends it. */
typedef void (*sa_rpc_cancel_cb)(sa_rpc_call_t *call, void *user);

/* Creates a server on loop. opts may be NULL (defaults; copied). Caller owns
 * *out; destroy with sa_rpc_server_destroy. Returns 0, SA_EINVAL (also: bad
 * keys, or keys without an authenticator) or SA_EIO. */
int sa_rpc_server_new(struct uv_loop_s *loop, const sa_rpc_opts_t *opts,
                      sa_rpc_server_t **out);

/* Binds endpoint (e.g. "tcp://127.0.0.1:*", "ipc:///tmp/x"); may be called
 * more than once. Returns 0 or SA_EIO (logged). */
int sa_rpc_server_bind(sa_rpc_server_t *srv, const char *endpoint);

/* The last bound endpoint with the port resolved ("tcp://127.0.0.1:40123").
 * Borrowed, valid until the next bind or destroy. */
const char *sa_rpc_server_endpoint(const sa_rpc_server_t *srv);

/* Registers handler for method ("Service/Method"; copied). user is borrowed.
 * Returns 0, SA_EEXIST if the method is registered, or SA_EINVAL. */
int sa_rpc_server_register(sa_rpc_server_t *srv, const char *method,
                           sa_rpc_kind_t kind, sa_rpc_handler_cb handler,
                           void *user);

/* Calls in progress (started, not yet ended by the handler). */
int sa_rpc_server_inflight(const sa_rpc_server_t *srv);

/* Decides whether a peer may call method: peer is what the authenticator
 * said of it (sa_rpc_call_peer; "" on a plain-text server). A call refused
 * is answered PERMISSION_DENIED and never reaches the handler. */
typedef bool (*sa_rpc_guard_cb)(const char *method, const char *peer, void *user);

/* Sets the guard (user borrowed); NULL = every method to every peer. */
void sa_rpc_server_set_guard(sa_rpc_server_t *srv, sa_rpc_guard_cb guard, void *user);

/* Stops serving: closes the socket (linger 0) and cancels every call in
 * progress (their cancel callbacks run inside this function). Calls still
 * held by handlers stay valid until ended; their replies are dropped. The
 * memory goes once the loop has run the close callbacks and every call has
 * ended. Sets *srv to NULL; NULL or *srv NULL is a no-op. */
void sa_rpc_server_destroy(sa_rpc_server_t **srv);

/* --- the server-side call: accessors are borrowed, valid until the call
 * ends (reply/finish). --- */
const char *sa_rpc_call_method(const sa_rpc_call_t *call);
uint64_t sa_rpc_call_id(const sa_rpc_call_t *call);
const char *sa_rpc_call_trace_id(const sa_rpc_call_t *call); /* "" if none */
/* Who called: the user id the authenticator gave the peer's key ("" on a
 * plain-text server). */
const char *sa_rpc_call_peer(const sa_rpc_call_t *call);
/* The request body (frame 1) and its length; zero-copy. */
const void *sa_rpc_call_request(const sa_rpc_call_t *call, size_t *len);
int sa_rpc_call_n_tensors(const sa_rpc_call_t *call);
/* Tensor frame i of the request (zero-copy); NULL if i is out of range. */
const sa_rpc_tensor_t *sa_rpc_call_tensor(const sa_rpc_call_t *call, int i);
/* Fills *out so that reply/send forwards request tensor i without a copy
 * (the bytes are shared by reference count). Only valid in a reply or send
 * of this same call. Returns 0 or SA_EINVAL. */
int sa_rpc_call_forward_tensor(sa_rpc_call_t *call, int i, sa_rpc_frame_t *out);
/* Milliseconds left until the caller's deadline (>= 0), or -1 if none. */
int64_t sa_rpc_call_remaining_ms(const sa_rpc_call_t *call);
/* True once the call was cancelled, its deadline passed or its peer left;
 * *status (may be NULL) then says which (CANCELLED, DEADLINE_EXCEEDED,
 * UNAVAILABLE). */
bool sa_rpc_call_is_cancelled(const sa_rpc_call_t *call, sa_status_t *status);
/* Sets the cancel callback (user borrowed). If the call is already
 * cancelled, cb runs before this returns. */
void sa_rpc_call_set_cancel_cb(sa_rpc_call_t *call, sa_rpc_cancel_cb cb,
                               void *user);

/* Ends a unary call with status (message msg, may be NULL; copied), body
 * (copied; may be NULL/0) and tensor frames (see sa_rpc_frame_t for
 * ownership: consumed on every path). Returns 0; SA_ETIMEDOUT /
 * SA_ECANCELED when the reply was dropped because the deadline passed or the
 * call was cancelled; SA_EUNAVAIL if the peer is gone; SA_EINVAL for bad
 * arguments (the peer then gets INTERNAL). After any of these the call
 * pointer is invalid. The one exception is SA_EFULL — the peer's queue is at
 * its high-water mark and nothing was sent: the call stays open and the
 * handler must reply again later (e.g. from a timer), passing its tensor
 * frames again. */
int sa_rpc_call_reply(sa_rpc_call_t *call, sa_status_t status, const char *msg,
                      const void *body, size_t len,
                      const sa_rpc_frame_t *tensors, int n_tensors);

/* Ends a unary call with OK and a protobuf-c message as the body: `msg` is a
 * `const ProtobufCMessage *` (any generated message's `&m.base`; typed void
 * here so this header names no protobuf-c type). Packs it into a buffer of
 * its own and calls sa_rpc_call_reply; replies RESOURCE_EXHAUSTED when the
 * buffer cannot be had. Returns as sa_rpc_call_reply. */
int sa_rpc_call_reply_pb(sa_rpc_call_t *call, const void *msg);

/* Sends one message of a streaming call (body copied; frames as above).
 * Returns 0; SA_EFULL when the peer's queue is at its high-water mark (the
 * message was not sent: retry later, e.g. from a timer); SA_ECANCELED /
 * SA_ETIMEDOUT / SA_EUNAVAIL once the call is over for the peer (stop and
 * finish); SA_EINVAL for bad arguments or a unary call. */
int sa_rpc_call_send(sa_rpc_call_t *call, const void *body, size_t len,
                     const sa_rpc_frame_t *tensors, int n_tensors);

/* Ends a streaming call with status (msg may be NULL). Returns as
 * sa_rpc_call_reply: the call pointer is invalid afterwards, except after
 * SA_EFULL (nothing sent; finish again later). */
int sa_rpc_call_finish(sa_rpc_call_t *call, sa_status_t status,
                       const char *msg);

/* ---------------------------------------------------------- authenticator */

typedef struct sa_rpc_auth sa_rpc_auth_t;

/* Decides one CurveZMQ handshake. domain: the server's zap_domain; address:
 * the peer's IP address; key: its 32-byte public key (proved by the
 * handshake). Returns true to accept, with user_id[cap] filled: it becomes
 * sa_rpc_call_peer of every call over that connection. A refused peer's
 * connection is closed before any of its messages is read. */
typedef bool (*sa_rpc_auth_cb)(const char *domain, const char *address, const uint8_t key[32],
                               char *user_id, size_t cap, void *user);

/* Starts the process's authenticator on loop (ZeroMQ's ZAP handler, on the
 * inproc endpoint every CURVE server of the process consults; the loop must
 * keep running for handshakes to complete). user is borrowed. One per
 * process: SA_EEXIST if one exists. 0, SA_EINVAL, SA_EEXIST or SA_EIO. */
int sa_rpc_auth_new(struct uv_loop_s *loop, sa_rpc_auth_cb cb, void *user, sa_rpc_auth_t **out);

/* Stops it (servers with keys then refuse every handshake); as the other
 * _destroy functions. */
void sa_rpc_auth_destroy(sa_rpc_auth_t **auth);

/* ---------------------------------------------------------------- channel */

/* What the caller gets back: borrowed, valid only during the callback
 * (body and tensors point into received ZeroMQ messages). */
typedef struct {
  uint64_t call_id;
  sa_status_t status;
  const char *status_msg; /* "" if none; never NULL */
  const void *body;       /* frame 1; NULL if none */
  size_t body_len;
  const sa_rpc_tensor_t *tensors;
  int n_tensors;
} sa_rpc_result_t;

/* Unary completion: runs exactly once per successfully started call, with
 * status OK and the response, or an error status (the server's, or
 * DEADLINE_EXCEEDED, CANCELLED, UNAVAILABLE raised locally). */
typedef void (*sa_rpc_unary_cb)(sa_rpc_channel_t *ch, const sa_rpc_result_t *res,
                                void *user);
/* Streaming: msg_cb once per STREAM_MSG in order (status OK), then end_cb
 * exactly once with the final status (body/tensors empty). */
typedef void (*sa_rpc_stream_msg_cb)(sa_rpc_channel_t *ch,
                                     const sa_rpc_result_t *msg, void *user);
typedef void (*sa_rpc_stream_end_cb)(sa_rpc_channel_t *ch,
                                     const sa_rpc_result_t *end, void *user);

typedef struct {
  /* Relative deadline in ms; 0 = none. */
  int64_t timeout_ms;
  /* Propagated in the envelope (copied; <= 64 bytes); NULL = none. */
  const char *trace_id;
  /* Queue the call while the channel is reconnecting instead of failing it
   * with SA_EUNAVAIL (the deadline still applies). */
  bool wait_for_ready;
} sa_rpc_call_opts_t;

/* Creates a channel on loop connected to endpoint (copied). ZeroMQ connects
 * in the background and reconnects after the peer restarts. Caller owns
 * *out; destroy with sa_rpc_channel_destroy. Returns 0, SA_EINVAL (also:
 * bad keys) or SA_EIO. */
int sa_rpc_channel_new(struct uv_loop_s *loop, const char *endpoint,
                       const sa_rpc_opts_t *opts, sa_rpc_channel_t **out);

/* True while the connection to the server is up (as last reported by
 * ZeroMQ; with keys, once the CurveZMQ handshake succeeded). A new channel
 * is "connecting": calls are queued until it is up. After a disconnect,
 * calls fail fast with SA_EUNAVAIL (unless wait_for_ready) until it is up
 * again. A handshake that fails (the server refused our key, or it is not
 * the server we were told — wrong server key) fails the calls in flight
 * with UNAUTHENTICATED and a message saying which. */
bool sa_rpc_channel_is_connected(const sa_rpc_channel_t *ch);

/* True once the connection has been up at least once (its server was
 * reached); with sa_rpc_channel_is_connected false, it was lost since. */
bool sa_rpc_channel_was_connected(const sa_rpc_channel_t *ch);

/* Calls in flight. */
int sa_rpc_channel_inflight(const sa_rpc_channel_t *ch);

/* Starts a unary call. method and body are copied; tensors per
 * sa_rpc_frame_t (their ownership passes in all cases); opts may be NULL;
 * user is borrowed until cb has run. On success stores the call id in
 * *call_id (may be NULL) and cb runs later, exactly once. On failure returns
 * SA_EFULL (too many calls in flight or the socket's queue is full),
 * SA_EUNAVAIL (disconnected), SA_EINVAL, or SA_EIO, and cb never runs. */
int sa_rpc_channel_call(sa_rpc_channel_t *ch, const char *method,
                        const void *body, size_t len,
                        const sa_rpc_frame_t *tensors, int n_tensors,
                        const sa_rpc_call_opts_t *opts, sa_rpc_unary_cb cb,
                        void *user, uint64_t *call_id);

/* Starts a server-streaming call; as sa_rpc_channel_call, with msg_cb per
 * message and end_cb once at the end. */
int sa_rpc_channel_stream(sa_rpc_channel_t *ch, const char *method,
                          const void *body, size_t len,
                          const sa_rpc_frame_t *tensors, int n_tensors,
                          const sa_rpc_call_opts_t *opts,
                          sa_rpc_stream_msg_cb msg_cb,
                          sa_rpc_stream_end_cb end_cb, void *user,
                          uint64_t *call_id);

/* Cancels call_id: sends CANCEL to the server (best effort) and completes the
 * call with CANCELLED from the loop shortly after (not inside this
 * function); later server messages of it are dropped. Returns 0 or
 * SA_ENOENT if the call is not in flight. */
int sa_rpc_channel_cancel(sa_rpc_channel_t *ch, uint64_t call_id);

/* Closes the channel. Calls in flight complete with CANCELLED inside this
 * function. Sets *ch to NULL; NULL or *ch NULL is a no-op. */
void sa_rpc_channel_destroy(sa_rpc_channel_t **ch);

/* ------------------------------------------------------------ blocking call */

/* A reply copied out of the wire; caller owns it (sa_rpc_reply_free). */
typedef struct {
  sa_status_t status;
  char *status_msg;
  void *body;
  size_t body_len;
  sa_rpc_tensor_t *tensors; /* data owned by the reply */
  int n_tensors;
} sa_rpc_reply_t;

/* Makes one unary call on a private loop and channel (opts may be NULL: plain
 * text) and waits for it (timeout_ms > 0 required). For CLIs and tests, not
 * for services. On return
 * 0, *out holds the reply — whose status may be an error status from the
 * server or DEADLINE_EXCEEDED/UNAVAILABLE raised locally. Returns a negative
 * code, with *out NULL, only when the call could not be started. */
int sa_rpc_call_sync(const char *endpoint, const sa_rpc_opts_t *opts, const char *method,
                     const void *body, size_t len, const sa_rpc_frame_t *tensors,
                     int n_tensors, int64_t timeout_ms, sa_rpc_reply_t **out);

/* Frees a reply; sets *r to NULL. */
void sa_rpc_reply_free(sa_rpc_reply_t **r);

#endif /* SA_RPC_H */
