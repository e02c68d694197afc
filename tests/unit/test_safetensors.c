/* Unit tests for core/safetensors: a write -> open round trip checked byte
 * for byte and against an independent cJSON read of the header; a hand-built
 * file in HF's layout; every kind of bad file (each error must name the file
 * and the tensor); sa_st_get's missing / wrong-shape errors; a 2-shard
 * checkpoint with an index where a layer-range filter maps only one shard;
 * and every truncation of a valid file. Files are built in a temp dir. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sa_error.h"
#include "safetensors.h"
#include "tensor.h"

typedef struct {
  char dir[64];
} fx_t;

static int fx_setup(void **state) {
  fx_t *fx = calloc(1, sizeof *fx);
  snprintf(fx->dir, sizeof fx->dir, "/tmp/sa_st_test_XXXXXX");
  if (!mkdtemp(fx->dir))
    return -1;
  *state = fx;
  return 0;
}

static int fx_teardown(void **state) {
  fx_t *fx = *state;
  DIR *d = opendir(fx->dir);
  if (d) {
    struct dirent *e;
    char p[512];
    while ((e = readdir(d))) {
      if (e->d_name[0] == '.')
        continue;
      snprintf(p, sizeof p, "%s/%s", fx->dir, e->d_name);
      unlink(p);
    }
    closedir(d);
  }
  rmdir(fx->dir);
  free(fx);
  return 0;
}

static char *fx_path(const fx_t *fx, const char *name, char *buf, size_t cap) {
  snprintf(buf, cap, "%s/%s", fx->dir, name);
  return buf;
}

static void write_bytes(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  if (n)
    assert_int_equal(fwrite(p, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

/* Writes a file whose length prefix is `hlen` (not necessarily the header's
 * real length), then the header text and `data_len` bytes of data. */
static void write_st_raw(const char *path, uint64_t hlen, const char *header,
                         size_t data_len) {
  size_t h = strlen(header);
  size_t n = 8 + h + data_len;
  uint8_t *buf = calloc(1, n);
  for (int i = 0; i < 8; i++)
    buf[i] = (uint8_t)(hlen >> (8 * i));
  memcpy(buf + 8, header, h);
  for (size_t i = 0; i < data_len; i++)
    buf[8 + h + i] = (uint8_t)(i * 7 + 1);
  write_bytes(path, buf, n);
  free(buf);
}

static uint8_t *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = malloc((size_t)n + 1);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static void assert_contains(const char *hay, const char *needle) {
  if (!strstr(hay, needle)) {
    print_error("expected \"%s\" in message \"%s\"\n", needle, hay);
    fail();
  }
}

/* --- round trip ------------------------------------------------------------ */

