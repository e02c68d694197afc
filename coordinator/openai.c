/*
 * openai — chat-completions request bodies to request parameters (see
 * openai.h).
 */
#include "openai.h"

#include "sa_error.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  char *err;
  size_t cap;
  char *param;
  size_t pcap;
} errs_t;

static int bad(errs_t *e, const char *param, const char *fmt, const char *arg) {
  snprintf(e->param, e->pcap, "%s", param ? param : "");
  snprintf(e->err, e->cap, fmt, arg ? arg : "");
  return SA_EINVAL;
}

/* Appends s to *buf (NUL-terminated, grown). */
static int cat(char **buf, const char *s) {
  size_t a = *buf ? strlen(*buf) : 0, b = strlen(s);
  char *n = realloc(*buf, a + b + 1);
  if (!n)
    return SA_ENOMEM;
  memcpy(n + a, s, b + 1);
  *buf = n;
  return 0;
}

static int too_many_parts(errs_t *e, const char *param) {
  char n[16];
  snprintf(n, sizeof n, "%d", COORD_MAX_PARTS);
  return bad(e, param, "more than %s content parts in the conversation", n);
}

/* The next part of the message being read: its role, and whether it opens
 * the message's turn. */
static coord_part_t next_part(coord_openai_req_t *out) {
  coord_part_t q = {.role = out->role, .new_turn = out->turn_pending};
  out->turn_pending = false;
  return q;
}

/* Appends a text part (joined to a text part just before it in the same
 * message). */
static int add_text(coord_openai_req_t *out, const char *t, errs_t *e) {
  int rc = cat(&out->prompt, t);
  if (rc)
    return rc;
  coord_request_params_t *p = &out->p;
  if (!out->turn_pending && p->n_parts > 0 && p->parts[p->n_parts - 1].text) {
    char **last = (char **)&out->owned[p->n_parts - 1];
    if ((rc = cat(last, t)))
      return rc;
    p->parts[p->n_parts - 1].text = *last;
    return 0;
  }
  if (p->n_parts == COORD_MAX_PARTS)
    return too_many_parts(e, "messages");
  char *copy = strdup(t);
  if (!copy)
    return SA_ENOMEM;
  out->owned[p->n_parts] = copy;
  coord_part_t q = next_part(out);
  q.text = copy;
  p->parts[p->n_parts++] = q;
  return 0;
}

/* Decodes base64 b64[n] into a new audio part. */
static int decode_b64(const char *b64, size_t n, const coord_openai_limits_t *lim,
                      coord_openai_req_t *out, errs_t *e, const char *param) {
  coord_request_params_t *p = &out->p;
  if (p->n_parts == COORD_MAX_PARTS)
    return too_many_parts(e, param);
  size_t max = n / 4 * 3 + 3;
  if (out->audio_bytes + max > lim->max_audio_bytes + 3) {
    snprintf(e->param, e->pcap, "%s", param);
    snprintf(e->err, e->cap, "audio is larger than the limit of %zu bytes (all parts together)",
             lim->max_audio_bytes);
    return SA_EINVAL;
  }
  uint8_t *bin = malloc(max ? max : 1);
  if (!bin)
    return SA_ENOMEM;
  size_t len = 0;
  const char *end = NULL;
  if (sodium_base642bin(bin, max, b64, n, " \r\n", &len, &end,
                        sodium_base64_VARIANT_ORIGINAL) != 0 ||
      (end && end != b64 + n)) {
    free(bin);
    return bad(e, param, "audio data is not valid base64%s", NULL);
  }
  if (len == 0) {
    free(bin);
    return bad(e, param, "audio data is empty%s", NULL);
  }
  out->owned[p->n_parts] = bin;
  coord_part_t q = next_part(out);
  q.audio = bin;
  q.audio_len = len;
  p->parts[p->n_parts++] = q;
  out->audio_bytes += len;
  out->n_audio++;
  return 0;
}

