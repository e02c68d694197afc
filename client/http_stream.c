/*
 * http_stream — streamed chat completions over libcurl's multi-socket
 * interface on a libuv loop (see http_stream.h). The pattern is libcurl's
 * own (multi-uv): curl says which sockets to watch and when to wake it;
 * a uv_poll per socket and one uv_timer do the watching.
 */
#include "http_stream.h"

#include "sa_error.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define MAX_CHOICES 1024
#define MAX_EVENT_BYTES (16u << 20) /* one SSE event; beyond it the stream is refused */

struct sa_http {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;
  struct curl_slist *headers;
  char base[512];
  sa_http_req_t *head;
};

typedef struct {
  uv_poll_t poll;
  curl_socket_t fd;
  sa_http_t *h;
} sock_t;

typedef struct {
  char *text[2]; /* 0 reasoning, 1 content */
  size_t len[2], cap[2];
  char finish[32];
} choice_t;

struct sa_http_req {
  sa_http_t *h;
  CURL *easy;
  char *body;
  sa_http_cbs_t cbs;
  void *user;
  char *buf; /* bytes of the response not parsed yet (or an error body) */
  size_t len, cap;
  choice_t *choices;
  int n_choices;
  cJSON *usage, *vote;
  char err[CURL_ERROR_SIZE + 64];
  bool done, bad;
  sa_http_req_t *prev, *next;
};

static void check_done(sa_http_t *h);

/* ------------------------------------------------------------ parsing */

static int append(char **p, size_t *len, size_t *cap, const char *s, size_t n) {
  if (*len + n + 1 > *cap) {
    size_t c = *cap ? *cap : 256;
    while (c < *len + n + 1)
      c *= 2;
    char *q = realloc(*p, c);
    if (!q)
      return SA_ENOMEM;
    *p = q;
    *cap = c;
  }
  memcpy(*p + *len, s, n);
  *len += n;
  (*p)[*len] = '\0';
  return 0;
}

static choice_t *choice(sa_http_req_t *r, int index) {
  if (index < 0 || index >= MAX_CHOICES)
    return NULL;
  if (index >= r->n_choices) {
    choice_t *c = realloc(r->choices, sizeof *c * (size_t)(index + 1));
    if (!c)
      return NULL;
    memset(c + r->n_choices, 0, sizeof *c * (size_t)(index + 1 - r->n_choices));
    r->choices = c;
    r->n_choices = index + 1;
  }
  return &r->choices[index];
}

/* One event's data: a chunk, the usage/vote chunk, an error, or [DONE]. */
static void on_data(sa_http_req_t *r, const char *data, size_t n) {
  if (n == 6 && !memcmp(data, "[DONE]", 6)) {
    r->done = true;
    return;
  }
  cJSON *o = cJSON_ParseWithLength(data, n);
  if (!o) {
    snprintf(r->err, sizeof r->err, "a stream event is not JSON");
    r->bad = true;
    return;
  }
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(o, "error");
  if (e) {
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
    snprintf(r->err, sizeof r->err, "%s", cJSON_IsString(m) ? m->valuestring : "error event");
    r->bad = true;
  }
  const cJSON *ch, *choices = cJSON_GetObjectItemCaseSensitive(o, "choices");
  cJSON_ArrayForEach(ch, choices) {
    const cJSON *idx = cJSON_GetObjectItemCaseSensitive(ch, "index");
    choice_t *c = cJSON_IsNumber(idx) ? choice(r, idx->valueint) : NULL;
    if (!c)
      continue;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(ch, "delta");
    static const char *const keys[2] = {"reasoning_content", "content"};
    for (int k = 0; k < 2; k++) {
      const cJSON *t = cJSON_GetObjectItemCaseSensitive(d, keys[k]);
      if (cJSON_IsString(t) && t->valuestring[0]) {
        size_t tl = strlen(t->valuestring);
        if (append(&c->text[k], &c->len[k], &c->cap[k], t->valuestring, tl) == 0)
          r->cbs.on_text(r->user, idx->valueint, t->valuestring, tl, k == 0);
      }
    }
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(ch, "finish_reason");
    if (cJSON_IsString(f))
      snprintf(c->finish, sizeof c->finish, "%s", f->valuestring);
  }
  const cJSON *u = cJSON_GetObjectItemCaseSensitive(o, "usage");
  if (cJSON_IsObject(u)) {
    cJSON_Delete(r->usage);
    r->usage = cJSON_Duplicate(u, 1);
  }
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "sa_vote");
  if (cJSON_IsObject(v)) {
    cJSON_Delete(r->vote);
    r->vote = cJSON_Duplicate(v, 1);
  }
  cJSON_Delete(o);
}