static void test_round_trip(void **state) {
  fx_t *fx = *state;
  char path[256];
  fx_path(fx, "rt.safetensors", path, sizeof path);

  uint16_t bf[15];
  for (int i = 0; i < 15; i++)
    bf[i] = sa_f32_to_bf16((float)i * 0.25f - 1.0f);
  float f32[4] = {1.5f, -2.0f, 3.25f, 1e-20f};
  uint16_t f16[4] = {0x3c00, 0xc000, 0x7bff, 0x0001};
  int64_t i64[3] = {-1, INT64_MAX, 42};
  int32_t i32[2] = {7, -7};
  uint8_t u8 = 200;
  int8_t i8[3] = {-128, 0, 127};
  double f64[1] = {3.141592653589793};
  /* Given out of name order on purpose; one scalar, one empty tensor. */
  sa_st_tensor_t in[] = {
      {.name = "model.layers.0.w", .desc = {SA_DTYPE_BF16, 2, {3, 5}}, .data = bf},
      {.name = "a.f32", .desc = {SA_DTYPE_F32, 1, {4}}, .data = f32, .nbytes = 16},
      {.name = "c.f16", .desc = {SA_DTYPE_F16, 2, {2, 2}}, .data = f16},
      {.name = "b.i64", .desc = {SA_DTYPE_I64, 1, {3}}, .data = i64},
      {.name = "e.empty", .desc = {SA_DTYPE_F32, 2, {0, 4}}, .data = NULL},
      {.name = "d.scalar_u8", .desc = {SA_DTYPE_U8, 0, {0}}, .data = &u8},
      {.name = "f.i32", .desc = {SA_DTYPE_I32, 1, {2}}, .data = i32},
      {.name = "g.i8", .desc = {SA_DTYPE_I8, 1, {3}}, .data = i8},
      {.name = "h.f64", .desc = {SA_DTYPE_F64, 1, {1}}, .data = f64},
      {.name = "name \"quoted\"\\", .desc = {SA_DTYPE_U8, 1, {1}}, .data = &u8},
  };
  const size_t n = sizeof in / sizeof in[0];
  char err[512] = "";
  assert_int_equal(sa_st_write(path, in, n, err, sizeof err), 0);

  /* Independent look at the bytes: length prefix, 8-byte padding with
   * spaces, keys in name order, contiguous offsets, data where they say. */
  size_t flen;
  uint8_t *file = read_file(path, &flen);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--)
    hlen = (hlen << 8) | file[i];
  assert_true(8 + hlen <= flen);
  assert_int_equal(hlen % 8, 0);
  char *hdr = calloc(1, hlen + 1);
  memcpy(hdr, file + 8, hlen);
  size_t tl = strlen(hdr);
  assert_int_equal(tl, hlen); /* no NULs inside */
  cJSON *root = cJSON_Parse(hdr);
  assert_non_null(root);
  const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
  assert_non_null(meta);
  assert_ptr_equal(root->child, meta); /* metadata first, as HF writes it */
  const char *prev = "";
  uint64_t expect_begin = 0;
  size_t count = 0;
  for (const cJSON *e = meta->next; e; e = e->next, count++) {
    assert_true(strcmp(prev, e->string) < 0);
    prev = e->string;
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t b = (uint64_t)cJSON_GetArrayItem(off, 0)->valuedouble;
    uint64_t en = (uint64_t)cJSON_GetArrayItem(off, 1)->valuedouble;
    assert_int_equal(b, expect_begin);
    expect_begin = en;
    for (size_t i = 0; i < n; i++) {
      if (strcmp(in[i].name, e->string) != 0)
        continue;
      size_t want;
      assert_int_equal(sa_tensor_desc_nbytes(&in[i].desc, &want), 0);
      assert_int_equal(en - b, want);
      if (want)
        assert_memory_equal(file + 8 + hlen + b, in[i].data, want);
    }
  }
  assert_int_equal(count, n);
  assert_int_equal(8 + hlen + expect_begin, flen);
  cJSON_Delete(root);
  free(hdr);
  free(file);

  /* Our reader gives back the same descriptors and bytes. */
  sa_st_t *st = NULL;
  assert_int_equal(sa_st_open(path, NULL, NULL, &st, err, sizeof err), 0);
  assert_int_equal(sa_st_count(st), n);
  assert_int_equal(sa_st_num_files(st), 1);
  for (size_t i = 0; i < n; i++) {
    const sa_st_tensor_t *t = sa_st_find(st, in[i].name);
    assert_non_null(t);
    assert_string_equal(t->name, in[i].name);
    assert_string_equal(t->file, path);
    assert_int_equal(t->desc.dtype, in[i].desc.dtype);
    assert_int_equal(t->desc.ndim, in[i].desc.ndim);
    for (int d = 0; d < t->desc.ndim; d++)
      assert_int_equal(t->desc.shape[d], in[i].desc.shape[d]);
    size_t want;
    sa_tensor_desc_nbytes(&in[i].desc, &want);
    assert_int_equal(t->nbytes, want);
    if (want)
      assert_memory_equal(t->data, in[i].data, want);
  }
  for (size_t i = 1; i < n; i++)
    assert_true(strcmp(sa_st_at(st, i - 1)->name, sa_st_at(st, i)->name) < 0);
  assert_null(sa_st_at(st, n));
  /* bf16 values decode to what was written */
  const sa_st_tensor_t *w = sa_st_find(st, "model.layers.0.w");
  float back[15];
  assert_int_equal(sa_to_f32_n(back, w->data, SA_DTYPE_BF16, 15), 0);
  for (int i = 0; i < 15; i++)
    assert_true(back[i] == (float)i * 0.25f - 1.0f);
  assert_null(sa_st_find(st, "absent"));
  assert_null(sa_st_find(st, ""));
  sa_st_close(&st);
  assert_null(st);
  sa_st_close(&st); /* no-op */
}

