// VectorMath: the few inner loops the kernels share: dot products and axpy over SIMD8 (they vectorise on any
// x86-64 or arm64 baseline), and the exponential family from CKernels (AVX2+FMA where the CPU has it).

import CKernels
import Foundation

@inline(__always)
func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = SIMD8<Float>(repeating: 0)
    var i = 0
    while i + 8 <= n {
        acc +=
            UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self)
            * UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self)
        i += 8
    }
    var sum = acc.sum()
    while i < n {
        sum += a[i] * b[i]
        i += 1
    }
    return sum
}

@inline(__always)
func sumOfSquares(_ a: UnsafePointer<Float>, _ n: Int) -> Float { dot(a, a, n) }

@inline(__always)
func maxValue(_ a: UnsafePointer<Float>, _ n: Int) -> Float { cairn_max(a, n) }

/// y[i] += alpha * x[i]
@inline(__always)
func axpy(_ y: UnsafeMutablePointer<Float>, _ alpha: Float, _ x: UnsafePointer<Float>, _ n: Int) {
    let va = SIMD8<Float>(repeating: alpha)
    var i = 0
    while i + 8 <= n {
        let vx = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
        let vy = UnsafeRawPointer(y + i).loadUnaligned(as: SIMD8<Float>.self)
        UnsafeMutableRawPointer(y + i).storeBytes(of: vy + va * vx, as: SIMD8<Float>.self)
        i += 8
    }
    while i < n {
        y[i] += alpha * x[i]
        i += 1
    }
}

/// Replaces x[i] by exp(x[i] - shift) and returns the sum of the new values.
@inline(__always)
func expShiftedInPlace(_ x: UnsafeMutablePointer<Float>, _ n: Int, shift: Float) -> Float {
    cairn_exp_shifted_sum_inplace(x, n, shift)
}

/// Σ exp(x[i] − shift).
@inline(__always)
func expSum(_ x: UnsafePointer<Float>, _ n: Int, shift: Float) -> Float { cairn_exp_shifted_sum(x, n, shift) }

/// x[i] *= scale for i in 0..<n.
@inline(__always)
public func scaleInPlace(_ x: UnsafeMutablePointer<Float>, _ n: Int, by scale: Float) { cairn_scale(x, n, scale) }

/// exp(x[i]) for every i (CKernels' exp: within 2 ulp; 0 below −87.34, +inf above 88.72, NaN kept).
public func vectorExp(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count n: Int) { cairn_exp(x, y, n) }

/// Whether the elementwise kernels run their AVX2+FMA versions (the default where the CPU has AVX2 and FMA).
/// Setting false selects the portable versions (tests run both); setting true on a CPU without them keeps the
/// portable ones.
public var elementwiseKernelsAreWide: Bool {
    get { cairn_kernels_wide() != 0 }
    set { _ = cairn_kernels_use_wide(newValue ? 1 : 0) }
}
