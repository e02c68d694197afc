/*
 * http — the HTTP front door (see http.h).
 *
 * Responses. A chat completion's HTTP response starts only when the request
 * has something to say: its first text, its final result, or its end with
 * an error — so a request that fails before any output (a context too
 * long, audio that does not decode) gets a real error status and an OpenAI
 * error object, not a 200 with an error inside. H2O allows one h2o_send in
 * flight per response: text that arrives meanwhile waits in `pending` and
 * goes with the next proceed callback.
 *
 * Lifetimes. A `hreq_t` is shared by the HTTP side (until H2O disposes the
 * HTTP request: a destructor in its memory pool tells us, whether the
 * response was sent in full or the client went away) and the request side
 * (until the request's end callback); whichever lets go last frees it. A
 * client that goes away cancels its request.
 */
#include "http.h"

#include "security.h"

#include "log.h"
#include "openai.h"
#include "sa_error.h"
#include "sa_time.h"
#include "submit.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stddef.h>
#include <h2o.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#define MAX_KEYS 64

struct coord_http {
  h2o_globalconf_t config;
  h2o_context_t ctx;
  h2o_accept_ctx_t accept_ctx;
  uv_tcp_t listener;
  char url[300];
  char model_name[256];
  bool reasoning_split;
  const struct sa_sec *sec;
  char *keys[MAX_KEYS];
  int n_keys;
  const coord_opts_t *copts;
  const coord_model_t *model;
  size_t vocab_size;
  size_t max_body;
  coord_requests_t *set;
  const coord_registry_t *reg;
  const coord_pipeline_t *pl;
};

/* ----------------------------------------------------------- responses */

static int http_status(sa_status_t st) {
  switch (st) {
  case SA_STATUS_INVALID_ARGUMENT:
  case SA_STATUS_OUT_OF_RANGE:
  case SA_STATUS_FAILED_PRECONDITION:
    return 400;
  case SA_STATUS_UNAUTHENTICATED:
    return 401;
  case SA_STATUS_PERMISSION_DENIED:
    return 403;
  case SA_STATUS_NOT_FOUND:
    return 404;
  case SA_STATUS_RESOURCE_EXHAUSTED:
    return 429;
  case SA_STATUS_UNAVAILABLE:
    return 503;
  case SA_STATUS_DEADLINE_EXCEEDED:
    return 504;
  default:
    return 500;
  }
}

static const char *error_type(int status) {
  switch (status) {
  case 400:
  case 404:
  case 413:
    return "invalid_request_error";
  case 401:
    return "authentication_error";
  case 429:
    return "rate_limit_error";
  default:
    return "server_error";
  }
}

/* {"error":{"message","type","param","code"}} (caller frees). */
static char *error_json(int status, const char *msg, const char *param, const char *code) {
  cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
  cJSON_AddStringToObject(e, "message", msg);
  cJSON_AddStringToObject(e, "type", error_type(status));
  if (param && param[0])
    cJSON_AddStringToObject(e, "param", param);
  else
    cJSON_AddNullToObject(e, "param");
  if (code && code[0])
    cJSON_AddStringToObject(e, "code", code);
  else
    cJSON_AddNumberToObject(e, "code", status);
  char *s = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return s;
}

static void send_body(h2o_req_t *req, int status, const char *ctype, const char *body,
                      size_t len) {
  static const char *const reasons[] = {[200] = "OK", [400] = "Bad Request", [413] = "Payload Too Large",
                                        [401] = "Unauthorized", [404] = "Not Found",
                                        [405] = "Method Not Allowed", [429] = "Too Many Requests",
                                        [500] = "Internal Server Error", [503] = "Service Unavailable",
                                        [504] = "Gateway Timeout"};
  req->res.status = status;
  req->res.reason = status >= 0 && (size_t)status < sizeof reasons / sizeof reasons[0] && reasons[status]
                        ? reasons[status]
                        : "Error";
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ctype,
                 strlen(ctype));
  h2o_iovec_t b = h2o_strdup(&req->pool, body, len);
  h2o_send_inline(req, b.base, b.len);
}

static void send_json(h2o_req_t *req, int status, const char *json) {
  send_body(req, status, "application/json", json, strlen(json));
}

static void send_error(h2o_req_t *req, int status, const char *msg, const char *param,
                       const char *code) {
  char *j = error_json(status, msg, param, code);
  if (status == 429)
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                   H2O_STRLIT("1"));
  if (status == 401)
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                   H2O_STRLIT("Bearer"));
  send_json(req, status, j ? j : "{}");
  free(j);
}

static bool path_is(const h2o_req_t *req, const char *p) {
  return h2o_memis(req->path_normalized.base, req->path_normalized.len, p, strlen(p));
}

static bool method_is(const h2o_req_t *req, const char *m) {
  return h2o_memis(req->method.base, req->method.len, m, strlen(m));
}

/* ------------------------------------------------------------ API keys */

static int load_keys(coord_http_t *h, const char *path, char *err, size_t cap) {
  FILE *f = fopen(path, "r");
  if (!f) {
    sa_set_err(err, cap, "cannot read the API key file %s", path);
    return SA_ENOENT;
  }
  char line[512];
  while (fgets(line, sizeof line, f)) {
    size_t n = strcspn(line, "\r\n");
    line[n] = '\0';
    while (n && (line[n - 1] == ' ' || line[n - 1] == '\t'))
      line[--n] = '\0';
    if (!n || line[0] == '#')
      continue;
    if (h->n_keys == MAX_KEYS || !(h->keys[h->n_keys] = strdup(line))) {
      fclose(f);
      sa_set_err(err, cap, "%s: more than %d keys", path, MAX_KEYS);
      return SA_EINVAL;
    }
    h->n_keys++;
  }
  fclose(f);
  if (h->n_keys == 0) {
    sa_set_err(err, cap, "the API key file %s holds no key", path);
    return SA_EINVAL;
  }
  return 0;
}