/* A file laid out by hand exactly as HF's writer does: header padded with
 * spaces to 8 bytes, __metadata__, little-endian data. */
static void test_hand_built_file(void **state) {
  fx_t *fx = *state;
  char path[256];
  fx_path(fx, "hf.safetensors", path, sizeof path);
  const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":"
                    "\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}   ";
  assert_int_equal(strlen(hdr), 88); /* 85 + 3 spaces of padding */
  uint8_t buf[8 + 88 + 8] = {88, 0, 0, 0, 0, 0, 0, 0};
  memcpy(buf + 8, hdr, 88);
  const uint8_t data[8] = {0x00, 0x00, 0x80, 0x3f,  /* 1.0f */
                           0x00, 0x00, 0x20, 0xc0}; /* -2.5f */
  memcpy(buf + 96, data, 8);
  write_bytes(path, buf, sizeof buf);

  sa_st_t *st = NULL;
  char err[256] = "";
  assert_int_equal(sa_st_open(path, NULL, NULL, &st, err, sizeof err), 0);
  const sa_st_tensor_t *t = NULL;
  int64_t shape[1] = {2};
  assert_int_equal(sa_st_get(st, "a", SA_DTYPE_F32, 1, shape, &t, err,
                             sizeof err), 0);
  float v[2];
  memcpy(v, t->data, 8);
  assert_true(v[0] == 1.0f && v[1] == -2.5f);
  assert_int_equal((uintptr_t)t->data % 8, 0); /* data starts 8-aligned */

  /* Our writer produces these exact bytes for the same tensor. */
  char path2[256];
  fx_path(fx, "ours.safetensors", path2, sizeof path2);
  sa_st_tensor_t in = {.name = "a", .desc = {SA_DTYPE_F32, 1, {2}},
                       .data = data};
  assert_int_equal(sa_st_write(path2, &in, 1, err, sizeof err), 0);
  size_t len;
  uint8_t *ours = read_file(path2, &len);
  assert_int_equal(len, sizeof buf);
  assert_memory_equal(ours, buf, sizeof buf);
  free(ours);
  sa_st_close(&st);
}

/* --- bad files ------------------------------------------------------------- */

typedef struct {
  const char *what;
  const char *header;  /* NULL: use raw */
  uint64_t hlen;       /* 0: strlen(header) */
  size_t data_len;
  const char *needle1; /* must appear in the message */
  const char *needle2; /* the tensor name, or NULL */
} bad_case_t;