/* One audio part: input_audio {data, format} or audio_url {url: data:…}. */
static int audio_part(const cJSON *part, const char *type, const coord_openai_limits_t *lim,
                      coord_openai_req_t *out, errs_t *e) {
  if (!strcmp(type, "input_audio")) {
    const cJSON *ia = cJSON_GetObjectItemCaseSensitive(part, "input_audio");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(ia, "data");
    if (!cJSON_IsString(d))
      return bad(e, "messages", "input_audio.data must be a base64 string%s", NULL);
    return decode_b64(d->valuestring, strlen(d->valuestring), lim, out, e, "messages");
  }
  const cJSON *au = cJSON_GetObjectItemCaseSensitive(part, "audio_url");
  const cJSON *u = cJSON_GetObjectItemCaseSensitive(au, "url");
  if (!cJSON_IsString(u))
    return bad(e, "messages", "audio_url.url must be a string%s", NULL);
  const char *url = u->valuestring;
  const char *comma = strchr(url, ',');
  if (strncmp(url, "data:", 5) != 0 || !comma)
    return bad(e, "messages", "only data: URLs are accepted for audio_url%s", NULL);
  if (!strstr(url, ";base64") || strstr(url, ";base64") > comma)
    return bad(e, "messages", "audio_url data must be base64%s", NULL);
  return decode_b64(comma + 1, strlen(comma + 1), lim, out, e, "messages");
}

/* A user turn's content: a string, or parts in order. */
static int user_content(const cJSON *content, const coord_openai_limits_t *lim,
                        coord_openai_req_t *out, errs_t *e) {
  if (cJSON_IsString(content))
    return add_text(out, content->valuestring, e);
  if (!cJSON_IsArray(content))
    return bad(e, "messages", "content must be a string or a list of parts%s", NULL);
  const cJSON *part;
  cJSON_ArrayForEach(part, content) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "type");
    if (!cJSON_IsString(t))
      return bad(e, "messages", "every content part needs a \"type\"%s", NULL);
    if (!strcmp(t->valuestring, "text")) {
      const cJSON *tx = cJSON_GetObjectItemCaseSensitive(part, "text");
      if (!cJSON_IsString(tx))
        return bad(e, "messages", "a text part needs a \"text\" string%s", NULL);
      int rc = add_text(out, tx->valuestring, e);
      if (rc)
        return rc;
    } else if (!strcmp(t->valuestring, "input_audio") || !strcmp(t->valuestring, "audio_url")) {
      int rc = audio_part(part, t->valuestring, lim, out, e);
      if (rc)
        return rc;
    } else {
      return bad(e, "messages", "unknown content part type '%s'", t->valuestring);
    }
  }
  return 0;
}

/* A system turn: a string or text parts, joined. */
static int system_content(const cJSON *content, char **dst, errs_t *e) {
  if (cJSON_IsString(content))
    return cat(dst, content->valuestring);
  if (!cJSON_IsArray(content))
    return bad(e, "messages", "system content must be a string or text parts%s", NULL);
  const cJSON *part;
  cJSON_ArrayForEach(part, content) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "type");
    const cJSON *tx = cJSON_GetObjectItemCaseSensitive(part, "text");
    if (!cJSON_IsString(t) || strcmp(t->valuestring, "text") || !cJSON_IsString(tx))
      return bad(e, "messages", "system content parts must be text%s", NULL);
    int rc = cat(dst, tx->valuestring);
    if (rc)
      return rc;
  }
  return 0;
}

