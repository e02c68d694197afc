/*
 * sa-load — an open-loop load generator for sa-cluster.
 *
 *   sa-load --workload mix.json --rate 2 --duration 60 --out run.jsonl
 *   sa-load --workload mix.json --concurrency 8 --requests 100
 *   sa-load --workload mix.json --rate 2 --duration 60 --http http://127.0.0.1:8000
 *
 * Requests arrive as a Poisson process at --rate per second whatever the
 * cluster does (open loop: a slow cluster sees a queue, not fewer requests),
 * or --concurrency keeps that many in flight (closed loop). Each request is
 * drawn from the workload mix (workload.h) and carries the sampling seed
 * --seed + i, its draw also a function of (--seed, i): two runs with the same
 * seed send the same requests in the same order and, on an exact engine,
 * get the same tokens — compare them by "i".
 *
 * Over our RPC every request goes through stream.h: a coordinator that
 * restarts on its journal is asked again from the bytes held, so a request
 * is lost only if the cluster loses it. Over the HTTP API (--http: the
 * OpenAI-compatible streamed chat completions, http_stream.h) a broken
 * stream is a failed request, and an SSE chunk's token count is not known
 * (each counts as one; the request's total comes from its usage).
 *
 * Output: one JSON line per request as it ends (--out): its submit time,
 * first token, the arrival time and token count of every delta, each chain's
 * tokens and answer, the vote, status and error; a progress line on stderr
 * every second; at the end a summary (goodput; TTFT, inter-token and
 * end-to-end p50/p90/p99) on stderr and as JSON (--summary). Times are
 * seconds since the run started (summary "start_unix" is that instant).
 */
#include "common.h"
#include "http_stream.h"
#include "stream.h"
#include "workload.h"

#include "rpc.h"
#include "sa.pb-c.h"
#include "sa_error.h"
#include "sa_time.h"
#include "security.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define MAX_AUDIO_BYTES (64u << 20)

static void usage(FILE *f) {
  fprintf(f,
          "usage: sa-load --workload FILE (--rate R | --concurrency C)\n"
          "               (--requests N | --duration S) [options]\n"
          "\n"
          "  --workload FILE        the request mix (JSON; see experiments/README.md)\n"
          "  --rate R               open loop: Poisson arrivals, R requests per second\n"
          "  --concurrency C        closed loop: C requests in flight\n"
          "  --requests N           send N requests\n"
          "  --duration S           send for S seconds (with --requests: whichever first)\n"
          "  --seed S               arrival times, the mix draw and request i's sampling\n"
          "                         seed S+i (default 1): equal seeds, equal requests\n"
          "  --out FILE             one JSON line per request (default: none)\n"
          "  --summary FILE         the summary as JSON (default: none)\n"
          "  --id-prefix P          request ids are P-i (default: load-<random>)\n"
          "  --timeout S            per request (default 600)\n"
          "  --max-inflight N       never more in flight (default 4096): arrivals past it\n"
          "                         are sent as soon as one ends and counted as delayed\n"
          "  --quiet                no progress line\n"
          "  --http URL             send over the OpenAI-compatible HTTP API at URL (e.g.\n"
          "                         http://127.0.0.1:8000) instead of our RPC\n"
          "  --api-key-file FILE    HTTP: the API key (Authorization: Bearer)\n"
          "  --model NAME           HTTP: the model name (default: GET /v1/models)\n"
          "  --coordinator ADDR     default $SA_COORDINATOR or " SA_DEFAULT_COORDINATOR "\n"
          SA_SEC_USAGE
          "  -h, --help\n"
          "Ctrl-C stops sending, cancels what is in flight and writes the summary.\n"
          "Exit status: 0 if every request completed, 1 if any failed, 2 bad usage.\n");
}

/* ------------------------------------------------------------- numbers */

typedef struct {
  double *v;
  size_t n, cap;
} vec_t;

static void vec_push(vec_t *a, double x) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 256;
    double *v = realloc(a->v, cap * sizeof *v);
    if (!v)
      return; /* a percentile over fewer samples; never a crash */
    a->v = v;
    a->cap = cap;
  }
  a->v[a->n++] = x;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Nearest-rank percentile of the sorted a (NAN when empty). */
static double pct(const vec_t *a, double p) {
  if (!a->n)
    return NAN;
  size_t k = (size_t)ceil(p / 100.0 * (double)a->n);
  return a->v[k ? k - 1 : 0];
}

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static double unit(uint64_t *x) { return (double)(splitmix64(x) >> 11) * 0x1.0p-53; }

/* ------------------------------------------------------------- the run */

typedef struct {
  float t;
  int32_t chain, count;
} arrival_t;

typedef struct load load_t;

