// CKernels: the elementwise inner loops of TensorKernels in C, so that on x86-64 CPUs with AVX2 and FMA (nearly
// every one since 2013) they run 8 lanes wide with fused multiply-adds, chosen at run time, while the binary stays
// runnable on the x86-64 baseline (and on arm64) through the portable versions. Each function works on one
// contiguous range; TensorKernels splits the work across threads.
#ifndef CAIRN_CKERNELS_H
#define CAIRN_CKERNELS_H

#include <stddef.h>

/// 1 when the AVX2+FMA versions are in use.
int cairn_kernels_wide(void);

/// Uses the AVX2+FMA versions (when the CPU has them) or the portable ones; for tests of both. Returns the
/// setting in force afterwards.
int cairn_kernels_use_wide(int wide);

/// y[i] = exp(x[i]): within 2 ulp of the correctly rounded result where exp is a normal float; 0 below
/// -87.34, +inf above 88.72, NaN stays NaN. x and y may be the same array.
void cairn_exp(const float *x, float *y, size_t n);

/// x[i] = exp(x[i] - shift); returns the sum of the new values.
float cairn_exp_shifted_sum_inplace(float *x, size_t n, float shift);

/// The sum of exp(x[i] - shift).
float cairn_exp_shifted_sum(const float *x, size_t n, float shift);

/// The largest x[i] (-inf for n = 0).
float cairn_max(const float *x, size_t n);

/// x[i] *= scale.
void cairn_scale(float *x, size_t n, float scale);

/// out[i] = silu(gate[i]) * up[i], silu(z) = z / (1 + exp(-z)).
void cairn_swiglu_forward(float *out, const float *gate, const float *up, size_t n);

/// dUp = dOut * silu(gate); dGate = dOut * up * s * (1 + gate * (1 - s)), s = sigmoid(gate): added to dGate and
/// dUp when accumulate is non-zero, else written, in which case dGate may be gate and dUp may be up.
void cairn_swiglu_backward(
    float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n, int accumulate);

/// Attention backward over one row of visible keys: p[i] = exp(p[i] - lse), then dp[i] = p[i] * (dp[i] - D)
/// with D = the sum of p[i] * dp[i] (which equals the row's dO . O).
void cairn_softmax_backward_row(float *p, float *dp, size_t n, float lse);

/// Dequantises `blocks` GGUF blocks (Docs/FORMATS.md §2) from `src` (any alignment) into `dst`: blocks of 32
/// values for Q8_0 (d·q), Q4_0 (d·(q − 8)), Q4_1 (d·q + m), Q5_0 (d·(q − 16)) and Q5_1 (d·q + m), super-blocks
/// of 256 for Q4_K and Q5_K ((d·sc)·q − dmin·m) and Q6_K ((d·sc)·(q − 32)). Each rounds exactly as a scalar loop
/// does (no fused multiply-add), so every build gives the same floats.
void cairn_dequantize_q8_0(const void *src, float *dst, size_t blocks);
void cairn_dequantize_q4_0(const void *src, float *dst, size_t blocks);
void cairn_dequantize_q4_1(const void *src, float *dst, size_t blocks);
void cairn_dequantize_q5_0(const void *src, float *dst, size_t blocks);
void cairn_dequantize_q5_1(const void *src, float *dst, size_t blocks);
void cairn_dequantize_q4_k(const void *src, float *dst, size_t blocks);
void cairn_dequantize_q5_k(const void *src, float *dst, size_t blocks);
void cairn_dequantize_q6_k(const void *src, float *dst, size_t blocks);

#endif
