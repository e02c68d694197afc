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
    CHECK(r.prompt && r.p.system);
    CHECK(r.p.n_chains >= 1 && r.p.n_chains <= 1024);
    CHECK(r.p.max_tokens >= 1);
    CHECK(r.p.n_parts >= 0 && r.p.n_parts <= COORD_MAX_PARTS);
    size_t audio = 0;
    for (int k = 0; k < r.p.n_parts; k++) {
      CHECK((r.p.parts[k].text != NULL) != (r.p.parts[k].audio != NULL));
      CHECK(!r.p.parts[k].audio || r.p.parts[k].audio_len > 0);
      audio += r.p.parts[k].audio_len;
    }
    CHECK(audio == r.audio_bytes && audio <= lim.max_audio_bytes + 3);
    CHECK(r.n_stop_token_ids >= 0 && r.n_stop_token_ids <= 16);
  }
  coord_openai_free(&r);
  return 0;
}
