/* Poincaré distances within one small point set (float32, CPU) and their backward: HIERLoss's distance matrix.

   Compiled at first use by pml_hyperbolic/utils/native.py and called through ctypes; tested against float64
   references and the torch kernel pml_hyperbolic.poincare.cdist. For the rows x_1..x_R of X (R x D) and curvature c:

       d_ij = (2 / sqrt c) asinh(sqrt q_ij),   q_ij = c A_ij a_i a_j,   A_ij = ||x_i - x_j||^2,   a_i = 1 / (1 - c ||x_i||^2)

   A_ij is summed from exact differences in float32 (a sum of squares does not cancel: relative error ~1e-7 also for
   close pairs, where a matrix product would cancel), a_i in double (1 - c ||x||^2 cancels near the boundary), the
   rest in double. The output is exactly symmetric with a zero diagonal; identical points get d = 0 and no gradient.

   Backward (in float32), for dL/dd given as G (R x R) and g_ij = G_ij + G_ji (the matrix holds each pair twice):

       dL/dx_i = sum_j k_ij [(x_i - x_j) + c A_ij a_i x_i],   k_ij = 2 g_ij sqrt(a_i a_j / (A_ij (1 + q_ij)))

   Cost: R^2 D / 2 multiply-adds forward, R^2 D backward (no matrix product: meant for a few hundred points). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

/* asinh(sqrt(q)) for q >= 0 in double, branch-free so that loops over it vectorise: the odd series of asinh for
   sqrt(q) < 1/8 (to s^13: relative error < 1e-13), else log(s + sqrt(1 + q)) with log y = e ln 2 + 2 atanh(x),
   y = 2^e m, m in [sqrt(1/2), sqrt(2)), x = (m - 1) / (m + 1), |x| < 0.172, the atanh series to x^15. */
static inline double asinh_sqrt(double q) {
    const double s = sqrt(q);
    double series = 231.0 / 13312.0;
    series = series * q - 63.0 / 2816.0;
    series = series * q + 35.0 / 1152.0;
    series = series * q - 5.0 / 112.0;
    series = series * q + 3.0 / 40.0;
    series = series * q - 1.0 / 6.0;
    series = s * (series * q + 1.0);
    const double y = s + sqrt(1.0 + q); /* >= 1 */
    uint64_t bits;
    memcpy(&bits, &y, 8);
    double e, m;
    uint64_t eb = 0x4330000000000000ull | (bits >> 52), mb = (bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull;
    memcpy(&e, &eb, 8);
    memcpy(&m, &mb, 8);
    e -= 4503599627371519.0; /* 2^52 + 1023: the unbiased exponent */
    const int big = m > 1.4142135623730951;
    m = big ? 0.5 * m : m;
    e = big ? e + 1.0 : e;
    const double x = (m - 1.0) / (m + 1.0), z = x * x;
    double t = 2.0 / 15.0;
    t = t * z + 2.0 / 13.0;
    t = t * z + 2.0 / 11.0;
    t = t * z + 2.0 / 9.0;
    t = t * z + 2.0 / 7.0;
    t = t * z + 2.0 / 5.0;
    t = t * z + 2.0 / 3.0;
    const double logy = x * (2.0 + z * t) + 0.6931471805599453 * e;
    return q < 1.0 / 64.0 ? series : logy;
}

static void *forward_rows(void *arg) {
    const pdist_job_t *job = arg;
    const int64_t R = job->R;
    const double c = job->c, scale = 2.0 / sqrt(c), *restrict a = job->a;
    float *A = malloc(sizeof(float) * (size_t)R);
    if (!A) return (void *)1;
    for (int64_t i = job->begin; i < job->end; i++) {
        float *restrict row = job->out + i * R;
        row[i] = 0.0f;
        sq_dists(job, i, i + 1, A);
        for (int64_t j = i + 1; j < R; j++) row[j] = (float)(scale * asinh_sqrt(c * A[j] * (a[i] * a[j])));
        for (int64_t j = i + 1; j < R; j++) job->out[j * R + i] = row[j];
    }
    free(A);
    return NULL;
}

static void *backward_rows(void *arg) {
    const pdist_job_t *job = arg;
    const int64_t R = job->R, D = job->D;
    const float c = (float)job->c;
    float *buf = malloc(sizeof(float) * (size_t)(3 * R + D));
    if (!buf) return (void *)1;
    float *A = buf, *k = buf + R, *a = buf + 2 * R, *acc = buf + 3 * R;
    for (int64_t j = 0; j < R; j++) a[j] = (float)job->a[j];
    for (int64_t i = job->begin; i < job->end; i++) {
        const float *restrict xi = job->x + i * D;
        sq_dists(job, i, 0, A);
        for (int64_t j = 0; j < R; j++) k[j] = job->grad[j * R + i]; /* column i of G (gathered once) */
        float radial = 0.0f;                                          /* sum_j k_ij A_ij */
        for (int64_t j = 0; j < R; j++) {
            const float g = job->grad[i * R + j] + k[j], aa = a[i] * a[j];
            const float kj = A[j] > 0.0f ? 2.0f * g * sqrtf(aa / (A[j] * (1.0f + c * A[j] * aa))) : 0.0f;
            radial += kj * A[j];
            k[j] = kj;
        }
        radial *= c * a[i];
        for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
        for (int64_t j = 0; j < R; j++) {
            if (k[j] == 0.0f) continue; /* pairs without gradient (HIER: the data-data block) */
            const float kj = k[j], *restrict xj = job->x + j * D;
            for (int64_t d = 0; d < D; d++) acc[d] += kj * (xi[d] - xj[d]);
        }
        for (int64_t d = 0; d < D; d++) job->grad_x[i * D + d] = acc[d] + radial * xi[d];
    }
    free(buf);
    return NULL;
}

/* 1 / (1 - c ||x_i||^2) in double, or NULL if out of memory. */
static double *inverse_alphas(const float *x, int64_t R, int64_t D, double c) {
    double *a = malloc(sizeof(double) * (R > 0 ? R : 1));
    if (!a) return NULL;
    for (int64_t i = 0; i < R; i++) {
        double u = 0.0;
        for (int64_t d = 0; d < D; d++) u += (double)x[i * D + d] * x[i * D + d];
        a[i] = 1.0 / (1.0 - c * u);
    }
    return a;
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
    double *a = inverse_alphas(proto.x, proto.R, proto.D, proto.c);
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
