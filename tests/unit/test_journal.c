/* Tests for core/journal: records survive close and reopen in order; what
 * was appended but not committed is not there after a "crash" (the file is
 * reopened without closing the journal); a tail cut at every possible byte
 * drops exactly the records it cut into and keeps every one before it; a
 * flipped bit in the last record drops it; appends after a torn tail follow
 * the last good record; compaction replaces the journal with what the owner
 * keeps; a file that is not a journal is refused and left untouched. The
 * byte layout is checked against Python's zlib CRC-32 (an independent
 * implementation) when python3 is present. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "sa_error.h"

static char g_dir[256];

typedef struct {
  int n;
  uint8_t types[64];
  char payload[64][64];
} seen_t;

static int collect(void *user, uint8_t type, const void *p, size_t len) {
  seen_t *s = user;
  if (s->n < 64) {
    s->types[s->n] = type;
    snprintf(s->payload[s->n], sizeof s->payload[0], "%.*s", (int)len, (const char *)p);
  }
  s->n++;
  return 0;
}

static void fresh(void) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  assert_int_equal(system(cmd), 0);
}

static off_t file_size(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 ? st.st_size : -1;
}

static void append_str(sa_journal_t *j, uint8_t t, const char *s) {
  assert_int_equal(sa_journal_append(j, t, s, strlen(s)), 0);
}

static seen_t reopen(sa_journal_replay_t *st) {
  sa_journal_t *j = NULL;
  char err[256];
  assert_int_equal(sa_journal_open(g_dir, &j, err, sizeof err), 0);
  seen_t s = {0};
  assert_int_equal(sa_journal_replay(j, collect, &s, st), 0);
  sa_journal_close(&j);
  return s;
}

static void test_round_trip_and_group_commit(void **state) {
  (void)state;
  fresh();
  sa_journal_t *j = NULL;
  char err[256];
  assert_int_equal(sa_journal_open(g_dir, &j, err, sizeof err), 0);
  sa_journal_replay_t st;
  assert_int_equal(sa_journal_replay(j, NULL, NULL, &st), 0);
  assert_int_equal(st.records, 0);
  append_str(j, 1, "accepted req-1");
  append_str(j, 2, "");
  append_str(j, 3, "tokens 7 8 9");
  assert_int_equal(sa_journal_size(j), 8); /* nothing durable before commit */
  assert_int_equal(sa_journal_commit(j), 0);
  assert_int_equal(sa_journal_size(j), 8 + 3 * 9 + 14 + 0 + 12);
  append_str(j, 4, "pending at the crash");
  /* a crash: the process dies, the journal is never closed */
  seen_t s = reopen(&st);
  assert_int_equal(s.n, 3);
  assert_int_equal(s.types[0], 1);
  assert_string_equal(s.payload[0], "accepted req-1");
  assert_string_equal(s.payload[1], "");
  assert_string_equal(s.payload[2], "tokens 7 8 9");
  assert_int_equal(st.dropped_bytes, 0);
  sa_journal_close(&j); /* commits the pending one */
  s = reopen(&st);
  assert_int_equal(s.n, 4);
  assert_string_equal(s.payload[3], "pending at the crash");
  assert_int_equal(sa_journal_append(NULL, 1, "x", 1), SA_EINVAL);
}

/* The file's bytes, checked with Python's zlib.crc32. */
static void test_layout_against_zlib(void **state) {
  (void)state;
  if (system("python3 -c 'import zlib' 2>/dev/null") != 0)
    skip();
  fresh();
  sa_journal_t *j = NULL;
  char err[256], path[300], cmd[800];
  assert_int_equal(sa_journal_open(g_dir, &j, err, sizeof err), 0);
  append_str(j, 7, "hello");
  sa_journal_close(&j);
  snprintf(path, sizeof path, "%s/journal", g_dir);
  snprintf(cmd, sizeof cmd,
           "python3 -c 'import sys,zlib,struct; b=open(sys.argv[1],\"rb\").read(); "
           "assert b[:8]==b\"SAJRNL1\\n\"; n,c=struct.unpack(\"<II\",b[8:16]); "
           "assert n==6 and b[16:17]==bytes([7]) and b[17:22]==b\"hello\" and len(b)==22; "
           "assert c==zlib.crc32(b[16:22])' '%s'",
           path);
  assert_int_equal(system(cmd), 0);
}

/* Cut the file at every byte of its last two records: what is left is
 * always the records wholly before the cut. */
