/*
 * test_registry — coordinator/registry.c without sockets (a registry given
 * no loop opens no channels): registration checks, replica assembly,
 * heartbeats and timeouts, the callbacks it reports with (counted, in
 * order), encoder and replica picking, KV reservations.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "registry.h"

/* The callbacks, as a log: 'L' + replica for replica_lost, 'C' for changed. */
static char g_log[256];
static size_t g_n_log;

static void on_lost(void *user, int ri, const char *why) {
  (void)user;
  assert_non_null(why);
  if (g_n_log + 8 >= sizeof g_log)
    return;
  g_n_log += (size_t)snprintf(g_log + g_n_log, sizeof g_log - g_n_log, "L%d ", ri);
}

static void on_changed(void *user) {
  (void)user;
  if (g_n_log + 8 >= sizeof g_log)
    return;
  g_n_log += (size_t)snprintf(g_log + g_n_log, sizeof g_log - g_n_log, "C ");
}

static const coord_registry_cbs_t k_cbs = {.replica_lost = on_lost, .changed = on_changed};
static coord_registry_t g_reg;

static void reset(void) {
  coord_registry_init(&g_reg, NULL, 6, 64, 1000, &k_cbs, NULL);
  g_log[0] = '\0';
  g_n_log = 0;
}

static int stage(const char *id, const char *replica, int first, int last, int kv, uint64_t now) {
  Sa__RegisterRequest rq = SA__REGISTER_REQUEST__INIT;
  char addr[64];
  snprintf(addr, sizeof addr, "tcp://127.0.0.1:%d", 7000 + first);
  rq.node_id = (char *)id;
  rq.address = addr;
  rq.role = SA__ROLE__ROLE_STAGE;
  rq.first_layer = first;
  rq.last_layer = last;
  rq.num_layers = 6;
  rq.kv_blocks_total = kv;
  rq.kv_block_tokens = 16;
  rq.max_batch = 32;
  rq.max_tokens_per_step = 512;
  rq.replica_name = (char *)replica;
  char err[256];
  return coord_registry_register(&g_reg, &rq, "", now, err, sizeof err);
}

static int encoder(const char *id, uint64_t now) {
  Sa__RegisterRequest rq = SA__REGISTER_REQUEST__INIT;
  rq.node_id = (char *)id;
  rq.address = "tcp://127.0.0.1:7100";
  rq.role = SA__ROLE__ROLE_ENCODER;
  rq.hidden_size = 64;
  char err[256];
  return coord_registry_register(&g_reg, &rq, "", now, err, sizeof err);
}

static void heartbeat(const char *id, uint64_t now) {
  Sa__HeartbeatRequest hb = SA__HEARTBEAT_REQUEST__INIT;
  hb.node_id = (char *)id;
  assert_true(coord_registry_heartbeat(&g_reg, &hb, now) >= 0);
}

static void test_refusals(void **state) {
  (void)state;
  reset();
  char err[256];
  Sa__RegisterRequest rq = SA__REGISTER_REQUEST__INIT;
  assert_int_equal(coord_registry_register(&g_reg, &rq, "", 0, err, sizeof err), SA_EINVAL);
  assert_non_null(strstr(err, "node_id"));
  assert_int_equal(stage("s", "r0", 4, 9, 100, 0), SA_EINVAL); /* past the last layer */
  assert_int_equal(stage("s", "r0", 3, 3, 100, 0), SA_EINVAL); /* empty range */
  assert_int_equal(stage("s", "r0", 0, 6, 0, 0), SA_EINVAL);   /* no KV */
  rq.node_id = "e";
  rq.address = "tcp://x:1";
  rq.role = SA__ROLE__ROLE_ENCODER;
  rq.hidden_size = 65;
  assert_int_equal(coord_registry_register(&g_reg, &rq, "", 0, err, sizeof err), SA_EINVAL);
  assert_non_null(strstr(err, "hidden size"));
  assert_string_equal(g_log, ""); /* nothing was registered */
  assert_null(coord_registry_worker(&g_reg, 0));
  /* full: COORD_MAX_WORKERS distinct encoders fit, one more does not */
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    char id[32];
    snprintf(id, sizeof id, "e%d", i);
    assert_int_equal(encoder(id, 0), i);
  }
  assert_int_equal(encoder("one-more", 0), SA_EFULL);
  assert_int_equal(encoder("e7", 0), 7); /* re-registering is not new */
}

