/*
 * test_vote — coordinator/answer.c and vote.c, both pure: answer
 * normalisation and the vote rules (majority with early stop, window:k in
 * finishing order, none) over scripted answer streams. The vote inside a
 * running request (cancelling the losers) is test_request.c's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "answer.h"
#include "vote.h"

/* ------------------------------------------------------- normalisation */

static void expect_norm(const char *in, const char *want) {
  char out[256];
  coord_answer_normalize(in, out, sizeof out);
  if (strcmp(out, want) != 0)
    fail_msg("normalize(\"%s\") = \"%s\", want \"%s\"", in, out, want);
}

static void test_normalize_text(void **state) {
  (void)state;
  expect_norm("  Paris  ", "paris");
  expect_norm("PARIS.", "paris");
  expect_norm("The  Eiffel\tTower!", "the eiffel tower");
  expect_norm("\"dog\"", "dog");
  expect_norm("don't", "dont");
  expect_norm("Straße", "strasse");             /* case folding */
  expect_norm("ＡＢＣ", "abc");                   /* NFKC full width */
  expect_norm("café", "café");                  /* composed é kept */
  expect_norm("cafe\xcc\x81", "café");          /* decomposed -> composed */
  expect_norm("猫。", "猫");                      /* Unicode punctuation */
  expect_norm("a\xc2\xa0" "b", "a b");          /* NBSP is a space */
  expect_norm("", "");
  expect_norm("   ", "");
  expect_norm("...!?", "");
  expect_norm("\xff\xfe" "ABC", "\xff\xfe" "abc"); /* not UTF-8: raw, ASCII lowered */
}

static void test_normalize_options(void **state) {
  (void)state;
  expect_norm("A", "a");
  expect_norm("b.", "b");
  expect_norm("C)", "c");
  expect_norm("(D)", "d");
  expect_norm("[E]", "e");
  expect_norm("**F**", "f");
  expect_norm("A. Paris", "a");
  expect_norm("(B) a dog barking", "b");
  expect_norm("Option C", "c");
  expect_norm("option (c) because", "c");
  expect_norm("Choice d", "d");
  expect_norm("Answer: B", "b");
  expect_norm("The answer is (C).", "c");
  expect_norm("Final answer: \\boxed{A}", "a");
  /* not option letters */
  expect_norm("a cat", "a cat");
  expect_norm("e.g. a cat", "eg a cat");
  expect_norm("K", "k");          /* beyond j: a plain word */
  expect_norm("c++", "c");
  expect_norm("answers vary", "answers vary");
}

static void test_normalize_numbers(void **state) {
  (void)state;
  expect_norm("42", "42");
  expect_norm("42.", "42");
  expect_norm("1,000", "1000");
  expect_norm("1,000.50", "1000.5");
  expect_norm("10,000,000", "10000000");
  expect_norm("3.0", "3");
  expect_norm("3.10", "3.1");
  expect_norm("007", "7");
  expect_norm("0", "0");
  expect_norm(".5", "0.5");
  expect_norm("-5", "-5");
  expect_norm("-0.0", "0");
  expect_norm("1,2", "1 2");        /* a list, not a thousands separator */
  expect_norm("1, 2, 3", "1 2 3");
  expect_norm("1/2", "1/2");
  expect_norm("3:45", "3:45");
  expect_norm("$1,234.00", "1234");
  expect_norm("50%", "50");
  expect_norm("The answer is 12 apples.", "12 apples");
  expect_norm("\\boxed{1,000}", "1000");
  expect_norm("x-1", "x1");
  /* different numbers stay different */
  char a[64], b[64];
  coord_answer_normalize("-5", a, sizeof a);
  coord_answer_normalize("5", b, sizeof b);
  assert_string_not_equal(a, b);
  coord_answer_normalize("1.5", a, sizeof a);
  coord_answer_normalize("15", b, sizeof b);
  assert_string_not_equal(a, b);
}

static void test_normalize_capacity(void **state) {
  (void)state;
  char out[8];
  coord_answer_normalize("abcdefghijklmnop", out, sizeof out);
  assert_string_equal(out, "abcdefg");
  coord_answer_normalize("ééééé", out, sizeof out); /* 2 bytes each: whole code points */
  assert_string_equal(out, "ééé");
  coord_answer_normalize("123456789", out, sizeof out); /* a number fits whole or not at all */
  assert_string_equal(out, "");
  coord_answer_normalize("x", out, 1);
  assert_string_equal(out, "");
  coord_answer_normalize(NULL, out, sizeof out);
  assert_string_equal(out, "");
}

/* ---------------------------------------------- the pure rule over streams */

static int decide(const char *const *ans, int n, int running, Sa__VoteRule rule, int k,
                  int *votes, bool *decided) {
  return coord_vote_decide(ans, n, running, rule, k, votes, decided);
}

