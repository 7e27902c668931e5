// SharedPass: several sessions' steps computed together train each adapter as its own steps do.

import Llama
import TensorKernels
import TestSupport
import Testing
import Training

@Suite struct SharedPassTests {
    @Test func sessionsSteppedTogetherTrainAsSessionsSteppedAlone() {
        let c = LlamaConfig(dim: 32, layers: 2, heads: 4, kvHeads: 2, ffnDim: 64, vocabSize: 64, contextLength: 64)
        let model = LlamaModel(weights: LlamaWeights.synthetic(config: c, type: .q4_0, seed: 11))
        func sessions() -> [TrainingSession] {
            let configs = [LoRAConfig(rank: 4, alpha: 8), LoRAConfig(rank: 2, alpha: 2, targets: [.q, .v, .down])]
            return configs.enumerated().map { k, lora in
                TrainingSession(
                    model: model, adapter: LoRAAdapter(model: c, config: lora, seed: UInt64(k + 1)),
                    schedule: LearningRateSchedule(peak: 0.01, warmupSteps: 0, totalSteps: 3, kind: .constant),
                    dropout: k == 0 ? 0.2 : 0, seed: UInt64(7 + k), keptLayers: k == 0 ? .max : 0)
            }
        }
        var rng = SeededGenerator(seed: 3)
        func batch(rows: Int, length: Int) -> TrainingBatch {
            TrainingBatch(rows: (0..<rows).map { _ in (0..<length).map { _ in Int32(rng.next() % 64) } })
        }
        let steps = (0..<3).map { _ in [batch(rows: 2, length: 10), batch(rows: 3, length: 6)] }
        let alone = sessions()
        var aloneLosses: [[Double]] = [[], []]
        for batches in steps {
            for k in 0..<2 { aloneLosses[k].append(alone[k].step([batches[k]]).loss.mean) }
        }
        let together = sessions()
        let pass = SharedPass(together)
        var togetherLosses: [[Double]] = [[], []]
        for batches in steps {
            for (k, r) in pass.step(batches).enumerated() {
                togetherLosses[k].append(r.loss.mean)
                #expect(r.step == together[k].stepCount)
            }
        }
        for k in 0..<2 {
            for (a, b) in zip(aloneLosses[k], togetherLosses[k]) { #expect(abs(a - b) <= 1e-5 * abs(a), "\(k)") }
            expectClose(
                together[k].adapter.parameters.array, alone[k].adapter.parameters.array, tolerance: 1e-4,
                "adapter \(k) after 3 steps")
            let trained = together[k].adapter.parameters.array != sessions()[k].adapter.parameters.array
            #expect(trained, "adapter \(k) trained")
        }
    }

    /// Several micro-batches per session, and not the same number: each session's gradients and loss are those of
    /// its own `computeGradients` over its micro-batches (summed losses, as a cluster worker's share is), dropout
    /// masks included.
    @Test func microBatchesOfEachSessionMatchItsOwnPass() {
        let c = LlamaConfig(dim: 32, layers: 2, heads: 4, kvHeads: 2, ffnDim: 64, vocabSize: 64, contextLength: 64)
        let model = LlamaModel(weights: LlamaWeights.synthetic(config: c, type: .q8_0, seed: 5))
        func sessions() -> [TrainingSession] {
            let configs = [LoRAConfig(rank: 2, alpha: 4), LoRAConfig(rank: 4, alpha: 4, targets: [.k, .o, .up])]
            return configs.enumerated().map { k, lora in
                TrainingSession(
                    model: model, adapter: LoRAAdapter(model: c, config: lora, seed: UInt64(k + 3)),
                    schedule: LearningRateSchedule(peak: 0.01, warmupSteps: 0, totalSteps: 3, kind: .constant),
                    dropout: 0.1, seed: UInt64(2 + k), keptLayers: k == 0 ? 1 : .max)
            }
        }
        var rng = SeededGenerator(seed: 9)
        func batch(rows: Int, length: Int) -> TrainingBatch {
            TrainingBatch(rows: (0..<rows).map { _ in (0..<length).map { _ in Int32(rng.next() % 64) } })
        }
        let micro = [
            [batch(rows: 2, length: 8), batch(rows: 1, length: 8), batch(rows: 2, length: 5)],
            [batch(rows: 3, length: 7)],
        ]
        let alone = sessions()
        let aloneLosses = zip(alone, micro).map { $0.computeGradients($1, normalize: false) }
        let together = sessions()
        let losses = SharedPass(together).computeGradients(microBatches: micro, normalize: false)
        for k in 0..<2 {
            #expect(losses[k].tokens == aloneLosses[k].tokens)
            #expect(abs(losses[k].sum - aloneLosses[k].sum) <= 1e-5 * abs(aloneLosses[k].sum), "loss \(k)")
            expectClose(
                together[k].gradients.array, alone[k].gradients.array, tolerance: 1e-4, "gradients of session \(k)")
            #expect(together[k].gradients.array.contains { $0 != 0 })
        }
    }
}
