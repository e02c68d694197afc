/* NCCL between two CUDA stages in one process, the way two co-located
 * sa-worker processes use it (kernels/sa_nccl.h): each stage joins the
 * 2-rank communicator on its own thread, then
 *  - a buffer sent by rank 0 arrives intact at rank 1 (odd size, several
 *    sends in flight before the receives are posted);
 *  - the tiny model split after layer 1 (cuda:0 -> cuda:1) with the rows
 *    handed over by NCCL from the decoder's device buffer
 *    (sa_decoder_batch_t.hidden_device) gives the logits of the whole model
 *    on cuda:0, bit for bit;
 *  - a receive with no send times out, and after the abort the receiving
 *    backend works again.
 * Needs two GPUs: prints "skipped: no GPU" / "skipped: needs 2 GPUs" and
 * exits 77 otherwise; "skipped: no NCCL" in a build without it. */
#include "decoder.h"
#include "kernels.h"
#include "kv.h"
#include "sa_cuda.h"
#include "sa_error.h"
#include "sa_nccl.h"
#include "testmodel.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(c)                                                                                   \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);                                 \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

typedef struct {
  const uint8_t *id;
  int rank;
  sa_backend_t *be;
  sa_nccl_comm_t *comm;
  int rc;
} join_t;

static void *join_main(void *p) {
  join_t *j = p;
  j->rc = sa_nccl_comm_new(&j->comm, j->id, 2, j->rank, j->be, 60000);
  return NULL;
}

