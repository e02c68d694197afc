/* test_kv — paged KV cache: fork sharing, copy-on-write, free, exhaustion. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "kernels.h"
#include "kv.h"
#include "sa_error.h"

enum { KVD = 8, BS = 16, NL = 2 };

static sa_backend_t *g_be;

static int setup(void **state) {
  (void)state;
  g_be = sa_backend_ref_new();
  return g_be ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  sa_backend_destroy(&g_be);
  return 0;
}

static sa_kv_t *mk(int n_blocks, int max_seqs, int max_len) {
  sa_kv_opts_t o = {.first_layer = 3, .last_layer = 3 + NL, .kv_dim = KVD,
                    .block_size = BS, .n_blocks = n_blocks,
                    .max_seqs = max_seqs, .max_seq_len = max_len};
  sa_kv_t *kv = NULL;
  assert_int_equal(sa_kv_new(g_be, &o, &kv), 0);
  return kv;
}

/* Value stored for (layer, k|v, slot, d): distinct everywhere. */
static float val(int l, int kvsel, int slot, int d) {
  return (float)(l * 100000 + kvsel * 50000 + slot * 10 + d) * 0.5f;
}

static void write_slots(sa_kv_t *kv, const int32_t *slot, int n) {
  for (int l = 3; l < 3 + NL; l++) {
    void *kp, *vp;
    assert_int_equal(sa_kv_layer(kv, l, &kp, &vp), 0);
    float *k = kp, *v = vp;
    for (int i = 0; i < n; i++) {
      float rk[KVD], rv[KVD];
      for (int d = 0; d < KVD; d++) {
        rk[d] = val(l, 0, i, d);
        rv[d] = val(l, 1, i, d);
      }
      g_be->ops->upload(g_be, k + (size_t)slot[i] * KVD, rk, sizeof rk);
      g_be->ops->upload(g_be, v + (size_t)slot[i] * KVD, rv, sizeof rv);
    }
  }
}

/* Checks that token i (0..n) of sequence id holds the values written for
 * token i. */
static void check_tokens(sa_kv_t *kv, uint64_t id, int n) {
  int nb;
  const int32_t *t = sa_kv_block_table(kv, id, &nb);
  assert_non_null(t);
  for (int l = 3; l < 3 + NL; l++) {
    void *kp, *vp;
    sa_kv_layer(kv, l, &kp, &vp);
    float *k = kp, *v = vp;
    for (int i = 0; i < n; i++) {
      int slot = t[i / BS] * BS + i % BS;
      float rk[KVD], rv[KVD];
      g_be->ops->download(g_be, rk, k + (size_t)slot * KVD, sizeof rk);
      g_be->ops->download(g_be, rv, v + (size_t)slot * KVD, sizeof rv);
      for (int d = 0; d < KVD; d++) {
        assert_true(rk[d] == val(l, 0, i, d));
        assert_true(rv[d] == val(l, 1, i, d));
      }
    }
  }
}

