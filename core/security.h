/*
 * security — who may connect and who may call what (docs/security.md), on
 * top of core/rpc's CurveZMQ and core/keys' files.
 *
 * Every process has a key pair (--key NAME.key) and an allow-list folder
 * (--allow DIR). Its servers accept a handshake only from a key in the
 * allow-list whose role is one the server takes (encoded in the server's
 * ZAP domain); refusals are logged with the peer's address, the key's
 * fingerprint and the role, and counted. An accepted peer's identity is
 * "ROLE PUBLICKEY" (sa_rpc_call_peer), and the server's guard checks each
 * method against a table of roles. Channels authenticate the server by its
 * public key: the coordinator's comes from the allow-list (the one key of
 * role coordinator); stages' and encoders' from their registration.
 *
 * --insecure turns all of it off (plain text, no identities); binding a
 * non-loopback address that way needs --allow-insecure-network too.
 *
 * Threads: the loop that called sa_sec_serve runs the authenticator and
 * writes the counters; everything else is read-only after sa_sec_open.
 */
#ifndef SA_SECURITY_H
#define SA_SECURITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keys.h"
#include "rpc.h"

/* A method and the roles that may call it. */
typedef struct {
  const char *method;
  unsigned roles; /* SA_ROLE_* bits */
} sa_sec_rule_t;

#define SA_SEC_MAX_GUARDS 4

typedef struct sa_sec sa_sec_t;

typedef struct {
  sa_sec_t *s;
  const sa_sec_rule_t *rules;
  int n;
} sa_sec_guard_t;

struct sa_sec {
  bool insecure;
  sa_cert_t self;    /* this process's key pair (zeroed when insecure) */
  sa_allow_t *allow; /* NULL when insecure */
  sa_rpc_auth_t *auth;
  uint64_t handshakes_refused; /* written by the authenticator */
  uint64_t calls_denied;       /* written by the guards */
  uint64_t refusals_unlogged, next_refusal_log_ms; /* the refusal log's rate limit */
  sa_sec_guard_t guards[SA_SEC_MAX_GUARDS];
  int n_guards;
};

/* The options every program takes (getopt_long: put SA_SEC_LONGOPTS in the
 * table, hand each option to sa_sec_args_take, print SA_SEC_USAGE). The
 * environment's SA_KEY and SA_ALLOW stand in for --key and --allow. */
typedef struct {
  const char *key, *allow;
  bool insecure, allow_insecure_network;
} sa_sec_args_t;

enum { SA_SEC_OPT_KEY = 0x5300, SA_SEC_OPT_ALLOW, SA_SEC_OPT_INSECURE, SA_SEC_OPT_INSECURE_NET };

#define SA_SEC_LONGOPTS                                                                         \
  {"key", required_argument, 0, SA_SEC_OPT_KEY}, {"allow", required_argument, 0, SA_SEC_OPT_ALLOW}, \
      {"insecure", no_argument, 0, SA_SEC_OPT_INSECURE},                                        \
      {"allow-insecure-network", no_argument, 0, SA_SEC_OPT_INSECURE_NET}

#define SA_SEC_USAGE                                                                    \
  "  --key FILE             this process's CurveZMQ key (NAME.key from sa-keys;\n"    \
  "                         env SA_KEY)\n"                                             \
  "  --allow DIR            the public keys it accepts, with their roles (env\n"      \
  "                         SA_ALLOW)\n"                                               \
  "  --insecure             no encryption or authentication (loopback only)\n"        \
  "  --allow-insecure-network  with --insecure, bind non-loopback addresses too\n"

/* True if opt was one of SA_SEC_LONGOPTS (and is now recorded in a). */
bool sa_sec_args_take(sa_sec_args_t *a, int opt, const char *arg);

/* sa_sec_open from parsed arguments (and the environment). */
int sa_sec_open_args(sa_sec_t *s, const sa_sec_args_t *a, sa_role_t want_role, char *err,
                     size_t cap);

/* Loads the key pair and the allow-list. insecure: neither is read (both
 * may be NULL). Otherwise both are required; the key's role must be
 * want_role (SA_ROLE_NONE: any). 0 or an error with err filled (bad
 * permissions, bad Z85, missing files, wrong role). */
int sa_sec_open(sa_sec_t *s, const char *key_path, const char *allow_dir, bool insecure,
                sa_role_t want_role, char *err, size_t cap);
void sa_sec_close(sa_sec_t *s);

/* Starts the process's authenticator on loop (before any server). A no-op
 * when insecure. */
int sa_sec_serve(sa_sec_t *s, struct uv_loop_s *loop);

/* Sets a server's keys and ZAP domain (written to domain[32], which must
 * live until the server's _new): it will accept the roles given. */
void sa_sec_server_opts(const sa_sec_t *s, sa_rpc_opts_t *o, unsigned accept_roles,
                        char domain[32]);

/* Sets a channel's keys for a server whose public key is server_key (Z85).
 * When secure and server_key is NULL or "": SA_EINVAL. */
int sa_sec_channel_opts(const sa_sec_t *s, sa_rpc_opts_t *o, const char *server_key);

/* Channel options for calling the coordinator: s's keys, and the
 * coordinator's key from the allow-list (nothing when insecure). 0, or
 * SA_EINVAL with err saying what the allow-list lacks. */
int sa_sec_coordinator_opts(const sa_sec_t *s, sa_rpc_opts_t *o, char *err, size_t cap);

/* The public key of the one key of role in the allow-list (e.g. the
 * coordinator's, for the processes that call it). NULL with err when there
 * is none or several; "" when insecure. */
const char *sa_sec_peer_of_role(const sa_sec_t *s, sa_role_t role, char *err, size_t cap);

/* Installs a guard on srv: a call is let through when the peer's role is
 * in the rule for its method (methods not in rules: refused, counted).
 * Insecure: everything goes. rules and s must outlive srv. 0, or SA_EFULL
 * past SA_SEC_MAX_GUARDS servers. */
int sa_sec_guard(sa_rpc_server_t *srv, sa_sec_t *s, const sa_sec_rule_t *rules, int n_rules);

/* The role and key (Z85) in a peer identity ("ROLE KEY"); SA_ROLE_NONE and
 * "" for a plain-text peer. */
sa_role_t sa_sec_peer_role(const char *peer);
const char *sa_sec_peer_key(const char *peer);

/* Refuses (SA_EPERM, err says why) to bind a plain-text server anywhere
 * but loopback, ipc or inproc unless allow_insecure_network. 0 otherwise. */
int sa_sec_check_bind(const sa_sec_t *s, const char *endpoint, bool allow_insecure_network,
                      char *err, size_t cap);

#endif /* SA_SECURITY_H */
