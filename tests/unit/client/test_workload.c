/*
 * test_workload — sa-load's workload parser (client/workload.c): a full
 * item's fields and defaults, weighted picks, clips read relative to the
 * file, and each kind of malformed input refused with a message that names
 * the item and the key.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "sa.pb-c.h"
#include "sa_error.h"
#include "workload.h"

static int parse(const char *text, sa_workload_t *w, char *err, size_t cap) {
  return sa_workload_parse(text, strlen(text), w, err, cap);
}

static void test_fields_and_defaults(void **state) {
  (void)state;
  sa_workload_t w;
  char err[256] = "";
  assert_int_equal(parse("{\"items\": [{\"clip\": \"a.wav\", \"prompt\": \"How many?\", \"n\": 8,"
                         " \"max_tokens\": 100, \"temperature\": 0.7, \"top_p\": 0.9,"
                         " \"top_k\": 40, \"vote\": \"window:3\", \"think_budget\": 50,"
                         " \"weight\": 3}, {\"prompt\": \"hi\"}]}",
                         &w, err, sizeof err),
                   0);
  assert_int_equal(w.n_items, 2);
  const sa_work_item_t *a = &w.items[0], *b = &w.items[1];
  assert_string_equal(a->clip, "a.wav");
  assert_string_equal(a->prompt, "How many?");
  assert_int_equal(a->n, 8);
  assert_int_equal(a->max_tokens, 100);
  assert_int_equal(a->top_k, 40);
  assert_int_equal(a->think_budget, 50);
  assert_float_equal(a->temperature, 0.7f, 1e-6);
  assert_float_equal(a->top_p, 0.9f, 1e-6);
  assert_int_equal(a->vote_rule, SA__VOTE_RULE__VOTE_FIRST_K_AGREE);
  assert_int_equal(a->vote_k, 3);
  /* defaults: one chain, 64 tokens, greedy, majority, weight 1 */
  assert_null(b->clip);
  assert_int_equal(b->n, 1);
  assert_int_equal(b->max_tokens, 64);
  assert_float_equal(b->temperature, 0.0f, 0);
  assert_int_equal(b->vote_rule, SA__VOTE_RULE__VOTE_MAJORITY);
  assert_float_equal(w.total_weight, 4.0, 1e-12);
  /* weight 3 : 1 — u below 0.75 is the first item */
  assert_ptr_equal(sa_workload_pick(&w, 0.0), a);
  assert_ptr_equal(sa_workload_pick(&w, 0.74), a);
  assert_ptr_equal(sa_workload_pick(&w, 0.76), b);
  assert_ptr_equal(sa_workload_pick(&w, 0.999999), b);
  sa_workload_free(&w);
  assert_int_equal(w.n_items, 0);
}

static void expect_bad(const char *text, const char *want_in_err) {
  sa_workload_t w;
  char err[256] = "";
  int rc = parse(text, &w, err, sizeof err);
  if (rc != SA_EINVAL)
    fail_msg("%s: rc %d, want SA_EINVAL", text, rc);
  if (!strstr(err, want_in_err))
    fail_msg("%s: error \"%s\" does not say \"%s\"", text, err, want_in_err);
  assert_int_equal(w.n_items, 0);
  assert_null(w.items);
}

static void test_bad_input(void **state) {
  (void)state;
  expect_bad("", "not valid JSON");
  expect_bad("{\"items\": [", "not valid JSON");
  expect_bad("[]", "\"items\"");
  expect_bad("{\"items\": []}", "1..4096 items");
  expect_bad("{\"items\": {}}", "\"items\"");
  expect_bad("{\"items\": [3]}", "item 0: not an object");
  expect_bad("{\"items\": [{\"prompt\": \"x\"}, {\"promt\": \"x\"}]}", "item 1: unknown key \"promt\"");
  expect_bad("{\"items\": [{}]}", "item 0: needs a clip or a prompt");
  expect_bad("{\"items\": [{\"clip\": \"\"}]}", "clip is empty");
  expect_bad("{\"items\": [{\"clip\": 7}]}", "clip must be a string");
  expect_bad("{\"items\": [{\"prompt\": \"x\", \"n\": 0}]}", "n must be an integer");
  expect_bad("{\"items\": [{\"prompt\": \"x\", \"n\": 2.5}]}", "n must be an integer");
  expect_bad("{\"items\": [{\"prompt\": \"x\", \"n\": \"8\"}]}", "n must be an integer");
  expect_bad("{\"items\": [{\"prompt\": \"x\", \"max_tokens\": 1e30}]}", "max_tokens");
  expect_bad("{\"items\": [{\"prompt\": \"x\", \"temperature\": -1}]}", "temperature");
  expect_bad("{\"items\": [{\"prompt\": \"x\", \"top_p\": 1.5}]}", "top_p");
  expect_bad("{\"items\": [{\"prompt\": \"x\", \"weight\": 0}]}", "weight");
  expect_bad("{\"items\": [{\"prompt\": \"x\", \"vote\": \"window:0\"}]}", "vote must be");
  expect_bad("{\"items\": [{\"prompt\": \"x\", \"vote\": \"window:3x\"}]}", "vote must be");
  expect_bad("{\"items\": [{\"prompt\": \"x\", \"vote\": 1}]}", "vote must be");
}

static void test_clips(void **state) {
  (void)state;
  char dir[] = "/tmp/sa_workload_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[512];
  snprintf(path, sizeof path, "%s/a.wav", dir);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  fputs("RIFF....", f);
  fclose(f);
  sa_workload_t w;
  char err[256] = "";
  assert_int_equal(parse("{\"items\": [{\"clip\": \"a.wav\"}]}", &w, err, sizeof err), 0);
  assert_int_equal(sa_workload_load_clips(&w, dir, 1 << 20, err, sizeof err), 0);
  assert_int_equal(w.items[0].audio_len, 8);
  assert_memory_equal(w.items[0].audio, "RIFF....", 8);
  sa_workload_free(&w);
  /* too large, missing */
  assert_int_equal(parse("{\"items\": [{\"clip\": \"a.wav\"}]}", &w, err, sizeof err), 0);
  assert_int_equal(sa_workload_load_clips(&w, dir, 4, err, sizeof err), SA_EINVAL);
  assert_non_null(strstr(err, "8 bytes"));
  sa_workload_free(&w);
  assert_int_equal(parse("{\"items\": [{\"clip\": \"b.wav\"}]}", &w, err, sizeof err), 0);
  assert_int_equal(sa_workload_load_clips(&w, dir, 1 << 20, err, sizeof err), SA_EIO);
  assert_non_null(strstr(err, "b.wav"));
  sa_workload_free(&w);
  unlink(path);
  rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fields_and_defaults),
      cmocka_unit_test(test_bad_input),
      cmocka_unit_test(test_clips),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
