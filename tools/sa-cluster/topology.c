/* topology — see topology.h. Uses libyaml's document API. */
#include "topology.h"

#include "sa_error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

typedef struct {
  yaml_document_t *doc;
  char *err;
  size_t cap;
} ctx_t;

static yaml_node_t *map_get(ctx_t *c, yaml_node_t *map, const char *key) {
  if (!map || map->type != YAML_MAPPING_NODE)
    return NULL;
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start;
       p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
    if (k && k->type == YAML_SCALAR_NODE &&
        strcmp((const char *)k->data.scalar.value, key) == 0)
      return yaml_document_get_node(c->doc, p->value);
  }
  return NULL;
}

/* Copies scalar `key` of map into out. Missing is fine when !required. */
static int get_str(ctx_t *c, yaml_node_t *map, const char *key, char *out,
                   size_t cap, int required, const char *where) {
  yaml_node_t *n = map_get(c, map, key);
  if (!n) {
    if (required) {
      snprintf(c->err, c->cap, "%s: missing key '%s'", where, key);
      return SA_EFORMAT;
    }
    return 0;
  }
  if (n->type != YAML_SCALAR_NODE) {
    snprintf(c->err, c->cap, "%s: '%s' must be a scalar", where, key);
    return SA_EFORMAT;
  }
  if (n->data.scalar.length >= cap) {
    snprintf(c->err, c->cap, "%s: '%s' is too long", where, key);
    return SA_EFORMAT;
  }
  memcpy(out, n->data.scalar.value, n->data.scalar.length);
  out[n->data.scalar.length] = '\0';
  return 0;
}

static int parse_layers(const char *s, int *first, int *last) {
  char *end;
  long a = strtol(s, &end, 10);
  if (end == s || *end != ':')
    return SA_EFORMAT;
  const char *t = end + 1;
  long b = strtol(t, &end, 10);
  if (end == t || *end || a < 0 || b <= a || b > 100000)
    return SA_EFORMAT;
  *first = (int)a;
  *last = (int)b;
  return 0;
}

static int parse_stage(ctx_t *c, yaml_node_t *n, sa_topo_stage_t *s,
                       const char *where) {
  char layers[64] = "";
  int rc;
  s->first = s->last = -1;
  if ((rc = get_str(c, n, "listen", s->listen, sizeof s->listen, 1, where)))
    return rc;
  if ((rc = get_str(c, n, "layers", layers, sizeof layers, 0, where)))
    return rc;
  if (layers[0] && strcmp(layers, "auto") != 0 &&
      parse_layers(layers, &s->first, &s->last)) {
    snprintf(c->err, c->cap, "%s: layers '%s' must be A:B with 0 <= A < B",
             where, layers);
    return SA_EFORMAT;
  }
  return 0;
}

