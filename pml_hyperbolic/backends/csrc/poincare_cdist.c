/* The element-wise part of Poincaré distances between two point sets (float32, CPU), around torch's matrix products.

   Compiled at first use by pml_hyperbolic/backends/native.py and called through ctypes by pml_hyperbolic.poincare.cdist,
   whose torch kernel (_PoincareCdist) computes the same and is the reference in the tests. For x_i (N x D),
   y_j (M x D), curvature c and the product g_ij = x_i . y_j (computed by torch):

       d_ij = (2 / sqrt c) asinh(sqrt q_ij),   q_ij = c a_i b_j A_ij,   A_ij = u_i + v_j - 2 g_ij,
       u_i = ||x_i||^2,  a_i = 1 / (1 - c u_i),  v_j = ||y_j||^2,  b_j = 1 / (1 - c v_j)

   The norms and a, b are computed in double (1 - c u cancels near the boundary), the rest in float. Where the product
   may have cancelled, A_ij <= kappa (u_i + v_j) (close pairs: the product's rounding error is a few ulps of
   u_i + v_j, so the bound is per pair), A_ij is recomputed from exact differences; the saved
   q of such a pair is stored negated (the flag; a pair with q = 0 has no gradient and needs none). Elsewhere A has a
   relative error of about float32's epsilon / kappa. d overwrites g (the same buffer).

   Backward (float32), for G = dL/dd, E_ij = G_ij / (sqrt c sqrt(q_ij (1 + q_ij))) (0 where q = 0) and K_ij = E_ij b_j:

       dL/dx_i = 2 c a_i [x_i (sum_j K_ij + sum_j E_ij q_ij) - sum_j K_ij y_j]
       dL/dy_j = 2 c [y_j (sum_i K_ij a_i + b_j sum_i E_ij q_ij) - sum_i K_ij a_i x_i]

   This kernel overwrites q with K and returns the four sums; the caller forms the two matrix products. The sums of K
   leave the flagged pairs out: their K_ij (x_i - y_j) terms cancel in the products, and the caller adds them from
   exact differences (poincare_cdist_pair_grads). */

#include <stdint.h>
#include <stdlib.h>

#include "ball.h"
#include "fastmath.h"
#include "lanes.h"
#include "parallel.h"

typedef struct {
    const float *x, *y;
    int64_t M, D;
    float c;
    const double *ca;           /* forward: c / alpha_i */
    const float *a, *b;         /* 1 / alpha_i, 1 / beta_j */
    const float *u, *v;         /* u_i, v_j */
    float kappa;                /* A_ij <= kappa (u_i + v_j) is recomputed */
    float *d, *q;               /* forward: g in, d out (in place); q out (may be NULL); backward: q in, K out */
    int64_t count;              /* forward: flagged pairs of the job's rows */
    const float *grad;          /* backward */
    float *row_k, *row_eq, *col_ka, *col_eq; /* backward outputs; col_* per job */
    int64_t begin, end;
} cdist_job_t;

static void *forward_rows(void *arg) {
    cdist_job_t *job = arg;
    const int64_t M = job->M, D = job->D;
    const float c = job->c, scale = 2.0f / sqrtf(c), *restrict v = job->v, *restrict bf = job->b;
    float *scratch = job->q ? NULL : malloc(sizeof(float) * (size_t)(M > 0 ? M : 1));
    if (!job->q && !scratch) return (void *)1;
    for (int64_t i = job->begin; i < job->end; i++) {
        float *g = job->d + i * M; /* g in, d out */
        const float *restrict xi = job->x + i * D;
        const float ui = job->u[i], cai = (float)job->ca[i];
        const float kappa = job->kappa;
        float *restrict q = job->q ? job->q + i * M : scratch;
        int close = 0; /* a pair of this row has A_ij <= kappa (u_i + v_j) */
        for (int64_t j = 0; j < M; j++) {
            const float A = (ui + v[j]) - 2.0f * g[j];
            close |= A <= kappa * (ui + v[j]) + 1e-19f;
            q[j] = cai * bf[j] * A;
        }
        if (close) { /* close pairs in this row: exact differences, q negated as the flag */
            for (int64_t j = 0; j < M; j++) {
                if ((ui + v[j]) - 2.0f * g[j] > kappa * (ui + v[j]) + 1e-19f) continue;
                q[j] = -(cai * bf[j] * sq_dist_f(xi, job->y + j * D, D));
                job->count++;
            }
        }
        for (int64_t j = 0; j < M; j++) g[j] = scale * asinh_sqrt_float(fabsf(q[j]));
    }
    free(scratch);
    return NULL;
}