static void test_decide_majority(void **state) {
  (void)state;
  int v;
  bool d;
  /* 8 chains: 4 agree, 4 running: a new answer could only tie, and would
   * lose the tie (its first vote comes later) -> decided */
  const char *s1[] = {"a", "a", "a", "a"};
  assert_int_equal(decide(s1, 4, 4, SA__VOTE_RULE__VOTE_MAJORITY, 0, &v, &d), 0);
  assert_int_equal(v, 4);
  assert_true(d);
  /* 3 agree, 5 running: not decided */
  assert_int_equal(decide(s1, 3, 5, SA__VOTE_RULE__VOTE_MAJORITY, 0, &v, &d), 0);
  assert_false(d);
  /* b came first with 1; a leads 3-1; 2 running: b can reach 3 and wins
   * the tie (first vote earlier) -> not decided */
  const char *s2[] = {"b", "a", "a", "a"};
  assert_int_equal(decide(s2, 4, 2, SA__VOTE_RULE__VOTE_MAJORITY, 0, &v, &d), 1);
  assert_int_equal(v, 3);
  assert_false(d);
  /* same with 1 running: b reaches at most 2 -> decided */
  assert_int_equal(decide(s2, 4, 1, SA__VOTE_RULE__VOTE_MAJORITY, 0, &v, &d), 1);
  assert_true(d);
  /* a tie at the end goes to the answer given first */
  const char *s3[] = {"b", "a", "a", "b"};
  assert_int_equal(decide(s3, 4, 0, SA__VOTE_RULE__VOTE_MAJORITY, 0, &v, &d), 0);
  assert_int_equal(v, 2);
  assert_true(d);
  /* no answers never win; nobody answered -> -1 */
  const char *s4[] = {"", "", "c", ""};
  assert_int_equal(decide(s4, 4, 0, SA__VOTE_RULE__VOTE_MAJORITY, 0, &v, &d), 2);
  assert_int_equal(v, 1);
  const char *s5[] = {"", ""};
  assert_int_equal(decide(s5, 2, 0, SA__VOTE_RULE__VOTE_MAJORITY, 0, &v, &d), -1);
  assert_int_equal(v, 0);
  assert_true(d); /* nothing is running: the (empty) outcome is final */
  assert_int_equal(decide(s5, 2, 3, SA__VOTE_RULE__VOTE_MAJORITY, 0, &v, &d), -1);
  assert_false(d);
  /* no-answer chains do not help anyone: 2 a, 5 no answers, 1 running */
  const char *s6[] = {"a", "", "", "a", "", "", ""};
  assert_int_equal(decide(s6, 7, 1, SA__VOTE_RULE__VOTE_MAJORITY, 0, &v, &d), 0);
  assert_true(d);
}

static void test_decide_window(void **state) {
  (void)state;
  int v;
  bool d;
  /* a, b, a, b: a has 2 votes but never two in a row -> not decided */
  const char *s1[] = {"a", "b", "a", "b"};
  assert_int_equal(decide(s1, 4, 4, SA__VOTE_RULE__VOTE_FIRST_K_AGREE, 2, &v, &d), 0);
  assert_false(d);
  /* ... then a, a: a streak of 2 -> decided, a wins with 4 votes */
  const char *s2[] = {"a", "b", "a", "b", "b"};
  assert_int_equal(decide(s2, 5, 3, SA__VOTE_RULE__VOTE_FIRST_K_AGREE, 2, &v, &d), 1);
  assert_int_equal(v, 3);
  assert_true(d);
  /* a no-answer breaks a streak */
  const char *s3[] = {"c", "", "c", "", "c"};
  assert_int_equal(decide(s3, 5, 3, SA__VOTE_RULE__VOTE_FIRST_K_AGREE, 2, &v, &d), 0);
  assert_false(d);
  /* k = 3: the streak's answer wins even with fewer total votes */
  const char *s4[] = {"x", "x", "y", "x", "z", "z", "z"};
  assert_int_equal(decide(s4, 7, 1, SA__VOTE_RULE__VOTE_FIRST_K_AGREE, 3, &v, &d), 4);
  assert_int_equal(v, 3);
  assert_true(d);
  /* no streak and everyone done: the majority result */
  const char *s5[] = {"x", "y", "x", "y", "x"};
  assert_int_equal(decide(s5, 5, 0, SA__VOTE_RULE__VOTE_FIRST_K_AGREE, 2, &v, &d), 0);
  assert_int_equal(v, 3);
  assert_true(d);
  /* ... but no early stop by majority under window (x leads 3-0 with 1 left) */
  const char *s6[] = {"x", "", "x", "", "x"};
  decide(s6, 5, 1, SA__VOTE_RULE__VOTE_FIRST_K_AGREE, 2, &v, &d);
  assert_false(d);
  /* k <= 0 means 2 */
  const char *s7[] = {"q", "q"};
  decide(s7, 2, 5, SA__VOTE_RULE__VOTE_FIRST_K_AGREE, 0, &v, &d);
  assert_true(d);
  /* k = 1: the first answer decides */
  const char *s8[] = {"", "w"};
  assert_int_equal(decide(s8, 2, 5, SA__VOTE_RULE__VOTE_FIRST_K_AGREE, 1, &v, &d), 1);
  assert_true(d);
}

static void test_decide_none(void **state) {
  (void)state;
  int v;
  bool d;
  const char *s[] = {"a", "a", "a", "a", "a"};
  assert_int_equal(decide(s, 5, 1, SA__VOTE_RULE__VOTE_NONE, 0, &v, &d), -1);
  assert_false(d);
  assert_int_equal(v, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_normalize_text),
      cmocka_unit_test(test_normalize_options),
      cmocka_unit_test(test_normalize_numbers),
      cmocka_unit_test(test_normalize_capacity),
      cmocka_unit_test(test_decide_majority),
      cmocka_unit_test(test_decide_window),
      cmocka_unit_test(test_decide_none),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
