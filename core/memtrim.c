/* memtrim — malloc_trim on a timer; see memtrim.h. */
#include "memtrim.h"

#include <malloc.h>
#include <stdlib.h>
#include <uv.h>

#include "log.h"

struct sa_memtrim {
  uv_timer_t timer;
};

static void on_trim(uv_timer_t *t) {
  (void)t;
  malloc_trim(0);
}

static void on_closed(uv_handle_t *h) { free(h->data); }

sa_memtrim_t *sa_memtrim_start(uv_loop_t *loop, int interval_ms) {
  sa_memtrim_t *m = calloc(1, sizeof *m);
  if (!m || interval_ms < 100) {
    free(m);
    SA_LOG_WARN("memtrim: not started");
    return NULL;
  }
  uv_timer_init(loop, &m->timer);
  m->timer.data = m;
  uv_timer_start(&m->timer, on_trim, (uint64_t)interval_ms, (uint64_t)interval_ms);
  uv_unref((uv_handle_t *)&m->timer);
  return m;
}

void sa_memtrim_stop(sa_memtrim_t **pm) {
  if (!pm || !*pm)
    return;
  uv_timer_stop(&(*pm)->timer);
  uv_close((uv_handle_t *)&(*pm)->timer, on_closed);
  *pm = NULL;
}
