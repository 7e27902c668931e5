// Cairn's LoRA training against PyTorch + PEFT on tiny model A (Scripts/fixtures/peft_training.py): the same
// starting adapter, batches, optimizer, schedule and clipping must give the same losses and gradients.

import Foundation
import Testing
import Llama
import ModelFormats
import TensorKernels
import TestSupport
import Training

enum PEFTFixtures {
    static let directory = Fixtures.path("peft")
    static let base = Fixtures.path("tiny-llama/a-hf")
    static let trajectory = try! SafetensorsFile(path: Fixtures.path("peft/trajectory.safetensors"))
    static let eval = try! HFModelDirectory.readJSON(Fixtures.path("peft/eval.json")).objectValue!

    static func ints(_ file: SafetensorsFile, _ name: String) -> [Int32] {
        let raw = file.data(for: file.tensor(named: name)!)
        return (0..<raw.count / 4).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self) }
    }

    /// HF's labels convention (shifted inside the model, -100 ignored) as Cairn targets.
    static func batch(ids: [Int32], labels: [Int32], rows: Int, length: Int) -> TrainingBatch {
        var targets = [Int32](repeating: -1, count: rows * length)
        for r in 0..<rows {
            for t in 0..<length - 1 where labels[r * length + t + 1] != -100 {
                targets[r * length + t] = labels[r * length + t + 1]
            }
        }
        return TrainingBatch(
            batch: rows, length: length, tokens: ids, targets: targets,
            positions: (0..<rows).flatMap { _ in (0..<length).map(Int32.init) },
            documentStarts: [Int32](repeating: 0, count: rows * length))
    }

    static let batches: [TrainingBatch] = {
        let f = try! SafetensorsFile(path: Fixtures.path("peft/batches.safetensors"))
        let ids = ints(f, "input_ids")
        let labels = ints(f, "labels")
        return (0..<20).map { s in
            batch(
                ids: Array(ids[s * 24..<(s + 1) * 24]), labels: Array(labels[s * 24..<(s + 1) * 24]), rows: 2,
                length: 12)
        }
    }()

    static let evalBatch: TrainingBatch = {
        let ids = eval["eval_ids"]!.arrayValue!.flatMap { $0.arrayValue!.map { Int32($0.intValue!) } }
        return TrainingBatch(rows: [Array(ids[0..<12]), Array(ids[12..<24])])
    }()
}

@Suite struct PEFTReferenceTests {
    /// Gradients of the first two steps within 1e-4 of the tensor's scale, losses of 20 steps within 1e-3.
    @Test func trainingMatchesPEFTStepForStep() throws {
        let model = try LanguageModel.load(PEFTFixtures.base).model
        let (adapter, _) = try LoRAAdapter.load(path: PEFTFixtures.directory + "/init", model: model.config)
        #expect(adapter.modules.count == 14 && adapter.modules.allSatisfy { $0.rank == 4 && $0.scale == 2 })
        let session = TrainingSession(
            model: model, adapter: adapter,
            schedule: LearningRateSchedule(peak: 5e-3, warmupSteps: 3, totalSteps: 20, kind: .cosine),
            weightDecay: 0.01, maxGradNorm: 1)
        let losses = try #require(PEFTFixtures.trajectory.storedTensor(named: "losses")).floats()
        for step in 0..<20 {
            let loss = session.computeGradients([PEFTFixtures.batches[step]])
            let expected = Double(losses[step])
            let tolerance = step < 2 ? 1e-4 : 1e-3
            #expect(
                abs(loss.mean - expected) <= tolerance * expected, "step \(step + 1): \(loss.mean) vs PEFT \(expected)")
            if step < 2 {
                for m in adapter.modules {
                    for (part, offset, count) in [
                        ("lora_A", m.aOffset, m.rank * m.inFeatures), ("lora_B", m.bOffset, m.outFeatures * m.rank),
                    ] {
                        let name = "\(m.peftName).\(part).weight.grad\(step + 1)"
                        let reference = try #require(PEFTFixtures.trajectory.storedTensor(named: name), "\(name)")
                            .floats()
                        let ours = Array(UnsafeBufferPointer(start: session.gradients.pointer + offset, count: count))
                        let scale = reference.reduce(Float(0)) { max($0, abs($1)) }
                        let worst = zip(ours, reference).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
                        #expect(worst <= 1e-4 * scale, "\(name): max difference \(worst), scale \(scale)")
                    }
                }
            }
            session.optimizer.step(session.gradients, loss: loss)
        }
    }

    /// Adapters made by PEFT (one trained, one with rsLoRA and rank/alpha patterns) give transformers + PEFT's
    /// eval loss within 1e-4.
    @Test(arguments: ["final", "mixed"])
    func peftAdaptersEvaluateLikePEFT(name: String) throws {
        let lm = try LanguageModel.load(PEFTFixtures.base, adapters: [PEFTFixtures.directory + "/" + name])
        let expected = try #require(PEFTFixtures.eval[name]?.doubleValue)
        let empty = LoRAAdapter(model: lm.model.config, modules: [])
        let ws = TrainingWorkspace(model: lm.model.config, adapter: empty, batch: 2, length: 12, recompute: false)
        let loss = lm.model.trainingStep(batch: PEFTFixtures.evalBatch, adapter: empty, gradients: nil, workspace: ws)
        #expect(abs(loss.mean - expected) <= 1e-4 * expected, "\(name): \(loss.mean) vs PEFT \(expected)")
        let base = try #require(PEFTFixtures.eval["base"]?.doubleValue)
        #expect(abs(loss.mean - base) > 1e-2, "the adapter changes the model")
    }

    @Test func mixedAdapterKeepsItsRanksAndScales() throws {
        let model = try LanguageModel.load(PEFTFixtures.base).model
        let (adapter, _) = try LoRAAdapter.load(path: PEFTFixtures.directory + "/mixed", model: model.config)
        let q = try #require(adapter.module(layer: 0, target: .q))
        let v = try #require(adapter.module(layer: 1, target: .v))
        let down = try #require(adapter.module(layer: 0, target: .down))
        let k = try #require(adapter.module(layer: 0, target: .k))
        #expect(q.rank == 2 && abs(q.scale - 8 / Float(2).squareRoot()) < 1e-6, "rank_pattern, rsLoRA")
        #expect(down.rank == 6 && abs(down.scale - 8 / Float(6).squareRoot()) < 1e-6)
        #expect(v.rank == 4 && abs(v.scale - 3 / 2) < 1e-6, "alpha_pattern")
        #expect(k.rank == 4 && abs(k.scale - 4) < 1e-6)
    }
}
