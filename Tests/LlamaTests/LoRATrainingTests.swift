import Foundation
import Testing
import ModelFormats
import TensorKernels
import TestSupport
import Llama

enum TinyTraining {
    static let model = try! LanguageModel.load(Fixtures.path("tiny-llama/a.gguf")).model

    /// An adapter of rank 2 on every projection with random A and B, so every gradient is non-zero.
    static func adapter(seed: UInt64 = 5, rank: Int = 2) -> LoRAAdapter {
        let a = LoRAAdapter(model: model.config, config: LoRAConfig(rank: rank, alpha: 4), seed: seed)
        var rng = SeededGenerator(seed: seed + 1)
        for m in a.modules {
            for i in 0..<m.outFeatures * m.rank { a.parameters[m.bOffset + i] = (rng.nextUnitFloat() - 0.5) * 0.5 }
        }
        return a
    }

    /// Two rows of 12: the first packs two documents ([0, 5) and [5, 12)), with prompt tokens masked.
    static let packed: TrainingBatch = {
        let tokens: [Int32] = [1, 5, 9, 33, 2, 7, 63, 0, 14, 14, 40, 3, 62, 61, 60, 2, 2, 9, 31, 32, 8, 4, 5, 6]
        var targets = [Int32](repeating: -1, count: 24)
        for i in [1, 2, 3] { targets[i] = tokens[i + 1] }  // document 1 predicts up to its last token only
        for i in 7..<11 { targets[i] = tokens[i + 1] }  // document 2, prompt 5...6 masked
        for i in 12..<23 { targets[i] = tokens[i + 1] }
        let positions: [Int32] = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6] + (0..<12).map(Int32.init)
        let starts: [Int32] = [0, 0, 0, 0, 0, 5, 5, 5, 5, 5, 5, 5] + [Int32](repeating: 0, count: 12)
        return TrainingBatch(
            batch: 2, length: 12, tokens: tokens, targets: targets, positions: positions, documentStarts: starts)
    }()

    static func step(
        _ batch: TrainingBatch, _ adapter: LoRAAdapter, recompute: Bool = false, dropout: DropoutPlan? = nil,
        gradients: FloatBuffer? = nil
    ) -> StepLoss {
        let ws = TrainingWorkspace(
            model: model.config, adapter: adapter, batch: batch.batch, length: batch.length, recompute: recompute,
            dropout: dropout != nil)
        return model.trainingStep(batch: batch, adapter: adapter, gradients: gradients, dropout: dropout, workspace: ws)
    }
}

@Suite struct LoRATrainingTests {
    @Test(arguments: [false, true])
    func gradientsMatchFiniteDifferences(withDropout: Bool) {
        let adapter = TinyTraining.adapter()
        let dropout = withDropout ? DropoutPlan(probability: 0.3, seed: 77) : nil
        let gradients = FloatBuffer(count: adapter.parameters.count)
        _ = TinyTraining.step(TinyTraining.packed, adapter, dropout: dropout, gradients: gradients)
        let numeric = numericGradient(of: adapter.parameters, step: 1e-2) {
            TinyTraining.step(TinyTraining.packed, adapter, dropout: dropout).sum
        }
        expectGradient(gradients.array, numeric, "LoRA gradients\(withDropout ? " with dropout" : "")")
    }

    @Test func recomputingBlocksGivesIdenticalGradients() {
        let adapter = TinyTraining.adapter()
        let kept = FloatBuffer(count: adapter.parameters.count)
        let recomputed = FloatBuffer(count: adapter.parameters.count)
        let a = TinyTraining.step(TinyTraining.packed, adapter, recompute: false, gradients: kept)
        let b = TinyTraining.step(TinyTraining.packed, adapter, recompute: true, gradients: recomputed)
        #expect(a == b)
        #expect(kept.array == recomputed.array)
    }

