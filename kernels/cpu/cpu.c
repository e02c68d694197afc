/*
 * cpu — the optimised CPU backend ("cpu").
 *
 * What it is: the serving backend for hosts without a GPU. Host memory,
 * fp32 activations, bf16 weights, fp32 accumulation everywhere. The matmul
 * kernels are chosen at run time (__builtin_cpu_supports and, for AMX, the
 * kernel's grant of tile state; the SA_CPU_ISA environment variable or
 * sa_cpu_set_isa override the pick):
 *   amx         AMX-BF16 tiles (cpu_amx.c): x rounded to bf16, one
 *               summation order for every M; the GEMM runs ~10x the fp32
 *               path, the decode GEMV at memory bandwidth;
 *   avx512bf16  vdpbf16ps (cpu_avx512bf16.c): x rounded to bf16, one order
 *               for every M; for CPUs with BF16 but no AMX;
 *   avx512bf16-fma  the same bits by two fp32 FMAs per vdpbf16ps (same
 *               file): picked instead where a timing at first use finds
 *               vdpbf16ps issuing fewer flops than FMA (Sapphire Rapids
 *               without AMX tile state: half);
 *   avx512, avx2, scalar  exact: bf16 W widened to fp32 and fp32 FMA
 *               (cpu_avx512.c, cpu_avx2.c, here), a streaming kernel that
 *               reads each W row once, so the decode GEMV runs at memory
 *               bandwidth.
 * Optionally (sgemm_min_m, off by default to keep results batch-invariant)
 * larger M widens tiles of W to fp32 in per-thread scratch and calls
 * OpenBLAS sgemm. A portable scalar path always exists.
 *
 * Threads: a small persistent pthread pool of `threads` workers (0 = online
 * CPUs), the calling thread being worker 0. Workers spin briefly between ops
 * (decode issues many small ops back to back) and then sleep on a condition
 * variable. Work is split by output columns (matmul), rows, or (row, head)
 * pairs (attention). OpenBLAS is set to one thread at creation
 * (openblas_set_num_threads(1), process-wide) and called from every worker
 * on its own column range, so the two thread pools never fight.
 *
 * What it is not: thread-safe per backend — one thread issues ops on a
 * backend at a time. Ops allocate nothing; scratch is reserved at creation.
 */
#include "backend_impl.h"
#include "cpu_impl.h"
#include "kernels.h"
#include "log.h"
#include "sa_error.h"
#include "tensor.h"

#include <cblas.h>
#include <cpuid.h>
#include <immintrin.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Per-thread scratch: W tiles for the sgemm path, scores for attention. */
#define SCRATCH_BYTES ((size_t)2 << 20)
/* Keys scored per online-softmax chunk in attention. */
#define ATTN_CHUNK 512
#define DENSE_QB 32 /* query rows per dense-attention block */
#define ATTN_MAX_GROUP 16 /* query heads attended together per KV head */
#define ATTN_MAX_UNITS 64 /* groups of one row attended chunk by chunk together */
#define ATTN_PF_BYTES 2048 /* of a head's slices prefetched ahead of the reading (kv_slices) */
#define ATTN_SUB 16       /* keys per kernel call (widened bf16 / q8: 4 KiB at hd 64) */
#define ATTN_VSUB 32      /* keys per attn_values_bf16 (one tile's k) or _widen call */
/* Below this many multiply-adds (or elements) an op runs on the caller. */
#define PAR_MIN_WORK 32768
/* Default first M served by sgemm: on the Zen 4 VM measured with bench-gemm
 * the streaming AVX-512 kernel matched or beat fp32 tiles + sgemm up to
 * M = 512 (widening W costs about what sgemm gains). */
#define SGEMM_MIN_M_AVX512 512
/* Without AVX-512 the streaming kernel loses to sgemm much earlier. */
#define SGEMM_MIN_M_AVX2 32
#define SGEMM_MIN_M_SCALAR 8

/* ------------------------------------------------------------------------ */
/* scalar kernels (portable fallback)                                        */

static float bf(uint16_t h) { return sa_bf16_to_f32(h); }

static void mm_small_scalar(float *y, const float *x, const uint16_t *w,
                            const uint16_t *bias, int M, int N, int K, int n0,
                            int n1, int accumulate) {
  for (int n = n0; n < n1; n++) {
    const uint16_t *wr = w + (size_t)n * K;
    for (int m = 0; m < M; m++) {
      const float *xr = x + (size_t)m * K;
      float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
      int k = 0;
      for (; k + 4 <= K; k += 4) {
        s0 += xr[k] * bf(wr[k]);
        s1 += xr[k + 1] * bf(wr[k + 1]);
        s2 += xr[k + 2] * bf(wr[k + 2]);
        s3 += xr[k + 3] * bf(wr[k + 3]);
      }
      for (; k < K; k++)
        s0 += xr[k] * bf(wr[k]);
      float s = (s0 + s1) + (s2 + s3);
      if (bias)
        s += bf(bias[n]);
      if (accumulate)
        s += y[(size_t)m * N + n];
      y[(size_t)m * N + n] = s;
    }
  }
}

static float dot_scalar(const float *a, const float *b, int n) {
  float s0 = 0.f, s1 = 0.f;
  int i = 0;
  for (; i + 2 <= n; i += 2) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
  }
  if (i < n)
    s0 += a[i] * b[i];
  return s0 + s1;
}

static void attn_scores_scalar(float *s, size_t ss, const float *q, int G, int hd,
                               const float *const *k, int n, float scale) {
  for (int g = 0; g < G; g++)
    for (int i = 0; i < n; i++)
      s[(size_t)g * ss + i] = dot_scalar(q + (size_t)g * hd, k[i], hd) * scale;
}

static void attn_values_scalar(float *o, const float *c, const float *e, size_t es, int G,
                               int hd, const float *const *v, int n) {
  for (int g = 0; g < G; g++) {
    float *og = o + (size_t)g * hd;
    if (c)
      for (int d = 0; d < hd; d++)
        og[d] *= c[g];
    for (int i = 0; i < n; i++) {
      float a = e[(size_t)g * es + i];
      for (int d = 0; d < hd; d++)
        og[d] += a * v[i][d];
    }
  }
}

static void bf16_to_f32_scalar(float *dst, const uint16_t *src, size_t n) {
  for (size_t i = 0; i < n; i++)
    dst[i] = bf(src[i]);
}

static float exp_sum_scalar(float *x, int n, float mx) {
  float s = 0.f;
  for (int i = 0; i < n; i++) {
    x[i] = expf(x[i] - mx);
    s += x[i];
  }
  return s;
}

static void silu_mul_scalar(float *y, const float *g, const float *u, int n) {
  for (int i = 0; i < n; i++)
    y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void gelu_scalar(float *x, size_t n) {
  for (size_t i = 0; i < n; i++)
    x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

const sa__cpu_kern_t sa__cpu_kern_scalar = {
    .name = "scalar",
    .mm_small = mm_small_scalar,
    .attn_scores = attn_scores_scalar,
    .attn_values = attn_values_scalar,
    .q8_to_f32 = sa__kv_q8_read_row,
    .exp_sum = exp_sum_scalar,
    .silu_mul = silu_mul_scalar,
    .gelu = gelu_scalar,
    .bf16_to_f32 = bf16_to_f32_scalar,
};

/* ------------------------------------------------------------------------ */
/* ISA selection                                                             */

/* AMX-BF16: the CPU has it (CPUID 7.0 EDX bits 22 and 24) and Linux grants
 * this process the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, Linux
 * 5.16+; the grant is process-wide). Asked once. */
static int amx_usable(void) {
  static int usable = -1;
  if (usable >= 0)
    return usable;
  unsigned a, b, c, d;
  usable = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 22)) && (d & (1u << 24)))
    usable = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                     18 /* XFEATURE_XTILEDATA */) == 0;
  return usable;
}

/* AMX-INT8 (CPUID 7.0 EDX bit 25) besides the tile state amx_usable asks
 * for. */
