// AdamW: Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW computes it:
//   p ← p − lr·wd·p
//   m ← β1·m + (1−β1)·g            v ← β2·v + (1−β2)·g²
//   p ← p − lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + eps)
// over flat buffers: parameters, gradients and both moments share one layout, so one call steps them all.

import Foundation

/// AdamW settings for one step.
public struct AdamWSettings: Sendable, Equatable {
    /// Learning rate for this step (after the schedule).
    public var learningRate: Float
    /// β1, the decay of the first moment.
    public var beta1: Float
    /// β2, the decay of the second moment.
    public var beta2: Float
    /// Added to the root of the second moment.
    public var epsilon: Float
    /// Decoupled weight decay coefficient.
    public var weightDecay: Float

    /// Settings with PyTorch's defaults except the learning rate.
    public init(
        learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0.01
    ) {
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
    }
}

/// One AdamW update over `count` parameters.
///
/// - Parameters:
///   - parameters: Updated in place.
///   - gradients: Read only.
///   - m: First moments, updated in place (zero before the first step).
///   - v: Second moments, updated in place.
///   - step: The 1-based step number, for bias correction.
///   - settings: Learning rate and the rest.
public func adamWUpdate(
    parameters: UnsafeMutablePointer<Float>, gradients: UnsafePointer<Float>, m: UnsafeMutablePointer<Float>,
    v: UnsafeMutablePointer<Float>, count: Int, step: Int, settings: AdamWSettings
) {
    precondition(step >= 1, "adamWUpdate: step is 1-based, got \(step)")
    let b1 = settings.beta1
    let b2 = settings.beta2
    let correction1 = 1 - Float(Foundation.pow(Double(b1), Double(step)))
    let correction2 = 1 - Float(Foundation.pow(Double(b2), Double(step)))
    let lr = settings.learningRate
    let decay = 1 - lr * settings.weightDecay
    let eps = settings.epsilon
    Parallel.forRanges(count, grain: 1 << 14) { range in
        for i in range {
            let g = gradients[i]
            let mi = b1 * m[i] + (1 - b1) * g
            let vi = b2 * v[i] + (1 - b2) * g * g
            m[i] = mi
            v[i] = vi
            let mhat = mi / correction1
            let vhat = vi / correction2
            parameters[i] = parameters[i] * decay - lr * mhat / (vhat.squareRoot() + eps)
        }
    }
}

/// The reference for `adamWUpdate`: one element at a time in Double, in the order torch writes it.
public func adamWUpdateNaive(
    parameters: UnsafeMutablePointer<Float>, gradients: UnsafePointer<Float>, m: UnsafeMutablePointer<Float>,
    v: UnsafeMutablePointer<Float>, count: Int, step: Int, settings: AdamWSettings
) {
    let lr = Double(settings.learningRate)
    let b1 = Double(settings.beta1)
    let b2 = Double(settings.beta2)
    for i in 0..<count {
        var p = Double(parameters[i])
        let g = Double(gradients[i])
        p -= lr * Double(settings.weightDecay) * p
        let mi = b1 * Double(m[i]) + (1 - b1) * g
        let vi = b2 * Double(v[i]) + (1 - b2) * g * g
        let mhat = mi / (1 - Foundation.pow(b1, Double(step)))
        let vhat = vi / (1 - Foundation.pow(b2, Double(step)))
        p -= lr * mhat / (vhat.squareRoot() + Double(settings.epsilon))
        parameters[i] = Float(p)
        m[i] = Float(mi)
        v[i] = Float(vi)
    }
}