static void test_bad_files(void **state) {
  fx_t *fx = *state;
  const bad_case_t cases[] = {
      {"header length past end", "{}", 1000, 0, "past the end", NULL},
      {"absurd header length", "{}", (uint64_t)1 << 62, 0, "limit", NULL},
      {"header not JSON", "{\"w\": {\"dtype\": ", 0, 4, "not a JSON", NULL},
      {"header is an array", "[1, 2]", 0, 0, "not a JSON object", NULL},
      {"garbage after JSON", "{}  xx", 0, 0, "garbage", NULL},
      {"offsets out of range",
       "{\"w1\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 4,
       "out of range", "'w1'"},
      {"end before begin",
       "{\"w2\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 0, 8,
       "end 0 < begin 8", "'w2'"},
      {"overlapping offsets",
       "{\"ov_a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"ov_b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
       0, 12, "overlap", "'ov_a'"},
      {"overlap hidden behind an empty tensor",
       "{\"x_a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
       "\"x_z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[6,6]},"
       "\"x_b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
       0, 16, "overlap", "'x_b'"},
      {"bytes disagree with shape",
       "{\"w3\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, 8,
       "f32[3] needs 12", "'w3'"},
      {"bf16 bytes disagree",
       "{\"w3b\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
       0, 16, "needs 8", "'w3b'"},
      {"unknown dtype",
       "{\"w4\":{\"dtype\":\"Q4_K\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8,
       "unknown dtype \"Q4_K\"", "'w4'"},
      {"unsupported dtype BOOL",
       "{\"w5\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[0,2]}}", 0, 2,
       "unknown dtype", "'w5'"},
      {"negative dim",
       "{\"w6\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, 0,
       "shape[0]", "'w6'"},
      {"fractional dim",
       "{\"w7\":{\"dtype\":\"F32\",\"shape\":[2,1.5],\"data_offsets\":[0,0]}}", 0,
       0, "shape[1]", "'w7'"},
      {"too many dims",
       "{\"w8\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
       "\"data_offsets\":[0,1]}}", 0, 1, "dimensions", "'w8'"},
      {"shape overflow",
       "{\"w9\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776,"
       "1099511627776],\"data_offsets\":[0,0]}}", 0, 0, "overflow", "'w9'"},
      {"missing data_offsets", "{\"w10\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0,
       4, "data_offsets", "'w10'"},
      {"offsets not integers",
       "{\"w11\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",4]}}",
       0, 4, "data_offsets", "'w11'"},
      {"huge offset",
       "{\"w12\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":"
       "[1e300,1e300]}}", 0, 4, "data_offsets", "'w12'"},
      {"missing dtype", "{\"w13\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4,
       "dtype", "'w13'"},
      {"entry not an object", "{\"w14\": 3}", 0, 0, "not an object", "'w14'"},
      {"metadata not an object", "{\"__metadata__\": [1]}", 0, 0,
       "__metadata__", NULL},
      {"duplicate name",
       "{\"dup\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
       "\"dup\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 0, 2,
       "twice", "'dup'"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const bad_case_t *c = &cases[i];
    char name[64], path[256], err[512] = "";
    snprintf(name, sizeof name, "bad%02zu.safetensors", i);
    fx_path(fx, name, path, sizeof path);
    write_st_raw(path, c->hlen ? c->hlen : strlen(c->header), c->header,
                 c->data_len);
    sa_st_t *st = (sa_st_t *)0x1;
    int rc = sa_st_open(path, NULL, NULL, &st, err, sizeof err);
    if (rc != SA_EFORMAT || st != NULL) {
      print_error("case '%s': rc %d (%s), message \"%s\"\n", c->what, rc,
                  sa_err_name(rc), err);
      fail();
    }
    assert_contains(err, name);
    assert_contains(err, c->needle1);
    if (c->needle2)
      assert_contains(err, c->needle2);
  }

  /* Truncated files: shorter than the 8-byte prefix, and empty. */
  char path[256], err[512] = "";
  sa_st_t *st = NULL;
  fx_path(fx, "short.safetensors", path, sizeof path);
  write_bytes(path, "\x02\x00\x00", 3);
  assert_int_equal(sa_st_open(path, NULL, NULL, &st, err, sizeof err),
                   SA_EFORMAT);
  assert_contains(err, "short.safetensors");
  assert_contains(err, "truncated");
  fx_path(fx, "empty.safetensors", path, sizeof path);
  write_bytes(path, "", 0);
  assert_int_equal(sa_st_open(path, NULL, NULL, &st, err, sizeof err),
                   SA_EFORMAT);
  assert_contains(err, "empty.safetensors");
  assert_contains(err, "truncated");
  assert_null(st);

  /* A missing file is SA_ENOENT naming it; a folder with no checkpoint too. */
  fx_path(fx, "nope.safetensors", path, sizeof path);
  assert_int_equal(sa_st_open(path, NULL, NULL, &st, err, sizeof err),
                   SA_ENOENT);
  assert_contains(err, "nope.safetensors");
  assert_int_equal(sa_st_open(fx->dir, NULL, NULL, &st, err, sizeof err),
                   SA_ENOENT);
  assert_contains(err, "model.safetensors");
}

/* Every truncation of a valid file is an error, never a crash; each is
 * parsed from an exact-size heap copy so ASan builds catch over-reads. */
