// LlamaConfig: the hyperparameters of a llama-family decoder (Llama, Mistral, SmolLM, Qwen2), read from GGUF
// metadata (formats.md §3) or a Hugging Face config.json. Anything the forward pass would get wrong
// (rope scaling, MLP biases, a different activation) is refused here with the key named, not run.

import ModelFormats

/// Architecture hyperparameters of a llama-family model.
public struct LlamaConfig: Sendable, Equatable {
    /// `llama` or `qwen2` (Mistral and SmolLM are `llama`).
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
    /// RoPE frequency base.
    public var ropeTheta: Double
    /// RMSNorm epsilon.
    public var rmsEps: Float
    /// Whether the output projection is the embedding table.
    public var tiedEmbeddings: Bool
    /// Biases on the q, k and v projections (Qwen2; Llama with attention_bias).
    public var qkvBias: Bool
    /// A bias on the output projection of attention (Llama with attention_bias).
    public var outputBias: Bool

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
    }

    /// Width of the query projection output.
    public var qDim: Int { heads * headDim }
    /// Width of the key and value projection outputs.
    public var kvDim: Int { kvHeads * headDim }

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
        if !(rmsEps > 0 && rmsEps < 1) { problems.append("rms epsilon \(rmsEps) is out of range") }
        if !(ropeTheta > 1) { problems.append("rope theta \(ropeTheta) is out of range") }
        return problems
    }

    /// Parameters of the frozen base model (saturating: hostile metadata cannot overflow it).
    public var parameterCount: Int {
        let (d, q, kv, f) = (Double(dim), Double(qDim), Double(kvDim), Double(ffnDim))
        let attention = d * q + 2 * d * kv + q * d + (qkvBias ? q + 2 * kv : 0) + (outputBias ? d : 0)
        let perLayer = attention + 3 * d * f + 2 * d
        let total = Double(vocabSize) * d * (tiedEmbeddings ? 1 : 2) + Double(layers) * perLayer + d
        return total < 0x1p62 ? Int(total) : Int(0x1p62)
    }
}

extension LlamaConfig {
    /// Architectures whose GGUF files store Q/K rows permuted for interleaved RoPE (formats.md §4).
    static let permutedArchitectures: Set<String> = ["llama"]

