// The elementwise kernels, in two builds: portable C (any CPU; the compiler vectorises it for the baseline ISA)
// and AVX2+FMA intrinsics, picked once at first use by cpuid. Both compute exp the same way: Cody-Waite range
// reduction x = n*ln2 + r with |r| <= ln2/2 (ln2 split into a short high part, exact in n*C1, and a low
// correction), a degree-6 polynomial for e^r (Cephes expf's coefficients), and 2^n built in the exponent field
// in two halves so that n = 128 does not overflow it.

#include "ckernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define EXP_LOW (-87.33654475f)
#define EXP_HIGH (88.72283911f)
#define LOG2E 1.44269504f
#define C1 0.693359375f
#define C2 (-2.12194440e-4f)
#define P0 1.9875691500e-4f
#define P1 1.3981999507e-3f
#define P2 8.3334519073e-3f
#define P3 4.1665795894e-2f
#define P4 1.6666665459e-1f
#define P5 5.0000001201e-1f
#define MAGIC 12582912.0f  // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits

static inline float bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t float_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float exp_scalar(float x) {
    if (x != x) return x;
    if (x < EXP_LOW) return 0.0f;
    if (x > EXP_HIGH) return INFINITY;
    float t = x * LOG2E + MAGIC;
    float n = t - MAGIC;
    float r = x - n * C1;
    r = r - n * C2;
    float p = P0;
    p = p * r + P1;
    p = p * r + P2;
    p = p * r + P3;
    p = p * r + P4;
    p = p * r + P5;
    float y = p * (r * r) + r + 1.0f;
    int32_t k = (int32_t)(float_to_bits(t) - 0x4B400000u);
    int32_t k1 = k >> 1;
    int32_t k2 = k - k1;
    return y * bits_to_float((uint32_t)(k1 + 127) << 23) * bits_to_float((uint32_t)(k2 + 127) << 23);
}

// MARK: portable versions

static void exp_portable(const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = exp_scalar(x[i]);
}

static float exp_shifted_sum_inplace_portable(float *x, size_t n, float shift) {
    float sum = 0;
    for (size_t i = 0; i < n; i++) {
        float e = exp_scalar(x[i] - shift);
        x[i] = e;
        sum += e;
    }
    return sum;
}

static float exp_shifted_sum_portable(const float *x, size_t n, float shift) {
    float sum = 0;
    for (size_t i = 0; i < n; i++) sum += exp_scalar(x[i] - shift);
    return sum;
}

static float max_portable(const float *x, size_t n) {
    float m = -INFINITY;
    for (size_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static void scale_portable(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] *= scale;
}

static void swiglu_forward_portable(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + exp_scalar(-g)) * up[i];
    }
}

static void swiglu_backward_portable(
    float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n, int accumulate) {
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], u = up[i], d = dout[i];
        float s = 1.0f / (1.0f + exp_scalar(-g));
        float du = d * g * s;
        float dg = d * u * s * (1.0f + g * (1.0f - s));
        dup[i] = accumulate ? dup[i] + du : du;
        dgate[i] = accumulate ? dgate[i] + dg : dg;
    }
}

static void softmax_backward_row_portable(float *p, float *dp, size_t n, float lse) {
    float d = 0;
    for (size_t i = 0; i < n; i++) {
        float e = exp_scalar(p[i] - lse);
        p[i] = e;
        d += e * dp[i];
    }
    for (size_t i = 0; i < n; i++) dp[i] = p[i] * (dp[i] - d);
}

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    uint32_t bits;
    if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else {
            // Subnormal half: normalise it, as every half is a normal float.
            int shift = 0;
            while (!(mantissa & 0x400)) {
                mantissa <<= 1;
                shift++;
            }
            bits = sign | ((uint32_t)(113 - shift) << 23) | ((mantissa & 0x3FF) << 13);
        }
    } else if (exponent == 31) {
        bits = sign | 0x7F800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    }
    return bits_to_float(bits);
}

