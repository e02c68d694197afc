/*
 * sa-cluster — starts a whole sa-cluster on this machine from a topology file
 * (deploy/local/NAME.yaml; the embedded default is deploy/local/default.yaml):
 * the coordinator, the encoders and every replica's stage workers.
 *
 *   sa-cluster up [FILE.yaml]     start, wait until healthy, print where to
 *                                 connect; a background supervisor restarts
 *                                 a child that dies
 *   sa-cluster down [FILE.yaml]   stop the supervisor and its children
 *   sa-cluster status [FILE.yaml] print the supervisor's children and state
 *
 * Binaries are found beside this executable (the build's bin folder). This
 * tool is a launcher for one machine; deploy/k8s holds the real deployment.
 */
#include "config.h"
#include "sa_time.h"
#include "health.h"
#include "log.h"
#include "keys.h"
#include "sa_error.h"
#include "security.h"
#include "topology.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CHILDREN (1 + SA_TOPO_MAX + SA_TOPO_MAX * 4)
#define MAX_ARGS 32
/* A child that dies is restarted after a delay that doubles with each
 * death in a row (0.25 s, 0.5 s, ... up to 30 s); one that ran for a minute
 * starts again from the shortest. The supervisor never gives up while the
 * cluster is up. */
#define BACKOFF_FIRST_S 0.25
#define BACKOFF_MAX_S 30.0
#define HEALTHY_RUN_S 60.0

typedef struct {
  char name[96];
  char *argv[MAX_ARGS];
  char argbuf[MAX_ARGS][512];
  pid_t pid;
  int deaths;            /* in a row, without a run of HEALTHY_RUN_S */
  double started;        /* when the current process started */
  double next_start;     /* backoff: don't restart before this time */
} child_t;

static child_t g_children[MAX_CHILDREN];
static int g_n_children;
static volatile sig_atomic_t g_stop;

#define DRAIN_GRACE_S 30 /* sa-worker's default --drain-grace-s */

static void usage(FILE *f) {
  fprintf(f,
          "usage: sa-cluster up [FILE.yaml] [--timeout SECONDS]\n"
          "       sa-cluster down [FILE.yaml]\n"
          "       sa-cluster status [FILE.yaml]\n"
          "\n"
          "Starts a local sa-cluster (coordinator, encoders, stage workers) from a\n"
          "topology file; without FILE the embedded default deploy/local/default.yaml\n"
          "is used (models/r1-mini, 1 encoder, 1 replica x 2 stages).\n"
          "\n"
          "  up       start everything, wait until every encoder and stage has\n"
          "           registered with the coordinator, print where to connect;\n"
          "           a background supervisor restarts a child that dies (after\n"
          "           0.25 s, doubling with each death in a row up to 30 s; it never\n"
          "           gives up) and keeps logs in run_dir; a child that cannot start\n"
          "           (exits with an error) makes `up` fail at once with its log\n"
          "  down     stop the supervisor and every child it started\n"
          "  status   show the supervisor's pid and the coordinator's view\n"
          "  --timeout SECONDS   how long `up` waits for health (default 120)\n"
          "  --insecure          up: run without encryption or keys (plain text on\n"
          "                      loopback). By default every link is CurveZMQ with\n"
          "                      the key set made in run_dir/keys on first start\n");
}

/* The embedded default topology, kept identical to deploy/local/default.yaml
 * (a test checks they parse to the same thing). */