/* True when no keys are configured or the request carries one of them
 * (compared in constant time). */
static bool authorized(const coord_http_t *h, h2o_req_t *req) {
  if (h->n_keys == 0)
    return true;
  ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
  if (i < 0)
    return false;
  h2o_iovec_t v = req->headers.entries[i].value;
  if (v.len < 8 || strncasecmp(v.base, "Bearer ", 7) != 0)
    return false;
  const char *key = v.base + 7;
  size_t n = v.len - 7;
  bool ok = false;
  for (int k = 0; k < h->n_keys; k++)
    if (strlen(h->keys[k]) == n && sodium_memcmp(h->keys[k], key, n) == 0)
      ok = true;
  return ok;
}

/* ------------------------------------------------------- chat completions */

typedef struct {
  bool role_sent, think_end_sent, finished;
  int64_t sent; /* bytes of the chain's text (reasoning, answer) sent */
} hchoice_t;

typedef struct {
  h2o_generator_t gen; /* first: H2O hands it back */
  coord_http_t *h;
  h2o_req_t *req;       /* NULL once nothing more may be sent on it */
  bool alive;           /* the HTTP request is not disposed yet */
  coord_request_t *r;   /* NULL once the request ended */
  bool stream, include_usage;
  bool started;   /* response headers went out */
  bool sending;   /* an h2o_send is in flight */
  bool final_out; /* the last bytes are queued */
  char *pending;  /* bytes waiting for the next send */
  size_t pending_len, pending_cap;
  char *inflight; /* the bytes of the send in flight */
  char id[64];
  int n_chains;
  int64_t created;
  hchoice_t choices[COORD_MAX_CHAINS];
} hreq_t;

static void hreq_maybe_free(hreq_t *q) {
  if (q->alive || q->r)
    return;
  free(q->pending);
  free(q->inflight);
  free(q);
}

static void pend(hreq_t *q, const char *s, size_t n) {
  if (q->pending_len + n > q->pending_cap) {
    size_t cap = q->pending_cap ? q->pending_cap * 2 : 4096;
    while (cap < q->pending_len + n)
      cap *= 2;
    char *p = realloc(q->pending, cap);
    if (!p)
      return; /* dropped: the client sees a gap rather than the process dying */
    q->pending = p;
    q->pending_cap = cap;
  }
  memcpy(q->pending + q->pending_len, s, n);
  q->pending_len += n;
}

/* Sends what is pending if no send is in flight. */
static void flush(hreq_t *q) {
  if (!q->req || q->sending || (!q->pending_len && !q->final_out))
    return;
  free(q->inflight);
  q->inflight = q->pending;
  h2o_iovec_t buf = h2o_iovec_init(q->pending, q->pending_len);
  q->pending = NULL;
  q->pending_len = q->pending_cap = 0;
  q->sending = true;
  bool last = q->final_out;
  h2o_req_t *req = q->req;
  if (last) /* nothing after the final send */
    q->req = NULL;
  h2o_send(req, &buf, buf.len ? 1 : 0, last ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

static void on_proceed(h2o_generator_t *g, h2o_req_t *req) {
  hreq_t *q = (hreq_t *)g;
  (void)req;
  q->sending = false;
  flush(q);
}

/* The client went away (H2O disposes the request next). */
static void client_gone(hreq_t *q) {
  q->req = NULL;
  if (q->r) {
    SA_LOG_INFO("request %s: HTTP client went away", q->r->request_id);
    coord_request_cancel(q->h->set, q->r);
  }
}

static void on_stop(h2o_generator_t *g, h2o_req_t *req) {
  (void)req;
  client_gone((hreq_t *)g);
}

/* The destructor in the HTTP request's pool: H2O is done with it. */
static void on_dispose(void *p) {
  hreq_t *q = *(hreq_t **)p;
  if (q->req && !q->final_out && q->r) /* disposed mid-response: the client left */
    client_gone(q);
  q->req = NULL;
  q->alive = false;
  hreq_maybe_free(q);
}

static void start_stream(hreq_t *q) {
  if (q->started || !q->req)
    return;
  q->started = true;
  h2o_req_t *req = q->req;
  req->res.status = 200;
  req->res.reason = "OK";
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                 H2O_STRLIT("text/event-stream"));
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                 H2O_STRLIT("no-cache"));
  q->gen.proceed = on_proceed;
  q->gen.stop = on_stop;
  h2o_start_response(req, &q->gen);
}

/* The SSE event id: the request id, then per choice the bytes of its text
 * this client has with this event, "t" once the "</think>" marker went
 * out, "f" once its finish chunk did. A client that lost its stream sends
 * it back as Last-Event-ID and gets the rest (resume_stream). */
static void sse_id(hreq_t *q) {
  char buf[96];
  pend(q, "id: ", 4);
  pend(q, q->id, strlen(q->id));
  for (int c = 0; c < q->n_chains; c++) {
    const hchoice_t *hc = &q->choices[c];
    int n = snprintf(buf, sizeof buf, "%c%lld%s%s", c ? ',' : '/', (long long)hc->sent,
                     hc->think_end_sent ? "t" : "", hc->finished ? "f" : "");
    pend(q, buf, (size_t)n);
  }
  pend(q, "\n", 1);
}

static void sse(hreq_t *q, cJSON *obj) {
  char *s = cJSON_PrintUnformatted(obj);
  cJSON_Delete(obj);
  if (!s)
    return;
  sse_id(q);
  pend(q, "data: ", 6);
  pend(q, s, strlen(s));
  pend(q, "\n\n", 2);
  free(s);
}

static cJSON *chunk(hreq_t *q) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "id", q->id);
  cJSON_AddStringToObject(o, "object", "chat.completion.chunk");
  cJSON_AddNumberToObject(o, "created", (double)q->created);
  cJSON_AddStringToObject(o, "model", q->h->model_name);
  return o;
}

static const char *finish_reason(Sa__FinishReason f) {
  return f == SA__FINISH_REASON__FINISH_LENGTH ? "length" : "stop";
}