typedef struct req {
  load_t *L;
  int64_t i;
  int item;
  uint64_t seed;
  char id[64];
  double t_submit, t_first, t_end; /* since the run started; t_first < 0: none */
  bool delayed;
  sa_submit_stream_t *stream;
  sa_http_req_t *hreq; /* --http */
  arrival_t *arr;
  int n_arr, cap_arr;
  int64_t tokens;
  int n_chains;
  char **text; /* each chain's text as streamed (reasoning, then the answer) */
  size_t *text_len;
  cJSON *final; /* the FinalResult as JSON */
  struct req *prev, *next;
} req_t;

struct load {
  uv_loop_t *loop;
  sa_rpc_channel_t *ch;
  sa_http_t *http;  /* --http instead of ch */
  char model[128];
  char **b64;       /* --http: each item's clip in base64 */
  sa_workload_t w;
  double rate;
  int concurrency, max_inflight;
  int64_t n_requests; /* 0 = by duration */
  double duration;    /* 0 = by count */
  uint64_t seed, arrival_rng;
  double timeout;
  char prefix[48];
  FILE *out;
  const char *summary_path;
  bool quiet, tty;
  double t0, start_unix;
  double next_at; /* rate mode: the next arrival, since t0 */
  int64_t sent, done_ok, failed, cancelled, delayed, pending_sends;
  int inflight;
  bool stopping, finished;
  int64_t tokens_all, tokens_ok;
  double last_end;
  vec_t ttft, itl, e2e;
  req_t *head;
  uv_timer_t arrive, progress;
  uv_signal_t sigint, sigterm;
  int64_t last_tokens;
  double last_progress;
};

static double now_rel(const load_t *L) { return sa_now_s() - L->t0; }

static bool sending_over(const load_t *L) {
  return L->stopping || (L->n_requests && L->sent + L->pending_sends >= L->n_requests) ||
         (L->duration > 0 && now_rel(L) >= L->duration);
}

static void maybe_finish(load_t *L);
static void send_one(load_t *L, bool delayed);

static cJSON *final_json(const Sa__FinalResult *f) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "answer", f->answer);
  cJSON_AddNumberToObject(o, "votes", f->votes);
  cJSON_AddNumberToObject(o, "prompt_tokens", (double)f->prompt_tokens);
  cJSON_AddNumberToObject(o, "audio_tokens", (double)f->audio_tokens);
  cJSON_AddNumberToObject(o, "tokens_generated", (double)f->tokens_generated);
  cJSON_AddNumberToObject(o, "tokens_saved", (double)f->tokens_saved);
  cJSON *chains = cJSON_AddArrayToObject(o, "chains");
  for (size_t i = 0; i < f->n_chains; i++) {
    const Sa__ChainResult *c = f->chains[i];
    cJSON *co = cJSON_CreateObject();
    cJSON_AddNumberToObject(co, "chain", c->chain);
    cJSON_AddStringToObject(co, "answer", c->normalized_answer);
    cJSON_AddStringToObject(co, "finish", sa_client_finish_name(c->finish_reason));
    cJSON *toks = cJSON_AddArrayToObject(co, "tokens");
    for (size_t k = 0; k < c->n_tokens; k++)
      cJSON_AddItemToArray(toks, cJSON_CreateNumber(c->tokens[k]));
    cJSON_AddItemToArray(chains, co);
  }
  return o;
}

/* A delta of chain's text covering count tokens arrived now. */
static void arrival(req_t *r, int chain, int count, const char *text, size_t len) {
  load_t *L = r->L;
  double t = now_rel(L);
  if (chain < 0 || chain >= r->n_chains)
    return;
  if (r->t_first < 0) {
    r->t_first = t;
  } else if (count > 0) { /* inter-token: the gap since this chain's last delta, per token */
    for (int k = r->n_arr - 1; k >= 0; k--)
      if (r->arr[k].chain == chain && r->arr[k].count > 0) {
        double gap = (t - r->arr[k].t) / count;
        for (int j = 0; j < count; j++)
          vec_push(&L->itl, gap);
        break;
      }
  }
  char *s = realloc(r->text[chain], r->text_len[chain] + len + 1);
  if (s) {
    memcpy(s + r->text_len[chain], text, len);
    r->text_len[chain] += len;
    s[r->text_len[chain]] = '\0';
    r->text[chain] = s;
  }
  if (r->n_arr == r->cap_arr) {
    int cap = r->cap_arr ? r->cap_arr * 2 : 64;
    arrival_t *a = realloc(r->arr, (size_t)cap * sizeof *a);
    if (!a)
      return;
    r->arr = a;
    r->cap_arr = cap;
  }
  r->arr[r->n_arr++] = (arrival_t){(float)t, chain, count};
  r->tokens += count;
  L->tokens_all += count;
}

static void on_event(void *user, Sa__SubmitEvent *ev) {
  req_t *r = user;
  if (ev->payload_case == SA__SUBMIT_EVENT__PAYLOAD_DELTA) {
    const Sa__SubmitEvent__Delta *d = ev->delta;
    /* 0 tokens: text held back earlier (a stop string's prefix) */
    arrival(r, d->chain, d->token_count > 0 ? d->token_count : 0, d->text, strlen(d->text));
  } else if (ev->payload_case == SA__SUBMIT_EVENT__PAYLOAD_FINAL && !r->final) {
    r->final = final_json(ev->final);
  }
}

