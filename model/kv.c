/* kv — see kv.h. */
#include "kv.h"

#include "log.h"
#include "sa_error.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  uint64_t id;
  int len;  /* tokens */
  int nb;   /* blocks in the table */
  int live; /* slot in use */
} kv_seq_t;

struct sa_kv {
  sa_backend_t *be;
  int first, last, n_layers, kv_dim, bs;
  int n_blocks, max_seqs, max_seq_len, max_bpseq;
  char *pool;  /* backend: [n_layers][2][n_blocks, bs, kv_dim] of kv_type */
  size_t layer_bytes;  /* n_blocks * bs * row_bytes */
  size_t row_bytes;    /* of one token's kv_dim values (sa_kv_row_bytes) */
  int kv_type;
  int32_t *refs;       /* [n_blocks] */
  int32_t *free_stack; /* [n_blocks] */
  int n_free, n_shared, n_seqs;
  kv_seq_t *seqs;      /* [max_seqs] */
  int32_t *tables;     /* [max_seqs, max_bpseq] */
  int32_t *free_seqs;  /* [max_seqs] */
  int n_free_seqs;
  int32_t *hslot;      /* [hcap] seq slot or -1 */
  uint32_t hmask;
};

size_t sa_kv_block_bytes(int n_layers, int block_size, int kv_dim, int kv_type) {
  return (size_t)n_layers * 2u * (size_t)block_size * sa_kv_row_bytes(kv_type, kv_dim);
}

/* ------------------------------------------------------- id -> seq slot */

static uint32_t hash64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return (uint32_t)x;
}

/* Index into hslot where id lives, or the empty index where it would go. */
static uint32_t h_find(const sa_kv_t *kv, uint64_t id) {
  uint32_t i = hash64(id) & kv->hmask;
  while (kv->hslot[i] >= 0 && kv->seqs[kv->hslot[i]].id != id)
    i = (i + 1) & kv->hmask;
  return i;
}

static kv_seq_t *seq_get(const sa_kv_t *kv, uint64_t id, int *slot) {
  int32_t s = kv->hslot[h_find(kv, id)];
  if (s < 0)
    return NULL;
  if (slot)
    *slot = s;
  return &kv->seqs[s];
}

/* Backward-shift deletion keeps linear probing free of tombstones. */
static void h_remove(sa_kv_t *kv, uint64_t id) {
  uint32_t i = h_find(kv, id);
  if (kv->hslot[i] < 0)
    return;
  uint32_t j = i;
  for (;;) {
    kv->hslot[i] = -1;
    for (;;) {
      j = (j + 1) & kv->hmask;
      if (kv->hslot[j] < 0)
        return;
      uint32_t home = hash64(kv->seqs[kv->hslot[j]].id) & kv->hmask;
      /* move j back to i unless its home lies cyclically in (i, j] */
      if (i <= j ? (home <= i || home > j) : (home <= i && home > j))
        break;
    }
    kv->hslot[i] = kv->hslot[j];
    i = j;
  }
}

/* ------------------------------------------------------------ lifecycle */