/* One choice's chunk: text (content or reasoning_content) and/or finish. */
static void choice_chunk(hreq_t *q, int chain, const char *text, size_t len, bool reasoning,
                         const char *finish) {
  cJSON *o = chunk(q), *arr = cJSON_AddArrayToObject(o, "choices");
  cJSON *c = cJSON_CreateObject(), *d = cJSON_AddObjectToObject(c, "delta");
  cJSON_AddNumberToObject(c, "index", chain);
  hchoice_t *hc = &q->choices[chain];
  if (!hc->role_sent) {
    cJSON_AddStringToObject(d, "role", "assistant");
    hc->role_sent = true;
  }
  if (text) {
    char *t = strndup(text, len);
    cJSON_AddStringToObject(d, reasoning ? "reasoning_content" : "content", t ? t : "");
    free(t);
  }
  if (finish)
    cJSON_AddStringToObject(c, "finish_reason", finish);
  else
    cJSON_AddNullToObject(c, "finish_reason");
  cJSON_AddItemToArray(arr, c);
  sse(q, o);
}

/* A chain's answer begins: without the reasoning split the text as
 * generated carries "</think>" (which is not text of either part). */
static void think_end(hreq_t *q, int chain) {
  hchoice_t *hc = &q->choices[chain];
  if (hc->think_end_sent || q->h->reasoning_split)
    return;
  hc->think_end_sent = true;
  if (q->stream)
    choice_chunk(q, chain, "</think>", 8, false, NULL);
}

static void finish_choice(hreq_t *q, const coord_chain_t *c) {
  hchoice_t *hc = &q->choices[c->idx];
  if (hc->finished)
    return;
  if (c->in_answer)
    think_end(q, c->idx);
  hc->finished = true;
  if (q->stream)
    choice_chunk(q, c->idx, NULL, 0, false, finish_reason(c->finish));
}

static cJSON *usage(const coord_request_t *r) {
  int64_t gen = 0;
  for (int i = 0; i < r->n_chains; i++)
    gen += r->chains[i].n_tokens;
  cJSON *u = cJSON_CreateObject();
  cJSON_AddNumberToObject(u, "prompt_tokens", r->prompt_len);
  cJSON_AddNumberToObject(u, "completion_tokens", (double)gen);
  cJSON_AddNumberToObject(u, "total_tokens", (double)(r->prompt_len + gen));
  return u;
}

/* Our extension: the vote's outcome. */
static cJSON *vote_json(const coord_request_t *r) {
  cJSON *v = cJSON_CreateObject();
  int votes = 0;
  const coord_chain_t *win = coord_request_vote(r, &votes, NULL);
  cJSON_AddStringToObject(v, "answer", win && win->answer ? win->answer : "");
  cJSON_AddNumberToObject(v, "votes", win ? votes : 0);
  int cancelled = 0;
  for (int i = 0; i < r->n_chains; i++)
    cancelled += r->chains[i].finish == SA__FINISH_REASON__FINISH_CANCELLED;
  cJSON_AddNumberToObject(v, "chains_cancelled", cancelled);
  cJSON_AddNumberToObject(v, "tokens_saved", (double)r->tokens_saved);
  return v;
}

static void final_stream(hreq_t *q, const coord_request_t *r) {
  for (int i = 0; i < r->n_chains; i++)
    finish_choice(q, &r->chains[i]);
  cJSON *o = chunk(q);
  cJSON_AddArrayToObject(o, "choices");
  if (q->include_usage)
    cJSON_AddItemToObject(o, "usage", usage(r));
  cJSON_AddItemToObject(o, "sa_vote", vote_json(r));
  sse(q, o);
  pend(q, "data: [DONE]\n\n", 14);
}

static void final_json(hreq_t *q, const coord_request_t *r) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "id", q->id);
  cJSON_AddStringToObject(o, "object", "chat.completion");
  cJSON_AddNumberToObject(o, "created", (double)q->created);
  cJSON_AddStringToObject(o, "model", q->h->model_name);
  cJSON *arr = cJSON_AddArrayToObject(o, "choices");
  for (int i = 0; i < r->n_chains; i++) {
    const coord_chain_t *c = &r->chains[i];
    cJSON *ch = cJSON_CreateObject(), *m = cJSON_AddObjectToObject(ch, "message");
    cJSON_AddNumberToObject(ch, "index", i);
    cJSON_AddStringToObject(m, "role", "assistant");
    const char *reason = c->reasoning ? c->reasoning : "", *ans = c->answer ? c->answer : "";
    if (q->h->reasoning_split) {
      cJSON_AddStringToObject(m, "content", ans);
      cJSON_AddStringToObject(m, "reasoning_content", reason);
    } else {
      size_t n = strlen(reason) + strlen(ans) + 16;
      char *t = malloc(n);
      if (t)
        snprintf(t, n, "%s%s%s", reason, c->in_answer ? "</think>" : "", ans);
      cJSON_AddStringToObject(m, "content", t ? t : "");
      free(t);
    }
    cJSON_AddStringToObject(ch, "finish_reason", finish_reason(c->finish));
    cJSON_AddItemToArray(arr, ch);
  }
  cJSON_AddItemToObject(o, "usage", usage(r));
  cJSON_AddItemToObject(o, "sa_vote", vote_json(r));
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (q->req)
    send_json(q->req, 200, s ? s : "{}");
  free(s);
  q->req = NULL;
}

static void on_event(coord_request_t *r, const coord_event_t *e) {
  hreq_t *q = r->client;
  if (!q->req)
    return;
  switch (e->kind) {
  case COORD_EV_ENCODED:
    break;
  case COORD_EV_DELTA:
    if (!q->stream)
      break;
    start_stream(q);
    if (e->answer)
      think_end(q, e->chain);
    q->choices[e->chain].sent = e->offset + (int64_t)e->len;
    choice_chunk(q, e->chain, e->text, e->len, !e->answer && q->h->reasoning_split, NULL);
    flush(q);
    break;
  case COORD_EV_CHAIN_DONE:
    if (!q->stream)
      break;
    start_stream(q);
    finish_choice(q, &r->chains[e->chain]);
    flush(q);
    break;
  case COORD_EV_FINAL:
    if (!q->stream) {
      final_json(q, r);
      break;
    }
    start_stream(q);
    final_stream(q, r);
    q->final_out = true;
    flush(q);
    break;
  }
}

