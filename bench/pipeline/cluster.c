/*
 * cluster — real sa-coordinator and sa-worker processes on loopback for
 * bench-pipeline, and a Submit driver that timestamps every streamed token.
 *
 * Not a cluster manager: processes are started with posix_spawn, bound to
 * free ports (tcp://127.0.0.1:*), polled for readiness over
 * Coordinator/Status and stopped with SIGTERM/SIGKILL, as the integration
 * tests do (tests/integration/lib.sh).
 */
#include "pipeline.h"

#include "log.h"
#include "keys.h"
#include "rpc.h"
#include "sa.pb-c.h"
#include "sa_bench.h"
#include "sa_error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

extern char **environ;

/* every cluster still running, for bp_cluster_stop_all */
static bp_cluster_t *g_live[4];

static void sleep_s(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  nanosleep(&ts, NULL);
}

/* Spawns argv[0] with stdout+stderr to log and `threads` OpenBLAS threads. */
static pid_t spawn(char *const argv[], const char *log, int threads) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  /* the environment, with OPENBLAS_NUM_THREADS and SA_LOG_LEVEL replaced */
  int n = 0;
  while (environ[n])
    n++;
  char **env = calloc((size_t)n + 3, sizeof *env);
  char ob[64], ll[32];
  snprintf(ob, sizeof ob, "OPENBLAS_NUM_THREADS=%d", threads);
  snprintf(ll, sizeof ll, "SA_LOG_LEVEL=warn");
  int k = 0;
  for (int i = 0; env && i < n; i++)
    if (strncmp(environ[i], "OPENBLAS_NUM_THREADS=", 21) && strncmp(environ[i], "SA_LOG_LEVEL=", 13))
      env[k++] = environ[i];
  pid_t pid = -1;
  if (env) {
    env[k++] = ob;
    env[k++] = ll;
    if (posix_spawn(&pid, argv[0], &fa, NULL, argv, env))
      pid = -1;
  }
  free(env);
  posix_spawn_file_actions_destroy(&fa);
  if (pid < 0)
    fprintf(stderr, "bench-pipeline: cannot start %s: %s\n", argv[0], strerror(errno));
  return pid;
}

/* The client side of the cluster started last: plain text, or the client
 * key and the coordinator's key with CurveZMQ. */
static sa_rpc_opts_t g_client;
static sa_cert_t g_keys[3]; /* coordinator, stage, client */
static char g_key_dir[1100];

/* A key per role and the allow folder in log_dir/keys (made afresh). */
static int make_keys(const char *log_dir) {
  static const sa_role_t roles[3] = {SA_ROLE_COORDINATOR, SA_ROLE_STAGE, SA_ROLE_CLIENT};
  char cmd[1300], err[512], path[1300];
  snprintf(g_key_dir, sizeof g_key_dir, "%s/keys", log_dir);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_key_dir);
  if (system(cmd) != 0 || sa_keys_make_set(g_key_dir, roles, 3, err, sizeof err) < 0) {
    fprintf(stderr, "bench: keys: %s\n", err);
    return -1;
  }
  for (int i = 0; i < 3; i++) {
    snprintf(path, sizeof path, "%s/%s.key", g_key_dir, sa_role_name(roles[i]));
    if (sa_cert_load(path, true, &g_keys[i], err, sizeof err)) {
      fprintf(stderr, "bench: keys: %s\n", err);
      return -1;
    }
  }
  g_client.curve_public_key = g_keys[2].public_key;
  g_client.curve_secret_key = g_keys[2].secret_key;
  g_client.curve_server_key = g_keys[0].public_key;
  return 0;
}

/* argv[*n..] += the security arguments of a process of role k (0
 * coordinator, 1 stage), with their strings in buf[2][1300]. */
static void security_args(bool curve, int k, char **argv, int *n, char buf[2][1300]) {
  if (!curve) {
    argv[(*n)++] = "--insecure";
    return;
  }
  snprintf(buf[0], 1300, "%s/%s.key", g_key_dir, k ? "stage" : "coordinator");
  snprintf(buf[1], 1300, "%s/allow", g_key_dir);
  argv[(*n)++] = "--key";
  argv[(*n)++] = buf[0];
  argv[(*n)++] = "--allow";
  argv[(*n)++] = buf[1];
}

