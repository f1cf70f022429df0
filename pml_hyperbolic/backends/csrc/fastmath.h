/* Branch-free float math shared by the kernels of this folder: loops over these functions vectorise, unlike
   calls into libm. Each states its range and accuracy. */
#ifndef PML_HYPERBOLIC_FASTMATH_H
#define PML_HYPERBOLIC_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* exp(x) for x <= 0 (0 below -87): x = n ln2 + r, |r| <= ln2 / 2, degree-7 polynomial (Cephes expf coefficients). */
static inline float exp_nonpositive(float x) {
    float keep = x >= -87.0f ? 1.0f : 0.0f;
    x = x >= -87.0f ? x : -87.0f;
    float n = (float)(int32_t)(x * 1.44269504088896341f - 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * float_of((uint32_t)((int32_t)n + 127) << 23) * keep;
}

/* log(u) for normal u > 0: u = 2^e m with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(x), x = (m - 1) / (m + 1),
   |x| <= 0.172, by its series to x^9 (relative error < 3e-7). */
static inline float log_positive(float u) {
    uint32_t b = bits_of(u);
    float e = (float)((int32_t)(b >> 23) - 127);
    float m = float_of((b & 0x7FFFFFu) | 0x3F800000u);
    int big = m > 1.41421356237f;
    m = big ? 0.5f * m : m;
    e = big ? e + 1.0f : e;
    float x = (m - 1.0f) / (m + 1.0f), z = x * x;
    float y = 2.0f / 9.0f;
    y = y * z + 2.0f / 7.0f;
    y = y * z + 2.0f / 5.0f;
    y = y * z + 2.0f / 3.0f;
    return x * (2.0f + z * y) + 0.693147180559945f * e;
}

/* asinh(sqrt(q)) for q >= 0 in float, in three ranges, each to a few ulps (s = sqrt(q)): the odd series of asinh to
   s^9 for q < 1/64 (truncation < 1e-9 relative); log1p(z) = 2 atanh(z / (2 + z)) by its series to the 9th power for
   z = s + q / (1 + sqrt(1 + q)) < sqrt(2) - 1; else log_positive(1 + z) (at least 0.35, so its absolute error stays
   small relative to it). The Triton kernel of the distance (backends/triton_cdist.py) has the same function. */
static inline float asinh_sqrt_float(float q) {
    const float s = sqrtf(q);
    float series = 35.0f / 1152.0f;
    series = series * q - 5.0f / 112.0f;
    series = series * q + 3.0f / 40.0f;
    series = series * q - 1.0f / 6.0f;
    series = s * (series * q + 1.0f);
    const float z = s + q / (1.0f + sqrtf(1.0f + q)), t = z / (2.0f + z), t2 = t * t;
    float mid = 1.0f / 9.0f;
    mid = mid * t2 + 1.0f / 7.0f;
    mid = mid * t2 + 1.0f / 5.0f;
    mid = mid * t2 + 1.0f / 3.0f;
    mid = 2.0f * t * (mid * t2 + 1.0f);
    const float big = log_positive(1.0f + z);
    return q < 1.0f / 64.0f ? series : (z < 0.41421356f ? mid : big);
}

#endif
