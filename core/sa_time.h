/*
 * sa_time — the one monotonic clock of sa-cluster.
 *
 * CLOCK_MONOTONIC: never jumps with the wall clock, comparable only within
 * one process run (no epoch). Every module that measures an interval or a
 * deadline reads it here; libuv code may use uv_now() for its own timers.
 * Safe from any thread.
 */
#ifndef SA_TIME_H
#define SA_TIME_H

#include <stdint.h>

/* Nanoseconds on the monotonic clock. */
uint64_t sa_now_ns(void);

/* Milliseconds on the monotonic clock. */
uint64_t sa_now_ms(void);

/* Seconds on the monotonic clock, as a double (for timing and rates). */
double sa_now_s(void);

#endif /* SA_TIME_H */