/* replicas ready as the coordinator reports it, or -1 if unreachable */
static int replicas_ready(const char *ep) {
  Sa__StatusRequest rq = SA__STATUS_REQUEST__INIT;
  uint8_t buf[16];
  size_t len = sa__status_request__pack(&rq, buf);
  sa_rpc_reply_t *rep = NULL;
  if (sa_rpc_call_sync(ep, &g_client, "Coordinator/Status", buf, len, NULL, 0, 1000, &rep) ||
      !rep)
    return -1;
  int n = -1;
  if (rep->status == SA_STATUS_OK) {
    Sa__StatusResponse *sr = sa__status_response__unpack(NULL, rep->body_len, rep->body);
    if (sr) {
      n = sr->replicas_ready;
      sa__status_response__free_unpacked(sr, NULL);
    }
  }
  sa_rpc_reply_free(&rep);
  return n;
}

void bp_cluster_stop(bp_cluster_t *c) {
  for (int i = 0; i < c->n_pids; i++)
    if (c->pids[i] > 0)
      kill(c->pids[i], SIGTERM);
  double t0 = sa_bench_now();
  for (int i = 0; i < c->n_pids; i++) {
    if (c->pids[i] <= 0)
      continue;
    while (waitpid(c->pids[i], NULL, WNOHANG) == 0) {
      if (sa_bench_now() - t0 > 3.0) {
        kill(c->pids[i], SIGKILL);
        waitpid(c->pids[i], NULL, 0);
        break;
      }
      sleep_s(0.02);
    }
    c->pids[i] = 0;
  }
  c->n_pids = 0;
  for (int i = 0; i < 4; i++)
    if (g_live[i] == c)
      g_live[i] = NULL;
}

void bp_cluster_stop_all(void) {
  for (int i = 0; i < 4; i++)
    if (g_live[i])
      bp_cluster_stop(g_live[i]);
}

int bp_cluster_start(const bp_cluster_opts_t *o, double timeout_s, bp_cluster_t *c) {
  memset(c, 0, sizeof *c);
  for (int i = 0; i < 4; i++)
    if (!g_live[i]) {
      g_live[i] = c;
      break;
    }
  char bin[1200], log[1200], epf[1200];
  snprintf(epf, sizeof epf, "%s/coord.ep", o->log_dir);
  unlink(epf);
  snprintf(bin, sizeof bin, "%s/sa-coordinator", o->bin_dir);
  snprintf(log, sizeof log, "%s/coordinator.log", o->log_dir);
  char extra[16];
  snprintf(extra, sizeof extra, "%d", o->extra_microbatches);
  sa_rpc_opts_default(&g_client);
  if (o->curve && make_keys(o->log_dir))
    goto fail;
  char secbuf[2][1300];
  char *cargv[24] = {bin, "--model", (char *)o->coord_model, "--listen", "tcp://127.0.0.1:*",
                     "--endpoint-file", epf, "--extra-microbatches", extra};
  int nc = 9;
  security_args(o->curve, 0, cargv, &nc, secbuf);
  if (o->http) {
    cargv[nc++] = "--http";
    cargv[nc++] = (char *)o->http;
    cargv[nc++] = "--served-model-name";
    cargv[nc++] = "bench";
  }
  cargv[nc] = NULL;
  if ((c->pids[c->n_pids] = spawn(cargv, log, 1)) < 0)
    goto fail;
  c->n_pids++;
  double t0 = sa_bench_now();
  for (;;) {
    FILE *f = fopen(epf, "r");
    if (f) {
      int ok = fgets(c->endpoint, sizeof c->endpoint, f) != NULL;
      fclose(f);
      if (ok && c->endpoint[0]) {
        c->endpoint[strcspn(c->endpoint, "\r\n")] = 0;
        break;
      }
    }
    if (sa_bench_now() - t0 > 10 || waitpid(c->pids[0], NULL, WNOHANG) != 0) {
      fprintf(stderr, "bench-pipeline: the coordinator did not start (see %s)\n", log);
      goto fail;
    }
    sleep_s(0.02);
  }
  if (o->http) { /* "http URL" is the coordinator's first stdout line after binding */
    snprintf(log, sizeof log, "%s/coordinator.log", o->log_dir);
    for (double t1 = sa_bench_now(); !c->http_url[0] && sa_bench_now() - t1 < 10;) {
      FILE *f = fopen(log, "r");
      char line[512];
      while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "http http://", 12)) {
          snprintf(c->http_url, sizeof c->http_url, "%s", line + 5);
          c->http_url[strcspn(c->http_url, "\r\n")] = 0;
        }
      if (f)
        fclose(f);
      if (!c->http_url[0])
        sleep_s(0.02);
    }
    if (!c->http_url[0]) {
      fprintf(stderr, "bench: the coordinator did not print its HTTP URL (see %s)\n", log);
      goto fail;
    }
  }
  for (int s = 0; s < o->n_stages; s++) {
    char layers[32], thr[16], node[32];
    snprintf(bin, sizeof bin, "%s/sa-worker", o->bin_dir);
    snprintf(log, sizeof log, "%s/stage%d.log", o->log_dir, s);
    snprintf(layers, sizeof layers, "%d:%d", o->first[s], o->last[s]);
    snprintf(thr, sizeof thr, "%d", o->threads_per_stage);
    snprintf(node, sizeof node, "stage%d", s);
    char *wargv[24] = {bin, "--model", (char *)o->model_dir, "--layers", layers,
                       "--replica", "r0", "--coordinator", c->endpoint, "--threads", thr,
                       "--kv-mem", (char *)o->kv_mem, "--node-id", node};
    int nw = 15;
    char wsec[2][1300];
    security_args(o->curve, 1, wargv, &nw, wsec);
    wargv[nw] = NULL;
    if ((c->pids[c->n_pids] = spawn(wargv, log, o->threads_per_stage)) < 0)
      goto fail;
    c->n_pids++;
  }
  t0 = sa_bench_now();
  while (replicas_ready(c->endpoint) < 1) {
    for (int i = 0; i < c->n_pids; i++)
      if (waitpid(c->pids[i], NULL, WNOHANG) != 0) {
        fprintf(stderr, "bench-pipeline: a process of the cluster exited (logs in %s)\n",
                o->log_dir);
        c->pids[i] = 0;
        goto fail;
      }
    if (sa_bench_now() - t0 > timeout_s) {
      fprintf(stderr, "bench-pipeline: replica not ready after %.0f s (logs in %s)\n", timeout_s,
              o->log_dir);
      goto fail;
    }
    sleep_s(0.1);
  }
  return 0;
