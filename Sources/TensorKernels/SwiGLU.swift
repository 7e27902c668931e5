// SwiGLU: the llama feed-forward gate, out = silu(gate) ⊙ up with silu(z) = z·σ(z).
//
// Dims: N = rows, F = hidden width of the feed-forward (intermediate_size).
// Backward: d(up) = dOut ⊙ silu(gate);  d(gate) = dOut ⊙ up ⊙ σ(gate)·(1 + gate·(1 − σ(gate))).

import Foundation

@inline(__always)
private func sigmoid(_ z: Float) -> Float { 1 / (1 + exp1(-z)) }

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
        var i = range.lowerBound
        while i + 8 <= range.upperBound {
            let g = load8(gate + i)
            store8(g * sigmoid8(g) * load8(up + i), out + i)
            i += 8
        }
        while i < range.upperBound {
            let g = gate[i]
            out[i] = g * sigmoid(g) * up[i]
            i += 1
        }
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
        var i = range.lowerBound
        while i + 8 <= range.upperBound {
            let g = load8(gate + i)
            let u = load8(up + i)
            let d = load8(dOut + i)
            let s = sigmoid8(g)
            var du = d * g * s
            var dg = d * u * s * (1 + g * (1 - s))
            if accumulate {
                du += load8(dUp + i)
                dg += load8(dGate + i)
            }
            store8(du, dUp + i)
            store8(dg, dGate + i)
            i += 8
        }
        while i < range.upperBound {
            let g = gate[i]
            let u = up[i]
            let d = dOut[i]
            let s = sigmoid(g)
            let du = d * g * s
            let dg = d * u * s * (1 + g * (1 - s))
            dUp[i] = accumulate ? dUp[i] + du : du
            dGate[i] = accumulate ? dGate[i] + dg : dg
            i += 1
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
