/*
 * bench-gemm — bf16-weight GEMV/GEMM (and the Q8_0 / Q4_0 decode GEMV) of
 * the CPU backend against the
 * machine's own limits: measured memory bandwidth for the decode GEMV (M = 1,
 * which must stream W at a large fraction of it) and OpenBLAS sgemm peak for
 * the prefill GEMM. Prints medians.
 *
 * GEMV weights rotate through enough copies (>= the bandwidth buffer) that W
 * is read from DRAM as in real decode, where a layer's weights are long gone
 * from the cache by the time the next step reaches it.
 */
#include "bf16_peak.h"
#include "kernels.h"
#include "sa_bench.h"
#include "tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench-gemm [--threads N] [--reps N] [--isa NAME] [--quick] [--shape MxNxK]\n"
          "                  [--formats LIST]\n"
          "  Prints measured memory bandwidth, OpenBLAS sgemm peak, one core's\n"
          "  vdpbf16ps and AMX bf16 peaks (where the CPU has them), the CPU\n"
          "  backend's bf16 GEMV GB/s at M=1 for Qwen2.5-0.5B's shapes (896x896,\n"
          "  1152x896, 9728x896, 896x4864, 151936x896; fraction of read\n"
          "  bandwidth) and GEMM GFLOP/s at\n"
          "  M=16,32,128,512 on 4864x896 (fraction of sgemm peak), both for the\n"
          "  streaming kernel and the sgemm path. Medians of --reps runs.\n"
          "  --threads N  worker threads (default 0 = online CPUs)\n"
          "  --reps N     samples per figure (default 21)\n"
          "  --isa NAME   scalar|avx2|avx512|avx512bf16|avx512bf16-fma|amx|auto\n"
          "               (default auto)\n"
          "  --quick      smaller bandwidth buffer and fewer sgemm sizes\n"
          "  --formats LIST  quantized GEMV formats beside bf16: q8_0,q4_0 (default\n"
          "               both; \"none\" for bf16 only). Quantized figures are\n"
          "               bytes of q and scales read, and time against bf16's\n"
          "  --shape MxNxK  only the GEMM of this shape (e.g. 512x4096x14336)\n");
}

/* The weight formats of the GEMV table. */
enum { FMT_BF16, FMT_Q8_0, FMT_Q4_0, N_FMT };
static const char *fmt_name[N_FMT] = {"bf16", "q8_0", "q4_0"};

/* Bytes of W[N, K] in a format (quantized: the q part and the fp16 scales). */
static size_t w_bytes(int fmt, int N, int K) {
  if (fmt == FMT_BF16)
    return (size_t)N * K * 2;
  return sa_wq_bytes(fmt == FMT_Q8_0 ? SA_WQ_Q8_0 : SA_WQ_Q4_0, N, K) + (size_t)N * (K / 32) * 2;
}

/* Median seconds of one decode GEMV (M = 1) in a format; quantized formats
 * include making x's q8 blocks, as decode does once per input. */
static double gemv_s(sa_backend_t *be, int fmt, int N, int K, size_t rot_bytes, int reps,
                     const float *x, float *y, int8_t *xq, float *xd) {
  size_t wb = w_bytes(fmt, N, K);
  int copies = (int)((rot_bytes + wb - 1) / wb);
  if (copies < 1)
    copies = 1;
  if (copies > 512)
    copies = 512;
  uint8_t *w = be->ops->alloc(be, wb * copies);
  if (!w)
    return -1;
  for (size_t i = 0; i < wb * copies; i++) /* bf16 / fp16 values in [0.5, 1) */
    w[i] = (i & 1) ? 0x38 : (uint8_t)(i * 2654435761u >> 24);
  double *t = malloc(sizeof(double) * reps);
  int c = 0;
  size_t q_off = fmt == FMT_BF16 ? wb : wb - (size_t)N * (K / 32) * 2;
  const int stored = fmt == FMT_Q8_0 ? SA_WQ_Q8_0 : SA_WQ_Q4_0;
  int wtype = stored;
  for (int i = 0; i < copies && fmt != FMT_BF16; i++) /* in the layout decode reads */
    wtype = sa_op_pack_q(be, stored, w + wb * i, (uint16_t *)(w + wb * i + q_off), N, K);
  if (wtype < 0) {
    free(t);
    be->ops->free(be, w);
    return -1;
  }
  for (int r = -copies; r < reps; r++) { /* first pass warms the pool */
    const uint8_t *wc = w + wb * c;
    c = (c + 1) % copies;
    double t0 = sa_bench_now();
    if (fmt == FMT_BF16) {
      sa_op_matmul_bf16(be, y, x, (const uint16_t *)wc, NULL, 1, N, K, 0);
    } else {
      sa_op_quantize_q8(be, xq, xd, x, 1, K);
      sa_op_matmul_q(be, y, xq, xd, wtype, wc, (const uint16_t *)(wc + q_off), NULL, 1, N, K,
                     0);
    }
    double dt = sa_bench_now() - t0;
    if (r >= 0)
      t[r] = dt;
  }
  double med = sa_bench_median(t, reps);
  free(t);
  be->ops->free(be, w);
  return med;
}

