import Foundation
import Testing
import ModelFormats
import TestSupport
import Llama

/// What Cairn does not run is refused with the architecture named and the supported families listed, and an
/// adapter made for one family is refused by another.
@Suite struct FamilyRefusalTests {
    static func config(_ edit: (inout JSONObject) -> Void) -> JSONObject {
        var c: JSONObject = [
            "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 64, "max_position_embeddings": 64,
        ]
        edit(&c)
        return c
    }

    @Test(arguments: [
        ("mixtral", "mixture-of-experts"), ("qwen3_moe", "mixture-of-experts"), ("qwen3_5", "DeltaNet"),
        ("qwen3_next", "DeltaNet"), ("gemma4", "beyond Gemma 3"), ("gemma3", "gemma3_text"), ("gpt_oss", "mixture"),
        ("falcon", "not supported"),
    ])
    func unsupportedArchitecturesAreNamed(modelType: String, reason: String) {
        let c = Self.config { $0["model_type"] = .string(modelType) }
        #expect {
            try LlamaConfig(huggingFace: c, path: "config.json")
        } throws: { error in
            let e = (error as? FormatError)?.description ?? ""
            return (error as? FormatError)?.field == "model_type" && e.contains(modelType) && e.contains(reason)
                && e.contains("qwen3") && e.contains("gemma2") && e.contains("phi3")
        }
    }

    @Test func expertsAndUnsupportedScalingAreRefused() {
        let moe = Self.config {
            $0["model_type"] = "qwen2"
            $0["num_experts"] = 8
        }
        #expect(throws: FormatError.self) { try LlamaConfig(huggingFace: moe, path: "config.json") }
        let yarn = Self.config { $0["rope_scaling"] = ["rope_type": "yarn", "factor": 4] }
        #expect {
            try LlamaConfig(huggingFace: yarn, path: "config.json")
        } throws: { ($0 as? FormatError)?.description.contains("\"yarn\" is not supported") == true }
        let gelu = Self.config { $0["hidden_act"] = "gelu" }
        #expect {
            try LlamaConfig(huggingFace: gelu, path: "config.json")
        } throws: { ($0 as? FormatError)?.field == "hidden_act" }
    }

    @Test func unsupportedGGUFArchitecturesAreNamed() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        for (arch, reason) in [("qwen35", "DeltaNet"), ("qwen3moe", "mixture-of-experts"), ("gemma4", "beyond")] {
            var w = GGUFWriter()
            w.set("general.architecture", .string(arch))
            let path = dir.appendingPathComponent("\(arch).gguf").path
            try w.write(to: path)
            #expect {
                try LlamaConfig(gguf: GGUFFile(path: path))
            } throws: { error in
                let e = (error as? FormatError)?.description ?? ""
                return e.contains(arch) && e.contains(reason) && e.contains("phi3")
            }
        }
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("llama.expert_count", .uint32(8))
        let path = dir.appendingPathComponent("experts.gguf").path
        try w.write(to: path)
        #expect {
            try LlamaConfig(gguf: GGUFFile(path: path))
        } throws: { ($0 as? FormatError)?.field == "llama.expert_count" }
    }

    /// qwen2 and llama3 tiny models have the same shapes; an adapter Cairn wrote for one is refused by the other
    /// in both formats, and Phi-3's fused modules are refused by a model with separate projections.
    @Test func adaptersOfAnotherFamilyAreRefused() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let qwen = try LanguageModel.load(Fixtures.path("families/qwen2/hf")).model.config
        let llama = try LanguageModel.load(Fixtures.path("families/llama3/hf")).model.config
        let (adapter, provenance) = try LoRAAdapter.load(path: Fixtures.path("families/qwen2/peft"), model: qwen)
        let peft = dir.appendingPathComponent("peft").path
        try adapter.savePEFT(directory: peft, provenance: provenance)
        let gguf = dir.appendingPathComponent("lora.gguf").path
        try adapter.saveGGUF(path: gguf, provenance: provenance)
        for path in [peft, gguf] {
            _ = try LoRAAdapter.load(path: path, model: qwen)
            #expect {
                try LoRAAdapter.load(path: path, model: llama)
            } throws: { error in
                let e = (error as? FormatError)?.description ?? ""
                return e.contains("qwen2") && e.contains("llama")
            }
        }
        #expect {
            try LoRAAdapter.load(path: Fixtures.path("families/phi3/peft"), model: qwen)
        } throws: { ($0 as? FormatError)?.description.contains("fused projections") == true }
    }
}
