// Synthetic weights: a llama shape filled with random block-quantised matrices, for benchmarks of shapes no
// file at hand has (the scaling study's ~360M and ~1.1B models, an 8B for memory). The values are random but
// well scaled (weights within about ±0.04, norms 1), so activations stay finite and the products cost what
// real ones cost.

import TensorKernels

extension LlamaWeights {
    /// The shapes the benchmarks use beside the real model: `synthetic-135m` (SmolLM2-135M's shape),
    /// `synthetic-360m` (SmolLM2-360M's), `synthetic-1.1b` (TinyLlama-1.1B's), `synthetic-qwen2.5-0.5b`
    /// (Qwen2.5-0.5B's: q/k/v biases, 152k vocabulary, tied), `synthetic-llama3.2-1b` (Llama-3.2-1B's: llama3
    /// RoPE scaling, 128k vocabulary, tied) and `synthetic-llama3.1-8b` (Llama-3.1-8B's: untied, 14336-wide MLP).
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
        var llama8 = LlamaConfig(
            dim: 4096, layers: 32, heads: 32, kvHeads: 8, ffnDim: 14336, vocabSize: 128_256, contextLength: 131_072,
            ropeTheta: 500_000, tiedEmbeddings: false)
        llama8.ropeFactors = LlamaConfig.llama3FrequencyFactors(
            theta: 500_000, rotaryDim: 128, factor: 8, lowFrequencyFactor: 1, highFrequencyFactor: 4,
            originalContext: 8192)
        return shapes.merging([
            "synthetic-qwen2.5-0.5b": qwen, "synthetic-llama3.2-1b": llama, "synthetic-llama3.1-8b": llama8,
        ]) { a, _ in a }
    }()

    static let shapes: [String: LlamaConfig] = [
        "synthetic-135m": LlamaConfig(
            dim: 576, layers: 30, heads: 9, kvHeads: 3, ffnDim: 1536, vocabSize: 49152, contextLength: 8192,
            ropeTheta: 100_000),
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

    /// The block types `synthetic` fills.
    public static let syntheticTypes: [GGMLType] = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K]

    /// The type llama.cpp's quantiser uses for a matrix whose rows are not whole 256-value super-blocks.
    static func fallback(_ type: GGMLType) -> GGMLType {
        switch type {
        case .q4_K: .q5_0
        case .q5_K: .q5_1
        default: .q8_0
        }
    }

    /// Random weights of `config` with every matrix kept in `type` (one of `syntheticTypes`) and every vector 1.
    /// As llama.cpp's quantiser does, a matrix whose rows are not whole 256-value super-blocks (SmolLM2's 576-wide
    /// ones, Qwen2.5-0.5B's 896-wide ones) falls back from Q4_K to Q5_0, from Q5_K to Q5_1 and from Q6_K to Q8_0.
    public static func synthetic(config: LlamaConfig, type: GGMLType = .q4_1, seed: UInt64 = 1) -> LlamaWeights {
        precondition(syntheticTypes.contains(type), "synthetic: \(type) is not offered")
        var types: [String: GGMLType] = [:]
        for spec in tensorTable(config) where spec.shape.count == 2 {
            types[spec.name] = spec.shape[1] % type.blockSize == 0 ? type : fallback(type)
        }
        let weights = LlamaWeights(config: config, blockTypes: types)
        weights.storage.buffer.update(repeating: 1)
        let blocks = weights.blocks
        for matrix in weights.quantized.values {
            let type = matrix.type
            let blockBytes = type.blockBytes
            // Random bytes, then each block's f16 scale fields set so the values stay within about ±0.04 and
            // centred: Q8_0 d·q (q ±127); Q4_0 d·(q − 8); Q4_1 d·q + m; Q5_0 d·(q − 16); Q5_1 d·q + m; Q4_K/Q5_K
            // (d·sc)·q − dmin·m with 6-bit sc and m; Q6_K (d·sc)·(q − 32) with int8 sc.
            let scales: [(offset: Int, value: Float)] =
                switch type {
                case .q4_0: [(0, 0.005)]
                case .q4_1: [(0, 0.005), (2, -0.0375)]
                case .q5_0: [(0, 0.0025)]
                case .q5_1: [(0, 0.0025), (2, -0.04)]
                case .q4_K: [(0, 0.04 / (63 * 15)), (2, 0.02 / 63)]
                case .q5_K: [(0, 0.04 / (63 * 31)), (2, 0.02 / 63)]
                case .q6_K: [(208, 0.04 / (127 * 32))]
                default: [(0, 0.04 / 127)]  // Q8_0
                }
            let halves = scales.map { ($0.offset, floatToHalf($0.value).littleEndian) }
            let count = matrix.rows * matrix.columns / type.blockSize
            let base = weights.writableBytes(matrix)
            let offset = base - blocks.baseAddress!
            Parallel.forRanges(count, grain: 4096) { range in
                var rng = SeededGenerator(seed: seed &+ UInt64(offset) &+ UInt64(range.lowerBound))
                let bytes = base + range.lowerBound * blockBytes
                let total = range.count * blockBytes
                for i in 0..<total / 8 { bytes.storeBytes(of: rng.next(), toByteOffset: 8 * i, as: UInt64.self) }
                for i in total / 8 * 8..<total {
                    bytes.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self)
                }
                for b in 0..<range.count {
                    for (at, h) in halves {
                        bytes.storeBytes(of: h, toByteOffset: b * blockBytes + at, as: UInt16.self)
                    }
                }
            }
        }
        return weights
    }
}
