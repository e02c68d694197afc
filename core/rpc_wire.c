/*
 * rpc_wire — envelope codec for rpc.c (see rpc_internal.h). Pure functions:
 * no I/O, no heap; protobuf-c unpacks into a bounded arena on the stack, so a
 * hostile envelope can at worst fail to decode.
 */
#include "sa_error.h"
#include "rpc_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sa.pb-c.h"

/* Envelopes are <= 16 KiB; protobuf-c needs at most a few times that in
 * structs. A bigger appetite means a hostile envelope: decoding fails. */
#define ARENA_BYTES (96 * 1024)

typedef struct {
  size_t used;
  _Alignas(16) unsigned char buf[ARENA_BYTES];
} arena_t;

static void *arena_alloc(void *ad, size_t size) {
  arena_t *a = ad;
  size_t need = (size + 15u) & ~(size_t)15u;
  if (need < size || need > ARENA_BYTES - a->used)
    return NULL;
  void *p = a->buf + a->used;
  a->used += need;
  return p;
}

static void arena_free(void *ad, void *p) {
  (void)ad;
  (void)p;
}


/* Copies a NUL-terminated protobuf string into dst (cap incl. NUL). Returns
 * false if it does not fit. */
static bool copy_str(char *dst, size_t cap, const char *src) {
  size_t n = src ? strlen(src) : 0;
  if (n >= cap)
    return false;
  memcpy(dst, src ? src : "", n);
  dst[n] = '\0';
  return true;
}

int sa__rpc_decode_frames(const sa__rpc_span_t *frames, int n_frames,
                          const sa__rpc_limits_t *lim, sa__rpc_env_t *out,
                          char *err, size_t errcap) {
  out->have_call_id = false;
  out->call_id = 0;
  out->kind = SA__RPC_REQUEST;
  out->method[0] = '\0';
  out->deadline_ms = 0;
  out->status = SA_STATUS_OK;
  out->status_msg[0] = '\0';
  out->trace_id[0] = '\0';
  out->body = NULL;
  out->body_len = 0;
  out->n_tensors = 0;
  if (err && errcap)
    err[0] = '\0';

  if (n_frames < 1 || !frames) {
    sa_set_err(err, errcap, "empty message");
    return SA_EPROTO;
  }
  size_t total = 0;
  for (int i = 0; i < n_frames; i++) {
    if (frames[i].len > SIZE_MAX - total) {
      total = SIZE_MAX;
      break;
    }
    total += frames[i].len;
  }
  if (frames[0].len > SA__RPC_MAX_ENVELOPE) {
    sa_set_err(err, errcap, "envelope of %zu bytes exceeds %d", frames[0].len,
            SA__RPC_MAX_ENVELOPE);
    return SA_EPROTO;
  }

  arena_t arena; /* ~96 KiB of stack; no heap */
  arena.used = 0;
  ProtobufCAllocator alloc = {arena_alloc, arena_free, &arena};
  Sa__Envelope *env = sa__envelope__unpack(&alloc, frames[0].len,
                                           (const uint8_t *)frames[0].data);
  if (!env) {
    sa_set_err(err, errcap, "malformed envelope (%zu bytes, not a valid sa.Envelope)",
            frames[0].len);
    return SA_EPROTO;
  }
  out->call_id = env->call_id;
  out->have_call_id = env->call_id != 0;

  if (total > lim->max_msg_bytes) {
    sa_set_err(err, errcap, "message of %zu bytes exceeds the limit of %zu bytes",
            total, lim->max_msg_bytes);
    return SA_EFULL;
  }
  if (env->call_id == 0) {
    sa_set_err(err, errcap, "envelope without call_id");
    return SA_EPROTO;
  }
  if ((int)env->kind < SA__RPC_REQUEST || (int)env->kind > SA__RPC_CANCEL) {
    sa_set_err(err, errcap, "unknown envelope kind %d", (int)env->kind);
    return SA_EPROTO;
  }
  out->kind = (sa__rpc_kind_t)env->kind;
  if ((int)env->status < 0 || (int)env->status > SA_STATUS_UNAUTHENTICATED) {
    sa_set_err(err, errcap, "unknown status code %d", (int)env->status);
    return SA_EPROTO;
  }
  out->status = (sa_status_t)env->status;
  if (!copy_str(out->method, sizeof out->method, env->method)) {
    sa_set_err(err, errcap, "method name longer than %d bytes",
            SA__RPC_MAX_METHOD - 1);
    return SA_EPROTO;
  }
  if (out->kind == SA__RPC_REQUEST && out->method[0] == '\0') {
    sa_set_err(err, errcap, "request without a method");
    return SA_EPROTO;
  }
  if (!copy_str(out->trace_id, sizeof out->trace_id, env->trace_id)) {
    sa_set_err(err, errcap, "trace_id longer than %d bytes", SA__RPC_MAX_TRACE - 1);
    return SA_EPROTO;
  }
  if (env->status_message) { /* truncated, not refused */
    snprintf(out->status_msg, sizeof out->status_msg, "%s", env->status_message);
  }
  out->deadline_ms = env->deadline_ms;

  int max_t = lim->max_tensors;
  if (max_t > SA__RPC_MAX_TENSORS)
    max_t = SA__RPC_MAX_TENSORS;
  if (env->n_tensors > (size_t)max_t) {
    sa_set_err(err, errcap, "%zu tensor descriptors exceed the limit of %d",
            env->n_tensors, max_t);
    return SA_EPROTO;
  }
  if ((size_t)n_frames != 2 + env->n_tensors) {
    sa_set_err(err, errcap,
            "wrong frame count: %d frames for %zu tensor descriptors (want %zu)",
            n_frames, env->n_tensors, 2 + env->n_tensors);
    return SA_EPROTO;
  }
  out->body = frames[1].len ? frames[1].data : NULL;
  out->body_len = frames[1].len;

  for (size_t i = 0; i < env->n_tensors; i++) {
    const Sa__TensorDesc *td = env->tensors[i];
    sa_rpc_tensor_t *t = &out->tensors[i];
    if (!td) {
      sa_set_err(err, errcap, "tensor %zu: missing descriptor", i);
      return SA_EPROTO;
    }
    if (td->n_shape > SA_TENSOR_MAX_DIMS) {
      sa_set_err(err, errcap, "tensor %zu: %zu dims exceed %d", i, td->n_shape,
              SA_TENSOR_MAX_DIMS);
      return SA_EPROTO;
    }
    if ((int)td->dtype < 0 || (int)td->dtype >= SA_DTYPE_COUNT_) {
      sa_set_err(err, errcap, "tensor %zu: unknown dtype %d", i, (int)td->dtype);
      return SA_EPROTO;
    }
    memset(&t->desc, 0, sizeof t->desc);
    t->desc.dtype = (sa_dtype_t)td->dtype;
    t->desc.ndim = (int)td->n_shape;
    for (size_t d = 0; d < td->n_shape; d++)
      t->desc.shape[d] = td->shape[d];
    size_t nb = 0;
    if (sa_tensor_desc_nbytes(&t->desc, &nb) != 0) {
      sa_set_err(err, errcap, "tensor %zu: invalid shape", i);
      return SA_EPROTO;
    }
    if ((uint64_t)nb != td->nbytes) {
      sa_set_err(err, errcap,
              "tensor %zu: descriptor says %llu bytes but its shape needs %zu",
              i, (unsigned long long)td->nbytes, nb);
      return SA_EPROTO;
    }
    const sa__rpc_span_t *f = &frames[2 + i];
    if (f->len != nb) {
      sa_set_err(err, errcap,
              "tensor %zu: descriptor claims %zu bytes, frame has %zu", i, nb,
              f->len);
      return SA_EPROTO;
    }
    t->data = f->data;
    t->nbytes = nb;
  }
  out->n_tensors = (int)env->n_tensors;
  return 0;
}

