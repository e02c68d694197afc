/* libFuzzer target over the coordinator's journal records (coordinator/
 * wal.c): the input, after the journal header, is replayed as DIR/journal,
 * so the framing's checksums aside (a record that fails one is cut like a
 * torn tail) every record is decoded as the Journal* message of its type.
 * Whatever it holds, what reaches the callbacks must be in range: chains
 * and parts within the coordinator's limits, audio positions inside the
 * prompt, rows of the stated width. The folder is in /dev/shm when it
 * exists. Seeds: tests/fuzz/coord/corpus_wal (journals of real runs). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "wal.h"

#define CHECK(c)                                                               \
  do {                                                                         \
    if (!(c))                                                                  \
      __builtin_trap();                                                        \
  } while (0)

static char g_dir[256];

static void on_accept(void *user, uint64_t uid, const coord_request_params_t *p) {
  (void)user;
  (void)uid;
  CHECK(p->n_chains >= 1 && p->n_chains <= COORD_MAX_CHAINS && p->max_tokens >= 1);
  CHECK(p->n_parts <= COORD_MAX_PARTS && p->n_stop <= COORD_MAX_STOP);
  CHECK(p->request_id && strlen(p->request_id) < 64 && p->owner && p->system);
  for (int k = 0; k < p->n_parts; k++)
    CHECK(p->parts[k].text || p->parts[k].audio || !p->parts[k].audio_len);
}

static void on_prompt(void *user, uint64_t uid, const int32_t *ids, int n_ids,
                      const int32_t *audio_pos, const void *rows, int n_rows, int hidden) {
  (void)user;
  (void)uid;
  CHECK(n_ids >= 2 && ids);
  for (int k = 0; k < n_rows; k++)
    CHECK(audio_pos[k] >= 0 && audio_pos[k] < n_ids);
  if (n_rows) { /* every row there: ASan traps a read past the end */
    CHECK(hidden > 0 && rows);
    volatile uint8_t last = ((const uint8_t *)rows)[sizeof(float) * (size_t)n_rows * (size_t)hidden - 1];
    (void)last;
  }
}

static void on_tokens(void *user, uint64_t uid, int chain, int n_before, const int32_t *t,
                      int n) {
  (void)user;
  (void)uid;
  CHECK(chain >= 0 && chain < COORD_MAX_CHAINS && n_before >= 0 && n >= 0 && (t || !n));
}

static void on_end(void *user, uint64_t uid, sa_status_t st, const char *msg) {
  (void)user;
  (void)uid;
  CHECK((int)st >= 0 && (int)st <= (int)SA_STATUS_UNAUTHENTICATED && msg);
}

static const coord_wal_replay_cbs_t k_cbs = {
    .accept = on_accept, .prompt = on_prompt, .tokens = on_tokens, .end = on_end};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!g_dir[0]) {
    sa_log_set_level(SA_LOG_LEVEL_ERROR);
    snprintf(g_dir, sizeof g_dir, "%s/sa_fuzz_wal_%d",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (int)getpid());
    mkdir(g_dir, 0700);
  }
  char path[300], err[256];
  snprintf(path, sizeof path, "%s/journal", g_dir);
  FILE *f = fopen(path, "wb");
  if (!f)
    return 0;
  fwrite("SAJRNL1\n", 1, 8, f);
  fwrite(data, 1, size, f);
  fclose(f);
  coord_wal_t *w = NULL;
  CHECK(coord_wal_open(g_dir, &w, err, sizeof err) == 0);
  sa_journal_replay_t st;
  coord_wal_replay(w, &k_cbs, NULL, &st);
  coord_wal_close(&w);
  return 0;
}