    /// Reads the configuration of a GGUF model.
    ///
    /// - Throws: `FormatError` naming the key that is missing, malformed or unsupported.
    public init(gguf file: GGUFFile) throws(FormatError) {
        let m = file.metadata
        let path = file.path
        let arch = try m.require("general.architecture", m.string)
        guard ["llama", "qwen2"].contains(arch) else {
            throw FormatError(
                .unsupported, path: path, field: "general.architecture",
                "\"\(arch)\" is not supported; Cairn runs llama-family models (llama, mistral, smollm: \"llama\"; \"qwen2\")"
            )
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
        if let type = try m.string("\(arch).rope.scaling.type"), type != "none",
            let factor = try m.double("\(arch).rope.scaling.factor"), factor != 1
        {
            throw FormatError(
                .unsupported, path: path, field: "\(arch).rope.scaling.type",
                "RoPE scaling \"\(type)\" × \(factor) is not supported yet")
        }
        if file.tensor(named: "rope_freqs.weight") != nil {
            throw FormatError(
                .unsupported, path: path, field: "tensor 'rope_freqs.weight'",
                "Llama 3.1-style RoPE frequency scaling is not supported yet")
        }
        let dim = try required("embedding_length")
        let heads = try required("attention.head_count")
        let headDim = try int("attention.key_length") ?? (heads > 0 ? dim / heads : 0)
        if let rot = try int("rope.dimension_count"), rot != headDim {
            throw FormatError(
                .unsupported, path: path, field: "\(arch).rope.dimension_count",
                "partial rotary embeddings (\(rot) of \(headDim)) are not supported")
        }
        let embedding = file.tensor(named: "token_embd.weight")
        var vocab = try int("vocab_size") ?? 0
        if vocab == 0, let tokens = try m.strings("tokenizer.ggml.tokens") { vocab = tokens.count }
        if vocab == 0 { vocab = embedding?.ne.last ?? 0 }
        let eps = try m.double("\(arch).attention.layer_norm_rms_epsilon")
        self.init(
            architecture: arch, dim: dim, layers: try required("block_count"), heads: heads,
            kvHeads: try int("attention.head_count_kv") ?? heads, headDim: headDim,
            ffnDim: try required("feed_forward_length"), vocabSize: vocab,
            contextLength: try int("context_length") ?? 2048,
            ropeTheta: try m.double("\(arch).rope.freq_base") ?? 10000, rmsEps: Float(eps ?? 1e-5),
            tiedEmbeddings: file.tensor(named: "output.weight") == nil,
            qkvBias: file.tensor(named: "blk.0.attn_q.bias") != nil,
            outputBias: file.tensor(named: "blk.0.attn_output.bias") != nil)
        if let problem = inconsistencies().first {
            throw FormatError(.invalidValue, path: path, field: "\(arch).*", problem)
        }
    }

    /// Reads a Hugging Face config.json.
    ///
    /// - Parameter path: The config file, for messages.
    /// - Throws: `FormatError` naming the key that is missing, malformed or unsupported.
    public init(huggingFace c: JSONObject, path: String) throws(FormatError) {
        let modelType = c["model_type"]?.stringValue ?? ""
        guard ["llama", "mistral", "qwen2"].contains(modelType) else {
            throw FormatError(
                .unsupported, path: path, field: "model_type",
                "\"\(modelType)\" is not supported; Cairn runs llama, mistral and qwen2 models")
        }
        func int(_ key: String) throws(FormatError) -> Int? {
            guard let v = c[key], !v.isNull else { return nil }
            guard let i = v.intValue else {
                throw FormatError(
                    .invalidValue, path: path, field: key, "expected an integer, found \(v.kindDescription)")
            }
            return i
        }
        func required(_ key: String) throws(FormatError) -> Int {
            guard let v = try int(key) else {
                throw FormatError(.missing, path: path, field: key, "required key is absent")
            }
            return v
        }
        if let act = c["hidden_act"]?.stringValue, act != "silu" {
            throw FormatError(.unsupported, path: path, field: "hidden_act", "\"\(act)\" is not supported (only silu)")
        }
        if c["mlp_bias"]?.boolValue == true {
            throw FormatError(
                .unsupported, path: path, field: "mlp_bias", "biases on the feed-forward projections are not supported")
        }
        var theta = c["rope_theta"]?.doubleValue
        let scaling = c["rope_parameters"]?.objectValue ?? c["rope_scaling"]?.objectValue
        if let scaling {
            let type = scaling["rope_type"]?.stringValue ?? scaling["type"]?.stringValue ?? "default"
            guard type == "default" else {
                throw FormatError(
                    .unsupported, path: path, field: c["rope_parameters"] != nil ? "rope_parameters" : "rope_scaling",
                    "RoPE scaling \"\(type)\" is not supported yet")
            }
            theta = scaling["rope_theta"]?.doubleValue ?? theta
        }
        let dim = try required("hidden_size")
        let heads = try required("num_attention_heads")
        let attentionBias = c["attention_bias"]?.boolValue ?? false
        var context = try int("max_position_embeddings") ?? 2048
        // Mistral's sliding window: beyond it, full attention would reach too far, so the context stops there.
        if modelType == "mistral", let window = try int("sliding_window") { context = min(context, window) }
        self.init(
            architecture: modelType == "qwen2" ? "qwen2" : "llama", dim: dim, layers: try required("num_hidden_layers"),
            heads: heads, kvHeads: try int("num_key_value_heads") ?? heads,
            headDim: try int("head_dim") ?? (heads > 0 ? dim / heads : 0),
            ffnDim: try required("intermediate_size"), vocabSize: try required("vocab_size"), contextLength: context,
            ropeTheta: theta ?? 10000, rmsEps: Float(c["rms_norm_eps"]?.doubleValue ?? 1e-6),
            tiedEmbeddings: c["tie_word_embeddings"]?.boolValue ?? false,
            qkvBias: modelType == "qwen2" || attentionBias, outputBias: attentionBias)
        if let problem = inconsistencies().first {
            throw FormatError(.invalidValue, path: path, problem)
        }
    }
}
