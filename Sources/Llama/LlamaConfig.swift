// LlamaConfig: the hyperparameters of a llama-family decoder, read from GGUF metadata (Docs/FORMATS.md §3) or a Hugging
// Face config.json. The families Cairn runs are the plain llama block and the variations listed in
// `ModelFamily`; each variation is a field here (q/k norms, post-norms, GeGLU, soft caps, sliding windows,
// scaled or partial rotary embeddings, fused projections). Anything the forward pass would get wrong (YaRN, MLP
// biases, a mixture of experts) is refused here with the key named, not run.

import Foundation
import ModelFormats
import TensorKernels

/// The model families Cairn runs, by the architecture name GGUF files use.
public enum ModelFamily: String, Sendable, CaseIterable {
    /// Llama 1–3.x, Mistral, TinyLlama, SmolLM (GGUF `llama`; Hugging Face `llama`, `mistral`).
    case llama
    /// Qwen2, Qwen2.5 and the DeepSeek-R1 Qwen distills: q/k/v biases.
    case qwen2
    /// Qwen3 (dense): RMSNorm on each query and key head.
    case qwen3
    /// Gemma 2: GeGLU, (1 + w) norms, post-norms, soft caps, alternating sliding windows.
    case gemma2
    /// Gemma 3 (text): as Gemma 2 without soft caps, with q/k norms and a local RoPE base on sliding layers.
    case gemma3
    /// Phi-3, Phi-3.5, Phi-4-mini: fused qkv and gate/up projections, partial rotary, LongRoPE.
    case phi3

    /// Hugging Face `model_type` values of each family.
    public var huggingFaceTypes: [String] {
        switch self {
        case .llama: ["llama", "mistral"]
        case .qwen2: ["qwen2"]
        case .qwen3: ["qwen3"]
        case .gemma2: ["gemma2"]
        case .gemma3: ["gemma3_text"]
        case .phi3: ["phi3"]
        }
    }

    /// The families, as error messages list them.
    public static var supportedList: String {
        "llama (Llama 2/3.x, Mistral, TinyLlama, SmolLM), qwen2 (Qwen2/2.5), qwen3 (dense), gemma2, gemma3 (text), "
            + "phi3 (Phi-3/3.5, Phi-4-mini)"
    }

    /// Known architectures Cairn does not run, with the reason, for a clear refusal.
    static func refusal(_ name: String) -> String? {
        let n = name.lowercased()
        if n.contains("moe") || n.hasPrefix("mixtral") || n == "deepseek2" || n == "deepseek_v2" || n == "deepseek_v3"
            || n == "dbrx" || n == "gpt_oss" || n == "gpt-oss" || n == "jamba"
        {
            return "a mixture-of-experts architecture"
        }
        if n.hasPrefix("qwen3_5") || n.hasPrefix("qwen35") || n.hasPrefix("qwen3_next") || n.hasPrefix("qwen3next") {
            return "a hybrid linear-attention (Gated DeltaNet) architecture"
        }
        if n.hasPrefix("gemma4") || n.hasPrefix("gemma3n") { return "a Gemma architecture beyond Gemma 3" }
        if n == "gemma3" { return "the multimodal Gemma 3 wrapper; use its text model (model_type gemma3_text)" }
        return nil
    }
}

/// Architecture hyperparameters of a llama-family model.
public struct LlamaConfig: Sendable, Equatable {
    /// The family's GGUF architecture name (`ModelFamily`'s raw value).
    public var architecture: String
    /// Model width (hidden_size, embedding_length).
    public var dim: Int
    /// Transformer blocks.
    public var layers: Int
    /// Query heads.
    public var heads: Int
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    public var kvHeads: Int
    /// Size of one head.
    public var headDim: Int
    /// Feed-forward width (intermediate_size).
    public var ffnDim: Int
    /// Vocabulary size.
    public var vocabSize: Int
    /// Longest sequence the model was trained for.
    public var contextLength: Int
    /// RoPE frequency base (of the global layers, when sliding layers have their own).
    public var ropeTheta: Double
    /// RMSNorm epsilon.
    public var rmsEps: Float
    /// Whether the output projection is the embedding table.
    public var tiedEmbeddings: Bool
    /// Biases on the q, k and v projections (Qwen2; Llama with attention_bias).
    public var qkvBias: Bool
    /// A bias on the output projection of attention (Llama with attention_bias).
    public var outputBias: Bool

