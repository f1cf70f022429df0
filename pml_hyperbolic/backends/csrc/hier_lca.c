/* HIER's LCA selection (hard Gumbel-softmax with straight-through gradient), fused over rows, for float32 on CPU.

   Compiled at first use by pml_hyperbolic/backends/native.py and called through ctypes; the torch implementation it
   replaces (and is tested against) is _TripletLCAHinge in pml_hyperbolic/losses/hier_loss.py. Notation as there:
   s (R x P, row-major) is the distance block divided by tau; a triplet t = (i, j, k) has

       m1 = max(s_i, s_j),  m2 = max(m1, s_k)                          (element-wise, P candidates)
       w_b = exp(min(m_b) - m_b) / log(U_b)  (<= 0),  y_b = w_b / sum(w_b),  lca_b = argmin(w_b)   (b = 1, 2)

   i.e. y_b is softmax(-m_b + g) with Gumbel noise g = -log(-log U) and lca_b its argmax (first index on ties).
   U comes from `noise` (2 x T x P) when given, else from the counter-based stream of `key`: element p of row
   b * T + t, the same values as pml_hyperbolic.utils.random.counter_uniform(key, (2, T, P)).

   The backward recomputes y from s and U instead of storing it. With hinge weights e = (e_i, e_j, e_k) of triplet t
   and C = e_i s_i + e_j s_j - e_k s_k: dL/dm1 = y1 (<y1, C> - C), dL/dm2 = y2 (C - <y2, C>), routed through the
   maxima (to s_k where s_k > max(s_i, s_j), else into m1; to s_i where s_i > s_j, else to s_j), plus the direct
   path +-e at the selected columns. Rows are split over threads; each thread accumulates into its own gradient.

   The forward also evaluates the hinges on the unscaled block D (row stride ld), as the torch implementation does:
   h = (D_ia - D_ib, D_ja - D_jb, D_kb - D_ka) + margin (a = lca1, b = lca2), active = h > 0 and a != b, and
   loss = the sum of the active h. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastmath.h"
#include "lanes.h"
#include "parallel.h"

/* The 64-bit seed of row r of the stream of key: output r of SplitMix64 (Steele, Lea, Flood 2014). */
static inline uint64_t row_seed(uint64_t key, uint64_t r) {
    uint64_t z = key + (r + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* 32-bit integer mixer ("lowbias32", C. Wellons): a bijection with full avalanche. */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

/* Element p of a row with seed (lo, hi), as a uniform in (0, 1) with 23 random bits: (top 23 bits + 1/2) 2^-23, in
   [2^-24, 1 - 2^-24], exact in float32. */
static inline float uniform_at(uint32_t lo, uint32_t hi, uint32_t p) {
    uint32_t x = mix32(mix32(lo + p * 0x9E3779B9u) ^ hi);
    return ((float)(x >> 9) + 0.5f) * 0x1p-23f;
}

typedef struct {
    const float *s;
    int64_t P;
    const int64_t *i, *j, *k;
    int64_t T;
    const float *noise; /* 2 x T x P uniforms, or NULL: the stream of key */
    uint64_t key;
    int64_t *lca1, *lca2;        /* forward outputs */
    const float *dist;           /* forward: the unscaled block, row stride ld */
    int64_t ld;
    float margin;
    float *losses, *active;      /* forward outputs: T and 3 x T (1 or 0) */
    const float *e;              /* backward: 3 x T hinge weights */
    float *grad;                 /* backward: R x P */
    int64_t begin, end;
} job_t;

/* w for one row and block b, normalised to y = w / sum(w) if normalize. */
static void sample_row(const job_t *job, int b, int64_t t, const float *restrict m, float *restrict w,
                       int normalize) {
    const int64_t P = job->P;
    const float lo = min_f(m, P);
    if (job->noise) {
        const float *u = job->noise + (b * job->T + t) * P;
        for (int64_t p = 0; p < P; p++) w[p] = exp_nonpositive(lo - m[p]) / log_positive(u[p]);
    } else {
        const uint64_t seed = row_seed(job->key, (uint64_t)(b * job->T + t));
        const uint32_t s_lo = (uint32_t)seed, s_hi = (uint32_t)(seed >> 32);
        for (int64_t p = 0; p < P; p++)
            w[p] = exp_nonpositive(lo - m[p]) / log_positive(uniform_at(s_lo, s_hi, (uint32_t)p));
    }
    if (normalize) {
        const float inv = 1.0f / sum_f(w, P);
        for (int64_t p = 0; p < P; p++) w[p] *= inv;
    }
}

/* The first index of the minimum of w. */
static int64_t first_argmin(const float *w, int64_t P) {
    const float best = min_f(w, P);
    int64_t arg = 0;
    while (arg < P - 1 && w[arg] != best) arg++;
    return arg;
}

/* m1 = max(s_i, s_j), m2 = max(m1, s_k) for triplet t. */
static void row_maxima(const job_t *job, int64_t t, float *restrict m1, float *restrict m2) {
    const int64_t P = job->P;
    const float *si = job->s + job->i[t] * P, *sj = job->s + job->j[t] * P, *sk = job->s + job->k[t] * P;
    for (int64_t p = 0; p < P; p++) {
        float a = si[p] > sj[p] ? si[p] : sj[p];
        m1[p] = a;
        m2[p] = sk[p] > a ? sk[p] : a;
    }
}

static void *forward_rows(void *arg) {
    job_t *job = arg;
    const int64_t P = job->P;
    float *buf = malloc(sizeof(float) * 3 * P);
    if (!buf) return (void *)1;
    float *m1 = buf, *m2 = buf + P, *y = buf + 2 * P;
    for (int64_t t = job->begin; t < job->end; t++) {
        row_maxima(job, t, m1, m2);
        sample_row(job, 0, t, m1, y, 0);
        job->lca1[t] = first_argmin(y, P);
        sample_row(job, 1, t, m2, y, 0);
        const int64_t a = job->lca1[t], b = job->lca2[t] = first_argmin(y, P);
        const float *di = job->dist + job->i[t] * job->ld, *dj = job->dist + job->j[t] * job->ld;
        const float *dk = job->dist + job->k[t] * job->ld;
        const float h[3] = {di[a] - di[b] + job->margin, dj[a] - dj[b] + job->margin, dk[b] - dk[a] + job->margin};
        float loss = 0.0f;
        for (int n = 0; n < 3; n++) {
            const int on = h[n] > 0.0f && a != b;
            job->active[n * job->T + t] = (float)on;
            loss += on ? h[n] : 0.0f;
        }
        job->losses[t] = loss;
    }
    free(buf);
    return NULL;
}

static void *backward_rows(void *arg) {
    job_t *job = arg;
    const int64_t P = job->P;
    float *buf = malloc(sizeof(float) * 6 * P);
    if (!buf) return (void *)1;
    float *m1 = buf, *m2 = buf + P, *y1 = buf + 2 * P, *y2 = buf + 3 * P, *c = buf + 4 * P, *g = buf + 5 * P;
    for (int64_t t = job->begin; t < job->end; t++) {
        const float ei = job->e[t], ej = job->e[job->T + t], ek = job->e[2 * job->T + t];
        if (ei == 0.0f && ej == 0.0f && ek == 0.0f) continue;
        const int64_t i = job->i[t], j = job->j[t], k = job->k[t], a = job->lca1[t], b = job->lca2[t];
        const float *si = job->s + i * P, *sj = job->s + j * P, *sk = job->s + k * P;
        float *gi = job->grad + i * P, *gj = job->grad + j * P, *gk = job->grad + k * P;
        row_maxima(job, t, m1, m2);
        sample_row(job, 0, t, m1, y1, 1);
        sample_row(job, 1, t, m2, y2, 1);
        for (int64_t p = 0; p < P; p++) c[p] = ei * si[p] + ej * sj[p] - ek * sk[p];
        const float dot1 = dot_f(y1, c, P), dot2 = dot_f(y2, c, P);
        /* g: dL/dm1 plus the part of dL/dm2 that flows into m1; y2 is reused for the part that flows to s_k. */
        for (int64_t p = 0; p < P; p++) {
            const float g_pair = y1[p] * (dot1 - c[p]), g_trip = y2[p] * (c[p] - dot2);
            const int to_k = sk[p] > (si[p] > sj[p] ? si[p] : sj[p]);
            y2[p] = to_k ? g_trip : 0.0f;
            g[p] = to_k ? g_pair : g_pair + g_trip;
            y1[p] = si[p] > sj[p] ? g[p] : 0.0f; /* the part of g that goes to s_i */
        }
        /* Separate loops: i, j and k may be the same row. */
        for (int64_t p = 0; p < P; p++) gk[p] += y2[p];
        for (int64_t p = 0; p < P; p++) gi[p] += y1[p];
        for (int64_t p = 0; p < P; p++) gj[p] += g[p] - y1[p];
        gi[a] += ei, gi[b] -= ei, gj[a] += ej, gj[b] -= ej, gk[b] += ek, gk[a] -= ek;
    }
    free(buf);
    return NULL;
}

/* Rows [0, T) split over the threads that T x P elements (about 30 operations each) justify. */
static int split(job_t *jobs, const job_t *proto, int n_threads) {
    n_threads = threads_for(30.0 * proto->T * proto->P, n_threads);
    for (int n = 0; n < n_threads; n++) {
        jobs[n] = *proto;
        jobs[n].begin = proto->T * n / n_threads;
        jobs[n].end = proto->T * (n + 1) / n_threads;
    }
    return n_threads;
}

int hier_lca_forward(const float *s, int64_t P, const int64_t *i, const int64_t *j, const int64_t *k, int64_t T,
                     const float *noise, uint64_t key, int64_t *lca1, int64_t *lca2, const float *dist, int64_t ld,
                     float margin, float *losses, float *active, int n_threads) {
    job_t proto = {s, P, i, j, k, T, noise, key, lca1, lca2, dist, ld, margin, losses, active, NULL, NULL, 0, 0};
    job_t jobs[MAX_THREADS];
    return run_jobs(forward_rows, jobs, sizeof(job_t), split(jobs, &proto, n_threads));
}

/* grad (R x P) must be zero-filled; it receives dL/dD for the distance block D = tau s (see the header). */
int hier_lca_backward(const float *s, int64_t R, int64_t P, const int64_t *i, const int64_t *j, const int64_t *k,
                      int64_t T, const float *noise, uint64_t key, const int64_t *lca1, const int64_t *lca2,
                      const float *e, float *grad, int n_threads) {
    job_t proto = {s, P, i, j, k, T, noise, key, (int64_t *)lca1, (int64_t *)lca2, NULL, 0, 0.0f, NULL, NULL, e, grad,
                   0, 0};
    job_t jobs[MAX_THREADS];
    n_threads = split(jobs, &proto, n_threads);
    float *private_grads = NULL;
    if (n_threads > 1) {
        private_grads = calloc((size_t)(n_threads - 1) * R * P, sizeof(float));
        if (!private_grads) n_threads = split(jobs, &proto, 1);
    }
    for (int n = 1; n < n_threads; n++) jobs[n].grad = private_grads + (size_t)(n - 1) * R * P;
    int failed = run_jobs(backward_rows, jobs, sizeof(job_t), n_threads);
    for (int n = 1; n < n_threads; n++)
        for (int64_t x = 0; x < R * P; x++) grad[x] += jobs[n].grad[x];
    free(private_grads);
    return failed;
}
