/* sampler — see sampler.h. */
#include "sampler.h"

#include "log.h"
#include "sa_error.h"

#include <math.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- Philox */

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void sa_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2],
                      uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; r++) {
    if (r > 0) {
      k0 += PHILOX_W0;
      k1 += PHILOX_W1;
    }
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
    uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

uint64_t sa_rng_chain_seed(uint64_t seed, uint32_t chain) {
  if (chain == 0)
    return seed;
  uint64_t z = seed + (uint64_t)chain * 0x9e3779b97f4a7c15ull; /* splitmix64 */
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double sa_rng_uniform(uint64_t seed, uint32_t chain, uint64_t position,
                      uint32_t draw) {
  uint32_t ctr[4] = {(uint32_t)position, (uint32_t)(position >> 32), chain,
                     draw};
  uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  uint32_t o[4];
  sa_philox4x32_10(ctr, key, o);
  uint64_t bits = ((uint64_t)o[0] << 21) ^ ((uint64_t)o[1] >> 11); /* 53 */
  bits &= (1ull << 53) - 1;
  return (double)bits * (1.0 / 9007199254740992.0);
}

/* ---------------------------------------------------------------- params */

void sa_sampler_params_default(sa_sampler_params_t *p) {
  memset(p, 0, sizeof *p);
  p->temperature = 1.0f;
  p->top_k = 0;
  p->top_p = 1.0f;
  p->min_p = 0.0f;
  p->repetition_penalty = 1.0f;
}

int sa_sampler_params_check(const sa_sampler_params_t *p) {
  if (!p)
    return SA_EINVAL;
  if (!isfinite(p->temperature) || p->top_k < 0)
    return SA_EINVAL;
  if (!(p->top_p > 0.0f && p->top_p <= 1.0f) && !(p->top_p > 1.0f))
    return SA_EINVAL;
  if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
    return SA_EINVAL;
  if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
    return SA_EINVAL;
  return 0;
}

/* --------------------------------------------------------------- sampler */

typedef struct {
  float v; /* processed logit */
  int32_t id;
} cand_t;

struct sa_sampler {
  int V;
  float *w;         /* [V] processed logits */
  cand_t *c;        /* [V] candidates */
  uint32_t *stamp;  /* [V] penalty marks */
  uint32_t gen;
};

sa_sampler_t *sa_sampler_new(int V) {
  if (V <= 0) {
    SA_LOG_ERROR("sampler: bad vocabulary size %d", V);
    return NULL;
  }
  sa_sampler_t *s = calloc(1, sizeof *s);
  if (!s)
    goto fail;
  s->V = V;
  s->w = malloc(sizeof(float) * (size_t)V);
  s->c = malloc(sizeof(cand_t) * (size_t)V);
  s->stamp = calloc((size_t)V, sizeof(uint32_t));
  if (!s->w || !s->c || !s->stamp)
    goto fail;
  return s;
fail:
  SA_LOG_ERROR("sampler: out of memory for V=%d", V);
  sa_sampler_destroy(&s);
  return NULL;
}

void sa_sampler_destroy(sa_sampler_t **sp) {
  if (!sp || !*sp)
    return;
  sa_sampler_t *s = *sp;
  free(s->w);
  free(s->c);
  free(s->stamp);
  free(s);
  *sp = NULL;
}

/* Descending by value, ascending id on ties: one total order. */
static int cand_cmp(const void *a, const void *b) {
  const cand_t *x = a, *y = b;
  if (x->v > y->v)
    return -1;
  if (x->v < y->v)
    return 1;
  return (x->id > y->id) - (x->id < y->id);
}

/* "a ranks below b" in cand_cmp's order. */
static inline int cand_below(const cand_t *a, const cand_t *b) {
  return cand_cmp(a, b) > 0;
}

/* Min-heap (root = lowest-ranked) sift-down over h[0..n). */
static void heap_down(cand_t *h, int n, int i) {
  for (;;) {
    int l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && cand_below(&h[l], &h[m]))
      m = l;
    if (r < n && cand_below(&h[r], &h[m]))
      m = r;
    if (m == i)
      return;
    cand_t t = h[i];
    h[i] = h[m];
    h[m] = t;
    i = m;
  }
}

/* The k best of w[0..V) into c[0..k), sorted best first. */
static void select_top_k(cand_t *c, const float *w, int V, int k) {
  for (int i = 0; i < k; i++)
    c[i] = (cand_t){w[i], i};
  for (int i = k / 2 - 1; i >= 0; i--)
    heap_down(c, k, i);
  for (int i = k; i < V; i++) {
    cand_t x = {w[i], i};
    if (cand_below(&c[0], &x)) {
      c[0] = x;
      heap_down(c, k, 0);
    }
  }
  qsort(c, (size_t)k, sizeof(cand_t), cand_cmp);
}

/* The largest non-NaN value of x[0..n) (-inf if none): independent lanes of
 * `x > m ? x : m` (false for NaN; maxps computes exactly that with x first),
 * then the lanes and the tail. Exact: a max does not round. */
static float row_max(const float *x, int n) {
  float m = -INFINITY;
  int i = 0;
#ifdef __SSE2__
  __m128 l0 = _mm_set1_ps(-INFINITY), l1 = l0, l2 = l0, l3 = l0;
  for (; i + 16 <= n; i += 16) {
    l0 = _mm_max_ps(_mm_loadu_ps(x + i), l0);
    l1 = _mm_max_ps(_mm_loadu_ps(x + i + 4), l1);
    l2 = _mm_max_ps(_mm_loadu_ps(x + i + 8), l2);
    l3 = _mm_max_ps(_mm_loadu_ps(x + i + 12), l3);
  }
  float lane[16];
  _mm_storeu_ps(lane, l0);
  _mm_storeu_ps(lane + 4, l1);
  _mm_storeu_ps(lane + 8, l2);
  _mm_storeu_ps(lane + 12, l3);
  for (int j = 0; j < 16; j++)
    m = lane[j] > m ? lane[j] : m;
#endif
  for (; i < n; i++)
    m = x[i] > m ? x[i] : m;
  return m;
}

int sa_sampler_sample(sa_sampler_t *s, const sa_sampler_params_t *p,
                      const float *logits, int V, const int32_t *history,
                      size_t n_history, sa_sample_key_t key, int32_t *token,
                      float *logprob) {
  if (!s || !p || !logits || !token || V <= 0 || V > s->V ||
      (n_history && !history))
    return SA_EINVAL;
  int rc = sa_sampler_params_check(p);
  if (rc)
    return rc;
  float *w = s->w;

  /* Greedy with nothing that changes the logits and no logprob wanted: one
   * pass, no copy (the last stage does this for every greedy row of a step).
   * Same result as the general path below: NaN never wins, the first maximum
   * does, and a row whose maximum is not finite is refused. */
  if ((p->greedy || !(p->temperature > 0.0f)) && !logprob &&
      (p->repetition_penalty == 1.0f || n_history == 0)) {
    float best = row_max(logits, V);
    if (!isfinite(best))
      return SA_EINVAL;
    int32_t pick = 0;
    while (!(logits[pick] == best)) /* the first maximum; NaN never equals */
      pick++;
    *token = pick;
    return 0;
  }

  /* Raw log-softmax normaliser (for the reported logprob). NaN counts as
   * -inf everywhere. */
  float rmax = -INFINITY;
  for (int i = 0; i < V; i++) {
    float x = logits[i];
    w[i] = (x == x) ? x : -INFINITY;
    if (w[i] > rmax)
      rmax = w[i];
  }
  if (!(rmax > -INFINITY) || !isfinite(rmax))
    return SA_EINVAL;
  double rlse = 0.0; /* a pass over V: only when the caller wants it */
  if (logprob) {
    double rsum = 0.0;
    for (int i = 0; i < V; i++)
      rsum += exp((double)w[i] - rmax);
    rlse = rmax + log(rsum);
  }

  /* Repetition penalty, once per distinct token (HF gathers then scatters). */
  if (p->repetition_penalty != 1.0f && n_history) {
    if (++s->gen == 0) {
      memset(s->stamp, 0, sizeof(uint32_t) * (size_t)s->V);
      s->gen = 1;
    }
    float pen = p->repetition_penalty;
    for (size_t j = 0; j < n_history; j++) {
      int32_t t = history[j];
      if (t < 0 || t >= V || s->stamp[t] == s->gen)
        continue;
      s->stamp[t] = s->gen;
      w[t] = w[t] < 0 ? w[t] * pen : w[t] / pen;
    }
  }

  int32_t pick = -1;
  if (p->greedy || !(p->temperature > 0.0f)) {
    float best = -INFINITY;
    for (int i = 0; i < V; i++)
      if (w[i] > best) {
        best = w[i];
        pick = i;
      }
    if (pick < 0)
      return SA_EINVAL;
    goto done;
  }

  if (p->temperature != 1.0f) {
    float inv = 1.0f / p->temperature;
    for (int i = 0; i < V; i++)
      w[i] *= inv;
  }
  float wmax = -INFINITY;
  for (int i = 0; i < V; i++)
    if (w[i] > wmax)
      wmax = w[i];
  if (!(wmax > -INFINITY))
    return SA_EINVAL;

  cand_t *c = s->c;
  int n = 0;
  bool sorted = false;
  bool use_p = p->top_p < 1.0f;
  /* e_i = exp(w_i - wmax) in (0, 1]; the top token has e = 1. */
  if (p->top_k > 0 && p->top_k < V) {
    select_top_k(c, w, V, p->top_k);
    n = p->top_k;
    sorted = true;
    while (n > 1 && c[n - 1].v == -INFINITY)
      n--;
  }

  if (use_p) {
    double Z = 0.0; /* mass of the current set (top-k or all) */
    if (sorted) {
      for (int i = 0; i < n; i++)
        Z += exp((double)c[i].v - wmax);
    } else {
      /* Sort only the head: tokens with e >= tau hold the nucleus whenever
       * their mass reaches top_p * Z (everything below ranks behind them). */
      double tau = 1e-6, head = 0.0;
      for (int i = 0; i < V; i++) {
        double e = exp((double)w[i] - wmax);
        Z += e;
        if (e >= tau)
          head += e;
      }
      if (head < (double)p->top_p * Z)
        tau = 0.0;
      for (int i = 0; i < V; i++) {
        if (w[i] == -INFINITY)
          continue;
        if (exp((double)w[i] - wmax) >= tau)
          c[n++] = (cand_t){w[i], i};
      }
      qsort(c, (size_t)n, sizeof(cand_t), cand_cmp);
      sorted = true;
    }
    /* Keep a token while the mass strictly ahead of it is < top_p * Z. */
    double ahead = 0.0, lim = (double)p->top_p * Z;
    int keep = 0;
    while (keep < n && (keep == 0 || ahead < lim)) {
      ahead += exp((double)c[keep].v - wmax);
      keep++;
    }
    n = keep;
  }

  if (p->min_p > 0.0f) {
    /* Relative to the top token's probability, which no earlier stage
     * removes: keep e_i >= min_p. */
    double thr = (double)p->min_p;
    if (sorted) {
      int keep = 1;
      while (keep < n && exp((double)c[keep].v - wmax) >= thr)
        keep++;
      n = keep;
    } else {
      for (int i = 0; i < V; i++)
        if (w[i] > -INFINITY && exp((double)w[i] - wmax) >= thr)
          c[n++] = (cand_t){w[i], i};
      sorted = true; /* a candidate list now exists (id order) */
    }
  }

  /* One draw: inverse CDF over the candidates in their order (rank order
   * after truncation, id order for plain sampling). */
  double u = sa_rng_uniform(key.seed, key.chain, key.position, 0);
  if (sorted) {
    double mass = 0.0;
    for (int i = 0; i < n; i++)
      mass += exp((double)c[i].v - wmax);
    double target = u * mass, cum = 0.0;
    pick = c[n - 1].id;
    for (int i = 0; i < n; i++) {
      cum += exp((double)c[i].v - wmax);
      if (cum > target) {
        pick = c[i].id;
        break;
      }
    }
  } else {
    double mass = 0.0;
    for (int i = 0; i < V; i++)
      mass += exp((double)w[i] - wmax);
    double target = u * mass, cum = 0.0;
    for (int i = 0; i < V; i++) {
      if (w[i] == -INFINITY)
        continue;
      pick = i;
      cum += exp((double)w[i] - wmax);
      if (cum > target)
        break;
    }
  }

done:
  *token = pick;
  if (logprob) {
    float x = logits[pick];
    *logprob = (x == x) ? (float)((double)x - rlse) : -INFINITY;
  }
  return 0;
}
