// LlamaConfig+HF: a Hugging Face config.json, as transformers writes it for each family: the current form
// (`rope_parameters`, `layer_types`) and the older one still on the Hub (`rope_theta` and `rope_scaling` at the
// top, Gemma 3's `rope_local_base_freq` and `sliding_window_pattern`, Qwen's `use_sliding_window`).

import Foundation
import ModelFormats

extension LlamaConfig {
    /// Reads a Hugging Face config.json.
    ///
    /// - Parameter path: The config file, for messages.
    /// - Throws: `FormatError` naming the key that is missing, malformed or unsupported.
    public init(huggingFace c: JSONObject, path: String) throws(FormatError) {
        let modelType = c["model_type"]?.stringValue ?? ""
        guard let family = ModelFamily.allCases.first(where: { $0.huggingFaceTypes.contains(modelType) }) else {
            let why = ModelFamily.refusal(modelType).map { " (\($0))" } ?? ""
            throw FormatError(
                .unsupported, path: path, field: "model_type",
                "\"\(modelType)\"\(why) is not supported; Cairn runs \(ModelFamily.supportedList)")
        }
        func int(_ key: String, in object: JSONObject? = nil) throws(FormatError) -> Int? {
            guard let v = (object ?? c)[key], !v.isNull else { return nil }
            guard let i = v.intValue else {
                throw FormatError(
                    .invalidValue, path: path, field: key, "expected an integer, found \(v.kindDescription)")
            }
            return i
        }
        func double(_ key: String, in object: JSONObject? = nil) throws(FormatError) -> Double? {
            guard let v = (object ?? c)[key], !v.isNull else { return nil }
            guard let d = v.doubleValue else {
                throw FormatError(
                    .invalidValue, path: path, field: key, "expected a number, found \(v.kindDescription)")
            }
            return d
        }
        func required(_ key: String) throws(FormatError) -> Int {
            guard let v = try int(key) else {
                throw FormatError(.missing, path: path, field: key, "required key is absent")
            }
            return v
        }
        for key in ["num_experts", "num_local_experts", "n_routed_experts"] {
            if let n = try int(key), n > 0 {
                throw FormatError(
                    .unsupported, path: path, field: key,
                    "mixture-of-experts models are not supported; Cairn runs dense models: \(ModelFamily.supportedList)"
                )
            }
        }
        let gemma = family == .gemma2 || family == .gemma3
        let activationKey = c["hidden_activation"] != nil ? "hidden_activation" : "hidden_act"
        let act = c[activationKey]?.stringValue ?? (gemma ? "gelu_pytorch_tanh" : "silu")
        let expected = gemma ? ["gelu_pytorch_tanh", "gelu_tanh"] : ["silu"]
        guard expected.contains(act) else {
            throw FormatError(
                .unsupported, path: path, field: activationKey,
                "\"\(act)\" is not supported for \(modelType) (\(expected.joined(separator: " or ")))")
        }
        if c["mlp_bias"]?.boolValue == true {
            throw FormatError(
                .unsupported, path: path, field: "mlp_bias", "biases on the feed-forward projections are not supported")
        }
        let dim = try required("hidden_size")
        let heads = try required("num_attention_heads")
        let layers = try required("num_hidden_layers")
        let headDim = try int("head_dim") ?? (heads > 0 ? dim / heads : 0)
        let attentionBias = c["attention_bias"]?.boolValue ?? false
        let context = try int("max_position_embeddings") ?? 2048
        self.init(
            architecture: family.rawValue, dim: dim, layers: layers, heads: heads,
            kvHeads: try int("num_key_value_heads") ?? heads, headDim: headDim,
            ffnDim: try required("intermediate_size"), vocabSize: try required("vocab_size"), contextLength: context,
            ropeTheta: 10000, rmsEps: Float(try double("rms_norm_eps") ?? 1e-6),
            tiedEmbeddings: c["tie_word_embeddings"]?.boolValue ?? gemma,
            qkvBias: family == .qwen2 || attentionBias, outputBias: attentionBias && family != .qwen2)

        // Layer types: the current form lists them; the older forms imply them per family.
        var types: [String]?
        if let list = c["layer_types"]?.arrayValue {
            let names = list.compactMap(\.stringValue)
            guard names.count == layers, names.allSatisfy({ $0 == "full_attention" || $0 == "sliding_attention" })
            else {
                throw FormatError(
                    .invalidValue, path: path, field: "layer_types",
                    "must list \(layers) entries of full_attention or sliding_attention")
            }
            types = names
        }
        let window = try int("sliding_window")
        switch family {
        case .gemma2:
            types = types ?? (0..<layers).map { $0 % 2 == 0 ? "sliding_attention" : "full_attention" }
        case .gemma3:
            let pattern = try int("sliding_window_pattern") ?? 6
            types =
                types
                ?? (0..<layers).map { pattern > 0 && ($0 + 1) % pattern != 0 ? "sliding_attention" : "full_attention" }
        case .qwen2, .qwen3:
            if types == nil, c["use_sliding_window"]?.boolValue == true {
                let from = try int("max_window_layers") ?? layers
                types = (0..<layers).map { $0 >= from ? "sliding_attention" : "full_attention" }
            }
        case .llama, .phi3:
            if types == nil, window != nil { types = Array(repeating: "sliding_attention", count: layers) }
        }
        if let types, types.contains("sliding_attention") {
            guard let window, window > 0 else {
                throw FormatError(
                    .missing, path: path, field: "sliding_window", "sliding-attention layers need a positive window")
            }
            if window < context {
                slidingWindow = window
                slidingLayers = types.map { $0 == "sliding_attention" }
            }
        }

        // RoPE: one parameter set, or one per layer type (Gemma 3).
        let parameters = c["rope_parameters"]?.objectValue
        let perType = parameters?["full_attention"]?.objectValue != nil
        let global =
            (perType ? parameters?["full_attention"]?.objectValue : parameters) ?? c["rope_scaling"]?.objectValue
        let globalField =
            parameters != nil ? (perType ? "rope_parameters.full_attention" : "rope_parameters") : "rope_scaling"
        let partialInside = try double("partial_rotary_factor", in: global ?? [:])
        let partialOutside = try double("partial_rotary_factor")
        let partial = partialInside ?? partialOutside ?? 1
        guard partial > 0, partial <= 1 else {
            throw FormatError(.invalidValue, path: path, field: "partial_rotary_factor", "must be in (0, 1]")
        }
        ropeDim = Int(Double(headDim) * partial)
        let thetaInside = try double("rope_theta", in: global ?? [:])
        let thetaOutside = try double("rope_theta")
        ropeTheta = thetaInside ?? thetaOutside ?? (family == .gemma3 ? 1e6 : 10000)
        if family == .gemma3 {
            let local = perType ? parameters?["sliding_attention"]?.objectValue : nil
            let localInside = try double("rope_theta", in: local ?? [:])
            let localOutside = try double("rope_local_base_freq")
            localRopeTheta = localInside ?? localOutside ?? 10000
            if let type = local?["rope_type"]?.stringValue ?? local?["type"]?.stringValue, type != "default" {
                throw FormatError(
                    .unsupported, path: path, field: "rope_parameters.sliding_attention.rope_type",
                    "RoPE scaling \"\(type)\" on sliding layers is not supported")
            }
        }
        if let global {
            let type = global["rope_type"]?.stringValue ?? global["type"]?.stringValue ?? "default"
            switch type {
            case "default": break
            case "linear":
                ropeLinearScale = try double("factor", in: global) ?? 1
            case "llama3":
                guard let factor = try double("factor", in: global),
                    let low = try double("low_freq_factor", in: global),
                    let high = try double("high_freq_factor", in: global),
                    let original = try int("original_max_position_embeddings", in: global), high > low
                else {
                    throw FormatError(
                        .invalidValue, path: path, field: globalField,
                        "llama3 scaling needs factor, low_freq_factor < high_freq_factor and "
                            + "original_max_position_embeddings")
                }
                ropeFactors = Self.llama3FrequencyFactors(
                    theta: ropeTheta, rotaryDim: ropeDim, factor: factor, lowFrequencyFactor: low,
                    highFrequencyFactor: high, originalContext: original)
            case "longrope", "su":
                func list(_ key: String) throws(FormatError) -> [Double] {
                    guard let items = global[key]?.arrayValue?.compactMap(\.doubleValue), items.count == ropeDim / 2
                    else {
                        throw FormatError(
                            .invalidValue, path: path, field: "\(globalField).\(key)",
                            "must be \(ropeDim / 2) numbers (half the rotary dims)")
                    }
                    return items
                }
                ropeFactors = try list("short_factor")
                ropeLongFactors = try list("long_factor")
                let originalInside = try int("original_max_position_embeddings", in: global)
                let originalOutside = try int("original_max_position_embeddings")
                let original = originalInside ?? originalOutside ?? context
                ropeOriginalContext = original
                if let f = try double("attention_factor", in: global) {
                    ropeAttentionFactor = f
                } else if let factor = try double("factor", in: global) {
                    ropeAttentionFactor = Self.longRoPEAttentionFactor(scale: factor, original: original)
                } else {
                    ropeAttentionFactor = Self.longRoPEAttentionFactor(
                        scale: Double(context) / Double(original), original: original)
                }
            default:
                throw FormatError(
                    .unsupported, path: path, field: globalField,
                    "RoPE scaling \"\(type)\" is not supported (default, linear, llama3 and longrope are)")
            }
        }

        switch family {
        case .llama, .qwen2: break
        case .qwen3: qkNorm = true
        case .phi3: fusedProjections = true
        case .gemma2, .gemma3:
            activation = .geluTanh
            embeddingScale = Float(dim).squareRoot()
            postNorms = true
            qkNorm = family == .gemma3
            if let scalar = try double("query_pre_attn_scalar") {
                guard scalar > 0 else {
                    throw FormatError(.invalidValue, path: path, field: "query_pre_attn_scalar", "must be positive")
                }
                attentionScale = Float(1 / scalar.squareRoot())
            }
            // transformers' Gemma 3 attention ignores attn_logit_softcapping; its final soft cap applies when set.
            attentionSoftCap = family == .gemma2 ? try double("attn_logit_softcapping").map(Float.init) : nil
            finalSoftCap = try double("final_logit_softcapping").map(Float.init)
        }
        if let problem = inconsistencies().first {
            throw FormatError(.invalidValue, path: path, problem)
        }
    }

    /// Llama 3.1's frequency divisors (transformers' `_compute_llama3_parameters`, the factors llama.cpp's
    /// converter writes as `rope_freqs`): wavelengths shorter than original/high stay, longer than
    /// original/low are divided by `factor`, and those between are interpolated.
    public static func llama3FrequencyFactors(
        theta: Double, rotaryDim: Int, factor: Double, lowFrequencyFactor low: Double,
        highFrequencyFactor high: Double, originalContext: Int
    ) -> [Double] {
        let lowWavelength = Double(originalContext) / low
        let highWavelength = Double(originalContext) / high
        return (0..<rotaryDim / 2).map { i in
            let inverse = Foundation.pow(theta, -Double(2 * i) / Double(rotaryDim))
            let wavelength = 2 * Double.pi / inverse
            if wavelength < highWavelength { return 1 }
            if wavelength > lowWavelength { return factor }
            let smooth = (Double(originalContext) / wavelength - low) / (high - low)
            return 1 / ((1 - smooth) / factor + smooth)
        }
    }
}