static void on_end(coord_request_t *r, sa_status_t st, const char *msg) {
  hreq_t *q = r->client;
  q->r = NULL;
  if (st != SA_STATUS_OK && q->req) {
    int status = http_status(st);
    if (!q->started) {
      send_error(q->req, status, msg ? msg : sa_status_name(st), NULL, NULL);
      q->req = NULL;
    } else { /* mid-stream: the error as an event, then the end */
      char *j = error_json(status, msg ? msg : sa_status_name(st), NULL, NULL);
      if (j) {
        pend(q, "data: ", 6);
        pend(q, j, strlen(j));
        pend(q, "\n\n", 2);
        free(j);
      }
      pend(q, "data: [DONE]\n\n", 14);
      q->final_out = true;
      flush(q);
    }
  }
  hreq_maybe_free(q);
}

/* Another stream resumed the request (Last-Event-ID): this one ends. */
static void on_detach(coord_request_t *r) {
  hreq_t *q = r->client;
  q->r = NULL;
  if (q->req && q->started) {
    q->final_out = true;
    flush(q);
  } else if (q->req) {
    send_error(q->req, 409, "the request was resumed by another stream", NULL, NULL);
    q->req = NULL;
  }
  hreq_maybe_free(q);
}

static const coord_request_cbs_t k_cbs = {.event = on_event, .end = on_end, .detach = on_detach};

/* Parses Last-Event-ID "ID/OFFSET[t][f],..." into id and q's choices.
 * Returns false if it is not one of ours. */
static bool parse_event_id(const char *v, size_t len, hreq_t *q) {
  const char *slash = memchr(v, '/', len);
  if (!slash || slash == v || (size_t)(slash - v) >= sizeof q->id)
    return false;
  memcpy(q->id, v, (size_t)(slash - v));
  q->id[slash - v] = '\0';
  const char *p = slash + 1, *end = v + len;
  int c = 0;
  while (p < end && c < COORD_MAX_CHAINS) {
    int64_t off = 0;
    int digits = 0;
    while (p < end && *p >= '0' && *p <= '9' && digits < 15) {
      off = off * 10 + (*p++ - '0');
      digits++;
    }
    if (!digits)
      return false;
    hchoice_t *hc = &q->choices[c++];
    hc->sent = off;
    hc->role_sent = true;
    if (p < end && *p == 't') {
      hc->think_end_sent = true;
      p++;
    }
    if (p < end && *p == 'f') {
      hc->finished = true;
      p++;
    }
    if (p < end && *p++ != ',')
      return false;
  }
  return p == end && c > 0;
}

/* A chain's text this client does not have yet, as the live stream would
 * have sent it. */
static void catch_up(hreq_t *q, const coord_chain_t *c) {
  hchoice_t *hc = &q->choices[c->idx];
  int64_t rl = (int64_t)c->reasoning_len, al = (int64_t)c->answer_len;
  if (hc->sent < rl) {
    int64_t from = hc->sent;
    hc->sent = rl;
    choice_chunk(q, c->idx, c->reasoning + from, (size_t)(rl - from), q->h->reasoning_split,
                 NULL);
  }
  if (c->in_answer && hc->sent < rl + al) {
    int64_t from = hc->sent - rl;
    think_end(q, c->idx);
    hc->sent = rl + al;
    choice_chunk(q, c->idx, c->answer + from, (size_t)(al - from), false, NULL);
  }
}

/* POST /v1/chat/completions with Last-Event-ID: the stream of a request
 * made over HTTP earlier (before a coordinator restart, or on a
 * connection that broke) from the event the client had last. */
static void resume_stream(coord_http_t *h, h2o_req_t *req, const char *v, size_t len) {
  hreq_t *q = calloc(1, sizeof *q);
  if (!q) {
    send_error(req, 500, "out of memory", NULL, NULL);
    return;
  }
  coord_request_t *r = NULL;
  if (parse_event_id(v, len, q))
    r = coord_requests_find_any(h->set, q->id);
  if (!r || strcmp(r->owner, "http") != 0) {
    free(q);
    send_error(req, 404, "Last-Event-ID names no request this server holds", NULL,
               "not_found");
    return;
  }
  q->h = h;
  q->req = req;
  q->alive = true;
  *(hreq_t **)h2o_mem_alloc_shared(&req->pool, sizeof q, on_dispose) = q;
  q->stream = true;
  q->include_usage = true;
  q->created = (int64_t)time(NULL);
  q->n_chains = r->n_chains;
  for (int c = 0; c < r->n_chains; c++)
    if (q->choices[c].sent > (int64_t)(r->chains[c].reasoning_len + r->chains[c].answer_len))
      q->choices[c].sent = (int64_t)(r->chains[c].reasoning_len + r->chains[c].answer_len);
  SA_LOG_INFO("request %s: HTTP stream resumed%s", r->request_id,
              r->ended ? " (it has ended)" : "");
  start_stream(q);
  for (int c = 0; c < r->n_chains; c++)
    catch_up(q, &r->chains[c]);
  for (int i = 0; i < r->n_vote_order; i++)
    finish_choice(q, &r->chains[r->vote_order[i]]);
  if (r->ended) {
    if (r->end_status == SA_STATUS_OK) {
      final_stream(q, r);
    } else {
      char *j = error_json(http_status(r->end_status), r->end_msg, NULL, NULL);
      if (j) {
        pend(q, "data: ", 6);
        pend(q, j, strlen(j));
        pend(q, "\n\n", 2);
        free(j);
      }
      pend(q, "data: [DONE]\n\n", 14);
    }
    q->final_out = true;
    flush(q);
    return;
  }
  flush(q);
  q->r = r;
  if (coord_request_attach(h->set, r, &k_cbs, q)) { /* not ours to take */
    q->r = NULL;
    q->final_out = true;
    flush(q);
  }
}

