/* sa_time — the monotonic clock (see sa_time.h). */
#include "sa_time.h"

#include <time.h>

uint64_t sa_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t sa_now_ms(void) { return sa_now_ns() / 1000000u; }

double sa_now_s(void) { return (double)sa_now_ns() * 1e-9; }
