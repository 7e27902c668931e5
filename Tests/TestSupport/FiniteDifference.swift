// FiniteDifference: checks a backward kernel against central differences of its forward.
//
// The scalar checked is L = Σ out ⊙ R for a fixed random R, so dL/dout = R is what the backward receives.
// For each input element x_i: (L(x_i + h) − L(x_i − h)) / 2h, computed in Double from fp32 forwards.

import Testing
import TensorKernels

/// Numerical gradient of `loss` with respect to every element of `input` by central differences.
///
/// - Parameters:
///   - input: Perturbed in place one element at a time and restored.
///   - step: h; fp32 forwards want about 1e-2 to 1e-3 relative to the values.
///   - loss: Runs the forward and returns L.
public func numericGradient(of input: FloatBuffer, step: Float = 1e-2, loss: () -> Double) -> [Float] {
    var gradient = [Float](repeating: 0, count: input.count)
    for i in 0..<input.count {
        let saved = input[i]
        input[i] = saved + step
        let plus = loss()
        input[i] = saved - step
        let minus = loss()
        input[i] = saved
        gradient[i] = Float((plus - minus) / (2 * Double(step)))
    }
    return gradient
}

/// Σ a ⊙ b in Double: the projection that turns a tensor output into the scalar L.
public func projection(_ a: FloatBuffer, _ b: FloatBuffer) -> Double {
    precondition(a.count == b.count)
    var sum = 0.0
    for i in 0..<a.count { sum += Double(a[i]) * Double(b[i]) }
    return sum
}

/// Expects an analytic gradient to match central differences, relative to the gradient's largest magnitude.
public func expectGradient(
    _ analytic: [Float], _ numeric: [Float], _ label: String, tolerance: Float = Tolerance.finiteDifference,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    let scale = max(numeric.reduce(Float(0)) { max($0, abs($1)) }, 1e-3)
    var worst: Float = 0
    var worstIndex = 0
    for i in 0..<analytic.count where abs(analytic[i] - numeric[i]) > worst {
        worst = abs(analytic[i] - numeric[i])
        worstIndex = i
    }
    #expect(
        worst <= tolerance * scale,
        "\(label): max |analytic − numeric| = \(worst) at \(worstIndex) (analytic \(analytic[worstIndex]), numeric \(numeric[worstIndex])), gradient scale \(scale)",
        sourceLocation: sourceLocation)
}
