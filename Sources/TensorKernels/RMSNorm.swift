// RMSNorm: y = w ⊙ x / sqrt(mean(x²) + eps), row by row, as in llama (Docs/FORMATS.md §9): eps inside the square
// root, the weight applied after normalising, no bias, no mean subtraction.
//
// Dims: N = rows (tokens), C = row length. `rstd` (N) saves 1/sqrt(mean(x²) + eps) for the backward.
//
// Backward, with x̂ = x·rstd and g = dy ⊙ w:
//   dw += Σ_rows dy ⊙ x̂
//   dx += rstd · (g − x̂ · mean(g ⊙ x̂))
// (the derivative of x̂ = x/rms(x): ∂x̂_i/∂x_j = rstd·(δ_ij − x̂_i x̂_j / C)).

/// RMSNorm forward over `N` rows of `C`.
///
/// - Parameters:
///   - out: (N, C), overwritten; may not alias `input`.
///   - rstd: (N) receives 1/rms per row, or nil when no backward follows.
///   - input: (N, C).
///   - weight: (C).
///   - eps: Added to the mean square (llama: `layer_norm_rms_epsilon`).
public func rmsNormForward(
    out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>?, input: UnsafePointer<Float>,
    weight: UnsafePointer<Float>, rows N: Int, dim C: Int, eps: Float
) {
    Parallel.forRanges(N, grain: 32) { range in
        for n in range {
            let x = input + n * C
            let y = out + n * C
            let s = 1 / (sumOfSquares(x, C) / Float(C) + eps).squareRoot()
            rstd?[n] = s
            for i in 0..<C { y[i] = x[i] * s * weight[i] }
        }
    }
}

/// RMSNorm backward; `dInput` and `dWeight` accumulate.
///
/// - Parameters:
///   - dInput: (N, C) `+=`.
///   - dWeight: (C) `+=`, or nil for a frozen norm weight.
///   - dOut: (N, C).
///   - input: (N, C), the forward input.
///   - weight: (C).
///   - rstd: (N), saved by the forward.
public func rmsNormBackward(
    dInput: UnsafeMutablePointer<Float>, dWeight: UnsafeMutablePointer<Float>?, dOut: UnsafePointer<Float>,
    input: UnsafePointer<Float>, weight: UnsafePointer<Float>, rstd: UnsafePointer<Float>, rows N: Int, dim C: Int
) {
    Parallel.forRanges(N, grain: 32) { range in
        for n in range {
            let x = input + n * C
            let dy = dOut + n * C
            let dx = dInput + n * C
            let s = rstd[n]
            var dotGX: Float = 0
            for i in 0..<C { dotGX += dy[i] * weight[i] * x[i] * s }
            let mean = dotGX / Float(C)
            for i in 0..<C {
                let xhat = x[i] * s
                dx[i] += s * (dy[i] * weight[i] - xhat * mean)
            }
        }
    }
    if let dWeight {
        // Rows collide on dWeight: split over columns instead.
        Parallel.forRanges(C, grain: 64) { cols in
            for n in 0..<N {
                let x = input + n * C
                let dy = dOut + n * C
                let s = rstd[n]
                for i in cols { dWeight[i] += dy[i] * x[i] * s }
            }
        }
    }
}

/// The reference for `rmsNormForward`: one row at a time, in Double.
public func rmsNormForwardNaive(
    out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>?, input: UnsafePointer<Float>,
    weight: UnsafePointer<Float>, rows N: Int, dim C: Int, eps: Float
) {
    for n in 0..<N {
        var ms = 0.0
        for i in 0..<C { ms += Double(input[n * C + i]) * Double(input[n * C + i]) }
        let s = 1 / (ms / Double(C) + Double(eps)).squareRoot()
        rstd?[n] = Float(s)
        for i in 0..<C { out[n * C + i] = Float(Double(input[n * C + i]) * s * Double(weight[i])) }
    }
}
