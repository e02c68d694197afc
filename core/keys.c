/* keys — CurveZMQ key files and allow-lists; see keys.h. */
#include "keys.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "sa_error.h"

#define MAX_CERT_BYTES 4096

static const struct {
  sa_role_t role;
  const char *name;
} k_roles[] = {{SA_ROLE_COORDINATOR, "coordinator"},
               {SA_ROLE_ENCODER, "encoder"},
               {SA_ROLE_STAGE, "stage"},
               {SA_ROLE_CLIENT, "client"},
               {SA_ROLE_OPERATOR, "operator"}};

sa_role_t sa_role_parse(const char *s) {
  for (size_t i = 0; s && i < sizeof k_roles / sizeof k_roles[0]; i++)
    if (!strcmp(s, k_roles[i].name))
      return k_roles[i].role;
  return SA_ROLE_NONE;
}

const char *sa_role_name(sa_role_t r) {
  for (size_t i = 0; i < sizeof k_roles / sizeof k_roles[0]; i++)
    if (k_roles[i].role == r)
      return k_roles[i].name;
  return "none";
}

void sa_key_fingerprint(const char *public_key, char out[13]) {
  snprintf(out, 13, "%.12s", public_key ? public_key : "");
}

static bool z85_key_ok(const char *k) {
  uint8_t raw[32];
  return strlen(k) == 40 && zmq_z85_decode(raw, k) != NULL;
}

/* ---------------------------------------------------------------- parse */

/* One "name = value" line of a section: value quoted ("...") or bare. */
static int parse_property(const char *s, const char *end, char *name, size_t ncap, char *value,
                          size_t vcap) {
  const char *p = s;
  while (p < end && (*p == ' ' || *p == '\t'))
    p++;
  const char *n0 = p;
  while (p < end && *p != '=' && *p != ' ' && *p != '\t')
    p++;
  size_t nl = (size_t)(p - n0);
  while (p < end && (*p == ' ' || *p == '\t'))
    p++;
  if (nl == 0 || nl >= ncap || p == end || *p != '=')
    return SA_EINVAL;
  p++;
  while (p < end && (*p == ' ' || *p == '\t'))
    p++;
  const char *v0 = p, *v1;
  if (p < end && *p == '"') {
    v0 = ++p;
    while (p < end && *p != '"')
      p++;
    if (p == end)
      return SA_EINVAL;
    v1 = p++;
    while (p < end && (*p == ' ' || *p == '\t'))
      p++;
    if (p < end && *p != '#')
      return SA_EINVAL;
  } else {
    while (p < end && *p != '#')
      p++;
    v1 = p;
    while (v1 > v0 && (v1[-1] == ' ' || v1[-1] == '\t'))
      v1--;
  }
  size_t vl = (size_t)(v1 - v0);
  if (vl >= vcap || memchr(v0, 0, vl))
    return SA_EINVAL;
  memcpy(name, n0, nl);
  name[nl] = 0;
  memcpy(value, v0, vl);
  value[vl] = 0;
  return 0;
}

int sa_cert_parse(const char *text, size_t len, sa_cert_t *out, char *err, size_t cap) {
  memset(out, 0, sizeof *out);
  if (!text || len > MAX_CERT_BYTES) {
    sa_set_err(err, cap, "not a key file (over %d bytes)", MAX_CERT_BYTES);
    return SA_EINVAL;
  }
  char section[32] = "";
  char role[32] = "";
  int line = 0;
  const char *p = text, *end = text + len;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol)
      eol = end;
    const char *le = eol;
    if (le > p && le[-1] == '\r')
      le--;
    line++;
    const char *q = p;
    while (q < le && (*q == ' ' || *q == '\t'))
      q++;
    bool indented = q > p;
    if (q < le && *q != '#') {
      if (!indented) { /* a section name */
        size_t n = (size_t)(le - q);
        while (n > 0 && (q[n - 1] == ' ' || q[n - 1] == '\t'))
          n--;
        if (n >= sizeof section) {
          sa_set_err(err, cap, "line %d: section name too long", line);
          goto fail;
        }
        memcpy(section, q, n);
        section[n] = 0;
      } else {
        char name[32], value[128];
        if (parse_property(q, le, name, sizeof name, value, sizeof value)) {
          sa_set_err(err, cap, "line %d: not a 'name = \"value\"' line", line);
          goto fail;
        }
        if (!strcmp(section, "metadata") && !strcmp(name, "name"))
          snprintf(out->name, sizeof out->name, "%s", value);
        else if (!strcmp(section, "metadata") && !strcmp(name, "role"))
          snprintf(role, sizeof role, "%s", value);
        else if (!strcmp(section, "curve") && !strcmp(name, "public-key"))
          snprintf(out->public_key, sizeof out->public_key, "%.40s", value);
        else if (!strcmp(section, "curve") && !strcmp(name, "secret-key"))
          snprintf(out->secret_key, sizeof out->secret_key, "%.40s", value);
        if ((!strcmp(name, "public-key") || !strcmp(name, "secret-key")) &&
            !strcmp(section, "curve") && !z85_key_ok(value)) {
          sa_set_err(err, cap, "line %d: %s is not 40 characters of Z85", line, name);
          goto fail;
        }
      }
    }
    p = eol < end ? eol + 1 : end;
  }
  if (!out->public_key[0]) {
    sa_set_err(err, cap, "no curve public-key");
    goto fail;
  }
  out->role = sa_role_parse(role);
  if (out->role == SA_ROLE_NONE) {
    sa_set_err(err, cap, "metadata role '%s' is not coordinator, encoder, stage, client or operator",
               role);
    goto fail;
  }
  if (out->secret_key[0]) {
    char derived[SA_KEY_Z85];
    if (zmq_curve_public(derived, out->secret_key) != 0 ||
        strcmp(derived, out->public_key) != 0) {
      sa_set_err(err, cap, "the secret key does not belong to the public key");
      goto fail;
    }
  }
  return 0;
