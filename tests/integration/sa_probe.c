/*
 * sa-probe — the integration tests' attacker: makes one RPC call with any
 * key (or none) to any of our methods, as a process that is not what it
 * claims would, and prints the status the server gave. Our own binaries
 * refuse a key of the wrong role before they connect; this one does not,
 * so the tests can check that the servers refuse it too.
 *
 *   sa-probe ENDPOINT METHOD [--key K.key --server-key S.pub] [--id ID]
 *            [--bytes N]
 *   sa-probe ENDPOINT Flood --connections N [--key ... --server-key ...]
 *
 * METHOD is one of Submit (a text prompt), Cancel (--id), Status (--id
 * optional), Register (as a stage), Heartbeat (--id), Drain (--id: the
 * target), Step (an empty
 * StepBatch), Encode
 * (no audio); --bytes N adds a tensor frame of N bytes (an oversized
 * message). Prints "STATUS_NAME message" and, for Status, the figures the
 * tests read. Flood opens N connections at once (plain ZeroMQ DEALERs,
 * with the keys if given), sends each a frame, waits until the server has
 * had them a moment, and closes them all. Exit 0 whatever the status; 2 for
 * bad usage or keys.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "keys.h"
#include "rpc.h"
#include "sa.pb-c.h"
#include "sa_error.h"

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: sa-probe ENDPOINT METHOD [--key K.key --server-key S.pub] [--id ID]\n");
    return 2;
  }
  const char *ep = argv[1], *method = argv[2], *key = NULL, *srv = NULL, *id = "";
  size_t extra = 0;
  int conns = 0;
  for (int i = 3; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--key"))
      key = argv[i + 1];
    else if (!strcmp(argv[i], "--server-key"))
      srv = argv[i + 1];
    else if (!strcmp(argv[i], "--id"))
      id = argv[i + 1];
    else if (!strcmp(argv[i], "--bytes"))
      extra = (size_t)strtoull(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--connections"))
      conns = atoi(argv[i + 1]);
  }
  sa_rpc_opts_t o;
  sa_rpc_opts_default(&o);
  sa_cert_t me, server;
  char err[512];
  if (key) {
    if (sa_cert_load(key, true, &me, err, sizeof err) ||
        sa_cert_load(srv ? srv : "", false, &server, err, sizeof err)) {
      fprintf(stderr, "sa-probe: %s\n", err);
      return 2;
    }
    o.curve_public_key = me.public_key;
    o.curve_secret_key = me.secret_key;
    o.curve_server_key = server.public_key;
  }
  if (!strcmp(method, "Flood")) {
    void *ctx = zmq_ctx_new();
    zmq_ctx_set(ctx, ZMQ_MAX_SOCKETS, conns + 16);
    void **socks = calloc((size_t)conns, sizeof *socks);
    int zero = 0, opened = 0;
    for (int i = 0; i < conns; i++) {
      void *sk = zmq_socket(ctx, ZMQ_DEALER);
      if (!sk)
        break;
      zmq_setsockopt(sk, ZMQ_LINGER, &zero, sizeof zero);
      if (key) {
        zmq_setsockopt(sk, ZMQ_CURVE_PUBLICKEY, me.public_key, 40);
        zmq_setsockopt(sk, ZMQ_CURVE_SECRETKEY, me.secret_key, 40);
        zmq_setsockopt(sk, ZMQ_CURVE_SERVERKEY, server.public_key, 40);
      }
      zmq_connect(sk, ep);
      zmq_send(sk, "x", 1, ZMQ_DONTWAIT);
      socks[opened++] = sk;
    }
    usleep(1500 * 1000); /* let the handshakes happen */
    for (int i = 0; i < opened; i++)
      zmq_close(socks[i]);
    free(socks);
    zmq_ctx_term(ctx);
    printf("FLOODED %d\n", opened);
    return 0;
  }
  uint8_t buf[4096];
  size_t len = 0;
  char full[64];
  if (!strcmp(method, "Submit")) {
    Sa__SubmitRequest rq = SA__SUBMIT_REQUEST__INIT;
    rq.prompt = "probe";
    rq.max_tokens = 1;
    rq.n = 1;
    len = sa__submit_request__pack(&rq, buf);
    snprintf(full, sizeof full, "Coordinator/Submit");
  } else if (!strcmp(method, "Cancel")) {
    Sa__CancelRequest rq = SA__CANCEL_REQUEST__INIT;
    rq.request_id = (char *)id;
    len = sa__cancel_request__pack(&rq, buf);
    snprintf(full, sizeof full, "Coordinator/Cancel");
  } else if (!strcmp(method, "Status")) {
    Sa__StatusRequest rq = SA__STATUS_REQUEST__INIT;
    rq.request_id = (char *)id;
    len = sa__status_request__pack(&rq, buf);
    snprintf(full, sizeof full, "Coordinator/Status");
  } else if (!strcmp(method, "Register")) {
    Sa__RegisterRequest rq = SA__REGISTER_REQUEST__INIT;
    rq.role = SA__ROLE__ROLE_STAGE;
    rq.node_id = (char *)(id[0] ? id : "probe");
    rq.address = "tcp://127.0.0.1:9";
    rq.first_layer = 0;
    rq.last_layer = 1;
    rq.num_layers = 3;
    rq.kv_blocks_total = 1;
    rq.kv_block_tokens = 16;
    rq.max_batch = 1;
    rq.max_tokens_per_step = 1;
    len = sa__register_request__pack(&rq, buf);
    snprintf(full, sizeof full, "Coordinator/Register");
  } else if (!strcmp(method, "Heartbeat")) {
    Sa__HeartbeatRequest rq = SA__HEARTBEAT_REQUEST__INIT;
    rq.node_id = (char *)(id[0] ? id : "probe");
    len = sa__heartbeat_request__pack(&rq, buf);
    snprintf(full, sizeof full, "Coordinator/Heartbeat");
  } else if (!strcmp(method, "Drain")) {
    Sa__DrainRequest rq = SA__DRAIN_REQUEST__INIT;
    rq.target = (char *)(id[0] ? id : "r0");
    len = sa__drain_request__pack(&rq, buf);
    snprintf(full, sizeof full, "Coordinator/Drain");
  } else if (!strcmp(method, "Step")) {
    Sa__StepBatch rq = SA__STEP_BATCH__INIT;
    rq.batch_id = 1;
    rq.n_stages = 1;
    len = sa__step_batch__pack(&rq, buf);
    snprintf(full, sizeof full, "Stage/Step");
  } else if (!strcmp(method, "Encode")) {
    Sa__EncodeRequest rq = SA__ENCODE_REQUEST__INIT;
    len = sa__encode_request__pack(&rq, buf);
    snprintf(full, sizeof full, "Encoder/Encode");
  } else {
    fprintf(stderr, "sa-probe: unknown method %s\n", method);
    return 2;
  }
  sa_rpc_frame_t big = {0};
  int nf = 0;
  if (extra) {
    big.data = calloc(1, extra);
    big.nbytes = extra;
    big.desc.dtype = SA_DTYPE_U8;
    big.desc.ndim = 1;
    big.desc.shape[0] = (int64_t)extra;
    big.free_fn = NULL; /* copied */
    nf = big.data ? 1 : 0;
  }
  sa_rpc_reply_t *rep = NULL;
  int rc = sa_rpc_call_sync(ep, &o, full, buf, len, nf ? &big : NULL, nf, 5000, &rep);
  free((void *)big.data);
  if (rc) {
    printf("NOT_STARTED %s\n", sa_strerror(rc));
    return 0;
  }
  printf("%s %s\n", sa_status_name(rep->status), rep->status_msg ? rep->status_msg : "");
  if (rep->status == SA_STATUS_OK && !strcmp(method, "Status")) {
    Sa__StatusResponse *st = sa__status_response__unpack(NULL, rep->body_len, rep->body);
    if (st) {
      printf("request_found %d\nhandshakes_refused %lld\nworkers %zu\n", st->request_found,
             (long long)st->handshakes_refused, st->n_workers);
      for (size_t i = 0; i < st->n_workers; i++)
        printf("worker %s %s\n", st->workers[i]->node_id, st->workers[i]->address);
      sa__status_response__free_unpacked(st, NULL);
    }
  }
  if (rep->status == SA_STATUS_OK && !strcmp(method, "Cancel")) {
    Sa__CancelResponse *cr = sa__cancel_response__unpack(NULL, rep->body_len, rep->body);
    if (cr) {
      printf("found %d\n", cr->found);
      sa__cancel_response__free_unpacked(cr, NULL);
    }
  }
  sa_rpc_reply_free(&rep);
  return 0;
}