fail:
  bp_cluster_stop(c);
  return SA_EUNAVAIL;
}

/* --------------------------------------------------------------- submit */

typedef struct {
  bp_req_t *reqs;
  int B, ended;
  uv_loop_t *loop;
  uv_timer_t timer, poll;
  sa_rpc_channel_t *ch;
  bp_load_t *loads;
  int cap, n_loads, polling;
} submit_t;

static void on_status(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  submit_t *s = user;
  (void)ch;
  s->polling = 0;
  if (res->status != SA_STATUS_OK || s->n_loads >= s->cap)
    return;
  Sa__StatusResponse *sr = sa__status_response__unpack(NULL, res->body_len, res->body);
  if (!sr)
    return;
  bp_load_t *l = &s->loads[s->n_loads++];
  memset(l, 0, sizeof *l);
  l->t = sa_bench_now();
  for (size_t i = 0; i < sr->n_workers; i++) {
    int k;
    if (sr->workers[i]->role == SA__ROLE__ROLE_STAGE &&
        sscanf(sr->workers[i]->node_id, "stage%d", &k) == 1 && k >= 0 && k < BP_MAX_STAGES)
      l->load[k] = sr->workers[i]->load;
  }
  sa__status_response__free_unpacked(sr, NULL);
}

static void on_poll(uv_timer_t *t) {
  submit_t *s = t->data;
  if (!s->ch || s->polling || !s->loads)
    return;
  Sa__StatusRequest rq = SA__STATUS_REQUEST__INIT;
  uint8_t buf[16];
  size_t len = sa__status_request__pack(&rq, buf);
  sa_rpc_call_opts_t o = {.timeout_ms = 2000};
  if (sa_rpc_channel_call(s->ch, "Coordinator/Status", buf, len, NULL, 0, &o, on_status, s,
                          NULL) == 0)
    s->polling = 1;
}

typedef struct {
  submit_t *s;
  int i;
} slot_t;

static void on_event(sa_rpc_channel_t *ch, const sa_rpc_result_t *msg, void *user) {
  slot_t *sl = user;
  bp_req_t *r = &sl->s->reqs[sl->i];
  double now = sa_bench_now();
  (void)ch;
  Sa__SubmitEvent *ev = sa__submit_event__unpack(NULL, msg->body_len, msg->body);
  if (!ev)
    return;
  if (ev->payload_case == SA__SUBMIT_EVENT__PAYLOAD_DELTA) {
    int n = ev->delta->token_count > 0 ? ev->delta->token_count : 1;
    for (int k = 0; k < n && r->n_tok < r->cap; k++)
      r->t_tok[r->n_tok++] = now;
  } else if (ev->payload_case == SA__SUBMIT_EVENT__PAYLOAD_FINAL) {
    r->tokens_generated = (int)ev->final->tokens_generated;
    r->prompt_tokens = (int)ev->final->prompt_tokens;
  }
  sa__submit_event__free_unpacked(ev, NULL);
}