static void chat_completions(coord_http_t *h, h2o_req_t *req) {
  ssize_t li = h2o_find_header_by_str(&req->headers, H2O_STRLIT("last-event-id"), -1);
  if (li >= 0) {
    resume_stream(h, req, req->headers.entries[li].value.base,
                  req->headers.entries[li].value.len);
    return;
  }
  coord_openai_limits_t lim = {.max_audio_bytes = h->copts->max_audio_bytes,
                               .default_max_tokens = h->copts->max_tokens_limit < 2048
                                                         ? h->copts->max_tokens_limit
                                                         : 2048};
  coord_openai_req_t oa;
  char err[512], param[64];
  int rc = coord_openai_parse(req->entity.base ? req->entity.base : "", req->entity.len, &lim,
                              &oa, err, sizeof err, param, sizeof param);
  if (rc) {
    send_error(req, rc == SA_ENOMEM ? 500 : 400, err, param, NULL);
    coord_openai_free(&oa);
    return;
  }
  if (strcmp(oa.model, h->model_name) != 0) {
    snprintf(err, sizeof err, "The model `%s` does not exist.", oa.model);
    send_error(req, 404, err, "model", "model_not_found");
    coord_openai_free(&oa);
    return;
  }
  for (int i = 0; i < oa.n_stop_token_ids; i++) {
    int32_t id = oa.stop_token_ids[i];
    if (id != h->model->tok_eot && (size_t)id < h->vocab_size) {
      send_error(req, 400, "stop_token_ids other than <|EOT|> are not supported yet",
                 "stop_token_ids", NULL);
      coord_openai_free(&oa);
      return;
    }
  }
  /* the same limits as Coordinator/Submit */
  Sa__SubmitRequest sr = SA__SUBMIT_REQUEST__INIT;
  sr.prompt = oa.prompt;
  sr.system = (char *)oa.p.system;
  sr.audio.len = oa.audio_bytes; /* all parts together */
  sr.max_tokens = oa.p.max_tokens;
  sr.n = oa.p.n_chains;
  sr.sampling = &oa.p.sampling;
  sr.think_budget = oa.p.think_budget;
  sr.vote_k = oa.p.vote_k;
  rc = coord_submit_validate(h->copts, &sr, h->set->n_live, h->set->audio_held, err, sizeof err);
  if (rc) {
    const char *p = strstr(err, "max_tokens") ? "max_tokens"
                    : strstr(err, "n must") ? "n"
                    : strstr(err, "sampling") ? "temperature"
                                              : NULL;
    send_error(req, rc == SA_EFULL ? 429 : 400, err, p, NULL);
    coord_openai_free(&oa);
    return;
  }
  hreq_t *q = calloc(1, sizeof *q);
  if (!q) {
    send_error(req, 500, "out of memory", NULL, NULL);
    coord_openai_free(&oa);
    return;
  }
  q->h = h;
  q->req = req;
  q->alive = true;
  *(hreq_t **)h2o_mem_alloc_shared(&req->pool, sizeof q, on_dispose) = q;
  q->stream = oa.stream;
  q->include_usage = oa.include_usage;
  q->created = (int64_t)time(NULL);
  uint8_t rnd[12]; /* unguessable: the id lets a client resume the stream */
  randombytes_buf(rnd, sizeof rnd);
  char hex[2 * sizeof rnd + 1];
  sodium_bin2hex(hex, sizeof hex, rnd, sizeof rnd);
  snprintf(q->id, sizeof q->id, "chatcmpl-%s", hex);
  q->n_chains = oa.p.n_chains;
  oa.p.request_id = q->id;
  oa.p.owner = "http"; /* no RPC client can cancel it */
  coord_request_t *r = coord_request_new(h->set, &oa.p, &k_cbs, q, err, sizeof err);
  coord_openai_free(&oa);
  if (!r) {
    q->req = NULL; /* freed by on_dispose */
    send_error(req, 500, err, NULL, NULL);
    return;
  }
  q->r = r;
}

/* ------------------------------------------------- models, health, metrics */

static void models(coord_http_t *h, h2o_req_t *req) {
  cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "data");
  cJSON_AddStringToObject(o, "object", "list");
  cJSON *m = cJSON_CreateObject();
  cJSON_AddStringToObject(m, "id", h->model_name);
  cJSON_AddStringToObject(m, "object", "model");
  cJSON_AddNumberToObject(m, "created", 0);
  cJSON_AddStringToObject(m, "owned_by", "sa-cluster");
  cJSON_AddNumberToObject(m, "max_model_len", h->model->max_position_embeddings);
  cJSON_AddItemToArray(arr, m);
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  send_json(req, 200, s ? s : "{}");
  free(s);
}

static void health(coord_http_t *h, h2o_req_t *req) {
  int encoders = 0;
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    const coord_worker_t *w = coord_registry_worker(h->reg, i);
    encoders += w && w->healthy && w->role == SA__ROLE__ROLE_ENCODER;
  }
  int replicas = coord_registry_ready_replicas(h->reg);
  char body[300];
  if (encoders > 0 && replicas > 0) {
    snprintf(body, sizeof body, "{\"status\":\"ok\",\"encoders\":%d,\"replicas\":%d}\n",
             encoders, replicas);
    send_json(req, 200, body);
    return;
  }
  snprintf(body, sizeof body,
           "{\"status\":\"unavailable\",\"encoders\":%d,\"replicas\":%d,\"why\":\"%s\"}\n",
           encoders, replicas,
           !encoders && !replicas ? "no audio encoder and no complete replica"
           : !encoders            ? "no audio encoder is up"
                                  : "no complete pipeline replica");
  send_json(req, 503, body);
}

