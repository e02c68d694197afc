/*
 * log — leveled logging to stderr, as text or as JSON lines.
 *
 * Thread-safe: each record is formatted into one buffer and written with a
 * single write(2). Configured once at start (sa_log_init reads SA_LOG_LEVEL =
 * error|warn|info|debug|trace and SA_LOG_JSON=1); may be changed later.
 * This module does not rotate files or ship logs anywhere.
 */
#ifndef SA_LOG_H
#define SA_LOG_H

#include <stdbool.h>

typedef enum {
  SA_LOG_LEVEL_ERROR = 0,
  SA_LOG_LEVEL_WARN = 1,
  SA_LOG_LEVEL_INFO = 2,
  SA_LOG_LEVEL_DEBUG = 3,
  SA_LOG_LEVEL_TRACE = 4,
} sa_log_level_t;

/* Reads SA_LOG_LEVEL and SA_LOG_JSON from the environment; `component` (borrowed,
 * must outlive logging; e.g. "sa-worker") tags every record. */
void sa_log_init(const char *component);
void sa_log_set_level(sa_log_level_t level);
sa_log_level_t sa_log_get_level(void);
void sa_log_set_json(bool json);
/* Parses "error".."trace"; returns 0 or SA_EINVAL. */
int sa_log_parse_level(const char *s, sa_log_level_t *out);

void sa_log_write(sa_log_level_t level, const char *file, int line,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define SA_LOG(level, ...)                                                     \
  do {                                                                         \
    if ((level) <= sa_log_get_level())                                         \
      sa_log_write((level), __FILE__, __LINE__, __VA_ARGS__);                  \
  } while (0)
#define SA_LOG_ERROR(...) SA_LOG(SA_LOG_LEVEL_ERROR, __VA_ARGS__)
#define SA_LOG_WARN(...) SA_LOG(SA_LOG_LEVEL_WARN, __VA_ARGS__)
#define SA_LOG_INFO(...) SA_LOG(SA_LOG_LEVEL_INFO, __VA_ARGS__)
#define SA_LOG_DEBUG(...) SA_LOG(SA_LOG_LEVEL_DEBUG, __VA_ARGS__)
#define SA_LOG_TRACE(...) SA_LOG(SA_LOG_LEVEL_TRACE, __VA_ARGS__)

#endif /* SA_LOG_H */