static void write_record(load_t *L, req_t *r, int status, const char *msg) {
  if (!L->out)
    return;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "i", (double)r->i);
  cJSON_AddStringToObject(o, "id", r->id);
  cJSON_AddNumberToObject(o, "item", r->item);
  char seed[24];
  snprintf(seed, sizeof seed, "%llu", (unsigned long long)r->seed);
  cJSON_AddStringToObject(o, "seed", seed); /* a string: 64 bits */
  cJSON_AddNumberToObject(o, "submit_s", r->t_submit);
  if (r->t_first >= 0)
    cJSON_AddNumberToObject(o, "ttft_s", r->t_first - r->t_submit);
  else
    cJSON_AddNullToObject(o, "ttft_s");
  cJSON_AddNumberToObject(o, "end_s", r->t_end);
  cJSON_AddStringToObject(o, "status", sa_status_name(status));
  cJSON_AddStringToObject(o, "error", status == SA_STATUS_OK ? "" : msg);
  cJSON_AddStringToObject(o, "transport", r->stream ? "rpc" : "http");
  cJSON_AddNumberToObject(o, "resumes", r->stream ? sa_submit_stream_resumes(r->stream) : 0);
  cJSON_AddNumberToObject(o, "gaps", r->stream ? sa_submit_stream_gaps(r->stream) : 0);
  cJSON_AddBoolToObject(o, "delayed", r->delayed);
  cJSON_AddNumberToObject(o, "tokens", (double)r->tokens);
  if (r->final) { /* each chain's text as streamed beside its tokens */
    cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(r->final, "chains")) {
      int k = cJSON_GetObjectItemCaseSensitive(c, "chain")->valueint;
      cJSON_AddStringToObject(c, "text", k >= 0 && k < r->n_chains && r->text[k] ? r->text[k]
                                                                                : "");
    }
    cJSON_AddItemToObject(o, "result", r->final);
    r->final = NULL;
  } else {
    cJSON_AddNullToObject(o, "result");
  }
  cJSON *arr = cJSON_AddArrayToObject(o, "arrivals"); /* [chain, t, tokens] */
  for (int k = 0; k < r->n_arr; k++) {
    cJSON *a = cJSON_CreateArray();
    cJSON_AddItemToArray(a, cJSON_CreateNumber(r->arr[k].chain));
    cJSON_AddItemToArray(a, cJSON_CreateNumber(round(r->arr[k].t * 1e4) / 1e4));
    cJSON_AddItemToArray(a, cJSON_CreateNumber(r->arr[k].count));
    cJSON_AddItemToArray(arr, a);
  }
  char *s = cJSON_PrintUnformatted(o);
  if (s) {
    fputs(s, L->out);
    fputc('\n', L->out);
    fflush(L->out); /* a killed run keeps every line it finished */
    free(s);
  }
  cJSON_Delete(o);
}

static void request_done(req_t *r, int status, const char *msg) {
  load_t *L = r->L;
  r->t_end = now_rel(L);
  if (status == SA_STATUS_OK && r->stream && sa_submit_stream_gaps(r->stream))
    status = SA_STATUS_INTERNAL, msg = "the stream skipped bytes";
  if (status == SA_STATUS_OK && !r->final)
    status = SA_STATUS_INTERNAL, msg = "the stream ended without a result";
  if (status == SA_STATUS_OK) {
    L->done_ok++;
    L->tokens_ok += r->tokens;
    if (r->t_first >= 0)
      vec_push(&L->ttft, r->t_first - r->t_submit);
    vec_push(&L->e2e, r->t_end - r->t_submit);
  } else if (status == SA_STATUS_CANCELLED && L->stopping) {
    L->cancelled++;
  } else {
    L->failed++;
    if (!L->quiet)
      fprintf(stderr, "%srequest %s: %s: %s\n", L->tty ? "\r\033[2K" : "", r->id,
              sa_status_name(status), msg[0] ? msg : "(no message)");
  }
  if (r->t_end > L->last_end)
    L->last_end = r->t_end;
  write_record(L, r, status, msg);
  if (r->final)
    cJSON_Delete(r->final);
  *(r->prev ? &r->prev->next : &L->head) = r->next;
  if (r->next)
    r->next->prev = r->prev;
  sa_submit_stream_free(r->stream);
  for (int k = 0; k < r->n_chains; k++)
    free(r->text[k]);
  free(r->text);
  free(r->text_len);
  free(r->arr);
  free(r);
  L->inflight--;
  while (L->pending_sends > 0 && L->inflight < L->max_inflight) { /* delayed arrivals */
    L->pending_sends--;
    send_one(L, true);
  }
  if (L->concurrency && !sending_over(L))
    send_one(L, false);
  maybe_finish(L);
}

