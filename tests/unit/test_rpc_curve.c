/* Tests for CurveZMQ in core/rpc and its policy in core/security: a real
 * CURVE server and channels on tcp loopback, the process's authenticator
 * (ZAP) deciding from an allow-list, and the guard deciding per method.
 * Callbacks are counted (libuv's style): a refused peer's call must never
 * reach a handler. Keys and allow-lists are made with core/keys in a
 * temporary folder. No test depends on timing: waits are "until this
 * happens" under a generous guard; the wrong-server-key case has no
 * deadline at all, so it passes only if the handshake failure itself ends
 * the call. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>
#include <zmq.h>

#include "keys.h"
#include "rpc.h"
#include "security.h"

#define GUARD_MS 20000

static void guard_timer_cb(uv_timer_t *t) { *(bool *)t->data = true; }

#define RUN_UNTIL(loop, cond, what)                                            \
  do {                                                                         \
    uv_timer_t g_;                                                             \
    bool f_ = false;                                                           \
    uv_timer_init((loop), &g_);                                                \
    g_.data = &f_;                                                             \
    uv_timer_start(&g_, guard_timer_cb, GUARD_MS, 0);                          \
    while (!(cond) && !f_)                                                     \
      uv_run((loop), UV_RUN_ONCE);                                             \
    uv_close((uv_handle_t *)&g_, NULL);                                        \
    uv_run((loop), UV_RUN_NOWAIT);                                             \
    if (!(cond))                                                               \
      fail_msg("timed out waiting for: %s", (what));                           \
  } while (0)

static char g_dir[256], g_allow[300];
static uv_loop_t g_loop;
static sa_sec_t g_sec;
static sa_rpc_server_t *g_srv;
static char g_ep[256];
static sa_cert_t g_server, g_client, g_stage, g_stranger;
static int g_handled;
static char g_last_peer[128];

static const sa_sec_rule_t k_rules[] = {
    {"Test/Echo", SA_ROLE_CLIENT | SA_ROLE_STAGE},
    {"Test/StageOnly", SA_ROLE_STAGE},
};

static void echo_handler(sa_rpc_call_t *call, void *user) {
  (void)user;
  g_handled++;
  snprintf(g_last_peer, sizeof g_last_peer, "%s", sa_rpc_call_peer(call));
  size_t len;
  const void *b = sa_rpc_call_request(call, &len);
  assert_int_equal(sa_rpc_call_reply(call, SA_STATUS_OK, NULL, b, len, NULL, 0), 0);
}

typedef struct {
  bool done;
  sa_status_t status;
  char msg[512];
  char body[64];
} res_t;

static void unary_cb(sa_rpc_channel_t *ch, const sa_rpc_result_t *r, void *user) {
  (void)ch;
  res_t *s = user;
  s->done = true;
  s->status = r->status;
  snprintf(s->msg, sizeof s->msg, "%s", r->status_msg);
  snprintf(s->body, sizeof s->body, "%.*s", (int)r->body_len, (const char *)r->body);
}

/* One call on a new channel with keys `me` to a server with key srv_key;
 * no deadline. */
static res_t call_as(const sa_cert_t *me, const char *srv_key, const char *method) {
  sa_rpc_opts_t o;
  sa_rpc_opts_default(&o);
  if (me) {
    o.curve_public_key = me->public_key;
    o.curve_secret_key = me->secret_key;
    o.curve_server_key = srv_key;
  }
  sa_rpc_channel_t *ch = NULL;
  assert_int_equal(sa_rpc_channel_new(&g_loop, g_ep, &o, &ch), 0);
  res_t r = {0};
  assert_int_equal(sa_rpc_channel_call(ch, method, "ping", 4, NULL, 0, NULL, unary_cb, &r, NULL),
                   0);
  RUN_UNTIL(&g_loop, r.done, method);
  sa_rpc_channel_destroy(&ch);
  uv_run(&g_loop, UV_RUN_NOWAIT);
  return r;
}

static void make_key(sa_cert_t *c, const char *name, sa_role_t role, bool allow) {
  char err[256];
  assert_int_equal(sa_cert_generate(name, role, c, err, sizeof err), 0);
  assert_int_equal(sa_cert_save(c, g_dir, err, sizeof err), 0);
  if (allow) {
    char path[400];
    snprintf(path, sizeof path, "%s/%s.pub", g_allow, name);
    assert_int_equal(sa_cert_save_public(c, path, err, sizeof err), 0);
  }
}

