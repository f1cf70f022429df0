/* The map of tangent vectors at the origin into the Poincaré ball (float32, CPU) and its backward: ToPoincare and the
   proxies of HyperbolicSoftTripleLoss and HIERLoss, pml_hyperbolic.poincare.tangent_to_ball.

   Compiled at first use by pml_hyperbolic/backends/native.py and called through ctypes; the torch formula it replaces
   (and is tested against) is _tangent_scale in pml_hyperbolic/poincare.py. For each row u (length D), n = ||u||:

       out = s(n) u,   s(n) = min(tanh(sqrt c min(n, r)), rho_max) / (sqrt c n)      (r = clip_r, r < 0: no clipping)

   Backward, for G = dL/dout:  dL/du = s G + (s'(n) / n) (G . u) u, with s'(n) / n = c (1 - t^2 - s) / z^2
   (z = sqrt c n, t = tanh z) where neither the clipping nor rho_max is active, else -s / n^2; its series
   c (-2/3 + 8 z^2 / 15) below z = 1e-2. Per row in double: two passes over D floats. */

#include <math.h>
#include <stdint.h>

#include "lanes.h"

/* s and s'(n) / n of a row with squared norm nn. */
static void scale(double nn, double sqrt_c, double clip_r, double rho_max, double *s, double *slope) {
    const double n = nn > 1e-300 ? sqrt(nn) : 1e-150, clipped = clip_r >= 0.0 && n >= clip_r;
    const double z = sqrt_c * (clipped ? clip_r : n), t = tanh(z), rho = t < rho_max ? t : rho_max;
    *s = rho / (sqrt_c * n);
    if (clipped || t >= rho_max)
        *slope = -*s / (n * n);
    else if (z < 1e-2)
        *slope = sqrt_c * sqrt_c * (8.0 / 15.0 * z * z - 2.0 / 3.0);
    else
        *slope = sqrt_c * sqrt_c * (1.0 - t * t - *s) / (z * z);
}

void tangent_to_ball_forward(const float *u, int64_t N, int64_t D, double sqrt_c, double clip_r, double rho_max,
                             float *out) {
    for (int64_t i = 0; i < N; i++) {
        const float *restrict x = u + i * D;
        double s, slope;
        scale(dot_d(x, x, D), sqrt_c, clip_r, rho_max, &s, &slope);
        const float sf = (float)s;
        for (int64_t e = 0; e < D; e++) out[i * D + e] = x[e] * sf;
    }
}

void tangent_to_ball_backward(const float *u, const float *grad, int64_t N, int64_t D, double sqrt_c, double clip_r,
                              double rho_max, float *grad_u) {
    for (int64_t i = 0; i < N; i++) {
        const float *restrict x = u + i * D, *restrict g = grad + i * D;
        const double gu = dot_d(g, x, D);
        double s, slope;
        scale(dot_d(x, x, D), sqrt_c, clip_r, rho_max, &s, &slope);
        const float sf = (float)s, w = (float)(slope * gu);
        for (int64_t e = 0; e < D; e++) grad_u[i * D + e] = g[e] * sf + x[e] * w;
    }
}
