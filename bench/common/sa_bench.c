/* sa_bench — see sa_bench.h. */
#define _GNU_SOURCE
#include "sa_bench.h"
#include "sa_error.h"

#include <cblas.h>
#include <fcntl.h>
#include <stdio.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

double sa_bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

double sa_bench_percentile(double *v, int n, double p) {
  if (n <= 0)
    return 0.0;
  qsort(v, (size_t)n, sizeof(*v), cmp_double);
  int rank = (int)((p / 100.0) * n + 0.999999); /* nearest rank, 1-based */
  if (rank < 1)
    rank = 1;
  if (rank > n)
    rank = n;
  return v[rank - 1];
}

double sa_bench_median(double *v, int n) {
  if (n <= 0)
    return 0.0;
  qsort(v, (size_t)n, sizeof(*v), cmp_double);
  return n & 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double sa_bench_p99(double *v, int n) { return sa_bench_percentile(v, n, 99.0); }

int sa_bench_cpus(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

size_t sa_bench_llc_bytes(void) {
  long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l3 > 0)
    return (size_t)l3;
  long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  return l2 > 0 ? (size_t)l2 : 0;
}

/* --- memory bandwidth ------------------------------------------------------ */

/* The ways a read pass walks its slice. The machine's read bandwidth is the
 * best of them: a limit our kernels beat is not a limit. A plain loop alone
 * (the first) read 12-16 GB/s on a 2-core Zen 3 VM where the decode GEMVs,
 * which prefetch, streamed 20; the best of these read 18-25 there. */
static const struct {
  int streams;     /* 1: the slice in order; 2: its two halves side by side */
  size_t prefetch; /* bytes ahead of each stream (0: none) */
  const char *name;
} read_patterns[] = {
    {1, 0, "1 stream"},
    {1, 1024, "1 stream, prefetch 1 KiB ahead"},
    {1, 4096, "1 stream, prefetch 4 KiB ahead"},
    {2, 0, "2 streams"},
    {2, 256, "2 streams, prefetch 256 B ahead"},
    {2, 2048, "2 streams, prefetch 2 KiB ahead"},
};
enum { N_READ_PATTERNS = sizeof read_patterns / sizeof read_patterns[0] };

/* 32-byte lanes by GCC's vector extension: one ymm load where the compiler
 * may use AVX, two xmm loads where it may not. */
typedef uint64_t bw_vec __attribute__((vector_size(32)));

typedef struct {
  const char *src;
  char *dst;
  size_t n; /* bytes, a multiple of 512 */
  int copy, pattern;
  pthread_barrier_t *bar;
  double t0, t1;
  uint64_t sink;
} bw_arg_t;

/* Reads n bytes from each of the streams (at p + i * n) with 8 independent
 * accumulators, so the loop is bound by loads, not by adds. */
static uint64_t read_slice(const char *p, size_t n, int streams, size_t pf) {
  bw_vec s[8] = {0};
  size_t step = 256 / (size_t)streams; /* bytes a stream advances a turn */
  for (size_t i = 0; i < n; i += step)
    for (int k = 0; k < streams; k++) {
      const char *q = p + (size_t)k * n + i;
      if (pf)
        for (size_t o = 0; o < step; o += 64)
          __builtin_prefetch(q + pf + o);
      for (size_t j = 0; j < step / 32; j++) {
        bw_vec v;
        memcpy(&v, q + 32 * j, sizeof v);
        s[(size_t)k * (step / 32) + j] ^= v;
      }
    }
  bw_vec t = s[0] ^ s[1] ^ s[2] ^ s[3] ^ s[4] ^ s[5] ^ s[6] ^ s[7];
  return t[0] ^ t[1] ^ t[2] ^ t[3];
}

static void *bw_worker(void *p) {
  bw_arg_t *a = p;
  pthread_barrier_wait(a->bar);
  a->t0 = sa_bench_now();
  if (a->copy) {
    memcpy(a->dst, a->src, a->n);
  } else {
    int k = read_patterns[a->pattern].streams;
    a->sink = read_slice(a->src, a->n / (size_t)k, k, read_patterns[a->pattern].prefetch);
  }
  a->t1 = sa_bench_now();
  return NULL;
}

/* One pass: every thread reads (or copies) its slice of `per` bytes; the
 * pass takes from the first start to the last end. Returns seconds. */
static double bw_pass(int nt, const char *src, char *dst, size_t per, int copy, int pattern) {
  pthread_t th[256];
  bw_arg_t args[256];
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, (unsigned)nt);
  for (int i = 0; i < nt; i++) {
    args[i] = (bw_arg_t){src + per * i, dst ? dst + per * i : NULL, per, copy, pattern,
                         &bar, 0, 0, 0};
    if (i)
      pthread_create(&th[i], NULL, bw_worker, &args[i]);
  }
  bw_worker(&args[0]);
  double t0 = args[0].t0, t1 = args[0].t1;
  for (int i = 1; i < nt; i++) {
    pthread_join(th[i], NULL);
    t0 = args[i].t0 < t0 ? args[i].t0 : t0;
    t1 = args[i].t1 > t1 ? args[i].t1 : t1;
  }
  pthread_barrier_destroy(&bar);
  return t1 - t0;
}

