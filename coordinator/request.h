/*
 * request — the requests and their chains, from acceptance to the final
 * result: encoding, the prompt, admission to a replica, prefill, fork,
 * decoding, the vote, failover and cancellation. The only writer of
 * coord_request_t and coord_chain_t.
 *
 * How it runs. Everything that happens below (a step, fork, free or encode
 * that came back; a replica that went away) and every ask from above (a new
 * request, a cancel, shutdown) is recorded and marks the set dirty; nothing
 * is applied inside a callback. coord_requests_process(), which main.c runs
 * once per loop turn, applies the recorded events in arrival order, then
 * cancellations, starts new requests, admits queued ones, plans and sends
 * micro-batches, and last reaps (frees) finished requests that nothing
 * refers to any more — so no state changes under a caller's feet and
 * nothing is freed inside its own callback chain.
 *
 * What goes up: coord_request_cbs_t events (prompt built, text, a chain
 * done, the final result) and exactly one end per request, all from inside
 * coord_requests_process(). They may call coord_request_cancel (it only
 * records) and read the request; nothing else of this module.
 *
 * Loop thread only.
 */
#ifndef SA_COORD_REQUEST_H
#define SA_COORD_REQUEST_H

#include <stdbool.h>
#include <stdint.h>

#include "coord.h"
#include "pipeline.h"
#include "request_stats.h"
#include "registry.h"
#include "sa_error.h"
#include "sched.h"
#include "wal.h"

typedef enum {
  COORD_EV_ENCODED,    /* the audio is encoded and the prompt built */
  COORD_EV_DELTA,      /* text of a chain (reasoning or answer) */
  COORD_EV_CHAIN_DONE, /* a chain finished by itself (EOT or max_tokens) */
  COORD_EV_FINAL,      /* every chain is done: the result (end OK follows) */
} coord_event_kind_t;

/* An event of a request; pointers borrowed for the callback. */
typedef struct {
  coord_event_kind_t kind;
  int chain;           /* DELTA, CHAIN_DONE */
  const char *text;    /* DELTA: the text (not NUL-terminated) */
  size_t len;
  bool answer;         /* DELTA: after </think> */
  int64_t offset;      /* DELTA: bytes of the chain's text before it */
  int tokens;          /* DELTA: tokens since the last delta (some make no text) */
} coord_event_t;

/* A front end's callbacks (submit.c for our RPC, http.c for HTTP), given
 * per request with its handle r->client. */
typedef struct coord_request_cbs {
  /* An event of r. */
  void (*event)(coord_request_t *r, const coord_event_t *ev);
  /* r is over: st OK after FINAL, else why it failed or was cancelled.
   * Exactly once per request; r->client is not used again after it. */
  void (*end)(coord_request_t *r, sa_status_t st, const char *msg);
  /* Another client took r over (coord_request_attach): r->client is not
   * used again; the front end ends that client's stream. May be NULL. */
  void (*detach)(coord_request_t *r);
} coord_request_cbs_t;

/* Counters since start (for metrics); written by request.c only. */
typedef struct {
  int64_t ended[3]; /* ok, failed, cancelled by the client */
  int64_t generated_tokens, prompt_tokens, audio_tokens;
  int64_t failovers, chains_cancelled, tokens_saved;
  coord_hist_t ttft;   /* accepted -> first token */
  coord_hist_t itl;    /* between two tokens of a chain */
  coord_hist_t e2e;    /* accepted -> ended OK */
  coord_hist_t encode; /* audio sent to an encoder -> rows back */
  coord_hist_t queue;  /* prompt built -> admitted to a replica */
} coord_request_stats_t;

/* Recorded happenings, applied by the next pass. */
typedef struct coord_record coord_record_t;

typedef struct coord_requests {
  const coord_opts_t *opts;
  const coord_model_t *model;
  const sa_tokenizer_t *tok;
  coord_registry_t *reg;
  const coord_pipeline_ops_t *pl_ops;
  void *pl;
  coord_request_t *head, *tail; /* oldest first */
  int n;      /* request objects, ended ones kept for a resume included */
  int n_live; /* of them not ended: what --max-requests bounds */
  size_t audio_held; /* audio bytes of requests, received and not yet encoded */
  uint64_t next_id, next_seq_id;
  int64_t requests_total;
  coord_request_stats_t stats;
  coord_record_t *rec_head, *rec_tail;
  bool dirty;
  bool stopping;
  coord_plan_t plan; /* scratch of the planner's output */
  coord_wal_t *wal;  /* the journal (--state), or NULL */
  int keep_ms;       /* how long an ended request nobody took is kept */
  bool replaying;    /* rebuilding from the journal: no stats, no journal */
  int64_t wal_errors; /* journal writes that failed (sa_journal_errors_total) */
} coord_requests_t;