    /// Rotating dims of each head (the head size unless rotary is partial: Phi-4-mini rotates 3/4).
    public var ropeDim: Int
    /// Divisors of the rotary frequencies (llama3 scaling, LongRoPE's short factors), (ropeDim/2), or nil.
    public var ropeFactors: [Double]?
    /// LongRoPE's long factors, used when a sequence runs past `ropeOriginalContext`.
    public var ropeLongFactors: [Double]?
    /// The context LongRoPE's short factors cover.
    public var ropeOriginalContext: Int?
    /// The factor on cos and sin (LongRoPE's attention factor); 1 otherwise.
    public var ropeAttentionFactor: Double
    /// Linear position scaling of the global layers (Gemma 3 at 4B and up); 1 otherwise.
    public var ropeLinearScale: Double
    /// The RoPE base of sliding-window layers when it differs from `ropeTheta` (Gemma 3's 10 000).
    public var localRopeTheta: Double?
    /// RMSNorm on each query and key head before RoPE (Qwen3, Gemma 3).
    public var qkNorm: Bool
    /// The feed-forward gate's activation (silu, or tanh GELU for Gemma).
    public var activation: GateActivation
    /// Embeddings multiplied by this (Gemma: √dim), or nil.
    public var embeddingScale: Float?
    /// Norms after attention and after the feed-forward, before each residual add (Gemma 2/3).
    public var postNorms: Bool
    /// The factor on q·k when it is not 1/√headDim (Gemma's query_pre_attn_scalar^−½), or nil.
    public var attentionScale: Float?
    /// Attention score soft cap c·tanh(z/c) (Gemma 2), or nil.
    public var attentionSoftCap: Float?
    /// Final logit soft cap (Gemma 2), or nil.
    public var finalSoftCap: Float?
    /// The sliding window of windowed layers, or nil.
    public var slidingWindow: Int?
    /// Which layers use the sliding window (empty: none).
    public var slidingLayers: [Bool]
    /// q, k, v in one matrix and gate, up in another (Phi-3), as the files store them and LoRA adapts them.
    public var fusedProjections: Bool

    /// Creates a configuration; checks that the dimensions fit together.
    public init(
        architecture: String = "llama", dim: Int, layers: Int, heads: Int, kvHeads: Int, headDim: Int? = nil,
        ffnDim: Int, vocabSize: Int, contextLength: Int, ropeTheta: Double = 10000, rmsEps: Float = 1e-5,
        tiedEmbeddings: Bool = true, qkvBias: Bool = false, outputBias: Bool = false
    ) {
        self.architecture = architecture
        self.dim = dim
        self.layers = layers
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim ?? dim / heads
        self.ffnDim = ffnDim
        self.vocabSize = vocabSize
        self.contextLength = contextLength
        self.ropeTheta = ropeTheta
        self.rmsEps = rmsEps
        self.tiedEmbeddings = tiedEmbeddings
        self.qkvBias = qkvBias
        self.outputBias = outputBias
        ropeDim = self.headDim
        ropeFactors = nil
        ropeLongFactors = nil
        ropeOriginalContext = nil
        ropeAttentionFactor = 1
        ropeLinearScale = 1
        localRopeTheta = nil
        qkNorm = false
        activation = .silu
        embeddingScale = nil
        postNorms = false
        attentionScale = nil
        attentionSoftCap = nil
        finalSoftCap = nil
        slidingWindow = nil
        slidingLayers = []
        fusedProjections = false
    }

    /// The family, when the architecture is one Cairn runs.
    public var family: ModelFamily? { ModelFamily(rawValue: architecture) }

    /// Width of the query projection output.
    public var qDim: Int { heads * headDim }
    /// Width of the key and value projection outputs.
    public var kvDim: Int { kvHeads * headDim }

    /// Whether layer `l` attends through the sliding window.
    public func isSliding(_ l: Int) -> Bool { slidingWindow != nil && l < slidingLayers.count && slidingLayers[l] }