/* Complete events ("\n\n"-terminated) out of r->buf; the data lines of each. */
static void parse_events(sa_http_req_t *r) {
  size_t at = 0;
  for (;;) {
    char *end = r->len > at ? strstr(r->buf + at, "\n\n") : NULL;
    if (!end)
      break;
    for (char *line = r->buf + at; line < end;) {
      char *nl = memchr(line, '\n', (size_t)(end - line));
      char *le = nl ? nl : end;
      if (le - line >= 5 && !memcmp(line, "data:", 5)) {
        char *d = line + 5;
        if (d < le && *d == ' ')
          d++;
        on_data(r, d, (size_t)(le - d));
      }
      line = le + 1;
    }
    at = (size_t)(end - r->buf) + 2;
  }
  memmove(r->buf, r->buf + at, r->len - at + 1);
  r->len -= at;
}

static size_t on_write(char *p, size_t size, size_t n, void *user) {
  sa_http_req_t *r = user;
  size_t bytes = size * n;
  long code = 0;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
  if (r->len + bytes > MAX_EVENT_BYTES || append(&r->buf, &r->len, &r->cap, p, bytes)) {
    snprintf(r->err, sizeof r->err, "a stream event is larger than %u bytes", MAX_EVENT_BYTES);
    r->bad = true;
    return 0; /* curl fails the transfer */
  }
  if (code == 200)
    parse_events(r);
  return bytes;
}

/* --------------------------------------------------------- completion */

static int status_of_http(long code) {
  switch (code) {
  case 400: return SA_STATUS_INVALID_ARGUMENT;
  case 401: return SA_STATUS_UNAUTHENTICATED;
  case 403: return SA_STATUS_PERMISSION_DENIED;
  case 404: return SA_STATUS_NOT_FOUND;
  case 408: return SA_STATUS_DEADLINE_EXCEEDED;
  case 429: return SA_STATUS_RESOURCE_EXHAUSTED;
  case 503: return SA_STATUS_UNAVAILABLE;
  default: return SA_STATUS_INTERNAL;
  }
}

static cJSON *result_json(sa_http_req_t *r) {
  cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "choices");
  for (int i = 0; i < r->n_choices; i++) {
    const choice_t *c = &r->choices[i];
    cJSON *co = cJSON_CreateObject();
    cJSON_AddNumberToObject(co, "index", i);
    cJSON_AddStringToObject(co, "reasoning", c->text[0] ? c->text[0] : "");
    cJSON_AddStringToObject(co, "content", c->text[1] ? c->text[1] : "");
    cJSON_AddStringToObject(co, "finish_reason", c->finish);
    cJSON_AddItemToArray(arr, co);
  }
  cJSON_AddItemToObject(o, "usage", r->usage ? r->usage : cJSON_CreateObject());
  cJSON_AddItemToObject(o, "sa_vote", r->vote ? r->vote : cJSON_CreateObject());
  r->usage = r->vote = NULL;
  return o;
}

static void req_free(sa_http_req_t *r) {
  sa_http_t *h = r->h;
  *(r->prev ? &r->prev->next : &h->head) = r->next;
  if (r->next)
    r->next->prev = r->prev;
  curl_multi_remove_handle(h->multi, r->easy);
  curl_easy_cleanup(r->easy);
  for (int i = 0; i < r->n_choices; i++) {
    free(r->choices[i].text[0]);
    free(r->choices[i].text[1]);
  }
  free(r->choices);
  cJSON_Delete(r->usage);
  cJSON_Delete(r->vote);
  free(r->body);
  free(r->buf);
  free(r);
}

