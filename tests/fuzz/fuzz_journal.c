/* libFuzzer target over the journal's replay (core/journal.c): any file
 * bytes are opened as DIR/journal and replayed. Either the open refuses a
 * file that is not a journal, or the replay keeps a prefix of whole records
 * and cuts the rest: afterwards a second replay reads the same records and
 * drops nothing, and an append lands right after the last good record.
 * The folder is in /dev/shm when it exists (no disk I/O per run). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "log.h"
#include "sa_error.h"

#define CHECK(c)                                                               \
  do {                                                                         \
    if (!(c))                                                                  \
      __builtin_trap();                                                        \
  } while (0)

static char g_dir[256];

static int count(void *user, uint8_t type, const void *p, size_t len) {
  (void)p;
  CHECK(type != 0 && len + 1 <= SA_JOURNAL_MAX_RECORD);
  (*(uint64_t *)user)++;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!g_dir[0]) {
    sa_log_set_level(SA_LOG_LEVEL_ERROR);
    snprintf(g_dir, sizeof g_dir, "%s/sa_fuzz_journal_%d",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (int)getpid());
    mkdir(g_dir, 0700);
  }
  char path[300], err[256];
  snprintf(path, sizeof path, "%s/journal", g_dir);
  FILE *f = fopen(path, "wb");
  if (!f)
    return 0;
  if (size)
    fwrite(data, 1, size, f);
  fclose(f);
  sa_journal_t *j = NULL;
  int rc = sa_journal_open(g_dir, &j, err, sizeof err);
  if (rc) {
    CHECK(rc == SA_EFORMAT && err[0] && j == NULL);
    return 0;
  }
  uint64_t n1 = 0, n2 = 0;
  sa_journal_replay_t st;
  CHECK(sa_journal_replay(j, count, &n1, &st) == 0);
  CHECK(st.records == n1 && st.bytes + st.dropped_bytes >= 8);
  uint64_t kept = sa_journal_size(j);
  CHECK(sa_journal_append(j, 5, "x", 1) == 0 && sa_journal_commit(j) == 0);
  CHECK(sa_journal_size(j) == kept + 10);
  sa_journal_close(&j);
  CHECK(sa_journal_open(g_dir, &j, err, sizeof err) == 0);
  CHECK(sa_journal_replay(j, count, &n2, &st) == 0);
  CHECK(n2 == n1 + 1 && st.dropped_bytes == 0);
  sa_journal_close(&j);
  return 0;
}