/* One histogram's series (n cumulative buckets at le); labels "" or
 * `name="value"` (without braces). */
static void print_buckets(FILE *f, const char *name, const char *labels, const double *le,
                          const int64_t *bucket, int n, double sum, int64_t count) {
  const char *sep = labels[0] ? "," : "";
  for (int i = 0; i < n; i++) {
    char b[32];
    if (isinf(le[i]))
      snprintf(b, sizeof b, "+Inf");
    else
      snprintf(b, sizeof b, "%g", le[i]);
    fprintf(f, "%s_bucket{%s%sle=\"%s\"} %lld\n", name, labels, sep, b, (long long)bucket[i]);
  }
  fprintf(f, "%s_sum%s%s%s %.6f\n%s_count%s%s%s %lld\n", name, labels[0] ? "{" : "", labels,
          labels[0] ? "}" : "", sum, name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
          (long long)count);
}

static void print_hist(FILE *f, const char *name, const char *labels, const coord_hist_t *hs) {
  print_buckets(f, name, labels, coord_hist_le, hs->bucket, COORD_HIST_BUCKETS, hs->sum,
                hs->count);
}

static void metrics(coord_http_t *h, h2o_req_t *req) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f) {
    send_error(req, 500, "out of memory", NULL, NULL);
    return;
  }
  const coord_requests_t *s = h->set;
  int running = 0, queued = 0, seqs = 0;
  for (const coord_request_t *r = s->head; r; r = r->next) {
    if (r->state == COORD_REQ_DONE)
      continue;
    if (r->state == COORD_REQ_NEW || r->state == COORD_REQ_ENCODING ||
        r->state == COORD_REQ_QUEUED)
      queued++;
    else
      running++;
    seqs += r->n_chains - r->chains_done;
  }
  fprintf(f, "# HELP sa_requests_total Requests ended, by outcome.\n"
             "# TYPE sa_requests_total counter\n");
  static const char *const outcome[] = {"ok", "failed", "cancelled"};
  for (int i = 0; i < 3; i++)
    fprintf(f, "sa_requests_total{outcome=\"%s\"} %lld\n", outcome[i],
            (long long)s->stats.ended[i]);
  fprintf(f, "# HELP sa_requests_running Requests admitted to a replica.\n"
             "# TYPE sa_requests_running gauge\nsa_requests_running %d\n"
             "# HELP sa_requests_waiting Requests encoding or waiting for KV blocks.\n"
             "# TYPE sa_requests_waiting gauge\nsa_requests_waiting %d\n"
             "# HELP sa_sequences_running Chains not yet finished.\n"
             "# TYPE sa_sequences_running gauge\nsa_sequences_running %d\n",
          running, queued, seqs);
  fprintf(f, "# HELP sa_generated_tokens_total Tokens sampled.\n"
             "# TYPE sa_generated_tokens_total counter\nsa_generated_tokens_total %lld\n"
             "# HELP sa_prompt_tokens_total Prompt tokens of requests whose prompt was built.\n"
             "# TYPE sa_prompt_tokens_total counter\nsa_prompt_tokens_total %lld\n"
             "# HELP sa_audio_tokens_total Audio embedding rows of encoded requests.\n"
             "# TYPE sa_audio_tokens_total counter\nsa_audio_tokens_total %lld\n"
             "# HELP sa_failovers_total Requests moved to another replica.\n"
             "# TYPE sa_failovers_total counter\nsa_failovers_total %lld\n"
             "# HELP sa_chains_cancelled_total Chains stopped by early consensus.\n"
             "# TYPE sa_chains_cancelled_total counter\nsa_chains_cancelled_total %lld\n"
             "# HELP sa_tokens_saved_total Tokens early consensus did not generate.\n"
             "# TYPE sa_tokens_saved_total counter\nsa_tokens_saved_total %lld\n",
          (long long)s->stats.generated_tokens, (long long)s->stats.prompt_tokens,
          (long long)s->stats.audio_tokens, (long long)s->stats.failovers,
          (long long)s->stats.chains_cancelled, (long long)s->stats.tokens_saved);
  if (s->wal)
    fprintf(f,
            "# HELP sa_journal_errors_total Journal appends, syncs or compactions that failed "
            "(--state; requests carry on, a crash may lose what was not synced).\n"
            "# TYPE sa_journal_errors_total counter\nsa_journal_errors_total %lld\n",
            (long long)s->wal_errors);
  if (h->sec && !h->sec->insecure)
    fprintf(f,
            "# HELP sa_handshakes_refused_total CurveZMQ peers refused at the handshake (key "
            "not allowed, or a role this server does not take).\n"
            "# TYPE sa_handshakes_refused_total counter\nsa_handshakes_refused_total %llu\n"
            "# HELP sa_calls_denied_total RPC calls refused for the caller's role.\n"
            "# TYPE sa_calls_denied_total counter\nsa_calls_denied_total %llu\n",
            (unsigned long long)h->sec->handshakes_refused,
            (unsigned long long)h->sec->calls_denied);
  static const struct {
    const char *name, *help;
    size_t off;
  } hists[] = {
      {"sa_time_to_first_token_seconds", "Request accepted to its first token.",
       offsetof(coord_request_stats_t, ttft)},
      {"sa_inter_token_latency_seconds", "Time between two tokens of a chain.",
       offsetof(coord_request_stats_t, itl)},
      {"sa_request_duration_seconds", "Request accepted to ended, successful requests.",
       offsetof(coord_request_stats_t, e2e)},
      {"sa_encode_duration_seconds", "Audio sent to an encoder to its rows back.",
       offsetof(coord_request_stats_t, encode)},
      {"sa_queue_duration_seconds", "Prompt built to admitted to a replica.",
       offsetof(coord_request_stats_t, queue)},
  };
  for (size_t k = 0; k < sizeof hists / sizeof hists[0]; k++) {
    fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", hists[k].name, hists[k].help,
            hists[k].name);
    print_hist(f, hists[k].name, "", (const coord_hist_t *)((const char *)&s->stats +
                                                            hists[k].off));
  }
  fprintf(f, "# HELP sa_step_duration_seconds A pipeline step, sent to stage 0 until the "
             "last stage's result is back, per replica.\n"
             "# TYPE sa_step_duration_seconds histogram\n");
  for (int ri = 0; ri < COORD_MAX_REPLICAS; ri++) {
    const coord_replica_t *rp = coord_registry_replica(h->reg, ri);
    if (!rp || h->pl->stats[ri].step.count == 0)
      continue;
    char label[96];
    snprintf(label, sizeof label, "replica=\"%s\"", rp->name);
    print_hist(f, "sa_step_duration_seconds", label, &h->pl->stats[ri].step);
  }
  fprintf(f, "# HELP sa_step_rows Tokens (rows of the stages' matmuls: one per decoding "
             "sequence, a prefill chunk's prompt tokens) in one completed pipeline step, per "
             "replica.\n# TYPE sa_step_rows histogram\n");
  for (int ri = 0; ri < COORD_MAX_REPLICAS; ri++) {
    const coord_replica_t *rp = coord_registry_replica(h->reg, ri);
    const coord_rows_hist_t *rh = &h->pl->stats[ri].rows;
    if (!rp || rh->count == 0)
      continue;
    char label[96];
    snprintf(label, sizeof label, "replica=\"%s\"", rp->name);
    print_buckets(f, "sa_step_rows", label, coord_rows_le, rh->bucket, COORD_ROWS_BUCKETS,
                  rh->sum, rh->count);
  }
  fprintf(f, "# HELP sa_step_tokens_total Tokens through completed pipeline steps, per "
             "replica (prefill, replay and decode).\n# TYPE sa_step_tokens_total counter\n");
  for (int ri = 0; ri < COORD_MAX_REPLICAS; ri++) {
    const coord_replica_t *rp = coord_registry_replica(h->reg, ri);
    if (rp)
      fprintf(f, "sa_step_tokens_total{replica=\"%s\"} %llu\n", rp->name,
              (unsigned long long)h->pl->stats[ri].tokens);
  }
  fprintf(f, "# HELP sa_stage_compute_seconds One step's compute inside one stage.\n"
             "# TYPE sa_stage_compute_seconds histogram\n");
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    const coord_worker_t *w = coord_registry_worker(h->reg, i);
    if (!w || w->role != SA__ROLE__ROLE_STAGE || h->pl->stage_compute[i].count == 0)
      continue;
    char label[160];
    snprintf(label, sizeof label, "replica=\"%s\",layers=\"%d:%d\"", w->replica_name, w->first,
             w->last);
    print_hist(f, "sa_stage_compute_seconds", label, &h->pl->stage_compute[i]);
  }
  fprintf(f, "# HELP sa_kv_blocks_used KV blocks in use per stage (last report).\n"
             "# TYPE sa_kv_blocks_used gauge\n");
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    const coord_worker_t *w = coord_registry_worker(h->reg, i);
    if (w && w->role == SA__ROLE__ROLE_STAGE)
      fprintf(f, "sa_kv_blocks_used{replica=\"%s\",layers=\"%d:%d\"} %lld\n", w->replica_name,
              w->first, w->last, (long long)w->kv_used);
  }
  fprintf(f, "# HELP sa_kv_blocks_total KV blocks per stage.\n"
             "# TYPE sa_kv_blocks_total gauge\n");
  for (int i = 0; i < COORD_MAX_WORKERS; i++) {
    const coord_worker_t *w = coord_registry_worker(h->reg, i);
    if (w && w->role == SA__ROLE__ROLE_STAGE)
      fprintf(f, "sa_kv_blocks_total{replica=\"%s\",layers=\"%d:%d\"} %lld\n", w->replica_name,
              w->first, w->last, (long long)w->kv_total);
  }
  fprintf(f, "# HELP sa_replicas_ready Complete pipeline replicas.\n"
             "# TYPE sa_replicas_ready gauge\nsa_replicas_ready %d\n",
          coord_registry_ready_replicas(h->reg));
  fclose(f);
  send_body(req, 200, "text/plain; version=0.0.4", buf ? buf : "", len);
  free(buf);
}

