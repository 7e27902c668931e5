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
    var acc = SIMD8<Float>(repeating: -.infinity)
    var i = 0
    while i + 8 <= n {
        let v = UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self)
        acc.replace(with: v, where: v .> acc)
        i += 8
    }
    var m = acc.max()
    while i < n {
        if a[i] > m { m = a[i] }
        i += 1
    }
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
    let vShift = SIMD8<Float>(repeating: shift)
    var acc = SIMD8<Float>(repeating: 0)
    var i = 0
    while i + 8 <= n {
        let e = exp8(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self) - vShift)
        UnsafeMutableRawPointer(x + i).storeBytes(of: e, as: SIMD8<Float>.self)
        acc += e
        i += 8
    }
    var sum = acc.sum()
    while i < n {
        let e = exp1(x[i] - shift)
        x[i] = e
        sum += e
        i += 1
    }
    return sum
}

@inline(__always)
func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> { UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self) }

@inline(__always)
func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}

/// Σ exp(x[i] − shift).
@inline(__always)
func expSum(_ x: UnsafePointer<Float>, _ n: Int, shift: Float) -> Float {
    let vShift = SIMD8<Float>(repeating: shift)
    var acc = SIMD8<Float>(repeating: 0)
    var i = 0
    while i + 8 <= n {
        acc += exp8(load8(x + i) - vShift)
        i += 8
    }
    var sum = acc.sum()
    while i < n {
        sum += exp1(x[i] - shift)
        i += 1
    }
    return sum
}

/// σ(z) = 1 / (1 + e^−z) over SIMD8 lanes.
@inline(__always)
func sigmoid8(_ z: SIMD8<Float>) -> SIMD8<Float> { 1 / (1 + exp8(-z)) }

/// x[i] *= scale
@inline(__always)
func scaleInPlace(_ x: UnsafeMutablePointer<Float>, _ n: Int, by scale: Float) {
    let v = SIMD8<Float>(repeating: scale)
    var i = 0
    while i + 8 <= n {
        let y = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self) * v
        UnsafeMutableRawPointer(x + i).storeBytes(of: y, as: SIMD8<Float>.self)
        i += 8
    }
    while i < n {
        x[i] *= scale
        i += 1
    }
}

// exp over SIMD8 lanes: Cody–Waite range reduction x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in a short high
// part, exact in n·C1, and a low correction), a degree-6 polynomial for e^r (Cephes expf's coefficients, error
// within 2 ulp of the correctly rounded result over the whole range, checked against Foundation.exp in
// VectorMathTests), and 2^n built in the exponent field in two halves so n = 128 does not overflow the field.
// Below −87.34 the result is 0 (the true value is under FLT_MIN), above 88.72 it is +inf, NaN stays NaN.
private let expLow: Float = -87.336_544_75
private let expHigh: Float = 88.722_839_11

@inline(__always)
func exp8(_ x: SIMD8<Float>) -> SIMD8<Float> {
    // (Comparisons and blends: the generic pointwiseMin/Max are calls, not instructions.)
    var clamped = x
    clamped.replace(with: expLow, where: x .< expLow)
    clamped.replace(with: expHigh, where: x .> expHigh)
    // Round x·log2(e) to the nearest integer by adding 1.5·2^23: the integer lands in the low mantissa bits.
    let magic = SIMD8<Float>(repeating: 12_582_912)
    let shifted = clamped * 1.442_695_04 + magic
    let n = shifted - magic
    var r = clamped - n * 0.693_359_375
    r = r - n * -2.121_944_4e-4
    var p = SIMD8<Float>(repeating: 1.987_569_15e-4)
    p = p * r + 1.398_199_95e-3
    p = p * r + 8.333_451_9e-3
    p = p * r + 4.166_579_59e-2
    p = p * r + 0.166_666_655
    p = p * r + 0.500_000_012
    let y = p * (r * r) + r + 1
    let k = unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- 0x4B40_0000
    let k1 = k &>> 1
    let k2 = k &- k1
    let s1 = unsafeBitCast((k1 &+ 127) &<< 23, to: SIMD8<Float>.self)
    let s2 = unsafeBitCast((k2 &+ 127) &<< 23, to: SIMD8<Float>.self)
    var result = y * s1 * s2
    result.replace(with: 0, where: x .< expLow)
    result.replace(with: .infinity, where: x .> expHigh)
    result.replace(with: x, where: x .!= x)
    return result
}

/// `exp8` for one value (tails of rows), so a row's every element is computed the same way.
@inline(__always)
func exp1(_ x: Float) -> Float { exp8(SIMD8(repeating: x))[0] }

/// exp(x[i]) for every i, for tests and callers outside the kernels.
public func vectorExp(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count n: Int) {
    var i = 0
    while i + 8 <= n {
        UnsafeMutableRawPointer(y + i).storeBytes(
            of: exp8(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)), as: SIMD8<Float>.self)
        i += 8
    }
    while i < n {
        y[i] = exp1(x[i])
        i += 1
    }
}