static void test_fork_shares_prompt(void **state) {
  (void)state;
  sa_kv_t *kv = mk(64, 16, 1024);
  int32_t slot[300];
  assert_int_equal(sa_kv_seq_add(kv, 1000), 0);
  assert_int_equal(sa_kv_blocks_needed(kv, 1000, 300), 19);
  assert_int_equal(sa_kv_append(kv, 1000, 300, slot), 0);
  write_slots(kv, slot, 300);
  sa_kv_stats_t st;
  sa_kv_stats(kv, &st);
  assert_int_equal(st.blocks_used, 19); /* ceil(300/16) */
  assert_int_equal(st.blocks_shared, 0);

  for (uint64_t c = 1; c <= 8; c++)
    assert_int_equal(sa_kv_fork(kv, 1000, 1000 + c), 0);
  sa_kv_stats(kv, &st);
  /* 18 full blocks shared, one private 12-token tail per child: 19 + 8,
   * not 9 prompts (171 blocks). */
  assert_int_equal(st.blocks_used, 19 + 8);
  assert_int_equal(st.blocks_shared, 18);
  assert_int_equal(st.n_seqs, 9);
  const int32_t *pt = sa_kv_block_table(kv, 1000, NULL);
  assert_int_equal(sa_kv_block_refs(kv, pt[0]), 9);
  assert_int_equal(sa_kv_block_refs(kv, pt[18]), 1);
  for (uint64_t c = 1; c <= 8; c++) {
    int nb;
    const int32_t *ct = sa_kv_block_table(kv, 1000 + c, &nb);
    assert_int_equal(nb, 19);
    assert_int_equal(sa_kv_seq_len(kv, 1000 + c), 300);
    assert_memory_equal(ct, pt, 18 * sizeof(int32_t));
    assert_int_not_equal(ct[18], pt[18]);
    check_tokens(kv, 1000 + c, 300); /* tail copied, prefix shared */
  }

  /* Decode: each child fills its own tail (4 more tokens) before it needs
   * a block; the parent never copies (its tail is not shared). */
  assert_int_equal(sa_kv_blocks_needed(kv, 1001, 4), 0);
  assert_int_equal(sa_kv_blocks_needed(kv, 1001, 5), 1);
  assert_int_equal(sa_kv_blocks_needed(kv, 1000, 1), 0);
  int32_t s1;
  assert_int_equal(sa_kv_append(kv, 1001, 1, &s1), 0);
  assert_int_equal(s1, sa_kv_block_table(kv, 1001, NULL)[18] * BS + 12);
  assert_int_equal(sa_kv_append(kv, 1000, 1, &s1), 0);
  assert_int_equal(s1, pt[18] * BS + 12);
  sa_kv_stats(kv, &st);
  assert_int_equal(st.blocks_used, 27);

  /* Free returns everything, in any order. */
  for (int c = 8; c >= 1; c -= 2)
    assert_int_equal(sa_kv_free(kv, 1000 + (uint64_t)c), 0);
  assert_int_equal(sa_kv_free(kv, 1000), 0);
  sa_kv_stats(kv, &st);
  assert_int_equal(st.blocks_used, 18 + 4); /* 4 children: 18 + own tail */
  assert_int_equal(st.blocks_shared, 18);
  for (int c = 7; c >= 1; c -= 2)
    assert_int_equal(sa_kv_free(kv, 1000 + (uint64_t)c), 0);
  sa_kv_stats(kv, &st);
  assert_int_equal(st.blocks_used, 0);
  assert_int_equal(st.blocks_shared, 0);
  assert_int_equal(st.blocks_free, 64);
  assert_int_equal(st.n_seqs, 0);
  assert_int_equal(sa_kv_free(kv, 1000), SA_ENOENT);
  sa_kv_destroy(&kv);
  assert_null(kv);
}

static void test_exhaustion(void **state) {
  (void)state;
  sa_kv_t *kv = mk(4, 4, 200);
  int32_t slot[80];
  assert_int_equal(sa_kv_seq_add(kv, 7), 0);
  assert_int_equal(sa_kv_append(kv, 7, 60, slot), 0); /* 4 blocks */
  assert_int_equal(sa_kv_blocks_free(kv), 0);
  assert_true(sa_kv_can_append(kv, 7, 4));
  assert_false(sa_kv_can_append(kv, 7, 5));
  assert_int_equal(sa_kv_append(kv, 7, 5, slot), SA_EFULL);
  assert_int_equal(sa_kv_seq_len(kv, 7), 60); /* unchanged */
  assert_int_equal(sa_kv_fork(kv, 7, 8), SA_EFULL); /* tail copy needs one */
  assert_false(sa_kv_seq_exists(kv, 8));
  assert_int_equal(sa_kv_append(kv, 7, 4, slot), 0); /* fills block 3 */
  assert_int_equal(sa_kv_fork(kv, 7, 8), 0); /* all full: pure sharing */
  sa_kv_stats_t st;
  sa_kv_stats(kv, &st);
  assert_int_equal(st.blocks_used, 4);
  assert_int_equal(st.blocks_shared, 4);
  assert_int_equal(sa_kv_append(kv, 8, 1, slot), SA_EFULL);
  assert_int_equal(sa_kv_free(kv, 7), 0);
  sa_kv_stats(kv, &st);
  assert_int_equal(st.blocks_used, 4); /* still held by 8 */
  assert_int_equal(st.blocks_shared, 0);
  /* max_seq_len and sequence slots are bounds too */
  assert_int_equal(sa_kv_seq_add(kv, 9), 0);
  assert_int_equal(sa_kv_append(kv, 9, 201, slot), SA_ERANGE);
  assert_int_equal(sa_kv_seq_add(kv, 9), SA_EEXIST);
  assert_int_equal(sa_kv_seq_add(kv, 10), 0);
  assert_int_equal(sa_kv_seq_add(kv, 11), 0);
  assert_int_equal(sa_kv_seq_add(kv, 12), SA_EFULL);
  assert_int_equal(sa_kv_append(kv, 99, 1, slot), SA_ENOENT);
  sa_kv_destroy(&kv);
}