static int setup(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "/tmp/sa_test_curve_XXXXXX");
  if (!mkdtemp(g_dir))
    return 1;
  snprintf(g_allow, sizeof g_allow, "%s/allow", g_dir);
  mkdir(g_allow, 0755);
  make_key(&g_server, "server", SA_ROLE_COORDINATOR, true);
  make_key(&g_client, "client", SA_ROLE_CLIENT, true);
  make_key(&g_stage, "stage", SA_ROLE_STAGE, true);
  make_key(&g_stranger, "stranger", SA_ROLE_CLIENT, false);
  uv_loop_init(&g_loop);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  sa_rpc_server_destroy(&g_srv);
  sa_sec_close(&g_sec);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  uv_loop_close(&g_loop);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) != 0;
}

/* A CURVE server cannot start without the authenticator; then it serves. */
static void test_server_up(void **state) {
  (void)state;
  char err[256], key[300], domain[32];
  snprintf(key, sizeof key, "%s/server.key", g_dir);
  sa_rpc_opts_t o;
  sa_rpc_opts_default(&o);
  o.curve_public_key = g_server.public_key;
  o.curve_secret_key = g_server.secret_key;
  assert_int_equal(sa_rpc_server_new(&g_loop, &o, &g_srv), SA_EINVAL);
  assert_null(g_srv);

  assert_int_equal(sa_sec_open(&g_sec, key, g_allow, false, SA_ROLE_COORDINATOR, err, sizeof err),
                   0);
  assert_int_equal(sa_allow_count(g_sec.allow), 3);
  assert_int_equal(sa_sec_serve(&g_sec, &g_loop), 0);
  sa_rpc_auth_t *second = NULL;
  assert_int_equal(sa_rpc_auth_new(&g_loop, NULL, NULL, &second), SA_EINVAL);
  sa_rpc_opts_default(&o);
  sa_sec_server_opts(&g_sec, &o, SA_ROLE_CLIENT | SA_ROLE_STAGE, domain);
  assert_int_equal(sa_rpc_server_new(&g_loop, &o, &g_srv), 0);
  assert_int_equal(sa_rpc_server_register(g_srv, "Test/Echo", SA_RPC_UNARY, echo_handler, NULL), 0);
  assert_int_equal(
      sa_rpc_server_register(g_srv, "Test/StageOnly", SA_RPC_UNARY, echo_handler, NULL), 0);
  assert_int_equal(
      sa_rpc_server_register(g_srv, "Test/Unlisted", SA_RPC_UNARY, echo_handler, NULL), 0);
  assert_int_equal(sa_sec_guard(g_srv, &g_sec, k_rules, 2), 0);
  assert_int_equal(sa_rpc_server_bind(g_srv, "tcp://127.0.0.1:*"), 0);
  snprintf(g_ep, sizeof g_ep, "%s", sa_rpc_server_endpoint(g_srv));
}

/* An allowed key gets through, and the handler sees who it is. */
static void test_allowed(void **state) {
  (void)state;
  res_t r = call_as(&g_client, g_server.public_key, "Test/Echo");
  assert_int_equal(r.status, SA_STATUS_OK);
  assert_string_equal(r.body, "ping");
  assert_int_equal(g_handled, 1);
  char want[128];
  snprintf(want, sizeof want, "client %s", g_client.public_key);
  assert_string_equal(g_last_peer, want);
  assert_int_equal(sa_sec_peer_role(g_last_peer), SA_ROLE_CLIENT);
  assert_string_equal(sa_sec_peer_key(g_last_peer), g_client.public_key);
  r = call_as(&g_stage, g_server.public_key, "Test/StageOnly");
  assert_int_equal(r.status, SA_STATUS_OK);
  assert_int_equal(g_handled, 2);
}

/* A key not in the allow-list is refused at the handshake: its call ends
 * UNAUTHENTICATED without a deadline, the handler never runs, the refusal
 * is counted. */
