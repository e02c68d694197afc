/* libFuzzer target over sa_cert_parse (key files: CZMQ's zcert layout):
 * any bytes give either an error with a message and a zeroed output, or a
 * certificate with a role, a valid 40-character public key and, when there
 * is a secret key, one that belongs to it. Seed corpus: tests/fuzz/corpus_keys
 * (real files written by sa-keys). */
#include <stdint.h>
#include <string.h>
#include <zmq.h>

#include "keys.h"
#include "sa_error.h"

#define CHECK(c)                                                               \
  do {                                                                         \
    if (!(c))                                                                  \
      __builtin_trap();                                                        \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sa_cert_t c, zero;
  memset(&zero, 0, sizeof zero);
  char err[256] = "";
  int rc = sa_cert_parse((const char *)data, size, &c, err, sizeof err);
  if (rc != 0) {
    CHECK(rc == SA_EINVAL && err[0]);
    CHECK(memcmp(&c, &zero, sizeof c) == 0);
    return 0;
  }
  CHECK(sa_role_name(c.role)[0] && strcmp(sa_role_name(c.role), "none") != 0);
  CHECK(strlen(c.public_key) == 40);
  uint8_t raw[32];
  CHECK(zmq_z85_decode(raw, c.public_key) != NULL);
  if (c.secret_key[0]) {
    char derived[41];
    CHECK(zmq_curve_public(derived, c.secret_key) == 0 && !strcmp(derived, c.public_key));
  }
  CHECK(memchr(c.name, 0, sizeof c.name) != NULL);
  return 0;
}