static inline uint16_t load_u16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static void dequantize_q8_0_portable(const unsigned char *src, float *dst, size_t blocks) {
    for (size_t b = 0; b < blocks; b++, src += 34, dst += 32) {
        float d = half_to_float(load_u16(src));
        const signed char *q = (const signed char *)(src + 2);
        for (int j = 0; j < 32; j++) dst[j] = (float)q[j] * d;
    }
}

static void dequantize_q4_0_portable(const unsigned char *src, float *dst, size_t blocks) {
    for (size_t b = 0; b < blocks; b++, src += 18, dst += 32) {
        float d = half_to_float(load_u16(src));
        const unsigned char *q = src + 2;
        for (int j = 0; j < 16; j++) {
            dst[j] = (float)((q[j] & 0xF) - 8) * d;
            dst[j + 16] = (float)((q[j] >> 4) - 8) * d;
        }
    }
}

static void dequantize_q4_1_portable(const unsigned char *src, float *dst, size_t blocks) {
    for (size_t b = 0; b < blocks; b++, src += 20, dst += 32) {
        float d = half_to_float(load_u16(src)), m = half_to_float(load_u16(src + 2));
        const unsigned char *q = src + 4;
        for (int j = 0; j < 16; j++) {
            float lo = (float)(q[j] & 0xF) * d;
            float hi = (float)(q[j] >> 4) * d;
            dst[j] = lo + m;
            dst[j + 16] = hi + m;
        }
    }
}