static void on_end(void *user, int status, const char *msg) { request_done(user, status, msg); }

static void on_http_text(void *user, int choice, const char *text, size_t len, bool reasoning) {
  (void)reasoning;
  arrival(user, choice, 1, text, len); /* a chunk's token count is not sent */
}

/* The HTTP result in the RPC result's shape: vote, usage, chains. */
static void on_http_end(void *user, int status, const char *msg, cJSON *res) {
  req_t *r = user;
  if (res) {
    cJSON *f = cJSON_CreateObject();
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(res, "sa_vote");
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(res, "usage");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(v, "answer");
    cJSON_AddStringToObject(f, "answer", cJSON_IsString(a) ? a->valuestring : "");
    cJSON_AddNumberToObject(f, "votes",
                            cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(v, "votes")));
    double gen = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(u, "completion_tokens"));
    cJSON_AddNumberToObject(f, "prompt_tokens",
                            cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens")));
    cJSON_AddNumberToObject(f, "tokens_generated", isnan(gen) ? 0 : gen);
    cJSON_AddNumberToObject(f, "tokens_saved",
                            cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(v, "tokens_saved")));
    cJSON *chains = cJSON_AddArrayToObject(f, "chains"), *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(res, "choices")) {
      cJSON *co = cJSON_CreateObject();
      cJSON_AddNumberToObject(co, "chain",
                              cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(c, "index")));
      const cJSON *fr = cJSON_GetObjectItemCaseSensitive(c, "finish_reason");
      cJSON_AddStringToObject(co, "finish", cJSON_IsString(fr) ? fr->valuestring : "");
      cJSON_AddItemToArray(chains, co);
    }
    if (!isnan(gen)) /* the totals in tokens, not chunks */
      r->L->tokens_all += (int64_t)gen - r->tokens;
    r->final = f;
    cJSON_Delete(res);
  }
  request_done(r, status, msg);
}

/* The JSON body of a streamed chat completion for item it. */
static char *http_body(load_t *L, const sa_work_item_t *it, uint64_t seed) {
  cJSON *o = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(o, "messages");
  cJSON_AddStringToObject(o, "model", L->model);
  if (it->system) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "system");
    cJSON_AddStringToObject(m, "content", it->system);
    cJSON_AddItemToArray(msgs, m);
  }
  cJSON *m = cJSON_CreateObject(), *parts = cJSON_CreateArray();
  cJSON_AddStringToObject(m, "role", "user");
  if (it->audio) {
    cJSON *p = cJSON_CreateObject(), *ia = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "type", "input_audio");
    cJSON_AddStringToObject(ia, "data", L->b64[it - L->w.items]);
    const char *dot = strrchr(it->clip, '.');
    cJSON_AddStringToObject(ia, "format", dot ? dot + 1 : "wav");
    cJSON_AddItemToObject(p, "input_audio", ia);
    cJSON_AddItemToArray(parts, p);
  }
  if (it->prompt && it->prompt[0]) {
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "type", "text");
    cJSON_AddStringToObject(p, "text", it->prompt);
    cJSON_AddItemToArray(parts, p);
  }
  cJSON_AddItemToObject(m, "content", parts);
  cJSON_AddItemToArray(msgs, m);
  cJSON_AddBoolToObject(o, "stream", 1);
  cJSON_AddItemToObject(o, "stream_options", cJSON_CreateObject());
  cJSON_AddBoolToObject(cJSON_GetObjectItem(o, "stream_options"), "include_usage", 1);
  cJSON_AddNumberToObject(o, "n", it->n);
  cJSON_AddNumberToObject(o, "max_tokens", it->max_tokens);
  cJSON_AddNumberToObject(o, "temperature", it->temperature);
  if (it->top_p > 0)
    cJSON_AddNumberToObject(o, "top_p", it->top_p);
  if (it->top_k > 0)
    cJSON_AddNumberToObject(o, "top_k", it->top_k);
  if (it->min_p > 0)
    cJSON_AddNumberToObject(o, "min_p", it->min_p);
  if (it->repetition_penalty > 0)
    cJSON_AddNumberToObject(o, "repetition_penalty", it->repetition_penalty);
  if (it->think_budget > 0)
    cJSON_AddNumberToObject(o, "think_budget", it->think_budget);
  cJSON_AddNumberToObject(o, "seed", (double)seed); /* exact below 2^53 (--seed's range) */
  char vote[24];
  if (it->vote_rule == SA__VOTE_RULE__VOTE_FIRST_K_AGREE)
    snprintf(vote, sizeof vote, "window:%d", it->vote_k);
  else
    snprintf(vote, sizeof vote, "%s", it->vote_rule == SA__VOTE_RULE__VOTE_NONE ? "none"
                                                                                : "majority");
  cJSON_AddStringToObject(o, "vote", vote);
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return s;
}