static void test_assembly_and_loss(void **state) {
  (void)state;
  reset();
  assert_int_equal(stage("a0", "r0", 0, 2, 100, 0), 0);
  assert_int_equal(stage("a2", "r0", 4, 6, 80, 0), 1);
  const coord_replica_t *r0 = coord_registry_replica(&g_reg, 0);
  assert_non_null(r0);
  assert_false(r0->ready); /* layers 2..4 missing */
  assert_string_equal(g_log, "");
  assert_int_equal(stage("a1", "r0", 2, 4, 120, 0), 2);
  assert_true(r0->ready);
  assert_int_equal(r0->n_stages, 3);
  assert_int_equal(r0->stage[0], 0);
  assert_int_equal(r0->stage[1], 2); /* layer order, not registration order */
  assert_int_equal(r0->stage[2], 1);
  assert_int_equal(r0->kv_capacity, 80); /* the smallest stage */
  assert_int_equal(g_reg.epoch, 1);
  assert_string_equal(g_log, "C ");
  assert_int_equal(coord_registry_ready_replicas(&g_reg), 1);

  /* a second replica on one stage */
  assert_int_equal(stage("b0", "r1", 0, 6, 50, 0), 3);
  assert_string_equal(g_log, "C C ");
  assert_int_equal(coord_registry_ready_replicas(&g_reg), 2);

  /* heartbeats keep a1 alive; a0 and a2 fall silent */
  heartbeat("a1", 900);
  heartbeat("b0", 1500);
  coord_registry_check(&g_reg, 1500); /* a0, a2: 1500 ms silent > 1000 */
  assert_false(coord_registry_worker(&g_reg, 0)->healthy);
  assert_true(coord_registry_worker(&g_reg, 2)->healthy);
  assert_false(r0->ready);
  assert_string_equal(g_log, "C C L0 "); /* lost once, however many stages went */
  coord_registry_check(&g_reg, 1600);
  assert_string_equal(g_log, "C C L0 "); /* no news is no event */

  /* a0 and a2 come back: one 'changed' when the replica is whole again */
  heartbeat("a0", 1700);
  assert_string_equal(g_log, "C C L0 ");
  heartbeat("a2", 1700);
  assert_true(r0->ready);
  assert_string_equal(g_log, "C C L0 C ");
  assert_int_equal(g_reg.epoch, 3);

  /* a stage that cannot be reached is marked down at once */
  coord_registry_mark_down(&g_reg, 3);
  assert_string_equal(g_log, "C C L0 C L1 ");
  /* unknown node: not known */
  Sa__HeartbeatRequest hb = SA__HEARTBEAT_REQUEST__INIT;
  hb.node_id = "nobody";
  assert_int_equal(coord_registry_heartbeat(&g_reg, &hb, 2000), -1);
}

static void test_pick_and_reserve(void **state) {
  (void)state;
  reset();
  stage("a", "r0", 0, 6, 100, 0);
  stage("b", "r1", 0, 6, 60, 0);
  int inflight[COORD_MAX_REPLICAS] = {0};
  /* equal load: the first; then the emptier one */
  assert_int_equal(coord_registry_pick_replica(&g_reg, 10, 0, inflight), 0);
  coord_registry_reserve(&g_reg, 0, 50);
  assert_int_equal(coord_registry_pick_replica(&g_reg, 10, 0, inflight), 1);
  /* a micro-batch in flight weighs a little */
  coord_registry_reserve(&g_reg, 0, -50);
  inflight[0] = 2;
  assert_int_equal(coord_registry_pick_replica(&g_reg, 10, 0, inflight), 1);
  inflight[0] = 0;
  /* room: 61 blocks fit only r0; 101 fit nowhere, ever */
  assert_int_equal(coord_registry_pick_replica(&g_reg, 61, 0, inflight), 0);
  bool any_ready;
  assert_false(coord_registry_could_fit(&g_reg, 101, &any_ready));
  assert_true(any_ready);
  assert_true(coord_registry_could_fit(&g_reg, 100, &any_ready));
  /* a suspect replica takes nothing until its time is up */
  coord_registry_suspect(&g_reg, 0, 500);
  assert_int_equal(coord_registry_pick_replica(&g_reg, 61, 499, inflight), -1);
  assert_int_equal(coord_registry_pick_replica(&g_reg, 61, 500, inflight), 0);
  assert_int_equal(coord_registry_block_tokens(&g_reg), 16);

  /* encoders: the least busy, another than the one that failed */
  assert_int_equal(coord_registry_pick_encoder(&g_reg, -1), -1);
  int e1 = encoder("e1", 0), e2 = encoder("e2", 0);
  assert_int_equal(coord_registry_pick_encoder(&g_reg, -1), e1);
  coord_registry_encoder_busy(&g_reg, e1, +1);
  assert_int_equal(coord_registry_pick_encoder(&g_reg, -1), e2);
  assert_int_equal(coord_registry_pick_encoder(&g_reg, e2), e1);
  coord_registry_mark_down(&g_reg, e1);
  assert_int_equal(coord_registry_pick_encoder(&g_reg, e2), e2); /* the only one left */
  coord_registry_note_kv(&g_reg, 0, 7, 93);
  assert_int_equal(coord_registry_worker(&g_reg, 0)->kv_used, 7);
}

/* A node id belongs to the key that registered it first: another key
 * cannot take it over (the stage keeps its address), the same key can
 * re-register (e.g. after a restart). */