static void join_both(sa_backend_t *b0, sa_backend_t *b1, sa_nccl_comm_t **c0,
                      sa_nccl_comm_t **c1) {
  uint8_t id[SA_NCCL_ID_BYTES];
  CHECK(sa_nccl_get_unique_id(id) == 0);
  join_t j[2] = {{.id = id, .rank = 0, .be = b0}, {.id = id, .rank = 1, .be = b1}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    CHECK(pthread_create(&t[i], NULL, join_main, &j[i]) == 0);
  for (int i = 0; i < 2; i++)
    pthread_join(t[i], NULL);
  CHECK(j[0].rc == 0 && j[1].rc == 0);
  *c0 = j[0].comm;
  *c1 = j[1].comm;
}

static void test_buffers(sa_backend_t *b0, sa_backend_t *b1) {
  sa_nccl_comm_t *c0, *c1;
  join_both(b0, b1, &c0, &c1);
  enum { N = 3, BYTES = 12345 };
  uint8_t *host = malloc(BYTES), *back = malloc(BYTES);
  void *src[N], *dst[N];
  uint64_t ticket[N];
  for (int k = 0; k < N; k++) {
    CHECK((src[k] = b0->ops->alloc(b0, BYTES)) && (dst[k] = b1->ops->alloc(b1, BYTES)));
    for (int i = 0; i < BYTES; i++)
      host[i] = (uint8_t)(i * 7 + k * 31);
    CHECK(b0->ops->upload(b0, src[k], host, BYTES) == 0);
    CHECK(sa_nccl_send(c0, src[k], BYTES, 1, &ticket[k]) == 0); /* before any receive */
  }
  for (int k = 0; k < N; k++)
    CHECK(sa_nccl_recv(c1, dst[k], BYTES, 0, 10000) == 0);
  CHECK(b1->ops->sync(b1) == 0);
  CHECK(sa_nccl_send_wait(c0, ticket[N - 1], 10000) == 0);
  for (int k = 0; k < N; k++) {
    CHECK(b1->ops->download(b1, back, dst[k], BYTES) == 0 && b1->ops->sync(b1) == 0);
    for (int i = 0; i < BYTES; i++)
      CHECK(back[i] == (uint8_t)(i * 7 + k * 31));
    b0->ops->free(b0, src[k]);
    b1->ops->free(b1, dst[k]);
  }
  printf("buffers: %d sends of %d bytes posted before their receives arrived intact\n", N, BYTES);
  free(host);
  free(back);
  sa_nccl_comm_destroy(&c0, 0);
  sa_nccl_comm_destroy(&c1, 0);
}

/* A receive whose sender never sends (a peer that died between its
 * StepBatch and its ncclSend) gives up after its time limit instead of
 * blocking the stage for good; aborting the communicator ends the pending
 * receive and the backend's stream serves again. */
static void test_recv_timeout(sa_backend_t *b0, sa_backend_t *b1) {
  sa_nccl_comm_t *c0, *c1;
  join_both(b0, b1, &c0, &c1);
  void *dst = b1->ops->alloc(b1, 4096);
  CHECK(dst);
  CHECK(sa_nccl_recv(c1, dst, 4096, 0, 300) == SA_ETIMEDOUT);
  sa_nccl_comm_destroy(&c1, 1);
  sa_nccl_comm_destroy(&c0, 1);
  CHECK(b1->ops->sync(b1) == 0);
  uint8_t host[64] = {1, 2, 3}, back[64] = {0};
  CHECK(b1->ops->upload(b1, dst, host, sizeof host) == 0);
  CHECK(b1->ops->download(b1, back, dst, sizeof back) == 0 && b1->ops->sync(b1) == 0);
  CHECK(!memcmp(host, back, sizeof host));
  b1->ops->free(b1, dst);
  printf("receive without a send: timed out, aborted, the stream serves again\n");
}

static sa_decoder_t *load(sa_backend_t *be, const char *dir, int first, int last) {
  sa_decoder_opts_t o = {.first_layer = first, .last_layer = last, .max_tokens = 32,
                         .max_seqs = 2, .max_logit_rows = 2, .max_seq_len = 128};
  sa_decoder_t *d = NULL;
  char err[512];
  if (sa_decoder_load(be, dir, NULL, &o, &d, err, sizeof err)) {
    fprintf(stderr, "load %d:%d: %s\n", first, last, err);
    exit(1);
  }
  return d;
}

static sa_kv_t *kv_for(sa_backend_t *be, sa_decoder_t *d) {
  sa_kv_opts_t ko;
  sa_kv_t *kv = NULL;
  sa_decoder_kv_opts(d, 0, 32, 2, &ko);
  CHECK(sa_kv_new(be, &ko, &kv) == 0 && sa_kv_seq_add(kv, 1) == 0);
  return kv;
}

static void test_split_model(sa_backend_t *b0, sa_backend_t *b1, const char *dir) {
  sa_decoder_t *full = load(b0, dir, 0, -1), *s0 = load(b0, dir, 0, 1), *s1 = load(b1, dir, 1, -1);
  sa_kv_t *kv = kv_for(b0, full), *kv0 = kv_for(b0, s0), *kv1 = kv_for(b1, s1);
  sa_nccl_comm_t *c0, *c1;
  join_both(b0, b1, &c0, &c1);
  int V = sa_decoder_config(full)->vocab_size, H = sa_decoder_config(full)->hidden_size;
  float *la = malloc(sizeof(float) * (size_t)V), *lb = malloc(sizeof(float) * (size_t)V);
  int32_t toks[20];
  for (int i = 0; i < 20; i++)
    toks[i] = (i * 37 + 11) % (V - 16);
  uint64_t sid = 1;
  int32_t n = 20, pos = 0, row = 19;
  for (int step = 0; step < 8; step++) {
    sa_decoder_batch_t b = {.n_seqs = 1, .seq_ids = &sid, .n_new = &n, .pos0 = &pos,
                            .tokens = toks, .n_logits = 1, .logit_rows = &row, .logits = la};
    CHECK(sa_decoder_step(full, kv, &b) == 0);
    b.n_logits = 0;
    b.hidden_device = true;
    CHECK(sa_decoder_step(s0, kv0, &b) == 0);
    uint64_t t;
    size_t bytes = sizeof(float) * (size_t)n * (size_t)H;
    CHECK(sa_nccl_send(c0, sa_decoder_hidden_dev(s0), bytes, 1, &t) == 0);
    CHECK(sa_nccl_recv(c1, sa_decoder_hidden_dev(s1), bytes, 0, 10000) == 0);
    b.tokens = NULL;
    b.n_logits = 1;
    b.logits = lb;
    CHECK(sa_decoder_step(s1, kv1, &b) == 0);
    CHECK(sa_nccl_send_wait(c0, t, 10000) == 0);
    CHECK(memcmp(la, lb, sizeof(float) * (size_t)V) == 0);
    int best = 0;
    for (int v = 1; v < V; v++)
      best = la[v] > la[best] ? v : best;
    pos += n;
    n = 1;
    row = 0;
    toks[0] = best;
  }
  printf("split model: cuda:0 layers 0:1 -> NCCL -> cuda:1 layers 1:L equal the whole model on "
         "cuda:0 over a prefill and 7 decode steps, bit for bit\n");
  free(la);
  free(lb);
  sa_nccl_comm_destroy(&c0, 0);
  sa_nccl_comm_destroy(&c1, 0);
  sa_kv_destroy(&kv);
  sa_kv_destroy(&kv0);
  sa_kv_destroy(&kv1);
  sa_decoder_destroy(&full);
  sa_decoder_destroy(&s0);
  sa_decoder_destroy(&s1);
}

int main(void) {
  int n = sa_cuda_device_count();
  if (n <= 0) {
    printf("skipped: no GPU\n");
    return 77;
  }
  if (n < 2) {
    printf("skipped: needs 2 GPUs (found %d)\n", n);
    return 77;
  }
  if (!sa_nccl_available()) {
    printf("skipped: no NCCL in this build\n");
    return 77;
  }
  sa_backend_t *b0 = sa_backend_new("cuda:0", 1), *b1 = sa_backend_new("cuda:1", 1);
  CHECK(b0 && b1);
  test_buffers(b0, b1);
  test_recv_timeout(b0, b1);
  char dir[] = "/tmp/sa-cuda-nccl.XXXXXX";
  CHECK(mkdtemp(dir));
  char err[512];
  CHECK(sa_testmodel_write("tiny", 1234, dir, err, sizeof err) == 0);
  test_split_model(b0, b1, dir);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
  sa_backend_destroy(&b0);
  sa_backend_destroy(&b1);
  printf("PASS\n");
  return 0;
}
