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
    /// A transformers config.json for these hyperparameters, for a base that came as GGUF.
    ///
    /// - Parameters:
    ///   - dtype: `float32`, `float16` or `bfloat16`, the type of the matrices.
    ///   - bos: The beginning-of-sequence token id, when the tokenizer has one. - eos: likewise.
    public func huggingFaceConfig(dtype: String, bos: Int?, eos: Int?) -> JSONValue {
        var c: JSONObject = [
            "architectures": [.string(architecture == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM")],
            "model_type": .string(architecture == "qwen2" ? "qwen2" : "llama"),
            "hidden_size": .integer(Int64(dim)), "intermediate_size": .integer(Int64(ffnDim)),
            "num_hidden_layers": .integer(Int64(layers)), "num_attention_heads": .integer(Int64(heads)),
            "num_key_value_heads": .integer(Int64(kvHeads)), "head_dim": .integer(Int64(headDim)),
            "vocab_size": .integer(Int64(vocabSize)), "max_position_embeddings": .integer(Int64(contextLength)),
            "rms_norm_eps": .number(Double("\(rmsEps)") ?? Double(rmsEps)), "rope_theta": .number(ropeTheta),
            "rope_parameters": ["rope_theta": .number(ropeTheta), "rope_type": "default"], "hidden_act": "silu",
            "tie_word_embeddings": .bool(tiedEmbeddings), "torch_dtype": .string(dtype), "use_cache": true,
        ]
        if architecture != "qwen2" {
            c["attention_bias"] = .bool(qkvBias)
            c["mlp_bias"] = false
        }
        if let bos { c["bos_token_id"] = .integer(Int64(bos)) }
        if let eos { c["eos_token_id"] = .integer(Int64(eos)) }
        return .object(c)
    }
}
