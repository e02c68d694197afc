/*
 * rpc_internal — the wire codec behind rpc.c, exposed for tests and the
 * fuzz target (tests/fuzz/fuzz_envelope.c). Not a public API: names are
 * sa__rpc_*, and nothing outside core/rpc*.c and tests may include it.
 *
 * The codec turns the frames of one received message (frame 0 Envelope,
 * frame 1 body, frames 2.. tensors; the ROUTER identity frame already
 * stripped) into a validated sa__rpc_env_t, and packs an outgoing envelope.
 * It does no I/O and allocates nothing on the heap (protobuf-c unpacks into
 * a bounded arena on the stack).
 */
#ifndef SA_RPC_INTERNAL_H
#define SA_RPC_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc.h"

#define SA__RPC_MAX_METHOD 128     /* bytes incl. NUL */
#define SA__RPC_MAX_TRACE 65       /* 64 bytes + NUL */
#define SA__RPC_MAX_STATUS_MSG 512 /* longer messages are truncated */
#define SA__RPC_MAX_ENVELOPE 16384 /* bytes of frame 0 */
#define SA__RPC_MAX_TENSORS 256    /* hard cap of sa_rpc_opts_t.max_tensors */

typedef enum {
  SA__RPC_REQUEST = 0,
  SA__RPC_RESPONSE = 1,
  SA__RPC_STREAM_MSG = 2,
  SA__RPC_STREAM_END = 3,
  SA__RPC_CANCEL = 4,
} sa__rpc_kind_t;

typedef struct {
  const void *data;
  size_t len;
} sa__rpc_span_t;

typedef struct {
  size_t max_msg_bytes; /* all frames together */
  int max_tensors;
} sa__rpc_limits_t;

/* A decoded envelope. tensors[i].data points into the span it came from. */
typedef struct {
  bool have_call_id; /* the envelope decoded far enough to address a reply */
  uint64_t call_id;
  sa__rpc_kind_t kind;
  char method[SA__RPC_MAX_METHOD];
  uint64_t deadline_ms;
  sa_status_t status;
  char status_msg[SA__RPC_MAX_STATUS_MSG];
  char trace_id[SA__RPC_MAX_TRACE];
  const void *body;
  size_t body_len;
  int n_tensors;
  sa_rpc_tensor_t tensors[SA__RPC_MAX_TENSORS];
} sa__rpc_env_t;

/* Decodes and validates the n_frames frames of one message into *out.
 * Checks: 2 <= n_frames, total size <= max_msg_bytes, envelope size and
 * protobuf validity, known kind and status, method/trace lengths, REQUEST
 * has a method, call_id != 0, tensor count <= max_tensors and == n_frames-2,
 * each descriptor valid (dtype, <= 8 dims, no overflow) with nbytes equal to
 * its shape's size and to its frame's length.
 * Returns 0; SA_EFULL for an oversize message; SA_EPROTO for anything
 * malformed. On error err (cap errcap) says why in one line and
 * out->have_call_id tells whether out->call_id can address an error reply. */
int sa__rpc_decode_frames(const sa__rpc_span_t *frames, int n_frames,
                          const sa__rpc_limits_t *lim, sa__rpc_env_t *out,
                          char *err, size_t errcap);

/* What to put into an outgoing envelope; strings borrowed (NULL = empty). */
typedef struct {
  uint64_t call_id;
  sa__rpc_kind_t kind;
  const char *method;
  uint64_t deadline_ms;
  sa_status_t status;
  const char *status_msg;
  const char *trace_id;
  const sa_rpc_frame_t *tensors;
  int n_tensors;
} sa__rpc_env_out_t;

/* Packed size of e (<= SA__RPC_MAX_ENVELOPE for valid input). */
size_t sa__rpc_env_packed_size(const sa__rpc_env_out_t *e);
/* Packs e into buf (cap >= sa__rpc_env_packed_size(e)); returns the bytes
 * written or 0 if cap is too small. */
size_t sa__rpc_env_pack(const sa__rpc_env_out_t *e, uint8_t *buf, size_t cap);

#endif /* SA_RPC_INTERNAL_H */
