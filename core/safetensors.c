/*
 * safetensors — see safetensors.h.
 *
 * Layout of one file: 8-byte little-endian header length N, N bytes of JSON
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
 * {...}}, then the data; offsets are relative to the data start (8 + N).
 * Every header is parsed with cJSON from a NUL-terminated private copy, so a
 * malformed header can never make the parser read past the mapping. Tensor
 * names are kept in one array sorted by name; lookups are binary searches.
 * This module does not convert dtypes, verify alignment beyond what the file
 * gives, or read data bytes (the mapping is touched lazily by the caller).
 */
#include "safetensors.h"

#include "log.h"
#include "sa_error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"
/* An index.json is a small name -> file map; anything bigger is not one. */
#define ST_MAX_INDEX ((size_t)256 << 20)
/* Largest integer a JSON number (a double) holds exactly: 2^53. */
#define ST_MAX_JSON_INT 9007199254740992.0

typedef struct {
  char *path;  /* owned */
  void *map;   /* owned mapping, NULL for a caller's buffer */
  size_t len;
} st_file_t;

struct sa_st {
  st_file_t *files;
  size_t nfiles, files_cap;
  sa_st_tensor_t *tensors; /* sorted by name after open; names owned */
  size_t n, cap;
  bool borrowed_buffer; /* made by sa_st_parse_buffer: files[0].map unused */
  char *origin;         /* the path given to sa_st_open, or the label */
};

/* One weight_map entry of an index: tensor name -> shard number. */
typedef struct {
  char *name;
  size_t shard;
  bool wanted, found;
} st_entry_t;

/* safetensors spells dtypes in upper case; only these are accepted in files
 * (BOOL, F8_*, U16, I16, U32, U64 have no sa_dtype_t and are "unknown"). */
static int st_dtype_from_name(const char *s, sa_dtype_t *out) {
  static const struct {
    const char *name;
    sa_dtype_t dt;
  } k[] = {{"F32", SA_DTYPE_F32}, {"F16", SA_DTYPE_F16},
           {"BF16", SA_DTYPE_BF16}, {"I32", SA_DTYPE_I32},
           {"I64", SA_DTYPE_I64}, {"U8", SA_DTYPE_U8},
           {"I8", SA_DTYPE_I8},   {"F64", SA_DTYPE_F64}};
  for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
    if (strcmp(s, k[i].name) == 0) {
      *out = k[i].dt;
      return 0;
    }
  }
  return SA_EINVAL;
}

static const char *st_dtype_to_name(sa_dtype_t dt) {
  switch (dt) {
  case SA_DTYPE_F32: return "F32";
  case SA_DTYPE_F16: return "F16";
  case SA_DTYPE_BF16: return "BF16";
  case SA_DTYPE_I32: return "I32";
  case SA_DTYPE_I64: return "I64";
  case SA_DTYPE_U8: return "U8";
  case SA_DTYPE_I8: return "I8";
  case SA_DTYPE_F64: return "F64";
  default: return NULL;
  }
}

/* A JSON number that is a non-negative integer exactly representable. */
static bool st_json_uint(const cJSON *j, uint64_t *out) {
  if (!cJSON_IsNumber(j))
    return false;
  double d = j->valuedouble;
  if (!isfinite(d) || d < 0 || d > ST_MAX_JSON_INT || d != floor(d))
    return false;
  *out = (uint64_t)d;
  return true;
}

static int st_name_cmp(const void *a, const void *b) {
  return strcmp(((const sa_st_tensor_t *)a)->name,
                ((const sa_st_tensor_t *)b)->name);
}

static int st_entry_cmp(const void *a, const void *b) {
  return strcmp(((const st_entry_t *)a)->name, ((const st_entry_t *)b)->name);
}

static int st_entry_key_cmp(const void *key, const void *e) {
  return strcmp((const char *)key, ((const st_entry_t *)e)->name);
}

static int st_push_tensor(sa_st_t *st, const sa_st_tensor_t *t) {
  if (st->n == st->cap) {
    size_t cap = st->cap ? st->cap * 2 : 64;
    sa_st_tensor_t *p = realloc(st->tensors, cap * sizeof *p);
    if (!p)
      return SA_ENOMEM;
    st->tensors = p;
    st->cap = cap;
  }
  st->tensors[st->n++] = *t;
  return 0;
}

