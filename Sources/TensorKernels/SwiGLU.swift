// SwiGLU: the llama feed-forward gate, out = silu(gate) ⊙ up with silu(z) = z·σ(z).
//
// Dims: N = rows, F = hidden width of the feed-forward (intermediate_size).
// Backward: d(up) = dOut ⊙ silu(gate);  d(gate) = dOut ⊙ up ⊙ σ(gate)·(1 + gate·(1 − σ(gate))).

import CKernels
import Foundation

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
        cairn_swiglu_forward(out + range.lowerBound, gate + range.lowerBound, up + range.lowerBound, range.count)
    }
}

/// SwiGLU backward; `dGate` and `dUp` accumulate, or with `accumulate: false` are overwritten, in which case
/// they may be the very buffers `gate` and `up` (each element is read before it is written): the training
/// backward turns the saved gate and up activations into their gradients in place.
///
/// - Parameters:
///   - dGate: (N, F) `+=`.
///   - dUp: (N, F) `+=`.
///   - dOut: (N, F).
///   - gate: (N, F), the forward input.
///   - up: (N, F), the forward input.
public func swigluBackward(
    dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
    gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int, accumulate: Bool = true
) {
    Parallel.forRanges(count, grain: 4096) { range in
        let i = range.lowerBound
        cairn_swiglu_backward(dGate + i, dUp + i, dOut + i, gate + i, up + i, range.count, accumulate ? 1 : 0)
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