static int amx_int8_usable(void) {
  unsigned a, b, c, d;
  return amx_usable() && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 25));
}

static int isa_supported(const sa__cpu_kern_t *k) {
  __builtin_cpu_init();
  if (k == &sa__cpu_kern_scalar)
    return 1;
  if (k == &sa__cpu_kern_avx2)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  int avx512 = __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("fma");
  if (k == &sa__cpu_kern_avx512)
    return avx512;
  if (k == &sa__cpu_kern_avx512bf16 || k == &sa__cpu_kern_avx512bf16_fma)
    return avx512 && __builtin_cpu_supports("avx512bf16");
  if (k == &sa__cpu_kern_amx)
    return avx512 && __builtin_cpu_supports("avx512bf16") && amx_usable();
  return 0;
}

static const sa__cpu_kern_t *isa_by_name(const char *name) {
  static const sa__cpu_kern_t *all[] = {&sa__cpu_kern_scalar, &sa__cpu_kern_avx2,
                                        &sa__cpu_kern_avx512,
                                        &sa__cpu_kern_avx512bf16,
                                        &sa__cpu_kern_avx512bf16_fma, &sa__cpu_kern_amx};
  for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
    if (strcmp(all[i]->name, name) == 0)
      return all[i];
  return NULL;
}

/* Which bf16 dot-product table this core runs faster (same bits): timed
 * once per process. */
static pthread_once_t dot_once = PTHREAD_ONCE_INIT;
static const sa__cpu_kern_t *dot_kern;
static void dot_pick(void) {
  dot_kern = sa__cpu_dpbf16_full_rate() ? &sa__cpu_kern_avx512bf16
                                        : &sa__cpu_kern_avx512bf16_fma;
}

/* The fastest path: AMX tiles, else the bf16 dot product (both round x to
 * bf16; by vdpbf16ps or, where that is half rate, by FMA with the same
 * bits), else the exact fp32 paths. */
static const sa__cpu_kern_t *isa_auto(void) {
  if (isa_supported(&sa__cpu_kern_amx))
    return &sa__cpu_kern_amx;
  if (isa_supported(&sa__cpu_kern_avx512bf16)) {
    pthread_once(&dot_once, dot_pick);
    return dot_kern;
  }
  if (isa_supported(&sa__cpu_kern_avx512))
    return &sa__cpu_kern_avx512;
  if (isa_supported(&sa__cpu_kern_avx2))
    return &sa__cpu_kern_avx2;
  return &sa__cpu_kern_scalar;
}

/* ------------------------------------------------------------------------ */
/* thread pool                                                               */

/* A job is a range [0, total) cut into n_chunks chunks whose bounds are
 * multiples of `align`. Every worker (the caller included) grabs chunks with
 * a CAS on `ticket` = generation << 32 | next chunk, so a worker the OS
 * leaves unscheduled delays nothing: the others take its chunks, and the
 * caller only waits for chunks actually started. A late worker whose
 * generation has passed finds its ticket stale and goes back to sleep. */
typedef void (*range_fn)(void *arg, int lo, int hi, int tid);

typedef struct cpu cpu_t;

typedef struct {
  cpu_t *c;
  int tid;
} worker_arg_t;

struct cpu {
  sa_backend_t be;
  const sa__cpu_kern_t *kern;
  sa__mmq_fn mmq;       /* the quantized path that goes with kern (mmq_of) */
  const char *mmq_name;
  int nt;
  int sgemm_min_m; /* 0: per ISA (sgemm_min_m_of) */
  float **scratch; /* [nt] of SCRATCH_BYTES each */
  size_t scratch_floats;
  pthread_t *th;
  worker_arg_t *wargs;
  int n_started;
  /* the current job (written by the caller before the ticket is published) */
  range_fn fn;
  void *arg;
  int total, align, n_chunks;
  atomic_uint_fast64_t ticket;
  atomic_int done;
  atomic_uint gen;
  atomic_int stop;
  pthread_mutex_t mu;
  pthread_cond_t cv;
};

static inline void cpu_relax(void) { _mm_pause(); }

/* Grabs and runs chunks of generation g until none is left. */
static void run_chunks(cpu_t *c, uint64_t g, int tid) {
  for (;;) {
    uint64_t t = atomic_load_explicit(&c->ticket, memory_order_acquire);
    if ((t >> 32) != g)
      return;
    int i = (int)(t & 0xffffffffu);
    if (i >= c->n_chunks)
      return;
    if (!atomic_compare_exchange_weak_explicit(&c->ticket, &t, t + 1,
                                               memory_order_acq_rel,
                                               memory_order_relaxed))
      continue;
    /* the job of generation g stays live until our chunk is counted done */
    int units = (c->total + c->align - 1) / c->align;
    int a = (int)((long long)units * i / c->n_chunks);
    int b = (int)((long long)units * (i + 1) / c->n_chunks);
    int lo = a * c->align, hi = b * c->align;
    if (hi > c->total)
      hi = c->total;
    if (lo < hi)
      c->fn(c->arg, lo, hi, tid);
    atomic_fetch_add_explicit(&c->done, 1, memory_order_release);
  }
}

static void *worker_main(void *p) {
  worker_arg_t *wa = p;
  cpu_t *c = wa->c;
  unsigned seen = 0;
  for (;;) {
    unsigned g;
    int spins = 0;
    while ((g = atomic_load_explicit(&c->gen, memory_order_acquire)) == seen) {
      if (++spins < 20000) {
        cpu_relax();
        continue;
      }
      pthread_mutex_lock(&c->mu);
      while ((g = atomic_load_explicit(&c->gen, memory_order_acquire)) == seen)
        pthread_cond_wait(&c->cv, &c->mu);
      pthread_mutex_unlock(&c->mu);
      break;
    }
    seen = g;
    if (atomic_load(&c->stop))
      break;
    run_chunks(c, g, wa->tid);
  }
  return NULL;
}

/* Runs fn over [0, total) in chunks on the pool, the caller being worker 0;
 * on the caller alone when total * cost (multiply-adds or elements) is
 * small. Returns when every chunk has finished. */
static void run_range(cpu_t *c, int total, double cost, int align, range_fn fn,
                      void *arg) {
  if (total <= 0)
    return;
  int units = (total + align - 1) / align;
  if (c->nt == 1 || (double)total * cost < PAR_MIN_WORK || units == 1) {
    fn(arg, 0, total, 0);
    return;
  }
  c->fn = fn;
  c->arg = arg;
  c->total = total;
  c->align = align;
  c->n_chunks = units < 4 * c->nt ? units : 4 * c->nt;
  atomic_store_explicit(&c->done, 0, memory_order_relaxed);
  unsigned g = atomic_load_explicit(&c->gen, memory_order_relaxed) + 1;
  atomic_store_explicit(&c->ticket, (uint64_t)g << 32, memory_order_release);
  atomic_store_explicit(&c->gen, g, memory_order_release);
  pthread_mutex_lock(&c->mu);
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  run_chunks(c, g, 0);
  int spins = 0;
  while (atomic_load_explicit(&c->done, memory_order_acquire) < c->n_chunks) {
    if (++spins < 2000)
      cpu_relax();
    else
      sched_yield();
  }
}

/* ------------------------------------------------------------------------ */
/* matmul                                                                    */

typedef struct {
  cpu_t *c;
  float *y;
  const float *x;
  const uint16_t *w, *bias;
  int M, N, K, accumulate;
} mm_job_t;

/* The sgemm route is opt-in (sa_cpu_set_sgemm_min_m, or the environment
 * variable SA_CPU_SGEMM_MIN_M at creation; the SGEMM_MIN_M_* values above are
 * the measured break-even points to use). By default every matmul takes the
 * streaming kernel, whose per-element summation order does not depend on M:
 * results are batch-invariant, which the cluster relies on (a sequence's
 * tokens must not depend on which other sequences share its step, nor on how
 * its prompt was chunked — docs/faults.md). */
