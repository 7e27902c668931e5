// The pieces of training that every trainer shares: `cairn train` (Trainer), the coordinator of a cluster job
// (the sync optimizer step, round checkpoints) and a round worker (diloco and federated local steps). One
// implementation of each, so they cannot drift apart:
//
//   JobRows           a job's data as rows: the shuffled training stream, the held-out rows, the step count
//   AdapterOptimizer  AdamW, the learning-rate schedule and clipping: one optimizer step
//   Checkpoint(…)     built from, and restored into, an adapter and its optimizer, with the checks resume needs
//   AdapterProvenance what an adapter trained by a job records of itself
//   localRound        a round worker's local steps and its pseudo-gradient; ErrorFeedback for its compression

import Llama
import ModelFormats
import TensorKernels
import Tokenizer

/// A job's data as rows: what the Trainer steps through, the coordinator splits across workers, and a federated
/// worker trains on.
public struct JobRows: Sendable {
    /// The training rows, shuffled by the job's seed.
    public var train: RowPlan
    /// The held-out rows, in order (nil without held-out data).
    public var validation: RowPlan?
    /// SHA-256 of the tokenized training examples: the data's identity for resume and provenance.
    public var dataHash: String
    /// Malformed records skipped (with `skip_bad_records`).
    public var skipped: Int
    public var validationExamples: Int
    /// Rows per optimizer step: batch size × gradient accumulation.
    public var rowsPerStep: Int
    /// Optimizer steps: `steps`, or enough for `epochs` of the rows.
    public var totalSteps: Int

    /// Tokenizes the job's data (`config.data`, and its held-out data) into rows.
    ///
    /// - Parameter shuffled: false to keep the examples' order (a federated coordinator's held-out file, read as
    ///   its data).
    /// - Throws: `TrainingError` naming the file and line of a bad record, or saying that no example has a trained
    ///   token.
    public static func load(
        config: TrainingConfig, tokenizer: BPETokenizer, template: Result<ChatTemplate, ChatTemplateError>,
        shuffled: Bool = true
    ) throws(TrainingError) -> JobRows {
        let data = try TrainingData.load(config: config, tokenizer: tokenizer, template: template)
        let padId = tokenizer.eosId ?? 0
        func rows(_ examples: [Example], seed: UInt64?) -> RowPlan {
            RowPlan(
                examples: examples, length: config.sequenceLength, mode: config.batchMode, padId: padId, seed: seed)
        }
        let train = rows(data.train, seed: shuffled ? config.seed : nil)
        guard train.exampleCount > 0 else {
            throw .run("\(config.data): no example has a trained token (check loss_on and the data)")
        }
        let rowsPerStep = config.batchSize * config.gradientAccumulation
        let totalSteps =
            config.steps > 0
            ? config.steps
            : max(1, Int((Double(train.rowCount(epoch: 0)) * config.epochs / Double(rowsPerStep)).rounded(.up)))
        return JobRows(
            train: train, validation: data.validation.isEmpty ? nil : rows(data.validation, seed: nil),
            dataHash: data.hash, skipped: data.skipped, validationExamples: data.validation.count,
            rowsPerStep: rowsPerStep, totalSteps: totalSteps)
    }

    /// The micro-batches of the step that starts at row `cursor` of the stream.
    public func step(at cursor: Int, batchSize: Int) -> [TrainingBatch] {
        stride(from: 0, to: rowsPerStep, by: batchSize).map {
            train.batch(from: cursor + $0, count: min(batchSize, rowsPerStep - $0))
        }
    }
}

extension TrainingConfig {
    /// Checks the settings against the model: the LoRA targets exist and the rows fit the model's context.
    public func check(model: LlamaConfig) throws(TrainingError) {
        do { try lora.validate(for: model) } catch { throw .config([error.description]) }
        let context = min(model.contextLength, LlamaModel.positionLimit)
        guard sequenceLength <= context else {
            throw .config(["seq_len: \(sequenceLength) is longer than the model's context (\(context) tokens)"])
        }
    }

    /// The learning-rate schedule of a job of `totalSteps` optimizer steps.
    public func learningRateSchedule(totalSteps: Int) -> LearningRateSchedule {
        LearningRateSchedule(
            peak: learningRate, warmupSteps: warmupSteps, totalSteps: max(1, totalSteps), kind: schedule,
            minRatio: minLearningRateRatio)
    }
}