static inline uint32_t load_u32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// Q5_0 and Q5_1: a fifth bit per value in a 32-bit word, bit j for value j.
static void dequantize_q5_0_portable(const unsigned char *src, float *dst, size_t blocks) {
    for (size_t b = 0; b < blocks; b++, src += 22, dst += 32) {
        float d = half_to_float(load_u16(src));
        uint32_t qh = load_u32(src + 2);
        const unsigned char *q = src + 6;
        for (int j = 0; j < 16; j++) {
            int lo = (int)((q[j] & 0xF) | (((qh >> j) & 1) << 4)) - 16;
            int hi = (int)((q[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            dst[j] = (float)lo * d;
            dst[j + 16] = (float)hi * d;
        }
    }
}

static void dequantize_q5_1_portable(const unsigned char *src, float *dst, size_t blocks) {
    for (size_t b = 0; b < blocks; b++, src += 24, dst += 32) {
        float d = half_to_float(load_u16(src)), m = half_to_float(load_u16(src + 2));
        uint32_t qh = load_u32(src + 4);
        const unsigned char *q = src + 8;
        for (int j = 0; j < 16; j++) {
            float lo = (float)((q[j] & 0xF) | (((qh >> j) & 1) << 4)) * d;
            float hi = (float)((q[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) * d;
            dst[j] = lo + m;
            dst[j + 16] = hi + m;
        }
    }
}

// K-quants: super-blocks of 256 with 6-bit sub-block scales (Docs/FORMATS.md §2). Each product is d·scale·q
// (and minus dmin·min for Q4_K/Q5_K), rounded as the Swift reference rounds it: the scale products first, then
// the multiply, then the subtraction, never fused.

// Sub-block j's 6-bit scale and min from the 12 packed bytes (ggml's get_scale_min_k4).
static inline void scale_min_k4(int j, const unsigned char *q, unsigned char *sc, unsigned char *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// The four sub-block factors of 64-value chunk c: (d·sc, dmin·m) of sub-blocks 2c and 2c + 1.
static inline void chunk_factors(float d, float dmin, const unsigned char *scales, int c, float f[4]) {
    unsigned char sc1, m1, sc2, m2;
    scale_min_k4(2 * c, scales, &sc1, &m1);
    scale_min_k4(2 * c + 1, scales, &sc2, &m2);
    f[0] = d * (float)sc1;
    f[1] = dmin * (float)m1;
    f[2] = d * (float)sc2;
    f[3] = dmin * (float)m2;
}

// Q4_K (144-byte blocks) and, with `fifth` set, Q5_K (176 bytes: a 32-byte plane of fifth bits before the quants,
// bit 2c of byte l for value l of chunk c's first half, bit 2c + 1 for its second).
static void dequantize_k4_portable(const unsigned char *src, float *dst, size_t blocks, int fifth) {
    const size_t size = fifth ? 176 : 144;
    for (size_t b = 0; b < blocks; b++, src += size, dst += 256) {
        float d = half_to_float(load_u16(src)), dmin = half_to_float(load_u16(src + 2));
        const unsigned char *scales = src + 4, *qh = src + 16, *qs = src + (fifth ? 48 : 16);
        for (int c = 0; c < 4; c++) {
            float f[4];
            chunk_factors(d, dmin, scales, c, f);
            const unsigned char *q = qs + 32 * c;
            float *y = dst + 64 * c;
            for (int l = 0; l < 32; l++) {
                int lo_q = q[l] & 0xF, hi_q = q[l] >> 4;
                if (fifth) {
                    lo_q += ((qh[l] >> (2 * c)) & 1) << 4;
                    hi_q += ((qh[l] >> (2 * c + 1)) & 1) << 4;
                }
                float lo = f[0] * (float)lo_q, hi = f[2] * (float)hi_q;
                y[l] = lo - f[1];
                y[l + 32] = hi - f[3];
            }
        }
    }
}

static void dequantize_q6_k_portable(const unsigned char *src, float *dst, size_t blocks) {
    for (size_t b = 0; b < blocks; b++, src += 210, dst += 256) {
        float d = half_to_float(load_u16(src + 208));
        for (int half = 0; half < 2; half++) {
            const unsigned char *L = src + 64 * half, *H = src + 128 + 32 * half;
            const signed char *S = (const signed char *)(src + 192 + 8 * half);
            float *y = dst + 128 * half;
            for (int l = 0; l < 32; l++) {
                int s = l / 16;
                int q1 = (int)((L[l] & 0xF) | ((H[l] & 3) << 4)) - 32;
                int q2 = (int)((L[l + 32] & 0xF) | (((H[l] >> 2) & 3) << 4)) - 32;
                int q3 = (int)((L[l] >> 4) | (((H[l] >> 4) & 3) << 4)) - 32;
                int q4 = (int)((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)S[s] * (float)q1;
                y[l + 32] = d * (float)S[s + 2] * (float)q2;
                y[l + 64] = d * (float)S[s + 4] * (float)q3;
                y[l + 96] = d * (float)S[s + 6] * (float)q4;
            }
        }
    }
}

// MARK: AVX2 + FMA versions

#if defined(__x86_64__) && (defined(__clang__) || defined(__GNUC__))
#include <immintrin.h>
#define WIDE __attribute__((target("avx2,fma")))
#define HAVE_WIDE 1

WIDE static inline __m256 exp8(__m256 x) {
    const __m256 low = _mm256_set1_ps(EXP_LOW), high = _mm256_set1_ps(EXP_HIGH);
    __m256 c = _mm256_min_ps(_mm256_max_ps(x, low), high);
    const __m256 magic = _mm256_set1_ps(MAGIC);
    __m256 t = _mm256_fmadd_ps(c, _mm256_set1_ps(LOG2E), magic);
    __m256 nn = _mm256_sub_ps(t, magic);
    __m256 r = _mm256_fnmadd_ps(nn, _mm256_set1_ps(C1), c);
    r = _mm256_fnmadd_ps(nn, _mm256_set1_ps(C2), r);
    __m256 p = _mm256_set1_ps(P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i k = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B400000));
    __m256i k1 = _mm256_srai_epi32(k, 1);
    __m256i k2 = _mm256_sub_epi32(k, k1);
    const __m256i bias = _mm256_set1_epi32(127);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, bias), 23));
    __m256 result = _mm256_mul_ps(_mm256_mul_ps(y, s1), s2);
    result = _mm256_blendv_ps(result, _mm256_setzero_ps(), _mm256_cmp_ps(x, low, _CMP_LT_OQ));
    result = _mm256_blendv_ps(result, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, high, _CMP_GT_OQ));
    return _mm256_blendv_ps(result, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

WIDE static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

WIDE static inline __m256 sigmoid8(__m256 g) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
}

WIDE static void exp_wide(const float *x, float *y, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
    for (; i < n; i++) y[i] = exp_scalar(x[i]);
}

WIDE static float exp_shifted_sum_inplace_wide(float *x, size_t n, float shift) {
    __m256 acc = _mm256_setzero_ps();
    const __m256 s = _mm256_set1_ps(shift);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = sum8(acc);
    for (; i < n; i++) {
        float e = exp_scalar(x[i] - shift);
        x[i] = e;
        sum += e;
    }
    return sum;
}

WIDE static float exp_shifted_sum_wide(const float *x, size_t n, float shift) {
    __m256 acc = _mm256_setzero_ps();
    const __m256 s = _mm256_set1_ps(shift);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)));
    float sum = sum8(acc);
    for (; i < n; i++) sum += exp_scalar(x[i] - shift);
    return sum;
}