static void on_close_noop(uv_handle_t *h) { (void)h; }

static void on_stream_end(sa_rpc_channel_t *ch, const sa_rpc_result_t *end, void *user) {
  slot_t *sl = user;
  submit_t *s = sl->s;
  (void)ch;
  s->reqs[sl->i].t_end = sa_bench_now();
  s->reqs[sl->i].status = end->status;
  if (end->status != SA_STATUS_OK)
    fprintf(stderr, "bench-pipeline: request %d ended with %s: %s\n", sl->i,
            sa_status_name(end->status), end->status_msg);
  if (++s->ended == s->B) {
    uv_timer_stop(&s->timer);
    uv_timer_stop(&s->poll);
    sa_rpc_channel_destroy(&s->ch);
  }
}

static void on_timeout(uv_timer_t *t) {
  submit_t *s = t->data;
  fprintf(stderr, "bench-pipeline: %d of %d requests still running at the timeout\n",
          s->B - s->ended, s->B);
  sa_rpc_channel_t *ch = s->ch;
  uv_timer_stop(&s->poll);
  s->ch = NULL; /* the ends that destroy runs must not destroy it again */
  sa_rpc_channel_destroy(&ch); /* completes the rest with CANCELLED */
}

int bp_cluster_submit(const char *endpoint, const char *prompt, int max_tokens, int B,
                      double timeout_s, bp_req_t *reqs, bp_load_t *loads, int cap,
                      int *n_loads) {
  memset(reqs, 0, sizeof *reqs * (size_t)B);
  for (int i = 0; i < B; i++) {
    reqs[i].cap = max_tokens + 8;
    reqs[i].t_tok = calloc((size_t)reqs[i].cap, sizeof(double));
    reqs[i].status = -1;
    if (!reqs[i].t_tok)
      return SA_ENOMEM;
  }
  slot_t *slots = calloc((size_t)B, sizeof *slots);
  if (!slots)
    return SA_ENOMEM;
  uv_loop_t loop;
  uv_loop_init(&loop);
  submit_t s = {.reqs = reqs, .B = B, .loop = &loop, .loads = loads, .cap = cap};
  int rc = sa_rpc_channel_new(&loop, endpoint, &g_client, &s.ch);
  if (rc) {
    free(slots);
    uv_loop_close(&loop);
    return rc;
  }
  uv_timer_init(&loop, &s.timer);
  s.timer.data = &s;
  uv_timer_start(&s.timer, on_timeout, (uint64_t)(timeout_s * 1000), 0);
  uv_timer_init(&loop, &s.poll);
  s.poll.data = &s;
  uv_timer_start(&s.poll, on_poll, 250, 250);
  Sa__SubmitRequest rq = SA__SUBMIT_REQUEST__INIT;
  Sa__SamplingParams sp = SA__SAMPLING_PARAMS__INIT; /* temperature 0: greedy */
  rq.sampling = &sp;
  rq.prompt = (char *)prompt;
  rq.max_tokens = max_tokens;
  rq.n = 1;
  rq.vote_rule = SA__VOTE_RULE__VOTE_NONE;
  rq.stream_reasoning = true;
  size_t len = sa__submit_request__get_packed_size(&rq);
  uint8_t *buf = malloc(len);
  int started = 0;
  if (buf) {
    sa__submit_request__pack(&rq, buf);
    sa_rpc_call_opts_t co = {.timeout_ms = (int64_t)(timeout_s * 1000), .wait_for_ready = true};
    for (int i = 0; i < B; i++) {
      slots[i] = (slot_t){&s, i};
      reqs[i].t_submit = sa_bench_now();
      if (sa_rpc_channel_stream(s.ch, "Coordinator/Submit", buf, len, NULL, 0, &co, on_event,
                                on_stream_end, &slots[i], NULL) == 0)
        started++;
    }
    free(buf);
  }
  s.B = started;
  if (started == 0) {
    uv_timer_stop(&s.timer);
    uv_timer_stop(&s.poll);
    sa_rpc_channel_destroy(&s.ch);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&s.timer, on_close_noop);
  uv_close((uv_handle_t *)&s.poll, on_close_noop);
  if (n_loads)
    *n_loads = s.n_loads;
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  free(slots);
  if (started < B)
    return SA_EIO;
  for (int i = 0; i < B; i++)
    if (reqs[i].status != SA_STATUS_OK || reqs[i].n_tok != max_tokens)
      return SA_EIO;
  return 0;
}