static void test_stranger(void **state) {
  (void)state;
  uint64_t before = g_sec.handshakes_refused;
  res_t r = call_as(&g_stranger, g_server.public_key, "Test/Echo");
  assert_int_equal(r.status, SA_STATUS_UNAUTHENTICATED);
  assert_non_null(strstr(r.msg, "refused this key"));
  assert_int_equal(g_handled, 2);
  assert_true(g_sec.handshakes_refused > before);
}

/* A server key that is not the server's: the handshake fails and the call
 * ends (no deadline was set), readable. */
static void test_wrong_server_key(void **state) {
  (void)state;
  res_t r = call_as(&g_client, g_stage.public_key, "Test/Echo");
  assert_int_equal(r.status, SA_STATUS_UNAUTHENTICATED);
  assert_non_null(strstr(r.msg, "handshake"));
  assert_int_equal(g_handled, 2);
}

/* A plain-text peer never gets a frame to a handler: our channel without
 * keys, and a raw ZeroMQ DEALER sending a well-formed request. */
static void test_plaintext(void **state) {
  (void)state;
  res_t r = call_as(NULL, NULL, "Test/Echo");
  assert_true(r.status != SA_STATUS_OK);
  void *raw = zmq_socket(zmq_ctx_new(), ZMQ_DEALER);
  int zero = 0;
  zmq_setsockopt(raw, ZMQ_LINGER, &zero, sizeof zero);
  assert_int_equal(zmq_connect(raw, g_ep), 0);
  zmq_send(raw, "x", 1, ZMQ_DONTWAIT | ZMQ_SNDMORE);
  zmq_send(raw, "ping", 4, ZMQ_DONTWAIT);
  /* then an allowed client: the server still serves, and only it was seen */
  r = call_as(&g_client, g_server.public_key, "Test/Echo");
  assert_int_equal(r.status, SA_STATUS_OK);
  assert_int_equal(g_handled, 3);
  zmq_close(raw);
}

/* Roles per method: a client key cannot call a stage method, an unlisted
 * method is nobody's; both PERMISSION_DENIED, handler untouched. And a
 * stage key cannot connect to a server that takes only clients. */
static void test_roles(void **state) {
  (void)state;
  uint64_t denied = g_sec.calls_denied;
  res_t r = call_as(&g_client, g_server.public_key, "Test/StageOnly");
  assert_int_equal(r.status, SA_STATUS_PERMISSION_DENIED);
  assert_non_null(strstr(r.msg, "client"));
  r = call_as(&g_stage, g_server.public_key, "Test/Unlisted");
  assert_int_equal(r.status, SA_STATUS_PERMISSION_DENIED);
  assert_int_equal(g_sec.calls_denied, denied + 2);
  assert_int_equal(g_handled, 3);

  /* a second server of the same process taking clients only */
  sa_rpc_opts_t o;
  char domain[32];
  sa_rpc_opts_default(&o);
  sa_sec_server_opts(&g_sec, &o, SA_ROLE_CLIENT, domain);
  sa_rpc_server_t *only = NULL;
  assert_int_equal(sa_rpc_server_new(&g_loop, &o, &only), 0);
  assert_int_equal(sa_rpc_server_register(only, "Test/Echo", SA_RPC_UNARY, echo_handler, NULL), 0);
  assert_int_equal(sa_rpc_server_bind(only, "tcp://127.0.0.1:*"), 0);
  char keep[256];
  snprintf(keep, sizeof keep, "%s", g_ep);
  snprintf(g_ep, sizeof g_ep, "%s", sa_rpc_server_endpoint(only));
  r = call_as(&g_stage, g_server.public_key, "Test/Echo");
  assert_int_equal(r.status, SA_STATUS_UNAUTHENTICATED);
  r = call_as(&g_client, g_server.public_key, "Test/Echo");
  assert_int_equal(r.status, SA_STATUS_OK);
  assert_int_equal(g_handled, 4);
  snprintf(g_ep, sizeof g_ep, "%s", keep);
  sa_rpc_server_destroy(&only);
}

/* Key files: bad permissions, bad Z85, a secret that is not the pair's, a
 * .pub given as the key, the wrong role, a bad file in the allow-list. */
