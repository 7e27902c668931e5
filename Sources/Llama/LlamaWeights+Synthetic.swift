// Synthetic weights: a llama shape filled with random block-quantised matrices, for benchmarks of shapes no
// file at hand has (the scaling study's ~360M and ~1.1B models). The values are random but well scaled
// (weights within ±0.04, norms 1), so activations stay finite and the products cost what real ones cost.

import TensorKernels

extension LlamaWeights {
    /// The shapes the scaling study uses beside the real model: `synthetic-360m` (SmolLM2-360M's shape) and
    /// `synthetic-1.1b` (TinyLlama-1.1B's).
    public static let syntheticShapes: [String: LlamaConfig] = [
        "synthetic-360m": LlamaConfig(
            dim: 960, layers: 32, heads: 15, kvHeads: 5, ffnDim: 2560, vocabSize: 49152, contextLength: 8192,
            ropeTheta: 100_000),
        "synthetic-1.1b": LlamaConfig(
            dim: 2048, layers: 22, heads: 32, kvHeads: 4, ffnDim: 5632, vocabSize: 32000, contextLength: 2048,
            tiedEmbeddings: false),
    ]

    /// Random weights of `config` with every matrix kept in `type` (Q4_0, Q4_1 or Q8_0) and every vector 1.
    public static func synthetic(config: LlamaConfig, type: GGMLType = .q4_1, seed: UInt64 = 1) -> LlamaWeights {
        precondition([.q4_0, .q4_1, .q8_0].contains(type), "synthetic: \(type) is not offered")
        var types: [String: GGMLType] = [:]
        for spec in tensorTable(config) where spec.shape.count == 2 { types[spec.name] = type }
        let weights = LlamaWeights(config: config, blockTypes: types)
        weights.storage.buffer.update(repeating: 1)
        // Every block: an f16 scale (and for Q4_1 an f16 minimum) then random quants.
        let blocks = weights.blocks
        let blockBytes = type.blockBytes
        let (scale, minimum): (Float, Float) = type == .q8_0 ? (0.04 / 127, 0) : (0.005, -0.0375)
        let d = floatToHalf(scale)
        let m = floatToHalf(minimum)
        for matrix in weights.quantized.values {
            let count = matrix.rows * matrix.columns / type.blockSize
            let base = weights.writableBytes(matrix)
            let offset = base - blocks.baseAddress!
            Parallel.forRanges(count, grain: 4096) { range in
                var rng = SeededGenerator(seed: seed &+ UInt64(offset) &+ UInt64(range.lowerBound))
                for b in range {
                    let p = base + b * blockBytes
                    p.storeBytes(of: d.littleEndian, toByteOffset: 0, as: UInt16.self)
                    var first = 2
                    if type == .q4_1 {
                        p.storeBytes(of: m.littleEndian, toByteOffset: 2, as: UInt16.self)
                        first = 4
                    }
                    for i in first..<blockBytes {
                        p.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self)
                    }
                }
            }
        }
        return weights
    }
}
