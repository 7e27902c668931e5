// VectorMath: the few inner loops the kernels share, written over SIMD8 so they vectorise on any x86-64 or
// arm64 baseline. Internal to TensorKernels.

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
func maxValue(_ a: UnsafePointer<Float>, _ n: Int) -> Float {
    var m = -Float.infinity
    for i in 0..<n where a[i] > m { m = a[i] }
    return m
}

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
    var sum: Float = 0
    for i in 0..<n {
        let e = Foundation.exp(x[i] - shift)
        x[i] = e
        sum += e
    }
    return sum
}
