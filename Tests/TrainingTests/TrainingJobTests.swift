import Foundation
import Testing
import Llama
import ModelFormats
import TensorKernels
import TestSupport
import Training

/// The pieces every trainer shares (`cairn train`, the sync coordinator, round workers): one optimizer step, one
/// checkpoint restore with its checks, one round of local steps with error feedback.
@Suite struct TrainingJobTests {
    static func model() throws -> LlamaModel { try LanguageModel.load(.gguf(Fixtures.path("tiny-llama/a.gguf"))).model }

    static func adapter(_ model: LlamaModel, seed: UInt64 = 5) -> LoRAAdapter {
        let a = LoRAAdapter(model: model.config, config: LoRAConfig(rank: 2, alpha: 4), seed: seed)
        // B is zero at initialisation; give it values so every gradient is non-zero.
        let p = a.parameters.pointer
        for (i, v) in randomFloats(a.parameters.count, seed: seed, in: -0.05...0.05).enumerated() where p[i] == 0 {
            p[i] = v
        }
        return a
    }

    static func batch(_ model: LlamaModel, seed: UInt64, trained: Bool = true) -> TrainingBatch {
        let length = 8
        let rows = 2
        var rng = SeededGenerator(seed: seed)
        let tokens = (0..<rows * length).map { _ in Int32(rng.next() % UInt64(model.config.vocabSize)) }
        let targets = (0..<rows * length).map { _ in trained ? Int32(rng.next() % UInt64(model.config.vocabSize)) : -1 }
        return TrainingBatch(
            batch: rows, length: length, tokens: tokens, targets: targets,
            positions: (0..<rows * length).map { Int32($0 % length) },
            documentStarts: (0..<rows * length).map { _ in 0 })
    }

    static func optimizer(_ adapter: LoRAAdapter, totalSteps: Int = 10) -> AdapterOptimizer {
        AdapterOptimizer(
            adapter: adapter,
            schedule: LearningRateSchedule(peak: 1e-2, warmupSteps: 2, totalSteps: totalSteps, kind: .cosine),
            weightDecay: 0.01, maxGradNorm: 0.5)
    }

    /// A sync step from summed gradient shares is the step from the mean gradient; a step without a trained token
    /// is counted and changes nothing (the Trainer, the coordinator and round workers all take this one step).
    @Test func oneStepForSummedAndMeanGradientsAndEmptySteps() throws {
        let model = try Self.model()
        let batch = Self.batch(model, seed: 1)
        func session() -> TrainingSession {
            TrainingSession(
                model: model, adapter: Self.adapter(model), schedule: Self.optimizer(Self.adapter(model)).schedule)
        }
        // Mean: one session's gradient of the mean loss.
        let (one, two) = (session(), session())
        let mean = one.computeGradients([batch])
        #expect(mean.tokens > 0)
        let a = one.adapter
        let first = Self.optimizer(a).step(one.gradients, loss: mean)
        // Summed: two shares of the summed loss, added.
        let summed = FloatBuffer(count: a.parameters.count)
        var total = StepLoss()
        for half in [batch.rows(0..<1), batch.rows(1..<2)] {
            total += two.computeGradients([half], normalize: false)
            for i in 0..<summed.count { summed.pointer[i] += two.gradients.pointer[i] }
        }
        #expect(total.tokens == mean.tokens)
        let second = Self.optimizer(two.adapter).step(summed, loss: total, summed: true)
        #expect(first.step == 1 && second.step == 1)
        #expect(abs(first.gradientNorm - second.gradientNorm) <= 1e-4 * first.gradientNorm)
        expectClose(two.adapter.parameters.array, a.parameters.array, tolerance: Tolerance.reordered)

        let gradients = one.gradients
        let before = a.parameters.array
        let o = Self.optimizer(a)
        let empty = o.step(gradients, loss: StepLoss(sum: 0, tokens: 0))
        #expect(empty.step == 1 && o.stepCount == 1 && empty.gradientNorm == 0)
        #expect(a.parameters.array == before)
    }