    /// The rotary frequencies of layer `l` for sequences of up to `positions` positions (LongRoPE switches to
    /// its long factors past the original context, as transformers and llama.cpp do).
    public func ropeFrequencies(layer l: Int, positions: Int) -> RoPEFrequencies {
        if let local = localRopeTheta, isSliding(l) {
            return RoPEFrequencies(base: local, rotaryDim: ropeDim)
        }
        var factors = ropeFactors
        if let long = ropeLongFactors, let original = ropeOriginalContext, positions > original { factors = long }
        return RoPEFrequencies(
            base: ropeTheta, rotaryDim: ropeDim, factors: factors, attentionFactor: ropeAttentionFactor,
            linearScale: ropeLinearScale)
    }

    /// The attention call's scale, soft cap and window for layer `l`, on top of the shape.
    public func attentionShape(
        layer l: Int, batch: Int, queries: Int, keyCapacity: Int, start: Int
    ) -> AttentionShape {
        AttentionShape(
            batch: batch, queries: queries, keyCapacity: keyCapacity, start: start, heads: heads, kvHeads: kvHeads,
            headDim: headDim, scale: attentionScale, softCap: attentionSoftCap,
            window: isSliding(l) ? slidingWindow : nil)
    }

    /// Problems with the dimensions, empty when consistent.
    func inconsistencies() -> [String] {
        var problems: [String] = []
        for (name, v) in [
            ("dim", dim), ("layers", layers), ("heads", heads), ("kv heads", kvHeads), ("head size", headDim),
            ("ffn width", ffnDim), ("vocabulary", vocabSize), ("context length", contextLength),
        ]
        where v <= 0 || v > 1 << 24 {
            problems.append("\(name) = \(v) is out of range")
        }
        if heads > 0, kvHeads > 0, heads % kvHeads != 0 {
            problems.append("\(heads) heads are not a multiple of \(kvHeads) kv heads")
        }
        if headDim % 2 != 0 { problems.append("head size \(headDim) is odd; RoPE needs pairs") }
        if ropeDim <= 0 || ropeDim % 2 != 0 || ropeDim > headDim {
            problems.append("rotary dims \(ropeDim) must be even and within the head size \(headDim)")
        }
        for (name, factors) in [("rope factors", ropeFactors), ("long rope factors", ropeLongFactors)] {
            if let f = factors, f.count != ropeDim / 2 || !f.allSatisfy({ $0.isFinite && $0 > 0 }) {
                problems.append("\(name) must be \(ropeDim / 2) positive numbers (found \(f.count))")
            }
        }
        if !(rmsEps > 0 && rmsEps < 1) { problems.append("rms epsilon \(rmsEps) is out of range") }
        if !(ropeTheta > 1) { problems.append("rope theta \(ropeTheta) is out of range") }
        if let t = localRopeTheta, !(t > 1) { problems.append("local rope theta \(t) is out of range") }
        if !(ropeAttentionFactor > 0 && ropeAttentionFactor < 100) {
            problems.append("rope attention factor \(ropeAttentionFactor) is out of range")
        }
        if !(ropeLinearScale >= 1 && ropeLinearScale < 1e6) {
            problems.append("rope linear scale \(ropeLinearScale) is out of range")
        }
        for (name, v) in [
            ("attention scale", attentionScale), ("attention soft cap", attentionSoftCap),
            ("final soft cap", finalSoftCap), ("embedding scale", embeddingScale),
        ] {
            if let v, !(v.isFinite && v > 0) { problems.append("\(name) \(v) must be positive") }
        }
        if let w = slidingWindow, w <= 0 { problems.append("sliding window \(w) must be positive") }
        if !slidingLayers.isEmpty, slidingLayers.count != layers {
            problems.append("\(slidingLayers.count) layer types for \(layers) layers")
        }
        return problems
    }

    /// Parameters of the frozen base model (saturating: hostile metadata cannot overflow it).
    public var parameterCount: Int {
        let (d, q, kv, f) = (Double(dim), Double(qDim), Double(kvDim), Double(ffnDim))
        let attention = d * q + 2 * d * kv + q * d + (qkvBias ? q + 2 * kv : 0) + (outputBias ? d : 0)
        let norms = (postNorms ? 4 : 2) * d + (qkNorm ? 2 * Double(headDim) : 0)
        let perLayer = attention + 3 * d * f + norms
        let total = Double(vocabSize) * d * (tiedEmbeddings ? 1 : 2) + Double(layers) * perLayer + d
        return total < 0x1p62 ? Int(total) : Int(0x1p62)
    }
}