int sa_kv_new(sa_backend_t *be, const sa_kv_opts_t *o, sa_kv_t **out) {
  if (!be || !o || !out)
    return SA_EINVAL;
  *out = NULL;
  int bs = o->block_size > 0 ? o->block_size : 16;
  int nl = o->last_layer - o->first_layer;
  if (o->first_layer < 0 || nl <= 0 || o->kv_dim <= 0 || o->max_seqs <= 0 ||
      o->max_seq_len <= 0 || bs > (1 << 16)) {
    SA_LOG_ERROR("kv: bad options (layers [%d,%d), kv_dim %d, max_seqs %d, "
                 "max_seq_len %d, block_size %d)",
                 o->first_layer, o->last_layer, o->kv_dim, o->max_seqs,
                 o->max_seq_len, bs);
    return SA_EINVAL;
  }
  if (!sa_kv_row_bytes(o->kv_type, o->kv_dim)) {
    SA_LOG_ERROR("kv: kv_type %d cannot hold rows of %d values", o->kv_type, o->kv_dim);
    return SA_EINVAL;
  }
  size_t per_block = sa_kv_block_bytes(nl, bs, o->kv_dim, o->kv_type);
  size_t nb = o->n_blocks > 0 ? (size_t)o->n_blocks : o->budget_bytes / per_block;
  if (nb == 0 || nb > INT32_MAX / (size_t)bs) {
    SA_LOG_ERROR("kv: a budget of %zu bytes holds %zu blocks of %zu bytes",
                 o->budget_bytes, nb, per_block);
    return SA_EINVAL;
  }
  sa_kv_t *kv = calloc(1, sizeof *kv);
  if (!kv)
    return SA_ENOMEM;
  kv->be = be;
  kv->first = o->first_layer;
  kv->last = o->last_layer;
  kv->n_layers = nl;
  kv->kv_dim = o->kv_dim;
  kv->bs = bs;
  kv->n_blocks = (int)nb;
  kv->max_seqs = o->max_seqs;
  kv->max_seq_len = o->max_seq_len;
  kv->max_bpseq = (o->max_seq_len + bs - 1) / bs;
  kv->kv_type = o->kv_type;
  kv->row_bytes = sa_kv_row_bytes(o->kv_type, o->kv_dim);
  kv->layer_bytes = nb * (size_t)bs * kv->row_bytes;
  size_t pool_bytes = nb * per_block;
  kv->pool = be->ops->alloc(be, pool_bytes);
  if (!kv->pool) {
    SA_LOG_ERROR("kv: cannot allocate %zu bytes of KV pool (%zu blocks)",
                 pool_bytes, nb);
    goto fail;
  }
  if (be->ops->memset0(be, kv->pool, pool_bytes))
    goto fail;
  uint32_t hcap = 16;
  while (hcap < 2u * (uint32_t)o->max_seqs)
    hcap <<= 1;
  kv->hmask = hcap - 1;
  kv->refs = calloc(nb, sizeof(int32_t));
  kv->free_stack = malloc(nb * sizeof(int32_t));
  kv->seqs = calloc((size_t)o->max_seqs, sizeof(kv_seq_t));
  kv->tables = malloc((size_t)o->max_seqs * (size_t)kv->max_bpseq *
                      sizeof(int32_t));
  kv->free_seqs = malloc((size_t)o->max_seqs * sizeof(int32_t));
  kv->hslot = malloc(hcap * sizeof(int32_t));
  if (!kv->refs || !kv->free_stack || !kv->seqs || !kv->tables ||
      !kv->free_seqs || !kv->hslot)
    goto fail;
  for (int i = 0; i < (int)nb; i++) /* pops give 0, 1, 2, ... */
    kv->free_stack[i] = (int)nb - 1 - i;
  kv->n_free = (int)nb;
  for (int i = 0; i < o->max_seqs; i++)
    kv->free_seqs[i] = o->max_seqs - 1 - i;
  kv->n_free_seqs = o->max_seqs;
  memset(kv->hslot, 0xff, hcap * sizeof(int32_t));
  *out = kv;
  return 0;
fail:
  sa_kv_destroy(&kv);
  return SA_ENOMEM;
}

void sa_kv_destroy(sa_kv_t **kvp) {
  if (!kvp || !*kvp)
    return;
  sa_kv_t *kv = *kvp;
  if (kv->pool)
    kv->be->ops->free(kv->be, kv->pool);
  free(kv->refs);
  free(kv->free_stack);
  free(kv->seqs);
  free(kv->tables);
  free(kv->free_seqs);
  free(kv->hslot);
  free(kv);
  *kvp = NULL;
}

/* --------------------------------------------------------------- blocks */

static int32_t *table_of(const sa_kv_t *kv, int slot) {
  return kv->tables + (size_t)slot * (size_t)kv->max_bpseq;
}

static int block_pop(sa_kv_t *kv) {
  SA_ASSERT(kv->n_free > 0, "caller checked free blocks");
  int b = kv->free_stack[--kv->n_free];
  kv->refs[b] = 1;
  return b;
}

static void block_ref(sa_kv_t *kv, int b) {
  if (++kv->refs[b] == 2)
    kv->n_shared++;
}

static void block_unref(sa_kv_t *kv, int b) {
  SA_ASSERT(kv->refs[b] > 0, "unref of a free block");
  if (--kv->refs[b] == 1)
    kv->n_shared--;
  else if (kv->refs[b] == 0)
    kv->free_stack[kv->n_free++] = b;
}

