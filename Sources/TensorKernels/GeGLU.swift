// GeGLU: Gemma's feed-forward gate, out = gelu(gate) ⊙ up, with GELU in its tanh form (PyTorch's
// gelu(approximate="tanh"), Hugging Face's gelu_pytorch_tanh):
//   gelu(z) = ½·z·(1 + tanh(u)),  u = √(2/π)·(z + 0.044715·z³)
// Dims: N = rows, F = hidden width of the feed-forward.
// Backward: d(up) = dOut ⊙ gelu(gate);  d(gate) = dOut ⊙ up ⊙ gelu'(gate), with
//   gelu'(z) = ½·(1 + tanh u) + ½·z·(1 − tanh² u)·√(2/π)·(1 + 3·0.044715·z²).

import Foundation

/// The gate activation of a gated feed-forward block.
public enum GateActivation: String, Sendable, Equatable, CaseIterable {
    /// silu(z) = z·σ(z): SwiGLU (Llama, Qwen, Mistral, Phi).
    case silu
    /// GELU, tanh approximation: GeGLU (Gemma).
    case geluTanh
}

private let geluC = Float((2 / Double.pi).squareRoot())
private let geluK: Float = 0.044715

/// GeGLU forward: `out = gelu_tanh(gate) ⊙ up`.
///
/// - Parameters:
///   - out: (N, F), overwritten; may alias `gate` or `up`.
///   - gate: (N, F).
///   - up: (N, F).
public func gegluForward(
    out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int
) {
    Parallel.forRanges(count, grain: 4096) { range in
        for i in range {
            let z = gate[i]
            let t = Foundation.tanh(geluC * (z + geluK * z * z * z))
            out[i] = 0.5 * z * (1 + t) * up[i]
        }
    }
}

/// GeGLU backward; `dGate` and `dUp` accumulate, or with `accumulate: false` are overwritten, in which case they
/// may be the very buffers `gate` and `up` (each element is read before it is written).
///
/// - Parameters:
///   - dGate: (N, F) `+=`.
///   - dUp: (N, F) `+=`.
///   - dOut: (N, F).
///   - gate: (N, F), the forward input.
///   - up: (N, F), the forward input.
public func gegluBackward(
    dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
    gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int, accumulate: Bool = true
) {
    Parallel.forRanges(count, grain: 4096) { range in
        for i in range {
            let z = gate[i]
            let u = up[i]
            let d = dOut[i]
            let t = Foundation.tanh(geluC * (z + geluK * z * z * z))
            let gelu = 0.5 * z * (1 + t)
            let slope = 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * geluC * (1 + 3 * geluK * z * z)
            if accumulate {
                dGate[i] += d * u * slope
                dUp[i] += d * gelu
            } else {
                dGate[i] = d * u * slope
                dUp[i] = d * gelu
            }
        }
    }
}

/// The reference for `gegluForward`: in Double, one thread. Same arguments.
public func gegluForwardNaive(
    out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int
) {
    let c = (2 / Double.pi).squareRoot()
    for i in 0..<count {
        let z = Double(gate[i])
        out[i] = Float(0.5 * z * (1 + Foundation.tanh(c * (z + 0.044715 * z * z * z))) * Double(up[i]))
    }
}

/// The gated feed-forward forward for an activation: SwiGLU or GeGLU.
public func gatedForward(
    _ activation: GateActivation, out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>,
    up: UnsafePointer<Float>, count: Int
) {
    switch activation {
    case .silu: swigluForward(out: out, gate: gate, up: up, count: count)
    case .geluTanh: gegluForward(out: out, gate: gate, up: up, count: count)
    }
}

/// The gated feed-forward backward for an activation: SwiGLU or GeGLU (same contract as `swigluBackward`).
public func gatedBackward(
    _ activation: GateActivation, dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>,
    dOut: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int,
    accumulate: Bool = true
) {
    switch activation {
    case .silu:
        swigluBackward(dGate: dGate, dUp: dUp, dOut: dOut, gate: gate, up: up, count: count, accumulate: accumulate)
    case .geluTanh:
        gegluBackward(dGate: dGate, dUp: dUp, dOut: dOut, gate: gate, up: up, count: count, accumulate: accumulate)
    }
}
