/* SoftTriple's relaxed class similarity (float32, CPU): HyperbolicSoftTripleLoss's softmax over each class's proxies.

   Compiled at first use by pml_hyperbolic/backends/native.py and called through ctypes; the torch implementation it
   replaces (and is tested against) is _RelaxedSimilarity in pml_hyperbolic/losses/hyperbolic_soft_triple_loss.py.
   For the block m (R x K x C, row-major: row i, proxy k, class c), sign sigma (+1 similarities, -1 distances) and
   temperature gamma:

       p_ikc = softmax_k(sigma m_ikc / gamma),   S_ic = sigma sum_k p_ikc m_ikc

   Backward, for G = dL/dS:  dL/dm_ikc = p_ikc (sigma G_ic (1 - S_ic / gamma) + G_ic m_ikc / gamma).

   With the classes innermost every loop runs over C contiguous classes and vectorises (the maxima and sums over k
   are element-wise across classes). exp_nonpositive: relative error ~1e-7, 0 below e^-87, where a float32 softmax
   term is negligible against the class maximum's 1. */

#include <stdint.h>
#include <stdlib.h>

#include "fastmath.h"
#include "parallel.h"

typedef struct {
    const float *m;
    int64_t K, C;
    float sign, gamma;
    float *s, *p;               /* forward outputs: R x C and R x K x C */
    const float *grad;          /* backward: R x C */
    float *grad_m;              /* backward output: R x K x C */
    int64_t begin, end;
} rs_job_t;

static void *forward_rows(void *arg) {
    const rs_job_t *job = arg;
    const int64_t K = job->K, C = job->C, M = K * C;
    const float scale = job->sign / job->gamma;
    float *buf = malloc(sizeof(float) * (size_t)(3 * C + 1));
    if (!buf) return (void *)1;
    float *restrict top = buf, *restrict sum = buf + C, *restrict dot = buf + 2 * C;
    for (int64_t i = job->begin; i < job->end; i++) {
        const float *restrict m = job->m + i * M;
        float *restrict p = job->p + i * M, *restrict s = job->s + i * C;
        for (int64_t c = 0; c < C; c++) top[c] = scale * m[c];
        for (int64_t k = 1; k < K; k++)
            for (int64_t c = 0; c < C; c++) top[c] = top[c] > scale * m[k * C + c] ? top[c] : scale * m[k * C + c];
        for (int64_t k = 0; k < K; k++)
            for (int64_t c = 0; c < C; c++) p[k * C + c] = scale * m[k * C + c] - top[c];
        for (int64_t j = 0; j < M; j++) p[j] = exp_nonpositive(p[j]);
        for (int64_t c = 0; c < C; c++) sum[c] = dot[c] = 0.0f;
        for (int64_t k = 0; k < K; k++)
            for (int64_t c = 0; c < C; c++) {
                sum[c] += p[k * C + c];
                dot[c] += p[k * C + c] * m[k * C + c];
            }
        for (int64_t c = 0; c < C; c++) {
            sum[c] = 1.0f / sum[c]; /* sum >= 1: the maximum's term is exp(0) */
            s[c] = job->sign * dot[c] * sum[c];
        }
        for (int64_t k = 0; k < K; k++)
            for (int64_t c = 0; c < C; c++) p[k * C + c] *= sum[c];
    }
    free(buf);
    return NULL;
}

static void *backward_rows(void *arg) {
    const rs_job_t *job = arg;
    const int64_t K = job->K, C = job->C, M = K * C;
    float *buf = malloc(sizeof(float) * (size_t)(2 * C + 1));
    if (!buf) return (void *)1;
    float *restrict alpha = buf, *restrict beta = buf + C;
    for (int64_t i = job->begin; i < job->end; i++) {
        const float *restrict g = job->grad + i * C, *restrict s = job->s + i * C;
        const float *restrict m = job->m + i * M, *restrict p = job->p + i * M;
        float *restrict out = job->grad_m + i * M;
        for (int64_t c = 0; c < C; c++) {
            alpha[c] = job->sign * g[c] * (1.0f - s[c] / job->gamma);
            beta[c] = g[c] / job->gamma;
        }
        for (int64_t k = 0; k < K; k++)
            for (int64_t c = 0; c < C; c++) out[k * C + c] = p[k * C + c] * (alpha[c] + beta[c] * m[k * C + c]);
    }
    free(buf);
    return NULL;
}

static int run(void *(*fn)(void *), rs_job_t proto, int64_t R, int n_threads) {
    rs_job_t jobs[MAX_THREADS];
    n_threads = threads_for(8.0 * R * proto.K * proto.C, n_threads); /* an exponential costs about 8 units */
    for (int n = 0; n < n_threads; n++) {
        jobs[n] = proto;
        jobs[n].begin = R * n / n_threads;
        jobs[n].end = R * (n + 1) / n_threads;
    }
    return run_jobs(fn, jobs, sizeof(rs_job_t), n_threads);
}

int relaxed_similarity_forward(const float *m, int64_t R, int64_t K, int64_t C, float sign, float gamma, float *s,
                               float *p, int n_threads) {
    rs_job_t proto = {m, K, C, sign, gamma, s, p, NULL, NULL, 0, 0};
    return run(forward_rows, proto, R, n_threads);
}

/* grad_m (R x K x C) receives dL/dm for grad = dL/dS (R x C), from the forward's m, s and p. */
int relaxed_similarity_backward(const float *m, int64_t R, int64_t K, int64_t C, float sign, float gamma,
                                const float *s, const float *p, const float *grad, float *grad_m, int n_threads) {
    rs_job_t proto = {m, K, C, sign, gamma, (float *)s, (float *)p, grad, grad_m, 0, 0};
    return run(backward_rows, proto, R, n_threads);
}
