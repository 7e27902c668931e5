// Optimizer: AdamW over the adapter's flat buffer, the learning-rate schedule, and clipping by global norm,
// computed as PyTorch and transformers compute them so runs compare step for step.

import Foundation
import TensorKernels

/// The learning rate at each step: linear warmup from 0, then cosine, linear or constant decay to
/// `minRatio` × peak at `totalSteps` (transformers' get_*_schedule_with_warmup with a floor).
public struct LearningRateSchedule: Sendable, Equatable {
    public var peak: Double
    public var warmupSteps: Int
    public var totalSteps: Int
    public var kind: ScheduleKind
    public var minRatio: Double

    public init(peak: Double, warmupSteps: Int, totalSteps: Int, kind: ScheduleKind, minRatio: Double = 0) {
        self.peak = peak
        self.warmupSteps = warmupSteps
        self.totalSteps = totalSteps
        self.kind = kind
        self.minRatio = minRatio
    }

    /// The rate used by the update of 0-based step `step`.
    public func rate(step: Int) -> Double {
        if step < warmupSteps { return peak * Double(step) / Double(max(1, warmupSteps)) }
        let progress = Double(step - warmupSteps) / Double(max(1, totalSteps - warmupSteps))
        let factor: Double
        switch kind {
        case .constant: return peak
        case .linear: factor = max(0, 1 - progress)
        case .cosine: factor = max(0, 0.5 * (1 + Foundation.cos(Double.pi * progress)))
        }
        return peak * (minRatio + (1 - minRatio) * factor)
    }
}

/// AdamW state for one adapter: first and second moments in buffers laid out like the parameters.
public final class AdamWOptimizer: @unchecked Sendable {
    /// First moments.
    public let m: FloatBuffer
    /// Second moments.
    public let v: FloatBuffer
    /// Updates applied so far.
    public var stepCount = 0
    public let beta1: Float
    public let beta2: Float
    public let epsilon: Float
    public let weightDecay: Float

    /// Zeroed moments for `count` parameters.
    public init(count: Int, beta1: Float, beta2: Float, epsilon: Float, weightDecay: Float) {
        m = FloatBuffer(count: count)
        v = FloatBuffer(count: count)
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
    }

    /// Applies one update at learning rate `lr`.
    public func update(parameters: FloatBuffer, gradients: FloatBuffer, learningRate lr: Double) {
        precondition(parameters.count == m.count && gradients.count == m.count, "AdamWOptimizer: size mismatch")
        stepCount += 1
        adamWUpdate(
            parameters: parameters.pointer, gradients: gradients.pointer, m: m.pointer, v: v.pointer, count: m.count,
            step: stepCount,
            settings: AdamWSettings(
                learningRate: Float(lr), beta1: beta1, beta2: beta2, epsilon: epsilon, weightDecay: weightDecay))
    }
}

/// The L2 norm of a gradient buffer, summed in Double in a fixed order (so it is reproducible).
public func globalNorm(_ g: FloatBuffer) -> Double {
    var sum = 0.0
    let p = g.pointer
    var i = 0
    while i < g.count {
        var chunk: Float = 0
        let end = min(g.count, i + 4096)
        for j in i..<end { chunk += p[j] * p[j] }
        sum += Double(chunk)
        i = end
    }
    return sum.squareRoot()
}

/// Scales gradients so their global norm is at most `maxNorm`, as torch.nn.utils.clip_grad_norm_ does
/// (coefficient maxNorm / (norm + 1e-6), applied only when below 1). Returns the norm before clipping.
@discardableResult
public func clipGradients(_ g: FloatBuffer, maxNorm: Double) -> Double {
    let norm = globalNorm(g)
    guard maxNorm > 0 else { return norm }
    let coefficient = maxNorm / (norm + 1e-6)
    if coefficient < 1 {
        let c = Float(coefficient)
        for i in 0..<g.count { g[i] *= c }
    }
    return norm
}