/* Fills a protobuf Envelope that borrows everything from e. */
static void fill_env(const sa__rpc_env_out_t *e, Sa__Envelope *env,
                     Sa__TensorDesc *descs, Sa__TensorDesc **ptrs) {
  sa__envelope__init(env);
  env->call_id = e->call_id;
  env->kind = (Sa__Envelope__Kind)e->kind;
  env->method = (char *)(e->method ? e->method : "");
  env->deadline_ms = e->deadline_ms;
  env->status = (Sa__StatusCode)e->status;
  env->status_message = (char *)(e->status_msg ? e->status_msg : "");
  env->trace_id = (char *)(e->trace_id ? e->trace_id : "");
  int n = e->n_tensors;
  if (n > SA__RPC_MAX_TENSORS)
    n = SA__RPC_MAX_TENSORS;
  for (int i = 0; i < n; i++) {
    const sa_rpc_frame_t *f = &e->tensors[i];
    sa__tensor_desc__init(&descs[i]);
    descs[i].dtype = (Sa__DType)f->desc.dtype;
    descs[i].n_shape = f->desc.ndim > 0 ? (size_t)f->desc.ndim : 0;
    descs[i].shape = (int64_t *)f->desc.shape;
    descs[i].nbytes = f->nbytes;
    ptrs[i] = &descs[i];
  }
  env->n_tensors = (size_t)n;
  env->tensors = n ? ptrs : NULL;
}

size_t sa__rpc_env_packed_size(const sa__rpc_env_out_t *e) {
  Sa__Envelope env;
  Sa__TensorDesc descs[SA__RPC_MAX_TENSORS];
  Sa__TensorDesc *ptrs[SA__RPC_MAX_TENSORS];
  fill_env(e, &env, descs, ptrs);
  return sa__envelope__get_packed_size(&env);
}

size_t sa__rpc_env_pack(const sa__rpc_env_out_t *e, uint8_t *buf, size_t cap) {
  Sa__Envelope env;
  Sa__TensorDesc descs[SA__RPC_MAX_TENSORS];
  Sa__TensorDesc *ptrs[SA__RPC_MAX_TENSORS];
  fill_env(e, &env, descs, ptrs);
  size_t n = sa__envelope__get_packed_size(&env);
  if (n > cap)
    return 0;
  return sa__envelope__pack(&env, buf);
}
