/* Splitting work over pthreads, shared by the kernels of this folder. */
#ifndef PML_HYPERBOLIC_PARALLEL_H
#define PML_HYPERBOLIC_PARALLEL_H

#include <pthread.h>
#include <stddef.h>

#define MAX_THREADS 256
/* Work units (about one multiply-add each) per thread at least, about a millisecond: below it, starting a thread and
   waking an idle core (much slower on virtual machines) costs more than it saves. */
#define MIN_WORK (1 << 21)

/* Threads for `work` units: at most n_threads, at most one per MIN_WORK units, at least one. */
static inline int threads_for(double work, int n_threads) {
    if (n_threads > work / MIN_WORK) n_threads = (int)(work / MIN_WORK);
    if (n_threads > MAX_THREADS) n_threads = MAX_THREADS;
    return n_threads < 1 ? 1 : n_threads;
}

/* Runs fn on each of the n jobs (an array of job_size-byte structs), job 0 on the calling thread (a job whose thread
   cannot start runs there too). Returns nonzero if a job returned non-NULL. */
static inline int run_jobs(void *(*fn)(void *), void *jobs, size_t job_size, int n) {
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS] = {0}, failed = 0;
    char *job = jobs;
    for (int t = 1; t < n; t++) started[t] = pthread_create(&threads[t], NULL, fn, job + t * job_size) == 0;
    for (int t = 1; t < n; t++)
        if (!started[t]) failed |= fn(job + t * job_size) != NULL;
    failed |= fn(job) != NULL;
    for (int t = 1; t < n; t++) {
        void *result = NULL;
        if (started[t]) pthread_join(threads[t], &result);
        failed |= result != NULL;
    }
    return failed;
}

#endif
