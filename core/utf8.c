/* utf8 — UTF-8 decoding and validation (see utf8.h). */
#include "utf8.h"

int sa_utf8_decode(const uint8_t *s, size_t n, size_t *adv, uint32_t *cp) {
  uint8_t c = s[0];
  if (c < 0x80) {
    *adv = 1;
    if (cp)
      *cp = c;
    return 1;
  }
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;
  uint32_t v;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
    v = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    v = c & 0x0F;
    if (c == 0xE0)
      lo = 0xA0;
    else if (c == 0xED)
      hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    v = c & 0x07;
    if (c == 0xF0)
      lo = 0x90;
    else if (c == 0xF4)
      hi = 0x8F;
  } else {
    *adv = 1;
    return -1;
  }
  for (size_t i = 1; i < need; i++) {
    if (i >= n) {
      *adv = n;
      return 0;
    }
    uint8_t d = s[i];
    uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (d < l || d > h) {
      *adv = i;
      return -1;
    }
    v = (v << 6) | (d & 0x3F);
  }
  *adv = need;
  if (cp)
    *cp = v;
  return 1;
}

size_t sa_utf8_check(const void *p, size_t n) {
  const uint8_t *s = p;
  size_t i = 0;
  while (i < n) {
    if (s[i] < 0x80) {
      i++;
      continue;
    }
    size_t adv;
    if (sa_utf8_decode(s + i, n - i, &adv, NULL) != 1)
      return i;
    i += adv;
  }
  return n;
}

bool sa_utf8_valid(const void *s, size_t n) { return sa_utf8_check(s, n) == n; }
