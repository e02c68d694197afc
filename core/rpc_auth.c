/*
 * rpc_auth — the process's CurveZMQ authenticator (see rpc.h): ZeroMQ's ZAP
 * handler (RFC 27), a REP socket on the endpoint base (rpc_endpoint.c)
 * bound to the inproc endpoint libzmq consults for every handshake on a
 * CURVE server socket of the process. Each request is answered at once, in
 * the loop turn that reads it, from the owner's callback: 200 with the user
 * id it gave, or 400. Chosen over CZMQ's zauth because zauth runs its own
 * thread and actor protocol, while this runs on the loop that owns the
 * allow-list and the metrics, with nothing shared between threads.
 */
#include "rpc.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "rpc_endpoint.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_FRAMES 7 /* version, id, domain, address, identity, mechanism, key */

struct sa_rpc_auth {
  sa__rpc_ep_t ep; /* first: the base */
  sa_rpc_auth_cb cb;
  void *user;
};

static atomic_bool g_live;

bool sa__rpc_auth_live(void) { return atomic_load(&g_live); }

static void auth_free(sa__rpc_ep_t *ep) { free(ep); }

/* Copies frame m into a NUL-terminated string of at most cap - 1 bytes. */
static void frame_str(zmq_msg_t *m, char *out, size_t cap) {
  size_t n = zmq_msg_size(m);
  if (n >= cap)
    n = cap - 1;
  memcpy(out, zmq_msg_data(m), n);
  out[n] = 0;
}

static void auth_on_message(sa__rpc_ep_t *ep, int n, int overflow) {
  sa_rpc_auth_t *a = (sa_rpc_auth_t *)ep;
  zmq_msg_t *rx = ep->rx;
  char version[8] = "", domain[64] = "", address[64] = "", mech[16] = "";
  char user_id[128] = "";
  const char *status = "400", *text = "refused";
  if (n >= 6) {
    frame_str(&rx[0], version, sizeof version);
    frame_str(&rx[2], domain, sizeof domain);
    frame_str(&rx[3], address, sizeof address);
    frame_str(&rx[5], mech, sizeof mech);
  }
  if (n != ZAP_FRAMES || overflow || strcmp(version, "1.0") != 0) {
    SA_LOG_ERROR("rpc: malformed ZAP request (%d frames, version '%s'); refused", n + overflow,
                 version);
  } else if (strcmp(mech, "CURVE") != 0 || zmq_msg_size(&rx[6]) != 32) {
    SA_LOG_WARN("rpc: a %s handshake from %s on a CurveZMQ server; refused", mech, address);
  } else if (a->cb(domain, address, zmq_msg_data(&rx[6]), user_id, sizeof user_id, a->user)) {
    status = "200";
    text = "OK";
  }
  /* the reply: version, request id, status code, status text, user id,
   * metadata */
  zmq_msg_t *tx = ep->tx;
  const char *parts[6] = {"1.0", NULL, status, text, user_id, ""};
  for (int i = 0; i < 6; i++) {
    const void *d = parts[i];
    size_t len = d ? strlen(parts[i]) : 0;
    if (i == 1 && n >= 2) {
      d = zmq_msg_data(&rx[1]);
      len = zmq_msg_size(&rx[1]);
    }
    if (zmq_msg_init_size(&tx[i], len) != 0) {
      sa__rpc_close_msgs(tx, i);
      SA_LOG_ERROR("rpc: out of memory for a ZAP reply");
      return;
    }
    if (len)
      memcpy(zmq_msg_data(&tx[i]), d, len);
  }
  int rc = sa__rpc_send_msgs(ep->sock, tx, 6);
  if (rc)
    SA_LOG_ERROR("rpc: ZAP reply not sent: %s", sa_strerror(rc));
}

static const sa__rpc_ep_vt_t auth_vt = {
    .what = "authenticator", .on_message = auth_on_message, .free = auth_free};

int sa_rpc_auth_new(uv_loop_t *loop, sa_rpc_auth_cb cb, void *user, sa_rpc_auth_t **out) {
  *out = NULL;
  if (!loop || !cb)
    return SA_EINVAL;
  bool no = false;
  if (!atomic_compare_exchange_strong(&g_live, &no, true))
    return SA_EEXIST;
  sa_rpc_auth_t *a = calloc(1, sizeof *a);
  if (!a) {
    atomic_store(&g_live, false);
    return SA_ENOMEM;
  }
  a->cb = cb;
  a->user = user;
  sa_rpc_opts_t o;
  sa_rpc_opts_default(&o);
  o.max_inflight = 1;
  o.heartbeat_ivl_ms = 0;
  int rc = sa__rpc_ep_init(&a->ep, &auth_vt, loop, &o, ZMQ_REP, ZAP_FRAMES + 1);
  if (rc == 0 && zmq_bind(a->ep.sock, ZAP_ENDPOINT) != 0) {
    SA_LOG_ERROR("rpc: authenticator: bind %s: %s", ZAP_ENDPOINT, zmq_strerror(errno));
    sa__rpc_ep_abandon(&a->ep);
    rc = SA_EIO;
  } else if (rc == 0 && (rc = sa__rpc_ep_start(&a->ep)) != 0) {
    sa__rpc_ep_abandon(&a->ep);
  }
  if (rc) {
    free(a);
    atomic_store(&g_live, false);
    return rc;
  }
  /* the authenticator alone does not keep the loop alive */
  uv_unref((uv_handle_t *)&a->ep.poll);
  uv_unref((uv_handle_t *)&a->ep.timers[0]);
  *out = a;
  return 0;
}

void sa_rpc_auth_destroy(sa_rpc_auth_t **pa) {
  if (!pa || !*pa)
    return;
  sa_rpc_auth_t *a = *pa;
  *pa = NULL;
  sa__rpc_ep_close(&a->ep);
  atomic_store(&g_live, false);
}
