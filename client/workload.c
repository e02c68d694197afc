/*
 * workload — sa-load's request mix from JSON (see workload.h).
 */
#include "workload.h"

#include "common.h"

#include "sa.pb-c.h"
#include "sa_error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ITEMS 4096

static const char *const known_keys[] = {
    "clip",  "prompt", "system", "n",     "max_tokens",         "think_budget", "temperature",
    "top_p", "top_k",  "min_p",  "vote",  "repetition_penalty", "weight",       NULL};

static char *dup_str(const cJSON *o, const char *key, int *rc, int i, char *err, size_t cap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v)
    return NULL;
  if (!cJSON_IsString(v)) {
    sa_set_err(err, cap, "item %d: %s must be a string", i, key);
    *rc = SA_EINVAL;
    return NULL;
  }
  char *s = strdup(v->valuestring);
  if (!s)
    *rc = SA_ENOMEM;
  return s;
}

/* A number field in [lo, hi] (integral if want_int); absent keeps *out. */
static int get_num(const cJSON *o, const char *key, double lo, double hi, int want_int,
                   double *out, int i, char *err, size_t cap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v)
    return 0;
  double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
  if (!isfinite(d) || d < lo || d > hi || (want_int && d != floor(d))) {
    sa_set_err(err, cap, "item %d: %s must be %s in [%g, %g]", i, key,
               want_int ? "an integer" : "a number", lo, hi);
    return SA_EINVAL;
  }
  *out = d;
  return 0;
}

static int parse_vote(const cJSON *o, sa_work_item_t *it, int i, char *err, size_t cap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "vote");
  it->vote_rule = SA__VOTE_RULE__VOTE_MAJORITY;
  if (!v)
    return 0;
  const char *s = cJSON_IsString(v) ? v->valuestring : "";
  if (!strcmp(s, "majority"))
    return 0;
  if (!strcmp(s, "none")) {
    it->vote_rule = SA__VOTE_RULE__VOTE_NONE;
    return 0;
  }
  char *end;
  long k = 0;
  if (!strncmp(s, "window:", 7)) {
    errno = 0;
    k = strtol(s + 7, &end, 10);
    if (end != s + 7 && !*end && !errno && k >= 1 && k <= 1024) {
      it->vote_rule = SA__VOTE_RULE__VOTE_FIRST_K_AGREE;
      it->vote_k = (int)k;
      return 0;
    }
  }
  sa_set_err(err, cap, "item %d: vote must be \"majority\", \"none\" or \"window:K\" (K 1..1024)",
             i);
  return SA_EINVAL;
}

static int parse_item(const cJSON *o, sa_work_item_t *it, int i, char *err, size_t cap) {
  if (!cJSON_IsObject(o)) {
    sa_set_err(err, cap, "item %d: not an object", i);
    return SA_EINVAL;
  }
  for (const cJSON *k = o->child; k; k = k->next) {
    int j = 0;
    while (known_keys[j] && strcmp(known_keys[j], k->string))
      j++;
    if (!known_keys[j]) {
      sa_set_err(err, cap, "item %d: unknown key \"%s\"", i, k->string);
      return SA_EINVAL;
    }
  }
  int rc = 0;
  it->clip = dup_str(o, "clip", &rc, i, err, cap);
  if (!rc)
    it->prompt = dup_str(o, "prompt", &rc, i, err, cap);
  if (!rc)
    it->system = dup_str(o, "system", &rc, i, err, cap);
  if (rc)
    return rc;
  if (it->clip && !it->clip[0]) {
    sa_set_err(err, cap, "item %d: clip is empty", i);
    return SA_EINVAL;
  }
  if (!it->clip && (!it->prompt || !it->prompt[0])) {
    sa_set_err(err, cap, "item %d: needs a clip or a prompt", i);
    return SA_EINVAL;
  }
  double n = 1, max_tokens = 64, budget = 0, top_k = 0, t = 0, top_p = 0, min_p = 0, rep = 0,
         weight = 1;
  if ((rc = get_num(o, "n", 1, 1024, 1, &n, i, err, cap)) ||
      (rc = get_num(o, "max_tokens", 1, 1 << 20, 1, &max_tokens, i, err, cap)) ||
      (rc = get_num(o, "think_budget", 0, 1 << 20, 1, &budget, i, err, cap)) ||
      (rc = get_num(o, "top_k", 0, 1 << 20, 1, &top_k, i, err, cap)) ||
      (rc = get_num(o, "temperature", 0, 100, 0, &t, i, err, cap)) ||
      (rc = get_num(o, "top_p", 0, 1, 0, &top_p, i, err, cap)) ||
      (rc = get_num(o, "min_p", 0, 1, 0, &min_p, i, err, cap)) ||
      (rc = get_num(o, "repetition_penalty", 0, 100, 0, &rep, i, err, cap)) ||
      (rc = get_num(o, "weight", 1e-9, 1e9, 0, &weight, i, err, cap)))
    return rc;
  it->n = (int)n;
  it->max_tokens = (int)max_tokens;
  it->think_budget = (int)budget;
  it->top_k = (int)top_k;
  it->temperature = (float)t;
  it->top_p = (float)top_p;
  it->min_p = (float)min_p;
  it->repetition_penalty = (float)rep;
  it->weight = weight;
  return parse_vote(o, it, i, err, cap);
}

