/* libFuzzer target over sa_config_parse: any bytes must give either an error
 * with a message and an untouched output, or a config that passes
 * sa_config_validate with head_dim even and heads dividing each other. */
#include <stdint.h>
#include <string.h>

#include "config.h"
#include "sa_error.h"

#define CHECK(c)                                                               \
  do {                                                                         \
    if (!(c))                                                                  \
      __builtin_trap();                                                        \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sa_model_config_t c, before;
  memset(&c, 0xa5, sizeof c);
  memcpy(&before, &c, sizeof c);
  char err[256];
  err[0] = '\0';
  int rc = sa_config_parse((const char *)data, size, &c, err, sizeof err);
  if (rc != 0) {
    CHECK(rc == SA_EFORMAT || rc == SA_ENOMEM);
    CHECK(err[0] != '\0');
    CHECK(memcmp(&c, &before, sizeof c) == 0);
    return 0;
  }
  CHECK(sa_config_validate(&c, err, sizeof err) == 0);
  CHECK(c.hidden_size > 0 && c.num_hidden_layers > 0);
  CHECK(c.head_dim > 0 && c.head_dim % 2 == 0);
  CHECK(c.num_attention_heads % c.num_key_value_heads == 0);
  CHECK(c.rms_norm_eps > 0 && c.rope_theta > 0);
  if (c.audio.present)
    CHECK(c.audio.n_state % c.audio.n_head == 0 &&
          c.audio.llm_dim == c.hidden_size);
  return 0;
}