static void test_every_truncation(void **state) {
  fx_t *fx = *state;
  char path[256], err[256];
  fx_path(fx, "trunc.safetensors", path, sizeof path);
  uint16_t a[6] = {1, 2, 3, 4, 5, 6};
  float b[3] = {1, 2, 3};
  sa_st_tensor_t in[] = {
      {.name = "a", .desc = {SA_DTYPE_BF16, 2, {2, 3}}, .data = a},
      {.name = "b", .desc = {SA_DTYPE_F32, 1, {3}}, .data = b},
  };
  assert_int_equal(sa_st_write(path, in, 2, err, sizeof err), 0);
  size_t len;
  uint8_t *file = read_file(path, &len);
  for (size_t cut = 0; cut < len; cut++) {
    uint8_t *copy = malloc(cut ? cut : 1);
    memcpy(copy, file, cut);
    sa_st_t *st = NULL;
    err[0] = '\0';
    int rc = sa_st_parse_buffer(copy, cut, "cut.safetensors", &st, err,
                                sizeof err);
    if (rc == 0) {
      print_error("truncation to %zu of %zu bytes accepted\n", cut, len);
      fail();
    }
    assert_int_equal(rc, SA_EFORMAT);
    assert_contains(err, "cut.safetensors");
    assert_null(st);
    free(copy);
  }
  sa_st_t *st = NULL;
  assert_int_equal(sa_st_parse_buffer(file, len, "full", &st, err, sizeof err),
                   0);
  assert_int_equal(sa_st_count(st), 2);
  assert_int_equal(sa_st_num_files(st), 0);
  sa_st_close(&st);
  free(file);
}

/* --- sa_st_get ------------------------------------------------------------- */

static void test_get_checks(void **state) {
  fx_t *fx = *state;
  char path[256], err[512] = "";
  fx_path(fx, "get.safetensors", path, sizeof path);
  uint16_t w[15] = {0};
  sa_st_tensor_t in = {.name = "model.layers.3.mlp.up_proj.weight",
                       .desc = {SA_DTYPE_BF16, 2, {3, 5}}, .data = w};
  assert_int_equal(sa_st_write(path, &in, 1, err, sizeof err), 0);
  sa_st_t *st = NULL;
  assert_int_equal(sa_st_open(path, NULL, NULL, &st, err, sizeof err), 0);
  const sa_st_tensor_t *t = (const sa_st_tensor_t *)0x1;

  int64_t ok_shape[2] = {3, 5}, bad_shape[2] = {4, 4};
  assert_int_equal(sa_st_get(st, in.name, SA_DTYPE_BF16, 2, ok_shape, &t, err,
                             sizeof err), 0);
  assert_non_null(t);

  assert_int_equal(sa_st_get(st, "model.layers.3.mlp.down_proj.weight",
                             SA_DTYPE_BF16, 2, ok_shape, &t, err, sizeof err),
                   SA_ENOENT);
  assert_null(t);
  assert_contains(err, "'model.layers.3.mlp.down_proj.weight'");
  assert_contains(err, "get.safetensors");

  assert_int_equal(sa_st_get(st, in.name, SA_DTYPE_BF16, 2, bad_shape, &t, err,
                             sizeof err), SA_EFORMAT);
  assert_null(t);
  assert_contains(err, "'model.layers.3.mlp.up_proj.weight'");
  assert_contains(err, "get.safetensors");
  assert_contains(err, "expected bf16[4,4]");
  assert_contains(err, "found bf16[3,5]");

  int64_t one[1] = {15};
  assert_int_equal(sa_st_get(st, in.name, SA_DTYPE_BF16, 1, one, &t, err,
                             sizeof err), SA_EFORMAT);
  assert_contains(err, "expected bf16[15]");

  assert_int_equal(sa_st_get(st, in.name, SA_DTYPE_F32, 2, ok_shape, &t, err,
                             sizeof err), SA_EFORMAT);
  assert_contains(err, "expected f32[3,5], found bf16[3,5]");

  assert_int_equal(sa_st_get(st, in.name, SA_ST_ANY_DTYPE, 2, ok_shape, &t,
                             err, sizeof err), 0);
  assert_int_equal(sa_st_get(st, in.name, SA_DTYPE_BF16, SA_ST_ANY_SHAPE, NULL,
                             &t, err, sizeof err), 0);
  assert_int_equal(sa_st_get(st, in.name, SA_DTYPE_F16, SA_ST_ANY_SHAPE, NULL,
                             &t, err, sizeof err), SA_EFORMAT);
  assert_contains(err, "expected f16[3,5], found bf16[3,5]");
  sa_st_close(&st);
}

