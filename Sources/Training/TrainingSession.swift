// TrainingSession: the engine of one adapter's training: gradients, optimizer state, workspaces, and the two
// halves of a step (compute the gradient of a set of micro-batches; the AdapterOptimizer's clip and update). The
// Trainer drives it from data; a cluster worker drives it from the coordinator's messages (`localRound` for the
// round modes, in TrainingJob.swift).

import Llama
import TensorKernels

/// What one optimizer step did.
public struct StepResult: Sendable, Equatable {
    /// 1-based step number.
    public var step: Int
    /// Summed loss and trained tokens over the step's micro-batches.
    public var loss: StepLoss
    /// Global gradient norm before clipping.
    public var gradientNorm: Double
    /// Learning rate used.
    public var learningRate: Double
}

/// Trains one adapter on one model.
public final class TrainingSession: @unchecked Sendable {
    /// The frozen model.
    public let model: LlamaModel
    /// The adapter being trained (updated in place).
    public let adapter: LoRAAdapter
    /// Gradients of the last `computeGradients`, laid out like `adapter.parameters`.
    public let gradients: FloatBuffer
    /// AdamW state, schedule and clipping.
    public let optimizer: AdapterOptimizer
    /// LoRA dropout probability.
    public let dropout: Double
    /// Seed of the dropout masks.
    public let seed: UInt64
    /// Layers whose activations the training workspaces keep (the others are recomputed; `Int.max`: all).
    public let keptLayers: Int
    private var workspaces: [String: TrainingWorkspace] = [:]

    /// A session with fresh optimizer state.
    public init(
        model: LlamaModel, adapter: LoRAAdapter, schedule: LearningRateSchedule, weightDecay: Double = 0,
        beta1: Double = 0.9, beta2: Double = 0.999, epsilon: Double = 1e-8, maxGradNorm: Double = 1,
        dropout: Double = 0,
        seed: UInt64 = 0, keptLayers: Int = .max
    ) {
        self.model = model
        self.adapter = adapter
        gradients = FloatBuffer(count: adapter.parameters.count)
        optimizer = AdapterOptimizer(
            adapter: adapter, schedule: schedule, weightDecay: weightDecay, beta1: beta1, beta2: beta2,
            epsilon: epsilon, maxGradNorm: maxGradNorm)
        self.dropout = dropout
        self.seed = seed
        self.keptLayers = keptLayers
    }

    /// The session a job's settings describe, for a job of `totalSteps` optimizer steps.
    public convenience init(
        model: LlamaModel, adapter: LoRAAdapter, config c: TrainingConfig, totalSteps: Int, keptLayers: Int
    ) {
        self.init(
            model: model, adapter: adapter, schedule: c.learningRateSchedule(totalSteps: totalSteps),
            weightDecay: c.weightDecay, beta1: c.beta1, beta2: c.beta2, epsilon: c.epsilon,
            maxGradNorm: c.maxGradNorm, dropout: c.lora.dropout, seed: c.seed, keptLayers: keptLayers)
    }

    /// Optimizer steps taken so far.
    public var stepCount: Int { optimizer.stepCount }

    /// One workspace per batch shape, shared by training and evaluation (so it has dropout scratch whenever
    /// the session uses dropout, whichever comes first).
    private func workspace(for batch: TrainingBatch) -> TrainingWorkspace {
        let key = "\(batch.batch)x\(batch.length)"
        if let ws = workspaces[key] { return ws }
        let ws = TrainingWorkspace(
            model: model.config, adapter: adapter, batch: batch.batch, length: batch.length, keptLayers: keptLayers,
            dropout: dropout > 0)
        workspaces[key] = ws
        return ws
    }

    /// Sets `gradients` to the gradient of the mean loss over every trained token of `microBatches` (the
    /// micro-batches of one step: gradient accumulation), or with `normalize: false` of the summed loss (a cluster
    /// worker's share: the coordinator adds the shares and divides by the step's trained tokens).
    @discardableResult
    public func computeGradients(_ microBatches: [TrainingBatch], normalize: Bool = true) -> StepLoss {
        gradients.zero()
        let targets = microBatches.reduce(0) { $0 + $1.targetCount }
        let scale = Self.lossScale(targets: targets, normalize: normalize)
        var total = StepLoss(sum: 0, tokens: 0)
        for (i, batch) in microBatches.enumerated() {
            let loss = model.trainingStep(
                batch: batch, adapter: adapter, gradients: gradients, lossScale: scale,
                dropout: dropoutPlan(microBatch: i),
                workspace: workspace(for: batch))
            total += loss
        }
        return total
    }

    /// The gradient of the objective with respect to each target's loss: 1/targets for the mean over a step's
    /// trained tokens, 1 for their sum (a cluster worker's share).
    static func lossScale(targets: Int, normalize: Bool) -> Float {
        normalize ? 1 / Float(max(1, targets)) : 1
    }

    /// The dropout masks of micro-batch `i` of the next step (nil without dropout).
    func dropoutPlan(microBatch i: Int) -> DropoutPlan? {
        guard dropout > 0 else { return nil }
        return DropoutPlan(probability: Float(dropout), seed: seed &+ UInt64(stepCount) &* 1_000_003 &+ UInt64(i))
    }

    /// One optimizer step over the micro-batches of a step (`scheduleStep`: see `AdapterOptimizer.step`).
    @discardableResult
    public func step(_ microBatches: [TrainingBatch], scheduleStep: Int? = nil) -> StepResult {
        optimizer.step(gradients, loss: computeGradients(microBatches), scheduleStep: scheduleStep)
    }

    /// The loss of the current adapter on batches, without gradients or dropout.
    public func evaluate(_ batches: [TrainingBatch]) -> StepLoss {
        var total = StepLoss(sum: 0, tokens: 0)
        for batch in batches {
            let loss = model.trainingStep(
                batch: batch, adapter: adapter, gradients: nil, workspace: workspace(for: batch))
            total += loss
        }
        return total
    }
}