static void *backward_rows(void *arg) {
    const cdist_job_t *job = arg;
    const int64_t M = job->M;
    const float inv_sqrt_c = 1.0f / sqrtf(job->c);
    float *restrict col_ka = job->col_ka, *restrict col_eq = job->col_eq;
    const float *restrict b = job->b;
    float *buf = malloc(sizeof(float) * (size_t)(2 * M + 1)); /* a row's E q and flag K, summed in lanes after */
    if (!buf) return (void *)1;
    float *restrict eqs = buf, *restrict ks = buf + M;
    for (int64_t j = 0; j < M; j++) col_ka[j] = col_eq[j] = 0.0f;
    for (int64_t i = job->begin; i < job->end; i++) {
        const float *restrict G = job->grad + i * M;
        float *restrict qk = job->q + i * M; /* q in, K out */
        const float ai = job->a[i];
        for (int64_t j = 0; j < M; j++) {
            const float qs = qk[j], q = fabsf(qs), flagged = qs < 0.0f ? 0.0f : 1.0f;
            const float w = q * (1.0f + q), e_any = G[j] * inv_sqrt_c / sqrtf(w > 1e-30f ? w : 1e-30f);
            const float e = q > 0.0f ? e_any : 0.0f, eq = e * q, k = e * b[j];
            eqs[j] = eq;
            ks[j] = flagged * k;
            col_eq[j] += eq;
            col_ka[j] += flagged * k * ai;
            qk[j] = k;
        }
        job->row_k[i] = sum_f(ks, M);
        job->row_eq[i] = sum_f(eqs, M);
    }
    free(buf);
    return NULL;
}

static int split(cdist_job_t *jobs, const cdist_job_t *proto, int64_t N, int n_threads, double cost) {
    n_threads = threads_for(cost * N * proto->M, n_threads);
    for (int n = 0; n < n_threads; n++) {
        jobs[n] = *proto;
        jobs[n].begin = N * n / n_threads;
        jobs[n].end = N * (n + 1) / n_threads;
    }
    return n_threads;
}

/* g (N x M) is overwritten by d; writes q (N x M, or NULL) and a (N), b (M); returns the number of flagged pairs, or
   -1 if out of memory. */
int64_t poincare_cdist_forward(float *g, const float *x, const float *y, int64_t N, int64_t M, int64_t D, double c,
                               double kappa, float *q, float *a, float *b, int n_threads) {
    cdist_job_t jobs[MAX_THREADS];
    double *u = malloc(sizeof(double) * (size_t)(2 * N + 2 * M + 1)), *ad = u + N, *v = ad + N, *bd = v + M;
    float *f = malloc(sizeof(float) * (size_t)(N + M + 1));
    if (!u || !f) {
        free(u);
        free(f);
        return -1;
    }
    norms_and_alphas(x, N, D, c, u, ad);
    norms_and_alphas(y, M, D, c, v, bd);
    float *uf = f, *vf = f + N;
    for (int64_t i = 0; i < N; i++) {
        uf[i] = (float)u[i];
        a[i] = (float)ad[i];
        ad[i] *= (float)c; /* c / alpha_i (c as the float the kernel works with), rounded once */
    }
    for (int64_t j = 0; j < M; j++) {
        vf[j] = (float)v[j];
        b[j] = (float)bd[j];
    }
    cdist_job_t proto = {x, y, M, D, (float)c, ad, a, b, uf, vf, (float)kappa, g, q, 0, NULL, NULL, NULL, NULL, NULL,
                         0, 0};
    int n = split(jobs, &proto, N, n_threads, 6.0); /* about 6 units per pair */
    int failed = run_jobs(forward_rows, jobs, sizeof(cdist_job_t), n);
    free(u);
    free(f);
    int64_t count = 0;
    for (int t = 0; t < n; t++) count += jobs[t].count;
    return failed ? -1 : count;
}

/* From the forward's q (N x M, overwritten by K), a and b: row_k, row_eq (N), col_ka, col_eq (M), for
   grad = dL/dd (N x M). */
