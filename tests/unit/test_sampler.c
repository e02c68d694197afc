/* test_sampler — Philox known answers and sampler cases computed by hand. */
#include <math.h>
#include <stdlib.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "sa_error.h"
#include "sampler.h"

/* Random123's kat_vectors, "philox4x32 10" lines: ctr[4] key[2] -> out[4]. */
static void test_philox_kat(void **state) {
  (void)state;
  static const uint32_t v[3][10] = {
      {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
      {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
       0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
      {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
       0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1},
  };
  for (int i = 0; i < 3; i++) {
    uint32_t out[4];
    sa_philox4x32_10(&v[i][0], &v[i][4], out);
    for (int j = 0; j < 4; j++)
      assert_int_equal(out[j], v[i][6 + j]);
  }
}

static void test_uniform(void **state) {
  (void)state;
  double sum = 0;
  int lo = 0;
  for (int i = 0; i < 20000; i++) {
    double u = sa_rng_uniform(42, 3, (uint64_t)i, 0);
    assert_true(u >= 0.0 && u < 1.0);
    sum += u;
    lo += u < 0.25;
  }
  assert_true(fabs(sum / 20000 - 0.5) < 0.01);
  assert_true(abs(lo - 5000) < 300);
  /* Same key, same number; any key change, a different number. */
  assert_true(sa_rng_uniform(7, 1, 100, 0) == sa_rng_uniform(7, 1, 100, 0));
  assert_true(sa_rng_uniform(7, 1, 100, 0) != sa_rng_uniform(8, 1, 100, 0));
  assert_true(sa_rng_uniform(7, 1, 100, 0) != sa_rng_uniform(7, 2, 100, 0));
  assert_true(sa_rng_uniform(7, 1, 100, 0) != sa_rng_uniform(7, 1, 101, 0));
  assert_true(sa_rng_uniform(7, 1, 1ull << 32, 0) !=
              sa_rng_uniform(7, 1, 0, 0));
}

static sa_sampler_params_t greedy(void) {
  sa_sampler_params_t p;
  sa_sampler_params_default(&p);
  p.greedy = true;
  return p;
}

static void test_greedy_logprob(void **state) {
  (void)state;
  sa_sampler_t *s = sa_sampler_new(8);
  assert_non_null(s);
  float l[3] = {1.0f, 3.0f, 2.0f};
  sa_sampler_params_t p = greedy();
  int32_t t = -1;
  float lp = 0;
  sa_sample_key_t k = {1, 0, 0};
  assert_int_equal(sa_sampler_sample(s, &p, l, 3, NULL, 0, k, &t, &lp), 0);
  assert_int_equal(t, 1);
  /* 3 - log(e + e^2 + e^3) = -0.40760596 */
  assert_true(fabsf(lp - (-0.40760596f)) < 1e-6f);
  /* temperature 0 is greedy too */
  sa_sampler_params_default(&p);
  p.temperature = 0.0f;
  assert_int_equal(sa_sampler_sample(s, &p, l, 3, NULL, 0, k, &t, NULL), 0);
  assert_int_equal(t, 1);
  /* ties go to the lowest id */
  float tie[4] = {0.f, 5.f, 5.f, 1.f};
  p = greedy();
  assert_int_equal(sa_sampler_sample(s, &p, tie, 4, NULL, 0, k, &t, NULL), 0);
  assert_int_equal(t, 1);
  /* the one-pass greedy path (no logprob) agrees with the general one: NaN
   * never wins, and a row with no finite maximum is refused either way */
  float withnan[4] = {NAN, 2.f, NAN, 1.f};
  assert_int_equal(sa_sampler_sample(s, &p, withnan, 4, NULL, 0, k, &t, NULL), 0);
  assert_int_equal(t, 1);
  assert_int_equal(sa_sampler_sample(s, &p, withnan, 4, NULL, 0, k, &t, &lp), 0);
  assert_int_equal(t, 1);
  float allnan[2] = {NAN, NAN}, inf[2] = {1.f, INFINITY};
  assert_int_equal(sa_sampler_sample(s, &p, allnan, 2, NULL, 0, k, &t, NULL), SA_EINVAL);
  assert_int_equal(sa_sampler_sample(s, &p, allnan, 2, NULL, 0, k, &t, &lp), SA_EINVAL);
  assert_int_equal(sa_sampler_sample(s, &p, inf, 2, NULL, 0, k, &t, NULL), SA_EINVAL);
  assert_int_equal(sa_sampler_sample(s, &p, inf, 2, NULL, 0, k, &t, &lp), SA_EINVAL);
  sa_sampler_destroy(&s);
  assert_null(s);

  /* rows long enough for the vectorised max (lanes + tail): NaN in every
   * lane, the maximum tied in two lanes and again in the tail, -inf rows */
  enum { NV = 1003 };
  s = sa_sampler_new(NV);
  assert_non_null(s);
  float *row = malloc(sizeof(float) * NV);
  assert_non_null(row);
  int32_t where[] = {0, 5, 17, 500, 991, 1002};
  for (size_t w = 0; w < sizeof where / sizeof *where; w++) {
    for (int i = 0; i < NV; i++)
      row[i] = i % 7 == 3 ? NAN : (float)((i * 37) % 101) * 0.01f - 2.0f;
    row[where[w]] = 3.0f;
    if (where[w] + 33 < NV)
      row[where[w] + 33] = 3.0f; /* a later tie loses */
    int32_t t1 = -1, t2 = -1;
    assert_int_equal(sa_sampler_sample(s, &p, row, NV, NULL, 0, k, &t1, NULL), 0);
    assert_int_equal(sa_sampler_sample(s, &p, row, NV, NULL, 0, k, &t2, &lp), 0);
    assert_int_equal(t1, where[w]);
    assert_int_equal(t2, where[w]);
  }
  for (int i = 0; i < NV; i++)
    row[i] = i % 2 ? NAN : -INFINITY;
  assert_int_equal(sa_sampler_sample(s, &p, row, NV, NULL, 0, k, &t, NULL), SA_EINVAL);
  row[700] = INFINITY;
  assert_int_equal(sa_sampler_sample(s, &p, row, NV, NULL, 0, k, &t, NULL), SA_EINVAL);
  free(row);
  sa_sampler_destroy(&s);
}

static void test_repetition_penalty(void **state) {
  (void)state;
  sa_sampler_t *s = sa_sampler_new(8);
  sa_sampler_params_t p = greedy();
  p.repetition_penalty = 2.0f;
  sa_sample_key_t k = {1, 0, 0};
  int32_t t;
  /* positive logit divided: 2.0 -> 1.0 < 1.9 */
  float a[3] = {2.0f, 1.9f, -1.0f};
  int32_t h1[3] = {0, 0, 0}; /* repeats count once */
  assert_int_equal(sa_sampler_sample(s, &p, a, 3, h1, 3, k, &t, NULL), 0);
  assert_int_equal(t, 1);
  /* negative logit multiplied: -0.5 -> -1.0 < -0.6 */
  float b[2] = {-0.5f, -0.6f};
  int32_t h2[2] = {0, 99}; /* out-of-range ids ignored */
  assert_int_equal(sa_sampler_sample(s, &p, b, 2, h2, 2, k, &t, NULL), 0);
  assert_int_equal(t, 1);
  /* penalty 1 changes nothing */
  p.repetition_penalty = 1.0f;
  assert_int_equal(sa_sampler_sample(s, &p, a, 3, h1, 3, k, &t, NULL), 0);
  assert_int_equal(t, 0);
  /* the logprob stays the raw one: log softmax([2,1.9,-1])[0] */
  p.repetition_penalty = 2.0f;
  float lp;
  assert_int_equal(sa_sampler_sample(s, &p, a, 3, h1, 3, k, &t, &lp), 0);
  double z = log(exp(2.0) + exp(1.9) + exp(-1.0));
  assert_true(fabs(lp - (1.9 - z)) < 1e-5);
  sa_sampler_destroy(&s);
}

/* Draws n tokens at positions 0..n-1 and counts them. */
static void histo(sa_sampler_t *s, const sa_sampler_params_t *p,
                  const float *l, int V, int n, int *count) {
  for (int i = 0; i < V; i++)
    count[i] = 0;
  for (int i = 0; i < n; i++) {
    int32_t t = -1;
    sa_sample_key_t k = {1234, 5, (uint64_t)i};
    assert_int_equal(sa_sampler_sample(s, p, l, V, NULL, 0, k, &t, NULL), 0);
    assert_true(t >= 0 && t < V);
    count[t]++;
  }
}

static void test_temperature(void **state) {
  (void)state;
  sa_sampler_t *s = sa_sampler_new(4);
  sa_sampler_params_t p;
  sa_sampler_params_default(&p);
  p.temperature = 2.0f;
  /* logits [0, ln 4] at T=2 -> weights [1, 2] -> probs 1/3, 2/3 */
  float l[2] = {0.0f, logf(4.0f)};
  int c[2];
  histo(s, &p, l, 2, 6000, c);
  assert_true(abs(c[1] - 4000) < 200);
  /* T=1: probs 1/5, 4/5 */
  p.temperature = 1.0f;
  histo(s, &p, l, 2, 6000, c);
  assert_true(abs(c[1] - 4800) < 200);
  sa_sampler_destroy(&s);
}

static void test_top_k_top_p_min_p(void **state) {
  (void)state;
  sa_sampler_t *s = sa_sampler_new(16);
  sa_sampler_params_t p;
  int c[4];
  /* probs 0.5 0.3 0.2 (token order shuffled to exercise sorting) */
  float l3[3] = {logf(0.2f), logf(0.5f), logf(0.3f)};

  sa_sampler_params_default(&p);
  p.top_k = 1;
  histo(s, &p, l3, 3, 500, c);
  assert_int_equal(c[1], 500);

  p.top_k = 2; /* renormalised: 0.5/0.8, 0.3/0.8 */
  histo(s, &p, l3, 3, 8000, c);
  assert_int_equal(c[0], 0);
  assert_true(abs(c[1] - 5000) < 250);

  sa_sampler_params_default(&p);
  p.top_p = 0.45f; /* mass ahead of 0.3 is 0.5 >= 0.45: only the top */
  histo(s, &p, l3, 3, 500, c);
  assert_int_equal(c[1], 500);
  p.top_p = 0.55f; /* 0.5 < 0.55 keeps 0.3; 0.8 >= 0.55 drops 0.2 */
  histo(s, &p, l3, 3, 8000, c);
  assert_int_equal(c[0], 0);
  assert_true(abs(c[1] - 5000) < 250);

  sa_sampler_params_default(&p);
  p.min_p = 0.5f; /* 0.3/0.5 = 0.6 kept, 0.2/0.5 = 0.4 dropped */
  histo(s, &p, l3, 3, 8000, c);
  assert_int_equal(c[0], 0);
  assert_true(abs(c[1] - 5000) < 250);
  p.min_p = 0.7f; /* only the top */
  histo(s, &p, l3, 3, 500, c);
  assert_int_equal(c[1], 500);

  /* HF order: top-k renormalises before top-p. probs .4 .3 .2 .1:
   * top_p 0.5 alone keeps {.4, .3}; after top_k 2 the renormalised
   * .4/.7 = .571 ahead of .3 exceeds .5, so only the top is left. */
  float l4[4] = {logf(0.4f), logf(0.3f), logf(0.2f), logf(0.1f)};
  sa_sampler_params_default(&p);
  p.top_p = 0.5f;
  histo(s, &p, l4, 4, 4000, c);
  assert_true(c[0] > 0 && c[1] > 0 && c[2] == 0 && c[3] == 0);
  p.top_k = 2;
  histo(s, &p, l4, 4, 500, c);
  assert_int_equal(c[0], 500);

  /* plain sampling matches the softmax: .4 .3 .2 .1 of 10000 */
  sa_sampler_params_default(&p);
  histo(s, &p, l4, 4, 10000, c);
  assert_true(abs(c[0] - 4000) < 250 && abs(c[1] - 3000) < 250 &&
              abs(c[2] - 2000) < 250 && abs(c[3] - 1000) < 200);
  sa_sampler_destroy(&s);
}

static void test_replay_and_bad_input(void **state) {
  (void)state;
  enum { V = 1000 };
  static float l[V];
  for (int i = 0; i < V; i++)
    l[i] = (float)sin(i * 0.37) * 3.0f;
  sa_sampler_t *a = sa_sampler_new(V), *b = sa_sampler_new(2 * V);
  sa_sampler_params_t p;
  sa_sampler_params_default(&p);
  p.temperature = 0.8f;
  p.top_p = 0.9f;
  p.top_k = 50;
  int differ = 0;
  for (int i = 0; i < 200; i++) {
    int32_t t1, t2, t3;
    sa_sample_key_t k = {99, 2, (uint64_t)i};
    assert_int_equal(sa_sampler_sample(a, &p, l, V, NULL, 0, k, &t1, NULL), 0);
    assert_int_equal(sa_sampler_sample(b, &p, l, V, NULL, 0, k, &t2, NULL), 0);
    assert_int_equal(t1, t2); /* replay elsewhere: same token */
    k.chain = 3;
    assert_int_equal(sa_sampler_sample(a, &p, l, V, NULL, 0, k, &t3, NULL), 0);
    differ += t1 != t3;
  }
  assert_true(differ > 50); /* chains are independent streams */

  int32_t t;
  sa_sample_key_t k = {1, 0, 0};
  assert_int_equal(sa_sampler_sample(a, &p, l, 2 * V, NULL, 0, k, &t, NULL),
                   SA_EINVAL);
  p.top_p = 0.0f;
  assert_int_equal(sa_sampler_sample(a, &p, l, V, NULL, 0, k, &t, NULL),
                   SA_EINVAL);
  sa_sampler_params_default(&p);
  p.repetition_penalty = 0.0f;
  assert_int_equal(sa_sampler_sample(a, &p, l, V, NULL, 0, k, &t, NULL),
                   SA_EINVAL);
  sa_sampler_params_default(&p);
  float ninf[2] = {-INFINITY, -INFINITY};
  assert_int_equal(sa_sampler_sample(a, &p, ninf, 2, NULL, 0, k, &t, NULL),
                   SA_EINVAL);
  /* a masked (-inf) token is never drawn */
  float m[3] = {0.0f, -INFINITY, 0.0f};
  int c[3];
  histo(a, &p, m, 3, 1000, c);
  assert_int_equal(c[1], 0);
  sa_sampler_destroy(&a);
  sa_sampler_destroy(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_philox_kat),
      cmocka_unit_test(test_uniform),
      cmocka_unit_test(test_greedy_logprob),
      cmocka_unit_test(test_repetition_penalty),
      cmocka_unit_test(test_temperature),
      cmocka_unit_test(test_top_k_top_p_min_p),
      cmocka_unit_test(test_replay_and_bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