fail:
  memset(out, 0, sizeof *out);
  return SA_EINVAL;
}

/* ----------------------------------------------------------------- files */

int sa_cert_load(const char *path, bool want_secret, sa_cert_t *out, char *err, size_t cap) {
  memset(out, 0, sizeof *out);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    sa_set_err(err, cap, "%s: %s", path, strerror(errno));
    return errno == ENOENT ? SA_ENOENT : SA_EIO;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    sa_set_err(err, cap, "%s: not a regular file", path);
    return SA_EINVAL;
  }
  char buf[MAX_CERT_BYTES + 1];
  ssize_t n = read(fd, buf, sizeof buf);
  close(fd);
  if (n < 0 || n > MAX_CERT_BYTES) {
    sa_set_err(err, cap, "%s: %s", path, n < 0 ? strerror(errno) : "too large for a key file");
    return SA_EINVAL;
  }
  char why[256];
  if (sa_cert_parse(buf, (size_t)n, out, why, sizeof why) != 0) {
    sa_set_err(err, cap, "%s: %s", path, why);
    return SA_EINVAL;
  }
  if (want_secret && !out->secret_key[0]) {
    sa_set_err(err, cap, "%s: holds no secret key (a .pub file? give the .key)", path);
    memset(out, 0, sizeof *out);
    return SA_EINVAL;
  }
  if (want_secret && (st.st_mode & 077)) {
    sa_set_err(err, cap,
               "%s: a secret key must be readable by its owner alone (mode %04o; run "
               "chmod 600 %s)",
               path, (unsigned)(st.st_mode & 07777), path);
    memset(out, 0, sizeof *out);
    return SA_EPERM;
  }
  return 0;
}

int sa_cert_generate(const char *name, sa_role_t role, sa_cert_t *out, char *err, size_t cap) {
  memset(out, 0, sizeof *out);
  if (!name || !name[0] || strlen(name) >= sizeof out->name || strchr(name, '/') ||
      strchr(name, '"') || !strcmp(sa_role_name(role), "none")) {
    sa_set_err(err, cap, "a key needs a name (no '/' or '\"', < 64 bytes) and one role");
    return SA_EINVAL;
  }
  if (zmq_curve_keypair(out->public_key, out->secret_key) != 0) {
    sa_set_err(err, cap, "CURVE key generation failed: %s (libzmq without libsodium?)",
               zmq_strerror(errno));
    return SA_EIO;
  }
  snprintf(out->name, sizeof out->name, "%s", name);
  out->role = role;
  return 0;
}

static int write_cert(const sa_cert_t *c, const char *path, bool secret, int flags, mode_t mode,
                      char *err, size_t cap) {
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | flags, mode);
  if (fd < 0) {
    sa_set_err(err, cap, "%s: %s", path, strerror(errno));
    return errno == EEXIST ? SA_EEXIST : SA_EIO;
  }
  FILE *f = fdopen(fd, "w");
  if (!f) {
    close(fd);
    sa_set_err(err, cap, "%s: %s", path, strerror(errno));
    return SA_EIO;
  }
  fprintf(f,
          "#   ****  Generated by sa-keys  ****\n"
          "#   ZeroMQ CURVE %s Certificate (CZMQ zcert layout)\n%s\n"
          "metadata\n    name = \"%s\"\n    role = \"%s\"\n"
          "curve\n    public-key = \"%s\"\n",
          secret ? "**Secret**" : "Public",
          secret ? "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n"
                 : "",
          c->name, sa_role_name(c->role), c->public_key);
  if (secret)
    fprintf(f, "    secret-key = \"%s\"\n", c->secret_key);
  if (fclose(f) != 0) {
    sa_set_err(err, cap, "%s: %s", path, strerror(errno));
    return SA_EIO;
  }
  return 0;
}