static void finish(sa_http_req_t *r, CURLcode rc, bool cancelled) {
  long code = 0;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
  int status = SA_STATUS_OK;
  char msg[512] = "";
  cJSON *result = NULL;
  if (cancelled) {
    status = SA_STATUS_CANCELLED;
    snprintf(msg, sizeof msg, "cancelled");
  } else if (r->bad) {
    status = SA_STATUS_INTERNAL;
    snprintf(msg, sizeof msg, "%s", r->err);
  } else if (rc != CURLE_OK) {
    status = rc == CURLE_OPERATION_TIMEDOUT ? SA_STATUS_DEADLINE_EXCEEDED : SA_STATUS_UNAVAILABLE;
    snprintf(msg, sizeof msg, "%s", r->err[0] ? r->err : curl_easy_strerror(rc));
  } else if (code != 200) {
    status = status_of_http(code);
    cJSON *o = r->buf ? cJSON_Parse(r->buf) : NULL;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(o, "error"), "message");
    snprintf(msg, sizeof msg, "HTTP %ld: %s", code,
             cJSON_IsString(m) ? m->valuestring : "(no error message)");
    cJSON_Delete(o);
  } else if (!r->done) {
    status = SA_STATUS_UNAVAILABLE;
    snprintf(msg, sizeof msg, "the stream ended before [DONE]");
  } else {
    result = result_json(r);
  }
  sa_http_cbs_t cbs = r->cbs;
  void *user = r->user;
  req_free(r);
  cbs.on_end(user, status, msg, result);
}

static void check_done(sa_http_t *h) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(h->multi, &left))) {
    if (m->msg != CURLMSG_DONE)
      continue;
    sa_http_req_t *r = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    if (r)
      finish(r, m->data.result, false);
  }
}

/* ------------------------------------------------- libcurl <-> libuv */

static void on_poll(uv_poll_t *p, int status, int events) {
  sock_t *s = p->data;
  int flags = status < 0 ? CURL_CSELECT_ERR : 0, running;
  if (events & UV_READABLE)
    flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE)
    flags |= CURL_CSELECT_OUT;
  sa_http_t *h = s->h;
  curl_multi_socket_action(h->multi, s->fd, flags, &running);
  check_done(h);
}

static void free_sock(uv_handle_t *hd) { free(hd->data); }

static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp) {
  (void)e;
  sa_http_t *h = userp;
  sock_t *s = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      uv_poll_stop(&s->poll);
      uv_close((uv_handle_t *)&s->poll, free_sock);
      curl_multi_assign(h->multi, fd, NULL);
    }
    return 0;
  }
  if (!s) {
    if (!(s = calloc(1, sizeof *s)))
      return -1;
    s->fd = fd;
    s->h = h;
    if (uv_poll_init_socket(h->loop, &s->poll, fd)) {
      free(s);
      return -1;
    }
    s->poll.data = s;
    curl_multi_assign(h->multi, fd, s);
  }
  int ev = (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0);
  uv_poll_start(&s->poll, ev, on_poll);
  return 0;
}

static void on_timeout(uv_timer_t *t) {
  sa_http_t *h = t->data;
  int running;
  curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(h);
}

static int on_timer(CURLM *m, long ms, void *userp) {
  (void)m;
  sa_http_t *h = userp;
  if (ms < 0)
    uv_timer_stop(&h->timer);
  else
    uv_timer_start(&h->timer, on_timeout, (uint64_t)ms, 0);
  return 0;
}

/* ----------------------------------------------------------------- API */

static struct curl_slist *make_headers(const char *api_key) {
  struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
  hd = curl_slist_append(hd, "Accept: text/event-stream");
  if (api_key && api_key[0]) {
    char auth[600];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", api_key);
    hd = curl_slist_append(hd, auth);
  }
  return hd;
}

