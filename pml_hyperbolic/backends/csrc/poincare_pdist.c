/* Poincaré distances within one small point set (float32, CPU) and their backward: HIERLoss's distance matrix.

   Compiled at first use by pml_hyperbolic/backends/native.py and called through ctypes; tested against float64
   references and the torch kernel pml_hyperbolic.poincare.cdist. For the rows x_1..x_R of X (R x D) and curvature c:

       d_ij = (2 / sqrt c) asinh(sqrt q_ij),   q_ij = c A_ij a_i a_j,   A_ij = ||x_i - x_j||^2,   a_i = 1 / (1 - c ||x_i||^2)

   A_ij is summed from exact differences in float32 (a sum of squares does not cancel: relative error ~1e-7 also for
   close pairs, where a matrix product would cancel), a_i and q in double (1 - c ||x||^2 cancels near the boundary),
   the asinh in float (relative error ~3e-7). The output is exactly symmetric with a zero diagonal; identical points get d = 0 and no gradient.

   Backward (in float32), for dL/dd given as G (R x R) and g_ij = G_ij + G_ji (the matrix holds each pair twice):

       dL/dx_i = sum_j k_ij [(x_i - x_j) + c A_ij a_i x_i],   k_ij = 2 g_ij sqrt(a_i a_j / (A_ij (1 + q_ij)))

   Cost: R^2 D / 2 multiply-adds forward, 2 D per pair with a gradient backward (no matrix product: meant for a few
   hundred points). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ball.h"
#include "fastmath.h"
#include "lanes.h"
#include "parallel.h"

typedef struct {
    const float *x, *xt; /* X (R x D) and its transpose (D x R) */
    int64_t R, D;
    double c;
    const double *a;     /* 1 / (1 - c ||x_i||^2) */
    float *out;          /* forward: R x R */
    const float *grad;   /* backward: R x R */
    float *grad_x;       /* backward: R x D */
    int64_t begin, end;
} pdist_job_t;

/* A[j] = ||x_i - x_j||^2 for j in [from, R), vectorised over j (X transposed). */
static void sq_dists(const pdist_job_t *job, int64_t i, int64_t from, float *restrict A) {
    const int64_t R = job->R, D = job->D;
    for (int64_t j = from; j < R; j++) A[j] = 0.0f;
    for (int64_t d = 0; d < D; d++) {
        const float xid = job->x[i * D + d], *restrict col = job->xt + d * R;
        for (int64_t j = from; j < R; j++) {
            const float t = col[j] - xid;
            A[j] += t * t;
        }
    }
}

static void *forward_rows(void *arg) {
    const pdist_job_t *job = arg;
    const int64_t R = job->R;
    const double c = job->c, *restrict a = job->a;
    const float scale = (float)(2.0 / sqrt(c));
    float *A = malloc(sizeof(float) * (size_t)R);
    if (!A) return (void *)1;
    for (int64_t i = job->begin; i < job->end; i++) {
        float *restrict row = job->out + i * R;
        row[i] = 0.0f;
        sq_dists(job, i, i + 1, A);
        for (int64_t j = i + 1; j < R; j++) row[j] = scale * asinh_sqrt_float((float)(c * A[j] * (a[i] * a[j])));
        for (int64_t j = i + 1; j < R; j++) job->out[j * R + i] = row[j];
    }
    free(A);
    return NULL;
}

