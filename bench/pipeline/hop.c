/*
 * hop — the raw cost of one activation hop: a ZeroMQ DEALER in this process
 * sends a [B, H] f32 payload (zero-copy, as sa-worker forwards activations)
 * over tcp loopback to a ROUTER in a forked child process, which answers
 * with an 8-byte ack or echoes the payload back. No protobuf, no libuv, no
 * compute: the floor under the pipeline's stage-to-stage overhead. With
 * curve, both sockets run CurveZMQ (fresh keys; no authenticator, which
 * costs nothing per message), as every hop of a default cluster does.
 */
#include "pipeline.h"

#include "sa_bench.h"
#include "sa_error.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

static char g_srv_pub[41], g_srv_sec[41], g_cli_pub[41], g_cli_sec[41];

/* The child: ROUTER on a free port, written to fd; serves until "quit". */
static void child_main(int fd, bool curve) {
  void *ctx = zmq_ctx_new();
  void *r = zmq_socket(ctx, ZMQ_ROUTER);
  int zero = 0, one = 1;
  zmq_setsockopt(r, ZMQ_LINGER, &zero, sizeof zero);
  if (curve) {
    zmq_setsockopt(r, ZMQ_CURVE_SERVER, &one, sizeof one);
    zmq_setsockopt(r, ZMQ_CURVE_SECRETKEY, g_srv_sec, 40);
  }
  char ep[256] = "";
  size_t n = sizeof ep;
  if (zmq_bind(r, "tcp://127.0.0.1:*") || zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, ep, &n))
    ep[0] = 0;
  if (write(fd, ep, sizeof ep) != (ssize_t)sizeof ep)
    _exit(1);
  close(fd);
  for (;;) {
    zmq_msg_t id, mode, body;
    zmq_msg_init(&id);
    zmq_msg_init(&mode);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&id, r, 0) < 0 || zmq_msg_recv(&mode, r, 0) < 0)
      break;
    char m = zmq_msg_size(&mode) ? *(char *)zmq_msg_data(&mode) : 'q';
    if (zmq_msg_more(&mode) && zmq_msg_recv(&body, r, 0) < 0)
      break;
    if (m == 'q')
      break;
    zmq_msg_send(&id, r, ZMQ_SNDMORE);
    if (m == 'e') { /* echo: the payload goes back (reference-counted) */
      zmq_msg_send(&body, r, 0);
    } else {
      uint64_t ack = 1;
      zmq_send(r, &ack, sizeof ack, 0);
      zmq_msg_close(&body);
    }
    zmq_msg_close(&mode);
  }
  zmq_close(r);
  zmq_ctx_term(ctx);
  _exit(0);
}

static double round_trip(void *d, const void *payload, size_t bytes, char mode) {
  double t0 = sa_bench_now();
  zmq_msg_t m;
  zmq_send(d, &mode, 1, ZMQ_SNDMORE);
  zmq_msg_init_data(&m, (void *)payload, bytes, NULL, NULL); /* zero-copy */
  zmq_msg_send(&m, d, 0);
  zmq_msg_t rep;
  zmq_msg_init(&rep);
  zmq_msg_recv(&rep, d, 0);
  double dt = sa_bench_now() - t0;
  zmq_msg_close(&rep);
  return dt;
}

int bp_hop_measure(size_t bytes, int reps, bool curve, bp_hop_t *out) {
  if (curve && (zmq_curve_keypair(g_srv_pub, g_srv_sec) || zmq_curve_keypair(g_cli_pub, g_cli_sec)))
    return SA_EIO;
  int fds[2];
  if (pipe(fds))
    return SA_EIO;
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0)
    return SA_EIO;
  if (pid == 0) {
    close(fds[0]);
    child_main(fds[1], curve);
  }
  close(fds[1]);
  char ep[256];
  ssize_t got = read(fds[0], ep, sizeof ep);
  close(fds[0]);
  if (got != (ssize_t)sizeof ep || !ep[0]) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return SA_EIO;
  }
  void *ctx = zmq_ctx_new();
  void *d = zmq_socket(ctx, ZMQ_DEALER);
  int zero = 0;
  zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
  if (curve) {
    zmq_setsockopt(d, ZMQ_CURVE_SERVERKEY, g_srv_pub, 40);
    zmq_setsockopt(d, ZMQ_CURVE_PUBLICKEY, g_cli_pub, 40);
    zmq_setsockopt(d, ZMQ_CURVE_SECRETKEY, g_cli_sec, 40);
  }
  int rc = zmq_connect(d, ep) ? SA_EIO : 0;
  float *payload = calloc(bytes / sizeof(float) + 1, sizeof(float));
  double *t = calloc((size_t)reps, sizeof(double));
  if (!payload || !t)
    rc = SA_ENOMEM;
  for (int mi = 0; rc == 0 && mi < 2; mi++) {
    char mode = mi == 0 ? 'a' : 'e';
    for (int i = 0; i < 20; i++) /* warm-up: connection, buffers */
      round_trip(d, payload, bytes, mode);
    for (int i = 0; i < reps; i++)
      t[i] = round_trip(d, payload, bytes, mode);
    double med = sa_bench_median(t, reps), p99 = sa_bench_p99(t, reps);
    if (mi == 0) {
      out->rtt_ack_med = med;
      out->rtt_ack_p99 = p99;
    } else {
      out->rtt_echo_med = med;
      out->rtt_echo_p99 = p99;
    }
  }
  char q = 'q';
  zmq_send(d, &q, 1, 0);
  zmq_close(d);
  zmq_ctx_term(ctx);
  for (int i = 0; i < 100 && waitpid(pid, NULL, WNOHANG) == 0; i++)
    usleep(10000);
  if (waitpid(pid, NULL, WNOHANG) == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
  }
  free(payload);
  free(t);
  return rc;
}
