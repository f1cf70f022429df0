/* Poincaré-ball helpers shared by the distance kernels of this folder. */
#ifndef PML_HYPERBOLIC_BALL_H
#define PML_HYPERBOLIC_BALL_H

#include <stdint.h>
#include <stdlib.h>

#include "lanes.h"

/* u_i = ||x_i||^2 (if u is not NULL) and a_i = 1 / (1 - c ||x_i||^2) for the R rows of x (R x D), in double. */
static inline void norms_and_alphas(const float *x, int64_t R, int64_t D, double c, double *u, double *a) {
    for (int64_t i = 0; i < R; i++) {
        const double s = dot_d(x + i * D, x + i * D, D);
        if (u) u[i] = s;
        a[i] = 1.0 / (1.0 - c * s);
    }
}

#endif