static void test_budget(void **state) {
  (void)state;
  size_t per = sa_kv_block_bytes(NL, BS, KVD, SA_KV_F32);
  assert_int_equal(per, (size_t)NL * 2 * BS * KVD * 4);
  assert_int_equal(sa_kv_block_bytes(NL, BS, KVD, SA_KV_BF16), (size_t)NL * 2 * BS * KVD * 2);
  /* q8: 36 bytes a block of 32 values; 8 values a row cannot be held */
  assert_int_equal(sa_kv_block_bytes(NL, BS, 64, SA_KV_Q8_0), (size_t)NL * 2 * BS * 2 * 36);
  assert_int_equal(sa_kv_block_bytes(NL, BS, KVD, SA_KV_Q8_0), 0);
  sa_kv_opts_t o = {.first_layer = 0, .last_layer = NL, .kv_dim = KVD,
                    .block_size = 0, .budget_bytes = per * 10 + per / 2,
                    .max_seqs = 2, .max_seq_len = 64};
  sa_kv_t *kv = NULL;
  assert_int_equal(sa_kv_new(g_be, &o, &kv), 0);
  sa_kv_stats_t st;
  sa_kv_stats(kv, &st);
  assert_int_equal(st.blocks_total, 10);
  assert_int_equal(sa_kv_block_size(kv), 16);
  assert_int_equal(sa_kv_max_blocks_per_seq(kv), 4);
  assert_int_equal(sa_kv_layer(kv, NL, NULL, NULL), SA_ERANGE);
  sa_kv_destroy(&kv);
  o.budget_bytes = per - 1;
  assert_int_equal(sa_kv_new(g_be, &o, &kv), SA_EINVAL);
  assert_null(kv);
  o.budget_bytes = per;
  o.last_layer = 0;
  assert_int_equal(sa_kv_new(g_be, &o, &kv), SA_EINVAL);
}

static void test_truncate_copy_on_write(void **state) {
  (void)state;
  sa_kv_t *kv = mk(16, 4, 256);
  int32_t slot[64];
  assert_int_equal(sa_kv_seq_add(kv, 1), 0);
  assert_int_equal(sa_kv_append(kv, 1, 32, slot), 0);
  write_slots(kv, slot, 32);
  assert_int_equal(sa_kv_fork(kv, 1, 2), 0);
  assert_int_equal(sa_kv_truncate(kv, 2, 20), 0); /* ends in shared blk 1 */
  assert_int_equal(sa_kv_seq_len(kv, 2), 20);
  assert_int_equal(sa_kv_blocks_needed(kv, 2, 1), 1); /* copy-on-write */
  const int32_t *pt = sa_kv_block_table(kv, 1, NULL);
  int b1 = pt[1];
  assert_int_equal(sa_kv_append(kv, 2, 1, slot), 0);
  const int32_t *ct = sa_kv_block_table(kv, 2, NULL);
  assert_int_equal(ct[0], pt[0]);
  assert_int_not_equal(ct[1], b1);
  assert_int_equal(slot[0], ct[1] * BS + 4);
  assert_int_equal(sa_kv_block_refs(kv, b1), 1);
  check_tokens(kv, 2, 20);
  check_tokens(kv, 1, 32);
  assert_int_equal(sa_kv_truncate(kv, 2, 0), 0);
  assert_int_equal(sa_kv_truncate(kv, 2, 1), SA_EINVAL);
  sa_kv_stats_t st;
  sa_kv_stats(kv, &st);
  assert_int_equal(st.blocks_used, 2);
  sa_kv_destroy(&kv);
}

/* Many adds and frees of scattered ids keep the id map exact. */
static void test_id_map(void **state) {
  (void)state;
  enum { N = 64 };
  sa_kv_t *kv = mk(N, N, 16);
  uint64_t ids[N];
  int live[N] = {0};
  uint64_t x = 88172645463325252ull;
  for (int i = 0; i < N; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    ids[i] = (i % 4 == 0) ? (uint64_t)i * 64 : x; /* colliding low bits too */
  }
  for (int round = 0; round < 4000; round++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    int i = (int)(x % N);
    if (live[i]) {
      assert_int_equal(sa_kv_free(kv, ids[i]), 0);
    } else {
      assert_int_equal(sa_kv_seq_add(kv, ids[i]), 0);
      assert_int_equal(sa_kv_append(kv, ids[i], 1 + i % 16, NULL), 0);
    }
    live[i] = !live[i];
    if (round % 97 == 0)
      for (int j = 0; j < N; j++) {
        assert_int_equal(sa_kv_seq_exists(kv, ids[j]), live[j]);
        if (live[j])
          assert_int_equal(sa_kv_seq_len(kv, ids[j]), 1 + j % 16);
      }
  }
  sa_kv_destroy(&kv);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fork_shares_prompt),
      cmocka_unit_test(test_exhaustion),
      cmocka_unit_test(test_budget),
      cmocka_unit_test(test_truncate_copy_on_write),
      cmocka_unit_test(test_id_map),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