void bp_reqs_free(bp_req_t *reqs, int B) {
  for (int i = 0; i < B; i++) {
    free(reqs[i].t_tok);
    reqs[i].t_tok = NULL;
  }
}

/* ------------------------------------------------- coordinator's model dir */

static int copy_file(const char *src, const char *dst) {
  FILE *in = fopen(src, "rb"), *out = in ? fopen(dst, "wb") : NULL;
  int rc = in && out ? 0 : SA_EIO;
  char buf[1 << 15];
  size_t n;
  while (rc == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
    if (fwrite(buf, 1, n, out) != n)
      rc = SA_EIO;
  if (in)
    fclose(in);
  if (out && fclose(out))
    rc = SA_EIO;
  return rc;
}

static char *read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
    free(s);
    s = NULL;
  }
  if (s)
    s[n] = 0;
  fclose(f);
  return s;
}

int bp_coord_model_write(const char *model_dir, const char *dst, int vocab) {
  char p[1200], q[1200];
  snprintf(q, sizeof q, "%s/tokenizer.json", dst);
  struct stat sb;
  if (stat(q, &sb) == 0 && sb.st_size > 0)
    return 0; /* written by an earlier run */
  mkdir(dst, 0755);
  snprintf(p, sizeof p, "%s/config.json", model_dir);
  snprintf(q, sizeof q, "%s/config.json", dst);
  if (copy_file(p, q))
    return SA_EIO;
  snprintf(p, sizeof p, "%s/tokenizer_config.json", model_dir);
  snprintf(q, sizeof q, "%s/tokenizer_config.json", dst);
  if (copy_file(p, q))
    return SA_EIO;
  snprintf(p, sizeof p, "%s/tokenizer.json", model_dir);
  char *text = read_text(p);
  cJSON *root = text ? cJSON_Parse(text) : NULL;
  free(text);
  cJSON *model = root ? cJSON_GetObjectItemCaseSensitive(root, "model") : NULL;
  cJSON *v = model ? cJSON_GetObjectItemCaseSensitive(model, "vocab") : NULL;
  cJSON *added = root ? cJSON_GetObjectItemCaseSensitive(root, "added_tokens") : NULL;
  if (!cJSON_IsObject(v)) {
    fprintf(stderr, "bench-pipeline: %s has no model.vocab\n", p);
    cJSON_Delete(root);
    return SA_EFORMAT;
  }
  uint8_t *used = calloc((size_t)vocab, 1);
  int rc = used ? 0 : SA_ENOMEM;
  const cJSON *e;
  cJSON_ArrayForEach(e, v) {
    int id = (int)e->valuedouble;
    if (used && id >= 0 && id < vocab)
      used[id] = 1;
  }
  cJSON_ArrayForEach(e, added) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
    if (used && cJSON_IsNumber(id) && id->valueint >= 0 && id->valueint < vocab)
      used[id->valueint] = 1;
  }
  /* "Ġv<id>" decodes to " v<id>"; "v" followed by digits is never a string
   * of the synthetic vocabulary (checked by the tokenizer at load: a
   * duplicate string is an error there) */
  for (int id = 0; rc == 0 && id < vocab; id++) {
    if (used[id])
      continue;
    char tok[32];
    snprintf(tok, sizeof tok, "\xc4\xa0v%d", id);
    if (!cJSON_AddNumberToObject(v, tok, id))
      rc = SA_ENOMEM;
  }
  free(used);
  char *out = rc == 0 ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  if (!out)
    return rc ? rc : SA_ENOMEM;
  snprintf(q, sizeof q, "%s/tokenizer.json.tmp", dst);
  FILE *f = fopen(q, "wb");
  size_t n = strlen(out);
  rc = f && fwrite(out, 1, n, f) == n ? 0 : SA_EIO;
  if (f && fclose(f))
    rc = SA_EIO;
  free(out);
  if (rc == 0) {
    snprintf(p, sizeof p, "%s/tokenizer.json", dst);
    if (rename(q, p))
      rc = SA_EIO;
  }
  return rc;
}
