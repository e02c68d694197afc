/* sa_error — strings and wire mapping for the SA_E* codes (see sa_error.h). */
#include "sa_error.h"

#include <stdarg.h>

void sa_set_err(char *err, size_t cap, const char *fmt, ...) {
  if (!err || cap == 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, cap, fmt, ap);
  va_end(ap);
}

const char *sa_strerror(int err) {
  switch (err) {
  case SA_OK:
    return "ok";
#define SA__ERR_STR(name, val, msg, st)                                        \
  case SA_##name:                                                              \
    return msg;
    SA_ERRNO_MAP(SA__ERR_STR)
#undef SA__ERR_STR
  default:
    return "unrecognised error code";
  }
}

const char *sa_err_name(int err) {
  switch (err) {
  case SA_OK:
    return "SA_OK";
#define SA__ERR_NAME(name, val, msg, st)                                       \
  case SA_##name:                                                              \
    return "SA_" #name;
    SA_ERRNO_MAP(SA__ERR_NAME)
#undef SA__ERR_NAME
  default:
    return "SA_E?";
  }
}

sa_status_t sa_err_to_status(int err) {
  switch (err) {
  case SA_OK:
    return SA_STATUS_OK;
#define SA__ERR_ST(name, val, msg, st)                                         \
  case SA_##name:                                                              \
    return st;
    SA_ERRNO_MAP(SA__ERR_ST)
#undef SA__ERR_ST
  default:
    return SA_STATUS_UNKNOWN;
  }
}

int sa_status_to_err(sa_status_t status) {
  switch (status) {
  case SA_STATUS_OK: return SA_OK;
  case SA_STATUS_CANCELLED: return SA_ECANCELED;
  case SA_STATUS_UNKNOWN: return SA_EUNKNOWN;
  case SA_STATUS_INVALID_ARGUMENT: return SA_EINVAL;
  case SA_STATUS_DEADLINE_EXCEEDED: return SA_ETIMEDOUT;
  case SA_STATUS_NOT_FOUND: return SA_ENOENT;
  case SA_STATUS_ALREADY_EXISTS: return SA_EEXIST;
  case SA_STATUS_PERMISSION_DENIED: return SA_EPERM;
  case SA_STATUS_RESOURCE_EXHAUSTED: return SA_EFULL;
  case SA_STATUS_FAILED_PRECONDITION: return SA_ESTATE;
  case SA_STATUS_ABORTED: return SA_EABORTED;
  case SA_STATUS_OUT_OF_RANGE: return SA_ERANGE;
  case SA_STATUS_UNIMPLEMENTED: return SA_EUNIMPL;
  case SA_STATUS_INTERNAL: return SA_EINTERNAL;
  case SA_STATUS_UNAVAILABLE: return SA_EUNAVAIL;
  case SA_STATUS_DATA_LOSS: return SA_EDATALOSS;
  case SA_STATUS_UNAUTHENTICATED: return SA_EAUTH;
  }
  return SA_EUNKNOWN;
}

const char *sa_status_name(sa_status_t status) {
  static const char *const names[] = {
      "OK",           "CANCELLED",          "UNKNOWN",
      "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION", "ABORTED",      "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",          "UNAVAILABLE",
      "DATA_LOSS",    "UNAUTHENTICATED"};
  if ((int)status < 0 || (int)status >= (int)(sizeof names / sizeof names[0]))
    return "UNKNOWN";
  return names[status];
}
