// RoPE: rotary position embedding, applied in place to the query and key heads.
//
// Dims: N = rows (tokens), NH = heads in the row, HS = head size. Each row holds NH heads of HS values and
// has a position p. For i in 0..<HS/2, θ_i = p · base^(−2i/HS), and one pair of values per i is rotated:
//   (x0, x1) → (x0·cos θ_i − x1·sin θ_i,  x0·sin θ_i + x1·cos θ_i)
// Which two values form pair i is the convention (formats.md §4):
//   .interleaved  (x[2i], x[2i+1])      GGUF / llama.cpp "NORM", Meta's original layout
//   .halfSplit    (x[i], x[i + HS/2])   Hugging Face `rotate_half`, llama.cpp "NEOX"
// Cairn keeps weights in the Hugging Face layout internally and uses .halfSplit; GGUF Q/K rows are
// un-permuted at load. Both conventions are implemented and tested.
//
// Backward: a rotation's transpose is the rotation by −θ, applied in place to the gradient.

import Foundation

/// Which elements of a head RoPE pairs up.
public enum RoPEStyle: String, Sendable, CaseIterable {
    /// Pairs `(2i, 2i+1)`: GGUF llama weights, llama.cpp's NORM mode.
    case interleaved
    /// Pairs `(i, i + HS/2)`: Hugging Face `rotate_half`, llama.cpp's NEOX mode.
    case halfSplit
}

/// Precomputed cos/sin of θ_i·p for every position below `positions`.
public struct RoPETable: Sendable {
    /// Head size the table was built for.
    public let headDim: Int
    /// Number of positions covered, 0..<positions.
    public let positions: Int
    let cos: FloatBuffer  // (positions, HS/2)
    let sin: FloatBuffer

    /// Builds the table.
    ///
    /// - Parameters:
    ///   - headDim: HS, even.
    ///   - positions: How many positions to cover (the context length).
    ///   - base: The frequency base (`rope_theta`; 10000 for Llama 2, 100000 for SmolLM2).
    ///   - frequencyFactors: Optional (HS/2) divisors of the frequencies (llama-3.1 style rope scaling).
    public init(headDim: Int, positions: Int, base: Double, frequencyFactors: [Double]? = nil) {
        precondition(headDim > 0 && headDim % 2 == 0, "RoPETable: head size \(headDim) must be even")
        precondition(frequencyFactors == nil || frequencyFactors!.count == headDim / 2, "RoPETable: factor count")
        self.headDim = headDim
        self.positions = positions
        let half = headDim / 2
        cos = FloatBuffer(count: positions * half)
        sin = FloatBuffer(count: positions * half)
        for i in 0..<half {
            var inverseFrequency = Foundation.pow(base, -Double(2 * i) / Double(headDim))
            if let f = frequencyFactors { inverseFrequency /= f[i] }
            for p in 0..<positions {
                let angle = Double(p) * inverseFrequency
                cos[p * half + i] = Float(Foundation.cos(angle))
                sin[p * half + i] = Float(Foundation.sin(angle))
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
    let half = HS / 2
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
    for n in 0..<N {
        for h in 0..<NH {
            let head = x + (n * NH + h) * HS
            for i in 0..<HS / 2 {
                let angle = Double(positions[n]) * Foundation.pow(base, -Double(2 * i) / Double(HS))
                let (a, b) = style == .halfSplit ? (i, i + HS / 2) : (2 * i, 2 * i + 1)
                let x0 = Double(head[a])
                let x1 = Double(head[b])
                head[a] = Float(x0 * Foundation.cos(angle) - x1 * Foundation.sin(angle))
                head[b] = Float(x0 * Foundation.sin(angle) + x1 * Foundation.cos(angle))
            }
        }
    }
}