static void *backward_rows(void *arg) {
    const pdist_job_t *job = arg;
    const int64_t R = job->R, D = job->D;
    const float c = (float)job->c;
    float *buf = malloc(sizeof(float) * (size_t)(2 * R + 2 * D));
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)(R > 0 ? R : 1));
    if (!buf || !idx) {
        free(buf);
        free(idx);
        return (void *)1;
    }
    float *g = buf, *a = buf + R, *acc = buf + 2 * R, *diff = buf + 2 * R + D;
    for (int64_t j = 0; j < R; j++) a[j] = (float)job->a[j];
    for (int64_t i = job->begin; i < job->end; i++) {
        const float *restrict xi = job->x + i * D;
        int64_t n = 0; /* the pairs with a gradient (HIER: not the data-data block) */
        for (int64_t j = 0; j < R; j++) {
            const float gij = job->grad[i * R + j] + job->grad[j * R + i];
            if (gij != 0.0f) {
                idx[n] = j;
                g[n++] = gij;
            }
        }
        float radial = 0.0f; /* sum_j k_ij A_ij */
        for (int64_t e = 0; e < D; e++) acc[e] = 0.0f;
        for (int64_t t = 0; t < n; t++) {
            const float *restrict xj = job->x + idx[t] * D, aa = a[i] * a[idx[t]];
            for (int64_t e = 0; e < D; e++) diff[e] = xi[e] - xj[e];
            const float A = dot_f(diff, diff, D);
            if (A == 0.0f) continue; /* identical points: no gradient */
            const float kj = 2.0f * g[t] * sqrtf(aa / (A * (1.0f + c * A * aa)));
            radial += kj * A;
            for (int64_t e = 0; e < D; e++) acc[e] += kj * diff[e];
        }
        radial *= c * a[i];
        for (int64_t e = 0; e < D; e++) job->grad_x[i * D + e] = acc[e] + radial * xi[e];
    }
    free(buf);
    free(idx);
    return NULL;
}

/* Splits rows so that each job gets about the same number of (i, j) evaluations: rows i of the forward have R-1-i
   pairs (upper triangle), rows of the backward R. */
static int split_rows(pdist_job_t *jobs, const pdist_job_t *proto, int n_threads, int triangle) {
    const int64_t R = proto->R;
    const double total = triangle ? 0.5 * (double)R * (R - 1) : (double)R * R;
    n_threads = threads_for(total * proto->D, n_threads);
    int64_t row = 0;
    double done = 0.0;
    for (int n = 0; n < n_threads; n++) {
        jobs[n] = *proto;
        jobs[n].begin = row;
        const double target = total * (n + 1) / n_threads;
        while (row < R && (n == n_threads - 1 || done < target)) {
            done += triangle ? R - 1 - row : R;
            row++;
        }
        jobs[n].end = row;
    }
    return n_threads;
}

/* X transposed (D x R), or NULL if out of memory. */
static float *transpose(const float *x, int64_t R, int64_t D) {
    float *xt = malloc(sizeof(float) * (size_t)(R * D > 0 ? R * D : 1));
    if (!xt) return NULL;
    for (int64_t i = 0; i < R; i++)
        for (int64_t d = 0; d < D; d++) xt[d * R + i] = x[i * D + d];
    return xt;
}

/* Runs the forward (triangle = 1) or backward rows over the threads. */
static int run(void *(*fn)(void *), pdist_job_t proto, int n_threads, int triangle) {
    pdist_job_t jobs[MAX_THREADS];
    double *a = malloc(sizeof(double) * (proto.R > 0 ? proto.R : 1));
    if (a) norms_and_alphas(proto.x, proto.R, proto.D, proto.c, NULL, a);
    float *xt = transpose(proto.x, proto.R, proto.D);
    int failed = !a || !xt;
    if (!failed) {
        proto.a = a, proto.xt = xt;
        failed = run_jobs(fn, jobs, sizeof(pdist_job_t), split_rows(jobs, &proto, n_threads, triangle));
    }
    free(a);
    free(xt);
    return failed;
}

int poincare_pdist_forward(const float *x, int64_t R, int64_t D, double c, float *out, int n_threads) {
    pdist_job_t proto = {x, NULL, R, D, c, NULL, out, NULL, NULL, 0, 0};
    return run(forward_rows, proto, n_threads, 1);
}

/* grad_x (R x D) receives dL/dX for grad = dL/d(out) (R x R). */
int poincare_pdist_backward(const float *x, int64_t R, int64_t D, double c, const float *grad, float *grad_x,
                            int n_threads) {
    pdist_job_t proto = {x, NULL, R, D, c, NULL, NULL, grad, grad_x, 0, 0};
    return run(backward_rows, proto, n_threads, 0);
}