WIDE static float max_wide(const float *x, size_t n) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    float lanes[8];
    _mm256_storeu_ps(lanes, m);
    float best = lanes[0];
    for (int j = 1; j < 8; j++) best = lanes[j] > best ? lanes[j] : best;
    for (; i < n; i++) best = x[i] > best ? x[i] : best;
    return best;
}

WIDE static void scale_wide(float *x, size_t n, float scale) {
    const __m256 s = _mm256_set1_ps(scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), s));
    for (; i < n; i++) x[i] *= scale;
}

WIDE static void swiglu_forward_wide(float *out, const float *gate, const float *up, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sigmoid8(g)), _mm256_loadu_ps(up + i)));
    }
    swiglu_forward_portable(out + i, gate + i, up + i, n - i);
}

WIDE static void swiglu_backward_wide(
    float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n, int accumulate) {
    const __m256 one = _mm256_set1_ps(1.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i), u = _mm256_loadu_ps(up + i), d = _mm256_loadu_ps(dout + i);
        __m256 s = sigmoid8(g);
        __m256 du = _mm256_mul_ps(_mm256_mul_ps(d, g), s);
        __m256 dg = _mm256_mul_ps(
            _mm256_mul_ps(_mm256_mul_ps(d, u), s), _mm256_fmadd_ps(g, _mm256_sub_ps(one, s), one));
        if (accumulate) {
            du = _mm256_add_ps(du, _mm256_loadu_ps(dup + i));
            dg = _mm256_add_ps(dg, _mm256_loadu_ps(dgate + i));
        }
        _mm256_storeu_ps(dup + i, du);
        _mm256_storeu_ps(dgate + i, dg);
    }
    swiglu_backward_portable(dgate + i, dup + i, dout + i, gate + i, up + i, n - i, accumulate);
}

WIDE static void softmax_backward_row_wide(float *p, float *dp, size_t n, float lse) {
    const __m256 l = _mm256_set1_ps(lse);
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + i), l));
        _mm256_storeu_ps(p + i, e);
        acc = _mm256_fmadd_ps(e, _mm256_loadu_ps(dp + i), acc);
    }
    float d = sum8(acc);
    for (; i < n; i++) {
        float e = exp_scalar(p[i] - lse);
        p[i] = e;
        d += e * dp[i];
    }
    const __m256 dd = _mm256_set1_ps(d);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = _mm256_loadu_ps(p + i);
        _mm256_storeu_ps(dp + i, _mm256_mul_ps(e, _mm256_sub_ps(_mm256_loadu_ps(dp + i), dd)));
    }
    for (; i < n; i++) dp[i] = p[i] * (dp[i] - d);
}

// 16 quants as two nibble halves, widened to 4 × 8 int32 lanes: values 0..7, 16..23 | 8..15, 24..31.
WIDE static inline void nibbles(const unsigned char *q, __m256i out[4]) {
    __m128i bytes = _mm_loadu_si128((const __m128i *)q);
    __m128i lo = _mm_and_si128(bytes, _mm_set1_epi8(0x0F));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
    out[0] = _mm256_cvtepu8_epi32(lo);
    out[1] = _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8));
    out[2] = _mm256_cvtepu8_epi32(hi);
    out[3] = _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8));
}

