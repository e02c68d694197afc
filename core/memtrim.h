/*
 * memtrim — gives freed heap memory back to the system on a timer.
 *
 * glibc keeps what a burst freed (thousands of connections' buffers, a
 * flood of refused handshakes) in its arenas and RSS never comes down;
 * malloc_trim(0) returns the free pages of every arena. A long-running
 * process starts this once; the timer does not keep the loop alive.
 *
 * Threads: the loop's thread.
 */
#ifndef SA_MEMTRIM_H
#define SA_MEMTRIM_H

struct uv_loop_s;

typedef struct sa_memtrim sa_memtrim_t;

/* Trims every interval_ms (>= 100). NULL on failure (logged); the process
 * runs on without it. */
sa_memtrim_t *sa_memtrim_start(struct uv_loop_s *loop, int interval_ms);

/* Stops the timer; the memory goes once the loop has closed it. */
void sa_memtrim_stop(sa_memtrim_t **m);

#endif /* SA_MEMTRIM_H */
