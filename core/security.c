/* security — who may connect and who may call what; see security.h. */
#include "security.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "log.h"
#include "sa_error.h"
#include "sa_time.h"

#define DOMAIN_PREFIX "sa-roles="

/* "coordinator,stage" for a role mask. */
static void roles_str(unsigned roles, char *out, size_t cap) {
  const sa_role_t all[] = {SA_ROLE_COORDINATOR, SA_ROLE_ENCODER, SA_ROLE_STAGE, SA_ROLE_CLIENT,
                           SA_ROLE_OPERATOR};
  size_t k = 0;
  out[0] = 0;
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (roles & all[i])
      k += (size_t)snprintf(out + k, k < cap ? cap - k : 0, "%s%s", k ? "," : "",
                            sa_role_name(all[i]));
  if (!out[0])
    snprintf(out, cap, "none");
}

int sa_sec_open(sa_sec_t *s, const char *key_path, const char *allow_dir, bool insecure,
                sa_role_t want_role, char *err, size_t cap) {
  memset(s, 0, sizeof *s);
  s->insecure = insecure;
  if (insecure)
    return 0;
  if (!key_path || !key_path[0] || !allow_dir || !allow_dir[0]) {
    sa_set_err(err, cap,
               "encryption needs --key FILE and --allow DIR (sa-keys makes them), or "
               "--insecure to run in plain text");
    return SA_EINVAL;
  }
  int rc = sa_cert_load(key_path, true, &s->self, err, cap);
  if (rc)
    return rc;
  if (want_role != SA_ROLE_NONE && s->self.role != want_role) {
    sa_set_err(err, cap, "%s is a %s key; this program needs a %s key", key_path,
               sa_role_name(s->self.role), sa_role_name(want_role));
    memset(&s->self, 0, sizeof s->self);
    return SA_EINVAL;
  }
  if ((rc = sa_allow_load(allow_dir, &s->allow, err, cap)) != 0) {
    memset(&s->self, 0, sizeof s->self);
    return rc;
  }
  return 0;
}

bool sa_sec_args_take(sa_sec_args_t *a, int opt, const char *arg) {
  switch (opt) {
  case SA_SEC_OPT_KEY: a->key = arg; return true;
  case SA_SEC_OPT_ALLOW: a->allow = arg; return true;
  case SA_SEC_OPT_INSECURE: a->insecure = true; return true;
  case SA_SEC_OPT_INSECURE_NET: a->allow_insecure_network = true; return true;
  default: return false;
  }
}

int sa_sec_open_args(sa_sec_t *s, const sa_sec_args_t *a, sa_role_t want_role, char *err,
                     size_t cap) {
  const char *key = a->key ? a->key : getenv("SA_KEY");
  const char *allow = a->allow ? a->allow : getenv("SA_ALLOW");
  return sa_sec_open(s, key, allow, a->insecure, want_role, err, cap);
}

void sa_sec_close(sa_sec_t *s) {
  sa_rpc_auth_destroy(&s->auth);
  sa_allow_free(&s->allow);
  memset(&s->self, 0, sizeof s->self);
}

/* Logs a refusal: the first 10, then one line per 10 s with the count in
 * between (a flood of handshakes must not become a flood of log lines). */
static bool refusal_logged(sa_sec_t *s) {
  uint64_t now = sa_now_ms();
  if (s->handshakes_refused <= 10 || now >= s->next_refusal_log_ms) {
    if (s->handshakes_refused > 10 && s->refusals_unlogged)
      SA_LOG_WARN("security: %llu more handshakes refused since the last line",
                  (unsigned long long)s->refusals_unlogged);
    s->refusals_unlogged = 0;
    s->next_refusal_log_ms = now + 10000;
    return true;
  }
  s->refusals_unlogged++;
  return false;
}

/* The authenticator's decision: the key must be allowed, with a role the
 * server takes. */
static bool decide(const char *domain, const char *address, const uint8_t key[32],
                   char *user_id, size_t cap, void *user) {
  sa_sec_t *s = user;
  unsigned accept = 0;
  if (!strncmp(domain, DOMAIN_PREFIX, strlen(DOMAIN_PREFIX)))
    accept = (unsigned)strtoul(domain + strlen(DOMAIN_PREFIX), NULL, 10);
  char z85[SA_KEY_Z85], fp[13], want[64];
  zmq_z85_encode(z85, key, 32);
  sa_key_fingerprint(z85, fp);
  roles_str(accept, want, sizeof want);
  const sa_cert_t *c = sa_allow_find_raw(s->allow, key);
  if (!c) {
    s->handshakes_refused++;
    if (refusal_logged(s))
      SA_LOG_WARN("security: refused %s: key %s is not in the allow-list (this server takes %s)",
                address, fp, want);
    return false;
  }
  if (!(c->role & accept)) {
    s->handshakes_refused++;
    if (refusal_logged(s))
      SA_LOG_WARN("security: refused %s: key %s ('%s') is a %s key; this server takes %s",
                address, fp, c->name, sa_role_name(c->role), want);
    return false;
  }
  snprintf(user_id, cap, "%s %s", sa_role_name(c->role), c->public_key);
  return true;
}

