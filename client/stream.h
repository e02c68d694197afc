/*
 * stream — one request's event stream from the coordinator, kept whole
 * across coordinator restarts. Used by sa-client (one request) and sa-load
 * (thousands in flight on one channel).
 *
 * What it does: sends the packed SubmitRequest (Coordinator/Submit); when
 * the stream ends UNAVAILABLE (the coordinator went away; one with --state
 * resumes the request after a restart) it asks again with Coordinator/Resume
 * from the bytes of each chain it holds, backing off 0.2 s → 2 s, until the
 * deadline; a Submit answered ALREADY_EXISTS attaches; a Resume answered
 * NOT_FOUND before anything arrived (the coordinator died before it had the
 * request) sends the Submit once more. Events are passed up deduplicated: a
 * delta trimmed to the bytes not seen yet, "encoded" and each chain_done once.
 *
 * What it does not: print, parse options, own the channel or the loop.
 *
 * Lifetime: sa_submit_stream_start → on_event* → on_end exactly once (also
 * after sa_submit_stream_cancel) → sa_submit_stream_free, which may be
 * called from inside on_end. The loop must run after free (a timer closes).
 */
#ifndef SA_CLIENT_STREAM_H
#define SA_CLIENT_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc.h"
#include "sa.pb-c.h"

typedef struct sa_submit_stream sa_submit_stream_t;

typedef struct {
  /* A new event (ev is freed after the call). */
  void (*on_event)(void *user, Sa__SubmitEvent *ev);
  /* The stream is over: status SA_STATUS_OK, or the last error (msg never
   * NULL). Called once. */
  void (*on_end)(void *user, int status, const char *msg);
  /* Optional: asking again after status/msg, in backoff_s (resubmit: the
   * whole request is sent again). For a log line. */
  void (*on_retry)(void *user, int status, const char *msg, double backoff_s, bool resubmit);
} sa_submit_stream_cbs_t;

/* Starts the request whose packed SubmitRequest is submit[0..len) (copied)
 * with id request_id and n_chains chains, on ch, giving up at deadline_s
 * (sa_now_s() clock); ch belongs to loop. Returns 0, or an SA_E* code when the first call could
 * not start (nothing was made). */
int sa_submit_stream_start(struct uv_loop_s *loop, sa_rpc_channel_t *ch, const char *request_id, const uint8_t *submit,
                           size_t len, int n_chains, double deadline_s,
                           const sa_submit_stream_cbs_t *cbs, void *user,
                           sa_submit_stream_t **out);

/* Cancels: the call in flight is cancelled (the coordinator stops the
 * request), or a pending retry is dropped; on_end follows with CANCELLED. */
void sa_submit_stream_cancel(sa_submit_stream_t *s);

/* After on_end. */
void sa_submit_stream_free(sa_submit_stream_t *s);

/* Streams asked again (Resume or a second Submit) so far. */
int sa_submit_stream_resumes(const sa_submit_stream_t *s);

/* Deltas that started past the bytes held (a gap the coordinator should
 * never make); each also printed on stderr. */
int sa_submit_stream_gaps(const sa_submit_stream_t *s);

#endif