/* Copies the first n token slots of block src to block dst in every layer. */
static int block_copy(sa_kv_t *kv, int dst, int src, int n) {
  size_t row = kv->row_bytes, blk = (size_t)kv->bs * row;
  for (int l = 0; l < kv->n_layers; l++) {
    for (int kvsel = 0; kvsel < 2; kvsel++) {
      char *base = kv->pool + ((size_t)l * 2 + kvsel) * kv->layer_bytes;
      int rc = kv->be->ops->copy(kv->be, base + (size_t)dst * blk, base + (size_t)src * blk,
                                 (size_t)n * row);
      if (rc)
        return rc;
    }
  }
  return 0;
}

/* Blocks an append of n tokens to a sequence of len tokens / nb blocks
 * (last block shared or not) takes. */
static int need_for(const sa_kv_t *kv, const kv_seq_t *s, int n) {
  int len = s ? s->len : 0, nb = s ? s->nb : 0;
  if (n <= 0)
    return 0;
  int after = (len + n + kv->bs - 1) / kv->bs;
  int cow = 0;
  if (s && len % kv->bs != 0 && kv->refs[table_of(kv, (int)(s - kv->seqs))[nb - 1]] > 1)
    cow = 1;
  return after - nb + cow;
}

/* ------------------------------------------------------------ sequences */

int sa_kv_seq_add(sa_kv_t *kv, uint64_t id) {
  uint32_t h = h_find(kv, id);
  if (kv->hslot[h] >= 0)
    return SA_EEXIST;
  if (kv->n_free_seqs == 0)
    return SA_EFULL;
  int slot = kv->free_seqs[--kv->n_free_seqs];
  kv->seqs[slot] = (kv_seq_t){.id = id, .len = 0, .nb = 0, .live = 1};
  kv->hslot[h] = slot;
  kv->n_seqs++;
  return 0;
}

int sa_kv_seq_exists(const sa_kv_t *kv, uint64_t id) {
  return seq_get(kv, id, NULL) != NULL;
}

int sa_kv_seq_len(const sa_kv_t *kv, uint64_t id) {
  const kv_seq_t *s = seq_get(kv, id, NULL);
  return s ? s->len : SA_ENOENT;
}

int sa_kv_blocks_needed(const sa_kv_t *kv, uint64_t id, int n) {
  return need_for(kv, seq_get(kv, id, NULL), n);
}

int sa_kv_blocks_free(const sa_kv_t *kv) { return kv->n_free; }

int sa_kv_can_append(const sa_kv_t *kv, uint64_t id, int n) {
  const kv_seq_t *s = seq_get(kv, id, NULL);
  int len = s ? s->len : 0;
  if (n < 0 || (long)len + n > kv->max_seq_len)
    return 0;
  return need_for(kv, s, n) <= kv->n_free;
}

int sa_kv_append(sa_kv_t *kv, uint64_t id, int n, int32_t *slot) {
  int si;
  kv_seq_t *s = seq_get(kv, id, &si);
  if (!s)
    return SA_ENOENT;
  if (n < 0)
    return SA_EINVAL;
  if ((long)s->len + n > kv->max_seq_len)
    return SA_ERANGE;
  if (need_for(kv, s, n) > kv->n_free)
    return SA_EFULL;
  int32_t *t = table_of(kv, si);
  if (n > 0 && s->len % kv->bs != 0 && kv->refs[t[s->nb - 1]] > 1) {
    int old = t[s->nb - 1], nw = block_pop(kv);
    int rc = block_copy(kv, nw, old, s->len % kv->bs);
    if (rc) {
      block_unref(kv, nw);
      return rc;
    }
    block_unref(kv, old);
    t[s->nb - 1] = nw;
  }
  int after = (s->len + n + kv->bs - 1) / kv->bs;
  while (s->nb < after)
    t[s->nb++] = block_pop(kv);
  if (slot)
    for (int i = 0; i < n; i++) {
      int p = s->len + i;
      slot[i] = t[p / kv->bs] * kv->bs + p % kv->bs;
    }
  s->len += n;
  return 0;
}