    /// Keeping any number of layers' activations (the others recomputed, the down projection's product skipped
    /// in the re-run) gives the same loss and gradients, bit for bit, with and without dropout; the workspace
    /// holds one set per kept layer plus one shared, and re-runs every other layer but the last.
    @Test(arguments: [false, true]) func keepingSomeLayersGivesIdenticalGradients(withDropout: Bool) {
        let config = LlamaConfig(
            dim: 32, layers: 5, heads: 4, kvHeads: 2, ffnDim: 64, vocabSize: 64, contextLength: 64)
        let model = LlamaModel(weights: LlamaWeights.synthetic(config: config, type: .q8_0, seed: 3))
        let adapter = LoRAAdapter(model: config, config: LoRAConfig(rank: 2, alpha: 4), seed: 9)
        var rng = SeededGenerator(seed: 10)
        for m in adapter.modules {
            for i in 0..<m.outFeatures * m.rank {
                adapter.parameters[m.bOffset + i] = (rng.nextUnitFloat() - 0.5) * 0.5
            }
        }
        let dropout = withDropout ? DropoutPlan(probability: 0.25, seed: 4) : nil
        func run(kept: Int) -> (StepLoss, [Float], TrainingWorkspace) {
            let ws = TrainingWorkspace(
                model: config, adapter: adapter, batch: 2, length: 12, keptLayers: kept, dropout: withDropout)
            let gradients = FloatBuffer(count: adapter.parameters.count)
            let loss = model.trainingStep(
                batch: TinyTraining.packed, adapter: adapter, gradients: gradients, dropout: dropout, workspace: ws)
            return (loss, gradients.array, ws)
        }
        let (reference, referenceGradients, all) = run(kept: 5)
        #expect(!all.recompute && all.keptLayers == 5)
        #expect(referenceGradients.contains { $0 != 0 })
        for kept in 0..<5 {
            let (loss, gradients, ws) = run(kept: kept)
            #expect(loss == reference, "kept \(kept)")
            #expect(gradients == referenceGradients, "kept \(kept): gradients differ")
            let expectedKept = kept >= 4 ? 5 : kept
            #expect(ws.keptLayers == expectedKept && ws.recompute == (expectedKept < 5))
            #expect((0..<5).filter { ws.recomputes(layer: $0) } == Array(min(expectedKept, 4)..<4), "kept \(kept)")
            #expect(ws.activationSets == (expectedKept < 5 ? expectedKept + 1 : 5))
        }
    }

    /// A fresh adapter (B = 0) leaves the model unchanged: the training forward's loss is the base loss.
    @Test func freshAdapterIsANoOp() {
        let model = TinyTraining.model
        let adapter = LoRAAdapter(model: model.config, config: LoRAConfig(rank: 4, alpha: 8), seed: 1)
        let rows: [[Int32]] = [[1, 5, 9, 33, 2, 7, 63, 0, 14, 14, 40, 3]]
        let loss = TinyTraining.step(TrainingBatch(rows: rows), adapter)
        let base = model.loss(tokens: rows[0], window: 12)
        #expect(loss.tokens == base.count)
        #expect(abs(loss.sum - base.sum) <= 1e-4 * base.sum)
    }

    /// Two documents packed into one row give exactly what they give in rows of their own.
    @Test func packedDocumentsEqualSeparateRows() {
        let adapter = TinyTraining.adapter()
        let first: [Int32] = [1, 5, 9, 33, 2]
        let second: [Int32] = [7, 63, 0, 14, 14, 40, 3]
        var packed = TrainingBatch(rows: [first + second])
        packed.targets[4] = -1  // no prediction across the boundary
        packed.positions = (0..<5).map(Int32.init) + (0..<7).map(Int32.init)
        packed.documentStarts = [Int32](repeating: 0, count: 5) + [Int32](repeating: 5, count: 7)
        let gPacked = FloatBuffer(count: adapter.parameters.count)
        let lPacked = TinyTraining.step(packed, adapter, gradients: gPacked)
        let gSeparate = FloatBuffer(count: adapter.parameters.count)
        let l1 = TinyTraining.step(TrainingBatch(rows: [first]), adapter, gradients: gSeparate)
        let l2 = TinyTraining.step(TrainingBatch(rows: [second]), adapter, gradients: gSeparate)
        #expect(lPacked.tokens == l1.tokens + l2.tokens)
        #expect(abs(lPacked.sum - (l1.sum + l2.sum)) <= 1e-5 * lPacked.sum)
        expectClose(gPacked.array, gSeparate.array, tolerance: Tolerance.reordered * 10, "gradients")
    }

