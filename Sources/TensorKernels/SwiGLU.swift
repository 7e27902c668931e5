// SwiGLU: the llama feed-forward gate, out = silu(gate) ⊙ up with silu(z) = z·σ(z).
//
// Dims: N = rows, F = hidden width of the feed-forward (intermediate_size).
// Backward: d(up) = dOut ⊙ silu(gate);  d(gate) = dOut ⊙ up ⊙ σ(gate)·(1 + gate·(1 − σ(gate))).

import Foundation

@inline(__always)
private func sigmoid(_ z: Float) -> Float { 1 / (1 + Foundation.exp(-z)) }

/// SwiGLU forward: `out = silu(gate) ⊙ up`.
///
/// - Parameters:
///   - out: (N, F), overwritten; may alias `gate` or `up`.
///   - gate: (N, F).
///   - up: (N, F).
public func swigluForward(
    out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int
) {
    Parallel.forRanges(count, grain: 4096) { range in
        for i in range {
            let g = gate[i]
            out[i] = g * sigmoid(g) * up[i]
        }
    }
}

/// SwiGLU backward; `dGate` and `dUp` accumulate.
///
/// - Parameters:
///   - dGate: (N, F) `+=`.
///   - dUp: (N, F) `+=`.
///   - dOut: (N, F).
///   - gate: (N, F), the forward input.
///   - up: (N, F), the forward input.
public func swigluBackward(
    dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
    gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int
) {
    Parallel.forRanges(count, grain: 4096) { range in
        for i in range {
            let g = gate[i]
            let s = sigmoid(g)
            dUp[i] += dOut[i] * g * s
            dGate[i] += dOut[i] * up[i] * s * (1 + g * (1 - s))
        }
    }
}

/// The reference for `swigluForward`: in Double, one thread. Same arguments.
public func swigluForwardNaive(
    out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int
) {
    for i in 0..<count {
        let g = Double(gate[i])
        out[i] = Float(g / (1 + Foundation.exp(-g)) * Double(up[i]))
    }
}
