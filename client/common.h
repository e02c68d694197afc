/*
 * common — what sa-client and sa-load both need before their first call:
 * the coordinator's address and the channel's keys.
 */
#ifndef SA_CLIENT_COMMON_H
#define SA_CLIENT_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc.h"
#include "security.h"

#define SA_DEFAULT_COORDINATOR "tcp://127.0.0.1:7700"

/* given, else $SA_COORDINATOR, else SA_DEFAULT_COORDINATOR. */
const char *sa_client_coordinator_addr(const char *given);

/* The channel's keys: ours (a client or operator key; operator_only: an
 * operator's), and the coordinator's from the allow-list. Returns 0, or 2
 * (bad usage) with the reason printed after "prog: ". */
int sa_client_security(const char *prog, const sa_sec_args_t *a, sa_sec_t *sec,
                       sa_rpc_opts_t *o, bool operator_only);

/* The name of a chain's Sa__FinishReason ("eot", "length", ...; "?" if
 * unknown). */
const char *sa_client_finish_name(int reason);

/* Reads the regular file path, 1..max_bytes long, into *out (malloc'd, one
 * NUL byte past *len so that text can be used as a string). Returns 0, or
 * SA_EIO / SA_EINVAL with the reason (naming path) in err. */
int sa_client_read_file(const char *path, size_t max_bytes, uint8_t **out, size_t *len, char *err,
                        size_t cap);

#endif
