/*
 * bench-journal — the cost of durability: a commit of the coordinator's
 * journal (core/journal: buffered records, one write and one fdatasync) for
 * the records one pipeline step produces — one token record per sequence —
 * at 1 and 32 sequences, and for one 1 MiB record (an audio embedding), on
 * the disk of --dir (default: the build folder, where a state dir would
 * sit). Printed beside the machine's own floor: one 4 KiB write + fdatasync
 * with plain syscalls. Medians over --reps commits. Timings never decide
 * anything.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "journal.h"
#include "sa_bench.h"

static double commit_cost(sa_journal_t *j, int records, size_t bytes, int reps, double *out) {
  uint8_t *p = calloc(1, bytes ? bytes : 1);
  for (int r = 0; r < reps; r++) {
    for (int i = 0; i < records; i++)
      sa_journal_append(j, 3, p, bytes);
    double t0 = sa_bench_now();
    if (sa_journal_commit(j)) {
      fprintf(stderr, "bench-journal: commit failed\n");
      exit(1);
    }
    out[r] = sa_bench_now() - t0;
  }
  free(p);
  return sa_bench_median(out, reps);
}

int main(int argc, char **argv) {
  const char *dir = SA_BINARY_DIR;
  int reps = 200;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--dir") && i + 1 < argc)
      dir = argv[++i];
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
      reps = atoi(argv[++i]);
    else {
      printf("usage: bench-journal [--dir DIR] [--reps N]\n"
             "  median cost of a journal commit (write + fdatasync) on DIR's disk\n");
      return strcmp(argv[i], "--help") && strcmp(argv[i], "-h") ? 2 : 0;
    }
  }
  if (reps < 10)
    reps = 10;
  char jdir[1200], err[256];
  snprintf(jdir, sizeof jdir, "%s/bench-journal.%d", dir, (int)getpid());
  sa_journal_t *j = NULL;
  if (sa_journal_open(jdir, &j, err, sizeof err)) {
    fprintf(stderr, "bench-journal: %s\n", err);
    return 1;
  }
  double *t = calloc((size_t)reps, sizeof *t);
  double floor = sa_bench_fdatasync_us(jdir, reps) * 1e-6;
  if (floor < 0)
    return 1;
  double one = commit_cost(j, 1, 24, reps, t);   /* a step of one sequence */
  double b32 = commit_cost(j, 32, 24, reps, t);  /* a step of 32 sequences */
  double big = commit_cost(j, 1, 1u << 20, reps / 4, t); /* an audio embedding */
  printf("bench-journal: %s, median of %d commits each\n", dir, reps);
  printf("  machine: 4 KiB pwrite + fdatasync      %8.1f us\n", floor * 1e6);
  printf("  commit of 1 token record  (batch 1)    %8.1f us\n", one * 1e6);
  printf("  commit of 32 token records (batch 32)  %8.1f us  (%.1f us per token)\n", b32 * 1e6,
         b32 * 1e6 / 32);
  printf("  commit of one 1 MiB record (audio)     %8.1f us\n", big * 1e6);
  sa_journal_close(&j);
  char cmd[1400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", jdir);
  if (system(cmd) != 0)
    fprintf(stderr, "bench-journal: could not remove %s\n", jdir);
  free(t);
  return 0;
}
