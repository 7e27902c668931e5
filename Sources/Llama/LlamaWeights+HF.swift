// Writing a model as a Hugging Face directory: the weights (with any adapters already merged into them) as one
// model.safetensors in transformers' names and row order (Q/K as Hugging Face stores them: the loader already
// undid GGUF's interleaving), and a config.json for bases that came without one. Matrices are F32, F16 or BF16;
// norms stay F32 (transformers upcasts nothing by itself, but keeping them exact costs a few KiB).

import ModelFormats
import TensorKernels

extension LlamaWeights {
    /// The weights as a safetensors file; `metadata` goes into `__metadata__` (with `format: pt`).
    public func safetensors(type: FusedType, metadata: [String: String] = [:]) -> SafetensorsWriter {
        precondition(type != .q8_0, "safetensors: q8_0 is a GGUF type")
        var w = SafetensorsWriter()
        w.metadata = metadata.merging(["format": "pt"]) { mine, _ in mine }
        Self.forEachTensor(config) { spec in
            var values = self.values(spec.name)!
            if spec.huggingFaceOffset != 0 { values = values.map { $0 - spec.huggingFaceOffset } }
            let chosen: FusedType = spec.shape.count == 2 ? type : .f32
            let dtype: SafetensorsDType =
                switch chosen {
                case .f16: .F16
                case .bf16: .BF16
                default: .F32
                }
            w.add(spec.name, dtype: dtype, shape: spec.shape, bytes: Self.encode(values, as: chosen))
            return true
        }
        return w
    }
}

extension LlamaConfig {
    /// A transformers config.json for these hyperparameters, for a base that came as GGUF: the family's
    /// model_type and class, and the keys its configuration reads (RoPE parameters, windows, caps, fused or not).
    ///
    /// - Parameters:
    ///   - dtype: `float32`, `float16` or `bfloat16`, the type of the matrices.
    ///   - bos: The beginning-of-sequence token id, when the tokenizer has one. - eos: likewise.
    public func huggingFaceConfig(dtype: String, bos: Int?, eos: Int?) -> JSONValue {
        let family = self.family ?? .llama
        let (modelType, className): (String, String) =
            switch family {
            case .llama: ("llama", "LlamaForCausalLM")
            case .qwen2: ("qwen2", "Qwen2ForCausalLM")
            case .qwen3: ("qwen3", "Qwen3ForCausalLM")
            case .gemma2: ("gemma2", "Gemma2ForCausalLM")
            case .gemma3: ("gemma3_text", "Gemma3ForCausalLM")
            case .phi3: ("phi3", "Phi3ForCausalLM")
            }
        var c: JSONObject = [
            "architectures": [.string(className)], "model_type": .string(modelType),
            "hidden_size": .integer(Int64(dim)), "intermediate_size": .integer(Int64(ffnDim)),
            "num_hidden_layers": .integer(Int64(layers)), "num_attention_heads": .integer(Int64(heads)),
            "num_key_value_heads": .integer(Int64(kvHeads)), "head_dim": .integer(Int64(headDim)),
            "vocab_size": .integer(Int64(vocabSize)), "max_position_embeddings": .integer(Int64(contextLength)),
            "rms_norm_eps": .number(Double("\(rmsEps)") ?? Double(rmsEps)),
            "tie_word_embeddings": .bool(tiedEmbeddings), "torch_dtype": .string(dtype), "use_cache": true,
        ]
        func number(_ x: Double) -> JSONValue { .number(x) }
        var rope: JSONObject = ["rope_theta": number(ropeTheta), "rope_type": "default"]
        if let factors = ropeLongFactors, let short = ropeFactors, let original = ropeOriginalContext {
            rope["rope_type"] = "longrope"
            rope["short_factor"] = .array(short.map(number))
            rope["long_factor"] = .array(factors.map(number))
            rope["original_max_position_embeddings"] = .integer(Int64(original))
            rope["attention_factor"] = number(ropeAttentionFactor)
            c["original_max_position_embeddings"] = .integer(Int64(original))
        } else if let factors = ropeFactors {
            // The divisors themselves cannot be written as llama3 parameters in general; a config that reproduces
            // them exactly is transformers' "longrope" with equal short and long factors and no attention factor.
            rope["rope_type"] = "longrope"
            rope["short_factor"] = .array(factors.map(number))
            rope["long_factor"] = .array(factors.map(number))
            rope["original_max_position_embeddings"] = .integer(Int64(contextLength))
            rope["attention_factor"] = 1
            c["original_max_position_embeddings"] = .integer(Int64(contextLength))
        } else if ropeLinearScale != 1 {
            rope["rope_type"] = "linear"
            rope["factor"] = number(ropeLinearScale)
        }
        if ropeDim != headDim { rope["partial_rotary_factor"] = number(Double(ropeDim) / Double(headDim)) }
        if let local = localRopeTheta {
            c["rope_parameters"] = [
                "full_attention": .object(rope),
                "sliding_attention": ["rope_type": "default", "rope_theta": number(local)],
            ]
        } else {
            c["rope_parameters"] = .object(rope)
            c["rope_theta"] = number(ropeTheta)
        }
        if let window = slidingWindow, !slidingLayers.isEmpty {
            c["sliding_window"] = .integer(Int64(window))
            c["layer_types"] = .array(slidingLayers.map { .string($0 ? "sliding_attention" : "full_attention") })
        } else if family == .gemma2 || family == .gemma3 || family == .qwen2 || family == .qwen3 {
            c["sliding_window"] = .null
        }
        switch family {
        case .gemma2, .gemma3:
            c["hidden_activation"] = "gelu_pytorch_tanh"
            // The scale is query_pre_attn_scalar^-1/2.
            let scale = Double(attentionScale ?? 1 / Float(headDim).squareRoot())
            c["query_pre_attn_scalar"] = number((1 / (scale * scale)).rounded())
            c["attn_logit_softcapping"] = attentionSoftCap.map { number(Double($0)) } ?? .null
            c["final_logit_softcapping"] = finalSoftCap.map { number(Double($0)) } ?? .null
        case .llama:
            c["hidden_act"] = "silu"
            c["attention_bias"] = .bool(qkvBias)
            c["mlp_bias"] = false
        default:
            c["hidden_act"] = "silu"
            if family == .qwen3 { c["attention_bias"] = .bool(qkvBias) }
        }
        if let bos { c["bos_token_id"] = .integer(Int64(bos)) }
        if let eos { c["eos_token_id"] = .integer(Int64(eos)) }
        return .object(c)
    }
}
