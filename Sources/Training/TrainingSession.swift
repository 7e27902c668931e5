// TrainingSession: the engine of one adapter's training: gradients, optimizer state, workspaces, and the two
// halves of a step (compute the gradient of a set of micro-batches; clip and update). The Trainer drives it
// from data; a cluster worker drives it from the coordinator's messages.

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
    /// AdamW moments and step count.
    public let optimizer: AdamWOptimizer
    /// Learning rate by step.
    public let schedule: LearningRateSchedule
    /// Clip the global gradient norm to this (0: off).
    public let maxGradNorm: Double
    /// LoRA dropout probability.
    public let dropout: Double
    /// Seed of the dropout masks.
    public let seed: UInt64
    /// Keep or recompute activations.
    public let recompute: Bool
    private var workspaces: [String: TrainingWorkspace] = [:]

    /// A session with fresh optimizer state.
    public init(
        model: LlamaModel, adapter: LoRAAdapter, schedule: LearningRateSchedule, weightDecay: Double = 0,
        beta1: Double = 0.9, beta2: Double = 0.999, epsilon: Double = 1e-8, maxGradNorm: Double = 1,
        dropout: Double = 0,
        seed: UInt64 = 0, recompute: Bool = false
    ) {
        self.model = model
        self.adapter = adapter
        gradients = FloatBuffer(count: adapter.parameters.count)
        optimizer = AdamWOptimizer(
            count: adapter.parameters.count, beta1: Float(beta1), beta2: Float(beta2), epsilon: Float(epsilon),
            weightDecay: Float(weightDecay))
        self.schedule = schedule
        self.maxGradNorm = maxGradNorm
        self.dropout = dropout
        self.seed = seed
        self.recompute = recompute
    }

    /// Optimizer steps taken so far.
    public var stepCount: Int { optimizer.stepCount }

    /// One workspace per batch shape, shared by training and evaluation (so it has dropout scratch whenever
    /// the session uses dropout, whichever comes first).
    private func workspace(for batch: TrainingBatch) -> TrainingWorkspace {
        let key = "\(batch.batch)x\(batch.length)"
        if let ws = workspaces[key] { return ws }
        let ws = TrainingWorkspace(
            model: model.config, adapter: adapter, batch: batch.batch, length: batch.length, recompute: recompute,
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
        let scale = normalize ? Float(1) / Float(max(1, targets)) : 1
        var total = StepLoss(sum: 0, tokens: 0)
        for (i, batch) in microBatches.enumerated() {
            let plan =
                dropout > 0
                ? DropoutPlan(probability: Float(dropout), seed: seed &+ UInt64(stepCount) &* 1_000_003 &+ UInt64(i))
                : nil
            let loss = model.trainingStep(
                batch: batch, adapter: adapter, gradients: gradients, lossScale: scale, dropout: plan,
                workspace: workspace(for: batch))
            total += loss
        }
        return total
    }

    /// Clips the gradients and applies one AdamW update at the schedule's rate.
    public func applyUpdate() -> (gradientNorm: Double, learningRate: Double) {
        let norm = clipGradients(gradients, maxNorm: maxGradNorm)
        let lr = schedule.rate(step: stepCount)
        optimizer.update(parameters: adapter.parameters, gradients: gradients, learningRate: lr)
        return (norm, lr)
    }

    /// One optimizer step over the micro-batches of a step.
    public func step(_ microBatches: [TrainingBatch]) -> StepResult {
        let loss = computeGradients(microBatches)
        if loss.tokens == 0 {
            // Nothing trained in these rows: count the step, leave the weights as they are.
            optimizer.stepCount += 1
            return StepResult(
                step: stepCount, loss: loss, gradientNorm: 0, learningRate: schedule.rate(step: stepCount - 1))
        }
        let (norm, lr) = applyUpdate()
        return StepResult(step: stepCount, loss: loss, gradientNorm: norm, learningRate: lr)
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