static void test_write_errors(void **state) {
  fx_t *fx = *state;
  char path[256], err[512] = "";
  fx_path(fx, "w.safetensors", path, sizeof path);
  uint8_t x[4] = {0};
  sa_st_tensor_t dup[] = {
      {.name = "same", .desc = {SA_DTYPE_U8, 1, {4}}, .data = x},
      {.name = "same", .desc = {SA_DTYPE_U8, 1, {4}}, .data = x},
  };
  assert_int_equal(sa_st_write(path, dup, 2, err, sizeof err), SA_EINVAL);
  assert_contains(err, "'same'");
  sa_st_tensor_t badn = {.name = "n", .desc = {SA_DTYPE_U8, 1, {4}},
                         .data = x, .nbytes = 3};
  assert_int_equal(sa_st_write(path, &badn, 1, err, sizeof err), SA_EINVAL);
  assert_contains(err, "'n'");
  sa_st_tensor_t badd = {.name = "d", .desc = {(sa_dtype_t)99, 1, {4}},
                         .data = x};
  assert_int_equal(sa_st_write(path, &badd, 1, err, sizeof err), SA_EINVAL);
  assert_int_equal(access(path, F_OK), -1); /* nothing written */
  assert_int_equal(sa_st_write("/nonexistent_dir_sa/x.safetensors", &dup[0], 1,
                               err, sizeof err), SA_EIO);
  assert_contains(err, "/nonexistent_dir_sa/x.safetensors");
  /* zero tensors is a valid (empty) checkpoint */
  assert_int_equal(sa_st_write(path, NULL, 0, err, sizeof err), 0);
  sa_st_t *st = NULL;
  assert_int_equal(sa_st_open(path, NULL, NULL, &st, err, sizeof err), 0);
  assert_int_equal(sa_st_count(st), 0);
  sa_st_close(&st);
}

/* --- sharded checkpoints --------------------------------------------------- */

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

static const char *k_shard1[] = {"model.embed_tokens.weight",
                                 "model.layers.0.mlp.up_proj.weight",
                                 "model.layers.0.input_layernorm.weight"};
static const char *k_shard2[] = {"model.layers.1.mlp.up_proj.weight",
                                 "model.layers.1.input_layernorm.weight",
                                 "model.norm.weight", "lm_head.weight"};

/* Fills 4 bf16 values that identify tensor (shard s, index i). */
static void fill_vals(uint16_t v[4], int s, int i) {
  for (int k = 0; k < 4; k++)
    v[k] = sa_f32_to_bf16((float)(s * 100 + i * 10 + k));
}

static void write_shard(const fx_t *fx, const char *file, const char **names,
                        size_t n, int s) {
  uint16_t vals[8][4];
  sa_st_tensor_t t[8];
  for (size_t i = 0; i < n; i++) {
    fill_vals(vals[i], s, (int)i);
    t[i] = (sa_st_tensor_t){.name = names[i],
                            .desc = {SA_DTYPE_BF16, 2, {2, 2}},
                            .data = vals[i]};
  }
  char path[256], err[256];
  fx_path(fx, file, path, sizeof path);
  assert_int_equal(sa_st_write(path, t, n, err, sizeof err), 0);
}

static void write_index(const fx_t *fx, const char *extra) {
  char buf[2048];
  size_t k = (size_t)snprintf(buf, sizeof buf,
                              "{\"metadata\": {\"total_size\": 56},\n"
                              " \"weight_map\": {");
  for (size_t i = 0; i < 3; i++)
    k += (size_t)snprintf(buf + k, sizeof buf - k, "%s\"%s\": \"" SHARD1 "\"",
                          i ? ", " : "", k_shard1[i]);
  for (size_t i = 0; i < 4; i++)
    k += (size_t)snprintf(buf + k, sizeof buf - k, ", \"%s\": \"" SHARD2 "\"",
                          k_shard2[i]);
  snprintf(buf + k, sizeof buf - k, "%s}}\n", extra ? extra : "");
  char path[256];
  fx_path(fx, "model.safetensors.index.json", path, sizeof path);
  write_bytes(path, buf, strlen(buf));
}