/* An assistant turn or a later system turn: text only (null = empty). */
static int text_turn(const cJSON *content, const char *role, coord_openai_req_t *out,
                     errs_t *e) {
  if (!content || cJSON_IsNull(content))
    return 0;
  if (cJSON_IsArray(content)) {
    const cJSON *part;
    cJSON_ArrayForEach(part, content) {
      const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "type");
      if (cJSON_IsString(t) && strcmp(t->valuestring, "text"))
        return bad(e, "messages", "%s content can only be text (audio goes in user turns)",
                   role);
    }
  }
  char *text = NULL;
  int rc = system_content(content, &text, e);
  if (rc == SA_EINVAL)
    snprintf(e->err, e->cap, "%s content must be a string or text parts", role);
  if (rc == 0) /* an empty list of parts leaves text NULL: an empty turn */
    rc = add_text(out, text ? text : "", e);
  free(text);
  return rc;
}

/* The conversation. The first system message becomes the system text; the
 * rest become turns in order. How it ends (vLLM's rules): a last assistant
 * message with continue_final_message is a prefix that generation
 * continues; otherwise add_generation_prompt (default true) appends the
 * template's "<|BOT|>assistant\n<think>\n". */
static int messages(const cJSON *msgs, const cJSON *root, const coord_openai_limits_t *lim,
                    coord_openai_req_t *out, errs_t *e) {
  if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
    return bad(e, "messages", "messages must be a non-empty list%s", NULL);
  int users = 0, i = 0;
  bool continues = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "continue_final_message"));
  const cJSON *agp = cJSON_GetObjectItemCaseSensitive(root, "add_generation_prompt");
  bool add_gen = !cJSON_IsFalse(agp);
  bool assistant_last = false;
  const cJSON *m;
  cJSON_ArrayForEach(m, msgs) {
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (!cJSON_IsObject(m) || !cJSON_IsString(role))
      return bad(e, "messages", "every message needs a \"role\" string%s", NULL);
    const char *r = role->valuestring;
    int rc = 0;
    bool first = i++ == 0;
    out->turn_pending = true;
    assistant_last = false;
    if (!strcmp(r, "system") && first) {
      out->turn_pending = false;
      rc = system_content(content, &out->system, e);
    } else if (!strcmp(r, "system")) {
      out->role = SA_CHAT_SYSTEM;
      rc = text_turn(content, "system", out, e);
    } else if (!strcmp(r, "user") || !strcmp(r, "human")) {
      users++;
      out->role = SA_CHAT_HUMAN;
      rc = user_content(content, lim, out, e);
    } else if (!strcmp(r, "assistant")) {
      out->role = SA_CHAT_ASSISTANT;
      rc = text_turn(content, "assistant", out, e);
      assistant_last = true;
    } else {
      return bad(e, "messages", "unknown role '%s' (system, user, human or assistant)", r);
    }
    if (rc == 0 && out->turn_pending) /* an empty message is still a turn */
      rc = add_text(out, "", e);
    if (rc)
      return rc;
  }
  if (users == 0)
    return bad(e, "messages", "a user (or human) message is required%s", NULL);
  if (continues && !assistant_last)
    return bad(e, "continue_final_message", "continue_final_message needs a final assistant "
                                            "message to continue%s", NULL);
  if (continues && cJSON_IsTrue(agp))
    return bad(e, "add_generation_prompt", "add_generation_prompt and continue_final_message "
                                           "cannot both be true%s", NULL);
  if (continues)
    out->p.chat_flags |= SA_CHAT_CONTINUE;
  else if (!add_gen)
    out->p.chat_flags |= SA_CHAT_NO_GEN_PROMPT;
  return 0;
}

/* *v gets the number `name` if present; type and range errors name it. */
static int num(const cJSON *root, const char *name, double lo, double hi, double *v, bool *set,
               errs_t *e) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, name);
  if (set)
    *set = false;
  if (!x || cJSON_IsNull(x))
    return 0;
  if (!cJSON_IsNumber(x) || !isfinite(x->valuedouble) || x->valuedouble < lo ||
      x->valuedouble > hi) {
    snprintf(e->param, e->pcap, "%s", name);
    snprintf(e->err, e->cap, "%s must be a number in [%g, %g]", name, lo, hi);
    return SA_EINVAL;
  }
  *v = x->valuedouble;
  if (set)
    *set = true;
  return 0;
}