/* ------------------------------------------------------------ routing */

typedef struct {
  h2o_handler_t super;
  coord_http_t *h;
} handler_t;

static int on_req(h2o_handler_t *self, h2o_req_t *req) {
  coord_http_t *h = ((handler_t *)self)->h;
  if (path_is(req, "/health")) {
    if (!method_is(req, "GET") && !method_is(req, "HEAD"))
      send_error(req, 405, "use GET", NULL, NULL);
    else
      health(h, req);
    return 0;
  }
  if (!authorized(h, req)) {
    send_error(req, 401, "missing or wrong API key (Authorization: Bearer KEY)", NULL,
               "invalid_api_key");
    return 0;
  }
  if (req->entity.len > h->max_body) {
    char msg[160];
    snprintf(msg, sizeof msg, "the request body is %zu bytes; the limit is %zu",
             req->entity.len, h->max_body);
    send_error(req, 413, msg, NULL, "request_too_large");
  } else if (path_is(req, "/v1/chat/completions")) {
    if (!method_is(req, "POST"))
      send_error(req, 405, "use POST", NULL, NULL);
    else
      chat_completions(h, req);
  } else if (path_is(req, "/v1/models")) {
    models(h, req);
  } else if (path_is(req, "/metrics")) {
    metrics(h, req);
  } else {
    char msg[300];
    snprintf(msg, sizeof msg, "no such path: %.*s", (int)req->path_normalized.len,
             req->path_normalized.base);
    send_error(req, 404, msg, NULL, "not_found");
  }
  return 0;
}

