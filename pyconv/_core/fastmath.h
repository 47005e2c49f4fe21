/* exp, tanh, expm1, erfc and log for float32, written so that compilers
 * vectorise loops calling them (libm's are opaque calls, one element at a time).
 * Plain C: no branches (selects only), no intrinsics, no libm.
 *
 * exp: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r) by a
 * polynomial fitted for relative error (about 1e-7, i.e. 1-2 ulp), times 2^n
 * built in the exponent bits.  2^n is applied as two factors 2^(n/2) 2^(n-n/2)
 * so results below FLT_MIN come out as correctly scaled subnormals and results
 * above FLT_MAX as +inf.  NaN propagates. */
#ifndef PYCONV_FASTMATH_H
#define PYCONV_FASTMATH_H
#include <stdint.h>

static inline float pyconv_pow2i(int32_t n) {
    union { uint32_t u; float f; } bits;
    bits.u = (uint32_t)(n + 127) << 23;
    return bits.f;
}

static inline float pyconv_expf(float x) {
    /* exp(-104) is below the smallest subnormal, exp(88.8) above FLT_MAX */
    float xc = x < -104.0f ? -104.0f : x;
    xc = xc > 88.8f ? 88.8f : xc;
    /* round to nearest by the 1.5 * 2^23 trick: valid for |t| < 2^22 */
    float t = xc * 1.44269504088896341f;
    float nf = (t + 12582912.0f) - 12582912.0f;
    nf = nf == nf ? nf : 0.0f;  /* NaN: keep the int conversion defined */
    float r = xc - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    float p = 0.00137514082f;
    p = p * r + 0.00836891908f;
    p = p * r + 0.0416695334f;
    p = p * r + 0.166665184f;
    p = p * r + 0.499999886f;
    p = p * r * r + r + 1.0f;
    int32_t n = (int32_t)nf;
    int32_t half = n >> 1;
    return (p * pyconv_pow2i(half)) * pyconv_pow2i(n - half);
}

/* tanh: an odd polynomial below |x| = 0.625 (fitted for relative error),
 * 1 - 2 / (exp(2|x|) + 1) above it (no cancellation there). */
static inline float pyconv_tanhf(float x) {
    float a = x < 0 ? -x : x;
    float z = x * x;
    float p = -0.00569188601f;
    p = p * z + 0.0206262056f;
    p = p * z - 0.0537352934f;
    p = p * z + 0.133313811f;
    p = p * z - 0.333332792f;
    float small = x + x * z * p;
    float big = 1.0f - 2.0f / (pyconv_expf(2.0f * a) + 1.0f);
    big = x < 0 ? -big : big;
    return a < 0.625f ? small : big;
}

/* erfc(a) for a >= 0 as t exp(-a^2 + P(t)), t = 1 / (1 + a/2), with P a
 * degree-9 polynomial fitted to log(erfc(a) / t) + a^2 on [0, 9.5] (relative
 * error about 5e-7 for a < 2; above, the float32 rounding of a^2 dominates,
 * as in any float32 erfc).  Used for GELU: 1 + erf(u) = erfc(-u) has no
 * cancellation for either sign of u. */
static inline float pyconv_erfcf_nonneg(float a) {
    float t = 1.0f / (1.0f + 0.5f * a);
    float p = 1.662332708e-01f;
    p = p * t - 7.882061866e-01f;
    p = p * t + 1.388990132e+00f;
    p = p * t - 9.781430259e-01f;
    p = p * t + 1.304350538e-01f;
    p = p * t - 9.889740274e-02f;
    p = p * t + 6.474556665e-02f;
    p = p * t + 3.811273371e-01f;
    p = p * t + 9.991867104e-01f;
    p = p * t - 1.265471222e+00f;
    return t * pyconv_expf(p - a * a);
}

/* exp(x) - 1 without cancellation: Taylor polynomial for |x| < 0.25
 * (truncation below 1e-8 relative), exp(x) - 1 outside. */
static inline float pyconv_expm1f(float x) {
    float p = 1.0f / 720.0f;
    p = p * x + 1.0f / 120.0f;
    p = p * x + 1.0f / 24.0f;
    p = p * x + 1.0f / 6.0f;
    p = p * x + 0.5f;
    float small = x + x * x * p;
    float big = pyconv_expf(x) - 1.0f;
    float a = x < 0 ? -x : x;
    return a < 0.25f ? small : big;
}

/* log(x) for positive normal x: x = m 2^e with m in [sqrt(1/2), sqrt(2)), then
 * log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, by its series to s^9
 * (truncation below 1e-9).  Zero, subnormal, negative and non-finite inputs are
 * not handled (callers guarantee positive normal arguments). */
static inline float pyconv_logf_positive(float x) {
    union { float f; uint32_t u; } bits;
    bits.f = x;
    int32_t e = (int32_t)(bits.u >> 23) - 127;
    bits.u = (bits.u & 0x007fffffu) | 0x3f800000u;  /* mantissa in [1, 2) */
    float m = bits.f;
    int big = m > 1.41421356f;
    m = big ? 0.5f * m : m;
    e = big ? e + 1 : e;
    float s = (m - 1.0f) / (m + 1.0f);
    float z = s * s;
    float p = 1.0f / 9.0f;
    p = p * z + 1.0f / 7.0f;
    p = p * z + 1.0f / 5.0f;
    p = p * z + 1.0f / 3.0f;
    p = p * z + 1.0f;
    return (float)e * 0.693147181f + 2.0f * s * p;
}
#endif
