/*
 * fuzz_openai — coordinator/openai.c's chat-completions parser on arbitrary
 * bytes: it must return 0 or SA_EINVAL/SA_ENOMEM with a message, never
 * crash, leak or read past the body; on success the parameters it promises
 * hold (strings set, chains and tokens in range, audio present iff its
 * length is).
 * Build: CC=clang cmake -DSA_FUZZ=ON; run: fuzz_openai tests/fuzz/coord/corpus_openai
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "openai.h"
#include "sa_error.h"

#define CHECK(c)                                                                               \
  do {                                                                                         \
    if (!(c))                                                                                  \
      abort();                                                                                 \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  coord_openai_limits_t lim = {.max_audio_bytes = 1 << 20, .default_max_tokens = 256};
  coord_openai_req_t r;
  char err[256], param[64];
  int rc = coord_openai_parse((const char *)data, size, &lim, &r, err, sizeof err, param,
                              sizeof param);
  CHECK(rc == 0 || rc == SA_EINVAL || rc == SA_ENOMEM);
  if (rc) {
    CHECK(err[0]);
  } else {
    CHECK(r.p.prompt && r.p.system);
    CHECK(r.p.n_chains >= 1 && r.p.n_chains <= 1024);
    CHECK(r.p.max_tokens >= 1);
    CHECK((r.p.audio != NULL) == (r.p.audio_len > 0));
    CHECK(r.p.audio_len <= lim.max_audio_bytes + 3);
    CHECK(r.n_stop_token_ids >= 0 && r.n_stop_token_ids <= 16);
  }
  coord_openai_free(&r);
  return 0;
}
