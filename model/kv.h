/*
 * kv — the paged KV cache of one pipeline stage (docs/architecture.md §4, docs/architecture.md §5).
 *
 * A pool of fixed-size blocks (block_size tokens, 16 by default) for the
 * decoder layers [first, last) of one stage. For each layer the pool holds K
 * and V as [n_blocks, block_size, kv_dim] of the pool's kv_type (fp32 or
 * bf16, kernels.h SA_KV_*) in backend memory, the layout kernels.h's
 * kv_write and attention read. The pool is sized once from a
 * memory budget in bytes (or a block count) and never grows.
 *
 * Sequences are named by a uint64 id and own a block table. Appending tokens
 * allocates blocks as needed and fails with SA_EFULL, changing nothing, when
 * the pool cannot hold them: the cache never over-commits. Fork makes a child
 * that shares the parent's full blocks by reference count; the parent's
 * partly filled last block is copied at fork time, so a shared block is
 * always full and appends never write into one (should a sequence ever end
 * on a shared partial block, e.g. after truncate, the next append copies it
 * first). Free drops references and returns blocks whose count reaches zero.
 *
 * This module keeps bookkeeping on the host and touches backend memory only
 * to copy a block on fork/copy-on-write. It does not compute attention or
 * decide admission; it answers how many blocks work would need. One thread
 * uses a sa_kv_t at a time; nothing here allocates after sa_kv_new.
 */
#ifndef SA_KV_H
#define SA_KV_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

typedef struct sa_kv sa_kv_t;

typedef struct {
  int first_layer;     /* first decoder layer of the stage */
  int last_layer;      /* one past the last layer; > first_layer */
  int kv_dim;          /* nkv * hd */
  int block_size;      /* tokens per block; 0 = 16 */
  size_t budget_bytes; /* pool size in bytes (K and V of all the layers) */
  int n_blocks;        /* if > 0, the block count (budget_bytes ignored) */
  int max_seqs;        /* sequences alive at once */
  int max_seq_len;     /* longest sequence, in tokens */
  int kv_type;         /* SA_KV_F32 (0), SA_KV_BF16 or SA_KV_Q8_0 */
} sa_kv_opts_t;

typedef struct {
  int blocks_total;
  int blocks_used;   /* referenced by at least one sequence */
  int blocks_shared; /* referenced by two sequences or more */
  int blocks_free;
  int n_seqs;
  size_t bytes_per_block; /* K and V over all the stage's layers */
} sa_kv_stats_t;

/* Bytes one block takes over n_layers layers (K and V of kv_type). */
size_t sa_kv_block_bytes(int n_layers, int block_size, int kv_dim, int kv_type);

/* Creates the pool in be's memory. Returns 0, SA_EINVAL (bad options, or a
 * budget below one block), SA_ENOMEM. Caller owns *out (sa_kv_destroy); `be`
 * is borrowed and must outlive it. */
int sa_kv_new(sa_backend_t *be, const sa_kv_opts_t *opts, sa_kv_t **out);
/* Frees *kv (may be NULL) and its backend memory; sets it NULL. */
void sa_kv_destroy(sa_kv_t **kv);

/* Adds an empty sequence. Returns 0, SA_EEXIST, SA_EFULL (max_seqs alive). */
int sa_kv_seq_add(sa_kv_t *kv, uint64_t id);
/* True if the sequence exists. */
int sa_kv_seq_exists(const sa_kv_t *kv, uint64_t id);
/* Tokens held by the sequence, or SA_ENOENT. */
int sa_kv_seq_len(const sa_kv_t *kv, uint64_t id);

/* Blocks that appending n tokens to sequence id would take from the pool
 * (counting a copy-on-write of a shared partial last block; a sequence that
 * does not exist yet counts from length 0). */
int sa_kv_blocks_needed(const sa_kv_t *kv, uint64_t id, int n);
/* Free blocks now. The scheduler admits work only while the blocks it
 * needs are at most this. */
int sa_kv_blocks_free(const sa_kv_t *kv);
/* 1 if n more tokens fit into sequence id now (blocks and max_seq_len). */
int sa_kv_can_append(const sa_kv_t *kv, uint64_t id, int n);

/* Appends n tokens to sequence id (which must exist): allocates blocks and
 * writes slot[i] = block * block_size + offset of token len + i (the
 * kv_write slot). Returns 0, SA_ENOENT, SA_EINVAL (n < 0), SA_ERANGE (past
 * max_seq_len) or SA_EFULL (not enough free blocks); on error nothing
 * changed. slot may be NULL. */
int sa_kv_append(sa_kv_t *kv, uint64_t id, int n, int32_t *slot);
/* Shortens sequence id to n tokens (n <= its length), releasing blocks no
 * longer needed. Returns 0, SA_ENOENT or SA_EINVAL. */
int sa_kv_truncate(sa_kv_t *kv, uint64_t id, int n);

/* Creates sequence child sharing parent's tokens: full blocks by reference,
 * the partial last block (if any) copied. Returns 0, SA_ENOENT (no parent),
 * SA_EEXIST (child exists), SA_EFULL (no sequence slot or no block for the
 * copy); on error nothing changed. Queues a backend copy (async on CUDA). */
int sa_kv_fork(sa_kv_t *kv, uint64_t parent, uint64_t child);
/* Drops sequence id and its block references. Returns 0 or SA_ENOENT. */
int sa_kv_free(sa_kv_t *kv, uint64_t id);
/* Frees every sequence (their blocks return to the pool). Returns how many
 * there were. */
int sa_kv_free_all(sa_kv_t *kv);

/* The block table of sequence id (host memory, borrowed until the next call
 * that changes that sequence); *n_blocks gets its length. NULL if absent. */
const int32_t *sa_kv_block_table(const sa_kv_t *kv, uint64_t id,
                                 int *n_blocks);
/* K and V pools of decoder layer `layer` (absolute index in [first, last)),
 * [n_blocks, block_size] rows of sa_kv_type(kv) in backend memory;
 * borrowed. Returns 0 or SA_ERANGE. */
int sa_kv_layer(const sa_kv_t *kv, int layer, void **k, void **v);
/* The pool's element type (SA_KV_F32, SA_KV_BF16 or SA_KV_Q8_0). */
int sa_kv_type(const sa_kv_t *kv);

void sa_kv_stats(const sa_kv_t *kv, sa_kv_stats_t *st);
int sa_kv_block_size(const sa_kv_t *kv);
/* Longest block table a sequence can have: ceil(max_seq_len / block_size). */
int sa_kv_max_blocks_per_seq(const sa_kv_t *kv);
/* Refcount of a block (for tests and diagnostics); -1 for a bad index. */
int sa_kv_block_refs(const sa_kv_t *kv, int block);

#endif /* SA_KV_H */