static void test_key_files(void **state) {
  (void)state;
  char err[256], path[400];
  sa_cert_t c;
  snprintf(path, sizeof path, "%s/client.key", g_dir);
  assert_int_equal(sa_cert_load(path, true, &c, err, sizeof err), 0);
  assert_string_equal(c.public_key, g_client.public_key);
  chmod(path, 0644);
  assert_int_equal(sa_cert_load(path, true, &c, err, sizeof err), SA_EPERM);
  assert_non_null(strstr(err, "chmod 600"));
  chmod(path, 0600);
  snprintf(path, sizeof path, "%s/client.pub", g_dir);
  assert_int_equal(sa_cert_load(path, true, &c, err, sizeof err), SA_EINVAL);
  assert_non_null(strstr(err, "no secret key"));
  sa_sec_t s;
  snprintf(path, sizeof path, "%s/stage.key", g_dir);
  assert_int_equal(sa_sec_open(&s, path, g_allow, false, SA_ROLE_CLIENT, err, sizeof err),
                   SA_EINVAL);
  assert_non_null(strstr(err, "stage key"));
  assert_int_equal(sa_sec_open(&s, NULL, NULL, false, SA_ROLE_CLIENT, err, sizeof err), SA_EINVAL);
  assert_non_null(strstr(err, "--insecure"));

  const char *bad[] = {
      "metadata\n    role = \"client\"\ncurve\n    public-key = \"short\"\n",
      "metadata\n    role = \"admin\"\n",
      "curve\n    public-key = unterminated \"\n",
      "metadata\n    role \"client\"\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(sa_cert_parse(bad[i], strlen(bad[i]), &c, err, sizeof err), SA_EINVAL);
  }
  char mixed[512];
  snprintf(mixed, sizeof mixed,
           "metadata\n    role = \"client\"\ncurve\n    public-key = \"%s\"\n"
           "    secret-key = \"%s\"\n",
           g_client.public_key, g_stage.secret_key);
  assert_int_equal(sa_cert_parse(mixed, strlen(mixed), &c, err, sizeof err), SA_EINVAL);
  assert_non_null(strstr(err, "does not belong"));
  snprintf(mixed, sizeof mixed, "metadata\n    role = \"client\"\ncurve\n    public-key = \"%.39s~\"\n",
           g_client.public_key);
  assert_int_equal(sa_cert_parse(mixed, strlen(mixed), &c, err, sizeof err), SA_EINVAL);
  assert_non_null(strstr(err, "Z85"));

  snprintf(path, sizeof path, "%s/broken.pub", g_allow);
  FILE *f = fopen(path, "w");
  fputs("not a key\n", f);
  fclose(f);
  sa_allow_t *a = NULL;
  assert_int_equal(sa_allow_load(g_allow, &a, err, sizeof err), SA_EINVAL);
  assert_non_null(strstr(err, "broken.pub"));
  unlink(path);
  /* a key file cannot be overwritten by accident */
  assert_int_equal(sa_cert_save(&g_client, g_dir, err, sizeof err), SA_EEXIST);
}

/* Plain text binds to loopback only unless asked. */
static void test_bind_policy(void **state) {
  (void)state;
  sa_sec_t s;
  char err[256];
  assert_int_equal(sa_sec_open(&s, NULL, NULL, true, SA_ROLE_NONE, err, sizeof err), 0);
  assert_int_equal(sa_sec_check_bind(&s, "tcp://127.0.0.1:5555", false, err, sizeof err), 0);
  assert_int_equal(sa_sec_check_bind(&s, "ipc:///tmp/x", false, err, sizeof err), 0);
  assert_int_equal(sa_sec_check_bind(&s, "tcp://*:5555", false, err, sizeof err), SA_EPERM);
  assert_non_null(strstr(err, "--allow-insecure-network"));
  assert_int_equal(sa_sec_check_bind(&s, "tcp://0.0.0.0:5555", true, err, sizeof err), 0);
  assert_int_equal(sa_sec_check_bind(&g_sec, "tcp://*:5555", false, err, sizeof err), 0);
  sa_sec_close(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_server_up),   cmocka_unit_test(test_allowed),
      cmocka_unit_test(test_stranger),    cmocka_unit_test(test_wrong_server_key),
      cmocka_unit_test(test_plaintext),   cmocka_unit_test(test_roles),
      cmocka_unit_test(test_key_files),   cmocka_unit_test(test_bind_policy),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