static int integer(const cJSON *root, const char *name, double lo, double hi, double *v,
                   bool *set, errs_t *e) {
  int rc = num(root, name, lo, hi, v, set, e);
  if (rc == 0 && (!set || *set) && *v != floor(*v)) {
    snprintf(e->param, e->pcap, "%s", name);
    snprintf(e->err, e->cap, "%s must be an integer", name);
    return SA_EINVAL;
  }
  return rc;
}

static int sampling(const cJSON *root, const coord_openai_limits_t *lim,
                    coord_openai_req_t *out, errs_t *e) {
  coord_request_params_t *p = &out->p;
  double v;
  bool set;
  int rc;
  p->max_tokens = lim->default_max_tokens;
  if ((rc = integer(root, "max_completion_tokens", 1, 1e9, &v, &set, e)))
    return rc;
  if (set) {
    p->max_tokens = (int)v;
    out->max_tokens_given = true;
  }
  if ((rc = integer(root, "max_tokens", 1, 1e9, &v, &set, e)))
    return rc;
  if (set) {
    p->max_tokens = (int)v;
    out->max_tokens_given = true;
  }
  p->n_chains = 1;
  if ((rc = integer(root, "n", 1, 1024, &v, &set, e)))
    return rc;
  if (set)
    p->n_chains = (int)v;
  if ((rc = num(root, "temperature", 0, 100, &v, &set, e)))
    return rc;
  p->sampling.temperature = set ? (float)v : 1.0f; /* OpenAI's default */
  p->sampling.top_p = 1.0f;
  if ((rc = num(root, "top_p", 0, 1, &v, &set, e)))
    return rc;
  if (set)
    p->sampling.top_p = (float)v;
  if ((rc = integer(root, "top_k", -1, 1e9, &v, &set, e)))
    return rc;
  if (set)
    p->sampling.top_k = v < 0 ? 0 : (int)v;
  if ((rc = num(root, "min_p", 0, 1, &v, &set, e)))
    return rc;
  if (set)
    p->sampling.min_p = (float)v;
  if ((rc = num(root, "repetition_penalty", 0, 100, &v, &set, e)))
    return rc;
  if (set)
    p->sampling.repetition_penalty = (float)v;
  if ((rc = integer(root, "seed", 0, 18446744073709551615.0, &v, &set, e)))
    return rc;
  if (set)
    p->sampling.seed = (uint64_t)v;
  if ((rc = integer(root, "think_budget", 0, 1e9, &v, &set, e)))
    return rc;
  if (set)
    p->think_budget = (int)v;
  p->vote_rule = SA__VOTE_RULE__VOTE_MAJORITY;
  const cJSON *vote = cJSON_GetObjectItemCaseSensitive(root, "vote");
  if (vote && !cJSON_IsNull(vote)) {
    const char *s = cJSON_IsString(vote) ? vote->valuestring : "";
    char *end = NULL;
    if (!strcmp(s, "none")) {
      p->vote_rule = SA__VOTE_RULE__VOTE_NONE;
    } else if (!strcmp(s, "majority")) {
      p->vote_rule = SA__VOTE_RULE__VOTE_MAJORITY;
    } else if (!strncmp(s, "window:", 7) && (p->vote_k = (int)strtol(s + 7, &end, 10)) >= 1 &&
               p->vote_k <= 1024 && end && !*end) {
      p->vote_rule = SA__VOTE_RULE__VOTE_FIRST_K_AGREE;
    } else {
      return bad(e, "vote", "vote must be \"none\", \"majority\" or \"window:K\"%s", NULL);
    }
  }
  return 0;
}