int sa_workload_parse(const char *text, size_t len, sa_workload_t *w, char *err, size_t cap) {
  memset(w, 0, sizeof *w);
  cJSON *root = cJSON_ParseWithLength(text, len);
  if (!root) {
    sa_set_err(err, cap, "not valid JSON (near byte %zu)",
               cJSON_GetErrorPtr() ? (size_t)(cJSON_GetErrorPtr() - text) : (size_t)0);
    return SA_EINVAL;
  }
  int rc = 0;
  const cJSON *items = cJSON_GetObjectItemCaseSensitive(root, "items");
  int n = cJSON_IsArray(items) ? cJSON_GetArraySize(items) : -1;
  if (!cJSON_IsObject(root) || n < 1 || n > MAX_ITEMS) {
    sa_set_err(err, cap, "the workload must be an object with \"items\": a list of 1..%d items",
               MAX_ITEMS);
    rc = SA_EINVAL;
  } else if (!(w->items = calloc((size_t)n, sizeof *w->items))) {
    rc = SA_ENOMEM;
  } else {
    const cJSON *o;
    cJSON_ArrayForEach(o, items) {
      rc = parse_item(o, &w->items[w->n_items], w->n_items, err, cap);
      w->n_items++;
      if (rc)
        break;
      w->total_weight += w->items[w->n_items - 1].weight;
    }
  }
  cJSON_Delete(root);
  if (rc)
    sa_workload_free(w);
  return rc;
}

int sa_workload_load_clips(sa_workload_t *w, const char *base_dir, size_t max_bytes, char *err,
                           size_t cap) {
  for (int i = 0; i < w->n_items; i++) {
    sa_work_item_t *it = &w->items[i];
    if (!it->clip || it->audio)
      continue;
    char path[4096];
    if (base_dir && it->clip[0] != '/')
      snprintf(path, sizeof path, "%s/%s", base_dir, it->clip);
    else
      snprintf(path, sizeof path, "%s", it->clip);
    int rc = sa_client_read_file(path, max_bytes, &it->audio, &it->audio_len, err, cap);
    if (rc)
      return rc;
  }
  return 0;
}

const sa_work_item_t *sa_workload_pick(const sa_workload_t *w, double u) {
  double at = u * w->total_weight;
  for (int i = 0; i < w->n_items; i++) {
    at -= w->items[i].weight;
    if (at < 0)
      return &w->items[i];
  }
  return &w->items[w->n_items - 1];
}

void sa_workload_free(sa_workload_t *w) {
  for (int i = 0; i < w->n_items; i++) {
    free(w->items[i].clip);
    free(w->items[i].audio);
    free(w->items[i].prompt);
    free(w->items[i].system);
  }
  free(w->items);
  memset(w, 0, sizeof *w);
}