static int st_push_file(sa_st_t *st, const char *path, void *map, size_t len) {
  if (st->nfiles == st->files_cap) {
    size_t cap = st->files_cap ? st->files_cap * 2 : 4;
    st_file_t *p = realloc(st->files, cap * sizeof *p);
    if (!p)
      return SA_ENOMEM;
    st->files = p;
    st->files_cap = cap;
  }
  char *copy = strdup(path);
  if (!copy)
    return SA_ENOMEM;
  st->files[st->nfiles++] = (st_file_t){.path = copy, .map = map, .len = len};
  return 0;
}

void sa_st_close(sa_st_t **pst) {
  if (!pst || !*pst)
    return;
  sa_st_t *st = *pst;
  for (size_t i = 0; i < st->n; i++)
    free((char *)st->tensors[i].name);
  free(st->tensors);
  for (size_t i = 0; i < st->nfiles; i++) {
    if (st->files[i].map && !st->borrowed_buffer)
      munmap(st->files[i].map, st->files[i].len);
    free(st->files[i].path);
  }
  free(st->files);
  free(st->origin);
  free(st);
  *pst = NULL;
}

/* Decides whether tensor `name` of the file being parsed is indexed. */
typedef struct {
  sa_st_filter_fn filter;
  void *filter_arg;
  st_entry_t *entries; /* index entries sorted by name, or NULL (no index) */
  size_t nentries;
  size_t shard; /* shard number of the file being parsed */
} st_want_t;

static bool st_wanted(const st_want_t *w, const char *name) {
  if (w->entries) {
    st_entry_t *e = bsearch(name, w->entries, w->nentries, sizeof *e,
                            st_entry_key_cmp);
    /* The index decides which file holds a name; a copy elsewhere is not
     * the one HF would load. */
    if (!e || e->shard != w->shard || !e->wanted)
      return false;
    e->found = true;
    return true;
  }
  return !w->filter || w->filter(name, w->filter_arg);
}

typedef struct {
  uint64_t begin, end;
  const char *name; /* borrowed from the cJSON tree */
} st_span_t;