static int sgemm_min_m_of(const cpu_t *c) {
  if (c->sgemm_min_m > 0)
    return c->sgemm_min_m;
  return INT_MAX;
}

static void mm_small_range(void *p, int lo, int hi, int tid) {
  mm_job_t *j = p;
  if (j->c->kern->mm_dot && j->K == 0) { /* y = bias (+ y) */
    for (int m = 0; m < j->M; m++)
      for (int n = lo; n < hi; n++) {
        float *yo = j->y + (size_t)m * j->N + n;
        float s = j->accumulate ? *yo : 0.0f;
        *yo = j->bias ? s + bf(j->bias[n]) : s;
      }
    return;
  }
  if (j->c->kern->mm_dot) {
    j->c->kern->mm_dot(j->y, j->x, j->w, j->bias, j->M, j->N, j->K, lo, hi,
                       j->accumulate, j->c->scratch[tid], SCRATCH_BYTES);
    return;
  }
  j->c->kern->mm_small(j->y, j->x, j->w, j->bias, j->M, j->N, j->K, lo, hi,
                       j->accumulate);
}

/* Columns [lo, hi) via fp32 W tiles in this thread's scratch + sgemm. */
static void mm_sgemm_cols(mm_job_t *j, float *tile, int lo, int hi) {
  int K = j->K, N = j->N;
  int nb = (int)(j->c->scratch_floats / (size_t)K) & ~15;
  for (int n0 = lo; n0 < hi; n0 += nb) {
    int n = hi - n0 < nb ? hi - n0 : nb;
    j->c->kern->bf16_to_f32(tile, j->w + (size_t)n0 * K, (size_t)n * K);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->M, n, K, 1.0f,
                j->x, K, tile, K, j->accumulate ? 1.0f : 0.0f, j->y + n0, N);
    if (j->bias)
      for (int m = 0; m < j->M; m++) {
        float *yr = j->y + (size_t)m * N + n0;
        for (int i = 0; i < n; i++)
          yr[i] += bf(j->bias[n0 + i]);
      }
  }
}

static void mm_sgemm_range(void *p, int lo, int hi, int tid) {
  mm_job_t *j = p;
  mm_sgemm_cols(j, j->c->scratch[tid], lo, hi);
}