WIDE static void dequantize_q8_0_wide(const unsigned char *src, float *dst, size_t blocks) {
    for (size_t b = 0; b < blocks; b++, src += 34, dst += 32) {
        __m256 d = _mm256_set1_ps(half_to_float(load_u16(src)));
        for (int k = 0; k < 4; k++) {
            __m128i q = _mm_loadl_epi64((const __m128i *)(src + 2 + 8 * k));
            _mm256_storeu_ps(dst + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
        }
    }
}

WIDE static void dequantize_q4_0_wide(const unsigned char *src, float *dst, size_t blocks) {
    const __m256i eight = _mm256_set1_epi32(8);
    for (size_t b = 0; b < blocks; b++, src += 18, dst += 32) {
        __m256 d = _mm256_set1_ps(half_to_float(load_u16(src)));
        __m256i q[4];
        nibbles(src + 2, q);
        for (int k = 0; k < 4; k++) {
            _mm256_storeu_ps(dst + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q[k], eight)), d));
        }
    }
}

WIDE static void dequantize_q4_1_wide(const unsigned char *src, float *dst, size_t blocks) {
    for (size_t b = 0; b < blocks; b++, src += 20, dst += 32) {
        __m256 d = _mm256_set1_ps(half_to_float(load_u16(src)));
        __m256 m = _mm256_set1_ps(half_to_float(load_u16(src + 2)));
        __m256i q[4];
        nibbles(src + 4, q);
        for (int k = 0; k < 4; k++) {
            // Multiply, then add: two roundings, as the scalar loop.
            _mm256_storeu_ps(dst + 8 * k, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q[k]), d), m));
        }
    }
}
// The fifth bits of Q5_0/Q5_1 for the four lane groups that `nibbles` returns (values 0..7, 8..15, 16..23,
// 24..31), as 16 or 0 per lane.
WIDE static inline void fifth_bits(uint32_t qh, __m256i out[4]) {
    const __m256i word = _mm256_set1_epi32((int)qh), one = _mm256_set1_epi32(1);
    for (int k = 0; k < 4; k++) {
        __m256i shifts = _mm256_setr_epi32(8 * k, 8 * k + 1, 8 * k + 2, 8 * k + 3, 8 * k + 4, 8 * k + 5, 8 * k + 6,
                                           8 * k + 7);
        out[k] = _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(word, shifts), one), 4);
    }
}

WIDE static void dequantize_q5_0_wide(const unsigned char *src, float *dst, size_t blocks) {
    const __m256i sixteen = _mm256_set1_epi32(16);
    for (size_t b = 0; b < blocks; b++, src += 22, dst += 32) {
        __m256 d = _mm256_set1_ps(half_to_float(load_u16(src)));
        __m256i q[4], h[4];
        nibbles(src + 6, q);
        fifth_bits(load_u32(src + 2), h);
        for (int k = 0; k < 4; k++) {
            __m256i v = _mm256_sub_epi32(_mm256_or_si256(q[k], h[k]), sixteen);
            _mm256_storeu_ps(dst + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(v), d));
        }
    }
}

WIDE static void dequantize_q5_1_wide(const unsigned char *src, float *dst, size_t blocks) {
    for (size_t b = 0; b < blocks; b++, src += 24, dst += 32) {
        __m256 d = _mm256_set1_ps(half_to_float(load_u16(src)));
        __m256 m = _mm256_set1_ps(half_to_float(load_u16(src + 2)));
        __m256i q[4], h[4];
        nibbles(src + 8, q);
        fifth_bits(load_u32(src + 4), h);
        for (int k = 0; k < 4; k++) {
            __m256 v = _mm256_cvtepi32_ps(_mm256_or_si256(q[k], h[k]));
            _mm256_storeu_ps(dst + 8 * k, _mm256_add_ps(_mm256_mul_ps(v, d), m));
        }
    }
}

// Eight bytes widened to eight float lanes.
WIDE static inline __m256 u8x8_to_ps(__m128i bytes) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)); }