extension LlamaConfig {
    /// Architectures whose GGUF files store Q/K rows permuted for interleaved RoPE (Docs/FORMATS.md §4): llama.cpp's
    /// converter permutes them for `llama` only; the others use NEOX rotation on rows as Hugging Face stores them.
    static let permutedArchitectures: Set<String> = ["llama"]

    /// Reads the configuration of a GGUF model.
    ///
    /// - Throws: `FormatError` naming the key that is missing, malformed or unsupported.
    public init(gguf file: GGUFFile) throws(FormatError) {
        let m = file.metadata
        let path = file.path
        let arch = try m.require("general.architecture", m.string)
        guard let family = ModelFamily(rawValue: arch) else {
            let why = ModelFamily.refusal(arch).map { " (\($0))" } ?? ""
            throw FormatError(
                .unsupported, path: path, field: "general.architecture",
                "\"\(arch)\"\(why) is not supported; Cairn runs \(ModelFamily.supportedList)")
        }
        func int(_ key: String) throws(FormatError) -> Int? {
            let full = "\(arch).\(key)"
            guard let value = m[full] else { return nil }
            if case .array(_, let items) = value {
                // Per-layer arrays: Cairn needs every layer alike.
                let ints = items.compactMap(\.intValue)
                guard ints.count == items.count, let first = ints.first, ints.allSatisfy({ $0 == first }) else {
                    throw FormatError(
                        .unsupported, path: path, field: full, "per-layer values that differ are not supported")
                }
                return first
            }
            return try m.int(full)
        }
        func required(_ key: String) throws(FormatError) -> Int {
            guard let v = try int(key) else {
                throw FormatError(.missing, path: path, field: "\(arch).\(key)", "required metadata key is absent")
            }
            return v
        }
        func double(_ key: String) throws(FormatError) -> Double? { try m.double("\(arch).\(key)") }
        if try int("expert_count").map({ $0 > 0 }) ?? false {
            throw FormatError(
                .unsupported, path: path, field: "\(arch).expert_count",
                "mixture-of-experts models are not supported; Cairn runs dense models: \(ModelFamily.supportedList)")
        }
        let dim = try required("embedding_length")
        let heads = try required("attention.head_count")
        let headDim = try int("attention.key_length") ?? (heads > 0 ? dim / heads : 0)
        if let valueLength = try int("attention.value_length"), valueLength != headDim {
            throw FormatError(
                .unsupported, path: path, field: "\(arch).attention.value_length",
                "value heads of \(valueLength) differ from key heads of \(headDim)")
        }
        let embedding = file.tensor(named: "token_embd.weight")
        var vocab = try int("vocab_size") ?? 0
        if vocab == 0, let tokens = try m.strings("tokenizer.ggml.tokens") { vocab = tokens.count }
        if vocab == 0 { vocab = embedding?.ne.last ?? 0 }
        let eps = try double("attention.layer_norm_rms_epsilon")
        let layers = try required("block_count")
        self.init(
            architecture: arch, dim: dim, layers: layers, heads: heads,
            kvHeads: try int("attention.head_count_kv") ?? heads, headDim: headDim,
            ffnDim: try required("feed_forward_length"), vocabSize: vocab,
            contextLength: try int("context_length") ?? 2048,
            ropeTheta: try double("rope.freq_base") ?? 10000, rmsEps: Float(eps ?? 1e-5),
            tiedEmbeddings: file.tensor(named: "output.weight") == nil,
            qkvBias: file.tensor(named: "blk.0.attn_q.bias") != nil,
            outputBias: file.tensor(named: "blk.0.attn_output.bias") != nil)
        ropeDim = try int("rope.dimension_count") ?? headDim
        qkNorm = file.tensor(named: "blk.0.attn_q_norm.weight") != nil

        // RoPE scaling: linear (a factor on positions), or frequency factors stored as tensors (llama3's
        // rope_freqs, LongRoPE's rope_factors_short/long). YaRN and the rest are refused.
        let scalingType = try m.string("\(arch).rope.scaling.type") ?? "none"
        let scalingFactor = try double("rope.scaling.factor") ?? 1
        switch scalingType {
        case "none": break
        case "linear": if scalingFactor != 1 { ropeLinearScale = scalingFactor }
        default:
            if scalingFactor != 1 && family != .phi3 {
                throw FormatError(
                    .unsupported, path: path, field: "\(arch).rope.scaling.type",
                    "RoPE scaling \"\(scalingType)\" × \(scalingFactor) is not supported (linear, llama3 and "
                        + "LongRoPE are)")
            }
        }
        func factors(_ name: String) throws(FormatError) -> [Double]? {
            guard let t = file.tensor(named: name) else { return nil }
            guard t.type == .f32, t.elementCount == ropeDim / 2 else {
                throw FormatError(
                    .invalidValue, path: path, field: "tensor '\(name)'",
                    "must hold \(ropeDim / 2) F32 values (found \(t.elementCount) of \(t.type))")
            }
            let data = file.data(for: t)
            return (0..<t.elementCount).map { Double(data.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self)) }
        }
        ropeFactors = try factors("rope_freqs.weight")
        if let short = try factors("rope_factors_short.weight") {
            ropeFactors = short
            ropeLongFactors = try factors("rope_factors_long.weight")
            ropeOriginalContext = try int("rope.scaling.original_context_length")
            // llama.cpp keeps LongRoPE's attention factor in rope.scaling.attn_factor; without it, the formula
            // transformers uses from the two context lengths.
            if let f = try double("rope.scaling.attn_factor") {
                ropeAttentionFactor = f
            } else if let original = ropeOriginalContext {
                ropeAttentionFactor = Self.longRoPEAttentionFactor(
                    scale: Double(contextLength) / Double(original), original: original)
            }
        }

