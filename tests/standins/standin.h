/* Shared by the stand-in GPU libraries: call counters and the emulated GPU tail.
 *
 * Every stand-in returns success (0) and does nothing else, except the
 * synchronizing calls, which sleep STANDIN_SYNC_US microseconds (default 0)
 * to emulate the wait for the GPU. Each library counts its own calls so the
 * driver can print what the libraries really saw next to what it meant to do.
 */
#ifndef STANDIN_H
#define STANDIN_H
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define API __attribute__((visibility("default"), noinline))

/* Counting through a call keeps every entry point a non-leaf function, so
 * with -fno-omit-frame-pointer it starts with `push rbp` like the real ones. */
static __attribute__((noinline)) void standin_add(uint64_t *counter, uint64_t n) {
    __asm__ volatile("" ::: "memory");
    *counter += n;
}
#define COUNT(c) standin_add(&(c), 1)

static long standin_sync_us = -1;

static inline void standin_gpu_tail(void) {
    if (standin_sync_us < 0) {
        const char *s = getenv("STANDIN_SYNC_US");
        standin_sync_us = s ? atol(s) : 0;
    }
    if (standin_sync_us > 0) {
        struct timespec ts = {standin_sync_us / 1000000, (standin_sync_us % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
}
#endif
