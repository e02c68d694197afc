/* libFuzzer: sa-load's workload parser (client/workload.c) on any bytes. */
#include "workload.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sa_workload_t w;
  char err[256];
  if (sa_workload_parse((const char *)data, size, &w, err, sizeof err) == 0) {
    (void)sa_workload_pick(&w, 0.0);
    (void)sa_workload_pick(&w, 0.999999);
    sa_workload_free(&w);
  }
  return 0;
}