WIDE static void dequantize_k4_wide(const unsigned char *src, float *dst, size_t blocks, int fifth) {
    const __m128i low4 = _mm_set1_epi8(0x0F), sixteen = _mm_set1_epi8(16);
    const size_t size = fifth ? 176 : 144;
    for (size_t b = 0; b < blocks; b++, src += size, dst += 256) {
        float d = half_to_float(load_u16(src)), dmin = half_to_float(load_u16(src + 2));
        const unsigned char *scales = src + 4, *qh = src + 16, *qs = src + (fifth ? 48 : 16);
        for (int c = 0; c < 4; c++) {
            float f[4];
            chunk_factors(d, dmin, scales, c, f);
            __m256 d1 = _mm256_set1_ps(f[0]), o1 = _mm256_set1_ps(f[1]);
            __m256 d2 = _mm256_set1_ps(f[2]), o2 = _mm256_set1_ps(f[3]);
            const __m128i bit_lo = _mm_set1_epi8((char)(1u << (2 * c))), bit_hi = _mm_set1_epi8((char)(2u << (2 * c)));
            const unsigned char *q = qs + 32 * c;
            float *y = dst + 64 * c;
            for (int k = 0; k < 4; k++) {
                __m128i bytes = _mm_loadl_epi64((const __m128i *)(q + 8 * k));
                __m128i lo = _mm_and_si128(bytes, low4), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4);
                if (fifth) {
                    // 16 where the sub-block's bit is set: (high & bit) == bit gives 0xFF, masked down to 16.
                    __m128i high = _mm_loadl_epi64((const __m128i *)(qh + 8 * k));
                    lo = _mm_add_epi8(lo, _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(high, bit_lo), bit_lo), sixteen));
                    hi = _mm_add_epi8(hi, _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(high, bit_hi), bit_hi), sixteen));
                }
                _mm256_storeu_ps(y + 8 * k, _mm256_sub_ps(_mm256_mul_ps(d1, u8x8_to_ps(lo)), o1));
                _mm256_storeu_ps(y + 32 + 8 * k, _mm256_sub_ps(_mm256_mul_ps(d2, u8x8_to_ps(hi)), o2));
            }
        }
    }
}

WIDE static void dequantize_q6_k_wide(const unsigned char *src, float *dst, size_t blocks) {
    const __m128i low4 = _mm_set1_epi8(0x0F), three = _mm_set1_epi8(3);
    const __m256i bias = _mm256_set1_epi32(32);
    for (size_t b = 0; b < blocks; b++, src += 210, dst += 256) {
        float d = half_to_float(load_u16(src + 208));
        for (int half = 0; half < 2; half++) {
            const unsigned char *L = src + 64 * half, *H = src + 128 + 32 * half;
            const signed char *S = (const signed char *)(src + 192 + 8 * half);
            float *y = dst + 128 * half;
            for (int k = 0; k < 4; k++) {
                int s = k / 2;  // l = 8k .. 8k+7 lies in sub-block l/16
                __m128i a = _mm_loadl_epi64((const __m128i *)(L + 8 * k));
                __m128i bb = _mm_loadl_epi64((const __m128i *)(L + 32 + 8 * k));
                __m128i h = _mm_loadl_epi64((const __m128i *)(H + 8 * k));
                __m128i q[4] = {
                    _mm_or_si128(_mm_and_si128(a, low4), _mm_slli_epi16(_mm_and_si128(h, three), 4)),
                    _mm_or_si128(
                        _mm_and_si128(bb, low4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 2), three), 4)),
                    _mm_or_si128(
                        _mm_and_si128(_mm_srli_epi16(a, 4), low4),
                        _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 4), three), 4)),
                    _mm_or_si128(
                        _mm_and_si128(_mm_srli_epi16(bb, 4), low4),
                        _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 6), three), 4)),
                };
                for (int part = 0; part < 4; part++) {
                    __m256 scale = _mm256_set1_ps(d * (float)S[s + 2 * part]);
                    __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(q[part]), bias));
                    _mm256_storeu_ps(y + 32 * part + 8 * k, _mm256_mul_ps(scale, v));
                }
            }
        }
    }
}
#endif

// MARK: dispatch

static int wide_state = -1;

