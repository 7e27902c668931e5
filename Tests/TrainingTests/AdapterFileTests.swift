// Adapter files against the programs that read them: PEFT (peft_training.py) and llama.cpp
// (llama_cpp_lora.py) loaded cairn's exports and computed losses and logits; here the current code must write
// the same bytes and compute the same numbers.

import Foundation
import Testing
import Llama
import ModelFormats
import TensorKernels
import TestSupport
import Training

@Suite struct AdapterFileTests {
    static let ggufModel = Fixtures.path("tiny-llama/a.gguf")
    static let reference = try! SafetensorsFile(path: Fixtures.path("llamacpp/reference.safetensors"))

    static func logits(_ lm: LanguageModel) -> [Float] {
        let tokens: [Int32] = [1, 5, 9, 33, 2, 7, 63, 0, 14, 14, 40, 3]
        let state = InferenceState(config: lm.model.config, batch: 1, capacity: 12, maxChunk: 12)
        let hidden = tokens.withUnsafeBufferPointer {
            lm.model.forward(tokens: $0.baseAddress!, count: 12, state: state)
        }
        let out = FloatBuffer(count: 12 * 64)
        lm.model.logits(hidden: hidden, rows: 12, into: out.pointer)
        return out.array
    }

    /// llama.cpp on the tiny GGUF model, without and with cairn's GGUF LoRA export (`--lora`).
    @Test func logitsMatchLlamaCpp() throws {
        let base = try LanguageModel.load(Self.ggufModel)
        expectClose(
            Self.logits(base), try #require(Self.reference.storedTensor(named: "base")).floats(),
            tolerance: Tolerance.reference, "base")
        let tuned = try LanguageModel.load(Self.ggufModel, adapters: [Fixtures.path("llamacpp/mixed.gguf")])
        let lora = try #require(Self.reference.storedTensor(named: "lora")).floats()
        expectClose(Self.logits(tuned), lora, tolerance: Tolerance.reference, "with the adapter")
        let difference = zip(Self.logits(base), lora).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        #expect(difference > 0.1, "the adapter changes the logits")
    }

