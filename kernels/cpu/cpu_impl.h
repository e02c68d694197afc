/* cpu_impl — private to kernels/cpu: the per-ISA kernel table.
 *
 * cpu.c picks one table at run time (__builtin_cpu_supports, or
 * sa_cpu_set_isa). The scalar table is always present; the others live in
 * files compiled with their -m flags and may only be called on a CPU that
 * supports them. Not a public header. */
#ifndef SA_CPU_IMPL_H
#define SA_CPU_IMPL_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  const char *name;
  /* Small-M matmul over output columns [n0, n1): for m < M, n0 <= n < n1,
   * y[m*N + n] = sum_k x[m*K + k] * bf16(w[n*K + k]) (+ bias[n]) (+ y old).
   * Streams the W rows once; fp32 accumulate. M is small (<= ~32). */
  void (*mm_small)(float *y, const float *x, const uint16_t *w,
                   const uint16_t *bias, int M, int N, int K, int n0, int n1,
                   int accumulate);
  /* sum a[i] * b[i] over n floats (fp32 accumulate). */
  float (*dot)(const float *a, const float *b, int n);
  /* y[i] = y[i] * c + a * x[i] over n floats. */
  void (*scale_axpy)(float *y, float c, float a, const float *x, int n);
  /* dst[i] = bf16 src[i] widened to fp32 (exact). */
  void (*bf16_to_f32)(float *dst, const uint16_t *src, size_t n);
} sa__cpu_kern_t;

extern const sa__cpu_kern_t sa__cpu_kern_scalar;
extern const sa__cpu_kern_t sa__cpu_kern_avx2;
extern const sa__cpu_kern_t sa__cpu_kern_avx512;
extern const sa__cpu_kern_t sa__cpu_kern_avx512bf16;

/* Shared by the AVX-512 files. */
void sa__cpu_mm_small_avx512(float *y, const float *x, const uint16_t *w,
                             const uint16_t *bias, int M, int N, int K, int n0,
                             int n1, int accumulate);
float sa__cpu_dot_avx512(const float *a, const float *b, int n);
void sa__cpu_scale_axpy_avx512(float *y, float c, float a, const float *x,
                               int n);
void sa__cpu_bf16_to_f32_avx512(float *dst, const uint16_t *src, size_t n);

#endif