/* Sends request r (item it) over our RPC: 0 or an SA_E* code. */
static int start_rpc(load_t *L, req_t *r, const sa_work_item_t *it) {
  Sa__SamplingParams sp = SA__SAMPLING_PARAMS__INIT;
  sp.temperature = it->temperature;
  sp.top_p = it->top_p;
  sp.top_k = it->top_k;
  sp.min_p = it->min_p;
  sp.repetition_penalty = it->repetition_penalty;
  sp.seed = r->seed;
  Sa__SubmitRequest rq = SA__SUBMIT_REQUEST__INIT;
  rq.audio.data = it->audio;
  rq.audio.len = it->audio_len;
  rq.prompt = it->prompt ? it->prompt : (char *)"";
  rq.system = it->system ? it->system : (char *)"";
  rq.max_tokens = it->max_tokens;
  rq.sampling = &sp;
  rq.n = it->n;
  rq.vote_rule = it->vote_rule;
  rq.vote_k = it->vote_k;
  rq.think_budget = it->think_budget;
  rq.request_id = r->id;
  rq.stream_reasoning = true;
  size_t len = sa__submit_request__get_packed_size(&rq);
  uint8_t *buf = malloc(len ? len : 1);
  if (!buf)
    return SA_ENOMEM;
  sa__submit_request__pack(&rq, buf);
  static const sa_submit_stream_cbs_t cbs = {on_event, on_end, NULL};
  int rc = sa_submit_stream_start(L->loop, L->ch, r->id, buf, len, it->n,
                                  sa_now_s() + L->timeout, &cbs, r, &r->stream);
  free(buf);
  return rc;
}

/* Sends it over the HTTP API: 0 or an SA_E* code. */
static int start_http(load_t *L, req_t *r, const sa_work_item_t *it) {
  static const sa_http_cbs_t cbs = {on_http_text, on_http_end};
  char *body = http_body(L, it, r->seed);
  int rc = body ? sa_http_start(L->http, body, L->timeout, &cbs, r, &r->hreq) : SA_ENOMEM;
  free(body);
  return rc;
}

/* Request i: its mix draw and seed depend on (seed, i) alone. */
static void send_one(load_t *L, bool delayed) {
  req_t *r = calloc(1, sizeof *r);
  if (!r) {
    L->failed++;
    return;
  }
  r->L = L;
  r->delayed = delayed;
  r->i = L->sent++;
  r->t_first = -1;
  r->t_submit = now_rel(L);
  uint64_t h = L->seed * 0x2545f4914f6cdd1dull + (uint64_t)r->i;
  const sa_work_item_t *it = sa_workload_pick(&L->w, unit(&h));
  r->item = (int)(it - L->w.items);
  r->seed = L->seed + (uint64_t)r->i;
  snprintf(r->id, sizeof r->id, "%s-%lld", L->prefix, (long long)r->i);
  r->n_chains = it->n;
  r->text = calloc((size_t)it->n, sizeof *r->text);
  r->text_len = calloc((size_t)it->n, sizeof *r->text_len);
  int rc = !r->text || !r->text_len ? SA_ENOMEM
           : L->http                ? start_http(L, r, it)
                                    : start_rpc(L, r, it);
  if (rc) { /* never started: a failed request */
    L->failed++;
    fprintf(stderr, "request %s: cannot send: %s\n", r->id, sa_strerror(rc));
    free(r->text);
    free(r->text_len);
    free(r);
    return;
  }
  r->next = L->head;
  if (L->head)
    L->head->prev = r;
  L->head = r;
  L->inflight++;
}

static void on_arrive(uv_timer_t *t) {
  load_t *L = t->data;
  double now = now_rel(L);
  while (!sending_over(L) && L->next_at <= now) {
    if (L->inflight < L->max_inflight) {
      send_one(L, false);
    } else { /* sent when one ends */
      L->pending_sends++;
      L->delayed++;
    }
    L->next_at += -log(1.0 - unit(&L->arrival_rng)) / L->rate;
  }
  if (!sending_over(L)) {
    double wait = L->next_at - now_rel(L);
    uv_timer_start(&L->arrive, on_arrive, wait > 0 ? (uint64_t)(wait * 1000) : 0, 0);
  } else {
    maybe_finish(L);
  }
}

static void print_progress(load_t *L, bool final) {
  double t = now_rel(L), dt = t - L->last_progress;
  double tps = dt > 0 ? (double)(L->tokens_all - L->last_tokens) / dt : 0;
  L->last_tokens = L->tokens_all;
  L->last_progress = t;
  fprintf(stderr,
          "%s[%5.0fs] sent %lld (%.2f/s)  in flight %d  done %lld  failed %lld  tokens/s %.0f%s",
          L->tty ? "\r\033[2K" : "", t, (long long)L->sent, t > 0 ? (double)L->sent / t : 0,
          L->inflight, (long long)L->done_ok, (long long)L->failed, tps,
          L->tty && !final ? "" : "\n");
}

