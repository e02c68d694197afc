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

typedef struct {
  const uint64_t *src;
  uint64_t *dst;
  size_t n; /* uint64 words */
  int copy;
  pthread_barrier_t *bar;
  double t0, t1;
  uint64_t sink;
} bw_arg_t;

static void *bw_worker(void *p) {
  bw_arg_t *a = p;
  pthread_barrier_wait(a->bar);
  a->t0 = sa_bench_now();
  if (a->copy) {
    memcpy(a->dst, a->src, a->n * 8);
  } else {
    /* 8 independent accumulators: the loop is bound by loads, not adds */
    uint64_t s[8] = {0};
    const uint64_t *x = a->src;
    for (size_t i = 0; i + 8 <= a->n; i += 8)
      for (int j = 0; j < 8; j++)
        s[j] ^= x[i + j];
    a->sink = s[0] ^ s[1] ^ s[2] ^ s[3] ^ s[4] ^ s[5] ^ s[6] ^ s[7];
  }
  a->t1 = sa_bench_now();
  return NULL;
}

/* One pass: every thread reads (or copies) its slice; the pass takes from
 * the first start to the last end. Returns seconds. */
static double bw_pass(int nt, uint64_t *src, uint64_t *dst, size_t words,
                      int copy) {
  pthread_t th[256];
  bw_arg_t args[256];
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, (unsigned)nt);
  size_t per = words / nt / 8 * 8;
  for (int i = 0; i < nt; i++) {
    args[i] = (bw_arg_t){src + per * i, dst ? dst + per * i : NULL, per, copy,
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
  size_t words = bytes / 8 / 64 * 64;
  uint64_t *src = aligned_alloc(64, words * 8);
  uint64_t *dst = aligned_alloc(64, words * 8);
  if (!src || !dst) {
    free(src);
    free(dst);
    return SA_ENOMEM;
  }
  for (size_t i = 0; i < words; i++) /* fault every page in */
    src[i] = i * 0x9e3779b97f4a7c15ull;
  memset(dst, 1, words * 8);
  double rd[64], cp[64];
  bw_pass(nt, src, NULL, words, 0); /* warm-up */
  for (int r = 0; r < reps; r++) {
    rd[r] = (double)(words / nt / 8 * 8 * nt * 8) / bw_pass(nt, src, NULL, words, 0) / 1e9;
    cp[r] = 2.0 * (double)(words / nt / 8 * 8 * nt * 8) / bw_pass(nt, src, dst, words, 1) / 1e9;
  }
  out->read_gbs = sa_bench_median(rd, reps);
  out->copy_gbs = sa_bench_median(cp, reps);
  out->bytes = words * 8;
  out->threads = nt;
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
