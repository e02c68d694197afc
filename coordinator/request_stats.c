/* request_stats — latency histograms (see request_stats.h). */
#include "request_stats.h"

#include <math.h>

const double coord_hist_le[COORD_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                   1,     2.5,  5,     10,   30,  60,  INFINITY};

void coord_hist_observe(coord_hist_t *h, double seconds) {
  for (int i = 0; i < COORD_HIST_BUCKETS; i++)
    if (seconds <= coord_hist_le[i])
      h->bucket[i]++;
  h->sum += seconds;
  h->count++;
}
