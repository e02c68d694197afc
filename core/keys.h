/*
 * keys — CurveZMQ key files and allow-lists (docs/security.md).
 *
 * A key is a certificate in CZMQ's zcert layout (ZPL text), so the tools
 * around ZeroMQ read ours and we read theirs:
 *
 *   metadata
 *       name = "stage0"
 *       role = "stage"
 *   curve
 *       public-key = "<40 characters of Z85>"
 *       secret-key = "<40 characters of Z85>"     (NAME.key only)
 *
 * NAME.key holds both keys and must be readable by its owner alone (mode
 * 0600 or stricter); NAME.pub holds the public one. An allow-list is a
 * folder of .pub files: the keys a server accepts, each with its role.
 *
 * Roles: coordinator, encoder, stage, client, operator. What each may do is
 * the security module's table (security.h), not this one's.
 *
 * Threads: pure functions and a read-only list after loading.
 */
#ifndef SA_KEYS_H
#define SA_KEYS_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
  SA_ROLE_NONE = 0,
  SA_ROLE_COORDINATOR = 1u << 0,
  SA_ROLE_ENCODER = 1u << 1,
  SA_ROLE_STAGE = 1u << 2,
  SA_ROLE_CLIENT = 1u << 3,
  SA_ROLE_OPERATOR = 1u << 4, /* a client that may also drain and undrain */
} sa_role_t;

#define SA_KEY_Z85 41 /* 40 characters + NUL */

typedef struct {
  char name[64];
  sa_role_t role;
  char public_key[SA_KEY_Z85];
  char secret_key[SA_KEY_Z85]; /* "" in a public certificate */
} sa_cert_t;

/* "stage" -> SA_ROLE_STAGE; SA_ROLE_NONE for anything else. */
sa_role_t sa_role_parse(const char *s);
/* SA_ROLE_STAGE -> "stage"; "none" for no single role. */
const char *sa_role_name(sa_role_t r);

/* Parses certificate text (len bytes, not NUL-terminated). Requires a role
 * and a valid public key; a secret key, when present, must be valid and
 * belong to the public key. 0 or SA_EINVAL with the line in err. Pure:
 * fuzzed by tests/fuzz/fuzz_keys.c. */
int sa_cert_parse(const char *text, size_t len, sa_cert_t *out, char *err, size_t cap);

/* Reads a certificate file. want_secret: it must hold the secret key and
 * be readable by its owner alone. 0, SA_ENOENT, SA_EPERM (permissions),
 * SA_EINVAL (content; err says what and where). */
int sa_cert_load(const char *path, bool want_secret, sa_cert_t *out, char *err, size_t cap);

/* A new key pair of role (libzmq's CURVE key generation over libsodium). */
int sa_cert_generate(const char *name, sa_role_t role, sa_cert_t *out, char *err, size_t cap);

/* Writes DIR/NAME.key (mode 0600) and DIR/NAME.pub (0644); refuses to
 * overwrite an existing NAME.key (SA_EEXIST). */
int sa_cert_save(const sa_cert_t *c, const char *dir, char *err, size_t cap);

/* Writes only the public certificate to path (0644). */
int sa_cert_save_public(const sa_cert_t *c, const char *path, char *err, size_t cap);

/* A key set: for each role in roles[n], DIR/ROLE.key and DIR/ROLE.pub
 * (named after the role) and its public key in DIR/allow/ROLE.pub. Roles
 * whose key exists are left as they are. DIR is made 0700. Returns the
 * keys made (>= 0), or a negative SA_E* with err filled. */
int sa_keys_make_set(const char *dir, const sa_role_t *roles, int n, char *err, size_t cap);

/* The 12-character fingerprint used in logs (a prefix of the Z85 key). */
void sa_key_fingerprint(const char *public_key, char out[13]);

/* ---------------------------------------------------------- allow-list */

typedef struct sa_allow sa_allow_t;

/* Loads every *.pub in dir (other files are ignored). A file that does not
 * parse fails the whole load, naming it. An empty folder is allowed (no
 * one gets in). 0, SA_ENOENT, SA_EINVAL, SA_ENOMEM. */
int sa_allow_load(const char *dir, sa_allow_t **out, char *err, size_t cap);
void sa_allow_free(sa_allow_t **a);

int sa_allow_count(const sa_allow_t *a);
/* The entry for a Z85 public key, or NULL. */
const sa_cert_t *sa_allow_find(const sa_allow_t *a, const char *public_key);
/* The entry for a raw 32-byte key, or NULL. */
const sa_cert_t *sa_allow_find_raw(const sa_allow_t *a, const unsigned char key[32]);
/* The one key of role, or NULL when there is none (*n = 0) or several. */
const sa_cert_t *sa_allow_only(const sa_allow_t *a, sa_role_t role, int *n);

#endif /* SA_KEYS_H */
