/*
 * request_stats — the histograms the coordinator's modules keep for /metrics
 * (Prometheus' cumulative buckets): latencies in seconds, and the rows of
 * each pipeline step. Each histogram has one writer: the module that holds it.
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

/* A histogram of rows (tokens) per pipeline step, cumulative buckets at
 * coord_rows_le: powers of two with 12, 24, 48 and 96 between, so the
 * batch sizes where a step's cost bends (16 to 64 rows on the CPU kernels)
 * are told apart. */
#define COORD_ROWS_BUCKETS 16
extern const double coord_rows_le[COORD_ROWS_BUCKETS]; /* the last is +Inf */
typedef struct {
  int64_t bucket[COORD_ROWS_BUCKETS];
  double sum;
  int64_t count;
} coord_rows_hist_t;

/* Records one step of `rows` rows. */
void coord_rows_observe(coord_rows_hist_t *h, int rows);

#endif /* SA_COORD_REQUEST_STATS_H */