extension ChatTemplate {
    /// The template a job's examples are built with: the override, else the model's own; or why there is none
    /// (reported only if a record needs one).
    public static func forJob(override: String?, source: String?) -> Result<ChatTemplate, ChatTemplateError> {
        Result { () throws(ChatTemplateError) in try LanguageModel.chatTemplate(override: override, source: source) }
    }
}

/// An adapter's optimizer: AdamW state, the learning-rate schedule and gradient clipping. Its `step` is the one
/// optimizer step of every trainer.
public final class AdapterOptimizer: @unchecked Sendable {
    /// The adapter it updates in place.
    public let adapter: LoRAAdapter
    /// AdamW moments and the step count.
    public let adamW: AdamWOptimizer
    public let schedule: LearningRateSchedule
    /// Clip the global gradient norm to this (0: off).
    public let maxGradNorm: Double

    public init(
        adapter: LoRAAdapter, schedule: LearningRateSchedule, weightDecay: Double = 0, beta1: Double = 0.9,
        beta2: Double = 0.999, epsilon: Double = 1e-8, maxGradNorm: Double = 1
    ) {
        self.adapter = adapter
        adamW = AdamWOptimizer(
            count: adapter.parameters.count, beta1: Float(beta1), beta2: Float(beta2), epsilon: Float(epsilon),
            weightDecay: Float(weightDecay))
        self.schedule = schedule
        self.maxGradNorm = maxGradNorm
    }

    /// The optimizer a job's settings describe, for a job of `totalSteps` steps.
    public convenience init(adapter: LoRAAdapter, config c: TrainingConfig, totalSteps: Int) {
        self.init(
            adapter: adapter, schedule: c.learningRateSchedule(totalSteps: totalSteps), weightDecay: c.weightDecay,
            beta1: c.beta1, beta2: c.beta2, epsilon: c.epsilon, maxGradNorm: c.maxGradNorm)
    }

    /// Optimizer steps taken so far.
    public var stepCount: Int { adamW.stepCount }

    /// One optimizer step.
    ///
    /// - Parameters:
    ///   - gradients: the gradient of the mean loss over the step's trained tokens, or with `summed` of their
    ///     summed loss (a cluster step's shares added up; divided here). Clipped in place.
    ///   - loss: the step's summed loss and trained tokens. A step without a trained token is counted and leaves
    ///     the weights as they are.
    ///   - scheduleStep: the step whose learning rate applies (default: this optimizer's count; a round worker's
    ///     local steps follow the job's step count instead).
    @discardableResult
    public func step(_ gradients: FloatBuffer, loss: StepLoss, summed: Bool = false, scheduleStep: Int? = nil)
        -> StepResult
    {
        let rate = schedule.rate(step: scheduleStep ?? stepCount)
        guard loss.tokens > 0 else {
            adamW.stepCount += 1
            return StepResult(step: stepCount, loss: loss, gradientNorm: 0, learningRate: rate)
        }
        if summed {
            let scale = 1 / Float(loss.tokens)
            let g = gradients.pointer
            for i in 0..<gradients.count { g[i] *= scale }
        }
        let norm = clipGradients(gradients, maxNorm: maxGradNorm)
        adamW.update(parameters: adapter.parameters, gradients: gradients, learningRate: rate)
        return StepResult(step: stepCount, loss: loss, gradientNorm: norm, learningRate: rate)
    }
}

extension Checkpoint {
    /// A checkpoint of an adapter and, when given, its AdamW state.
    public init(
        step: Int, cursor: Int, dataHash: String, baseModelHash: String, adapter: LoRAAdapter, moments: AdamWOptimizer?
    ) {
        self.init(
            step: step, cursor: cursor, dataHash: dataHash, baseModelHash: baseModelHash,
            modules: adapter.modules.map { ($0.layer, $0.target, $0.rank, $0.scale) },
            parameters: adapter.parameters.array, firstMoment: moments?.m.array ?? [],
            secondMoment: moments?.v.array ?? [])
    }