static void on_progress(uv_timer_t *t) {
  load_t *L = t->data;
  static int ticks;
  if (!L->quiet && (L->tty || ++ticks % 10 == 0))
    print_progress(L, false);
  if (!L->stopping && sending_over(L))
    maybe_finish(L); /* --duration ran out between two arrivals */
}

static void stop(load_t *L, const char *why) {
  if (L->stopping)
    return;
  L->stopping = true;
  fprintf(stderr, "%ssa-load: %s: cancelling %d request(s) in flight\n", L->tty ? "\r\033[2K" : "",
          why, L->inflight);
  L->pending_sends = 0;
  for (req_t *r = L->head, *next; r; r = next) {
    next = r->next; /* on_end may run inside cancel and free r */
    if (r->hreq)
      sa_http_cancel(r->hreq);
    else
      sa_submit_stream_cancel(r->stream);
  }
  maybe_finish(L);
}

static void on_signal(uv_signal_t *h, int sig) {
  stop(h->data, sig == SIGINT ? "interrupted" : "terminated");
}

static cJSON *pct_json(vec_t *a) {
  qsort(a->v, a->n, sizeof *a->v, cmp_double);
  cJSON *o = cJSON_CreateObject();
  static const double ps[] = {50, 90, 99};
  static const char *const names[] = {"p50", "p90", "p99"};
  for (int k = 0; k < 3; k++) {
    double v = pct(a, ps[k]);
    if (isnan(v))
      cJSON_AddNullToObject(o, names[k]);
    else
      cJSON_AddNumberToObject(o, names[k], v);
  }
  cJSON_AddNumberToObject(o, "n", (double)a->n);
  return o;
}

static void write_summary(load_t *L) {
  double dur = L->last_end > 0 ? L->last_end : now_rel(L);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "start_unix", L->start_unix);
  cJSON_AddNumberToObject(o, "duration_s", dur);
  if (L->rate > 0)
    cJSON_AddNumberToObject(o, "rate", L->rate);
  else
    cJSON_AddNumberToObject(o, "concurrency", L->concurrency);
  char seed[24];
  snprintf(seed, sizeof seed, "%llu", (unsigned long long)L->seed);
  cJSON_AddStringToObject(o, "seed", seed);
  cJSON_AddNumberToObject(o, "sent", (double)L->sent);
  cJSON_AddNumberToObject(o, "completed", (double)L->done_ok);
  cJSON_AddNumberToObject(o, "failed", (double)L->failed);
  cJSON_AddNumberToObject(o, "cancelled", (double)L->cancelled);
  cJSON_AddNumberToObject(o, "delayed", (double)L->delayed);
  cJSON_AddNumberToObject(o, "answered_per_s", dur > 0 ? (double)L->done_ok / dur : 0);
  cJSON_AddNumberToObject(o, "tokens", (double)L->tokens_all);
  cJSON_AddNumberToObject(o, "tokens_per_s", dur > 0 ? (double)L->tokens_all / dur : 0);
  cJSON_AddNumberToObject(o, "goodput_tokens_per_s", dur > 0 ? (double)L->tokens_ok / dur : 0);
  cJSON *ttft = pct_json(&L->ttft), *itl = pct_json(&L->itl), *e2e = pct_json(&L->e2e);
  cJSON_AddItemToObject(o, "ttft_s", ttft);
  cJSON_AddItemToObject(o, "itl_s", itl);
  cJSON_AddItemToObject(o, "e2e_s", e2e);
  fprintf(stderr,
          "sa-load: %lld sent, %lld completed, %lld failed, %lld cancelled in %.1f s: "
          "%.3f answered/s, %.1f tokens/s (goodput %.1f)\n",
          (long long)L->sent, (long long)L->done_ok, (long long)L->failed,
          (long long)L->cancelled, dur, dur > 0 ? (double)L->done_ok / dur : 0,
          dur > 0 ? (double)L->tokens_all / dur : 0, dur > 0 ? (double)L->tokens_ok / dur : 0);
  const char *names[] = {"TTFT", "inter-token", "end-to-end"};
  vec_t *vs[] = {&L->ttft, &L->itl, &L->e2e};
  for (int k = 0; k < 3; k++)
    fprintf(stderr, "sa-load: %-11s p50 %8.1f ms  p90 %8.1f ms  p99 %8.1f ms  (%zu)\n",
            names[k], pct(vs[k], 50) * 1e3, pct(vs[k], 90) * 1e3, pct(vs[k], 99) * 1e3,
            vs[k]->n);
  if (L->summary_path) {
    char *s = cJSON_Print(o);
    FILE *f = fopen(L->summary_path, "w");
    if (!s || !f || fputs(s, f) < 0 || fputc('\n', f) < 0 || fclose(f) != 0) {
      fprintf(stderr, "sa-load: cannot write %s: %s\n", L->summary_path, strerror(errno));
      L->failed += L->failed ? 0 : 1; /* the exit status says so */
    }
    free(s);
  }
  cJSON_Delete(o);
}