static void on_accept(uv_stream_t *listener, int status) {
  coord_http_t *h = listener->data;
  if (status != 0)
    return;
  uv_tcp_t *conn = h2o_mem_alloc(sizeof *conn);
  uv_tcp_init(listener->loop, conn);
  if (uv_accept(listener, (uv_stream_t *)conn) != 0) {
    uv_close((uv_handle_t *)conn, (uv_close_cb)free);
    return;
  }
  h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)conn, (uv_close_cb)free);
  h2o_accept(&h->accept_ctx, sock);
}

/* Parses "HOST:PORT" ("[v6]:PORT" too) into addr; loopback says whether
 * the host is a loopback address. */
static int parse_listen(const char *s, struct sockaddr_storage *addr, bool *loopback) {
  char host[256];
  const char *colon = strrchr(s, ':');
  if (!colon || colon == s || !colon[1] || (size_t)(colon - s) >= sizeof host)
    return SA_EINVAL;
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = '\0';
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535)
    return SA_EINVAL;
  if (host[0] == '[') {
    size_t n = strlen(host);
    if (n < 3 || host[n - 1] != ']')
      return SA_EINVAL;
    host[n - 1] = '\0';
    if (uv_ip6_addr(host + 1, (int)port, (struct sockaddr_in6 *)addr))
      return SA_EINVAL;
    *loopback = !strcmp(host + 1, "::1");
    return 0;
  }
  if (!strcmp(host, "localhost"))
    snprintf(host, sizeof host, "127.0.0.1");
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)addr))
    return SA_EINVAL;
  *loopback = !strncmp(host, "127.", 4);
  return 0;
}

int coord_http_start(struct uv_loop_s *loop, const coord_http_opts_t *o,
                     const coord_opts_t *copts, const coord_model_t *model,
                     size_t vocab_size, coord_requests_t *set, const coord_registry_t *reg,
                     const coord_pipeline_t *pl, coord_http_t **out, char *err, size_t cap) {
  *out = NULL;
  struct sockaddr_storage addr;
  bool loopback = false;
  memset(&addr, 0, sizeof addr);
  if (parse_listen(o->listen, &addr, &loopback)) {
    sa_set_err(err, cap, "bad --http address '%s' (want HOST:PORT)", o->listen);
    return SA_EINVAL;
  }
  if (sodium_init() < 0) {
    sa_set_err(err, cap, "libsodium could not start");
    return SA_EIO;
  }
  coord_http_t *h = calloc(1, sizeof *h);
  if (!h) {
    sa_set_err(err, cap, "out of memory");
    return SA_ENOMEM;
  }
  int rc;
  if (o->api_key_file && (rc = load_keys(h, o->api_key_file, err, cap)))
    goto fail;
  if (!loopback && h->n_keys == 0 && !o->insecure) {
    sa_set_err(err, cap,
               "refusing to serve HTTP on %s without an API key file (--api-key-file); "
               "--insecure-http allows it",
               o->listen);
    rc = SA_EPERM;
    goto fail;
  }
  snprintf(h->model_name, sizeof h->model_name, "%s", o->served_model_name);
  h->reasoning_split = o->reasoning_split;
  h->sec = o->sec;
  h->copts = copts;
  h->model = model;
  h->vocab_size = vocab_size;
  h->set = set;
  h->reg = reg;
  h->pl = pl;
  h2o_config_init(&h->config);
  /* bodies up to twice the limit reach the handler, which answers 413 with
   * an OpenAI error object; beyond that H2O answers 413 itself, unread */
  h->max_body = o->max_body_bytes;
  h->config.max_request_entity_size =
      o->max_body_bytes <= SIZE_MAX / 2 ? o->max_body_bytes * 2 : o->max_body_bytes;
  h2o_hostconf_t *hc =
      h2o_config_register_host(&h->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
  h2o_pathconf_t *pc = h2o_config_register_path(hc, "/", 0);
  handler_t *hd = (handler_t *)h2o_create_handler(pc, sizeof *hd);
  hd->super.on_req = on_req;
  hd->h = h;
  h2o_context_init(&h->ctx, loop, &h->config);
  h->accept_ctx.ctx = &h->ctx;
  h->accept_ctx.hosts = h->config.hosts;
  uv_tcp_init(loop, &h->listener);
  h->listener.data = h;
  if ((rc = uv_tcp_bind(&h->listener, (struct sockaddr *)&addr, 0)) == 0)
    rc = uv_listen((uv_stream_t *)&h->listener, 128, on_accept);
  if (rc) {
    sa_set_err(err, cap, "cannot listen for HTTP on %s: %s", o->listen, uv_strerror(rc));
    uv_close((uv_handle_t *)&h->listener, NULL);
    *out = NULL;
    return SA_EIO; /* h stays: the listener closes on the loop, H2O keeps its context */
  }
  struct sockaddr_storage bound;
  int blen = sizeof bound;
  char ip[64] = "?";
  int port = 0;
  if (uv_tcp_getsockname(&h->listener, (struct sockaddr *)&bound, &blen) == 0) {
    if (bound.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&bound, ip, sizeof ip);
      port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
      snprintf(h->url, sizeof h->url, "http://[%s]:%d", ip, port);
    } else {
      uv_ip4_name((struct sockaddr_in *)&bound, ip, sizeof ip);
      port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
      snprintf(h->url, sizeof h->url, "http://%s:%d", ip, port);
    }
  }
  *out = h;
  return 0;
fail:
  for (int i = 0; i < h->n_keys; i++)
    free(h->keys[i]);
  free(h);
  return rc;
}

const char *coord_http_url(const coord_http_t *h) { return h->url; }

void coord_http_stop(coord_http_t **hp) {
  if (!hp || !*hp)
    return;
  coord_http_t *h = *hp;
  *hp = NULL;
  uv_close((uv_handle_t *)&h->listener, NULL);
  /* H2O's timers live on the loop: disposing the context closes them, so
   * the loop can end (open connections end with it) */
  h2o_context_dispose(&h->ctx);
}