    /// Today's exports are byte for byte the files PEFT and llama.cpp were checked on.
    @Test func exportsAreTheFilesTheReferencesLoaded() throws {
        let config = try ModelSource.resolve(Self.ggufModel).config()
        let (mixed, provenance) = try LoRAAdapter.load(path: Fixtures.path("peft/mixed"), model: config)
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let gguf = dir.appendingPathComponent("mixed.gguf").path
        try mixed.saveGGUF(path: gguf, provenance: provenance, name: "mixed")
        #expect(
            try Data(contentsOf: URL(fileURLWithPath: gguf))
                == Data(contentsOf: URL(fileURLWithPath: Fixtures.path("llamacpp/mixed.gguf"))))
        let peft = dir.appendingPathComponent("peft").path
        try mixed.savePEFT(directory: peft, provenance: provenance)
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            let ours = try Data(contentsOf: URL(fileURLWithPath: peft + "/" + file))
            let checked = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("peft/cairn-export/" + file)))
            #expect(ours == checked, "\(file)")
        }
        // And cairn's own loss with its export equals what PEFT computed on it.
        let expected = try #require(PEFTFixtures.eval["cairn-export"]?.doubleValue)
        let lm = try LanguageModel.load(PEFTFixtures.base, adapters: [peft])
        let empty = LoRAAdapter(model: lm.model.config, modules: [])
        let ws = TrainingWorkspace(model: lm.model.config, adapter: empty, batch: 2, length: 12, recompute: false)
        let loss = lm.model.trainingStep(batch: PEFTFixtures.evalBatch, adapter: empty, gradients: nil, workspace: ws)
        #expect(abs(loss.mean - expected) <= 1e-4 * expected)
    }

    /// PEFT → GGUF → PEFT keeps every A, B and scale; provenance travels along.
    @Test func roundTripsBetweenFormats() throws {
        let config = try ModelSource.resolve(Self.ggufModel).config()
        var provenance = AdapterProvenance()
        provenance.baseModelHash = "abc123"
        provenance.steps = 7
        let adapter = LoRAAdapter(
            model: config, config: LoRAConfig(rank: 3, alpha: 5, targets: [.q, .k, .down], layers: [1]), seed: 9)
        for i in 0..<adapter.parameters.count { adapter.parameters[i] += Float(i % 7) * 0.01 }
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try adapter.saveGGUF(path: dir.appendingPathComponent("a.gguf").path, provenance: provenance)
        let (fromGGUF, p1) = try LoRAAdapter.load(path: dir.appendingPathComponent("a.gguf").path, model: config)
        try fromGGUF.savePEFT(directory: dir.appendingPathComponent("peft").path, provenance: p1)
        let (back, p2) = try LoRAAdapter.load(path: dir.appendingPathComponent("peft").path, model: config)
        #expect(back.modules == adapter.modules)
        #expect(back.parameters.array == adapter.parameters.array)
        #expect(p2.baseModelHash == "abc123" && p2.steps == 7)
        // In the GGUF file, q/k lora_b rows are in llama.cpp's order: row 1 of a head is HF's row headDim/2.
        let file = try GGUFFile(path: dir.appendingPathComponent("a.gguf").path)
        let b = try #require(file.storedTensor(named: "blk.1.attn_q.weight.lora_b")).floats()
        let q = try #require(adapter.module(layer: 1, target: .q))
        #expect(b[1 * 3..<2 * 3].elementsEqual((0..<3).map { adapter.parameters[q.bOffset + 4 * 3 + $0] }))
        #expect(file.tensor(named: "blk.1.attn_q.weight.lora_a")?.ne == [32, 3])
        #expect(try file.metadata.double("adapter.lora.alpha") == 5)
    }

    @Test func refusesAdaptersThatDoNotFit() throws {
        let config = try ModelSource.resolve(Self.ggufModel).config()
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        func peft(config: JSONValue, tensors: [(String, [Int])]) throws -> String {
            let path = dir.appendingPathComponent(UUID().uuidString).path
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            try Data(config.serialized().utf8).write(to: URL(fileURLWithPath: path + "/adapter_config.json"))
            var w = SafetensorsWriter()
            for (name, shape) in tensors {
                w.add(name, shape: shape, floats: [Float](repeating: 0, count: shape.reduce(1, *)))
            }
            try w.write(to: path + "/adapter_model.safetensors")
            return path
        }
        let q = "base_model.model.model.layers.0.self_attn.q_proj"
        let cases: [(JSONValue, [(String, [Int])], String)] = [
            (["peft_type": "LORA", "use_dora": true], [], "DoRA"),
            (["peft_type": "LORA", "modules_to_save": ["lm_head"]], [], "modules_to_save"),
            (
                ["peft_type": "LORA"], [(q + ".lora_A.weight", [4, 32]), (q + ".lora_B.weight", [16, 4])],
                "expected [r, 32] and [32, r]"
            ),
            (["peft_type": "LORA"], [(q + ".lora_A.weight", [4, 32])], "no lora_B"),
            (["peft_type": "LORA"], [("base_model.model.lm_head.lora_A.weight", [4, 32])], "not a LoRA weight"),
            (
                ["peft_type": "LORA"], [("base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", [4, 32])],
                "layer 9 does not exist"
            ),
        ]
        for (adapterConfig, tensors, message) in cases {
            let path = try peft(config: adapterConfig, tensors: tensors)
            #expect { try LoRAAdapter.load(path: path, model: config) } throws: { "\($0)".contains(message) }
        }
    }

    @Test func refusesGGUFLoRAFilesThatDoNotFit() throws {
        let config = try ModelSource.resolve(Self.ggufModel).config()
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        func gguf(_ edit: (inout GGUFWriter) -> Void) throws -> String {
            var w = GGUFWriter()
            w.set("general.architecture", .string("llama"))
            w.set("general.type", .string("adapter"))
            w.set("adapter.type", .string("lora"))
            w.set("adapter.lora.alpha", .float32(8))
            edit(&w)
            let path = dir.appendingPathComponent(UUID().uuidString + ".gguf").path
            try w.write(to: path)
            return path
        }
        let a = [Float](repeating: 0, count: 4 * 32)
        let cases: [((inout GGUFWriter) -> Void, String)] = [
            ({ $0.set("general.type", .string("model")) }, "not a LoRA adapter"),
            ({ $0.set("general.architecture", .string("qwen2")) }, "the adapter is for \"qwen2\""),
            ({ $0.addTensor(name: "blk.0.attn_q.weight.lora_a", ne: [32, 4], floats: a) }, "no matching"),
            (
                {
                    $0.addTensor(name: "blk.0.attn_q.weight.lora_a", ne: [32, 4], floats: a)
                    $0.addTensor(
                        name: "blk.0.attn_q.weight.lora_b", ne: [4, 16], floats: [Float](repeating: 0, count: 64))
                }, "do not fit"
            ),
            ({ $0.addTensor(name: "output.weight.lora_a", ne: [32, 4], floats: a) }, "not a LoRA weight"),
            ({ _ in }, "has no LoRA tensors"),
        ]
        for (edit, message) in cases {
            let path = try gguf(edit)
            #expect { try LoRAAdapter.load(path: path, model: config) } throws: { "\($0)".contains(message) }
        }
    }
}

@Suite struct CheckpointTests {
    @Test func roundTripsAndRejectsDamage() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("checkpoint.safetensors").path
        let c = Checkpoint(
            step: 7, cursor: 28, dataHash: "d", baseModelHash: "b", modules: [(1, .q, 4, 2)], parameters: [1, 2, 3],
            firstMoment: [4, 5, 6], secondMoment: [7, 8, 9])
        try c.write(to: path)
        let back = try Checkpoint.read(from: path)
        #expect(back.step == 7 && back.cursor == 28 && back.parameters == [1, 2, 3] && back.secondMoment == [7, 8, 9])
        #expect(back.modules.count == 1 && back.modules[0].target == .q && back.modules[0].rank == 4)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(bytes.count - 5).write(to: URL(fileURLWithPath: path))
        #expect(throws: FormatError.self) { try Checkpoint.read(from: path) }
        var plain = SafetensorsWriter()
        plain.add("parameters", shape: [1], floats: [0])
        try plain.write(to: path)
        #expect { try Checkpoint.read(from: path) } throws: { "\($0)".contains("not a Cairn checkpoint") }
    }
}
