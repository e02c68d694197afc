/*
 * sa_bench — helpers shared by every benchmark (bench/<name>/): a monotonic
 * wall clock, median/percentiles of samples, and the machine's own limits
 * measured on the spot (memory bandwidth, OpenBLAS sgemm peak) so figures
 * can be printed as fractions of what the hardware does.
 *
 * Not a benchmark framework: no registration, no output format. Benchmarks
 * are CLIs, so these helpers may allocate and print.
 */
#ifndef SA_BENCH_H
#define SA_BENCH_H

#include <stddef.h>

/* Seconds on the monotonic clock. */
double sa_bench_now(void);

/* The p-th percentile (0..100, nearest rank) of v[n]; sorts v in place.
 * Returns 0 for n == 0. */
double sa_bench_percentile(double *v, int n, double p);
/* Median of v[n] (mean of the two middle values for even n); sorts v. */
double sa_bench_median(double *v, int n);
/* 99th percentile of v[n]; sorts v. */
double sa_bench_p99(double *v, int n);

/* Online CPUs (>= 1). */
int sa_bench_cpus(void);
/* Last-level cache size in bytes as the OS reports it (0 if unknown). */
size_t sa_bench_llc_bytes(void);

typedef struct {
  double read_gbs;       /* streaming read, 1e9 bytes/s: the best pattern's */
  const char *read_how;  /* that pattern, in words */
  double read_plain_gbs; /* a plain loop's (one stream, no prefetch) */
  double copy_gbs;       /* memcpy, counting bytes read + bytes written (STREAM) */
  size_t bytes;          /* buffer size used */
  int threads;
} sa_bench_bw_t;

/* Measures memory bandwidth STREAM-style over a buffer of `bytes` (0: 4x the
 * LLC, at least 256 MiB, at most 1 GiB; 2 MiB-aligned, huge pages asked
 * for) with `threads` threads (0: online CPUs), each on its own slice. The
 * read figure is the best median of `reps` (0: 7) passes over a few read
 * patterns (one or two streams a thread, software prefetch at a few
 * distances): what the machine can stream, which a kernel's rate is a
 * fraction of. Returns 0 or a negative SA_E* code (SA_ENOMEM). */
int sa_bench_mem_bandwidth(int threads, size_t bytes, int reps,
                           sa_bench_bw_t *out);

/* OpenBLAS sgemm peak in GFLOP/s: the best median over square sizes 512,
 * 1024 and 2048, run with openblas_set_num_threads(threads) (0: online
 * CPUs). Leaves OpenBLAS at that thread count; callers that need another
 * count set it again. Returns a negative SA_E* code on failure. */
double sa_bench_sgemm_peak(int threads);

/* The floor of a durable append on dir's disk: the median of reps 4 KiB
 * pwrite + fdatasync pairs on a scratch file there (removed), in
 * microseconds; -1 if the file cannot be written. */
double sa_bench_fdatasync_us(const char *dir, int reps);

#endif /* SA_BENCH_H */