static void maybe_finish(load_t *L) {
  if (L->finished || !sending_over(L) || L->inflight > 0 || L->pending_sends > 0)
    return;
  L->finished = true;
  if (!L->quiet)
    print_progress(L, true);
  write_summary(L);
  uv_close((uv_handle_t *)&L->arrive, NULL);
  uv_close((uv_handle_t *)&L->progress, NULL);
  uv_close((uv_handle_t *)&L->sigint, NULL);
  uv_close((uv_handle_t *)&L->sigterm, NULL);
  sa_rpc_channel_destroy(&L->ch);
  sa_http_destroy(L->http);
  L->http = NULL;
}

/* --------------------------------------------------------------- main */

/* --http: the API key, the model's name, every clip in base64. 0, or the
 * exit status after a message. */
static int http_setup(load_t *L, const char *url, const char *key_file) {
  char key[600] = "", err[512];
  if (key_file) {
    FILE *f = fopen(key_file, "r");
    if (!f || !fgets(key, sizeof key, f)) {
      fprintf(stderr, "sa-load: %s: %s\n", key_file, f ? "empty" : strerror(errno));
      if (f)
        fclose(f);
      return 2;
    }
    fclose(f);
    key[strcspn(key, "\r\n")] = '\0';
  }
  if (!L->model[0] && sa_http_model_name(url, key, L->model, sizeof L->model, err, sizeof err)) {
    fprintf(stderr, "sa-load: %s\n", err);
    return 1;
  }
  if (!(L->b64 = calloc((size_t)L->w.n_items, sizeof *L->b64)))
    return 1;
  for (int i = 0; i < L->w.n_items; i++) {
    const sa_work_item_t *it = &L->w.items[i];
    if (!it->audio)
      continue;
    size_t n = sodium_base64_encoded_len(it->audio_len, sodium_base64_VARIANT_ORIGINAL);
    if (!(L->b64[i] = malloc(n)))
      return 1;
    sodium_bin2base64(L->b64[i], n, it->audio, it->audio_len, sodium_base64_VARIANT_ORIGINAL);
  }
  if (sa_http_new(L->loop, url, key, &L->http)) {
    fprintf(stderr, "sa-load: --http %s: not a usable URL\n", url);
    return 2;
  }
  return 0;
}

static double num_arg(const char *s, const char *name, double lo, double hi) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || errno || !(v >= lo && v <= hi)) {
    fprintf(stderr, "sa-load: %s must be a number in [%g, %g] (got '%s')\n", name, lo, hi, s);
    exit(2);
  }
  return v;
}