static void test_torn_tail_everywhere(void **state) {
  (void)state;
  fresh();
  sa_journal_t *j = NULL;
  char err[256], path[300];
  assert_int_equal(sa_journal_open(g_dir, &j, err, sizeof err), 0);
  append_str(j, 1, "one");
  append_str(j, 1, "two");
  assert_int_equal(sa_journal_commit(j), 0);
  off_t two = (off_t)sa_journal_size(j);
  append_str(j, 1, "three");
  append_str(j, 1, "four");
  sa_journal_close(&j);
  snprintf(path, sizeof path, "%s/journal", g_dir);
  off_t full = file_size(path);
  off_t three_end = two + 9 + 5;
  for (off_t cut = two; cut < full; cut++) {
    /* restore the whole file, then cut */
    fresh();
    assert_int_equal(sa_journal_open(g_dir, &j, err, sizeof err), 0);
    append_str(j, 1, "one");
    append_str(j, 1, "two");
    append_str(j, 1, "three");
    append_str(j, 1, "four");
    sa_journal_close(&j);
    assert_int_equal(truncate(path, cut), 0);
    sa_journal_replay_t st;
    seen_t s = reopen(&st);
    int want = cut >= three_end ? 3 : 2;
    if (s.n != want)
      fail_msg("cut at %lld: %d records, want %d", (long long)cut, s.n, want);
    assert_int_equal(st.dropped_bytes, (uint64_t)(cut - (want == 3 ? three_end : two)));
    assert_int_equal(file_size(path), want == 3 ? three_end : two);
    /* an append after the cut follows the last good record */
    assert_int_equal(sa_journal_open(g_dir, &j, err, sizeof err), 0);
    assert_int_equal(sa_journal_replay(j, NULL, NULL, NULL), 0);
    append_str(j, 2, "after");
    sa_journal_close(&j);
    s = reopen(NULL);
    assert_int_equal(s.n, want + 1);
    assert_string_equal(s.payload[want], "after");
  }
}

static void test_corrupt_bit(void **state) {
  (void)state;
  fresh();
  sa_journal_t *j = NULL;
  char err[256], path[300];
  assert_int_equal(sa_journal_open(g_dir, &j, err, sizeof err), 0);
  append_str(j, 1, "kept");
  append_str(j, 1, "flipped");
  sa_journal_close(&j);
  snprintf(path, sizeof path, "%s/journal", g_dir);
  int fd = open(path, O_RDWR);
  off_t last = file_size(path) - 2;
  uint8_t b;
  assert_int_equal(pread(fd, &b, 1, last), 1);
  b ^= 0x10;
  assert_int_equal(pwrite(fd, &b, 1, last), 1);
  close(fd);
  sa_journal_replay_t st;
  seen_t s = reopen(&st);
  assert_int_equal(s.n, 1);
  assert_string_equal(s.payload[0], "kept");
  assert_int_equal(st.dropped_bytes, 9 + 7);
}

static void test_compaction(void **state) {
  (void)state;
  fresh();
  sa_journal_t *j = NULL;
  char err[256];
  assert_int_equal(sa_journal_open(g_dir, &j, err, sizeof err), 0);
  for (int i = 0; i < 20; i++) {
    char t[32];
    snprintf(t, sizeof t, "request %d", i);
    append_str(j, 1, t);
  }
  assert_int_equal(sa_journal_commit(j), 0);
  uint64_t before = sa_journal_size(j);
  append_str(j, 1, "not yet committed");
  assert_int_equal(sa_journal_compact_begin(j), 0);
  append_str(j, 9, "live: request 19");
  assert_int_equal(sa_journal_compact_end(j), 0);
  assert_true(sa_journal_size(j) < before);
  append_str(j, 2, "after the compaction");
  sa_journal_close(&j);
  seen_t s = reopen(NULL);
  assert_int_equal(s.n, 2);
  assert_int_equal(s.types[0], 9);
  assert_string_equal(s.payload[0], "live: request 19");
  assert_string_equal(s.payload[1], "after the compaction");
}

static void test_not_a_journal(void **state) {
  (void)state;
  fresh();
  char path[300], err[256];
  mkdir(g_dir, 0700);
  snprintf(path, sizeof path, "%s/journal", g_dir);
  FILE *f = fopen(path, "w");
  fputs("important data that is not ours\n", f);
  fclose(f);
  sa_journal_t *j = NULL;
  assert_int_equal(sa_journal_open(g_dir, &j, err, sizeof err), SA_EFORMAT);
  assert_null(j);
  assert_non_null(strstr(err, "not an sa-cluster journal"));
  assert_int_equal(file_size(path), 32);
  /* a header cut short by a crash at creation is finished, not refused */
  f = fopen(path, "w");
  fputs("SAJR", f);
  fclose(f);
  assert_int_equal(sa_journal_open(g_dir, &j, err, sizeof err), 0);
  sa_journal_close(&j);
  assert_int_equal(file_size(path), 8);
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/sa_test_journal_%d", (int)getpid());
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_and_group_commit),
      cmocka_unit_test(test_layout_against_zlib),
      cmocka_unit_test(test_torn_tail_everywhere),
      cmocka_unit_test(test_corrupt_bit),
      cmocka_unit_test(test_compaction),
      cmocka_unit_test(test_not_a_journal),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  fresh();
  return rc;
}
