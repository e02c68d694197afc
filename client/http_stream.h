/*
 * http_stream — streamed chat completions over the coordinator's
 * OpenAI-compatible HTTP API (POST /v1/chat/completions, "stream": true),
 * many at once on one libuv loop (libcurl's multi-socket interface).
 *
 * What it does: sends a JSON body, splits the server-sent events, and
 * passes up each choice's text as it arrives and, at the end, the whole
 * result (every choice's reasoning and content, finish reasons, usage, our
 * sa_vote extension). What it does not: resume a broken stream (a broken
 * stream is a failed request here), build bodies, or retry.
 *
 * Lifetime: sa_http_start → on_text* → on_end exactly once (also after
 * sa_http_cancel) → the request is freed by this module after on_end.
 */
#ifndef SA_CLIENT_HTTP_STREAM_H
#define SA_CLIENT_HTTP_STREAM_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

struct uv_loop_s;
typedef struct sa_http sa_http_t;
typedef struct sa_http_req sa_http_req_t;

typedef struct {
  /* A chunk of choice's text (reasoning: before </think>). */
  void (*on_text)(void *user, int choice, const char *text, size_t len, bool reasoning);
  /* The end: status is an SA_STATUS_* (OK, or the HTTP error mapped, or
   * UNAVAILABLE when the connection failed); result (owned by the callee,
   * NULL unless OK) is {"choices": [{"index", "reasoning", "content",
   * "finish_reason"}], "usage": {...}, "sa_vote": {...}}. */
  void (*on_end)(void *user, int status, const char *msg, cJSON *result);
} sa_http_cbs_t;

/* base_url like "http://10.0.0.1:8000"; api_key NULL for none (loopback). */
int sa_http_new(struct uv_loop_s *loop, const char *base_url, const char *api_key,
                sa_http_t **out);
/* Closes every request (each gets on_end CANCELLED first). The loop must
 * run afterwards until the handles have closed. */
void sa_http_destroy(sa_http_t *h);

/* The served model's name (GET /v1/models, blocking; for start-up). 0 or
 * an SA_E* code with the reason in err. */
int sa_http_model_name(const char *base_url, const char *api_key, char *name, size_t cap,
                       char *err, size_t err_cap);

/* Starts a streamed completion with body (a JSON object, copied); timeout_s
 * for the whole request. 0 or an SA_E* code. */
int sa_http_start(sa_http_t *h, const char *body, double timeout_s, const sa_http_cbs_t *cbs,
                  void *user, sa_http_req_t **out);
void sa_http_cancel(sa_http_req_t *r);

#endif
