// TensorCheck: comparing tensors with named tolerances and reporting the largest difference (llm.c's
// check_tensor), and filling test inputs from a seed.

import Testing
import TensorKernels

/// Named tolerances, so each test says which kind of agreement it expects.
public enum Tolerance {
    /// Same arithmetic, different order or threading: fp32 rounding only.
    public static let reordered: Float = 1e-5
    /// Fast kernel against a Double reference.
    public static let fastVersusNaive: Float = 2e-5
    /// Central finite differences in fp32 against an analytic gradient.
    public static let finiteDifference: Float = 1e-2
    /// Our fp32 model against PyTorch's fp32 model.
    public static let reference: Float = 1e-4
}

/// The largest absolute and relative difference between two tensors.
public struct Difference: CustomStringConvertible {
    /// max |a − b|
    public var maxAbsolute: Float
    /// max |a − b| / max(|b|, floor) with the floor at 1e-3 of the largest |b|.
    public var maxRelative: Float
    /// Index of the largest absolute difference.
    public var worstIndex: Int
    public var description: String { "max abs diff \(maxAbsolute) (at \(worstIndex)), max rel diff \(maxRelative)" }
}

/// Measures how far `actual` is from `expected`.
public func difference(_ actual: UnsafeBufferPointer<Float>, _ expected: UnsafeBufferPointer<Float>) -> Difference {
    precondition(actual.count == expected.count, "difference: \(actual.count) vs \(expected.count) elements")
    let scale = expected.reduce(Float(0)) { max($0, abs($1)) }
    let floor = max(scale * 1e-3, .leastNormalMagnitude)
    var result = Difference(maxAbsolute: 0, maxRelative: 0, worstIndex: 0)
    for i in 0..<actual.count {
        let d = abs(actual[i] - expected[i])
        if d > result.maxAbsolute || d.isNaN {
            result.maxAbsolute = d
            result.worstIndex = i
        }
        result.maxRelative = max(result.maxRelative, d / max(abs(expected[i]), floor))
    }
    return result
}

/// Expects every element of `actual` within `tolerance` of `expected`, relative to the larger of 1 and the
/// largest expected magnitude; records the worst difference on failure.
public func expectClose(
    _ actual: [Float], _ expected: [Float], tolerance: Float, _ label: String = "",
    sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(
        actual.count == expected.count, "\(label): \(actual.count) vs \(expected.count) elements",
        sourceLocation: sourceLocation)
    guard actual.count == expected.count else { return }
    let d = actual.withUnsafeBufferPointer { a in expected.withUnsafeBufferPointer { difference(a, $0) } }
    let scale = max(1, expected.reduce(Float(0)) { max($0, abs($1)) })
    #expect(d.maxAbsolute <= tolerance * scale, "\(label): \(d), scale \(scale)", sourceLocation: sourceLocation)
}

/// Expects two buffers close; see the array version.
public func expectClose(
    _ actual: FloatBuffer, _ expected: FloatBuffer, tolerance: Float, _ label: String = "",
    sourceLocation: SourceLocation = #_sourceLocation
) {
    expectClose(actual.array, expected.array, tolerance: tolerance, label, sourceLocation: sourceLocation)
}

/// Uniform random floats in [lo, hi) from a seed.
public func randomFloats(_ count: Int, seed: UInt64, in range: ClosedRange<Float> = -1...1) -> [Float] {
    var rng = SeededGenerator(seed: seed)
    return (0..<count).map { _ in range.lowerBound + (range.upperBound - range.lowerBound) * rng.nextUnitFloat() }
}

/// A buffer of uniform random floats from a seed.
public func randomBuffer(_ count: Int, seed: UInt64, in range: ClosedRange<Float> = -1...1) -> FloatBuffer {
    FloatBuffer(randomFloats(count, seed: seed, in: range))
}

/// ‖actual − expected‖ / ‖expected‖ (Frobenius, in Double): how far apart two whole tensors are, as one number.
public func relativeL2(_ actual: [Float], _ expected: [Float]) -> Double {
    var difference = 0.0
    var norm = 0.0
    for (a, b) in zip(actual, expected) {
        difference += Double(a - b) * Double(a - b)
        norm += Double(b) * Double(b)
    }
    return (difference / max(norm, 1e-30)).squareRoot()
}