        switch family {
        case .llama, .qwen2, .qwen3: break
        case .phi3:
            fusedProjections = true
        case .gemma2, .gemma3:
            activation = .geluTanh
            embeddingScale = Float(dim).squareRoot()
            postNorms = true
            // llama.cpp scales queries by 1/√(dim/heads) for the 27B models and 1/√headDim otherwise
            // (query_pre_attn_scalar is not written to GGUF); an explicit attention.scale wins.
            if let scale = try double("attention.scale") {
                attentionScale = Float(scale)
            } else if layers == 46 && family == .gemma2 || layers == 62 && family == .gemma3 {
                attentionScale = 1 / Float(dim / heads).squareRoot()
            }
            slidingWindow = try int("attention.sliding_window")
            if family == .gemma2 {
                attentionSoftCap = try double("attn_logit_softcapping").map(Float.init)
                finalSoftCap = try double("final_logit_softcapping").map(Float.init)
                slidingLayers = (0..<layers).map { $0 % 2 == 0 }
            } else {
                // A per-layer list of booleans, or every n-th layer global (llama.cpp's default n: 6).
                let patternKey = "\(arch).attention.sliding_window_pattern"
                if let flags = m[patternKey]?.arrayValue?.compactMap(\.boolValue), !flags.isEmpty {
                    guard flags.count == layers else {
                        throw FormatError(
                            .invalidValue, path: path, field: patternKey,
                            "has \(flags.count) entries for \(layers) layers")
                    }
                    slidingLayers = flags
                } else {
                    let pattern = try m.int(patternKey) ?? 6
                    slidingLayers = (0..<layers).map { pattern > 0 && ($0 + 1) % pattern != 0 }
                }
                localRopeTheta = try double("rope.freq_base_swa") ?? 10000
                finalSoftCap = try double("final_logit_softcapping").map(Float.init)
            }
        }
        // Only Gemma's windows are applied to GGUF files: llama.cpp runs llama, qwen2, qwen3 and phi3 files
        // without one (a Mistral v0.1 window, a phi3 window its converter writes inconsistently), and Cairn
        // matches the runtime those files are made for.
        if let problem = inconsistencies().first {
            throw FormatError(.invalidValue, path: path, field: "\(arch).*", problem)
        }
    }

    /// LongRoPE's default attention factor √(1 + ln(s)/ln(original)) for a context scale s (1 when s ≤ 1).
    static func longRoPEAttentionFactor(scale s: Double, original: Int) -> Double {
        s <= 1 ? 1 : (1 + Foundation.log(s) / Foundation.log(Double(original))).squareRoot()
    }
}
