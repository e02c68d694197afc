/*
 * request_stats — the latency histogram the coordinator's modules keep for
 * /metrics (Prometheus' cumulative buckets, in seconds). Each histogram has
 * one writer: the module that holds it.
 */
#ifndef SA_COORD_REQUEST_STATS_H
#define SA_COORD_REQUEST_STATS_H

#include <stdint.h>

/* A latency histogram with Prometheus' cumulative buckets (seconds). */
#define COORD_HIST_BUCKETS 14
extern const double coord_hist_le[COORD_HIST_BUCKETS]; /* the last is +Inf */
typedef struct {
  int64_t bucket[COORD_HIST_BUCKETS]; /* observations <= le[i] (cumulative) */
  double sum;
  int64_t count;
} coord_hist_t;

/* Records one observation of `seconds`. */
void coord_hist_observe(coord_hist_t *h, double seconds);

#endif /* SA_COORD_REQUEST_STATS_H */