/* Initialises set (caller-allocated). Everything given is borrowed for the
 * set's life. pl_ops/pl: the pipeline to call. */
void coord_requests_init(coord_requests_t *set, const coord_opts_t *opts,
                         const coord_model_t *model, const sa_tokenizer_t *tok,
                         coord_registry_t *reg, const coord_pipeline_ops_t *pl_ops, void *pl);

/* Frees every request and record without any event (after shutdown, once
 * the loop is done). */
void coord_requests_close(coord_requests_t *set);

/* Accepts a request with validated parameters p (copied); its events go to
 * cbs (borrowed, static) with client, the caller's handle, in r->client.
 * Returns the request (owned by the set; valid until its end event) or
 * NULL with err filled (out of memory). It starts at the next pass. */
coord_request_t *coord_request_new(coord_requests_t *set, const coord_request_params_t *p,
                                   const coord_request_cbs_t *cbs, void *client, char *err,
                                   size_t cap);

/* Asks to cancel r (the client went away or asked); applied by the next
 * pass, which ends r with CANCELLED unless it ended already. Safe from any
 * callback. */
void coord_request_cancel(coord_requests_t *set, coord_request_t *r);

/* Asks to move every request running on replica ri to other replicas
 * (a drain with --migrate): applied by the next pass, as a lost replica's
 * requests are (re-prefill, the same tokens; their KV on ri is freed). */
void coord_requests_migrate(coord_requests_t *set, int ri);

/* The request with this id that has not ended, or NULL. */
coord_request_t *coord_requests_find(const coord_requests_t *set, const char *request_id);

/* The request with this id, running or ended and kept, or NULL. */
coord_request_t *coord_requests_find_any(const coord_requests_t *set, const char *request_id);

/* Gives running request r to another client: the old front end's detach
 * callback runs first (if r had one); then r's events go to cbs/client.
 * 0, SA_EINVAL (r ended) or SA_ESTATE (its front end cannot detach). */
int coord_request_attach(coord_requests_t *set, coord_request_t *r,
                          const coord_request_cbs_t *cbs, void *client);

/* Journals every request from now on (w borrowed; keep_ms: how long an
 * ended request whose result no client took stays for a resume), after
 * rebuilding the requests the journal holds: unfinished ones resume
 * (re-encoded if their prompt was not built, else re-prefilled with the
 * tokens they had; the same RNG keys, so the same tokens follow); ended
 * ones are kept keep_ms for a resume. Then the journal is rewritten with
 * only them. Call once, before serving. Returns 0 or SA_EIO; *resumed and
 * *kept (may be NULL) count what was rebuilt. */
int coord_requests_recover(coord_requests_t *set, coord_wal_t *w, int keep_ms, int *resumed,
                           int *kept, char *err, size_t cap);

/* Fails every request with UNAVAILABLE at the next pass and stops
 * scheduling. */
void coord_requests_shutdown(coord_requests_t *set);

/* Marks the set for a pass (the periodic tick: suspect replicas expire). */
void coord_requests_touch(coord_requests_t *set);

/* The pass: see the top of this file. Call it once per loop turn (cheap
 * when nothing was recorded). Returns true if it had work (it may then have
 * sent calls: see main.c for why the loop must not sleep right after). */
bool coord_requests_process(coord_requests_t *set);

/* The vote of r as it stands: the winning chain (NULL if none) and its
 * votes; the leading normalised answer ("" if none) in *leader. */
const coord_chain_t *coord_request_vote(const coord_request_t *r, int *votes,
                                        const char **leader);

/* Where recorded events come in: the pipeline's and the registry's
 * callback tables, with the set as user. */
extern const coord_pipeline_cbs_t coord_requests_pipeline_cbs;
extern const coord_registry_cbs_t coord_requests_registry_cbs;

#endif /* SA_COORD_REQUEST_H */
