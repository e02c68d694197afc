/*
 * wal — the coordinator's journal of requests (--state DIR): what it alone
 * knows, so that a coordinator started after a crash resumes every request
 * (issue #16). Records are protobuf messages (sa.proto's Journal*) framed,
 * checksummed and group-committed by core/journal:
 *
 *   ACCEPT   a request was accepted: its parameters, its audio while not
 *            encoded
 *   PROMPT   its prompt was built: token ids, audio positions and rows
 *   TOKENS   tokens sampled for one chain (n_before: tokens it had before)
 *   END      it ended: status and message
 *
 * Encoding reads a request (request.c, the writer of requests, calls these
 * and never the other way round); replay decodes each record and hands it
 * to request.c's callbacks. A record whose checksum holds but that does not
 * decode (a journal of a newer version) is skipped with a warning.
 *
 * Loop thread only; the file I/O blocks (one sync per loop pass).
 */
#ifndef SA_COORD_WAL_H
#define SA_COORD_WAL_H

#include <stdbool.h>
#include <stdint.h>

#include "coord.h"
#include "journal.h"
#include "sa_error.h"

typedef struct coord_wal coord_wal_t;

/* Opens DIR/journal (creating DIR). 0 or an SA_E* code with err filled. */
int coord_wal_open(const char *dir, coord_wal_t **out, char *err, size_t cap);
void coord_wal_close(coord_wal_t **w);

/* What replay hands up, in journal order. Pointers valid for the call. */
typedef struct {
  /* p's strings and audio are borrowed; p->request_id/owner are set. */
  void (*accept)(void *user, uint64_t uid, const coord_request_params_t *p);
  /* rows: n_rows x hidden fp32, little-endian, not aligned (copy them) */
  void (*prompt)(void *user, uint64_t uid, const int32_t *ids, int n_ids,
                 const int32_t *audio_pos, const void *rows, int n_rows, int hidden);
  void (*tokens)(void *user, uint64_t uid, int chain, int n_before, const int32_t *tokens,
                 int n);
  void (*end)(void *user, uint64_t uid, sa_status_t st, const char *msg);
} coord_wal_replay_cbs_t;

/* Reads the journal (before any append). A torn tail is cut off and
 * counted in *st. 0 or SA_EIO. */
int coord_wal_replay(coord_wal_t *w, const coord_wal_replay_cbs_t *cbs, void *user,
                     sa_journal_replay_t *st);

/* Appends (buffered until coord_wal_commit). 0 or SA_ENOMEM / SA_EINVAL. */
int coord_wal_accept(coord_wal_t *w, const coord_request_t *r);
int coord_wal_prompt(coord_wal_t *w, const coord_request_t *r);
int coord_wal_tokens(coord_wal_t *w, uint64_t uid, int chain, int n_before,
                     const int32_t *tokens, int n);
int coord_wal_end(coord_wal_t *w, uint64_t uid, sa_status_t st, const char *msg);

/* Makes what was appended durable (one write and one fdatasync). */
int coord_wal_commit(coord_wal_t *w);

/* True when the journal has grown to twice its size after the last
 * compaction (and past a floor): time to rewrite it from what is live. */
bool coord_wal_wants_compaction(const coord_wal_t *w);

/* Compaction: begin, append the records of every request still kept, end. */
int coord_wal_compact_begin(coord_wal_t *w);
int coord_wal_compact_end(coord_wal_t *w);

uint64_t coord_wal_size(const coord_wal_t *w);

#endif /* SA_COORD_WAL_H */
