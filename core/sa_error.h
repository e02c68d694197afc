/*
 * sa_error — the one list of error codes every sa-cluster module returns.
 *
 * Fallible functions return int: 0 on success or a negative SA_E* code.
 * The X-macro below makes the enum, sa_strerror() and the mapping to the
 * wire status codes (gRPC's code set) from a single table. This module is
 * not a logging facility; see log.h for that.
 */
#ifndef SA_ERROR_H
#define SA_ERROR_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

/* gRPC status codes, as carried on the wire (Envelope.status). */
typedef enum {
  SA_STATUS_OK = 0,
  SA_STATUS_CANCELLED = 1,
  SA_STATUS_UNKNOWN = 2,
  SA_STATUS_INVALID_ARGUMENT = 3,
  SA_STATUS_DEADLINE_EXCEEDED = 4,
  SA_STATUS_NOT_FOUND = 5,
  SA_STATUS_ALREADY_EXISTS = 6,
  SA_STATUS_PERMISSION_DENIED = 7,
  SA_STATUS_RESOURCE_EXHAUSTED = 8,
  SA_STATUS_FAILED_PRECONDITION = 9,
  SA_STATUS_ABORTED = 10,
  SA_STATUS_OUT_OF_RANGE = 11,
  SA_STATUS_UNIMPLEMENTED = 12,
  SA_STATUS_INTERNAL = 13,
  SA_STATUS_UNAVAILABLE = 14,
  SA_STATUS_DATA_LOSS = 15,
  SA_STATUS_UNAUTHENTICATED = 16,
} sa_status_t;

/* X(NAME, value, message, wire status) */
#define SA_ERRNO_MAP(X)                                                        \
  X(EINVAL, -1, "invalid argument", SA_STATUS_INVALID_ARGUMENT)                \
  X(ENOMEM, -2, "out of memory", SA_STATUS_RESOURCE_EXHAUSTED)                 \
  X(EIO, -3, "input/output error", SA_STATUS_INTERNAL)                         \
  X(ENOENT, -4, "not found", SA_STATUS_NOT_FOUND)                              \
  X(ETIMEDOUT, -5, "deadline exceeded", SA_STATUS_DEADLINE_EXCEEDED)           \
  X(ECANCELED, -6, "cancelled", SA_STATUS_CANCELLED)                           \
  X(EUNAVAIL, -7, "unavailable", SA_STATUS_UNAVAILABLE)                        \
  X(EFULL, -8, "resource exhausted", SA_STATUS_RESOURCE_EXHAUSTED)             \
  X(EPROTO, -9, "malformed message", SA_STATUS_INVALID_ARGUMENT)               \
  X(EUNIMPL, -10, "not implemented", SA_STATUS_UNIMPLEMENTED)                  \
  X(EFORMAT, -11, "malformed file or data", SA_STATUS_INVALID_ARGUMENT)        \
  X(ERANGE, -12, "out of range", SA_STATUS_OUT_OF_RANGE)                       \
  X(EEXIST, -13, "already exists", SA_STATUS_ALREADY_EXISTS)                   \
  X(ESTATE, -14, "failed precondition", SA_STATUS_FAILED_PRECONDITION)         \
  X(EABORTED, -15, "aborted", SA_STATUS_ABORTED)                               \
  X(EUNKNOWN, -16, "unknown error", SA_STATUS_UNKNOWN)                         \
  X(ENODEV, -17, "no such device", SA_STATUS_UNAVAILABLE)                      \
  X(ECUDA, -18, "CUDA error", SA_STATUS_INTERNAL)                              \
  X(EINTERNAL, -19, "internal error", SA_STATUS_INTERNAL)                      \
  X(EAUTH, -20, "unauthenticated", SA_STATUS_UNAUTHENTICATED)                  \
  X(EPERM, -21, "permission denied", SA_STATUS_PERMISSION_DENIED)              \
  X(EDATALOSS, -22, "data loss", SA_STATUS_DATA_LOSS)

typedef enum {
  SA_OK = 0,
#define SA__ERR_ENUM(name, val, msg, st) SA_##name = (val),
  SA_ERRNO_MAP(SA__ERR_ENUM)
#undef SA__ERR_ENUM
} sa_errno_t;

/* Returns a static string describing err (0 or an SA_E* code). Never NULL. */
const char *sa_strerror(int err);

/* Returns the symbolic name of err, e.g. "SA_EINVAL". Never NULL. */
const char *sa_err_name(int err);

/* Maps an error code to the wire status carried in Envelope.status. */
sa_status_t sa_err_to_status(int err);

/* Maps a wire status to the closest error code (SA_OK for SA_STATUS_OK). */
int sa_status_to_err(sa_status_t status);

/* Returns gRPC's name of a status code, e.g. "DEADLINE_EXCEEDED". Never NULL. */
const char *sa_status_name(sa_status_t status);

/* Writes a printf-style message into err[cap] for the caller (the
 * "char *err, size_t cap" convention of every loader and parser here):
 * truncated to fit, always NUL-terminated; err NULL or cap 0 is a no-op. */
void sa_set_err(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Invariant check that names the file, the line and why; aborts. For
 * conditions that are bugs in our code, never for bad input. */
#define SA_ASSERT(cond, why)                                                   \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: assertion failed: %s (%s)\n", __FILE__,          \
              __LINE__, #cond, (why));                                         \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#endif /* SA_ERROR_H */