static const char k_default_yaml[] =
    "model: models/r1-mini\n"
    "run_dir: build/cluster\n"
    "threads: 1\n"
    "coordinator:\n"
    "  listen: tcp://127.0.0.1:7700\n"
    "  http: 127.0.0.1:8000\n"
    "encoders:\n"
    "  - listen: tcp://127.0.0.1:7710\n"
    "replicas:\n"
    "  - name: r0\n"
    "    kv_mem: 64MiB\n"
    "    stages:\n"
    "      - layers: auto\n"
    "        listen: tcp://127.0.0.1:7720\n"
    "      - layers: auto\n"
    "        listen: tcp://127.0.0.1:7721\n";

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  if (n < 0 || n > (1 << 20)) {
    fclose(f);
    return NULL;
  }
  rewind(f);
  char *buf = malloc((size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  if (buf) {
    buf[n] = '\0';
    *len = (size_t)n;
  }
  return buf;
}

static int load_topology(const char *file, sa_topo_t *t) {
  char err[512];
  int rc;
  if (file) {
    size_t len;
    char *text = read_file(file, &len);
    if (!text) {
      fprintf(stderr, "sa-cluster: cannot read %s: %s\n", file, strerror(errno));
      return SA_ENOENT;
    }
    rc = sa_topo_parse(text, len, t, err, sizeof err);
    free(text);
  } else {
    rc = sa_topo_parse(k_default_yaml, sizeof k_default_yaml - 1, t, err, sizeof err);
  }
  if (rc) {
    fprintf(stderr, "sa-cluster: %s: %s\n", file ? file : "(default)", err);
    return rc;
  }
  return 0;
}

static void bin_dir(char *out, size_t cap) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    snprintf(out, cap, ".");
    return;
  }
  self[n] = '\0';
  char *slash = strrchr(self, '/');
  if (slash)
    *slash = '\0';
  snprintf(out, cap, "%s", self);
}

static int mkdirs(const char *path) {
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *p = tmp + 1; *p; p++) {
    if (*p == '/') {
      *p = '\0';
      if (mkdir(tmp, 0755) && errno != EEXIST)
        return -1;
      *p = '/';
    }
  }
  if (mkdir(tmp, 0755) && errno != EEXIST)
    return -1;
  return 0;
}

static child_t *add_child(const char *name) {
  child_t *c = &g_children[g_n_children++];
  memset(c, 0, sizeof *c);
  snprintf(c->name, sizeof c->name, "%s", name);
  return c;
}

static void child_arg(child_t *c, const char *fmt, const char *val) {
  int i = 0;
  while (c->argv[i])
    i++;
  SA_ASSERT(i < MAX_ARGS - 1, "too many arguments for a child");
  snprintf(c->argbuf[i], sizeof c->argbuf[i], fmt, val);
  c->argv[i] = c->argbuf[i];
}

/* The key set of a local cluster (docs/security.md): a key per role and the
 * allow folder of all of them, made on first start. */
static void keys_dir(const sa_topo_t *t, char *out, size_t cap) {
  snprintf(out, cap, "%s/keys", t->run_dir);
}

static int ensure_keys(const sa_topo_t *t) {
  static const sa_role_t roles[] = {SA_ROLE_COORDINATOR, SA_ROLE_ENCODER, SA_ROLE_STAGE,
                                    SA_ROLE_CLIENT, SA_ROLE_OPERATOR};
  char dir[PATH_MAX], err[512];
  keys_dir(t, dir, sizeof dir);
  int made = sa_keys_make_set(dir, roles, (int)(sizeof roles / sizeof roles[0]), err, sizeof err);
  if (made < 0) {
    fprintf(stderr, "sa-cluster: %s\n", err);
    return -1;
  }
  if (made)
    printf("sa-cluster: made a CurveZMQ key set in %s/ (one key per role)\n", dir);
  return 0;
}

/* --key and --allow of a child of role `name`, or --insecure. */
static void child_security(child_t *c, const sa_topo_t *t, const char *name, bool insecure) {
  if (insecure) {
    child_arg(c, "%s", "--insecure");
    return;
  }
  char dir[PATH_MAX], path[PATH_MAX + 64];
  keys_dir(t, dir, sizeof dir);
  snprintf(path, sizeof path, "%s/%s.key", dir, name);
  child_arg(c, "%s", "--key");
  child_arg(c, "%s", path);
  snprintf(path, sizeof path, "%s/allow", dir);
  child_arg(c, "%s", "--allow");
  child_arg(c, "%s", path);
}

