/*
 * journal — an append-only, checksummed write-ahead log in a folder, with
 * group commit, compaction and torn-tail recovery (the coordinator's memory
 * across a crash, issue #16).
 *
 * File DIR/journal: an 8-byte header "SAJRNL1\n", then records
 *
 *   u32 len (little-endian)   bytes of type + payload
 *   u32 crc32                 zlib's CRC-32 of those bytes
 *   u8  type                  the owner's (1..255)
 *   payload                   len - 1 bytes
 *
 * A record is durable once sa_journal_commit returned 0 after it was
 * appended: appends go to a buffer, commit writes the buffer and
 * fdatasyncs once for all of them (group commit: one sync per loop pass, not
 * per record). Replay reads records in order and stops at the first that is
 * short, over the size limit, or fails its checksum — a crash mid-write
 * leaves exactly such a torn tail — and truncates the file there, so the
 * next append follows the last good record. Compaction writes the records
 * the owner still needs to DIR/journal.new, syncs it, renames it over the
 * journal and syncs the folder: either file is complete at any instant.
 *
 * Threads: one owner thread; blocking file I/O (the coordinator commits once
 * per pass).
 */
#ifndef SA_JOURNAL_H
#define SA_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#define SA_JOURNAL_MAX_RECORD (256u << 20) /* type + payload */

typedef struct sa_journal sa_journal_t;

/* Opens (creating it and the folder if needed) DIR/journal. A file that is
 * not a journal is refused (SA_EFORMAT), never overwritten. 0, SA_EIO,
 * SA_EFORMAT, SA_ENOMEM; err says which file and why. */
int sa_journal_open(const char *dir, sa_journal_t **out, char *err, size_t cap);

/* Called for each good record in order; payload valid during the call.
 * Returning nonzero stops the replay (that value is returned). */
typedef int (*sa_journal_record_cb)(void *user, uint8_t type, const void *payload, size_t len);

typedef struct {
  uint64_t records;       /* good records read */
  uint64_t bytes;         /* of the file kept */
  uint64_t dropped_bytes; /* of a torn or corrupt tail, cut off */
} sa_journal_replay_t;

/* Reads every record from the start (before any append). A torn or corrupt
 * tail is cut off (logged with its offset and size; counted in *st).
 * 0, the callback's nonzero value, or SA_EIO. */
int sa_journal_replay(sa_journal_t *j, sa_journal_record_cb cb, void *user,
                      sa_journal_replay_t *st);

/* Buffers one record (type 1..255, len <= SA_JOURNAL_MAX_RECORD - 1).
 * 0, SA_EINVAL, SA_ENOMEM. Not durable until sa_journal_commit. */
int sa_journal_append(sa_journal_t *j, uint8_t type, const void *payload, size_t len);

/* Writes what was appended and syncs it (nothing to do: 0 at once).
 * 0 or SA_EIO (logged; the records stay buffered for the next try). */
int sa_journal_commit(sa_journal_t *j);

/* Bytes in the journal file (committed). */
uint64_t sa_journal_size(const sa_journal_t *j);

/* Compaction: begin, append the records still needed with
 * sa_journal_append, then end: they replace the whole journal atomically.
 * Records appended but not committed before begin are committed first.
 * 0 or SA_EIO (the old journal stays). */
int sa_journal_compact_begin(sa_journal_t *j);
int sa_journal_compact_end(sa_journal_t *j);

/* Commits what is pending and closes; sets *j NULL. */
void sa_journal_close(sa_journal_t **j);

#endif /* SA_JOURNAL_H */
