// RoPE: rotary position embedding, applied in place to the query and key heads.
//
// Dims: N = rows (tokens), NH = heads in the row, HS = head size. Each row holds NH heads of HS values and
// has a position p. For i in 0..<HS/2, θ_i = p · base^(−2i/HS), and one pair of values per i is rotated:
//   (x0, x1) → (x0·cos θ_i − x1·sin θ_i,  x0·sin θ_i + x1·cos θ_i)
// Which two values form pair i is the convention (Docs/FORMATS.md §4):
//   .interleaved  (x[2i], x[2i+1])      GGUF / llama.cpp "NORM", Meta's original layout
//   .halfSplit    (x[i], x[i + HS/2])   Hugging Face `rotate_half`, llama.cpp "NEOX"
// Cairn keeps weights in the Hugging Face layout internally and uses .halfSplit; GGUF Q/K rows are
// un-permuted at load. Both conventions are implemented and tested.
//
// With partial rotary embeddings (Phi-4-mini) only the first RD = rotaryDim values of each head rotate, paired
// as above within those RD values, with θ_i = p · base^(−2i/RD); the rest pass through. Frequencies may be
// divided by per-pair factors (Llama 3.1 scaling, LongRoPE) and cos/sin multiplied by an attention factor
// (LongRoPE), in which case the map is a scaled rotation.
//
// Backward: a rotation's transpose is the rotation by −θ, applied in place to the gradient; a scaled
// rotation's transpose is the same scaled rotation by −θ.

import Foundation

/// Which elements of a head RoPE pairs up.
public enum RoPEStyle: String, Sendable, CaseIterable {
    /// Pairs `(2i, 2i+1)`: GGUF llama weights, llama.cpp's NORM mode.
    case interleaved
    /// Pairs `(i, i + HS/2)`: Hugging Face `rotate_half`, llama.cpp's NEOX mode.
    case halfSplit
}

/// How the rotation frequencies of a model are derived: the base and the optional per-frequency factors,
/// partial rotary dimensions, and a factor on cos and sin (LongRoPE's attention factor).
public struct RoPEFrequencies: Sendable, Equatable {
    /// The frequency base (`rope_theta`).
    public var base: Double
    /// Dims of each head that rotate, from the start of the head (the head size unless rotary is partial).
    public var rotaryDim: Int
    /// Optional (rotaryDim/2) divisors of the inverse frequencies (llama3 scaling, LongRoPE factors, a GGUF
    /// `rope_freqs` tensor).
    public var factors: [Double]?
    /// Multiplies cos and sin (LongRoPE's and YaRN's attention factor); 1 otherwise.
    public var attentionFactor: Double
    /// Divides every position (linear scaling: Gemma 3's global layers at 4B and up); 1 otherwise.
    public var linearScale: Double

    /// Frequencies for `rotaryDim` rotating dims.
    public init(
        base: Double, rotaryDim: Int, factors: [Double]? = nil, attentionFactor: Double = 1, linearScale: Double = 1
    ) {
        self.base = base
        self.rotaryDim = rotaryDim
        self.factors = factors
        self.attentionFactor = attentionFactor
        self.linearScale = linearScale
    }

    /// θ_i / position for pair i: base^(−2i/rotaryDim) / factor_i / linearScale.
    public func inverseFrequency(_ i: Int) -> Double {
        var f = Foundation.pow(base, -Double(2 * i) / Double(rotaryDim)) / linearScale
        if let factors { f /= factors[i] }
        return f
    }
}

/// Precomputed cos/sin of θ_i·p for every position below `positions`.
public struct RoPETable: Sendable {
    /// Head size (the stride between heads).
    public let headDim: Int
    /// Dims of each head that rotate (the first `rotaryDim`; the rest pass through).
    public let rotaryDim: Int
    /// Number of positions covered, 0..<positions.
    public let positions: Int
    let cos: FloatBuffer  // (positions, rotaryDim/2)
    let sin: FloatBuffer

    /// Builds the table.
    ///
    /// - Parameters:
    ///   - headDim: HS, even.
    ///   - positions: How many positions to cover (the context length).
    ///   - base: The frequency base (`rope_theta`; 10000 for Llama 2, 100000 for SmolLM2).
    ///   - frequencyFactors: Optional (HS/2) divisors of the frequencies (llama-3.1 style rope scaling).
    public init(headDim: Int, positions: Int, base: Double, frequencyFactors: [Double]? = nil) {
        self.init(
            headDim: headDim, positions: positions,
            frequencies: RoPEFrequencies(base: base, rotaryDim: headDim, factors: frequencyFactors))
    }