/* The client key's channel options for status calls (plain text when the
 * cluster runs insecure). Returns 0 or -1 with the reason printed. */
static int client_opts(const sa_topo_t *t, sa_sec_t *sec, sa_rpc_opts_t *o) {
  char dir[PATH_MAX], key[PATH_MAX + 16], allow[PATH_MAX + 16], err[512];
  keys_dir(t, dir, sizeof dir);
  snprintf(key, sizeof key, "%s/client.key", dir);
  snprintf(allow, sizeof allow, "%s/allow", dir);
  sa_rpc_opts_default(o);
  char flag[PATH_MAX + 16];
  snprintf(flag, sizeof flag, "%s/insecure", t->run_dir);
  bool insecure = access(flag, F_OK) == 0;
  if (sa_sec_open(sec, key, allow, insecure, SA_ROLE_CLIENT, err, sizeof err) ||
      sa_sec_coordinator_opts(sec, o, err, sizeof err)) {
    fprintf(stderr, "sa-cluster: %s\n", err);
    return -1;
  }
  return 0;
}

static void plan_children(const sa_topo_t *t, const char *bins, bool insecure) {
  char threads[16], path[PATH_MAX];
  snprintf(threads, sizeof threads, "%d", t->threads);
  g_n_children = 0;

  child_t *co = add_child("coordinator");
  snprintf(path, sizeof path, "%s/sa-coordinator", bins);
  child_arg(co, "%s", path);
  child_arg(co, "%s", "--model");
  child_arg(co, "%s", t->model);
  child_arg(co, "%s", "--listen");
  child_arg(co, "%s", t->coordinator);
  child_arg(co, "%s", "--state"); /* a restarted coordinator resumes its requests */
  child_arg(co, "%s/state", t->run_dir);
  if (t->coordinator_http[0]) {
    child_arg(co, "%s", "--http");
    child_arg(co, "%s", t->coordinator_http);
  }
  child_security(co, t, "coordinator", insecure);

  for (int e = 0; e < t->n_encoders; e++) {
    char name[32];
    snprintf(name, sizeof name, "encoder%d", e);
    child_t *c = add_child(name);
    snprintf(path, sizeof path, "%s/sa-encoder", bins);
    child_arg(c, "%s", path);
    child_arg(c, "%s", "--model");
    child_arg(c, "%s", t->model);
    child_arg(c, "%s", "--listen");
    child_arg(c, "%s", t->encoders[e]);
    child_arg(c, "%s", "--coordinator");
    child_arg(c, "%s", t->coordinator);
    child_arg(c, "%s", "--threads");
    child_arg(c, "%s", threads);
    child_security(c, t, "encoder", insecure);
  }
  for (int r = 0; r < t->n_replicas; r++) {
    const sa_topo_replica_t *rp = &t->replicas[r];
    for (int s = 0; s < rp->n_stages; s++) {
      char name[96], layers[32];
      snprintf(name, sizeof name, "%s-stage%d", rp->name, s);
      snprintf(layers, sizeof layers, "%d:%d", rp->stages[s].first,
               rp->stages[s].last);
      child_t *c = add_child(name);
      snprintf(path, sizeof path, "%s/sa-worker", bins);
      child_arg(c, "%s", path);
      child_arg(c, "%s", "--model");
      child_arg(c, "%s", t->model);
      child_arg(c, "%s", "--layers");
      child_arg(c, "%s", layers);
      child_arg(c, "%s", "--listen");
      child_arg(c, "%s", rp->stages[s].listen);
      child_arg(c, "%s", "--coordinator");
      child_arg(c, "%s", t->coordinator);
      child_arg(c, "%s", "--replica");
      child_arg(c, "%s", rp->name);
      child_arg(c, "%s", "--kv-mem");
      child_arg(c, "%s", rp->kv_mem);
      child_arg(c, "%s", "--threads");
      child_arg(c, "%s", threads);
      child_security(c, t, "stage", insecure);
    }
  }
}