/* bytes, 2 MiB-aligned and marked for transparent huge pages as the CPU
 * backend's buffers are (kernels/backend.c): the probe walks the kind of
 * pages the kernels do. */
static char *bw_alloc(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, (size_t)2 << 20, bytes))
    return NULL;
  madvise(p, bytes, MADV_HUGEPAGE); /* a hint: refused is fine */
  return p;
}

int sa_bench_mem_bandwidth(int threads, size_t bytes, int reps,
                           sa_bench_bw_t *out) {
  if (!out)
    return SA_EINVAL;
  int nt = threads > 0 ? threads : sa_bench_cpus();
  if (nt > 256)
    nt = 256;
  if (!bytes) {
    bytes = 4 * sa_bench_llc_bytes();
    if (bytes < ((size_t)256 << 20))
      bytes = (size_t)256 << 20;
    if (bytes > ((size_t)1 << 30))
      bytes = (size_t)1 << 30;
  }
  if (reps <= 0)
    reps = 7;
  if (reps > 64)
    reps = 64;
  size_t per = bytes / (size_t)nt / 512 * 512; /* a thread's slice */
  if (!per)
    return SA_EINVAL;
  char *src = bw_alloc(per * nt), *dst = bw_alloc(per * nt);
  if (!src || !dst) {
    free(src);
    free(dst);
    return SA_ENOMEM;
  }
  for (size_t i = 0; i < per * nt / 8; i++) { /* fault every page in */
    uint64_t v = i * 0x9e3779b97f4a7c15ull;
    memcpy(src + i * 8, &v, 8);
  }
  memset(dst, 1, per * nt);
  double total = (double)(per * nt), t[64];
  bw_pass(nt, src, NULL, per, 0, 0); /* warm-up */
  *out = (sa_bench_bw_t){.bytes = per * nt, .threads = nt};
  for (int k = 0; k < N_READ_PATTERNS; k++) {
    for (int r = 0; r < reps; r++)
      t[r] = total / bw_pass(nt, src, NULL, per, 0, k) / 1e9;
    double gbs = sa_bench_median(t, reps);
    if (k == 0)
      out->read_plain_gbs = gbs;
    if (gbs > out->read_gbs) {
      out->read_gbs = gbs;
      out->read_how = read_patterns[k].name;
    }
  }
  for (int r = 0; r < reps; r++)
    t[r] = 2.0 * total / bw_pass(nt, src, dst, per, 1, 0) / 1e9;
  out->copy_gbs = sa_bench_median(t, reps);
  free(src);
  free(dst);
  return 0;
}

/* --- sgemm peak ------------------------------------------------------------ */

double sa_bench_sgemm_peak(int threads) {
  int nt = threads > 0 ? threads : sa_bench_cpus();
  openblas_set_num_threads(nt);
  static const int sizes[] = {512, 1024, 2048};
  double best = 0.0;
  for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
    int n = sizes[s];
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n);
    float *c = malloc(sizeof(float) * n * n);
    if (!a || !b || !c) {
      free(a), free(b), free(c);
      return SA_ENOMEM;
    }
    for (size_t i = 0; i < (size_t)n * n; i++) {
      a[i] = (float)((i * 7) % 13) * 0.1f;
      b[i] = (float)((i * 5) % 11) * 0.1f;
    }
    int reps = n <= 512 ? 15 : n <= 1024 ? 7 : 3;
    double t[16];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n,
                b, n, 0.0f, c, n); /* warm-up */
    for (int r = 0; r < reps; r++) {
      double t0 = sa_bench_now();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a,
                  n, b, n, 0.0f, c, n);
      t[r] = sa_bench_now() - t0;
    }
    double g = 2.0 * n * n * (double)n / sa_bench_median(t, reps) / 1e9;
    best = g > best ? g : best;
    free(a), free(b), free(c);
  }
  return best;
}

double sa_bench_fdatasync_us(const char *dir, int reps) {
  char path[1024];
  snprintf(path, sizeof path, "%s/fdatasync-probe.%d", dir, (int)getpid());
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  double *t = calloc((size_t)(reps > 0 ? reps : 1), sizeof *t);
  if (fd < 0 || !t) {
    if (fd >= 0)
      close(fd);
    free(t);
    return -1;
  }
  char page[4096] = {0};
  double r = -1;
  int i;
  for (i = 0; i < reps; i++) {
    double t0 = sa_bench_now();
    if (pwrite(fd, page, sizeof page, (off_t)i * 4096) != 4096 || fdatasync(fd))
      break;
    t[i] = sa_bench_now() - t0;
  }
  if (i == reps && reps > 0)
    r = sa_bench_median(t, reps) * 1e6;
  close(fd);
  unlink(path);
  free(t);
  return r;
}