    /// Builds the table for a head of `headDim` whose first `frequencies.rotaryDim` dims rotate.
    public init(headDim: Int, positions: Int, frequencies f: RoPEFrequencies) {
        precondition(headDim > 0 && headDim % 2 == 0, "RoPETable: head size \(headDim) must be even")
        precondition(
            f.rotaryDim > 0 && f.rotaryDim % 2 == 0 && f.rotaryDim <= headDim,
            "RoPETable: rotary dims \(f.rotaryDim) must be even and at most the head size \(headDim)")
        precondition(f.factors == nil || f.factors!.count == f.rotaryDim / 2, "RoPETable: factor count")
        self.headDim = headDim
        rotaryDim = f.rotaryDim
        self.positions = positions
        let half = f.rotaryDim / 2
        cos = FloatBuffer(count: positions * half)
        sin = FloatBuffer(count: positions * half)
        for i in 0..<half {
            let inverseFrequency = f.inverseFrequency(i)
            for p in 0..<positions {
                let angle = Double(p) * inverseFrequency
                cos[p * half + i] = Float(Foundation.cos(angle) * f.attentionFactor)
                sin[p * half + i] = Float(Foundation.sin(angle) * f.attentionFactor)
            }
        }
    }
}

/// RoPE forward, in place.
///
/// - Parameters:
///   - x: (N, NH, HS), rotated in place.
///   - positions: (N) position of each row, each below `table.positions`.
///   - heads: NH.
///   - table: Built for HS.
///   - style: The pairing convention.
public func ropeForward(
    _ x: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, rows N: Int, heads NH: Int,
    table: RoPETable, style: RoPEStyle
) {
    ropeRotate(x, positions: positions, rows: N, heads: NH, table: table, style: style, sign: 1)
}

/// RoPE backward, in place: rotates the gradient by −θ.
///
/// - Parameters:
///   - dx: (N, NH, HS), the gradient of the rotated values on entry, of the inputs on return.
///   - positions, rows, heads, table, style: As in the forward.
public func ropeBackward(
    _ dx: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, rows N: Int, heads NH: Int,
    table: RoPETable, style: RoPEStyle
) {
    ropeRotate(dx, positions: positions, rows: N, heads: NH, table: table, style: style, sign: -1)
}

private func ropeRotate(
    _ x: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, rows N: Int, heads NH: Int,
    table: RoPETable, style: RoPEStyle, sign: Float
) {
    let HS = table.headDim
    let half = table.rotaryDim / 2
    let cosTable = table.cos.pointer
    let sinTable = table.sin.pointer
    Parallel.forRanges(N, grain: 16) { range in
        for n in range {
            let p = Int(positions[n])
            precondition(
                p >= 0 && p < table.positions, "rope: position \(p) outside the table (0..<\(table.positions))")
            let c = cosTable + p * half
            let s = sinTable + p * half
            for h in 0..<NH {
                let head = x + (n * NH + h) * HS
                switch style {
                case .halfSplit:
                    let lo = head
                    let hi = head + half
                    for i in 0..<half {
                        let x0 = lo[i]
                        let x1 = hi[i]
                        let si = sign * s[i]
                        lo[i] = x0 * c[i] - x1 * si
                        hi[i] = x0 * si + x1 * c[i]
                    }
                case .interleaved:
                    for i in 0..<half {
                        let x0 = head[2 * i]
                        let x1 = head[2 * i + 1]
                        let si = sign * s[i]
                        head[2 * i] = x0 * c[i] - x1 * si
                        head[2 * i + 1] = x0 * si + x1 * c[i]
                    }
                }
            }
        }
    }
}

/// The reference for `ropeForward`: angles computed per element in Double, no table.
public func ropeForwardNaive(
    _ x: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, rows N: Int, heads NH: Int,
    headDim HS: Int, base: Double, style: RoPEStyle
) {
    ropeForwardNaive(
        x, positions: positions, rows: N, heads: NH, headDim: HS,
        frequencies: RoPEFrequencies(base: base, rotaryDim: HS), style: style)
}

/// The reference for `ropeForward` with any frequencies: angles computed per element in Double, no table.
public func ropeForwardNaive(
    _ x: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, rows N: Int, heads NH: Int,
    headDim HS: Int, frequencies f: RoPEFrequencies, style: RoPEStyle
) {
    let RD = f.rotaryDim
    for n in 0..<N {
        for h in 0..<NH {
            let head = x + (n * NH + h) * HS
            for i in 0..<RD / 2 {
                let angle = Double(positions[n]) * f.inverseFrequency(i)
                let (a, b) = style == .halfSplit ? (i, i + RD / 2) : (2 * i, 2 * i + 1)
                let x0 = Double(head[a])
                let x1 = Double(head[b])
                let (c, s) = (Foundation.cos(angle) * f.attentionFactor, Foundation.sin(angle) * f.attentionFactor)
                head[a] = Float(x0 * c - x1 * s)
                head[b] = Float(x0 * s + x1 * c)
            }
        }
    }
}
