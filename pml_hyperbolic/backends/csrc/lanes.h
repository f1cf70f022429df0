/* Reductions in a fixed order, shared by the kernels of this folder. The kernels are built without reassociation or
   contraction (strict IEEE float semantics), so that every CPU and compiler computes the same bits; a plain running sum
   then cannot be vectorised. Here lane l of LANES partial sums takes the elements l, l + LANES, ..., and the lanes are
   added pairwise at the end: the order is fixed by the code, and the compiler vectorises the lanes (8 floats: one
   AVX register, two SSE ones). */
#ifndef PML_HYPERBOLIC_LANES_H
#define PML_HYPERBOLIC_LANES_H

#include <stdint.h>

#define LANES 8

static inline float lanes_sum_f(const float *l) {
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

static inline double lanes_sum_d(const double *l) {
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* sum_i x_i */
static inline float sum_f(const float *restrict x, int64_t n) {
    float l[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) l[k] += x[i + k];
    for (int k = 0; i + k < n; k++) l[k] += x[i + k];
    return lanes_sum_f(l);
}

/* sum_i x_i y_i */
static inline float dot_f(const float *restrict x, const float *restrict y, int64_t n) {
    float l[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) l[k] += x[i + k] * y[i + k];
    for (int k = 0; i + k < n; k++) l[k] += x[i + k] * y[i + k];
    return lanes_sum_f(l);
}

/* sum_i (x_i - y_i)^2 */
static inline float sq_dist_f(const float *restrict x, const float *restrict y, int64_t n) {
    float l[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) l[k] += (x[i + k] - y[i + k]) * (x[i + k] - y[i + k]);
    for (int k = 0; i + k < n; k++) l[k] += (x[i + k] - y[i + k]) * (x[i + k] - y[i + k]);
    return lanes_sum_f(l);
}

/* min_i x_i (exact in any order; the lanes let it vectorise) */
static inline float min_f(const float *restrict x, int64_t n) {
    float l[LANES];
    for (int k = 0; k < LANES; k++) l[k] = x[0];
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) l[k] = x[i + k] < l[k] ? x[i + k] : l[k];
    for (int k = 0; i + k < n; k++) l[k] = x[i + k] < l[k] ? x[i + k] : l[k];
    float m = l[0];
    for (int k = 1; k < LANES; k++) m = l[k] < m ? l[k] : m;
    return m;
}

/* sum_i x_i y_i in double (y = x: the squared norm) */
static inline double dot_d(const float *restrict x, const float *restrict y, int64_t n) {
    double l[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) l[k] += (double)x[i + k] * y[i + k];
    for (int k = 0; i + k < n; k++) l[k] += (double)x[i + k] * y[i + k];
    return lanes_sum_d(l);
}

#endif