int main(int argc, char **argv) {
  static const struct option longopts[] = {
      {"workload", required_argument, 0, 'w'},  {"rate", required_argument, 0, 'r'},
      {"concurrency", required_argument, 0, 'C'}, {"requests", required_argument, 0, 'N'},
      {"duration", required_argument, 0, 'D'},  {"seed", required_argument, 0, 'S'},
      {"out", required_argument, 0, 'o'},       {"summary", required_argument, 0, 's'},
      {"id-prefix", required_argument, 0, 'I'}, {"timeout", required_argument, 0, 'T'},
      {"max-inflight", required_argument, 0, 'M'}, {"quiet", no_argument, 0, 'q'},
      {"coordinator", required_argument, 0, 'c'}, {"help", no_argument, 0, 'h'},
      {"http", required_argument, 0, 'H'},      {"api-key-file", required_argument, 0, 'K'},
      {"model", required_argument, 0, 'm'},
      SA_SEC_LONGOPTS,                          {0, 0, 0, 0}};
  static load_t L;
  sa_sec_args_t sa = {0};
  const char *workload = NULL, *out = NULL, *coord = NULL, *http = NULL, *key_file = NULL;
  L.seed = 1;
  L.timeout = 600;
  L.max_inflight = 4096;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'w': workload = optarg; break;
    case 'r': L.rate = num_arg(optarg, "--rate", 1e-6, 1e6); break;
    case 'C': L.concurrency = (int)num_arg(optarg, "--concurrency", 1, 1 << 20); break;
    case 'N': L.n_requests = (int64_t)num_arg(optarg, "--requests", 1, 1e12); break;
    case 'D': L.duration = num_arg(optarg, "--duration", 1e-3, 1e9); break;
    case 'S': L.seed = (uint64_t)num_arg(optarg, "--seed", 0, 9007199254740992.0); break;
    case 'o': out = optarg; break;
    case 's': L.summary_path = optarg; break;
    case 'I':
      if (!optarg[0] || strlen(optarg) > 40) {
        fprintf(stderr, "sa-load: --id-prefix must be 1..40 bytes\n");
        return 2;
      }
      snprintf(L.prefix, sizeof L.prefix, "%s", optarg);
      break;
    case 'T': L.timeout = num_arg(optarg, "--timeout", 1e-3, 1e6); break;
    case 'M': L.max_inflight = (int)num_arg(optarg, "--max-inflight", 1, 1 << 18); break;
    case 'q': L.quiet = true; break;
    case 'c': coord = optarg; break;
    case 'H': http = optarg; break;
    case 'K': key_file = optarg; break;
    case 'm':
      if (!optarg[0] || strlen(optarg) >= sizeof L.model) {
        fprintf(stderr, "sa-load: --model must be 1..127 bytes\n");
        return 2;
      }
      snprintf(L.model, sizeof L.model, "%s", optarg);
      break;
    case 'h': usage(stdout); return 0;
    default:
      if (sa_sec_args_take(&sa, opt, optarg))
        break;
      usage(stderr);
      return 2;
    }
  }
  if (optind < argc || !workload || (L.rate > 0) == (L.concurrency > 0) ||
      (!L.n_requests && !(L.duration > 0))) {
    fprintf(stderr, "sa-load: needs --workload, one of --rate or --concurrency, and "
                    "--requests or --duration (--help)\n");
    return 2;
  }
  if (sodium_init() < 0)
    return 1;
  if (!L.prefix[0]) {
    uint8_t rnd[4];
    randombytes_buf(rnd, sizeof rnd);
    snprintf(L.prefix, sizeof L.prefix, "load-%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);
  }
  size_t len = 0;
  uint8_t *text;
  char err[512];
  if (sa_client_read_file(workload, 16u << 20, &text, &len, err, sizeof err)) {
    fprintf(stderr, "sa-load: %s\n", err);
    return 2;
  }
  int rc = sa_workload_parse((const char *)text, len, &L.w, err, sizeof err);
  free(text);
  char *wcopy = strdup(workload);
  if (rc == 0)
    rc = sa_workload_load_clips(&L.w, wcopy ? dirname(wcopy) : NULL, MAX_AUDIO_BYTES, err,
                                sizeof err);
  free(wcopy);
  if (rc) {
    fprintf(stderr, "sa-load: %s: %s\n", workload, err);
    sa_workload_free(&L.w);
    return 2;
  }
  static sa_sec_t sec;
  L.loop = uv_default_loop();
  const char *addr = http;
  if (http) {
    if ((rc = http_setup(&L, http, key_file)))
      return rc;
  } else {
    sa_rpc_opts_t o;
    sa_rpc_opts_default(&o);
    if (sa_client_security("sa-load", &sa, &sec, &o, false))
      return 2;
    o.max_msg_bytes = MAX_AUDIO_BYTES + (1u << 20);
    o.max_inflight = L.max_inflight + 16;
    addr = sa_client_coordinator_addr(coord);
    if ((rc = sa_rpc_channel_new(L.loop, addr, &o, &L.ch))) {
      fprintf(stderr, "sa-load: cannot connect to %s: %s\n", addr, sa_strerror(rc));
      return 1;
    }
  }
  if (out && !(L.out = fopen(out, "w"))) {
    fprintf(stderr, "sa-load: %s: %s\n", out, strerror(errno));
    return 2;
  }
  L.tty = isatty(STDERR_FILENO);
  L.arrival_rng = L.seed ^ 0xa0761f62u;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  L.start_unix = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
  L.t0 = sa_now_s();
  uv_timer_init(L.loop, &L.arrive);
  uv_timer_init(L.loop, &L.progress);
  uv_signal_init(L.loop, &L.sigint);
  uv_signal_init(L.loop, &L.sigterm);
  L.arrive.data = L.progress.data = L.sigint.data = L.sigterm.data = &L;
  uv_signal_start(&L.sigint, on_signal, SIGINT);
  uv_signal_start(&L.sigterm, on_signal, SIGTERM);
  uv_timer_start(&L.progress, on_progress, 1000, 1000);
  fprintf(stderr, "sa-load: %s to %s, %s %g, %s %g, seed %llu, ids %s-i\n", workload, addr,
          L.rate > 0 ? "rate" : "concurrency", L.rate > 0 ? L.rate : L.concurrency,
          L.n_requests ? "requests" : "seconds",
          L.n_requests ? (double)L.n_requests : L.duration, (unsigned long long)L.seed, L.prefix);
  if (L.rate > 0) {
    L.next_at = 0;
    uv_timer_start(&L.arrive, on_arrive, 0, 0);
  } else {
    while (L.inflight < L.concurrency && !sending_over(&L))
      send_one(&L, false);
  }
  uv_run(L.loop, UV_RUN_DEFAULT);
  uv_loop_close(L.loop);
  if (L.b64)
    for (int i = 0; i < L.w.n_items; i++)
      free(L.b64[i]);
  free(L.b64);
  sa_workload_free(&L.w);
  sa_sec_close(&sec);
  if (L.out)
    fclose(L.out);
  free(L.ttft.v);
  free(L.itl.v);
  free(L.e2e.v);
  return L.failed ? 1 : 0;
}