    @Test func targetsParseAndConfigurationsValidate() throws {
        #expect(try LoRATarget.parse(["all-linear"]).get() == [.q, .k, .v, .o, .gate, .up, .down])
        #expect(try LoRATarget.parse(["v_proj", "q", "mlp"]).get() == [.q, .v, .gate, .up, .down])
        #expect(throws: LoRAConfigError.self) { try LoRATarget.parse(["lm_head"]).get() }
        let c = TinyTraining.model.config
        #expect(throws: LoRAConfigError.self) { try LoRAConfig(rank: 0).validate(for: c) }
        #expect(throws: LoRAConfigError.self) { try LoRAConfig(layers: [5]).validate(for: c) }
        #expect(LoRAConfig(rank: 16, alpha: 8, useRSLoRA: true).scale == 2)
        let adapter = LoRAAdapter(
            model: c, config: LoRAConfig(rank: 4, alpha: 8, targets: [.q, .down], layers: [1]), seed: 3)
        #expect(adapter.modules.map(\.target) == [.q, .down] && adapter.modules.allSatisfy { $0.layer == 1 })
        #expect(adapter.parameterCount == 4 * (32 + 32) + 4 * (64 + 32))
        let bound = 1 / Float(32).squareRoot()
        let a = adapter.module(layer: 1, target: .q)!
        let values = (0..<4 * 32).map { adapter.parameters[a.aOffset + $0] }
        #expect(values.allSatisfy { abs($0) <= bound } && Set(values).count > 100)
        #expect((0..<4 * 32).allSatisfy { adapter.parameters[a.bOffset + $0] == 0 })
        // A fused model (Phi-3) adapts qkv_proj and gate_up_proj where the split names are asked for; a split
        // model refuses the fused names.
        var fused = c
        fused.fusedProjections = true
        let phi = LoRAAdapter(model: fused, config: LoRAConfig(rank: 2, alpha: 4), seed: 3)
        #expect(phi.modules.filter { $0.layer == 0 }.map(\.target) == [.o, .down, .qkv, .gateUp])
        #expect(phi.module(layer: 0, target: .qkv)!.outFeatures == c.qDim + 2 * c.kvDim)
        #expect(throws: LoRAConfigError.self) { try LoRAConfig(targets: [.qkv]).validate(for: c) }
        try LoRAConfig(targets: [.qkv, .q]).validate(for: fused)
    }
}

@Suite struct QuantisedBaseTests {
    /// The Q8_0 file loaded with its matrices kept quantised (precision q) trains like the same file
    /// dequantised to fp32: same losses and gradients up to summation order, through the GGUF Q/K row
    /// permutation, the tied output projection and the embedding lookup.
    @Test func quantisedBaseTrainsLikeItsDequantisedValues() throws {
        let path = Fixtures.path("tiny-llama/a-q8_0.gguf")
        let f32 = try LanguageModel.load(path, precision: .f32).model
        let q = try LanguageModel.load(path, precision: .q).model
        #expect(f32.weights.precision == .f32 && q.weights.precision == .q)
        #expect(q.weights.layers[0].q.type == .q8_0 && q.weights.embedding.type == .q8_0)
        #expect(q.weights.residentBytes * 3 < f32.weights.residentBytes, "Q8_0 takes about a quarter")
        // Every matrix dequantises to what the fp32 load holds.
        for spec in LlamaWeights.tensorTable(f32.config) {
            #expect(q.weights.values(spec.name) == f32.weights.values(spec.name), "\(spec.name)")
        }
        let adapter = TinyTraining.adapter()
        func run(_ model: LlamaModel, recompute: Bool) -> (StepLoss, [Float]) {
            let gradients = FloatBuffer(count: adapter.parameters.count)
            let batch = TinyTraining.packed
            let ws = TrainingWorkspace(
                model: model.config, adapter: adapter, batch: batch.batch, length: batch.length, recompute: recompute)
            let loss = model.trainingStep(batch: batch, adapter: adapter, gradients: gradients, workspace: ws)
            return (loss, gradients.array)
        }
        let (lossF32, gradF32) = run(f32, recompute: false)
        let (lossQ, gradQ) = run(q, recompute: true)
        #expect(lossQ.tokens == lossF32.tokens)
        #expect(abs(lossQ.sum - lossF32.sum) <= 1e-5 * abs(lossF32.sum), "\(lossQ.sum) vs \(lossF32.sum)")
        expectClose(gradQ, gradF32, tolerance: Tolerance.reordered, "gradients")
        // Inference: the same logits.
        let tokens: [Int32] = [1, 5, 9, 33, 2]
        #expect(abs(q.loss(tokens: tokens, window: 5).sum - f32.loss(tokens: tokens, window: 5).sum) < 1e-4)
    }

    /// Adapters merge into fp32 weights only: asking for both is refused with a way out.
    @Test func mergingAdaptersIntoAQuantisedBaseIsRefused() {
        #expect {
            try LanguageModel.load(
                Fixtures.path("tiny-llama/a-q8_0.gguf"), adapters: ["/nonexistent"], precision: .q)
        } throws: { "\($0)".contains("precision f32") }
    }
}