/* Waits until children from..n-1 have exited or the deadline passed. */
static void reap_children(int from, double deadline) {
  int alive;
  do {
    alive = 0;
    for (int i = from; i < g_n_children; i++) {
      if (g_children[i].pid <= 0)
        continue;
      if (waitpid(g_children[i].pid, NULL, WNOHANG) == g_children[i].pid)
        g_children[i].pid = 0;
      else
        alive++;
    }
    if (alive)
      usleep(50 * 1000);
  } while (alive && sa_now_s() < deadline);
}

static pid_t spawn(child_t *c, const char *run_dir) {
  char log_path[PATH_MAX];
  snprintf(log_path, sizeof log_path, "%s/%s.log", run_dir, c->name);
  pid_t pid = fork();
  if (pid < 0)
    return -1;
  if (pid == 0) {
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    int nul = open("/dev/null", O_RDONLY);
    if (nul >= 0) {
      dup2(nul, STDIN_FILENO);
      close(nul);
    }
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
    execv(c->argv[0], c->argv);
    fprintf(stderr, "sa-cluster: exec %s: %s\n", c->argv[0], strerror(errno));
    _exit(127);
  }
  return pid;
}

static void on_stop(int sig) {
  (void)sig;
  g_stop = 1;
}

static void pid_path(const sa_topo_t *t, char *out, size_t cap) {
  snprintf(out, cap, "%s/sa-cluster.pid", t->run_dir);
}

/* The supervisor: starts every child, restarts the ones that die, stops all
 * on SIGTERM/SIGINT. Runs in its own session; never returns. */
/* Appends "NAME STATUS" to run_dir/deaths (STATUS: the exit status, or
 * -SIGNAL), which `up` reads to fail fast on a child that cannot start. */
static void record_death(const sa_topo_t *t, const child_t *c, int status) {
  char path[PATH_MAX + 16];
  snprintf(path, sizeof path, "%s/deaths", t->run_dir);
  FILE *f = fopen(path, "a");
  if (f) {
    fprintf(f, "%s %d\n", c->name, status);
    fclose(f);
  }
}

static void supervise(const sa_topo_t *t) {
  signal(SIGTERM, on_stop);
  signal(SIGINT, on_stop);
  signal(SIGHUP, SIG_IGN);
  double now = sa_now_s();
  for (int i = 0; i < g_n_children; i++) {
    g_children[i].started = now;
    g_children[i].pid = spawn(&g_children[i], t->run_dir);
    SA_LOG_INFO("started %s (pid %d)", g_children[i].name, (int)g_children[i].pid);
    if (i == 0)
      usleep(200 * 1000); /* let the coordinator bind first */
  }
  while (!g_stop) {
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
      for (int i = 0; i < g_n_children; i++) {
        child_t *c = &g_children[i];
        if (c->pid != pid)
          continue;
        c->pid = 0;
        now = sa_now_s();
        if (now - c->started >= HEALTHY_RUN_S)
          c->deaths = 0;
        c->deaths++;
        double delay = BACKOFF_FIRST_S;
        for (int k = 1; k < c->deaths && delay < BACKOFF_MAX_S; k++)
          delay *= 2;
        if (delay > BACKOFF_MAX_S)
          delay = BACKOFF_MAX_S;
        c->next_start = now + delay;
        if (WIFEXITED(st)) {
          SA_LOG_WARN("%s exited with status %d; restarting in %.2f s (%d in a row)", c->name,
                      WEXITSTATUS(st), delay, c->deaths);
          record_death(t, c, WEXITSTATUS(st));
        } else {
          SA_LOG_WARN("%s killed by signal %d; restarting in %.2f s (%d in a row)", c->name,
                      WTERMSIG(st), delay, c->deaths);
          record_death(t, c, -WTERMSIG(st));
        }
      }
    }
    now = sa_now_s();
    for (int i = 0; i < g_n_children; i++) {
      child_t *c = &g_children[i];
      if (c->pid == 0 && now >= c->next_start) {
        c->started = now;
        c->pid = spawn(c, t->run_dir);
        SA_LOG_INFO("restarted %s (pid %d)", c->name, (int)c->pid);
      }
    }
    usleep(50 * 1000);
  }
  /* a planned stop drains: stages and encoders first (SIGTERM: each takes
   * no new work, finishes what runs, at most its --drain-grace-s, then
   * exits), the coordinator last (what did not finish stays in its
   * journal and resumes at the next `up`) */
  SA_LOG_INFO("stopping %d children: draining workers and encoders first", g_n_children);
  for (int i = g_n_children - 1; i >= 1; i--)
    if (g_children[i].pid > 0)
      kill(g_children[i].pid, SIGTERM);
  reap_children(1, sa_now_s() + DRAIN_GRACE_S + 5.0);
  if (g_children[0].pid > 0)
    kill(g_children[0].pid, SIGTERM);
  reap_children(0, sa_now_s() + 5.0);
  for (int i = 0; i < g_n_children; i++)
    if (g_children[i].pid > 0) {
      kill(g_children[i].pid, SIGKILL);
      waitpid(g_children[i].pid, NULL, 0);
    }
  char pp[PATH_MAX];
  pid_path(t, pp, sizeof pp);
  unlink(pp);
  _exit(0);
}