static double gemm_gflops(sa_backend_t *be, int M, int N, int K, int reps,
                          const float *x, float *y, const uint16_t *w) {
  double *t = malloc(sizeof(double) * reps);
  sa_op_matmul_bf16(be, y, x, w, NULL, M, N, K, 0);
  for (int r = 0; r < reps; r++) {
    double t0 = sa_bench_now();
    sa_op_matmul_bf16(be, y, x, w, NULL, M, N, K, 0);
    t[r] = sa_bench_now() - t0;
  }
  double med = sa_bench_median(t, reps);
  free(t);
  return 2.0 * M * N * (double)K / med / 1e9;
}

int main(int argc, char **argv) {
  int threads = 0, reps = 21, quick = 0;
  int sM = 0, sN = 0, sK = 0;
  const char *isa = "auto";
  int fmt_on[N_FMT] = {1, 1, 1};
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--isa") && i + 1 < argc) {
      isa = argv[++i];
    } else if (!strcmp(argv[i], "--formats") && i + 1 < argc) {
      const char *f = argv[++i];
      for (int k = 1; k < N_FMT; k++)
        fmt_on[k] = strstr(f, fmt_name[k]) != NULL;
    } else if (!strcmp(argv[i], "--quick")) {
      quick = 1;
    } else if (!strcmp(argv[i], "--shape") && i + 1 < argc) {
      if (sscanf(argv[++i], "%dx%dx%d", &sM, &sN, &sK) != 3 || sM < 1 || sN < 1 ||
          sK < 1 || (double)sM * sK > 1e9 || (double)sN * sK > 1e9) {
        fprintf(stderr, "bench-gemm: --shape wants MxNxK, e.g. 512x4096x14336\n");
        return 2;
      }
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (threads <= 0)
    threads = sa_bench_cpus();
  if (reps < 1)
    reps = 1;

  if (sM) { /* one shape, the GEMM figure only */
    sa_backend_t *be = sa_backend_new("cpu", threads);
    if (!be || sa_cpu_set_isa(be, isa)) {
      fprintf(stderr, "bench-gemm: cannot create cpu backend with isa %s\n", isa);
      sa_backend_destroy(&be);
      return 1;
    }
    float *x = be->ops->alloc(be, sizeof(float) * sM * sK);
    float *y = be->ops->alloc(be, sizeof(float) * sM * sN);
    uint16_t *w = be->ops->alloc(be, (size_t)sN * sK * 2);
    if (!x || !y || !w) {
      fprintf(stderr, "bench-gemm: out of memory\n");
      return 1;
    }
    for (size_t i = 0; i < (size_t)sM * sK; i++)
      x[i] = (float)(i % 97) * 0.01f - 0.5f;
    for (size_t i = 0; i < (size_t)sN * sK; i++)
      w[i] = sa_f32_to_bf16((float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f);
    printf("GEMM M=%d N=%d K=%d, %s, %d threads: %.1f GFLOP/s\n", sM, sN, sK,
           sa_cpu_isa(be), be->threads, gemm_gflops(be, sM, sN, sK, reps, x, y, w));
    be->ops->free(be, x), be->ops->free(be, y), be->ops->free(be, w);
    sa_backend_destroy(&be);
    return 0;
  }
  sa_bench_bw_t bw;
  if (sa_bench_mem_bandwidth(threads, quick ? (size_t)128 << 20 : 0, 0, &bw)) {
    fprintf(stderr, "bench-gemm: out of memory measuring bandwidth\n");
    return 1;
  }
  double peak = sa_bench_sgemm_peak(threads);
  printf("machine: %d threads, LLC %zu MiB\n", threads, sa_bench_llc_bytes() >> 20);
  printf("memory bandwidth (%zu MiB buffer, %d threads): read %.1f GB/s (%s; a plain loop "
         "%.1f), copy %.1f GB/s\n", bw.bytes >> 20, bw.threads, bw.read_gbs, bw.read_how,
         bw.read_plain_gbs, bw.copy_gbs);
  printf("OpenBLAS sgemm peak (%d threads): %.1f GFLOP/s\n", threads, peak);
  /* one core's bf16 limits: what the amx and avx512bf16 kernels can reach */
  if (sa_cpu_isa_supported("avx512bf16")) {
    printf("vdpbf16ps peak (1 core, registers only): %.1f GFLOP/s\n", bf16_peak_dpbf16());
    printf("fp32 FMA peak (1 core, registers only; avx512bf16-fma): %.1f GFLOP/s\n",
           bf16_peak_fma());
  }
  if (sa_cpu_isa_supported("amx"))
    printf("AMX TDPBF16PS peak (1 core, tiles only): %.1f GFLOP/s\n", bf16_peak_amx());

  sa_backend_t *be = sa_backend_new("cpu", threads); /* sets OpenBLAS to 1 */
  if (!be || sa_cpu_set_isa(be, isa)) {
    fprintf(stderr, "bench-gemm: cannot create cpu backend with isa %s\n", isa);
    sa_backend_destroy(&be);
    return 1;
  }
  printf("backend: cpu, %d threads, %s kernels\n\n", be->threads, sa_cpu_isa(be));

  const int K = 896;
  float *x = be->ops->alloc(be, sizeof(float) * 512 * 4864);
  float *y = be->ops->alloc(be, sizeof(float) * 512 * 151936);
  for (int i = 0; i < 512 * 4864; i++)
    x[i] = (float)(i % 97) * 0.01f - 0.5f;

  printf("GEMV M=1 (fp32 x/y; W streamed from DRAM; quantized: %s, x's q8 blocks included)\n",
         sa_cpu_q_isa(be));
  printf("  %-14s %-5s %10s %10s %10s %8s\n", "N x K", "W", "us", "GB/s", "of read bw",
         "x bf16");
  /* Qwen2.5-0.5B's shapes: o_proj, qkv, gate_up, down, LM head */
  static const int gemv_nk[][2] = {{896, 896}, {1152, 896}, {9728, 896}, {896, 4864},
                                   {151936, 896}};
  int8_t *xq = be->ops->alloc(be, 4864);
  float *xd = be->ops->alloc(be, sizeof(float) * 4864 / 32);
  for (int i = 0; i < 5; i++) {
    int gn = gemv_nk[i][0], gk = gemv_nk[i][1];
    double t_bf16 = 0;
    for (int f = 0; f < N_FMT; f++) {
      if (f != FMT_BF16 && !fmt_on[f])
        continue;
      double t = gemv_s(be, f, gn, gk, bw.bytes, reps, x, y, xq, xd);
      double gbs = (double)w_bytes(f, gn, gk) / t / 1e9;
      if (f == FMT_BF16)
        t_bf16 = t;
      printf("  %6d x %-5d %-5s %10.1f %10.1f %9.0f %% %7.2fx\n", gn, gk, fmt_name[f], t * 1e6,
             gbs, 100.0 * gbs / bw.read_gbs, t_bf16 / t);
    }
  }
  be->ops->free(be, xq);
  be->ops->free(be, xd);

  const int N = 4864;
  uint16_t *w = be->ops->alloc(be, (size_t)N * K * 2);
  for (size_t i = 0; i < (size_t)N * K; i++)
    w[i] = sa_f32_to_bf16((float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f);
  printf("\nGEMM N=%d K=%d (GFLOP/s; fraction of sgemm peak)\n", N, K);
  printf("  %-5s %16s %16s   %s\n", "M", "stream kernel", "sgemm path", "default");
  int def_min_m = sa_cpu_sgemm_min_m(be);
  static const int gemm_m[] = {1, 4, 8, 16, 32, 64, 128, 512};
  for (int i = 0; i < 8; i++) {
    int M = gemm_m[i];
    int r = M >= 128 ? (reps + 3) / 4 : reps;
    sa_cpu_set_sgemm_min_m(be, 1 << 30);
    double gs = gemm_gflops(be, M, N, K, r, x, y, w);
    sa_cpu_set_sgemm_min_m(be, 1);
    double gb = gemm_gflops(be, M, N, K, r, x, y, w);
    printf("  %-5d %8.1f (%3.0f%%) %8.1f (%3.0f%%)   %s\n", M, gs,
           100 * gs / peak, gb, 100 * gb / peak, M >= def_min_m ? "sgemm" : "stream");
  }
  sa_cpu_set_sgemm_min_m(be, 0);
  be->ops->free(be, w);
  be->ops->free(be, x);
  be->ops->free(be, y);
  sa_backend_destroy(&be);
  return 0;
}
