/* journal — the write-ahead log; see journal.h. */
#include "journal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "log.h"
#include "sa_error.h"

#define MAGIC "SAJRNL1\n"
#define MAGIC_LEN 8
#define REC_HDR 9 /* u32 len, u32 crc, u8 type */

struct sa_journal {
  char path[4096], tmp_path[4096], dir[4096];
  int fd;        /* the journal (or, while compacting, journal.new) */
  int old_fd;    /* while compacting: the journal being replaced */
  uint64_t size; /* committed bytes of fd's file */
  uint8_t *buf;  /* appended, not yet committed */
  size_t len, cap;
};

static void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}
static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t rec_crc(uint8_t type, const void *payload, size_t len) {
  uLong c = crc32(0L, Z_NULL, 0);
  c = crc32(c, &type, 1);
  if (len)
    c = crc32(c, payload, (uInt)len);
  return (uint32_t)c;
}

static int write_all(int fd, const void *p, size_t n, uint64_t off) {
  const uint8_t *b = p;
  while (n > 0) {
    ssize_t w = pwrite(fd, b, n, (off_t)off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    b += w, n -= (size_t)w, off += (uint64_t)w;
  }
  return 0;
}

static int sync_dir(const char *dir) {
  int d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0)
    return -1;
  int rc = fsync(d);
  close(d);
  return rc;
}

/* A fresh file: the header, synced, and the folder entry synced. */
static int write_header(int fd, const char *dir) {
  if (write_all(fd, MAGIC, MAGIC_LEN, 0) || fdatasync(fd) || sync_dir(dir))
    return -1;
  return 0;
}