static int st_span_cmp(const void *a, const void *b) {
  const st_span_t *x = a, *y = b;
  if (x->begin != y->begin)
    return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

/* Parses one file's bytes (buf, len), validates every header entry and
 * appends the wanted tensors to st; `file` is the label stored in st. */
static int st_parse_file(sa_st_t *st, const uint8_t *buf, size_t len,
                         const char *file, const st_want_t *want, char *err,
                         size_t cap) {
  int rc = SA_EFORMAT;
  char *hdr = NULL;
  cJSON *root = NULL;
  st_span_t *spans = NULL;
  size_t first_new = st->n;

  if (len < 8) {
    sa_set_err(err, cap, "%s: truncated: %zu bytes, need at least 8 for the "
                     "header length", file, len);
    goto fail;
  }
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--)
    hlen = (hlen << 8) | buf[i];
  if (hlen > SA_ST_MAX_HEADER) {
    sa_set_err(err, cap, "%s: header length %llu is larger than the %zu-byte "
                     "limit (not a safetensors file?)",
           file, (unsigned long long)hlen, SA_ST_MAX_HEADER);
    goto fail;
  }
  if (hlen > len - 8) {
    sa_set_err(err, cap, "%s: header length %llu runs past the end of the file "
                     "(%zu bytes; truncated?)",
           file, (unsigned long long)hlen, len);
    goto fail;
  }
  if (hlen < 2) {
    sa_set_err(err, cap, "%s: header of %llu bytes is not a JSON object", file,
           (unsigned long long)hlen);
    goto fail;
  }
  /* Private NUL-terminated copy: cJSON never sees the mapping's end. */
  hdr = malloc((size_t)hlen + 1);
  if (!hdr) {
    rc = SA_ENOMEM;
    sa_set_err(err, cap, "%s: out of memory for a %llu-byte header", file,
           (unsigned long long)hlen);
    goto fail;
  }
  memcpy(hdr, buf + 8, (size_t)hlen);
  hdr[hlen] = '\0';
  const char *end = NULL;
  root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen + 1, &end, false);
  if (!root || !cJSON_IsObject(root)) {
    size_t at = end && end >= hdr ? (size_t)(end - hdr) : 0;
    if (!root) {
      const char *ep = cJSON_GetErrorPtr();
      if (ep && ep >= hdr && ep <= hdr + hlen)
        at = (size_t)(ep - hdr);
    }
    sa_set_err(err, cap, "%s: header is not a JSON object (parse stopped at "
                     "byte %zu of %llu)", file, at, (unsigned long long)hlen);
    goto fail;
  }
  /* Only whitespace may follow the object (HF pads with spaces). */
  for (const char *p = end; p && p < hdr + hlen; p++) {
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      sa_set_err(err, cap, "%s: garbage after the header JSON at byte %zu", file,
             (size_t)(p - hdr));
      goto fail;
    }
  }

  const size_t data_len = len - 8 - (size_t)hlen;
  const uint8_t *data = buf + 8 + hlen;
  size_t nent = 0;
  for (cJSON *e = root->child; e; e = e->next)
    nent++;
  spans = malloc((nent ? nent : 1) * sizeof *spans);
  if (!spans) {
    rc = SA_ENOMEM;
    sa_set_err(err, cap, "%s: out of memory", file);
    goto fail;
  }
  size_t nspans = 0;

  for (cJSON *e = root->child; e; e = e->next) {
    const char *name = e->string ? e->string : "";
    if (strcmp(name, "__metadata__") == 0) {
      if (!cJSON_IsObject(e)) {
        sa_set_err(err, cap, "%s: __metadata__ is not an object", file);
        goto fail;
      }
      continue;
    }
    if (name[0] == '\0') {
      sa_set_err(err, cap, "%s: a tensor has an empty name", file);
      goto fail;
    }
    if (!cJSON_IsObject(e)) {
      sa_set_err(err, cap, "%s: tensor '%s': entry is not an object", file, name);
      goto fail;
    }
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    sa_tensor_desc_t d = {0};
    if (!cJSON_IsString(jd)) {
      sa_set_err(err, cap, "%s: tensor '%s': missing or non-string \"dtype\"",
             file, name);
      goto fail;
    }
    if (st_dtype_from_name(jd->valuestring, &d.dtype) != 0) {
      sa_set_err(err, cap, "%s: tensor '%s': unknown dtype \"%.32s\"", file, name,
             jd->valuestring);
      goto fail;
    }
    if (!cJSON_IsArray(js)) {
      sa_set_err(err, cap, "%s: tensor '%s': missing or non-array \"shape\"",
             file, name);
      goto fail;
    }
    int nd = cJSON_GetArraySize(js);
    if (nd > SA_TENSOR_MAX_DIMS) {
      sa_set_err(err, cap, "%s: tensor '%s': %d dimensions, at most %d supported",
             file, name, nd, SA_TENSOR_MAX_DIMS);
      goto fail;
    }
    d.ndim = nd;
    int k = 0;
    for (const cJSON *x = js->child; x; x = x->next, k++) {
      uint64_t v;
      if (!st_json_uint(x, &v) || v > (uint64_t)INT64_MAX) {
        sa_set_err(err, cap, "%s: tensor '%s': shape[%d] is not a non-negative "
                         "integer", file, name, k);
        goto fail;
      }
      d.shape[k] = (int64_t)v;
    }
    size_t nbytes;
    if (sa_tensor_desc_nbytes(&d, &nbytes) != 0) {
      sa_set_err(err, cap, "%s: tensor '%s': shape overflows the address space",
             file, name);
      goto fail;
    }
    uint64_t b, en;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 ||
        !st_json_uint(jo->child, &b) || !st_json_uint(jo->child->next, &en)) {
      sa_set_err(err, cap, "%s: tensor '%s': \"data_offsets\" must be [begin, "
                       "end] with non-negative integers", file, name);
      goto fail;
    }
    if (en < b) {
      sa_set_err(err, cap, "%s: tensor '%s': data_offsets end %llu < begin %llu",
             file, name, (unsigned long long)en, (unsigned long long)b);
      goto fail;
    }
    if (en > data_len) {
      sa_set_err(err, cap, "%s: tensor '%s': data_offsets [%llu, %llu] out of "
                       "range: the data section has %zu bytes (truncated?)",
             file, name, (unsigned long long)b, (unsigned long long)en,
             data_len);
      goto fail;
    }
    if (en - b != nbytes) {
      char ds[96];
      sa_set_err(err, cap, "%s: tensor '%s': %llu data bytes but %s needs %zu",
             file, name, (unsigned long long)(en - b),
             sa_tensor_desc_str(&d, ds, sizeof ds), nbytes);
      goto fail;
    }
    spans[nspans++] = (st_span_t){.begin = b, .end = en, .name = name};
    if (!st_wanted(want, name))
      continue;
    char *nm = strdup(name);
    if (!nm) {
      rc = SA_ENOMEM;
      sa_set_err(err, cap, "%s: out of memory", file);
      goto fail;
    }
    sa_st_tensor_t t = {.name = nm, .desc = d, .data = data + b,
                        .nbytes = nbytes, .file = file};
    if (st_push_tensor(st, &t) != 0) {
      free(nm);
      rc = SA_ENOMEM;
      sa_set_err(err, cap, "%s: out of memory", file);
      goto fail;
    }
  }

  /* No two tensors may share bytes (zero-size tensors share none). */
  qsort(spans, nspans, sizeof *spans, st_span_cmp);
  const st_span_t *p = NULL; /* the non-empty span reaching furthest so far */
  for (size_t i = 0; i < nspans; i++) {
    const st_span_t *q = &spans[i];
    if (q->end == q->begin)
      continue;
    if (p && q->begin < p->end) {
      sa_set_err(err, cap, "%s: tensor '%s': data_offsets [%llu, %llu] overlap "
                       "tensor '%s' [%llu, %llu]",
             file, q->name, (unsigned long long)q->begin,
             (unsigned long long)q->end, p->name, (unsigned long long)p->begin,
             (unsigned long long)p->end);
      goto fail;
    }
    if (!p || q->end > p->end)
      p = q;
  }
  rc = 0;

