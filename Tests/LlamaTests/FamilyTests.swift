import Foundation
import Testing
import ModelFormats
import TensorKernels
import TestSupport
import Llama

/// The families Cairn runs, each as a tiny random model made by transformers (Scripts/fixtures/families.py): as
/// the Hugging Face directory and as the GGUF file llama.cpp's converter writes from it, against transformers'
/// logits, and with a PEFT adapter against PEFT's loss and LoRA gradients on the same batch.
@Suite struct FamilyTests {
    static let families = ["llama3", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3"]
    static let forms = ["hf", "model.gguf"]
    static let cases = families.flatMap { f in forms.map { (f, $0) } }

    struct Reference {
        let tokens: [Int32]
        let logits: [Float]
        let loss: Double
        let loraLoss: Double
        let file: SafetensorsFile

        init(_ family: String) throws {
            file = try SafetensorsFile(path: Fixtures.path("families/\(family)/reference.safetensors"))
            let raw = file.data(for: try #require(file.tensor(named: "tokens")))
            tokens = (0..<raw.count / 4).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self) }
            logits = try #require(file.storedTensor(named: "logits")).floats()
            loss = try #require(Double(file.metadata["loss"] ?? ""))
            loraLoss = try #require(Double(file.metadata["lora_loss"] ?? ""))
        }

        func gradient(_ name: String) throws -> [Float] {
            try #require(file.storedTensor(named: "grad." + name), "no gradient \(name)").floats()
        }
    }

    static func load(_ family: String, _ form: String) throws -> LanguageModel {
        try LanguageModel.load(Fixtures.path("families/\(family)/\(form)"))
    }

    @Test(arguments: cases)
    func logitsMatchTransformers(family: String, form: String) throws {
        let lm = try Self.load(family, form)
        #expect(lm.model.config.architecture == (family == "llama3" || family == "mistral" ? "llama" : family))
        let ref = try Reference(family)
        let logits = runFull(lm.model, ref.tokens, batch: 2, length: 12)
        expectClose(logits, ref.logits, tolerance: Tolerance.reference, "\(family) \(form)")
    }

    /// The PEFT adapter applied by Cairn's training pass: PEFT's loss, and every LoRA gradient within 1e-4.
    @Test(arguments: cases)
    func peftGradientsMatch(family: String, form: String) throws {
        let lm = try Self.load(family, form)
        let ref = try Reference(family)
        let (adapter, _) = try LoRAAdapter.load(
            path: Fixtures.path("families/\(family)/peft"), model: lm.model.config)
        let batch = TrainingBatch(rows: [Array(ref.tokens[0..<12]), Array(ref.tokens[12..<24])])
        let gradients = FloatBuffer(count: adapter.parameters.count)
        // Every layer kept, none kept, and (where there are more than two layers) only the first.
        for kept in [lm.model.config.layers, 0, 1] {
            gradients.zero()
            let ws = TrainingWorkspace(
                model: lm.model.config, adapter: adapter, batch: 2, length: 12, keptLayers: kept)
            let loss = lm.model.trainingStep(
                batch: batch, adapter: adapter, gradients: gradients, lossScale: 1 / Float(batch.targetCount),
                workspace: ws)
            #expect(abs(loss.mean - ref.loraLoss) < 1e-4, "\(family) \(form): loss \(loss.mean) vs \(ref.loraLoss)")
            for m in adapter.modules {
                let a = Array(gradients.array[m.aOffset..<m.aOffset + m.rank * m.inFeatures])
                let b = Array(gradients.array[m.bOffset..<m.bOffset + m.outFeatures * m.rank])
                expectClose(
                    a, try ref.gradient(m.peftName + ".lora_A.weight"), tolerance: Tolerance.reference,
                    "\(family) \(form) \(m.peftName) dA")
                expectClose(
                    b, try ref.gradient(m.peftName + ".lora_B.weight"), tolerance: Tolerance.reference,
                    "\(family) \(form) \(m.peftName) dB")
            }
        }
    }
}

/// The quantised base (matrices kept as Q8_0 blocks) on the families whose blocks are used in new ways: Qwen3's
/// q/k norms, Gemma 3's post-norms and windows, Phi-3's fused matrices split into row views of blocks. Logits and
/// LoRA gradients equal the fp32 base's of the same file up to summation order.
@Suite struct QuantisedFamilyTests {
    @Test(arguments: ["qwen3", "gemma3", "phi3"])
    func quantisedBaseMatchesItsDequantisedValues(family: String) throws {
        let path = Fixtures.path("families/\(family)/model-q8_0.gguf")
        let f32 = try LanguageModel.load(.gguf(path), precision: .f32).model
        let q = try LanguageModel.load(.gguf(path), precision: .q).model
        #expect(q.weights.precision == .q && q.weights.residentBytes < f32.weights.residentBytes)
        let ref = try FamilyTests.Reference(family)
        expectClose(
            runFull(q, ref.tokens, batch: 2, length: 12), runFull(f32, ref.tokens, batch: 2, length: 12),
            tolerance: Tolerance.reordered, "\(family) logits")
        let (adapter, _) = try LoRAAdapter.load(path: Fixtures.path("families/\(family)/peft"), model: f32.config)
        let batch = TrainingBatch(rows: [Array(ref.tokens[0..<12]), Array(ref.tokens[12..<24])])
        var results: [(StepLoss, [Float])] = []
        for model in [f32, q] {
            let gradients = FloatBuffer(count: adapter.parameters.count)
            let ws = TrainingWorkspace(model: model.config, adapter: adapter, batch: 2, length: 12, recompute: true)
            let loss = model.trainingStep(
                batch: batch, adapter: adapter, gradients: gradients, lossScale: 1 / Float(batch.targetCount),
                workspace: ws)
            results.append((loss, gradients.array))
        }
        #expect(abs(results[0].0.mean - results[1].0.mean) < 1e-5)
        expectClose(results[1].1, results[0].1, tolerance: Tolerance.reordered, "\(family) gradients")
    }
}
