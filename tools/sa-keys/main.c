/*
 * sa-keys — makes and admits the CurveZMQ keys of a cluster
 * (docs/security.md).
 *
 *   sa-keys gen NAME --role ROLE [--dir DIR]   NAME.key (0600) + NAME.pub
 *   sa-keys allow DIR NAME.pub                 admit a public key
 *   sa-keys show FILE                          name, role, fingerprint
 *
 * Exit status: 0 done, 1 failed (the reason on stderr), 2 bad usage.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "keys.h"
#include "sa_error.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: sa-keys gen NAME --role ROLE [--dir DIR]\n"
          "       sa-keys allow DIR NAME.pub\n"
          "       sa-keys show FILE\n"
          "\n"
          "Keys for CurveZMQ: every process of a cluster has one (--key NAME.key) and\n"
          "accepts the public keys in its allow folder (--allow DIR).\n"
          "\n"
          "  gen     writes DIR/NAME.key (secret, mode 0600; never overwritten) and\n"
          "          DIR/NAME.pub (public); ROLE is coordinator, encoder, stage, client\n"
          "          or operator (a client that may also drain): what the key may do (a\n"
          "          stage key cannot submit, a client key cannot register, send a\n"
          "          StepBatch or drain). DIR (made if absent,\n"
          "          0700) defaults to .\n"
          "  allow   copies a public key into the allow folder DIR (made if absent)\n"
          "  show    prints a key file's name, role and public key\n"
          "  -h, --help\n");
}

static int cmd_gen(int argc, char **argv) {
  const char *name = NULL, *role = NULL, *dir = ".";
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--role") && i + 1 < argc)
      role = argv[++i];
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
      dir = argv[++i];
    else if (argv[i][0] != '-' && !name)
      name = argv[i];
    else {
      fprintf(stderr, "sa-keys: unexpected '%s'\n", argv[i]);
      return 2;
    }
  }
  sa_role_t r = sa_role_parse(role);
  if (!name || r == SA_ROLE_NONE) {
    fprintf(stderr,
            "sa-keys: gen needs NAME and --role coordinator|encoder|stage|client|operator\n");
    return 2;
  }
  if (mkdir(dir, 0700) && errno != EEXIST) {
    fprintf(stderr, "sa-keys: %s: %s\n", dir, strerror(errno));
    return 1;
  }
  char err[512];
  sa_cert_t c;
  if (sa_cert_generate(name, r, &c, err, sizeof err) || sa_cert_save(&c, dir, err, sizeof err)) {
    fprintf(stderr, "sa-keys: %s\n", err);
    return 1;
  }
  char fp[13];
  sa_key_fingerprint(c.public_key, fp);
  printf("%s/%s.key (secret, 0600) and %s/%s.pub: %s key %s\n", dir, name, dir, name,
         sa_role_name(r), fp);
  memset(&c, 0, sizeof c);
  return 0;
}

static int cmd_allow(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "sa-keys: allow needs DIR and NAME.pub\n");
    return 2;
  }
  const char *dir = argv[2], *pub = argv[3];
  char err[512];
  sa_cert_t c;
  if (sa_cert_load(pub, false, &c, err, sizeof err)) {
    fprintf(stderr, "sa-keys: %s\n", err);
    return 1;
  }
  if (c.secret_key[0]) {
    fprintf(stderr, "sa-keys: %s holds a secret key; give the .pub file\n", pub);
    return 1;
  }
  if (mkdir(dir, 0755) && errno != EEXIST) {
    fprintf(stderr, "sa-keys: %s: %s\n", dir, strerror(errno));
    return 1;
  }
  const char *base = strrchr(pub, '/');
  base = base ? base + 1 : pub;
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, base);
  size_t n = strlen(path);
  if (n < 4 || strcmp(path + n - 4, ".pub")) /* the allow-list reads *.pub */
    snprintf(path + n, sizeof path - n, ".pub");
  if (sa_cert_save_public(&c, path, err, sizeof err)) {
    fprintf(stderr, "sa-keys: %s\n", err);
    return 1;
  }
  char fp[13];
  sa_key_fingerprint(c.public_key, fp);
  printf("%s: %s key %s ('%s') admitted\n", path, sa_role_name(c.role), fp, c.name);
  return 0;
}

static int cmd_show(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "sa-keys: show needs FILE\n");
    return 2;
  }
  char err[512];
  sa_cert_t c;
  if (sa_cert_load(argv[2], false, &c, err, sizeof err)) {
    fprintf(stderr, "sa-keys: %s\n", err);
    return 1;
  }
  printf("name %s\nrole %s\npublic-key %s\nsecret %s\n", c.name, sa_role_name(c.role),
         c.public_key, c.secret_key[0] ? "yes" : "no");
  memset(&c, 0, sizeof c);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!strcmp(argv[1], "gen"))
    return cmd_gen(argc, argv);
  if (!strcmp(argv[1], "allow"))
    return cmd_allow(argc, argv);
  if (!strcmp(argv[1], "show"))
    return cmd_show(argc, argv);
  fprintf(stderr, "sa-keys: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
