// Synthetic weights: a llama shape filled with random block-quantised matrices, for benchmarks of shapes no
// file at hand has (the scaling study's ~360M and ~1.1B models). The values are random but well scaled
// (weights within ±0.04, norms 1), so activations stay finite and the products cost what real ones cost.

import TensorKernels

extension LlamaWeights {
    /// The shapes the benchmarks use beside the real model: `synthetic-360m` (SmolLM2-360M's shape),
    /// `synthetic-1.1b` (TinyLlama-1.1B's), `synthetic-qwen2.5-0.5b` (Qwen2.5-0.5B's: q/k/v biases, 152k
    /// vocabulary, tied) and `synthetic-llama3.2-1b` (Llama-3.2-1B's: llama3 RoPE scaling, 128k vocabulary, tied).
    public static let syntheticShapes: [String: LlamaConfig] = {
        var qwen = LlamaConfig(
            architecture: "qwen2", dim: 896, layers: 24, heads: 14, kvHeads: 2, ffnDim: 4864, vocabSize: 151_936,
            contextLength: 32768, ropeTheta: 1_000_000, rmsEps: 1e-6, tiedEmbeddings: true, qkvBias: true)
        qwen.ropeDim = 64
        var llama = LlamaConfig(
            dim: 2048, layers: 16, heads: 32, kvHeads: 8, ffnDim: 8192, vocabSize: 128_256, contextLength: 131_072,
            ropeTheta: 500_000, tiedEmbeddings: true)
        llama.ropeFactors = LlamaConfig.llama3FrequencyFactors(
            theta: 500_000, rotaryDim: 64, factor: 32, lowFrequencyFactor: 1, highFrequencyFactor: 4,
            originalContext: 8192)
        return shapes.merging(["synthetic-qwen2.5-0.5b": qwen, "synthetic-llama3.2-1b": llama]) { a, _ in a }
    }()

    static let shapes: [String: LlamaConfig] = [
        "synthetic-360m": LlamaConfig(
            dim: 960, layers: 32, heads: 15, kvHeads: 5, ffnDim: 2560, vocabSize: 49152, contextLength: 8192,
            ropeTheta: 100_000),
        "synthetic-1.1b": LlamaConfig(
            dim: 2048, layers: 22, heads: 32, kvHeads: 4, ffnDim: 5632, vocabSize: 32000, contextLength: 2048,
            tiedEmbeddings: false),
    ]

    /// The same weights with every matrix dequantised to fp32 (the f32 base of a synthetic shape).
    public func dequantizedToF32() -> LlamaWeights {
        let out = LlamaWeights(config: config)
        for spec in Self.tensorTable(config) {
            let values = self.values(spec.name)!
            out.pointer(spec.name)!.update(from: values, count: values.count)
        }
        return out
    }

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
