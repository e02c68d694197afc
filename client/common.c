/*
 * common — the coordinator's address and the channel's keys (common.h).
 */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>

const char *sa_client_coordinator_addr(const char *given) {
  if (given)
    return given;
  const char *env = getenv("SA_COORDINATOR");
  return env && *env ? env : SA_DEFAULT_COORDINATOR;
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

