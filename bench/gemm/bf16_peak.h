/* bf16_peak — the core's bf16 compute limits (bf16_peak.c), GFLOP/s on the
 * calling thread. Only when sa_cpu_isa_supported("avx512bf16") / ("amx"). */
#ifndef SA_BF16_PEAK_H
#define SA_BF16_PEAK_H

double bf16_peak_dpbf16(void);
double bf16_peak_fma(void);
double bf16_peak_amx(void);

#endif
