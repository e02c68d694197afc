/*
 * bf16_peak — the core's own bf16 compute limits for bench-gemm: vdpbf16ps
 * (AVX512-BF16), fp32 FMA (the avx512bf16-fma path's instruction) and
 * TDPBF16PS (AMX-BF16) issued back to back on register or
 * tile operands with independent accumulators, so nothing but the execution
 * units bounds them. Compiled with the BF16/AMX target flags; call only when
 * sa_cpu_isa_supported() says the CPU (and, for AMX, the kernel) allows it.
 * The tile configuration is left loaded (the same one cpu_amx.c loads).
 */
#include "bf16_peak.h"

#include "sa_bench.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* 24 independent accumulators updated by `op` n times over; flops per
 * instruction `per`. */
#define REG_PEAK(op, per)                                                      \
  do {                                                                         \
    __m512 acc[24];                                                            \
    for (int i = 0; i < 24; i++)                                               \
      acc[i] = _mm512_setzero_ps();                                            \
    __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(0.5f);                \
    const long n = 4000000;                                                    \
    double t0 = sa_bench_now();                                                \
    for (long it = 0; it < n; it++) {                                          \
      _Pragma("GCC unroll 24") for (int i = 0; i < 24; i++) acc[i] = op;       \
      __asm__ volatile("" : "+v"(a), "+v"(b));                                 \
    }                                                                          \
    double dt = sa_bench_now() - t0;                                           \
    float s = 0;                                                               \
    for (int i = 0; i < 24; i++)                                               \
      s += _mm512_reduce_add_ps(acc[i]);                                       \
    __asm__ volatile("" ::"x"(s));                                             \
    return (double)n * 24 * (per) / dt / 1e9;                                  \
  } while (0)

/* 32 products + 32 adds each */
double bf16_peak_dpbf16(void) {
  REG_PEAK(_mm512_dpbf16_ps(acc[i], (__m512bh)a, (__m512bh)b), 64);
}

/* 16 products + 16 adds each: what avx512bf16-fma's two FMAs per
 * vdpbf16ps can reach */
double bf16_peak_fma(void) { REG_PEAK(_mm512_fmadd_ps(a, b, acc[i]), 32); }

typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} __attribute__((packed)) tilecfg_t;

double bf16_peak_amx(void) {
  tilecfg_t c;
  memset(&c, 0, sizeof(c));
  c.palette = 1;
  for (int t = 0; t < 8; t++) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  static uint16_t ab[16 * 32] __attribute__((aligned(64)));
  for (int i = 0; i < 16 * 32; i++)
    ab[i] = 0x3f80;
  _tile_loadconfig(&c);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ab, 64);
  _tile_loadd(5, ab, 64);
  _tile_loadd(6, ab, 64);
  _tile_loadd(7, ab, 64);
  const long n = 200000;
  double t0 = sa_bench_now();
  for (long i = 0; i < n; i++) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  double dt = sa_bench_now() - t0;
  return (double)n * 4 * 16 * 16 * 32 * 2 / dt / 1e9;
}