int cairn_kernels_wide(void) {
#ifdef HAVE_WIDE
    int w = __atomic_load_n(&wide_state, __ATOMIC_RELAXED);
    if (w < 0) {
        // Every thread that gets here computes the same answer.
        __builtin_cpu_init();
        w = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        __atomic_store_n(&wide_state, w, __ATOMIC_RELAXED);
    }
    return w;
#else
    return 0;
#endif
}

int cairn_kernels_use_wide(int use) {
    __atomic_store_n(&wide_state, -1, __ATOMIC_RELAXED);
    int available = cairn_kernels_wide();
    __atomic_store_n(&wide_state, use && available, __ATOMIC_RELAXED);
    return use && available;
}

#ifdef HAVE_WIDE
#define PICK(call_wide, call_portable) (cairn_kernels_wide() ? (call_wide) : (call_portable))
#define RUN(call_wide, call_portable) \
    if (cairn_kernels_wide()) { \
        call_wide; \
    } else { \
        call_portable; \
    }
#else
#define PICK(call_wide, call_portable) (call_portable)
#define RUN(call_wide, call_portable) call_portable;
#endif

void cairn_exp(const float *x, float *y, size_t n) { RUN(exp_wide(x, y, n), exp_portable(x, y, n)) }

float cairn_exp_shifted_sum_inplace(float *x, size_t n, float shift) {
    return PICK(exp_shifted_sum_inplace_wide(x, n, shift), exp_shifted_sum_inplace_portable(x, n, shift));
}

float cairn_exp_shifted_sum(const float *x, size_t n, float shift) {
    return PICK(exp_shifted_sum_wide(x, n, shift), exp_shifted_sum_portable(x, n, shift));
}

float cairn_max(const float *x, size_t n) { return PICK(max_wide(x, n), max_portable(x, n)); }

void cairn_scale(float *x, size_t n, float scale) { RUN(scale_wide(x, n, scale), scale_portable(x, n, scale)) }

void cairn_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    RUN(swiglu_forward_wide(out, gate, up, n), swiglu_forward_portable(out, gate, up, n))
}

void cairn_swiglu_backward(
    float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n, int accumulate) {
    RUN(swiglu_backward_wide(dgate, dup, dout, gate, up, n, accumulate),
        swiglu_backward_portable(dgate, dup, dout, gate, up, n, accumulate))
}

void cairn_softmax_backward_row(float *p, float *dp, size_t n, float lse) {
    RUN(softmax_backward_row_wide(p, dp, n, lse), softmax_backward_row_portable(p, dp, n, lse))
}

void cairn_dequantize_q8_0(const void *src, float *dst, size_t blocks) {
    RUN(dequantize_q8_0_wide(src, dst, blocks), dequantize_q8_0_portable(src, dst, blocks))
}

void cairn_dequantize_q4_0(const void *src, float *dst, size_t blocks) {
    RUN(dequantize_q4_0_wide(src, dst, blocks), dequantize_q4_0_portable(src, dst, blocks))
}

void cairn_dequantize_q4_1(const void *src, float *dst, size_t blocks) {
    RUN(dequantize_q4_1_wide(src, dst, blocks), dequantize_q4_1_portable(src, dst, blocks))
}

void cairn_dequantize_q4_k(const void *src, float *dst, size_t blocks) {
    RUN(dequantize_k4_wide(src, dst, blocks, 0), dequantize_k4_portable(src, dst, blocks, 0))
}

void cairn_dequantize_q5_k(const void *src, float *dst, size_t blocks) {
    RUN(dequantize_k4_wide(src, dst, blocks, 1), dequantize_k4_portable(src, dst, blocks, 1))
}

void cairn_dequantize_q6_k(const void *src, float *dst, size_t blocks) {
    RUN(dequantize_q6_k_wide(src, dst, blocks), dequantize_q6_k_portable(src, dst, blocks))
}

void cairn_dequantize_q5_0(const void *src, float *dst, size_t blocks) {
    RUN(dequantize_q5_0_wide(src, dst, blocks), dequantize_q5_0_portable(src, dst, blocks))
}

void cairn_dequantize_q5_1(const void *src, float *dst, size_t blocks) {
    RUN(dequantize_q5_1_wide(src, dst, blocks), dequantize_q5_1_portable(src, dst, blocks))
}
