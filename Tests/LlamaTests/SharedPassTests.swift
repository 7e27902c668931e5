// Several adapters in one training pass: each adapter's loss and gradients equal those of a pass of its rows
// alone, whatever the family's block (split or fused projections, q/k norms and post-norms), the ranks and
// targets of the adapters, dropout, and which layers keep their activations.

import Llama
import TensorKernels
import TestSupport
import Testing

@Suite struct SharedPassKernelTests {
    enum Block: CaseIterable { case llama, fused, normed }

    static func config(_ block: Block) -> LlamaConfig {
        var c = LlamaConfig(dim: 32, layers: 3, heads: 4, kvHeads: 2, ffnDim: 64, vocabSize: 64, contextLength: 64)
        switch block {
        case .llama: break
        case .fused: c.fusedProjections = true
        case .normed:
            c.qkNorm = true
            c.postNorms = true
        }
        return c
    }

    /// An adapter with random B (so every gradient is non-zero).
    static func adapter(_ c: LlamaConfig, rank: Int, targets: [LoRATarget], seed: UInt64) -> LoRAAdapter {
        let a = LoRAAdapter(model: c, config: LoRAConfig(rank: rank, alpha: 4, targets: targets), seed: seed)
        var rng = SeededGenerator(seed: seed + 1)
        for m in a.modules {
            for i in 0..<m.outFeatures * m.rank { a.parameters[m.bOffset + i] = (rng.nextUnitFloat() - 0.5) * 0.5 }
        }
        return a
    }

    /// `rows` rows of `length` tokens, one document each, every position but the last trained.
    static func batch(rows: Int, length: Int, seed: UInt64) -> TrainingBatch {
        var rng = SeededGenerator(seed: seed)
        return TrainingBatch(rows: (0..<rows).map { _ in (0..<length).map { _ in Int32(rng.next() % 64) } })
    }

    @Test(arguments: Block.allCases, [false, true])
    func eachAdapterGetsWhatItsOwnPassGives(block: Block, withDropout: Bool) {
        let c = Self.config(block)
        let model = LlamaModel(weights: LlamaWeights.synthetic(config: c, type: .q8_0, seed: 3))
        // Different ranks and targets: one on every projection, one on attention's q and v (or the fused qkv).
        let first = Self.adapter(c, rank: 2, targets: [.q, .k, .v, .o, .gate, .up, .down], seed: 9)
        let second = Self.adapter(c, rank: 4, targets: [.q, .v], seed: 19)
        // Rows of different lengths: the second batch is padded to the first's.
        let batches = [Self.batch(rows: 2, length: 12, seed: 1), Self.batch(rows: 1, length: 9, seed: 2)]
        let plans =
            withDropout
            ? [DropoutPlan(probability: 0.25, seed: 4), DropoutPlan(probability: 0.1, seed: 5)] : [nil, nil]
        let scales: [Float] = [0.5, 2]
        var alone: [(StepLoss, [Float])] = []
        for (k, adapter) in [first, second].enumerated() {
            let ws = TrainingWorkspace(
                model: c, adapter: adapter, batch: batches[k].batch, length: batches[k].length, keptLayers: 3,
                dropout: withDropout)
            let g = FloatBuffer(count: adapter.parameters.count)
            let loss = model.trainingStep(
                batch: batches[k], adapter: adapter, gradients: g, lossScale: scales[k], dropout: plans[k],
                workspace: ws)
            alone.append((loss, g.array))
            #expect(g.array.contains { $0 != 0 })
        }
        let padded = batches.map { $0.padded(toLength: 12) }
        let shared = TrainingBatch(concatenating: padded, length: 12)
        for kept in [3, 1, 0] {
            let ws = TrainingWorkspace(
                model: c, adapters: [first, second], batch: 3, length: 12, keptLayers: kept, dropout: withDropout)
            let gradients = [FloatBuffer(count: first.parameters.count), FloatBuffer(count: second.parameters.count)]
            let losses = model.trainingStep(
                batch: shared,
                adapters: [
                    AdapterRows(
                        adapter: first, rows: 0..<2, gradients: gradients[0], lossScale: scales[0], dropout: plans[0]),
                    AdapterRows(
                        adapter: second, rows: 2..<3, gradients: gradients[1], lossScale: scales[1], dropout: plans[1]),
                ], workspace: ws)
            for k in 0..<2 {
                #expect(losses[k].tokens == alone[k].0.tokens, "\(block) kept \(kept), adapter \(k)")
                #expect(
                    abs(losses[k].sum - alone[k].0.sum) <= 1e-5 * abs(alone[k].0.sum),
                    "\(block) kept \(kept), adapter \(k): \(losses[k].sum) vs \(alone[k].0.sum)")
                expectClose(
                    gradients[k].array, alone[k].1, tolerance: Tolerance.reordered,
                    "\(block) kept \(kept), adapter \(k)")
            }
            // Forward only: the same losses.
            let forward = model.trainingStep(
                batch: shared,
                adapters: [
                    AdapterRows(adapter: first, rows: 0..<2, gradients: nil),
                    AdapterRows(adapter: second, rows: 2..<3, gradients: nil),
                ], workspace: ws)
            #expect(forward.map(\.tokens) == losses.map(\.tokens))
        }
    }

    /// Padding a batch to a longer length changes nothing: same loss, same gradients.
    @Test func paddingRowsChangesNothing() {
        let c = Self.config(.llama)
        let model = LlamaModel(weights: LlamaWeights.synthetic(config: c, type: .q8_0, seed: 3))
        let adapter = Self.adapter(c, rank: 2, targets: [.q, .k, .v, .o, .gate, .up, .down], seed: 9)
        func run(_ batch: TrainingBatch) -> (StepLoss, [Float]) {
            let ws = TrainingWorkspace(
                model: c, adapter: adapter, batch: batch.batch, length: batch.length, keptLayers: 3)
            let g = FloatBuffer(count: adapter.parameters.count)
            let loss = model.trainingStep(batch: batch, adapter: adapter, gradients: g, workspace: ws)
            return (loss, g.array)
        }
        let batch = Self.batch(rows: 2, length: 7, seed: 6)
        let padded = batch.padded(toLength: 16)
        #expect(padded.length == 16 && padded.targetCount == batch.targetCount)
        let (loss, g) = run(batch)
        let (paddedLoss, paddedG) = run(padded)
        #expect(paddedLoss.tokens == loss.tokens && abs(paddedLoss.sum - loss.sum) <= 1e-5 * abs(loss.sum))
        expectClose(paddedG, g, tolerance: Tolerance.reordered, "gradients")
    }
}
