/*
 * common — the coordinator's address and the channel's keys (common.h).
 */
#include "common.h"

#include "sa_error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char *sa_client_coordinator_addr(const char *given) {
  if (given)
    return given;
  const char *env = getenv("SA_COORDINATOR");
  return env && *env ? env : SA_DEFAULT_COORDINATOR;
}

const char *sa_client_finish_name(int reason) {
  static const char *const reasons[] = {"running", "eot",   "length",           "cancelled",
                                        "error",   "client_cancelled", "stop"};
  return reason >= 0 && reason < 7 ? reasons[reason] : "?";
}

int sa_client_security(const char *prog, const sa_sec_args_t *a, sa_sec_t *sec, sa_rpc_opts_t *o,
                           bool operator_only) {
  char err[512];
  int rc = sa_sec_open_args(sec, a, SA_ROLE_NONE, err, sizeof err);
  if (rc == 0 && !sec->insecure && sec->self.role != SA_ROLE_OPERATOR &&
      (operator_only || sec->self.role != SA_ROLE_CLIENT)) {
    snprintf(err, sizeof err, "this is a %s key; %s needs %s key", sa_role_name(sec->self.role),
             operator_only ? "drain" : prog,
             operator_only ? "an operator" : "a client or operator");
    rc = SA_EINVAL;
  }
  if (rc || sa_sec_coordinator_opts(sec, o, err, sizeof err)) {
    fprintf(stderr, "%s: %s\n", prog, err);
    sa_sec_close(sec);
    return 2;
  }
  return 0;
}


int sa_client_read_file(const char *path, size_t max_bytes, uint8_t **out, size_t *len, char *err,
                        size_t cap) {
  struct stat st;
  FILE *f = NULL;
  errno = 0;
  if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || !(f = fopen(path, "rb"))) {
    sa_set_err(err, cap, "%s: %s", path, errno ? strerror(errno) : "not a regular file");
    return SA_EIO;
  }
  if (st.st_size == 0 || (uint64_t)st.st_size > max_bytes) {
    sa_set_err(err, cap, "%s: %lld bytes (must be 1..%zu)", path, (long long)st.st_size,
               max_bytes);
    fclose(f);
    return SA_EINVAL;
  }
  uint8_t *buf = malloc((size_t)st.st_size + 1);
  if (!buf || fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
    sa_set_err(err, cap, "%s: cannot read", path);
    free(buf);
    fclose(f);
    return SA_EIO;
  }
  fclose(f);
  buf[st.st_size] = 0;
  *out = buf;
  *len = (size_t)st.st_size;
  return 0;
}