static void check_tensor(const sa_st_t *st, const char *name, int s, int i) {
  const sa_st_tensor_t *t = NULL;
  int64_t shape[2] = {2, 2};
  char err[256];
  if (sa_st_get(st, name, SA_DTYPE_BF16, 2, shape, &t, err, sizeof err) != 0) {
    print_error("%s\n", err);
    fail();
  }
  uint16_t want[4];
  fill_vals(want, s, i);
  assert_memory_equal(t->data, want, sizeof want);
  assert_non_null(strstr(t->file, s == 1 ? SHARD1 : SHARD2));
}

static void test_sharded(void **state) {
  fx_t *fx = *state;
  write_shard(fx, SHARD1, k_shard1, 3, 1);
  write_shard(fx, SHARD2, k_shard2, 4, 2);
  write_index(fx, NULL);
  char err[512] = "";

  /* Everything, through the folder and through the index path. */
  sa_st_t *st = NULL;
  assert_int_equal(sa_st_open(fx->dir, NULL, NULL, &st, err, sizeof err), 0);
  assert_int_equal(sa_st_count(st), 7);
  assert_int_equal(sa_st_num_files(st), 2);
  for (int i = 0; i < 3; i++)
    check_tensor(st, k_shard1[i], 1, i);
  for (int i = 0; i < 4; i++)
    check_tensor(st, k_shard2[i], 2, i);
  sa_st_close(&st);
  char ipath[256];
  fx_path(fx, "model.safetensors.index.json", ipath, sizeof ipath);
  assert_int_equal(sa_st_open(ipath, NULL, NULL, &st, err, sizeof err), 0);
  assert_int_equal(sa_st_count(st), 7);
  sa_st_close(&st);

  /* Last stage: layer 1 + head. Only shard 2 is mapped. */
  sa_st_layer_range_t last = {.first = 1, .last = 2, .head = true};
  assert_int_equal(sa_st_open(fx->dir, sa_st_filter_layer_range, &last, &st,
                              err, sizeof err), 0);
  assert_int_equal(sa_st_num_files(st), 1);
  assert_int_equal(sa_st_count(st), 4);
  for (int i = 0; i < 4; i++)
    check_tensor(st, k_shard2[i], 2, i);
  assert_null(sa_st_find(st, "model.embed_tokens.weight"));
  assert_null(sa_st_find(st, "model.layers.0.mlp.up_proj.weight"));
  sa_st_close(&st);

  /* First stage: embed + layer 0 lives in shard 1 only. */
  sa_st_layer_range_t first = {.first = 0, .last = 1, .embed = true};
  assert_int_equal(sa_st_open(fx->dir, sa_st_filter_layer_range, &first, &st,
                              err, sizeof err), 0);
  assert_int_equal(sa_st_num_files(st), 1);
  assert_int_equal(sa_st_count(st), 3);
  check_tensor(st, "model.layers.0.mlp.up_proj.weight", 1, 1);
  sa_st_close(&st);

  /* Proof that shard 1 is not even read: corrupt it, the last stage still
   * opens, while opening everything now fails naming shard 1. */
  char p1[256];
  fx_path(fx, SHARD1, p1, sizeof p1);
  write_bytes(p1, "garbage!garbage!", 16);
  assert_int_equal(sa_st_open(fx->dir, sa_st_filter_layer_range, &last, &st,
                              err, sizeof err), 0);
  assert_int_equal(sa_st_count(st), 4);
  sa_st_close(&st);
  assert_int_equal(sa_st_open(fx->dir, NULL, NULL, &st, err, sizeof err),
                   SA_EFORMAT);
  assert_contains(err, SHARD1);
  assert_null(st);

  /* A missing shard: error names the index, the shard and a tensor. */
  unlink(p1);
  assert_int_equal(sa_st_open(fx->dir, NULL, NULL, &st, err, sizeof err),
                   SA_ENOENT);
  assert_contains(err, "model.safetensors.index.json");
  assert_contains(err, SHARD1);
  assert_contains(err, "model.embed_tokens.weight");
  /* ... but a stage that does not need it still opens. */
  assert_int_equal(sa_st_open(fx->dir, sa_st_filter_layer_range, &last, &st,
                              err, sizeof err), 0);
  sa_st_close(&st);
  write_shard(fx, SHARD1, k_shard1, 3, 1);

  /* The index lists a tensor its shard does not hold. */
  write_index(fx, ", \"model.layers.1.self_attn.q_proj.weight\": \"" SHARD2 "\"");
  assert_int_equal(sa_st_open(fx->dir, NULL, NULL, &st, err, sizeof err),
                   SA_EFORMAT);
  assert_contains(err, "'model.layers.1.self_attn.q_proj.weight'");
  assert_contains(err, SHARD2);
  /* A shard outside the folder is refused. */
  write_index(fx, ", \"x\": \"../evil.safetensors\"");
  assert_int_equal(sa_st_open(fx->dir, NULL, NULL, &st, err, sizeof err),
                   SA_EFORMAT);
  assert_contains(err, "'x'");
  /* A tensor listed twice in the index (a JSON duplicate key). */
  write_index(fx, ", \"lm_head.weight\": \"" SHARD1 "\"");
  assert_int_equal(sa_st_open(fx->dir, NULL, NULL, &st, err, sizeof err),
                   SA_EFORMAT);
  assert_contains(err, "'lm_head.weight'");

  /* Index not JSON / without weight_map. */
  write_bytes(ipath, "{\"weight_map\": {", 16);
  assert_int_equal(sa_st_open(fx->dir, NULL, NULL, &st, err, sizeof err),
                   SA_EFORMAT);
  assert_contains(err, "model.safetensors.index.json");
  assert_contains(err, "not a JSON");
  write_bytes(ipath, "{\"metadata\": {}}", 16);
  assert_int_equal(sa_st_open(fx->dir, NULL, NULL, &st, err, sizeof err),
                   SA_EFORMAT);
  assert_contains(err, "weight_map");
  write_bytes(ipath, "{\"weight_map\": {\"q\": 5}}", 24);
  assert_int_equal(sa_st_open(fx->dir, NULL, NULL, &st, err, sizeof err),
                   SA_EFORMAT);
  assert_contains(err, "'q'");

  /* Without an index, model.safetensors in the folder is used. */
  unlink(ipath);
  char p2[256], single[256];
  fx_path(fx, SHARD2, p2, sizeof p2);
  fx_path(fx, "model.safetensors", single, sizeof single);
  assert_int_equal(rename(p2, single), 0);
  assert_int_equal(sa_st_open(fx->dir, sa_st_filter_layer_range, &last, &st,
                              err, sizeof err), 0);
  assert_int_equal(sa_st_count(st), 4);
  sa_st_close(&st);
}