int sa_journal_open(const char *dir, sa_journal_t **out, char *err, size_t cap) {
  *out = NULL;
  if (mkdir(dir, 0700) && errno != EEXIST) {
    sa_set_err(err, cap, "state folder %s: %s", dir, strerror(errno));
    return SA_EIO;
  }
  sa_journal_t *j = calloc(1, sizeof *j);
  if (!j)
    return SA_ENOMEM;
  j->old_fd = -1;
  snprintf(j->dir, sizeof j->dir, "%s", dir);
  snprintf(j->path, sizeof j->path, "%s/journal", dir);
  snprintf(j->tmp_path, sizeof j->tmp_path, "%s/journal.new", dir);
  unlink(j->tmp_path); /* a compaction that did not finish */
  j->fd = open(j->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  struct stat st;
  if (j->fd < 0 || fstat(j->fd, &st)) {
    sa_set_err(err, cap, "%s: %s", j->path, strerror(errno));
    sa_journal_close(&j);
    return SA_EIO;
  }
  char head[MAGIC_LEN] = {0};
  ssize_t got = st.st_size ? pread(j->fd, head, MAGIC_LEN, 0) : 0;
  bool prefix = got >= 0 && memcmp(head, MAGIC, (size_t)got) == 0;
  if (st.st_size < MAGIC_LEN && prefix) { /* new, or a crash while writing the header */
    if (ftruncate(j->fd, 0) || write_header(j->fd, j->dir)) {
      sa_set_err(err, cap, "%s: %s", j->path, strerror(errno));
      sa_journal_close(&j);
      return SA_EIO;
    }
    st.st_size = MAGIC_LEN;
  } else if (got != MAGIC_LEN || memcmp(head, MAGIC, MAGIC_LEN) != 0) {
    sa_set_err(err, cap, "%s is not an sa-cluster journal (left untouched)", j->path);
    close(j->fd);
    j->fd = -1;
    sa_journal_close(&j);
    return SA_EFORMAT;
  }
  j->size = (uint64_t)st.st_size;
  *out = j;
  return 0;
}

int sa_journal_replay(sa_journal_t *j, sa_journal_record_cb cb, void *user,
                      sa_journal_replay_t *st) {
  sa_journal_replay_t s = {0};
  uint64_t off = MAGIC_LEN, end = j->size;
  uint8_t hdr[REC_HDR];
  uint8_t *pay = NULL;
  size_t pcap = 0;
  int rc = 0;
  const char *why = NULL;
  while (off < end) {
    if (end - off < REC_HDR || pread(j->fd, hdr, REC_HDR, (off_t)off) != REC_HDR) {
      why = "a record header cut short";
      break;
    }
    uint32_t len = get32(hdr), crc = get32(hdr + 4);
    uint8_t type = hdr[8];
    if (len < 1 || len > SA_JOURNAL_MAX_RECORD || type == 0) {
      why = "an impossible record length or type";
      break;
    }
    size_t plen = len - 1;
    if (end - off - REC_HDR < plen) {
      why = "a record cut short";
      break;
    }
    if (plen > pcap) {
      uint8_t *np = realloc(pay, plen);
      if (!np) {
        rc = SA_ENOMEM;
        break;
      }
      pay = np;
      pcap = plen;
    }
    if (plen && pread(j->fd, pay, plen, (off_t)(off + REC_HDR)) != (ssize_t)plen) {
      why = "a record that cannot be read";
      break;
    }
    if (rec_crc(type, pay, plen) != crc) {
      why = "a record whose checksum does not match";
      break;
    }
    s.records++;
    off += REC_HDR + plen;
    if (cb && (rc = cb(user, type, pay, plen)) != 0)
      break;
  }
  free(pay);
  if (why && rc == 0) {
    s.dropped_bytes = end - off;
    SA_LOG_WARN("journal %s: %s at byte %llu; the last %llu bytes are dropped (%llu records "
                "before it kept)",
                j->path, why, (unsigned long long)off, (unsigned long long)s.dropped_bytes,
                (unsigned long long)s.records);
    if (ftruncate(j->fd, (off_t)off) || fdatasync(j->fd)) {
      SA_LOG_ERROR("journal %s: cannot cut the tail: %s", j->path, strerror(errno));
      rc = SA_EIO;
    }
    j->size = off;
  }
  s.bytes = j->size;
  if (st)
    *st = s;
  return rc;
}

int sa_journal_append(sa_journal_t *j, uint8_t type, const void *payload, size_t len) {
  if (!j || type == 0 || len + 1 > SA_JOURNAL_MAX_RECORD || (len && !payload))
    return SA_EINVAL;
  size_t need = j->len + REC_HDR + len;
  if (need > j->cap) {
    size_t c = j->cap ? j->cap : 4096;
    while (c < need)
      c *= 2;
    uint8_t *nb = realloc(j->buf, c);
    if (!nb)
      return SA_ENOMEM;
    j->buf = nb;
    j->cap = c;
  }
  uint8_t *p = j->buf + j->len;
  put32(p, (uint32_t)(len + 1));
  put32(p + 4, rec_crc(type, payload, len));
  p[8] = type;
  if (len)
    memcpy(p + REC_HDR, payload, len);
  j->len = need;
  return 0;
}

int sa_journal_commit(sa_journal_t *j) {
  if (!j || j->len == 0)
    return 0;
  if (write_all(j->fd, j->buf, j->len, j->size) || fdatasync(j->fd)) {
    SA_LOG_ERROR("journal %s: commit of %zu bytes failed: %s", j->path, j->len,
                 strerror(errno));
    return SA_EIO;
  }
  j->size += j->len;
  j->len = 0;
  return 0;
}

uint64_t sa_journal_size(const sa_journal_t *j) { return j ? j->size : 0; }

int sa_journal_compact_begin(sa_journal_t *j) {
  if (j->old_fd >= 0)
    return SA_EINVAL;
  int rc = sa_journal_commit(j);
  if (rc)
    return rc;
  int fd = open(j->tmp_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || write_all(fd, MAGIC, MAGIC_LEN, 0)) {
    SA_LOG_ERROR("journal %s: %s", j->tmp_path, strerror(errno));
    if (fd >= 0)
      close(fd);
    return SA_EIO;
  }
  j->old_fd = j->fd;
  j->fd = fd;
  j->size = MAGIC_LEN;
  return 0;
}

int sa_journal_compact_end(sa_journal_t *j) {
  if (j->old_fd < 0)
    return SA_EINVAL;
  int rc = sa_journal_commit(j); /* also syncs the new file */
  if (rc == 0 && (rename(j->tmp_path, j->path) || sync_dir(j->dir))) {
    SA_LOG_ERROR("journal %s: %s", j->path, strerror(errno));
    rc = SA_EIO;
  }
  if (rc) { /* the old journal stays */
    close(j->fd);
    unlink(j->tmp_path);
    j->fd = j->old_fd;
    j->old_fd = -1;
    struct stat st;
    j->size = fstat(j->fd, &st) == 0 ? (uint64_t)st.st_size : j->size;
    j->len = 0;
    return rc;
  }
  close(j->old_fd);
  j->old_fd = -1;
  return 0;
}

void sa_journal_close(sa_journal_t **pj) {
  if (!pj || !*pj)
    return;
  sa_journal_t *j = *pj;
  *pj = NULL;
  if (j->fd >= 0) {
    if (j->old_fd < 0)
      sa_journal_commit(j);
    close(j->fd);
  }
  if (j->old_fd >= 0) { /* a compaction left unfinished: the old journal holds */
    close(j->old_fd);
    unlink(j->tmp_path);
  }
  free(j->buf);
  free(j);
}
