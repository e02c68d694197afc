/* test_npy — .npy writer bytes against NumPy's own header layout, round
 * trips, and refusal of files we do not read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "npy.h"
#include "sa_error.h"

static char g_path[128];

static size_t slurp(const char *path, unsigned char *buf, size_t cap) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  size_t n = fread(buf, 1, cap, f);
  fclose(f);
  return n;
}

static void test_header_matches_numpy(void **state) {
  (void)state;
  snprintf(g_path, sizeof g_path, "/tmp/sa_test_npy_%d.npy", (int)getpid());
  float v[6] = {1, 2, 3, 4, 5, -6.5f};
  int64_t shape[2] = {2, 3};
  assert_int_equal(sa_npy_write_f32(g_path, v, 2, shape), 0);
  unsigned char buf[256];
  size_t n = slurp(g_path, buf, sizeof buf);
  /* numpy.save(np.zeros((2,3), np.float32)): 128-byte header */
  const char *want = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  assert_int_equal(n, 128 + sizeof v);
  assert_memory_equal(buf, "\x93NUMPY\x01\x00\x76\x00", 10);
  assert_memory_equal(buf + 10, want, strlen(want));
  for (size_t i = 10 + strlen(want); i < 127; i++)
    assert_int_equal(buf[i], ' ');
  assert_int_equal(buf[127], '\n');
  assert_memory_equal(buf + 128, v, sizeof v);

  sa_tensor_desc_t d;
  void *data = NULL;
  assert_int_equal(sa_npy_read(g_path, &d, &data, NULL, 0), 0);
  assert_int_equal(d.dtype, SA_DTYPE_F32);
  assert_int_equal(d.ndim, 2);
  assert_int_equal(d.shape[0], 2);
  assert_int_equal(d.shape[1], 3);
  assert_memory_equal(data, v, sizeof v);
  free(data);

  /* 1-D int32 and 0-D */
  int32_t iv[5] = {1, -2, 3, 4, 5};
  sa_tensor_desc_t di = {.dtype = SA_DTYPE_I32, .ndim = 1, .shape = {5}};
  assert_int_equal(sa_npy_write(g_path, &di, iv), 0);
  n = slurp(g_path, buf, sizeof buf);
  const char *want1 = "{'descr': '<i4', 'fortran_order': False, 'shape': (5,), }";
  assert_memory_equal(buf + 10, want1, strlen(want1));
  assert_int_equal(sa_npy_read(g_path, &d, &data, NULL, 0), 0);
  assert_int_equal(d.ndim, 1);
  assert_memory_equal(data, iv, sizeof iv);
  free(data);
  sa_tensor_desc_t bad = {.dtype = SA_DTYPE_BF16, .ndim = 1, .shape = {1}};
  assert_int_equal(sa_npy_write(g_path, &bad, iv), SA_EINVAL);
}

static void test_bad_files(void **state) {
  (void)state;
  char err[256];
  sa_tensor_desc_t d;
  void *data = (void *)1;
  assert_int_equal(sa_npy_read("/nonexistent.npy", &d, &data, err, sizeof err),
                   SA_ENOENT);
  assert_null(data);
  static const char *bodies[] = {
      "not numpy at all",
      "\x93NUMPY\x01\x00\x40\x00{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
      "\x93NUMPY\x01\x00\x40\x00{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }",
      "\x93NUMPY\x01\x00\x40\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n",
      "\x93NUMPY\x01\x00\xff\x7f{",
  };
  for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
    FILE *f = fopen(g_path, "wb");
    fwrite(bodies[i], 1, strlen(bodies[i]), f);
    fclose(f);
    assert_int_equal(sa_npy_read(g_path, &d, &data, err, sizeof err),
                     SA_EFORMAT);
  }
  unlink(g_path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_header_matches_numpy),
      cmocka_unit_test(test_bad_files),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