    /// A checkpoint of an optimizer's adapter and state at its step.
    public init(_ optimizer: AdapterOptimizer, cursor: Int, dataHash: String, baseModelHash: String) {
        self.init(
            step: optimizer.stepCount, cursor: cursor, dataHash: dataHash, baseModelHash: baseModelHash,
            adapter: optimizer.adapter, moments: optimizer.adamW)
    }

    /// Loads the checkpoint into `adapter` (and `moments`, whose step count it sets), after checking that it is
    /// a checkpoint of this job: the same modules, data and base model.
    ///
    /// - Parameter dataHash: nil where the job's data is not the coordinator's to check (federated jobs).
    public func restore(into adapter: LoRAAdapter, moments: AdamWOptimizer?, dataHash: String?, baseModelHash: String)
        throws(TrainingError)
    {
        if let dataHash, self.dataHash != dataHash {
            throw .run(
                "the training data changed since the checkpoint (its SHA-256 differs); resuming needs the same data, "
                    + "or start a new run")
        }
        guard self.baseModelHash == baseModelHash else {
            throw .run("the base model changed since the checkpoint; resuming needs the same model")
        }
        guard modules.count == adapter.modules.count,
            zip(modules, adapter.modules).allSatisfy({
                $0.0.layer == $0.1.layer && $0.0.target == $0.1.target && $0.0.rank == $0.1.rank
            }),
            parameters.count == adapter.parameters.count,
            moments.map({ firstMoment.count == $0.m.count && secondMoment.count == $0.v.count }) ?? true
        else { throw .run("the checkpoint's adapter does not match the job's LoRA settings") }
        adapter.parameters.pointer.update(from: parameters, count: parameters.count)
        if let moments {
            moments.m.pointer.update(from: firstMoment, count: firstMoment.count)
            moments.v.pointer.update(from: secondMoment, count: secondMoment.count)
            moments.stepCount = step
        }
    }
}

extension AdapterProvenance {
    /// What an adapter trained by a job records of itself: the base, the data, the recipe and the steps taken,
    /// and, when it started from another adapter (`init_adapter`), that adapter as its parent (a lineage node).
    public init(
        training config: TrainingConfig, baseModelHash: String, baseModelName: String? = nil, dataHash: String?,
        steps: Int, startedFrom parent: JSONObject? = nil
    ) {
        self.init()
        self.baseModelHash = baseModelHash
        self.baseModelName = baseModelName
        self.dataHash = dataHash
        recipe = try? JSONValue.parse(Trainer.recipeJSON(config))
        self.steps = steps
        if let parent { lineage = ["method": "train", "parents": [.object(parent)]] }
    }
}

extension TrainingSession {
    /// A diloco or federated worker's round: from the global adapter `global`, `steps` local optimizer steps, step
    /// `h` on `rows(h)` at the learning rate of the job's step `firstStep + h`.
    ///
    /// - Returns: the summed loss over the round and the pseudo-gradient Δ = global − local.
    public func localRound(
        from global: [Float], steps: Int, firstStep: Int, microBatch: Int, rows: (Int) -> TrainingBatch
    ) -> (loss: StepLoss, delta: [Float]) {
        let n = adapter.parameters.count
        precondition(global.count == n, "localRound: the global adapter has another size")
        adapter.parameters.pointer.update(from: global, count: n)
        var total = StepLoss()
        for h in 0..<steps {
            total += step(rows(h).split(maxRows: microBatch), scheduleStep: firstStep + h).loss
        }
        let local = adapter.parameters.pointer
        return (total, (0..<n).map { global[$0] - local[$0] })
    }
}

/// Error feedback for a compressed pseudo-gradient: what compression lost from one round's Δ is added to the next,
/// so nothing is lost for good.
public struct ErrorFeedback: Sendable {
    /// What the last round's compression lost.
    public private(set) var residual: [Float]

    public init(count: Int) { residual = [Float](repeating: 0, count: count) }

    /// Δ with the carried error added: what to compress and send.
    public func corrected(_ delta: [Float]) -> [Float] { zip(delta, residual).map { $0 + $1 } }

    /// Keeps what the receiver will not see of `sent`: `sent − arrived` (nothing when the round trip failed).
    public mutating func carry(sent: [Float], arrived: [Float]?) {
        guard let arrived, arrived.count == sent.count else { return }
        residual = zip(sent, arrived).map { $0 - $1 }
    }
}