int sa_cert_save_public(const sa_cert_t *c, const char *path, char *err, size_t cap) {
  return write_cert(c, path, false, O_TRUNC, 0644, err, cap);
}

int sa_cert_save(const sa_cert_t *c, const char *dir, char *err, size_t cap) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.key", dir, c->name);
  int rc = write_cert(c, path, true, O_EXCL, 0600, err, cap);
  if (rc)
    return rc;
  snprintf(path, sizeof path, "%s/%s.pub", dir, c->name);
  return sa_cert_save_public(c, path, err, cap);
}

int sa_keys_make_set(const char *dir, const sa_role_t *roles, int n, char *err, size_t cap) {
  char path[4096];
  snprintf(path, sizeof path, "%s/allow", dir);
  if ((mkdir(dir, 0700) && errno != EEXIST) || chmod(dir, 0700) ||
      (mkdir(path, 0755) && errno != EEXIST)) {
    sa_set_err(err, cap, "%s: %s", path, strerror(errno));
    return SA_EIO;
  }
  int made = 0;
  for (int i = 0; i < n; i++) {
    const char *name = sa_role_name(roles[i]);
    snprintf(path, sizeof path, "%s/%s.key", dir, name);
    if (access(path, F_OK) == 0)
      continue;
    sa_cert_t c;
    int rc = sa_cert_generate(name, roles[i], &c, err, cap);
    if (rc == 0)
      rc = sa_cert_save(&c, dir, err, cap);
    snprintf(path, sizeof path, "%s/allow/%s.pub", dir, name);
    if (rc == 0)
      rc = sa_cert_save_public(&c, path, err, cap);
    memset(&c, 0, sizeof c);
    if (rc)
      return rc;
    made++;
  }
  return made;
}

/* ------------------------------------------------------------ allow-list */

struct sa_allow {
  sa_cert_t *e;
  uint8_t (*raw)[32];
  int n, cap;
};

int sa_allow_load(const char *dir, sa_allow_t **out, char *err, size_t cap) {
  *out = NULL;
  DIR *d = opendir(dir);
  if (!d) {
    sa_set_err(err, cap, "allow-list folder %s: %s", dir, strerror(errno));
    return errno == ENOENT ? SA_ENOENT : SA_EIO;
  }
  sa_allow_t *a = calloc(1, sizeof *a);
  int rc = a ? 0 : SA_ENOMEM;
  struct dirent *de;
  while (rc == 0 && (de = readdir(d))) {
    size_t nl = strlen(de->d_name);
    if (nl < 5 || strcmp(de->d_name + nl - 4, ".pub") != 0)
      continue;
    if (a->n == a->cap) {
      int nc = a->cap ? a->cap * 2 : 16;
      sa_cert_t *e = realloc(a->e, (size_t)nc * sizeof *e);
      uint8_t(*r)[32] = e ? realloc(a->raw, (size_t)nc * sizeof *r) : NULL;
      if (e)
        a->e = e;
      if (!r) {
        rc = SA_ENOMEM;
        break;
      }
      a->raw = r;
      a->cap = nc;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    sa_cert_t *c = &a->e[a->n];
    if ((rc = sa_cert_load(path, false, c, err, cap)) != 0)
      break;
    memset(c->secret_key, 0, sizeof c->secret_key); /* an allow-list holds public keys */
    zmq_z85_decode(a->raw[a->n], c->public_key);
    a->n++;
  }
  closedir(d);
  if (rc) {
    sa_allow_free(&a);
    return rc;
  }
  *out = a;
  return 0;
}

void sa_allow_free(sa_allow_t **pa) {
  if (!pa || !*pa)
    return;
  free((*pa)->e);
  free((*pa)->raw);
  free(*pa);
  *pa = NULL;
}

int sa_allow_count(const sa_allow_t *a) { return a ? a->n : 0; }

const sa_cert_t *sa_allow_find(const sa_allow_t *a, const char *public_key) {
  for (int i = 0; a && public_key && i < a->n; i++)
    if (!strcmp(a->e[i].public_key, public_key))
      return &a->e[i];
  return NULL;
}

const sa_cert_t *sa_allow_find_raw(const sa_allow_t *a, const unsigned char key[32]) {
  for (int i = 0; a && i < a->n; i++)
    if (!memcmp(a->raw[i], key, 32))
      return &a->e[i];
  return NULL;
}

const sa_cert_t *sa_allow_only(const sa_allow_t *a, sa_role_t role, int *n) {
  const sa_cert_t *found = NULL;
  int k = 0;
  for (int i = 0; a && i < a->n; i++)
    if (a->e[i].role == role && (!found || strcmp(found->public_key, a->e[i].public_key))) {
      found = &a->e[i];
      k++;
    }
  if (n)
    *n = k;
  return k == 1 ? found : NULL;
}