/* The ready-made layer-range filter, name by name. */
static void test_filter_names(void **state) {
  (void)state;
  sa_st_layer_range_t r = {.first = 2, .last = 5};
  assert_false(sa_st_filter_layer_range("model.layers.1.x", &r));
  assert_true(sa_st_filter_layer_range("model.layers.2.x", &r));
  assert_true(sa_st_filter_layer_range("model.layers.4.self_attn.q_proj.bias",
                                       &r));
  assert_false(sa_st_filter_layer_range("model.layers.5.x", &r));
  assert_false(sa_st_filter_layer_range("model.layers.40.x", &r));
  assert_false(sa_st_filter_layer_range("model.layers.x", &r));
  assert_false(sa_st_filter_layer_range("model.layers.3", &r));
  assert_false(sa_st_filter_layer_range("model.layers.99999999999999.x", &r));
  assert_false(sa_st_filter_layer_range("model.embed_tokens.weight", &r));
  assert_false(sa_st_filter_layer_range("lm_head.weight", &r));
  assert_false(sa_st_filter_layer_range("encoder.conv1.weight", &r));
  r.embed = true;
  r.head = true;
  r.audio = true;
  assert_true(sa_st_filter_layer_range("model.embed_tokens.weight", &r));
  assert_true(sa_st_filter_layer_range("model.norm.weight", &r));
  assert_true(sa_st_filter_layer_range("lm_head.weight", &r));
  assert_true(sa_st_filter_layer_range("encoder.blocks.0.attn.query.weight",
                                       &r));
  assert_true(sa_st_filter_layer_range("adapter.linear1.weight", &r));
  assert_false(sa_st_filter_layer_range("something.else", &r));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_round_trip, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_hand_built_file, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_bad_files, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_every_truncation, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_get_checks, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_write_errors, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_sharded, fx_setup, fx_teardown),
      cmocka_unit_test(test_filter_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