static pid_t read_pid(const sa_topo_t *t) {
  char pp[PATH_MAX];
  pid_path(t, pp, sizeof pp);
  FILE *f = fopen(pp, "r");
  if (!f)
    return 0;
  long pid = 0;
  if (fscanf(f, "%ld", &pid) != 1)
    pid = 0;
  fclose(f);
  if (pid > 0 && kill((pid_t)pid, 0) == 0)
    return (pid_t)pid;
  return 0;
}

static void tail_logs(const sa_topo_t *t) {
  for (int i = 0; i < g_n_children; i++) {
    char cmd[PATH_MAX + 64];
    fprintf(stderr, "--- %s/%s.log (last lines) ---\n", t->run_dir,
            g_children[i].name);
    snprintf(cmd, sizeof cmd, "tail -n 5 '%s/%s.log' 1>&2", t->run_dir,
             g_children[i].name);
    if (system(cmd) != 0)
      fprintf(stderr, "(no log)\n");
  }
}


/* A child that exited with an error status since `up` began (it cannot
 * start: a bad model, a port in use, bad keys): its name, or NULL. */
static const char *child_failed(const sa_topo_t *t, int *status) {
  static char name[96];
  char path[PATH_MAX + 16];
  snprintf(path, sizeof path, "%s/deaths", t->run_dir);
  FILE *f = fopen(path, "r");
  const char *found = NULL;
  int st;
  while (f && !found && fscanf(f, "%95s %d", name, &st) == 2)
    if (st > 0) {
      found = name;
      *status = st;
    }
  if (f)
    fclose(f);
  return found;
}