int sa_kv_truncate(sa_kv_t *kv, uint64_t id, int n) {
  int si;
  kv_seq_t *s = seq_get(kv, id, &si);
  if (!s)
    return SA_ENOENT;
  if (n < 0 || n > s->len)
    return SA_EINVAL;
  int32_t *t = table_of(kv, si);
  int keep = (n + kv->bs - 1) / kv->bs;
  while (s->nb > keep)
    block_unref(kv, t[--s->nb]);
  s->len = n;
  return 0;
}

int sa_kv_fork(sa_kv_t *kv, uint64_t parent, uint64_t child) {
  int pi;
  kv_seq_t *p = seq_get(kv, parent, &pi);
  if (!p)
    return SA_ENOENT;
  uint32_t h = h_find(kv, child);
  if (kv->hslot[h] >= 0)
    return SA_EEXIST;
  if (kv->n_free_seqs == 0)
    return SA_EFULL;
  int partial = p->len % kv->bs != 0;
  if (partial && kv->n_free == 0)
    return SA_EFULL;
  int ci = kv->free_seqs[kv->n_free_seqs - 1];
  int32_t *pt = table_of(kv, pi), *ct = table_of(kv, ci);
  int full = partial ? p->nb - 1 : p->nb;
  if (partial) {
    int b = block_pop(kv);
    int rc = block_copy(kv, b, pt[p->nb - 1], p->len % kv->bs);
    if (rc) {
      block_unref(kv, b);
      return rc;
    }
    ct[full] = b;
  }
  for (int i = 0; i < full; i++) {
    ct[i] = pt[i];
    block_ref(kv, pt[i]);
  }
  kv->n_free_seqs--;
  kv->seqs[ci] = (kv_seq_t){.id = child, .len = p->len, .nb = p->nb, .live = 1};
  kv->hslot[h] = ci;
  kv->n_seqs++;
  return 0;
}

int sa_kv_free(sa_kv_t *kv, uint64_t id) {
  int si;
  kv_seq_t *s = seq_get(kv, id, &si);
  if (!s)
    return SA_ENOENT;
  int32_t *t = table_of(kv, si);
  for (int i = s->nb - 1; i >= 0; i--)
    block_unref(kv, t[i]);
  h_remove(kv, id);
  s->live = 0;
  s->nb = s->len = 0;
  kv->free_seqs[kv->n_free_seqs++] = si;
  kv->n_seqs--;
  return 0;
}

int sa_kv_free_all(sa_kv_t *kv) {
  int n = 0;
  for (int i = 0; i < kv->max_seqs; i++)
    if (kv->seqs[i].live && sa_kv_free(kv, kv->seqs[i].id) == 0)
      n++;
  return n;
}

/* -------------------------------------------------------------- queries */

const int32_t *sa_kv_block_table(const sa_kv_t *kv, uint64_t id,
                                 int *n_blocks) {
  int si;
  const kv_seq_t *s = seq_get(kv, id, &si);
  if (!s)
    return NULL;
  if (n_blocks)
    *n_blocks = s->nb;
  return table_of(kv, si);
}

int sa_kv_layer(const sa_kv_t *kv, int layer, void **k, void **v) {
  if (layer < kv->first || layer >= kv->last)
    return SA_ERANGE;
  size_t l = (size_t)(layer - kv->first);
  if (k)
    *k = kv->pool + (l * 2) * kv->layer_bytes;
  if (v)
    *v = kv->pool + (l * 2 + 1) * kv->layer_bytes;
  return 0;
}

int sa_kv_type(const sa_kv_t *kv) { return kv->kv_type; }

void sa_kv_stats(const sa_kv_t *kv, sa_kv_stats_t *st) {
  st->blocks_total = kv->n_blocks;
  st->blocks_free = kv->n_free;
  st->blocks_used = kv->n_blocks - kv->n_free;
  st->blocks_shared = kv->n_shared;
  st->n_seqs = kv->n_seqs;
  st->bytes_per_block = sa_kv_block_bytes(kv->n_layers, kv->bs, kv->kv_dim, kv->kv_type);
}

int sa_kv_block_size(const sa_kv_t *kv) { return kv->bs; }

int sa_kv_max_blocks_per_seq(const sa_kv_t *kv) { return kv->max_bpseq; }

int sa_kv_block_refs(const sa_kv_t *kv, int block) {
  if (block < 0 || block >= kv->n_blocks)
    return -1;
  return kv->refs[block];
}
