/*
 * test_utf8 — core/utf8 against utf8proc (an independent decoder): every
 * 1-, 2- and 3-byte string and a million random 4-byte strings are judged
 * alike (valid or not), code points agree, and the maximal-subpart rule
 * for invalid and truncated sequences holds on hand-picked cases.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <utf8proc.h>

#include "utf8.h"

/* The reference: utf8proc_iterate over the whole string. */
static bool ref_valid(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t r = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &cp);
    if (r <= 0)
      return false;
    i += (size_t)r;
  }
  return true;
}

static void test_exhaustive_short(void **state) {
  (void)state;
  uint8_t b[3];
  for (uint32_t v = 0; v < (1u << 24); v++) {
    b[0] = (uint8_t)(v >> 16);
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)v;
    for (size_t n = 1; n <= 3; n++) {
      if (n < 3 && (v & ((1u << (8 * (3 - n))) - 1)))
        continue; /* shorter strings once each */
      if (sa_utf8_valid(b, n) != ref_valid(b, n))
        fail_msg("disagree on %zu bytes %02x %02x %02x", n, b[0], b[1], b[2]);
    }
  }
}

static void test_random_four(void **state) {
  (void)state;
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < 1000000; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    uint8_t b[4] = {(uint8_t)(0xf0 | (x & 0x0f)), (uint8_t)(x >> 8), (uint8_t)(x >> 16),
                    (uint8_t)(x >> 24)};
    if (i & 1) /* half of them with well-formed continuation bytes */
      for (int k = 1; k < 4; k++)
        b[k] = (uint8_t)(0x80 | (b[k] & 0x3f));
    if (sa_utf8_valid(b, 4) != ref_valid(b, 4))
      fail_msg("disagree on %02x %02x %02x %02x", b[0], b[1], b[2], b[3]);
    size_t adv;
    uint32_t cp = 0;
    if (sa_utf8_decode(b, 4, &adv, &cp) == 1) {
      utf8proc_int32_t rcp;
      assert_int_equal(utf8proc_iterate(b, 4, &rcp), (utf8proc_ssize_t)adv);
      assert_int_equal((int32_t)cp, rcp);
    }
  }
}

static void test_subparts(void **state) {
  (void)state;
  size_t adv;
  uint32_t cp;
  struct {
    const char *s;
    size_t n;
    int rc;
    size_t adv;
  } cases[] = {
      {"A", 1, 1, 1},
      {"\xc3\xa9", 2, 1, 2},
      {"\xc3", 1, 0, 1},             /* truncated: valid prefix */
      {"\xe2\x82", 2, 0, 2},
      {"\xc0\x80", 2, -1, 1},        /* overlong */
      {"\xe0\x80\x80", 3, -1, 1},    /* overlong, 3 bytes */
      {"\xed\xa0\x80", 3, -1, 1},    /* surrogate */
      {"\xf4\x90\x80\x80", 4, -1, 1},/* above U+10FFFF */
      {"\xe2\x82\x41", 3, -1, 2},    /* maximal subpart of 2 */
      {"\xff", 1, -1, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int rc = sa_utf8_decode((const uint8_t *)cases[i].s, cases[i].n, &adv, &cp);
    if (rc != cases[i].rc || adv != cases[i].adv)
      fail_msg("case %zu: rc %d adv %zu, want %d %zu", i, rc, adv, cases[i].rc, cases[i].adv);
  }
  assert_int_equal(sa_utf8_check("ab\xc3\xa9\xff", 5), 4);
  assert_true(sa_utf8_valid("", 0));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exhaustive_short),
      cmocka_unit_test(test_random_four),
      cmocka_unit_test(test_subparts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