static int parse_root(ctx_t *c, yaml_node_t *root, sa_topo_t *t) {
  int rc;
  char buf[64];
  if (!root || root->type != YAML_MAPPING_NODE) {
    snprintf(c->err, c->cap, "topology: the document must be a mapping");
    return SA_EFORMAT;
  }
  if ((rc = get_str(c, root, "model", t->model, sizeof t->model, 1, "topology")))
    return rc;
  strcpy(t->run_dir, "build/cluster");
  if ((rc = get_str(c, root, "run_dir", t->run_dir, sizeof t->run_dir, 0, "topology")))
    return rc;
  t->threads = 1;
  buf[0] = '\0';
  if ((rc = get_str(c, root, "threads", buf, sizeof buf, 0, "topology")))
    return rc;
  if (buf[0]) {
    t->threads = atoi(buf);
    if (t->threads < 0 || t->threads > 1024) {
      snprintf(c->err, c->cap, "topology: threads must be 0..1024");
      return SA_EFORMAT;
    }
  }
  yaml_node_t *co = map_get(c, root, "coordinator");
  if (!co) {
    snprintf(c->err, c->cap, "topology: missing key 'coordinator'");
    return SA_EFORMAT;
  }
  if ((rc = get_str(c, co, "listen", t->coordinator, sizeof t->coordinator, 1,
                    "coordinator")))
    return rc;
  if ((rc = get_str(c, co, "http", t->coordinator_http,
                    sizeof t->coordinator_http, 0, "coordinator")))
    return rc;

  yaml_node_t *enc = map_get(c, root, "encoders");
  if (!enc || enc->type != YAML_SEQUENCE_NODE ||
      enc->data.sequence.items.top == enc->data.sequence.items.start) {
    snprintf(c->err, c->cap, "topology: 'encoders' must be a non-empty list");
    return SA_EFORMAT;
  }
  for (yaml_node_item_t *it = enc->data.sequence.items.start;
       it < enc->data.sequence.items.top; it++) {
    if (t->n_encoders == SA_TOPO_MAX) {
      snprintf(c->err, c->cap, "topology: more than %d encoders", SA_TOPO_MAX);
      return SA_EFORMAT;
    }
    yaml_node_t *e = yaml_document_get_node(c->doc, *it);
    if ((rc = get_str(c, e, "listen", t->encoders[t->n_encoders],
                      sizeof t->encoders[0], 1, "encoders[]")))
      return rc;
    t->n_encoders++;
  }

  yaml_node_t *reps = map_get(c, root, "replicas");
  if (!reps || reps->type != YAML_SEQUENCE_NODE ||
      reps->data.sequence.items.top == reps->data.sequence.items.start) {
    snprintf(c->err, c->cap, "topology: 'replicas' must be a non-empty list");
    return SA_EFORMAT;
  }
  for (yaml_node_item_t *it = reps->data.sequence.items.start;
       it < reps->data.sequence.items.top; it++) {
    if (t->n_replicas == SA_TOPO_MAX) {
      snprintf(c->err, c->cap, "topology: more than %d replicas", SA_TOPO_MAX);
      return SA_EFORMAT;
    }
    sa_topo_replica_t *r = &t->replicas[t->n_replicas];
    yaml_node_t *rn = yaml_document_get_node(c->doc, *it);
    snprintf(r->name, sizeof r->name, "r%d", t->n_replicas);
    strcpy(r->kv_mem, "64MiB");
    if ((rc = get_str(c, rn, "name", r->name, sizeof r->name, 0, "replicas[]")))
      return rc;
    if ((rc = get_str(c, rn, "kv_mem", r->kv_mem, sizeof r->kv_mem, 0, r->name)))
      return rc;
    yaml_node_t *st = map_get(c, rn, "stages");
    if (!st || st->type != YAML_SEQUENCE_NODE ||
        st->data.sequence.items.top == st->data.sequence.items.start) {
      snprintf(c->err, c->cap, "replica %s: 'stages' must be a non-empty list",
               r->name);
      return SA_EFORMAT;
    }
    for (yaml_node_item_t *si = st->data.sequence.items.start;
         si < st->data.sequence.items.top; si++) {
      if (r->n_stages == SA_TOPO_MAX) {
        snprintf(c->err, c->cap, "replica %s: too many stages", r->name);
        return SA_EFORMAT;
      }
      char where[96];
      snprintf(where, sizeof where, "replica %s stage %d", r->name, r->n_stages);
      if ((rc = parse_stage(c, yaml_document_get_node(c->doc, *si),
                            &r->stages[r->n_stages], where)))
        return rc;
      r->n_stages++;
    }
    t->n_replicas++;
  }
  return 0;
}

int sa_topo_parse(const char *yaml, size_t len, sa_topo_t *t, char *err,
                  size_t cap) {
  memset(t, 0, sizeof *t);
  yaml_parser_t parser;
  yaml_document_t doc;
  if (!yaml_parser_initialize(&parser)) {
    snprintf(err, cap, "topology: out of memory");
    return SA_ENOMEM;
  }
  yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
  if (!yaml_parser_load(&parser, &doc)) {
    snprintf(err, cap, "topology: YAML error at line %zu: %s",
             parser.problem_mark.line + 1,
             parser.problem ? parser.problem : "unknown");
    yaml_parser_delete(&parser);
    return SA_EFORMAT;
  }
  ctx_t c = {&doc, err, cap};
  int rc = parse_root(&c, yaml_document_get_root_node(&doc), t);
  yaml_document_delete(&doc);
  yaml_parser_delete(&parser);
  return rc;
}

int sa_topo_resolve_layers(sa_topo_t *t, int n_layers, char *err, size_t cap) {
  for (int r = 0; r < t->n_replicas; r++) {
    sa_topo_replica_t *rp = &t->replicas[r];
    if (rp->n_stages > n_layers) {
      snprintf(err, cap, "replica %s: %d stages but the model has %d layers",
               rp->name, rp->n_stages, n_layers);
      return SA_EINVAL;
    }
    int at = 0;
    for (int s = 0; s < rp->n_stages; s++) {
      sa_topo_stage_t *st = &rp->stages[s];
      if (st->first < 0) { /* even split of what remains */
        st->first = at;
        st->last = (int)((long)n_layers * (s + 1) / rp->n_stages);
      }
      if (st->first != at || st->last <= st->first || st->last > n_layers) {
        snprintf(err, cap,
                 "replica %s stage %d: layers %d:%d do not continue at %d "
                 "within [0, %d)",
                 rp->name, s, st->first, st->last, at, n_layers);
        return SA_EINVAL;
      }
      at = st->last;
    }
    if (at != n_layers) {
      snprintf(err, cap, "replica %s: stages cover [0, %d) but the model has %d layers",
               rp->name, at, n_layers);
      return SA_EINVAL;
    }
  }
  return 0;
}
