/* request_stats — latency and step-rows histograms (see request_stats.h). */
#include "request_stats.h"

#include <math.h>

const double coord_hist_le[COORD_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                   1,     2.5,  5,     10,   30,  60,  INFINITY};

const double coord_rows_le[COORD_ROWS_BUCKETS] = {1,  2,  4,   8,   12,  16,  24,   32,
                                                   48, 64, 96, 128, 256, 512, 1024, INFINITY};

/* Prometheus' cumulative buckets: every bucket whose bound x is under. */
static void observe(int64_t *bucket, const double *le, int n, double *sum, int64_t *count,
                    double x) {
  for (int i = 0; i < n; i++)
    if (x <= le[i])
      bucket[i]++;
  *sum += x;
  (*count)++;
}

void coord_hist_observe(coord_hist_t *h, double seconds) {
  observe(h->bucket, coord_hist_le, COORD_HIST_BUCKETS, &h->sum, &h->count, seconds);
}

void coord_rows_observe(coord_rows_hist_t *h, int rows) {
  observe(h->bucket, coord_rows_le, COORD_ROWS_BUCKETS, &h->sum, &h->count, rows);
}