int poincare_cdist_backward(const float *grad, float *q, const float *a, const float *b, int64_t N, int64_t M,
                            double c, float *row_k, float *row_eq, float *col_ka, float *col_eq, int n_threads) {
    cdist_job_t jobs[MAX_THREADS];
    cdist_job_t proto = {NULL, NULL, M, 0, (float)c, NULL, a, b, NULL, NULL, 0.0f, NULL, q, 0, grad, row_k, row_eq,
                         col_ka, col_eq, 0, 0};
    int n = split(jobs, &proto, N, n_threads, 4.0);
    float *partial = n > 1 ? malloc(sizeof(float) * (size_t)(2 * (n - 1) * M)) : NULL;
    if (n > 1 && !partial) return 1;
    for (int t = 1; t < n; t++) { /* column sums: one copy per extra job, added below */
        jobs[t].col_ka = partial + 2 * (t - 1) * M;
        jobs[t].col_eq = jobs[t].col_ka + M;
    }
    int failed = run_jobs(backward_rows, jobs, sizeof(cdist_job_t), n);
    for (int t = 1; t < n && !failed; t++)
        for (int64_t j = 0; j < M; j++) {
            col_ka[j] += jobs[t].col_ka[j];
            col_eq[j] += jobs[t].col_eq[j];
        }
    free(partial);
    return failed;
}

/* The flagged pairs with q_ij < 0 (identical points, q = -0, need no gradient) in row-major order into rows, cols
   (room for the forward's count); returns their number. */
int64_t poincare_cdist_flagged(const float *q, int64_t N, int64_t M, int64_t *rows, int64_t *cols) {
    int64_t p = 0;
    for (int64_t i = 0; i < N; i++) {
        const float *restrict qi = q + i * M;
        for (int64_t j = 0; j < M; j++)
            if (qi[j] < 0.0f) {
                rows[p] = i;
                cols[p++] = j;
            }
    }
    return p;
}

typedef struct {
    const float *x, *y, *w;
    const int64_t *rows, *cols, *order;
    int64_t D, begin, end;
    int to_y;
    float *out;
} pairs_job_t;

static void *pair_grads(void *arg) {
    const pairs_job_t *job = arg;
    const int64_t D = job->D;
    for (int64_t idx = job->begin; idx < job->end; idx++) {
        const int64_t p = job->order ? job->order[idx] : idx, i = job->rows[p], j = job->cols[p];
        const float w = job->to_y ? -job->w[p] : job->w[p];
        const float *restrict xi = job->x + i * D, *restrict yj = job->y + j * D;
        float *restrict out = job->out + (job->to_y ? j : i) * D;
        for (int64_t k = 0; k < D; k++) out[k] += w * (xi[k] - yj[k]);
    }
    return NULL;
}

/* Splits the P pairs, visited in `order` (NULL: 0..P-1) with their targets `key` grouped, at target boundaries:
   each thread owns whole targets, so every target is summed in pair order whatever the thread count. */
static int run_pairs(const pairs_job_t *proto, const int64_t *key, int64_t P, int n_threads) {
    pairs_job_t jobs[MAX_THREADS];
    const int n = threads_for(3.0 * (double)P * (double)proto->D, n_threads);
    int64_t begin = 0;
    for (int t = 0; t < n; t++) {
        int64_t end = t == n - 1 ? P : P * (t + 1) / n;
        if (end < begin) end = begin;
        while (end > begin && end < P && key[end] == key[end - 1]) end++;
        jobs[t] = *proto;
        jobs[t].begin = begin;
        jobs[t].end = end;
        begin = end;
    }
    return run_jobs(pair_grads, jobs, sizeof(pairs_job_t), n);
}

/* The flagged pairs' gradient terms from exact differences, for the P pairs (rows[p], cols[p]) in row-major order
   with weights w[p]:  grad_x[i] += w (x_i - y_j),  grad_y[j] -= w (x_i - y_j)  (y has M rows). Returns nonzero if
   out of memory. */
int poincare_cdist_pair_grads(const float *x, const float *y, int64_t M, int64_t D, const int64_t *rows,
                              const int64_t *cols, const float *w, int64_t P, float *grad_x, float *grad_y,
                              int n_threads) {
    pairs_job_t proto = {x, y, w, rows, cols, NULL, D, 0, P, 0, grad_x};
    int failed = run_pairs(&proto, rows, P, n_threads);
    /* grad_y: the pairs grouped by column (a stable counting sort) */
    int64_t *order = malloc(sizeof(int64_t) * (size_t)(2 * P + M + 1)), *key = order + P, *start = key + P;
    if (!order) return 1;
    for (int64_t j = 0; j <= M; j++) start[j] = 0;
    for (int64_t p = 0; p < P; p++) start[cols[p] + 1]++;
    for (int64_t j = 0; j < M; j++) start[j + 1] += start[j];
    for (int64_t p = 0; p < P; p++) order[start[cols[p]]++] = p;
    for (int64_t idx = 0; idx < P; idx++) key[idx] = cols[order[idx]];
    proto.order = order;
    proto.to_y = 1;
    proto.out = grad_y;
    failed |= run_pairs(&proto, key, P, n_threads);
    free(order);
    return failed;
}