    /// A checkpoint restores exactly, and is refused for another data set, another base or other modules.
    @Test func checkpointsRestoreExactlyAndRefuseAnotherJob() throws {
        let model = try Self.model()
        let training = TrainingSession(
            model: model, adapter: Self.adapter(model), schedule: Self.optimizer(Self.adapter(model)).schedule)
        let (a, o) = (training.adapter, training.optimizer)
        for s in 0..<3 { training.step([Self.batch(model, seed: UInt64(s))]) }
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("c.safetensors").path
        try Checkpoint(o, cursor: 12, dataHash: "data", baseModelHash: "base").write(to: path)
        let c = try Checkpoint.read(from: path)

        let restored = Self.optimizer(Self.adapter(model, seed: 9))
        try c.restore(into: restored.adapter, moments: restored.adamW, dataHash: "data", baseModelHash: "base")
        #expect(c.cursor == 12 && restored.stepCount == 3)
        #expect(restored.adapter.parameters.array == a.parameters.array)
        #expect(restored.adamW.m.array == o.adamW.m.array && restored.adamW.v.array == o.adamW.v.array)

        let fresh = Self.optimizer(Self.adapter(model))
        func refusal(_ body: () throws -> Void) -> String {
            do { try body() } catch { return "\(error)" }
            return ""
        }
        #expect(
            refusal {
                try c.restore(into: fresh.adapter, moments: fresh.adamW, dataHash: "other", baseModelHash: "base")
            }
            .contains("training data changed"))
        #expect(
            refusal {
                try c.restore(into: fresh.adapter, moments: fresh.adamW, dataHash: "data", baseModelHash: "other")
            }
            .contains("base model changed"))
        let rank4 = LoRAAdapter(model: model.config, config: LoRAConfig(rank: 4, alpha: 4), seed: 1)
        #expect(
            refusal { try c.restore(into: rank4, moments: nil, dataHash: "data", baseModelHash: "base") }
                .contains("does not match the job's LoRA settings"))
        // A federated job's coordinator does not hold the data: no data check.
        try c.restore(into: fresh.adapter, moments: nil, dataHash: nil, baseModelHash: "base")
        #expect(fresh.adapter.parameters.array == a.parameters.array)
    }

    /// A round's local steps are session steps at the job's learning rates (first step onwards), and Δ is
    /// global − local; a local step without a trained token is counted like any other.
    @Test func aRoundIsLocalStepsAtTheJobsRates() throws {
        let model = try Self.model()
        let schedule = LearningRateSchedule(peak: 1e-2, warmupSteps: 4, totalSteps: 12, kind: .cosine)
        func session(_ a: LoRAAdapter) -> TrainingSession {
            TrainingSession(model: model, adapter: a, schedule: schedule, maxGradNorm: 0.5)
        }
        let global = Self.adapter(model).parameters.array
        let batches = [
            Self.batch(model, seed: 3), Self.batch(model, seed: 4, trained: false), Self.batch(model, seed: 5),
        ]
        let worker = session(Self.adapter(model, seed: 8))
        let (loss, delta) = worker.localRound(from: global, steps: 3, firstStep: 6, microBatch: 1) { batches[$0] }

        let reference = session(Self.adapter(model, seed: 8))
        reference.adapter.parameters.pointer.update(from: global, count: global.count)
        var expected = StepLoss()
        for (h, b) in batches.enumerated() {
            let r = reference.step(b.split(maxRows: 1), scheduleStep: 6 + h)
            #expect(r.learningRate == schedule.rate(step: 6 + h))
            expected += r.loss
        }
        #expect(loss == expected && worker.stepCount == 3)
        let local = reference.adapter.parameters.array
        #expect(delta == zip(global, local).map { $0 - $1 })
        #expect(delta.contains { $0 != 0 })
    }

    /// Error feedback: what compression drops from one round is sent in the next, so over rounds the receiver
    /// gets every Δ but the last residual.
    @Test func errorFeedbackLosesNothingForGood() {
        func coarse(_ x: [Float]) -> [Float] { x.map { ($0 * 10).rounded() / 10 } }
        var feedback = ErrorFeedback(count: 4)
        var sentTotal = [Float](repeating: 0, count: 4)
        var arrivedTotal = [Float](repeating: 0, count: 4)
        for round in 0..<6 {
            let delta = randomFloats(4, seed: UInt64(round), in: -0.3...0.3)
            let corrected = feedback.corrected(delta)
            let arrived = coarse(corrected)
            feedback.carry(sent: corrected, arrived: arrived)
            for i in 0..<4 {
                sentTotal[i] += delta[i]
                arrivedTotal[i] += arrived[i]
            }
            #expect(feedback.residual.allSatisfy { abs($0) <= 0.05 + 1e-6 })
        }
        for i in 0..<4 { #expect(abs(sentTotal[i] - arrivedTotal[i] - feedback.residual[i]) <= 1e-5) }
        // A failed round trip keeps the residual as it was.
        let kept = feedback.residual
        feedback.carry(sent: [1, 2, 3, 4], arrived: nil)
        #expect(feedback.residual == kept)
    }
}