static void test_node_id_owner(void **state) {
  (void)state;
  reset();
  const char *k1 = "rq>H(SdyE]*N5s@=LZ7d3QO(xwZX6wiT=A[0>EYi", *k2 = "J@1-k!TZ7qo+pN5]fXW$uL0e4bHy3&m(Vz8cRg.D";
  char err[256];
  Sa__RegisterRequest rq = SA__REGISTER_REQUEST__INIT;
  rq.node_id = "s0";
  rq.address = "tcp://127.0.0.1:7000";
  rq.role = SA__ROLE__ROLE_STAGE;
  rq.first_layer = 0;
  rq.last_layer = 6;
  rq.num_layers = 6;
  rq.kv_blocks_total = 100;
  rq.kv_block_tokens = 16;
  rq.max_batch = 32;
  rq.max_tokens_per_step = 512;
  int w = coord_registry_register(&g_reg, &rq, k1, 0, err, sizeof err);
  assert_true(w >= 0);
  rq.address = "tcp://203.0.113.9:7000";
  assert_int_equal(coord_registry_register(&g_reg, &rq, k2, 1, err, sizeof err), SA_EPERM);
  assert_non_null(strstr(err, "another key"));
  assert_int_equal(coord_registry_register(&g_reg, &rq, "", 1, err, sizeof err), SA_EPERM);
  assert_string_equal(coord_registry_worker(&g_reg, w)->address, "tcp://127.0.0.1:7000");
  assert_string_equal(coord_registry_worker(&g_reg, w)->key, k1);
  assert_int_equal(coord_registry_register(&g_reg, &rq, k1, 2, err, sizeof err), w);
  assert_string_equal(coord_registry_worker(&g_reg, w)->address, "tcp://203.0.113.9:7000");
}

static int used_entries(void) {
  int n = 0;
  for (int i = 0; i < COORD_MAX_WORKERS; i++)
    n += coord_registry_worker(&g_reg, i) != NULL;
  return n;
}

/* A restarted process (new node id, same key and place) takes the dead
 * entry's slot; another key does not; long-dead entries are forgotten; 300
 * restarts leave the registry at its live size. */
static void test_healing(void **state) {
  (void)state;
  reset();
  const char *k1 = "rq>H(SdyE]*N5s@=LZ7d3QO(xwZX6wiT=A[0>EYi", *k2 = "J@1-k!TZ7qo+pN5]fXW$uL0e4bHy3&m(Vz8cRg.D";
  char err[256], id[32];
  Sa__RegisterRequest rq = SA__REGISTER_REQUEST__INIT;
  rq.address = "tcp://127.0.0.1:7000";
  rq.role = SA__ROLE__ROLE_STAGE;
  rq.first_layer = 0;
  rq.last_layer = 6;
  rq.num_layers = 6;
  rq.kv_blocks_total = 100;
  rq.kv_block_tokens = 16;
  rq.max_batch = 32;
  rq.max_tokens_per_step = 512;
  rq.node_id = "a";
  uint64_t now = 1000;
  int wa = coord_registry_register(&g_reg, &rq, k1, now, err, sizeof err);
  assert_true(wa >= 0);
  /* alive: a new id with the same key takes a new slot */
  rq.node_id = "b";
  int wb = coord_registry_register(&g_reg, &rq, k1, now, err, sizeof err);
  assert_true(wb >= 0 && wb != wa);
  /* both go silent and are marked down; a restart under a new id replaces one */
  now += 2000;
  coord_registry_check(&g_reg, now);
  assert_false(coord_registry_worker(&g_reg, wa)->healthy);
  rq.node_id = "c";
  int wc = coord_registry_register(&g_reg, &rq, k1, now, err, sizeof err);
  assert_true(wc == wa || wc == wb);
  assert_string_equal(coord_registry_worker(&g_reg, wc)->node_id, "c");
  /* another key never takes a place that is not its own */
  rq.node_id = "d";
  int wd = coord_registry_register(&g_reg, &rq, k2, now, err, sizeof err);
  assert_true(wd >= 0 && wd != wa && wd != wb);
  /* a different layer range is a different place */
  rq.node_id = "e";
  rq.first_layer = 0;
  rq.last_layer = 3;
  int we = coord_registry_register(&g_reg, &rq, k1, now, err, sizeof err);
  assert_true(we >= 0 && we != wa && we != wb);
  /* forgotten once down for forget_ms */
  g_reg.forget_ms = 5000;
  coord_registry_check(&g_reg, now + 1500); /* c, d, e missed heartbeats too */
  coord_registry_check(&g_reg, now + 1500 + 5001);
  assert_int_equal(used_entries(), 0);
  /* 300 restarts of one stage: the registry stays at one entry */
  rq.last_layer = 6;
  for (int i = 0; i < 300; i++) {
    snprintf(id, sizeof id, "stage-%d", i);
    rq.node_id = id;
    assert_true(coord_registry_register(&g_reg, &rq, k1, now, err, sizeof err) >= 0);
    now += 1500; /* it dies; the next check marks it down */
    coord_registry_check(&g_reg, now);
  }
  assert_int_equal(used_entries(), 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_assembly_and_loss),
      cmocka_unit_test(test_pick_and_reserve),
      cmocka_unit_test(test_node_id_owner),
      cmocka_unit_test(test_healing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