fail:
  if (rc != 0) {
    /* Undo this file's tensors; earlier files stay for the caller to free. */
    for (size_t i = first_new; i < st->n; i++)
      free((char *)st->tensors[i].name);
    st->n = first_new;
  }
  free(spans);
  cJSON_Delete(root);
  free(hdr);
  return rc;
}

/* Sorts the table and rejects duplicate names (same file or two shards). */
static int st_finish(sa_st_t *st, char *err, size_t cap) {
  if (st->n > 1)
    qsort(st->tensors, st->n, sizeof *st->tensors, st_name_cmp);
  for (size_t i = 1; i < st->n; i++) {
    if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0) {
      const sa_st_tensor_t *a = &st->tensors[i - 1], *b = &st->tensors[i];
      if (a->file == b->file)
        sa_set_err(err, cap, "%s: tensor '%s': listed twice in the header",
               a->file, a->name);
      else
        sa_set_err(err, cap, "tensor '%s': present in both %s and %s", a->name,
               a->file, b->file);
      return SA_EFORMAT;
    }
  }
  return 0;
}

int sa_st_parse_buffer(const void *buf, size_t len, const char *file_label,
                       sa_st_t **out, char *err, size_t err_cap) {
  *out = NULL;
  if (!buf && len)
    return SA_EINVAL;
  sa_st_t *st = calloc(1, sizeof *st);
  if (!st)
    return SA_ENOMEM;
  st->borrowed_buffer = true;
  int rc = st_push_file(st, file_label ? file_label : "<buffer>", NULL, 0);
  if (rc == 0 && !(st->origin = strdup(st->files[0].path)))
    rc = SA_ENOMEM;
  if (rc != 0)
    goto fail;
  st_want_t want = {0};
  rc = st_parse_file(st, buf, len, st->files[0].path, &want, err, err_cap);
  if (rc != 0)
    goto fail;
  rc = st_finish(st, err, err_cap);
  if (rc != 0)
    goto fail;
  *out = st;
  return 0;
fail:
  sa_st_close(&st);
  return rc;
}

/* Maps `path` read-only. A zero-length file gets no mapping (map NULL). */
static int st_map(const char *path, void **map, size_t *len, char *err,
                  size_t cap) {
  *map = NULL;
  *len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    sa_set_err(err, cap, "%s: cannot open: %s", path, strerror(e));
    return e == ENOENT || e == ENOTDIR ? SA_ENOENT : SA_EIO;
  }
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    sa_set_err(err, cap, "%s: not a regular file", path);
    close(fd);
    return SA_EIO;
  }
  if (sb.st_size > 0) {
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      sa_set_err(err, cap, "%s: mmap of %lld bytes failed: %s", path,
             (long long)sb.st_size, strerror(errno));
      close(fd);
      return SA_EIO;
    }
    *map = p;
    *len = (size_t)sb.st_size;
  }
  close(fd);
  return 0;
}

/* Maps one file, appends it to st and parses it. */
static int st_add_file(sa_st_t *st, const char *path, const st_want_t *want,
                       char *err, size_t cap) {
  void *map;
  size_t len;
  int rc = st_map(path, &map, &len, err, cap);
  if (rc != 0)
    return rc;
  rc = st_push_file(st, path, map, len);
  if (rc != 0) {
    if (map)
      munmap(map, len);
    sa_set_err(err, cap, "%s: out of memory", path);
    return rc;
  }
  static const uint8_t empty[1];
  const st_file_t *f = &st->files[st->nfiles - 1];
  return st_parse_file(st, f->map ? f->map : empty, f->len, f->path, want,
                       err, cap);
}