static int cpu_matmul_bf16(sa_backend_t *be, float *y, const float *x,
                           const uint16_t *w, const uint16_t *bias, int M,
                           int N, int K, int accumulate) {
  cpu_t *c = be->impl;
  mm_job_t j = {c, y, x, w, bias, M, N, K, accumulate};
  size_t tile_min = (size_t)16 * K;
  if (M >= sgemm_min_m_of(c) && K > 0 && tile_min <= c->scratch_floats) {
    run_range(c, N, (double)M * K, 16, mm_sgemm_range, &j);
    return 0;
  }
  run_range(c, N, (double)M * K, 4, mm_small_range, &j);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* quantized matmul (kernels.h matmul_q; the bits: quant.c)                  */

static void mmq_scalar(float *y, const int8_t *xq, const float *xd, int wtype, const void *wq,
                       const uint16_t *wd, const uint16_t *bias, int M, int N, int K, int n0,
                       int n1, int accumulate, void *scratch, size_t scratch_bytes) {
  (void)scratch;
  (void)scratch_bytes;
  sa__mmq_scalar(y, xq, xd, wtype, wq, wd, bias, M, N, K, n0, n1, accumulate);
}

/* The quantized path that goes with the bf16 path k: its ISA level, VNNI
 * where the AVX-512 paths run and the CPU has it, AMX-INT8 with amx. Asked
 * when the path is picked (set_kern), not per matmul. */
static sa__mmq_fn mmq_of(const sa__cpu_kern_t *k, const char **name) {
  const char *nm = "scalar";
  sa__mmq_fn fn = mmq_scalar;
  if (k != &sa__cpu_kern_scalar) {
    nm = "avx2";
    fn = sa__mmq_avx2;
    if (k != &sa__cpu_kern_avx2 && __builtin_cpu_supports("avx512vnni")) {
      nm = "avx512vnni";
      fn = sa__mmq_avx512vnni;
      if (k == &sa__cpu_kern_amx && amx_int8_usable()) {
        nm = "amx";
        fn = sa__mmq_amx;
      }
    }
  }
  *name = nm;
  return fn;
}

static void set_kern(cpu_t *c, const sa__cpu_kern_t *k) {
  c->kern = k;
  c->mmq = mmq_of(k, &c->mmq_name);
}

typedef struct {
  cpu_t *c;
  sa__mmq_fn fn;
  float *y;
  const int8_t *xq;
  const float *xd;
  int wtype;
  const void *wq;
  const uint16_t *wd, *bias;
  int M, N, K, accumulate;
} mmq_job_t;

static void mmq_range(void *p, int lo, int hi, int tid) {
  mmq_job_t *j = p;
  j->fn(j->y, j->xq, j->xd, j->wtype, j->wq, j->wd, j->bias, j->M, j->N, j->K, lo, hi,
        j->accumulate, j->c->scratch[tid], SCRATCH_BYTES);
}

static int cpu_matmul_q(sa_backend_t *be, float *y, const int8_t *xq, const float *xd,
                        int wtype, const void *wq, const uint16_t *wd, const uint16_t *bias,
                        int M, int N, int K, int accumulate) {
  cpu_t *c = be->impl;
  /* R8 (packed for the AVX2 path) is read by the AVX2 kernel from any
   * SIMD path the ISA was switched to since, and by the scalar one */
  sa__mmq_fn fn = SA_WQ_IS_R8(wtype) && c->mmq != mmq_scalar ? sa__mmq_avx2 : c->mmq;
  mmq_job_t j = {c, fn, y, xq, xd, wtype, wq, wd, bias, M, N, K, accumulate};
  /* each thread's columns in whole 16-row groups, so no group is split. From
   * 16 rows of x on, one range per thread: the AMX-INT8 kernel packs all of
   * x on every call, and at 4 chunks a thread that packing took longer than
   * the products (2 threads prefilled Q4_0 slower than one). Every output's
   * sum is the same whichever range it falls in. */
  int align = 16;
  if (M >= 16 && c->nt > 1)
    align = 16 * ((N + 16 * c->nt - 1) / (16 * c->nt));
  run_range(c, N, (double)M * K, align, mmq_range, &j);
  return 0;
}

typedef struct {
  int8_t *xq;
  float *xd;
  const float *x;
  int K;
} q8_job_t;

static void quantize_rows(void *p, int lo, int hi, int tid) {
  (void)tid;
  q8_job_t *j = p;
  for (int m = lo; m < hi; m++)
    sa__q8_quantize_row(j->xq + (size_t)m * j->K, j->xd + (size_t)m * (j->K / SA_QK),
                        j->x + (size_t)m * j->K, j->K);
}

/* Q8_0 and Q4_0 go to R8 where the AVX2 kernel is the quantized path
 * (kernels.h, quant_avx2.c); the VNNI and AMX kernels read the row-major
 * layouts. */
static int cpu_pack_q(sa_backend_t *be, int wtype, void *wq, uint16_t *wd, int N, int K) {
  cpu_t *c = be->impl;
  if (N % 8 || c->mmq != sa__mmq_avx2)
    return wtype;
  int rc = sa__q_pack_r8(wtype, wq, wd, N, K);
  return rc ? rc : wtype == SA_WQ_Q8_0 ? SA_WQ_Q8_0_R8 : SA_WQ_Q4_0_R8;
}

static int cpu_quantize_q8(sa_backend_t *be, int8_t *xq, float *xd, const float *x, int M,
                           int K) {
  q8_job_t j = {xq, xd, x, K};
  run_range(be->impl, M, 2.0 * K, 1, quantize_rows, &j);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* row-wise ops                                                              */

typedef struct {
  float *y;
  const float *x;
  const uint16_t *w, *b;
  const int32_t *ids;
  int H, V;
  float eps;
  atomic_int err;
} rows_job_t;

static void rmsnorm_rows(void *p, int lo, int hi, int tid) {
  (void)tid;
  rows_job_t *j = p;
  int H = j->H;
  for (int m = lo; m < hi; m++) {
    const float *xr = j->x + (size_t)m * H;
    float *yr = j->y + (size_t)m * H;
    float ss = 0.f;
    for (int i = 0; i < H; i++)
      ss += xr[i] * xr[i];
    float r = 1.0f / sqrtf(ss / (float)H + j->eps);
    for (int i = 0; i < H; i++)
      yr[i] = xr[i] * r * bf(j->w[i]);
  }
}

static int cpu_rmsnorm(sa_backend_t *be, float *y, const float *x,
                       const uint16_t *w, int M, int H, float eps) {
  rows_job_t j = {.y = y, .x = x, .w = w, .H = H, .eps = eps};
  run_range(be->impl, M, 3.0 * H, 1, rmsnorm_rows, &j);
  return 0;
}

static void layernorm_rows(void *p, int lo, int hi, int tid) {
  (void)tid;
  rows_job_t *j = p;
  int H = j->H;
  for (int m = lo; m < hi; m++) {
    const float *xr = j->x + (size_t)m * H;
    float *yr = j->y + (size_t)m * H;
    float mean = 0.f, var = 0.f;
    for (int i = 0; i < H; i++)
      mean += xr[i];
    mean /= (float)H;
    for (int i = 0; i < H; i++)
      var += (xr[i] - mean) * (xr[i] - mean);
    var /= (float)H;
    float r = 1.0f / sqrtf(var + j->eps);
    for (int i = 0; i < H; i++)
      yr[i] = (xr[i] - mean) * r * bf(j->w[i]) + bf(j->b[i]);
  }
}

static int cpu_layernorm(sa_backend_t *be, float *y, const float *x,
                         const uint16_t *w, const uint16_t *b, int M, int H,
                         float eps) {
  rows_job_t j = {.y = y, .x = x, .w = w, .b = b, .H = H, .eps = eps};
  run_range(be->impl, M, 4.0 * H, 1, layernorm_rows, &j);
  return 0;
}

typedef struct {
  float *x;
  const int32_t *pos;
  int n_heads, hd, row_stride;
  float inv[1024]; /* hd / 2 inverse frequencies */
} rope_job_t;

static void rope_rows(void *p, int lo, int hi, int tid) {
  (void)tid;
  rope_job_t *j = p;
  int half = j->hd / 2;
  for (int m = lo; m < hi; m++) {
    float fp = (float)j->pos[m];
    for (int i = 0; i < half; i++) {
      float ang = fp * j->inv[i];
      float c = cosf(ang), s = sinf(ang);
      for (int h = 0; h < j->n_heads; h++) {
        float *v = j->x + (size_t)m * j->row_stride + (size_t)h * j->hd;
        float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
  }
}

static int cpu_rope(sa_backend_t *be, float *x, const int32_t *pos, int M,
                    int n_heads, int hd, int row_stride, float theta) {
  if (hd > 2048) /* this kernel's limit */
    return SA_EINVAL;
  rope_job_t j = {.x = x, .pos = pos, .n_heads = n_heads, .hd = hd,
                  .row_stride = row_stride};
  /* Same fp32 angle as Hugging Face (see ref.c). */
  for (int i = 0; i < hd / 2; i++)
    j.inv[i] = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
  run_range(be->impl, M, 4.0 * n_heads * hd, 1, rope_rows, &j);
  return 0;
}

typedef struct {
  float *y;
  const float *x;
  int nI;
  const sa__cpu_kern_t *kern;
} ew_job_t;

static void silu_mul_rows(void *p, int lo, int hi, int tid) {
  (void)tid;
  ew_job_t *j = p;
  int nI = j->nI;
  for (int m = lo; m < hi; m++) {
    const float *g = j->x + (size_t)m * 2 * nI, *u = g + nI;
    j->kern->silu_mul(j->y + (size_t)m * nI, g, u, nI);
  }
}

static int cpu_silu_mul(sa_backend_t *be, float *y, const float *gu, int M,
                        int nI) {
  ew_job_t j = {y, gu, nI, ((cpu_t *)be->impl)->kern};
  run_range(be->impl, M, 20.0 * nI, 1, silu_mul_rows, &j);
  return 0;
}

/* Element-wise ops over n elements, split in chunks of EW_CHUNK. */
#define EW_CHUNK 4096

typedef struct {
  float *y;
  const float *x;
  size_t n;
  const sa__cpu_kern_t *kern;
} flat_job_t;

static void gelu_chunks(void *p, int lo, int hi, int tid) {
  (void)tid;
  flat_job_t *j = p;
  size_t a = (size_t)lo * EW_CHUNK, b = (size_t)hi * EW_CHUNK;
  if (b > j->n)
    b = j->n;
  j->kern->gelu(j->y + a, b - a);
}

static void relu_chunks(void *p, int lo, int hi, int tid) {
  (void)tid;
  flat_job_t *j = p;
  size_t a = (size_t)lo * EW_CHUNK, b = (size_t)hi * EW_CHUNK;
  if (b > j->n)
    b = j->n;
  for (size_t i = a; i < b; i++)
    j->y[i] = j->y[i] < 0.0f ? 0.0f : j->y[i];
}

static void add_chunks(void *p, int lo, int hi, int tid) {
  (void)tid;
  flat_job_t *j = p;
  size_t a = (size_t)lo * EW_CHUNK, b = (size_t)hi * EW_CHUNK;
  if (b > j->n)
    b = j->n;
  for (size_t i = a; i < b; i++)
    j->y[i] += j->x[i];
}

static int run_flat(sa_backend_t *be, float *y, const float *x, size_t n,
                    double cost, range_fn fn) {
  size_t chunks = (n + EW_CHUNK - 1) / EW_CHUNK;
  if (chunks > (size_t)1 << 30)
    return SA_EINVAL;
  flat_job_t j = {y, x, n, ((cpu_t *)be->impl)->kern};
  run_range(be->impl, (int)chunks, cost * EW_CHUNK, 1, fn, &j);
  return 0;
}

static int cpu_gelu(sa_backend_t *be, float *x, size_t n) {
  return run_flat(be, x, NULL, n, 20.0, gelu_chunks);
}

static int cpu_relu(sa_backend_t *be, float *x, size_t n) {
  return run_flat(be, x, NULL, n, 0.25, relu_chunks);
}

static int cpu_add(sa_backend_t *be, float *y, const float *x, size_t n) {
  return run_flat(be, y, x, n, 0.25, add_chunks);
}

static void softmax_rows(void *p, int lo, int hi, int tid) {
  (void)tid;
  ew_job_t *j = p;
  int N = j->nI;
  for (int m = lo; m < hi; m++) {
    float *r = j->y + (size_t)m * N;
    float mx = r[0], s = 0.f;
    for (int i = 1; i < N; i++)
      mx = r[i] > mx ? r[i] : mx;
    for (int i = 0; i < N; i++) {
      r[i] = expf(r[i] - mx);
      s += r[i];
    }
    float inv = 1.0f / s;
    for (int i = 0; i < N; i++)
      r[i] *= inv;
  }
}

static int cpu_softmax(sa_backend_t *be, float *x, int M, int N) {
  ew_job_t j = {x, NULL, N, ((cpu_t *)be->impl)->kern};
  run_range(be->impl, M, 20.0 * N, 1, softmax_rows, &j);
  return 0;
}

typedef struct {
  cpu_t *c;
  float *y;
  const uint16_t *table;
  const int32_t *ids;
  int H;
} embed_job_t;

static void embed_rows(void *p, int lo, int hi, int tid) {
  (void)tid;
  embed_job_t *j = p;
  for (int m = lo; m < hi; m++)
    j->c->kern->bf16_to_f32(j->y + (size_t)m * j->H,
                            j->table + (size_t)j->ids[m] * j->H, (size_t)j->H);
}

static int cpu_embed(sa_backend_t *be, float *y, const uint16_t *table,
                     const int32_t *ids, int M, int H, int V) {
  for (int m = 0; m < M; m++)
    if (ids[m] < 0 || ids[m] >= V)
      return SA_ERANGE;
  embed_job_t j = {be->impl, y, table, ids, H};
  run_range(be->impl, M, 1.0 * H, 1, embed_rows, &j);
  return 0;
}

static int cpu_kv_write(sa_backend_t *be, void *k_cache, void *v_cache, int kv_type,
                        const float *k, const float *v, int row_stride,
                        const int32_t *slot, int M, int kv_dim) {
  (void)be;
  for (int m = 0; m < M; m++)
    if (slot[m] < 0)
      return SA_ERANGE;
  size_t row = sa_kv_row_bytes(kv_type, kv_dim);
  for (int m = 0; m < M; m++) {
    size_t at = (size_t)slot[m] * kv_dim;
    const float *kr = k + (size_t)m * row_stride, *vr = v + (size_t)m * row_stride;
    if (kv_type == SA_KV_Q8_0) {
      sa__kv_q8_write_row((uint8_t *)k_cache + (size_t)slot[m] * row, kr, kv_dim);
      sa__kv_q8_write_row((uint8_t *)v_cache + (size_t)slot[m] * row, vr, kv_dim);
    } else if (kv_type == SA_KV_BF16) {
      sa_f32_to_bf16_n((uint16_t *)k_cache + at, kr, (size_t)kv_dim);
      sa_f32_to_bf16_n((uint16_t *)v_cache + at, vr, (size_t)kv_dim);
    } else {
      memcpy((float *)k_cache + at, kr, sizeof(float) * kv_dim);
      memcpy((float *)v_cache + at, vr, sizeof(float) * kv_dim);
    }
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* attention                                                                 */

/* The running state of one GQA group of one query row (attend_*). */
typedef struct {
  float *out;
  const float *q;
  int G;
  size_t off;   /* bytes into a cache row: its KV head's slice */
  int prefetch; /* the first group of its KV head: prefetches for all */
  uint16_t *qp; /* q packed for attn_scores_bf16 (NULL: keys are widened) */
  float *sc;    /* the chunk's scores, G rows of ATTN_CHUNK */
  float mx[ATTN_MAX_GROUP], l[ATTN_MAX_GROUP], corr[ATTN_MAX_GROUP];
} attn_group_t;

/* What the groups of one query row share: its keys and the scratch. */
typedef struct {
  const sa__cpu_kern_t *kn;
  const void *kc, *vc;
  int kv_type, bs, n_keys, hd;
  const int32_t *table;
  size_t row;
  float scale, *wide;
  uint16_t *kt, *vt; /* attn_scores_bf16's key tile, attn_values_bf16's tiles */
  int widen;         /* a bf16 cache goes to attn_scores_widen, attn_values_widen */
} attn_row_t;

/* Prefetches (into L2) the head slices (bytes each) of rows p .. p+n-1 of
 * a pass that ends at end, past it the next pass's rows from next_p0 (in
 * next, below next_end). */
static void kv_prefetch(const attn_row_t *r, const attn_group_t *a, size_t bytes,
                        const char *base, int p, int n, int end, const char *next, int next_p0,
                        int next_end) {
  while (n > 0) {
    if (p >= end && next) /* past this pass: into the next one */
      p = next_p0 + (p - end), end = next_end, base = next, next = NULL;
    if (p >= end)
      return;
    int in = p % r->bs, run = r->bs - in;
    run = run < n ? run : n;
    run = run < end - p ? run : end - p;
    const char *at = base + ((size_t)r->table[p / r->bs] * r->bs + in) * r->row + a->off;
    for (int k = 0; k < run; k++, at += r->row)
      for (size_t b = 0; b < bytes; b += 64)
        __builtin_prefetch(at + b, 0, 2);
    p += run, n -= run;
  }
}

/* Pointers to the fp32 head slices of keys p0 .. p0+n-1 (key p's slice
 * starts (table[p / bs] * bs + p % bs) * row + off bytes into the cache):
 * into the cache itself when it is fp32, else widened into wide (n * hd
 * floats); or, for a bf16 cache when raw is given, the bf16 slices in the
 * cache, into raw. One table lookup per run of rows within a block (per
 * row, the lookup and its divisions were a fifth of a 16k step's attention
 * arithmetic). The group's rows ATTN_PF_BYTES of slices ahead in its
 * reading order are prefetched first (the cache's blocks are scattered
 * pages, and the hardware prefetcher starts cold on every one of them): in
 * this pass up to end, then the next pass's rows from next_p0 (below
 * next_end) in next, so a chunk's value pass and the next chunk's key pass
 * start warm. Into L2 (prefetcht1): at 16k context and batch 16 a step
 * took 3 % less with a bf16 cache and 7 % less with fp32 than into L1.
 * 1 to 2 KiB ahead was best for both formats (16 bf16 or 8 fp32 rows of
 * hd 64; 4 KiB was 2 % (bf16) and 9 % (fp32) slower, none 20 %). Tried
 * and slower: one group prefetching whole cache rows for a row's KV heads
 * (10 %). */
static void kv_slices(const attn_row_t *r, const attn_group_t *a, const void *cache,
                      const float **rp, const uint16_t **raw, int p0, int n, int end,
                      const void *next, int next_p0, int next_end) {
  const char *base = cache;
  int bs = r->bs, hd = r->hd;
  if (a->prefetch) {
    size_t bytes = sa_kv_row_bytes(r->kv_type, hd);
    int ahead = ATTN_PF_BYTES / (int)bytes;
    kv_prefetch(r, a, bytes, base, p0 + (ahead > 0 ? ahead : 1), n, end, next, next_p0,
                next_end);
  }
  for (int i = 0; i < n;) {
    int p = p0 + i, in = p % bs, run = bs - in;
    run = run < n - i ? run : n - i;
    const char *src = base + ((size_t)r->table[p / bs] * bs + in) * r->row + a->off;
    if (r->kv_type == SA_KV_F32)
      for (int k = 0; k < run; k++, src += r->row)
        rp[i + k] = (const float *)src;
    else if (r->kv_type == SA_KV_BF16 && raw) /* scored in place */
      for (int k = 0; k < run; k++, src += r->row)
        raw[i + k] = (const uint16_t *)src;
    else
      for (int k = 0; k < run; k++, src += r->row) {
        float *w = r->wide + (size_t)(i + k) * hd;
        if (r->kv_type == SA_KV_BF16)
          r->kn->bf16_to_f32(w, (const uint16_t *)src, (size_t)hd);
        else
          r->kn->q8_to_f32(w, (const uint8_t *)src, hd);
        rp[i + k] = w;
      }
    i += run;
  }
}

/* One query row's attention for the G query heads that share one KV head
 * (GQA group; q and out hold G consecutive head vectors of hd) against
 * keys 0..n_keys-1 of the paged cache (kv_slices; the head's slice of each
 * row starts off bytes in). Online softmax over chunks of ATTN_CHUNK keys:
 * attend_chunk takes the chunk's scores for all G heads into scratch (sc:
 * G * ATTN_CHUNK floats), for several groups at once (a wave: each block
 * of keys, then of values, goes to every group in turn, so the groups of a
 * row's KV heads read each block's cache rows whole and in order; heads
 * one after the other over a chunk read half of every row, and a step at
 * 16k context took 35 % longer), turns them into exponentials in one SIMD pass
 * (exp_sum), rescales the running outputs once and adds the chunk's
 * values. Keys go to the kernels in blocks of at most ATTN_SUB: a bf16 or
 * q8 block is widened to fp32 once (into wide, in L1) for all G heads
 * (where the kernels score bf16 in place or widen it in registers, a bf16
 * block's keys are not), and
 * each key and value row is read once for the group (7 query heads per KV
 * head: a sevenfold cut of the KV traffic). Each head's arithmetic depends
 * neither on G, the blocks, the order in which groups take their chunks,
 * nor the other rows of the batch. */
static void attend_begin(attn_group_t *a, int hd) {
  for (int g = 0; g < a->G; g++)
    a->mx[g] = -INFINITY, a->l[g] = 0.f;
  memset(a->out, 0, sizeof(float) * a->G * hd);
}

/* The largest of m and x[0..n-1] (x > m ? x : m, as eight interleaved
 * maxima: the max is exact in any order, and a chain of n dependent
 * compares cost ~15 % of a 16k decode step). */
static float row_max(const float *x, int n, float m) {
  float a[8];
  for (int k = 0; k < 8; k++)
    a[k] = m;
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++)
      a[k] = x[i + k] > a[k] ? x[i + k] : a[k];
  for (; i < n; i++)
    a[0] = x[i] > a[0] ? x[i] : a[0];
  for (int k = 0; k < 8; k++)
    m = a[k] > m ? a[k] : m;
  return m;
}

static void attend_chunk(const attn_row_t *r, attn_group_t *grp, int nu, int p0) {
  const sa__cpu_kern_t *kn = r->kn;
  const float *rp[ATTN_SUB];
  const uint16_t *kp[ATTN_VSUB];
  int hd = r->hd, n = r->n_keys - p0 < ATTN_CHUNK ? r->n_keys - p0 : ATTN_CHUNK;
  int in_place = grp[0].qp != NULL, raw = in_place || r->widen; /* kp, not rp */
  for (int i = 0; i < n; i += ATTN_SUB) {
    int nb = n - i < ATTN_SUB ? n - i : ATTN_SUB;
    for (int u = 0; u < nu; u++) {
      attn_group_t *a = &grp[u];
      kv_slices(r, a, r->kc, rp, raw ? kp : NULL, p0 + i, nb, p0 + n, r->vc, p0, p0 + n);
      if (in_place)
        kn->attn_scores_bf16(a->sc + i, ATTN_CHUNK, a->qp, a->G, hd, kp, nb, r->scale, r->kt);
      else if (raw)
        kn->attn_scores_widen(a->sc + i, ATTN_CHUNK, a->q, a->G, hd, kp, nb, r->scale, r->wide);
      else
        kn->attn_scores(a->sc + i, ATTN_CHUNK, a->q, a->G, hd, rp, nb, r->scale);
    }
  }
  for (int u = 0; u < nu; u++) {
    attn_group_t *a = &grp[u];
    for (int g = 0; g < a->G; g++) {
      float *sg = a->sc + g * ATTN_CHUNK, nm = row_max(sg, n, a->mx[g]);
      a->corr[g] = p0 == 0 ? 0.f : expf(a->mx[g] - nm);
      /* sc = exp(sc - nm) */
      a->l[g] = a->l[g] * a->corr[g] + kn->exp_sum(sg, n, nm);
      a->mx[g] = nm;
    }
  }
  int vsub = raw ? ATTN_VSUB : ATTN_SUB;
  for (int i = 0; i < n; i += vsub) {
    int nb = n - i < vsub ? n - i : vsub;
    for (int u = 0; u < nu; u++) {
      attn_group_t *a = &grp[u];
      kv_slices(r, a, r->vc, rp, raw ? kp : NULL, p0 + i, nb, p0 + n, r->kc, p0 + n,
                r->n_keys);
      /* the first chunk starts from zeros (corr 0 would keep a NaN) */
      const float *c = i == 0 && p0 > 0 ? a->corr : NULL;
      if (in_place)
        kn->attn_values_bf16(a->out, c, a->sc + i, ATTN_CHUNK, a->G, hd, kp, nb, r->vt);
      else if (raw)
        kn->attn_values_widen(a->out, c, a->sc + i, ATTN_CHUNK, a->G, hd, kp, nb, r->wide);
      else
        kn->attn_values(a->out, c, a->sc + i, ATTN_CHUNK, a->G, hd, rp, nb);
    }
  }
}

static void attend_end(const attn_group_t *a, int hd) {
  for (int g = 0; g < a->G; g++) {
    float inv = 1.0f / a->l[g], *o = a->out + (size_t)g * hd;
    for (int d = 0; d < hd; d++)
      o[d] *= inv;
  }
}

typedef struct {
  cpu_t *c;
  float *out;
  const float *q, *kc, *vc; /* dense: fp32 k, v */
  const void *pkc, *pvc;    /* paged cache, of kv_type */
  int kv_type;
  const sa_attn_batch_t *b;
  int q_stride, nh, nkv, hd, M;
  float scale;
  /* dense */
  int dense, n_valid;
  int by_row; /* paged: one item a row (all its KV heads), else (row, KV head) */
  int per_kv; /* groups of at most ATTN_MAX_GROUP query heads per KV head */
} attn_job_t;

/* Dense attention of query rows [t0, t0 + qb) of head h as two sgemms:
 * scores = scale * Q K^T into sc ([qb, n_valid], this thread's scratch),
 * each row turned into exp(score - row max), out = scores V, then each
 * output row divided by its sum. Encoder chunks are ~1250 frames: this runs
 * at GEMM speed where one dot per (row, key) ran at ~10 GFLOP/s. */
static void dense_block(const attn_job_t *j, float *sc, int h, int t0, int qb) {
  int hd = j->hd, n = j->n_valid;
  size_t D = (size_t)j->nh * hd;
  const float *q = j->q + (size_t)t0 * D + (size_t)h * hd;
  float *out = j->out + (size_t)t0 * D + (size_t)h * hd;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, qb, n, hd, j->scale, q, (int)D,
              j->kc + (size_t)h * hd, (int)D, 0.0f, sc, n);
  float inv[DENSE_QB];
  for (int r = 0; r < qb; r++) {
    float *row = sc + (size_t)r * n, mx = -INFINITY;
    for (int i = 0; i < n; i++)
      mx = row[i] > mx ? row[i] : mx;
    inv[r] = 1.0f / j->c->kern->exp_sum(row, n, mx);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, qb, hd, n, 1.0f, sc, n,
              j->vc + (size_t)h * hd, (int)D, 0.0f, out, (int)D);
  for (int r = 0; r < qb; r++)
    for (int d = 0; d < hd; d++)
      out[(size_t)r * D + d] *= inv[r];
}

/* Query rows per dense block: DENSE_QB, fewer if the scores would not fit
 * the scratch. */
static int dense_qb(const cpu_t *c, int n_valid) {
  size_t fit = c->scratch_floats / (size_t)n_valid;
  return fit >= DENSE_QB ? DENSE_QB : fit > 0 ? (int)fit : 0;
}

static void attn_run(attn_job_t *j, float *sc, int lo, int hi) {
  int nh = j->nh, hd = j->hd;
  const sa__cpu_kern_t *kn = j->c->kern;
  if (j->dense) {
    int qbs = dense_qb(j->c, j->n_valid);
    for (int it = lo; it < hi; it++) {
      int h = it % nh, t0 = (it / nh) * qbs;
      dense_block(j, sc, h, t0, j->M - t0 < qbs ? j->M - t0 : qbs);
    }
    return;
  }
  const sa_attn_batch_t *b = j->b;
  int nkv = j->nkv, group = nh / nkv, per_kv = j->per_kv;
  int units = j->by_row ? nkv * per_kv : per_kv; /* groups attended together */
  size_t kv_row = sa_kv_row_bytes(j->kv_type, nkv * hd), kv_head = kv_row / nkv; /* bytes */
  attn_group_t grp[ATTN_MAX_UNITS];
  /* A bf16 cache is read in place (attn_scores_bf16, attn_values_bf16)
   * when the scratch holds their tiles and the packed queries of the most
   * groups a row can have: a choice of hd alone, so every batch takes the
   * same arithmetic. */
  size_t in_place_bytes = ((size_t)ATTN_MAX_GROUP * ATTN_CHUNK + (size_t)ATTN_SUB * hd) * 4 +
                          16 * ATTN_KT_STRIDE(hd) + ATTN_VT_BYTES(hd) +
                          ATTN_MAX_UNITS * ATTN_QP_BYTES(hd);
  int in_place = j->kv_type == SA_KV_BF16 && kn->attn_scores_bf16 && kn->attn_values_bf16 &&
                 in_place_bytes <= SCRATCH_BYTES;
  /* else the kernels may widen it in registers (same bits as into scratch) */
  int widen = j->kv_type == SA_KV_BF16 && !in_place && kn->attn_scores_widen &&
              kn->attn_values_widen;
  /* Groups whose chunks are attended together, key block by key block
   * (attend_chunk): as many as the scratch holds the scores of, after the
   * widened keys and the tiles. */
  size_t unit_bytes = (size_t)ATTN_MAX_GROUP * ATTN_CHUNK * 4;
  size_t fixed = in_place_bytes <= SCRATCH_BYTES ? in_place_bytes - unit_bytes
                                                 : (size_t)ATTN_SUB * hd * 4;
  int wave = (int)((SCRATCH_BYTES - fixed) / unit_bytes);
  wave = wave < units ? wave : units;
  float *wide = sc + (size_t)wave * ATTN_MAX_GROUP * ATTN_CHUNK;
  int s = 0;
  for (int it = lo; it < hi; it++) { /* items: a row (by_row), else (row, KV head) */
    int row = j->by_row ? it : it / nkv, kh0 = j->by_row ? 0 : it % nkv;
    while (b->q_start[s + 1] <= row)
      s++;
    int n_new = b->q_start[s + 1] - b->q_start[s];
    int pos = b->ctx_len[s] - n_new + (row - b->q_start[s]);
    attn_row_t r = {.kn = kn, .kc = j->pkc, .vc = j->pvc, .kv_type = j->kv_type,
                    .bs = b->block_size, .n_keys = pos + 1, .hd = hd,
                    .table = b->block_table + (size_t)s * b->max_blocks, .row = kv_row,
                    .scale = j->scale, .wide = wide, .widen = widen};
    r.kt = (uint16_t *)(r.wide + (size_t)ATTN_SUB * hd);
    r.vt = (uint16_t *)((char *)r.kt + 16 * ATTN_KT_STRIDE(hd));
    uint16_t *qp = in_place ? (uint16_t *)((char *)r.vt + ATTN_VT_BYTES(hd)) : NULL;
    for (int u = 0; u < units; u++) {
      int kh = kh0 + u / per_kv, g0 = (u % per_kv) * ATTN_MAX_GROUP, h = kh * group + g0;
      grp[u] = (attn_group_t){.out = j->out + (size_t)row * nh * hd + (size_t)h * hd,
                              .q = j->q + (size_t)row * j->q_stride + (size_t)h * hd,
                              .G = group - g0 < ATTN_MAX_GROUP ? group - g0 : ATTN_MAX_GROUP,
                              .off = (size_t)kh * kv_head, .prefetch = u % per_kv == 0,
                              .qp = qp ? qp + (size_t)u * ATTN_QP_BYTES(hd) / 2 : NULL,
                              .sc = sc + (size_t)(u % wave) * ATTN_MAX_GROUP * ATTN_CHUNK};
      attend_begin(&grp[u], hd);
      if (qp)
        kn->attn_qpack(grp[u].qp, grp[u].q, grp[u].G, hd);
    }
    /* chunk by chunk, a wave of groups together: a KV head's slice is part
     * of every cache row, and the groups of a row's KV heads read each
     * block of rows in turn, so the cache streams in order (by_row) */
    for (int u0 = 0; u0 < units; u0 += wave)
      for (int p0 = 0; p0 < r.n_keys; p0 += ATTN_CHUNK)
        attend_chunk(&r, grp + u0, units - u0 < wave ? units - u0 : wave, p0);
    for (int u = 0; u < units; u++)
      attend_end(&grp[u], hd);
  }
}

static void attn_range(void *p, int lo, int hi, int tid) {
  attn_job_t *j = p;
  attn_run(j, j->c->scratch[tid], lo, hi);
}

/* A row's KV heads go to one thread when there are rows enough to keep
 * every thread busy (they share the row's cache lines); else each (row, KV
 * head) is an item of its own. The arithmetic is the same either way. */
static void attn_dispatch(cpu_t *c, attn_job_t *j, double keys_per_row) {
  int group = j->nh / j->nkv;
  j->per_kv = (group + ATTN_MAX_GROUP - 1) / ATTN_MAX_GROUP;
  j->by_row = (c->nt == 1 || j->M >= 2 * c->nt) && j->nkv * j->per_kv <= ATTN_MAX_UNITS;
  double cost = keys_per_row * j->hd * group;
  if (j->by_row)
    run_range(c, j->M, cost * j->nkv, 1, attn_range, j);
  else
    run_range(c, j->M * j->nkv, cost, 1, attn_range, j);
}

static int cpu_attention(sa_backend_t *be, float *out, const float *q,
                         int q_stride, const void *k_cache, const void *v_cache,
                         int kv_type, const sa_attn_batch_t *batch,
                         int nh, int nkv, int hd, float scale) {
  cpu_t *c = be->impl;
  if (batch->q_start[0] != 0) /* host memory here: checked where it is read */
    return SA_EINVAL;
  long long keys = 0;
  for (int s = 0; s < batch->n_seqs; s++) {
    int n_new = batch->q_start[s + 1] - batch->q_start[s];
    int ctx = batch->ctx_len[s];
    if (n_new < 0 || n_new > ctx || ctx > batch->max_ctx ||
        ctx > (long long)batch->max_blocks * batch->block_size)
      return SA_EINVAL;
    int nblk = (ctx + batch->block_size - 1) / batch->block_size;
    for (int i = 0; i < nblk; i++)
      if (batch->block_table[(size_t)s * batch->max_blocks + i] < 0)
        return SA_ERANGE;
    keys += (long long)n_new * ctx;
  }
  int M = batch->q_start[batch->n_seqs];
  if (M == 0)
    return 0;
  if ((size_t)ATTN_MAX_GROUP * ATTN_CHUNK + (size_t)ATTN_SUB * hd > c->scratch_floats)
    return SA_EINVAL; /* a head dim past 32256: the widened keys would not fit */
  if (nh / nkv > ATTN_MAX_GROUP * ATTN_MAX_UNITS)
    return SA_EINVAL; /* over 1024 query heads per KV head */
  attn_job_t j = {.c = c, .out = out, .q = q, .pkc = k_cache, .pvc = v_cache,
                  .kv_type = kv_type, .b = batch, .q_stride = q_stride, .nh = nh, .nkv = nkv,
                  .hd = hd, .M = M, .scale = scale};
  attn_dispatch(c, &j, (double)keys / M);
  return 0;
}

static int cpu_attention_dense(sa_backend_t *be, float *out, const float *q,
                               const float *k, const float *v, int T, int nh,
                               int hd, int n_valid, float scale) {
  cpu_t *c = be->impl;
  if (T == 0)
    return 0;
  int qbs = dense_qb(c, n_valid);
  if (qbs == 0) /* more keys than a thread's scratch holds scores for one row */
    return SA_ERANGE;
  attn_job_t j = {.c = c, .out = out, .q = q, .kc = k, .vc = v, .nh = nh,
                  .hd = hd, .M = T, .scale = scale, .dense = 1,
                  .n_valid = n_valid};
  /* items: (query block, head) */
  run_range(c, (T + qbs - 1) / qbs * nh, (double)qbs * n_valid * hd, 1, attn_range, &j);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* conv1d: im2col into ws, then the matmul                                   */

static int conv_tout(int Tin, int Kw, int stride, int pad) {
  int span = Tin + 2 * pad - Kw;
  return span < 0 ? 0 : span / stride + 1;
}

static size_t cpu_conv1d_ws_bytes(int Tin, int Cin, int Kw, int stride,
                                  int pad) {
  if (Tin < 0 || Cin <= 0 || Kw <= 0 || stride <= 0 || pad < 0)
    return 0;
  return (size_t)conv_tout(Tin, Kw, stride, pad) * Cin * Kw * sizeof(float);
}

typedef struct {
  float *col;
  const float *x;
  int Tin, Cin, Kw, stride, pad;
} im2col_job_t;

static void im2col_rows(void *p, int lo, int hi, int tid) {
  (void)tid;
  im2col_job_t *j = p;
  int Cin = j->Cin, Kw = j->Kw;
  for (int t = lo; t < hi; t++) {
    float *cr = j->col + (size_t)t * Cin * Kw;
    for (int kk = 0; kk < Kw; kk++) {
      int ti = t * j->stride - j->pad + kk;
      int in = ti >= 0 && ti < j->Tin;
      const float *xr = j->x + (size_t)ti * Cin;
      for (int ci = 0; ci < Cin; ci++)
        cr[(size_t)ci * Kw + kk] = in ? xr[ci] : 0.0f;
    }
  }
}

static int cpu_conv1d(sa_backend_t *be, float *y, const float *x,
                      const uint16_t *w, const uint16_t *bias, int Tin,
                      int Cin, int Cout, int Kw, int stride, int pad,
                      void *ws) {
  int Tout = conv_tout(Tin, Kw, stride, pad);
  if (Tout == 0)
    return 0;
  im2col_job_t j = {ws, x, Tin, Cin, Kw, stride, pad};
  run_range(be->impl, Tout, (double)Cin * Kw, 1, im2col_rows, &j);
  return cpu_matmul_bf16(be, y, ws, w, bias, Tout, Cout, Cin * Kw, 0);
}

/* ------------------------------------------------------------------------ */
/* lifetime                                                                  */

static void cpu_destroy(sa_backend_t *be) {
  if (!be)
    return;
  cpu_t *c = be->impl;
  if (c->n_started) {
    atomic_store(&c->stop, 1);
    atomic_fetch_add(&c->gen, 1);
    pthread_mutex_lock(&c->mu);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    for (int i = 0; i < c->n_started; i++)
      pthread_join(c->th[i], NULL);
  }
  pthread_cond_destroy(&c->cv);
  pthread_mutex_destroy(&c->mu);
  if (c->scratch)
    for (int i = 0; i < c->nt; i++)
      free(c->scratch[i]);
  free(c->scratch);
  free(c->th);
  free(c->wargs);
  free(c);
}

static const sa_backend_ops_t cpu_ops = {
    .name = "cpu",
    .alloc = sa__host_alloc,
    .free = sa__host_free,
    .upload = sa__host_copy,
    .download = sa__host_copy,
    .copy = sa__host_copy,
    .memset0 = sa__host_memset0,
    .sync = sa__host_sync,
    .matmul_bf16 = cpu_matmul_bf16,
    .matmul_q = cpu_matmul_q,
    .pack_q = cpu_pack_q,
    .quantize_q8 = cpu_quantize_q8,
    .rmsnorm = cpu_rmsnorm,
    .layernorm = cpu_layernorm,
    .rope = cpu_rope,
    .silu_mul = cpu_silu_mul,
    .gelu = cpu_gelu,
    .relu = cpu_relu,
    .add = cpu_add,
    .softmax = cpu_softmax,
    .embed = cpu_embed,
    .kv_write = cpu_kv_write,
    .attention = cpu_attention,
    .attention_dense = cpu_attention_dense,
    .conv1d = cpu_conv1d,
    .conv1d_ws_bytes = cpu_conv1d_ws_bytes,
    .destroy = cpu_destroy,
};

sa_backend_t *sa__backend_cpu_new(int threads) {
  if (threads < 0 || threads > 1024) {
    SA_LOG_ERROR("cpu backend: bad thread count %d", threads);
    return NULL;
  }
  if (threads == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    threads = n > 0 ? (int)(n > 1024 ? 1024 : n) : 1;
  }
  cpu_t *c = calloc(1, sizeof(*c));
  if (!c) {
    SA_LOG_ERROR("cpu backend: out of memory");
    return NULL;
  }
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  c->be.ops = &cpu_ops;
  c->be.impl = c;
  c->be.threads = threads;
  c->nt = threads;
  set_kern(c, isa_auto());
  const char *env = getenv("SA_CPU_ISA");
  if (env && *env && strcmp(env, "auto") != 0) {
    const sa__cpu_kern_t *k = isa_by_name(env);
    if (k && isa_supported(k))
      set_kern(c, k);
    else
      SA_LOG_WARN("SA_CPU_ISA=%s is %s here; using %s", env,
                  k ? "not supported" : "unknown", c->kern->name);
  }
  const char *sg = getenv("SA_CPU_SGEMM_MIN_M");
  if (sg && *sg) {
    long m = strtol(sg, NULL, 10);
    if (m > 0 && m < INT_MAX)
      c->sgemm_min_m = (int)m;
  }
  c->scratch_floats = SCRATCH_BYTES / sizeof(float);
  c->scratch = calloc((size_t)threads, sizeof(*c->scratch));
  c->th = calloc((size_t)threads, sizeof(*c->th));
  c->wargs = calloc((size_t)threads, sizeof(*c->wargs));
  if (!c->scratch || !c->th || !c->wargs)
    goto fail;
  for (int i = 0; i < threads; i++)
    if (!(c->scratch[i] = aligned_alloc(64, SCRATCH_BYTES)))
      goto fail;
  /* We parallelise over columns ourselves and call sgemm from every worker;
   * OpenBLAS' own threads would only fight ours. */
  openblas_set_num_threads(1);
  for (int i = 1; i < threads; i++) {
    c->wargs[i].c = c;
    c->wargs[i].tid = i;
    if (pthread_create(&c->th[c->n_started], NULL, worker_main, &c->wargs[i]))
      goto fail;
    c->n_started++;
  }
  SA_LOG_INFO("cpu backend: %d threads, %s kernels", threads, c->kern->name);
  return &c->be;
fail:
  SA_LOG_ERROR("cpu backend: out of memory or threads (%d threads)", threads);
  cpu_destroy(&c->be);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* CPU-only controls (kernels.h)                                             */

int sa_cpu_set_isa(sa_backend_t *be, const char *isa) {
  if (!be || be->ops != &cpu_ops || !isa)
    return SA_EINVAL;
  cpu_t *c = be->impl;
  if (strcmp(isa, "auto") == 0) {
    set_kern(c, isa_auto());
    return 0;
  }
  const sa__cpu_kern_t *k = isa_by_name(isa);
  if (!k)
    return SA_EINVAL;
  if (!isa_supported(k))
    return SA_EUNAVAIL;
  set_kern(c, k);
  return 0;
}

int sa_cpu_rounds_activations(const sa_backend_t *be) {
  return be && be->ops == &cpu_ops && ((const cpu_t *)be->impl)->kern->mm_dot != NULL;
}

const char *sa_cpu_isa(const sa_backend_t *be) {
  if (!be || be->ops != &cpu_ops)
    return "";
  return ((const cpu_t *)be->impl)->kern->name;
}

const char *sa_cpu_q_isa(const sa_backend_t *be) {
  if (!be || be->ops != &cpu_ops)
    return "";
  return ((const cpu_t *)be->impl)->mmq_name;
}

int sa_cpu_isa_supported(const char *isa) {
  const sa__cpu_kern_t *k = isa ? isa_by_name(isa) : NULL;
  return k && isa_supported(k);
}

int sa_cpu_set_sgemm_min_m(sa_backend_t *be, int m) {
  if (!be || be->ops != &cpu_ops || m < 0)
    return SA_EINVAL;
  ((cpu_t *)be->impl)->sgemm_min_m = m;
  return 0;
}

int sa_cpu_sgemm_min_m(const sa_backend_t *be) {
  if (!be || be->ops != &cpu_ops)
    return SA_EINVAL;
  return sgemm_min_m_of(be->impl);
}
