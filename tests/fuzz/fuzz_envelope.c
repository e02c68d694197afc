/* libFuzzer target for the RPC envelope + tensor descriptor decoder
 * (sa__rpc_decode_frames, core/rpc_internal.h).
 *
 * Input layout: byte 0 = number of frames (mod 8); then, per frame, a 2-byte
 * little-endian length followed by that many bytes (clamped to what is
 * left). The first frame is therefore usually a fuzzed protobuf Envelope.
 * Checks that decoding never crashes and that what it accepts is consistent:
 * every tensor's bytes lie in its frame and match its descriptor.
 * Build: CC=clang cmake -S . -B build-fuzz -DSA_FUZZ=ON && cmake --build
 * build-fuzz --target fuzz_envelope; run: build-fuzz/tests/fuzz_envelope. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rpc_internal.h"
#include "sa_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  int n = data[0] % 8;
  size_t off = 1;
  sa__rpc_span_t frames[8];
  for (int i = 0; i < n; i++) {
    size_t len = 0;
    if (off + 2 <= size) {
      len = (size_t)data[off] | ((size_t)data[off + 1] << 8);
      off += 2;
    } else {
      off = size;
    }
    if (len > size - off)
      len = size - off;
    frames[i].data = data + off;
    frames[i].len = len;
    off += len;
  }
  static sa__rpc_env_t env; /* ~10 KiB; static keeps the stack small */
  sa__rpc_limits_t lim = {.max_msg_bytes = 4096, .max_tensors = 6};
  char err[256];
  int rc = sa__rpc_decode_frames(frames, n, &lim, &env, err, sizeof err);
  if (rc == 0) {
    if (env.n_tensors != n - 2 || env.call_id == 0)
      __builtin_trap();
    for (int i = 0; i < env.n_tensors; i++) {
      size_t nb;
      if (sa_tensor_desc_nbytes(&env.tensors[i].desc, &nb) != 0 ||
          nb != env.tensors[i].nbytes || nb != frames[2 + i].len ||
          env.tensors[i].data != frames[2 + i].data)
        __builtin_trap();
    }
    if (strlen(env.method) >= sizeof env.method)
      __builtin_trap();
  } else if (rc != SA_EPROTO && rc != SA_EFULL) {
    __builtin_trap();
  } else if (err[0] == '\0') {
    __builtin_trap(); /* every refusal says why */
  }
  return 0;
}