int sa_sec_serve(sa_sec_t *s, struct uv_loop_s *loop) {
  if (s->insecure || s->auth)
    return 0;
  return sa_rpc_auth_new(loop, decide, s, &s->auth);
}

void sa_sec_server_opts(const sa_sec_t *s, sa_rpc_opts_t *o, unsigned accept_roles,
                        char domain[32]) {
  if (s->insecure)
    return;
  snprintf(domain, 32, DOMAIN_PREFIX "%u", accept_roles);
  o->curve_public_key = s->self.public_key;
  o->curve_secret_key = s->self.secret_key;
  o->zap_domain = domain; /* copied by the server's _new */
}

int sa_sec_channel_opts(const sa_sec_t *s, sa_rpc_opts_t *o, const char *server_key) {
  if (s->insecure)
    return 0;
  if (!server_key || !server_key[0])
    return SA_EINVAL;
  o->curve_public_key = s->self.public_key;
  o->curve_secret_key = s->self.secret_key;
  o->curve_server_key = server_key;
  return 0;
}

const char *sa_sec_peer_of_role(const sa_sec_t *s, sa_role_t role, char *err, size_t cap) {
  if (s->insecure)
    return "";
  int n = 0;
  const sa_cert_t *c = sa_allow_only(s->allow, role, &n);
  if (!c)
    sa_set_err(err, cap, "the allow-list has %s %s key%s; it needs exactly one",
               n ? "several" : "no", sa_role_name(role), n ? "s" : "");
  return c ? c->public_key : NULL;
}

int sa_sec_coordinator_opts(const sa_sec_t *s, sa_rpc_opts_t *o, char *err, size_t cap) {
  const char *key = sa_sec_peer_of_role(s, SA_ROLE_COORDINATOR, err, cap);
  if (!key)
    return SA_EINVAL;
  return sa_sec_channel_opts(s, o, key);
}

static bool guard_cb(const char *method, const char *peer, void *user) {
  sa_sec_guard_t *g = user;
  if (g->s->insecure)
    return true;
  sa_role_t r = sa_sec_peer_role(peer);
  for (int i = 0; i < g->n; i++)
    if (!strcmp(g->rules[i].method, method)) {
      if (r & g->rules[i].roles)
        return true;
      break;
    }
  g->s->calls_denied++;
  return false;
}

int sa_sec_guard(sa_rpc_server_t *srv, sa_sec_t *s, const sa_sec_rule_t *rules, int n_rules) {
  if (s->insecure)
    return 0;
  if (s->n_guards == SA_SEC_MAX_GUARDS)
    return SA_EFULL;
  sa_sec_guard_t *g = &s->guards[s->n_guards++];
  *g = (sa_sec_guard_t){s, rules, n_rules};
  sa_rpc_server_set_guard(srv, guard_cb, g);
  return 0;
}

sa_role_t sa_sec_peer_role(const char *peer) {
  char role[32];
  const char *sp = peer ? strchr(peer, ' ') : NULL;
  if (!sp || (size_t)(sp - peer) >= sizeof role)
    return SA_ROLE_NONE;
  memcpy(role, peer, (size_t)(sp - peer));
  role[sp - peer] = 0;
  return sa_role_parse(role);
}

const char *sa_sec_peer_key(const char *peer) {
  const char *sp = peer ? strchr(peer, ' ') : NULL;
  return sp ? sp + 1 : "";
}

/* True for endpoints only this host can reach. */
static bool local_endpoint(const char *ep) {
  if (!strncmp(ep, "ipc://", 6) || !strncmp(ep, "inproc://", 9))
    return true;
  if (strncmp(ep, "tcp://", 6) != 0)
    return false;
  const char *h = ep + 6;
  return !strncmp(h, "127.", 4) || !strncmp(h, "localhost:", 10) || !strncmp(h, "[::1]:", 6) ||
         !strncmp(h, "lo:", 3);
}

int sa_sec_check_bind(const sa_sec_t *s, const char *endpoint, bool allow_insecure_network,
                      char *err, size_t cap) {
  if (!s->insecure || allow_insecure_network || local_endpoint(endpoint))
    return 0;
  sa_set_err(err, cap,
             "refusing to serve %s in plain text: --insecure binds to loopback only; add "
             "--allow-insecure-network to expose it anyway, or use --key and --allow",
             endpoint);
  return SA_EPERM;
}