/* Reads a whole small file into a NUL-terminated heap buffer. */
static int st_slurp(const char *path, size_t max, char **out, size_t *outlen,
                    char *err, size_t cap) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    int e = errno;
    sa_set_err(err, cap, "%s: cannot open: %s", path, strerror(e));
    return e == ENOENT ? SA_ENOENT : SA_EIO;
  }
  int rc = SA_EIO;
  char *buf = NULL;
  if (fseek(f, 0, SEEK_END) != 0)
    goto fail;
  long sz = ftell(f);
  if (sz < 0 || fseek(f, 0, SEEK_SET) != 0)
    goto fail;
  if ((size_t)sz > max) {
    rc = SA_EFORMAT;
    sa_set_err(err, cap, "%s: %ld bytes, larger than the %zu-byte limit", path,
           sz, max);
    goto fail_msg;
  }
  buf = malloc((size_t)sz + 1);
  if (!buf) {
    rc = SA_ENOMEM;
    goto fail;
  }
  if (fread(buf, 1, (size_t)sz, f) != (size_t)sz)
    goto fail;
  buf[sz] = '\0';
  fclose(f);
  *out = buf;
  *outlen = (size_t)sz;
  return 0;
fail:
  sa_set_err(err, cap, "%s: read failed", path);
fail_msg:
  free(buf);
  fclose(f);
  return rc;
}

/* A shard name from an index must be a plain file name in the same folder. */
static bool st_shard_name_ok(const char *s) {
  return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 &&
         strcmp(s, "..") != 0;
}

static int st_open_index(sa_st_t *st, const char *index_path, const char *dir,
                         sa_st_filter_fn filter, void *filter_arg, char *err,
                         size_t cap) {
  int rc;
  char *text = NULL;
  size_t text_len = 0;
  cJSON *root = NULL;
  st_entry_t *entries = NULL;
  size_t nentries = 0;
  char **shards = NULL; /* distinct shard names, borrowed from the tree */
  bool *needed = NULL;
  size_t nshards = 0;
  char *path = NULL;

  rc = st_slurp(index_path, ST_MAX_INDEX, &text, &text_len, err, cap);
  if (rc != 0)
    goto fail;
  rc = SA_EFORMAT;
  root = cJSON_ParseWithLength(text, text_len + 1);
  if (!root || !cJSON_IsObject(root)) {
    sa_set_err(err, cap, "%s: not a JSON object", index_path);
    goto fail;
  }
  const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  if (!cJSON_IsObject(wm)) {
    sa_set_err(err, cap, "%s: missing \"weight_map\" object", index_path);
    goto fail;
  }
  size_t cnt = 0;
  for (const cJSON *e = wm->child; e; e = e->next)
    cnt++;
  entries = calloc(cnt ? cnt : 1, sizeof *entries);
  shards = calloc(cnt ? cnt : 1, sizeof *shards);
  needed = calloc(cnt ? cnt : 1, sizeof *needed);
  if (!entries || !shards || !needed) {
    rc = SA_ENOMEM;
    sa_set_err(err, cap, "%s: out of memory", index_path);
    goto fail;
  }
  for (const cJSON *e = wm->child; e; e = e->next) {
    const char *name = e->string ? e->string : "";
    if (!cJSON_IsString(e) || !st_shard_name_ok(e->valuestring)) {
      sa_set_err(err, cap, "%s: tensor '%s': weight_map value must be a file "
                       "name in the same folder", index_path, name);
      goto fail;
    }
    size_t s = 0;
    while (s < nshards && strcmp(shards[s], e->valuestring) != 0)
      s++;
    if (s == nshards)
      shards[nshards++] = e->valuestring;
    st_entry_t *en = &entries[nentries++];
    en->name = (char *)name; /* borrowed from the tree until we return */
    en->shard = s;
    en->wanted = !filter || filter(name, filter_arg);
    if (en->wanted)
      needed[s] = true;
  }
  qsort(entries, nentries, sizeof *entries, st_entry_cmp);
  for (size_t i = 1; i < nentries; i++) {
    if (strcmp(entries[i - 1].name, entries[i].name) == 0) {
      sa_set_err(err, cap, "%s: tensor '%s': listed twice in weight_map",
             index_path, entries[i].name);
      goto fail;
    }
  }
  for (size_t s = 0; s < nshards; s++) {
    if (!needed[s])
      continue;
    free(path);
    size_t plen = strlen(dir) + 1 + strlen(shards[s]) + 1;
    path = malloc(plen);
    if (!path) {
      rc = SA_ENOMEM;
      goto fail;
    }
    snprintf(path, plen, "%s/%s", dir, shards[s]);
    st_want_t want = {.filter = filter, .filter_arg = filter_arg,
                      .entries = entries, .nentries = nentries, .shard = s};
    rc = st_add_file(st, path, &want, err, cap);
    if (rc != 0) {
      if (rc == SA_ENOENT) {
        /* Name the index and one tensor the missing shard should hold. */
        const char *who = "";
        for (size_t i = 0; i < nentries; i++)
          if (entries[i].shard == s && entries[i].wanted) {
            who = entries[i].name;
            break;
          }
        sa_set_err(err, cap, "%s: shard '%s' (holding tensor '%s') is missing: "
                         "%s", index_path, shards[s], who, path);
      }
      goto fail;
    }
  }
  for (size_t i = 0; i < nentries; i++) {
    if (entries[i].wanted && !entries[i].found) {
      rc = SA_EFORMAT;
      sa_set_err(err, cap, "%s: tensor '%s': the index places it in %s, whose "
                       "header does not list it", index_path, entries[i].name,
             shards[entries[i].shard]);
      goto fail;
    }
  }
  rc = 0;
fail:
  free(path);
  free(needed);
  free(shards);
  free(entries);
  cJSON_Delete(root);
  free(text);
  return rc;
}

