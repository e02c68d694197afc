/* Unit tests for core basics: error table, wire status mapping, dtypes and
 * bf16/fp16 conversion (checked against hand-derived IEEE bit patterns). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "log.h"
#include "sa_error.h"
#include "tensor.h"

static void test_errors(void **state) {
  (void)state;
  assert_string_equal(sa_strerror(SA_OK), "ok");
  assert_string_equal(sa_strerror(SA_ETIMEDOUT), "deadline exceeded");
  assert_string_equal(sa_err_name(SA_EFULL), "SA_EFULL");
  assert_int_equal(sa_err_to_status(SA_ETIMEDOUT), SA_STATUS_DEADLINE_EXCEEDED);
  assert_int_equal(sa_err_to_status(SA_EFULL), SA_STATUS_RESOURCE_EXHAUSTED);
  assert_int_equal(sa_err_to_status(SA_EUNAVAIL), SA_STATUS_UNAVAILABLE);
  assert_int_equal(sa_err_to_status(-9999), SA_STATUS_UNKNOWN);
  assert_int_equal(sa_status_to_err(SA_STATUS_CANCELLED), SA_ECANCELED);
  assert_int_equal(sa_status_to_err(SA_STATUS_OK), SA_OK);
  assert_string_equal(sa_status_name(SA_STATUS_UNAVAILABLE), "UNAVAILABLE");
  assert_string_equal(sa_status_name((sa_status_t)99), "UNKNOWN");
  /* every code round-trips through a wire status to an error of the same status */
#define CHECK_RT(name, val, msg, st)                                           \
  assert_int_equal(sa_err_to_status(sa_status_to_err(st)), st);
  SA_ERRNO_MAP(CHECK_RT)
#undef CHECK_RT
}

static void test_dtypes(void **state) {
  (void)state;
  sa_dtype_t dt;
  assert_int_equal(sa_dtype_parse("BF16", &dt), 0);
  assert_int_equal(dt, SA_DTYPE_BF16);
  assert_int_equal(sa_dtype_parse("f32", &dt), 0);
  assert_int_equal(dt, SA_DTYPE_F32);
  assert_int_equal(sa_dtype_parse("Q4_K", &dt), SA_EINVAL);
  assert_int_equal(sa_dtype_size(SA_DTYPE_BF16), 2);
  assert_int_equal(sa_dtype_size((sa_dtype_t)42), 0);
  sa_tensor_desc_t d = {.dtype = SA_DTYPE_BF16, .ndim = 2, .shape = {3, 5}};
  size_t n;
  assert_int_equal(sa_tensor_desc_nbytes(&d, &n), 0);
  assert_int_equal(n, 30);
  char buf[64];
  assert_string_equal(sa_tensor_desc_str(&d, buf, sizeof buf), "bf16[3,5]");
  d.shape[0] = -1;
  assert_int_equal(sa_tensor_desc_nbytes(&d, &n), SA_EINVAL);
  d.shape[0] = INT64_MAX / 2;
  d.shape[1] = INT64_MAX / 2;
  assert_int_equal(sa_tensor_desc_nbytes(&d, &n), SA_EINVAL);
  d.ndim = 9;
  assert_int_equal(sa_tensor_desc_nbytes(&d, &n), SA_EINVAL);
}

static uint32_t bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static void test_bf16(void **state) {
  (void)state;
  assert_int_equal(sa_f32_to_bf16(1.0f), 0x3f80);
  assert_int_equal(sa_f32_to_bf16(-2.0f), 0xc000);
  /* 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to even */
  assert_int_equal(sa_f32_to_bf16(1.00390625f), 0x3f80);
  /* 1 + 3*2^-8 is halfway between 1.0078125 (odd) and 1.015625: up to even */
  assert_int_equal(sa_f32_to_bf16(1.01171875f), 0x3f82);
  assert_int_equal(sa_f32_to_bf16(INFINITY), 0x7f80);
  assert_true(isnan(sa_bf16_to_f32(sa_f32_to_bf16(NAN))));
  assert_int_equal(bits(sa_bf16_to_f32(0x3f80)), 0x3f800000u);
  /* largest finite float rounds to inf in bf16 */
  assert_int_equal(sa_f32_to_bf16(3.4028235e38f), 0x7f80);
}

static void test_f16(void **state) {
  (void)state;
  assert_int_equal(sa_f32_to_f16(1.0f), 0x3c00);
  assert_int_equal(sa_f32_to_f16(-2.0f), 0xc000);
  assert_int_equal(sa_f32_to_f16(65504.0f), 0x7bff);
  assert_int_equal(sa_f32_to_f16(65520.0f), 0x7c00);   /* rounds to inf */
  assert_int_equal(sa_f32_to_f16(5.9604645e-8f), 0x0001); /* smallest subnormal */
  assert_int_equal(sa_f32_to_f16(2.0e-8f), 0x0000);
  assert_int_equal(sa_f32_to_f16(6.1035156e-5f), 0x0400); /* smallest normal */
  assert_true(sa_f16_to_f32(0x0001) == 5.9604645e-8f);
  assert_true(sa_f16_to_f32(0x7bff) == 65504.0f);
  assert_true(isinf(sa_f16_to_f32(0xfc00)) && sa_f16_to_f32(0xfc00) < 0);
  assert_true(isnan(sa_f16_to_f32(0x7e00)));
  /* every finite half round-trips exactly through f32 */
  for (uint32_t h = 0; h < 0x10000u; h++) {
    if ((h & 0x7c00u) == 0x7c00u)
      continue;
    assert_int_equal(sa_f32_to_f16(sa_f16_to_f32((uint16_t)h)), h);
  }
  float src[3] = {0.5f, -0.25f, 3.0f}, dst[3];
  uint16_t h[3];
  sa_f32_to_f16_n(h, src, 3);
  assert_int_equal(sa_to_f32_n(dst, h, SA_DTYPE_F16, 3), 0);
  assert_memory_equal(src, dst, sizeof src);
  assert_int_equal(sa_to_f32_n(dst, h, SA_DTYPE_I32, 3), SA_EINVAL);
}

static void test_log_levels(void **state) {
  (void)state;
  sa_log_level_t lv;
  assert_int_equal(sa_log_parse_level("debug", &lv), 0);
  assert_int_equal(lv, SA_LOG_LEVEL_DEBUG);
  assert_int_equal(sa_log_parse_level("loud", &lv), SA_EINVAL);
  sa_log_set_json(true);
  SA_LOG_ERROR("json line with \"quotes\" and \\ backslash (expected in test output)");
  sa_log_set_json(false);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_errors),  cmocka_unit_test(test_dtypes),
      cmocka_unit_test(test_bf16),    cmocka_unit_test(test_f16),
      cmocka_unit_test(test_log_levels),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