static int cmd_up(const sa_topo_t *t, double timeout_s, bool insecure) {
  char bins[PATH_MAX];
  bin_dir(bins, sizeof bins);
  pid_t old = read_pid(t);
  if (old) {
    fprintf(stderr,
            "sa-cluster: a cluster is already running from %s (supervisor pid "
            "%d); run `sa-cluster down` first\n",
            t->run_dir, (int)old);
    return 1;
  }
  if (mkdirs(t->run_dir)) {
    fprintf(stderr, "sa-cluster: cannot create %s: %s\n", t->run_dir, strerror(errno));
    return 1;
  }
  char flag[PATH_MAX + 16];
  snprintf(flag, sizeof flag, "%s/insecure", t->run_dir);
  if (insecure) {
    FILE *f = fopen(flag, "w");
    if (f)
      fclose(f);
  } else {
    unlink(flag);
    if (ensure_keys(t))
      return 1;
  }
  static sa_sec_t sec;
  sa_rpc_opts_t copts;
  if (client_opts(t, &sec, &copts))
    return 1;
  plan_children(t, bins, insecure);
  for (int i = 0; i < g_n_children; i++)
    if (access(g_children[i].argv[0], X_OK) != 0) {
      fprintf(stderr, "sa-cluster: %s not found (build first: make build)\n",
              g_children[i].argv[0]);
      return 1;
    }
  char sup_log[PATH_MAX], deaths[PATH_MAX + 16];
  snprintf(sup_log, sizeof sup_log, "%s/sa-cluster.log", t->run_dir);
  snprintf(deaths, sizeof deaths, "%s/deaths", t->run_dir);
  unlink(deaths);
  fflush(NULL);
  pid_t sup = fork();
  if (sup < 0) {
    perror("sa-cluster: fork");
    return 1;
  }
  if (sup == 0) {
    setsid();
    int fd = open(sup_log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    char pp[PATH_MAX];
    pid_path(t, pp, sizeof pp);
    FILE *f = fopen(pp, "w");
    if (f) {
      fprintf(f, "%d\n", (int)getpid());
      fclose(f);
    }
    supervise(t);
  }
  printf("sa-cluster: starting %d processes (logs in %s/)\n", g_n_children,
         t->run_dir);
  fflush(stdout);
  double deadline = sa_now_s() + timeout_s;
  char why[512] = "";
  int last_shown = -1;
  while (sa_now_s() < deadline) {
    if (waitpid(sup, NULL, WNOHANG) == sup) {
      fprintf(stderr, "sa-cluster: the supervisor exited; see %s\n", sup_log);
      tail_logs(t);
      return 1;
    }
    int status = 0;
    const char *bad = child_failed(t, &status);
    if (bad) {
      fprintf(stderr, "sa-cluster: %s could not start (exit status %d):\n", bad, status);
      char cmd[PATH_MAX + 128];
      snprintf(cmd, sizeof cmd, "tail -n 5 '%s/%s.log' 1>&2", t->run_dir, bad);
      if (system(cmd) != 0)
        fprintf(stderr, "(no log)\n");
      kill(sup, SIGTERM);
      waitpid(sup, NULL, 0);
      return 1;
    }
    sa_cluster_health_t h;
    int rc = sa_cluster_health(t, &copts, &h, why, sizeof why);
    if (rc == 0 && h.ready) {
      printf("sa-cluster: healthy: %d/%d encoders, %d/%d replicas ready\n",
             h.encoders, t->n_encoders, h.replicas, t->n_replicas);
      printf("sa-cluster: coordinator at %s\n", t->coordinator);
      if (insecure) {
        printf("sa-cluster: INSECURE: plain text, no keys (--insecure)\n");
      } else {
        char dir[PATH_MAX];
        keys_dir(t, dir, sizeof dir);
        printf("sa-cluster: encrypted (CurveZMQ); clients use the client key:\n");
        printf("  export SA_KEY=%s/client.key SA_ALLOW=%s/allow\n", dir, dir);
        printf("  (drain and undrain need %s/operator.key)\n", dir);
      }
      printf("  submit:  sa-client submit clip.wav --coordinator %s\n", t->coordinator);
      printf("  status:  sa-client status --coordinator %s\n", t->coordinator);
      if (t->coordinator_http[0]) {
        printf("sa-cluster: HTTP API (OpenAI-compatible) at http://%s\n", t->coordinator_http);
        char name[256];
        sa_config_model_name(t->model, name, sizeof name);
        printf("  curl:    curl http://%s/v1/chat/completions -d '{\"model\": \"%s\", "
               "\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'\n",
               t->coordinator_http, name);
        printf("  health:  curl http://%s/health    metrics: curl http://%s/metrics\n",
               t->coordinator_http, t->coordinator_http);
      }
      printf("  stop:    sa-cluster down\n");
      return 0;
    }
    int shown = rc == 0 ? h.encoders * 1000 + h.stages : -2;
    if (shown != last_shown && rc == 0) {
      printf("sa-cluster: waiting: %d/%d encoders, %d stages registered\n",
             h.encoders, t->n_encoders, h.stages);
      fflush(stdout);
      last_shown = shown;
    }
    usleep(300 * 1000);
  }
  fprintf(stderr, "sa-cluster: not healthy after %.0f s (%s); stopping\n",
          timeout_s, why[0] ? why : "no answer");
  tail_logs(t);
  kill(sup, SIGTERM);
  waitpid(sup, NULL, 0);
  return 1;
}

static int cmd_down(const sa_topo_t *t) {
  pid_t pid = read_pid(t);
  if (!pid) {
    printf("sa-cluster: no cluster running from %s\n", t->run_dir);
    return 0;
  }
  kill(pid, SIGTERM);
  printf("sa-cluster: draining (running requests finish, at most %d s), then stopping\n",
         DRAIN_GRACE_S);
  fflush(stdout);
  double deadline = sa_now_s() + DRAIN_GRACE_S + 15.0;
  while (kill(pid, 0) == 0 && sa_now_s() < deadline)
    usleep(100 * 1000);
  if (kill(pid, 0) == 0) {
    fprintf(stderr, "sa-cluster: supervisor %d did not stop; killing it\n", (int)pid);
    kill(pid, SIGKILL);
  }
  printf("sa-cluster: stopped\n");
  return 0;
}

static int cmd_status(const sa_topo_t *t) {
  pid_t pid = read_pid(t);
  if (!pid) {
    printf("sa-cluster: not running (run_dir %s)\n", t->run_dir);
    return 1;
  }
  printf("sa-cluster: supervisor pid %d, logs in %s/\n", (int)pid, t->run_dir);
  sa_cluster_health_t h;
  char why[512] = "";
  static sa_sec_t sec;
  sa_rpc_opts_t copts;
  if (client_opts(t, &sec, &copts))
    return 1;
  if (sa_cluster_health(t, &copts, &h, why, sizeof why) == 0)
    printf("  %d/%d encoders, %d stages registered, %d/%d replicas ready\n",
           h.encoders, t->n_encoders, h.stages, h.replicas, t->n_replicas);
  else
    printf("  coordinator did not answer: %s\n", why);
  return 0;
}

int main(int argc, char **argv) {
  sa_log_init("sa-cluster");
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const char *cmd = argv[1];
  const char *file = NULL;
  double timeout_s = 120;
  bool insecure = false;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
      timeout_s = atof(argv[++i]);
    } else if (!strcmp(argv[i], "--insecure")) {
      insecure = true;
    } else if (argv[i][0] == '-') {
      fprintf(stderr, "sa-cluster: unknown option %s\n", argv[i]);
      usage(stderr);
      return 2;
    } else {
      file = argv[i];
    }
  }
  static sa_topo_t topo;
  if (load_topology(file, &topo))
    return 1;
  if (!strcmp(cmd, "up")) {
    sa_model_config_t cfg;
    char err[512];
    if (sa_config_load(topo.model, &cfg, err, sizeof err)) {
      fprintf(stderr,
              "sa-cluster: model %s: %s\n  (run from the repository's top folder, "
              "which ships models/r1-mini; or a random test model: sa-model "
              "init --preset tiny --out %s)\n",
              topo.model, err, topo.model);
      return 1;
    }
    if (sa_topo_resolve_layers(&topo, cfg.num_hidden_layers, err, sizeof err)) {
      fprintf(stderr, "sa-cluster: %s\n", err);
      return 1;
    }
    return cmd_up(&topo, timeout_s, insecure);
  }
  if (!strcmp(cmd, "down"))
    return cmd_down(&topo);
  if (!strcmp(cmd, "status"))
    return cmd_status(&topo);
  fprintf(stderr, "sa-cluster: unknown command '%s'\n", cmd);
  usage(stderr);
  return 2;
}