int coord_openai_parse(const char *body, size_t len, const coord_openai_limits_t *lim,
                       coord_openai_req_t *out, char *err, size_t cap, char *param,
                       size_t pcap) {
  memset(out, 0, sizeof *out);
  sa__sampling_params__init(&out->p.sampling);
  out->skip_special_tokens = true;
  errs_t e = {err, cap, param, pcap};
  snprintf(param, pcap, "%s", "");
  cJSON *root = cJSON_ParseWithLength(body, len);
  if (!root || !cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return bad(&e, NULL, "the body is not a JSON object%s", NULL);
  }
  int rc;
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  if (!cJSON_IsString(model) || strlen(model->valuestring) >= sizeof out->model) {
    rc = bad(&e, "model", "model must be a string naming the served model%s", NULL);
    goto done;
  }
  snprintf(out->model, sizeof out->model, "%s", model->valuestring);
  if ((rc = messages(cJSON_GetObjectItemCaseSensitive(root, "messages"), root, lim, out, &e)))
    goto done;
  if ((rc = sampling(root, lim, out, &e)))
    goto done;
  const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
  if (cJSON_IsString(stop) || cJSON_IsArray(stop)) {
    const cJSON *one = cJSON_IsString(stop) ? stop : NULL;
    int n = one ? 1 : cJSON_GetArraySize(stop);
    if (n > COORD_MAX_STOP) {
      rc = bad(&e, "stop", "at most 4 stop strings%s", NULL);
      goto done;
    }
    for (int i = 0; i < n; i++) {
      const cJSON *s = one ? one : cJSON_GetArrayItem(stop, i);
      if (!cJSON_IsString(s) || !s->valuestring[0] || strlen(s->valuestring) > COORD_STOP_BYTES) {
        rc = bad(&e, "stop", "stop strings must be non-empty strings of at most 64 bytes%s",
                 NULL);
        goto done;
      }
      out->p.stop[out->p.n_stop++] = s->valuestring; /* pointed into the copy below */
    }
  } else if (stop && !cJSON_IsNull(stop)) {
    rc = bad(&e, "stop", "stop must be a string or a list of strings%s", NULL);
    goto done;
  }
  for (int i = 0; i < out->p.n_stop; i++) { /* the JSON tree goes away at the end */
    snprintf(out->stop[i], sizeof out->stop[i], "%s", out->p.stop[i]);
    out->p.stop[i] = out->stop[i];
  }
  const cJSON *sti = cJSON_GetObjectItemCaseSensitive(root, "stop_token_ids");
  if (sti && !cJSON_IsNull(sti)) {
    const cJSON *id;
    if (!cJSON_IsArray(sti) || cJSON_GetArraySize(sti) > 16) {
      rc = bad(&e, "stop_token_ids", "stop_token_ids must be a list of at most 16 ids%s", NULL);
      goto done;
    }
    cJSON_ArrayForEach(id, sti) {
      if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > INT32_MAX ||
          id->valuedouble != floor(id->valuedouble)) {
        rc = bad(&e, "stop_token_ids", "stop_token_ids must hold non-negative integers%s",
                 NULL);
        goto done;
      }
      out->stop_token_ids[out->n_stop_token_ids++] = (int32_t)id->valuedouble;
    }
  }
  const cJSON *stream = cJSON_GetObjectItemCaseSensitive(root, "stream");
  out->stream = cJSON_IsTrue(stream);
  const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
  out->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage"));
  const cJSON *sst = cJSON_GetObjectItemCaseSensitive(root, "skip_special_tokens");
  if (cJSON_IsBool(sst))
    out->skip_special_tokens = cJSON_IsTrue(sst);
  if (!out->prompt && (rc = cat(&out->prompt, "")))
    goto done;
  out->p.system = out->system ? out->system : "";
  rc = 0;
done:
  cJSON_Delete(root);
  return rc;
}

void coord_openai_free(coord_openai_req_t *r) {
  free(r->system);
  free(r->prompt);
  for (int k = 0; k < COORD_MAX_PARTS; k++) {
    free(r->owned[k]);
    r->owned[k] = NULL;
  }
  r->system = r->prompt = NULL;
  r->p.n_parts = 0;
}
