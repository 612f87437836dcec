/* An unknown native pool: spin(threads, seconds) starts `threads` pthreads
 * named "tcap-spin" that each keep a CPU busy for `seconds`, and joins them
 * (the caller waits, not busy).  No library tcap knows of, no API to read. */
#define _GNU_SOURCE
#include <pthread.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *run(void *arg) {
    double until = *(double *)arg;
    volatile unsigned long spins = 0;
    pthread_setname_np(pthread_self(), "tcap-spin");
    while (now() < until)
        spins++;
    return NULL;
}

int spin(int threads, double seconds) {
    pthread_t ids[64];
    double until = now() + seconds;
    int started = 0;
    if (threads > 64)
        threads = 64;
    for (; started < threads; started++)
        if (pthread_create(&ids[started], NULL, run, &until) != 0)
            break;
    for (int i = 0; i < started; i++)
        pthread_join(ids[i], NULL);
    return started;
}
