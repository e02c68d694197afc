/*
 * encoder_test_util — helpers shared by the encoder tests (header-only,
 * static functions): reading files and .npy arrays, making the tiny test
 * checkpoint with `sa-model init`, and spawning sa-encoder on loopback.
 * Fail-fast helpers: tests only.
 */
#ifndef SA_ENCODER_TEST_UTIL_H
#define SA_ENCODER_TEST_UTIL_H

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testmodel.h"

#define ETU_SEED 1234

static inline void etu_require_fixtures(void) {
  struct stat sb;
  if (stat(SA_FIXTURES_DIR "/audio", &sb) != 0) {
    fprintf(stderr, "fixtures not found at %s (re-run cmake)\n", SA_FIXTURES_DIR "/audio");
    exit(1);
  }
}

/* Reads a whole file; caller frees. NULL if unreadable. */
static inline void *etu_read_file(const char *path, size_t *len) {
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  void *buf = malloc((size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  if (buf)
    *len = (size_t)n;
  return buf;
}

/* Reads a little-endian float32 C-order .npy of 1 or 2 dims; caller frees.
 * Stores the shape in rows/cols (cols = 1 for 1-D). NULL if malformed. */
static inline float *etu_read_npy_f32(const char *path, int64_t *rows,
                                      int64_t *cols) {
  size_t len = 0;
  unsigned char *b = etu_read_file(path, &len);
  if (!b)
    return NULL;
  float *out = NULL;
  if (len < 10 || memcmp(b, "\x93NUMPY", 6) != 0)
    goto done;
  size_t hl, off;
  if (b[6] == 1) {
    hl = b[8] | (b[9] << 8);
    off = 10;
  } else {
    hl = b[8] | (b[9] << 8) | ((size_t)b[10] << 16) | ((size_t)b[11] << 24);
    off = 12;
  }
  if (off + hl > len)
    goto done;
  char hdr[512];
  size_t n = hl < sizeof hdr - 1 ? hl : sizeof hdr - 1;
  memcpy(hdr, b + off, n);
  hdr[n] = '\0';
  if (!strstr(hdr, "'<f4'") || strstr(hdr, "'fortran_order': True"))
    goto done;
  char *s = strstr(hdr, "'shape': (");
  if (!s)
    goto done;
  s += 10;
  char *e = NULL;
  *rows = strtoll(s, &e, 10);
  *cols = 1;
  if (e && *e == ',') {
    e++;
    while (*e == ' ')
      e++;
    if (*e != ')')
      *cols = strtoll(e, &e, 10);
  }
  size_t count = (size_t)(*rows * *cols);
  if (off + hl + count * 4 > len)
    goto done;
  out = malloc(count * 4 + 4);
  if (out)
    memcpy(out, b + off + hl, count * 4);
done:
  free(b);
  return out;
}

/* Runs argv (NULL-terminated) to completion; returns its exit status or
 * -1. stdout/stderr are inherited. */
static inline int etu_run(char *const argv[]) {
  pid_t pid = fork();
  if (pid < 0)
    return -1;
  if (pid == 0) {
    execv(argv[0], argv);
    _exit(127);
  }
  int st = 0;
  if (waitpid(pid, &st, 0) < 0)
    return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define ETU_SA_ENCODER SA_BINARY_DIR "/bin/sa-encoder"

/* Makes the tiny checkpoint in a fresh temp folder (written into dir, cap
 * bytes) with core/testmodel, the code behind `sa-model init --preset tiny
 * --seed ETU_SEED` that tests/oracle/encoder_oracle.py's golden data came
 * from. SA_TEST_TINY_MODEL names an existing folder instead (debugging).
 * Returns 0 or -1. */
static inline int etu_make_tiny(char *dir, size_t cap) {
  const char *given = getenv("SA_TEST_TINY_MODEL");
  if (given && *given) {
    snprintf(dir, cap, "%s", given);
    return 0;
  }
  snprintf(dir, cap, "/tmp/sa-enc-test-XXXXXX");
  if (!mkdtemp(dir))
    return -1;
  char err[256];
  int rc = sa_testmodel_write("tiny", ETU_SEED, dir, err, sizeof err);
  if (rc != 0)
    fprintf(stderr, "sa_testmodel_write: %s\n", err);
  return rc == 0 ? 0 : -1;
}

static inline void etu_rm_tree(const char *dir) {
  if (!dir || strncmp(dir, "/tmp/sa-enc-test-", 17) != 0)
    return;
  char *argv[] = {"/bin/rm", "-rf", (char *)dir, NULL};
  etu_run(argv);
}

typedef struct {
  pid_t pid;
  char endpoint[256];
} etu_server_t;

/* Starts a service (argv NULL-terminated, argv[0] its path) that prints
 * "listening ENDPOINT" on stdout once bound (sa-encoder, sa-worker) and waits
 * up to 60 s for that line. */
static inline int etu_spawn_listening(etu_server_t *s, char *const argv[]) {
  int fds[2];
  if (pipe(fds) != 0)
    return -1;
  pid_t pid = fork();
  if (pid < 0)
    return -1;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a failed test */
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execv(argv[0], argv);
    _exit(127);
  }
  close(fds[1]);
  s->pid = pid;
  char line[256];
  size_t got = 0;
  struct pollfd p = {.fd = fds[0], .events = POLLIN};
  while (got < sizeof line - 1) {
    if (poll(&p, 1, 60000) <= 0)
      break;
    ssize_t r = read(fds[0], line + got, 1);
    if (r <= 0)
      break;
    if (line[got] == '\n')
      break;
    got++;
  }
  line[got] = '\0';
  close(fds[0]);
  if (strncmp(line, "listening ", 10) != 0) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
  }
  snprintf(s->endpoint, sizeof s->endpoint, "%s", line + 10);
  return 0;
}

/* Starts sa-encoder with the given extra arguments (NULL-terminated list
 * after --model/--listen) and waits up to 60 s for its "listening" line. */
static inline int etu_server_start(etu_server_t *s, const char *model,
                                   char *const extra[]) {
  char *argv[40];
  int n = 0;
  argv[n++] = (char *)ETU_SA_ENCODER;
  argv[n++] = "--insecure"; /* CurveZMQ is tested in test_rpc_curve and the integration suite */
  argv[n++] = "--model";
  argv[n++] = (char *)model;
  argv[n++] = "--listen";
  argv[n++] = "tcp://127.0.0.1:*";
  argv[n++] = "--backend-threads";
  argv[n++] = "1";
  for (int i = 0; extra && extra[i] && n < 38; i++)
    argv[n++] = extra[i];
  argv[n] = NULL;
  return etu_spawn_listening(s, argv);
}

/* SIGTERM, then wait up to 30 s; returns the exit status (or -1 if it had
 * to be killed). */
static inline int etu_server_stop(etu_server_t *s) {
  if (s->pid <= 0)
    return -1;
  kill(s->pid, SIGTERM);
  for (int i = 0; i < 3000; i++) {
    int st;
    pid_t r = waitpid(s->pid, &st, WNOHANG);
    if (r == s->pid) {
      s->pid = 0;
      return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  kill(s->pid, SIGKILL);
  waitpid(s->pid, NULL, 0);
  s->pid = 0;
  return -1;
}

#endif /* SA_ENCODER_TEST_UTIL_H */
