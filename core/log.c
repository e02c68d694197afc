/* log — see log.h. */
#include "log.h"

#include "sa_error.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static _Atomic int g_level = SA_LOG_LEVEL_INFO;
static _Atomic bool g_json = false;
static const char *g_component = "sa";

static const char *const k_level_names[] = {"error", "warn", "info", "debug",
                                            "trace"};

int sa_log_parse_level(const char *s, sa_log_level_t *out) {
  for (int i = 0; i <= SA_LOG_LEVEL_TRACE; i++) {
    if (strcasecmp(s, k_level_names[i]) == 0) {
      *out = (sa_log_level_t)i;
      return 0;
    }
  }
  return SA_EINVAL;
}

void sa_log_init(const char *component) {
  if (component)
    g_component = component;
  const char *lv = getenv("SA_LOG_LEVEL");
  sa_log_level_t level;
  if (lv && sa_log_parse_level(lv, &level) == 0)
    atomic_store(&g_level, (int)level);
  const char *js = getenv("SA_LOG_JSON");
  if (js && (strcmp(js, "1") == 0 || strcasecmp(js, "true") == 0))
    atomic_store(&g_json, true);
}

void sa_log_set_level(sa_log_level_t level) { atomic_store(&g_level, (int)level); }
sa_log_level_t sa_log_get_level(void) { return (sa_log_level_t)atomic_load(&g_level); }
void sa_log_set_json(bool json) { atomic_store(&g_json, json); }

/* Appends s to buf as JSON string content (no quotes). */
static size_t json_escape(char *buf, size_t cap, size_t n, const char *s) {
  for (; *s && n + 7 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      buf[n++] = '\\';
      buf[n++] = (char)c;
    } else if (c < 0x20) {
      n += (size_t)snprintf(buf + n, cap - n, "\\u%04x", c);
    } else {
      buf[n++] = (char)c;
    }
  }
  return n;
}

void sa_log_write(sa_log_level_t level, const char *file, int line,
                  const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[96]; /* room for any int fields: -Wformat-truncation at -O2 */
  snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
           tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
           tm.tm_sec, ts.tv_nsec / 1000000);
  const char *base = strrchr(file, '/');
  base = base ? base + 1 : file;
  int lv = (int)level;
  if (lv < 0 || lv > SA_LOG_LEVEL_TRACE)
    lv = SA_LOG_LEVEL_ERROR;

  char out[4096];
  size_t n;
  if (atomic_load(&g_json)) {
    n = (size_t)snprintf(out, sizeof out,
                         "{\"ts\":\"%s\",\"level\":\"%s\",\"component\":\"%s\","
                         "\"pid\":%d,\"src\":\"%s:%d\",\"msg\":\"",
                         when, k_level_names[lv], g_component, (int)getpid(),
                         base, line);
    if (n >= sizeof out)
      n = sizeof out - 1;
    n = json_escape(out, sizeof out, n, msg);
    if (n + 3 < sizeof out) {
      out[n++] = '"';
      out[n++] = '}';
      out[n++] = '\n';
    }
  } else {
    n = (size_t)snprintf(out, sizeof out, "%s %-5s %s[%d] %s:%d: %s\n", when,
                         k_level_names[lv], g_component, (int)getpid(), base,
                         line, msg);
    if (n >= sizeof out) {
      n = sizeof out - 1;
      out[n - 1] = '\n';
    }
  }
  ssize_t w = write(STDERR_FILENO, out, n);
  (void)w;
}
