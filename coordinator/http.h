/*
 * http — the coordinator's HTTP front door, beside submit.c: an HTTP/1.1
 * server (H2O's libuv build, on the coordinator's own loop) serving
 *   POST /v1/chat/completions  OpenAI's chat format (openai.h), streamed as
 *                              Server-Sent Events or as one JSON object
 *   GET  /v1/models            the served model
 *   GET  /health               200 with an encoder and a complete replica,
 *                              else 503 saying what is missing
 *   GET  /metrics              Prometheus text format
 * Errors are OpenAI error objects with the matching status. With an API key
 * file every path but /health needs `Authorization: Bearer KEY`; without
 * one the server refuses to bind anything but loopback unless `insecure`.
 *
 * It owns its connections and each HTTP request's response; it creates
 * requests (with its own coord_request_cbs_t) and asks to cancel them when
 * a client goes away, and reads the registry and the request set for
 * health and metrics. Loop thread only.
 */
#ifndef SA_COORD_HTTP_H
#define SA_COORD_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "coord.h"
#include "pipeline.h"
#include "registry.h"
#include "request.h"

struct uv_loop_s;

typedef struct {
  const char *listen;            /* "HOST:PORT" (IPv4 or [IPv6]) */
  const char *api_key_file;      /* one key a line; NULL: no keys */
  bool insecure;                 /* allow a non-loopback bind without keys */
  const char *served_model_name; /* what /v1/models lists and requests name */
  size_t max_body_bytes;         /* larger bodies get 413 */
  bool reasoning_split;          /* thinking -> reasoning_content */
  const struct sa_sec *sec;      /* the RPC side's security, for /metrics; may be NULL */
} coord_http_opts_t;

typedef struct coord_http coord_http_t;

/* Starts serving on loop. Everything given is borrowed for the server's
 * life; o's strings are copied. Returns 0 or a negative SA_E* with the
 * reason in err[cap] (bad address, refused insecure bind, unreadable key
 * file, port in use). Caller owns *out. */
int coord_http_start(struct uv_loop_s *loop, const coord_http_opts_t *o,
                     const coord_opts_t *copts, const coord_model_t *model,
                     size_t vocab_size, coord_requests_t *set, const coord_registry_t *reg,
                     const coord_pipeline_t *pl, coord_http_t **out, char *err, size_t cap);

/* The URL it serves at ("http://127.0.0.1:8000"). Borrowed. */
const char *coord_http_url(const coord_http_t *h);

/* Stops accepting and disposes H2O's context (its timers close on the
 * loop, so uv_run can return). Sets *h NULL; the configuration's memory
 * goes with the process. */
void coord_http_stop(coord_http_t **h);

#endif /* SA_COORD_HTTP_H */