static bool st_ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static bool st_is_file(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

int sa_st_open(const char *path, sa_st_filter_fn filter, void *filter_arg,
               sa_st_t **out, char *err, size_t err_cap) {
  *out = NULL;
  if (err && err_cap)
    err[0] = '\0';
  if (!path)
    return SA_EINVAL;
  int rc;
  char *buf = NULL;
  sa_st_t *st = calloc(1, sizeof *st);
  if (!st || !(st->origin = strdup(path))) {
    free(st);
    return SA_ENOMEM;
  }

  struct stat sb;
  if (stat(path, &sb) != 0) {
    int e = errno;
    sa_set_err(err, err_cap, "%s: cannot open: %s", path, strerror(e));
    rc = e == ENOENT || e == ENOTDIR ? SA_ENOENT : SA_EIO;
    goto fail;
  }
  if (S_ISDIR(sb.st_mode)) {
    size_t plen = strlen(path) + sizeof ST_INDEX_NAME + 2;
    buf = malloc(plen);
    if (!buf) {
      rc = SA_ENOMEM;
      goto fail;
    }
    snprintf(buf, plen, "%s/%s", path, ST_INDEX_NAME);
    if (st_is_file(buf)) {
      rc = st_open_index(st, buf, path, filter, filter_arg, err, err_cap);
    } else {
      snprintf(buf, plen, "%s/%s", path, ST_SINGLE_NAME);
      if (!st_is_file(buf)) {
        sa_set_err(err, err_cap, "%s: no %s or %s in this folder", path,
               ST_INDEX_NAME, ST_SINGLE_NAME);
        rc = SA_ENOENT;
        goto fail;
      }
      st_want_t want = {.filter = filter, .filter_arg = filter_arg};
      rc = st_add_file(st, buf, &want, err, err_cap);
    }
  } else if (st_ends_with(path, ".json")) {
    buf = strdup(path);
    if (!buf) {
      rc = SA_ENOMEM;
      goto fail;
    }
    char *slash = strrchr(buf, '/');
    const char *dir = ".";
    if (slash) {
      *slash = '\0';
      dir = slash == buf ? "/" : buf;
    }
    rc = st_open_index(st, path, dir, filter, filter_arg, err, err_cap);
  } else {
    st_want_t want = {.filter = filter, .filter_arg = filter_arg};
    rc = st_add_file(st, path, &want, err, err_cap);
  }
  if (rc != 0)
    goto fail;
  rc = st_finish(st, err, err_cap);
  if (rc != 0)
    goto fail;
  free(buf);
  SA_LOG_DEBUG("safetensors: %s: %zu tensors from %zu files", path, st->n,
               st->nfiles);
  *out = st;
  return 0;
fail:
  free(buf);
  sa_st_close(&st);
  return rc;
}

const sa_st_tensor_t *sa_st_find(const sa_st_t *st, const char *name) {
  if (!st || !name)
    return NULL;
  size_t lo = 0, hi = st->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(name, st->tensors[mid].name);
    if (c == 0)
      return &st->tensors[mid];
    if (c < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return NULL;
}

int sa_st_get(const sa_st_t *st, const char *name, sa_dtype_t dtype, int ndim,
              const int64_t *shape, const sa_st_tensor_t **out, char *err,
              size_t err_cap) {
  if (out)
    *out = NULL;
  const sa_st_tensor_t *t = sa_st_find(st, name);
  if (!t) {
    sa_set_err(err, err_cap, "tensor '%s' not found in %s", name ? name : "(null)",
           st && st->origin ? st->origin : "the checkpoint");
    return SA_ENOENT;
  }
  bool ok = dtype == SA_ST_ANY_DTYPE || t->desc.dtype == dtype;
  if (ndim != SA_ST_ANY_SHAPE) {
    if (ndim != t->desc.ndim || (ndim > 0 && !shape))
      ok = false;
    for (int i = 0; ok && i < ndim; i++)
      if (shape[i] != t->desc.shape[i])
        ok = false;
  }
  if (!ok) {
    sa_tensor_desc_t want = {.dtype = dtype == SA_ST_ANY_DTYPE ? t->desc.dtype
                                                               : dtype};
    char ws[128], fs[128];
    if (ndim == SA_ST_ANY_SHAPE) {
      want.ndim = t->desc.ndim;
      memcpy(want.shape, t->desc.shape, sizeof want.shape);
    } else {
      want.ndim = ndim > SA_TENSOR_MAX_DIMS ? SA_TENSOR_MAX_DIMS : ndim;
      for (int i = 0; shape && i < want.ndim; i++)
        want.shape[i] = shape[i];
    }
    sa_set_err(err, err_cap, "%s: tensor '%s': expected %s, found %s", t->file,
           t->name, sa_tensor_desc_str(&want, ws, sizeof ws),
           sa_tensor_desc_str(&t->desc, fs, sizeof fs));
    return SA_EFORMAT;
  }
  if (out)
    *out = t;
  return 0;
}

size_t sa_st_count(const sa_st_t *st) { return st ? st->n : 0; }

const sa_st_tensor_t *sa_st_at(const sa_st_t *st, size_t i) {
  return st && i < st->n ? &st->tensors[i] : NULL;
}

size_t sa_st_num_files(const sa_st_t *st) {
  return st && !st->borrowed_buffer ? st->nfiles : 0;
}

/* Parses "<prefix><digits>." at the start of name; returns the number or -1. */
static long st_layer_of(const char *name, const char *prefix) {
  size_t pl = strlen(prefix);
  if (strncmp(name, prefix, pl) != 0)
    return -1;
  const char *p = name + pl;
  if (*p < '0' || *p > '9')
    return -1;
  long v = 0;
  while (*p >= '0' && *p <= '9') {
    if (v > INT_MAX / 10)
      return -1;
    v = v * 10 + (*p - '0');
    p++;
  }
  return *p == '.' ? v : -1;
}

static bool st_has_prefix(const char *s, const char *p) {
  return strncmp(s, p, strlen(p)) == 0;
}

bool sa_st_filter_layer_range(const char *name, void *arg) {
  const sa_st_layer_range_t *r = arg;
  if (!r || !name)
    return false;
  long layer = st_layer_of(name, "model.layers.");
  if (layer >= 0)
    return layer >= r->first && layer < r->last;
  if (st_has_prefix(name, "model.embed_tokens."))
    return r->embed;
  if (st_has_prefix(name, "model.norm.") || st_has_prefix(name, "lm_head."))
    return r->head;
  if (st_has_prefix(name, "encoder.") || st_has_prefix(name, "adapter."))
    return r->audio;
  return false;
}

/* --- writer ---------------------------------------------------------------- */

typedef struct {
  char *p;
  size_t n, cap;
  bool oom;
} st_sbuf_t;

static void sb_put(st_sbuf_t *b, const char *s, size_t n) {
  if (b->oom)
    return;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}

static void sb_str(st_sbuf_t *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_fmt(st_sbuf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sb_fmt(st_sbuf_t *b, const char *fmt, ...) {
  char tmp[64];
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (k > 0)
    sb_put(b, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

/* Appends s as a quoted JSON string. */
static void sb_json_str(st_sbuf_t *b, const char *s) {
  sb_str(b, "\"");
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') {
      char e[2] = {'\\', (char)*p};
      sb_put(b, e, 2);
    } else if (*p < 0x20) {
      sb_fmt(b, "\\u%04x", *p);
    } else {
      sb_put(b, (const char *)p, 1);
    }
  }
  sb_str(b, "\"");
}

static int st_ptr_name_cmp(const void *a, const void *b) {
  const sa_st_tensor_t *x = *(const sa_st_tensor_t *const *)a;
  const sa_st_tensor_t *y = *(const sa_st_tensor_t *const *)b;
  return strcmp(x->name, y->name);
}

static bool st_write_all(FILE *f, const void *p, size_t n) {
  return n == 0 || fwrite(p, 1, n, f) == n;
}

int sa_st_write(const char *path, const sa_st_tensor_t *tensors, size_t n,
                char *err, size_t err_cap) {
  int rc = SA_EINVAL;
  const sa_st_tensor_t **order = NULL;
  size_t *sizes = NULL;
  st_sbuf_t hb = {0};
  char *tmp = NULL;
  FILE *f = NULL;

  if (!path || (n && !tensors)) {
    sa_set_err(err, err_cap, "sa_st_write: invalid arguments");
    return SA_EINVAL;
  }
  order = malloc((n ? n : 1) * sizeof *order);
  sizes = malloc((n ? n : 1) * sizeof *sizes);
  if (!order || !sizes) {
    rc = SA_ENOMEM;
    sa_set_err(err, err_cap, "%s: out of memory", path);
    goto fail;
  }
  for (size_t i = 0; i < n; i++) {
    const sa_st_tensor_t *t = &tensors[i];
    if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0) {
      sa_set_err(err, err_cap, "%s: tensor %zu has an invalid name", path, i);
      goto fail;
    }
    if (!st_dtype_to_name(t->desc.dtype) ||
        sa_tensor_desc_nbytes(&t->desc, &sizes[i]) != 0) {
      sa_set_err(err, err_cap, "%s: tensor '%s': invalid dtype or shape", path,
             t->name);
      goto fail;
    }
    if (t->nbytes != 0 && t->nbytes != sizes[i]) {
      sa_set_err(err, err_cap, "%s: tensor '%s': nbytes %zu disagrees with the "
                           "descriptor (%zu)", path, t->name, t->nbytes,
             sizes[i]);
      goto fail;
    }
    if (sizes[i] && !t->data) {
      sa_set_err(err, err_cap, "%s: tensor '%s': no data", path, t->name);
      goto fail;
    }
    order[i] = t;
  }
  if (n > 1)
    qsort(order, n, sizeof *order, st_ptr_name_cmp);
  for (size_t i = 1; i < n; i++) {
    if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
      sa_set_err(err, err_cap, "%s: tensor '%s': given twice", path,
             order[i]->name);
      goto fail;
    }
  }

  sb_str(&hb, "{\"__metadata__\":{\"format\":\"pt\"}");
  uint64_t off = 0;
  for (size_t i = 0; i < n; i++) {
    const sa_st_tensor_t *t = order[i];
    size_t sz = sizes[t - tensors];
    sb_str(&hb, ",");
    sb_json_str(&hb, t->name);
    sb_fmt(&hb, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_to_name(t->desc.dtype));
    for (int d = 0; d < t->desc.ndim; d++)
      sb_fmt(&hb, d ? ",%lld" : "%lld", (long long)t->desc.shape[d]);
    sb_fmt(&hb, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
           (unsigned long long)(off + sz));
    off += sz;
  }
  sb_str(&hb, "}");
  while (!hb.oom && hb.n % 8 != 0)
    sb_str(&hb, " ");
  if (hb.oom) {
    rc = SA_ENOMEM;
    sa_set_err(err, err_cap, "%s: out of memory for the header", path);
    goto fail;
  }

  size_t tlen = strlen(path) + 16;
  tmp = malloc(tlen);
  if (!tmp) {
    rc = SA_ENOMEM;
    goto fail;
  }
  snprintf(tmp, tlen, "%s.tmp%d", path, (int)getpid() % 100000);
  rc = SA_EIO;
  f = fopen(tmp, "wb");
  if (!f) {
    sa_set_err(err, err_cap, "%s: cannot create: %s", tmp, strerror(errno));
    goto fail;
  }
  uint8_t le[8];
  for (int i = 0; i < 8; i++)
    le[i] = (uint8_t)((uint64_t)hb.n >> (8 * i));
  bool ok = st_write_all(f, le, 8) && st_write_all(f, hb.p, hb.n);
  for (size_t i = 0; ok && i < n; i++)
    ok = st_write_all(f, order[i]->data, sizes[order[i] - tensors]);
  if (fclose(f) != 0)
    ok = false;
  f = NULL;
  if (!ok) {
    sa_set_err(err, err_cap, "%s: write failed: %s", tmp, strerror(errno));
    unlink(tmp);
    goto fail;
  }
  if (rename(tmp, path) != 0) {
    sa_set_err(err, err_cap, "%s: rename from %s failed: %s", path, tmp,
           strerror(errno));
    unlink(tmp);
    goto fail;
  }
  rc = 0;
fail:
  if (f) {
    fclose(f);
    unlink(tmp);
  }
  free(tmp);
  free(hb.p);
  free(sizes);
  free(order);
  return rc;
}
