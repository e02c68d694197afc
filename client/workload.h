/*
 * workload — the request mix sa-load sends, from a JSON file:
 *
 *   {"items": [
 *     {"clip": "clips/a.wav", "prompt": "How many beeps?", "n": 8,
 *      "max_tokens": 64, "temperature": 0.7, "weight": 3},
 *     {"prompt": "Say hi", "max_tokens": 16}
 *   ]}
 *
 * Per item: clip (a path, relative to the file's folder; none = text only,
 * then prompt is needed), prompt, system, n (1..1024), max_tokens
 * (1..1<<20, default 64), think_budget, temperature, top_p, top_k, min_p,
 * repetition_penalty, vote ("majority", "none", "window:K"), weight (> 0,
 * default 1: items are drawn in proportion). Unknown keys are errors (a typo
 * must not silently change an experiment). At most 4096 items.
 *
 * Parsing is separate from reading clips so that the parser can be fuzzed.
 */
#ifndef SA_CLIENT_WORKLOAD_H
#define SA_CLIENT_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  char *clip;              /* as written in the file, or NULL */
  uint8_t *audio;          /* after sa_workload_load_clips */
  size_t audio_len;
  char *prompt, *system;   /* NULL = none */
  int n, max_tokens, think_budget, top_k;
  float temperature, top_p, min_p, repetition_penalty;
  int vote_rule, vote_k;   /* Sa__VoteRule */
  double weight;
} sa_work_item_t;

typedef struct {
  sa_work_item_t *items;
  int n_items;
  double total_weight;
} sa_workload_t;

/* Parses text[0..len) into *w (zeroed first). Returns 0, or SA_EINVAL with
 * the reason (and the item) in err. *w is empty after a failure. */
int sa_workload_parse(const char *text, size_t len, sa_workload_t *w, char *err, size_t cap);

/* Reads every item's clip, relative to base_dir (NULL = as written), up to
 * max_bytes each. Returns 0, or an SA_E* code with the reason in err. */
int sa_workload_load_clips(sa_workload_t *w, const char *base_dir, size_t max_bytes, char *err,
                           size_t cap);

/* The item for u in [0, 1): by weight. */
const sa_work_item_t *sa_workload_pick(const sa_workload_t *w, double u);

void sa_workload_free(sa_workload_t *w);

#endif