int sa_http_new(struct uv_loop_s *loop, const char *base_url, const char *api_key,
                sa_http_t **out) {
  if (!base_url || strlen(base_url) >= 480 || (api_key && strlen(api_key) > 512))
    return SA_EINVAL;
  if (curl_global_init(CURL_GLOBAL_DEFAULT))
    return SA_EIO;
  sa_http_t *h = calloc(1, sizeof *h);
  if (!h)
    return SA_ENOMEM;
  h->loop = loop;
  snprintf(h->base, sizeof h->base, "%s", base_url);
  if (!(h->multi = curl_multi_init()) || !(h->headers = make_headers(api_key))) {
    if (h->multi)
      curl_multi_cleanup(h->multi);
    free(h);
    return SA_ENOMEM;
  }
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
  uv_timer_init(loop, &h->timer);
  h->timer.data = h;
  *out = h;
  return 0;
}

static void free_http(uv_handle_t *hd) {
  sa_http_t *h = hd->data;
  curl_multi_cleanup(h->multi);
  curl_slist_free_all(h->headers);
  free(h);
}

void sa_http_destroy(sa_http_t *h) {
  if (!h)
    return;
  while (h->head)
    finish(h->head, CURLE_OK, true);
  uv_close((uv_handle_t *)&h->timer, free_http);
}

int sa_http_start(sa_http_t *h, const char *body, double timeout_s, const sa_http_cbs_t *cbs,
                  void *user, sa_http_req_t **out) {
  sa_http_req_t *r = calloc(1, sizeof *r);
  if (!r)
    return SA_ENOMEM;
  char url[600];
  snprintf(url, sizeof url, "%s/v1/chat/completions", h->base);
  if (!(r->body = strdup(body)) || !(r->easy = curl_easy_init())) {
    free(r->body);
    free(r);
    return SA_ENOMEM;
  }
  r->h = h;
  r->cbs = *cbs;
  r->user = user;
  CURL *e = r->easy;
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->headers);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->err);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout_s * 1000));
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  r->next = h->head;
  if (h->head)
    h->head->prev = r;
  h->head = r;
  if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
    req_free(r);
    return SA_EIO;
  }
  *out = r;
  return 0;
}

void sa_http_cancel(sa_http_req_t *r) {
  if (r)
    finish(r, CURLE_OK, true);
}

static size_t collect(char *p, size_t size, size_t n, void *user) {
  sa_http_req_t *r = user;
  return append(&r->buf, &r->len, &r->cap, p, size * n) ? 0 : size * n;
}

int sa_http_model_name(const char *base_url, const char *api_key, char *name, size_t cap,
                       char *err, size_t err_cap) {
  if (curl_global_init(CURL_GLOBAL_DEFAULT))
    return SA_EIO;
  sa_http_req_t r = {0};
  char url[600];
  snprintf(url, sizeof url, "%s/v1/models", base_url);
  CURL *e = curl_easy_init();
  struct curl_slist *hd = make_headers(api_key);
  if (!e || !hd) {
    curl_easy_cleanup(e);
    curl_slist_free_all(hd);
    return SA_ENOMEM;
  }
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, hd);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &r);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  CURLcode rc = curl_easy_perform(e);
  long code = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_cleanup(e);
  curl_slist_free_all(hd);
  int ret = 0;
  cJSON *o = rc == CURLE_OK && code == 200 && r.buf ? cJSON_Parse(r.buf) : NULL;
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(
      cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "data"), 0), "id");
  if (rc != CURLE_OK) {
    sa_set_err(err, err_cap, "%s: %s", url, curl_easy_strerror(rc));
    ret = SA_EUNAVAIL;
  } else if (code != 200) {
    sa_set_err(err, err_cap, "%s: HTTP %ld%s", url, code,
               code == 401 ? " (an API key is needed: --api-key-file)" : "");
    ret = SA_EIO;
  } else if (!cJSON_IsString(id)) {
    sa_set_err(err, err_cap, "%s: no model in the answer", url);
    ret = SA_EFORMAT;
  } else {
    snprintf(name, cap, "%s", id->valuestring);
  }
  cJSON_Delete(o);
  free(r.buf);
  return ret;
}
