// TrainingConfig: everything a LoRA training job needs: base model, data, LoRA, optimizer, schedule, batching,
// stopping rule, evaluation and checkpoints. `cairn train` fills it from flags or a YAML job file (flags win);
// the cluster's job files use the same fields. Field names in YAML are the snake_case names in `Key`.

import Foundation
import Llama
import ModelFormats

/// How batches are built from examples.
public enum BatchMode: String, Sendable, Codable, CaseIterable {
    /// Examples concatenated into full rows; documents never attend to each other.
    case pack
    /// One example per row, padded to the sequence length.
    case pad
}

/// Which tokens carry the loss.
public enum LossOn: String, Sendable, Codable, CaseIterable {
    /// Completions and assistant turns for prompt/completion, chat and instruction data; everything for text.
    case auto
    /// Every token.
    case all
}

/// The learning-rate schedule after warmup.
public enum ScheduleKind: String, Sendable, Codable, CaseIterable {
    case cosine, linear, constant
}

/// Whether to keep every layer's activations or recompute blocks in the backward.
public enum RecomputeMode: String, Sendable, Codable, CaseIterable {
    /// Keep as many layers' activations as fit in the memory limit, recompute the others (`ActivationPlan`).
    case auto
    case always, never
}

/// How the base model's matrices are held while training (`BasePrecision`), or `auto`.
public enum BasePrecisionChoice: String, Sendable, Codable, CaseIterable {
    /// fp32 when the fp32 weights and the activations fit in 80 % of the memory available now, else q.
    case auto
    case f32, q
}

/// How a cluster job is shared among workers.
public enum DistributionMode: String, Sendable, Codable, CaseIterable {
    /// Every optimizer step's global batch is split across workers in proportion to their speed; gradients are
    /// summed and divided by the step's trained tokens, so N workers reproduce one machine's training.
    case sync
    /// DiLoCo: each worker takes `inner_steps` local AdamW steps from the global adapter, sends its compressed
    /// pseudo-gradient; the coordinator aggregates in ΔW space and applies an outer Nesterov step.
    case diloco
    /// Like diloco, on each worker's own data (`cairn worker join --data`), which never leaves it.
    case federated
    /// No training: each of the job's `adapters` is scored on its data (held-out rows split across the workers).
    case evaluate
}

/// How round results and adapters travel in diloco and federated jobs.
public enum RoundCompression: String, Sendable, Codable, CaseIterable {
    case none, bf16, int8
}

/// An adapter an evaluation job scores: a registry name (NAME or NAME@V), or a merge of registry adapters
/// described inline.
public struct EvaluationCandidate: Sendable, Equatable {
    /// A registry name, when it is not a merge.
    public var reference: String?
    /// A merge: the method (as `cairn merge --method`), its inputs with their weights, and its density and rank.
    public var method: String?
    public var inputs: [(name: String, weight: Double)] = []
    public var density: Double?
    public var rank: Int?

    public init(reference: String) { self.reference = reference }

    public init(method: String, inputs: [(name: String, weight: Double)], density: Double? = nil, rank: Int? = nil) {
        self.method = method
        self.inputs = inputs
        self.density = density
        self.rank = rank
    }

    /// How it is named in the job's status: the reference, or `method(a×0.6, b×0.4)`.
    public var label: String {
        if let reference { return reference }
        let parts = inputs.map { "\($0.name)×\($0.weight)" }.joined(separator: ", ")
        return "\(method ?? "merge")(\(parts)\(density.map { ", density \($0)" } ?? ""))"
    }

    public static func == (a: EvaluationCandidate, b: EvaluationCandidate) -> Bool {
        a.reference == b.reference && a.method == b.method && a.inputs.map(\.name) == b.inputs.map(\.name)
            && a.inputs.map(\.weight) == b.inputs.map(\.weight) && a.density == b.density && a.rank == b.rank
    }
}

/// diloco/federated: how a round combines its participants' updates (`Adapters.Aggregation`).
public enum RoundAggregation: String, Sendable, Codable, CaseIterable {
    case mean, median
    case trimmedMean = "trimmed_mean"
}

/// A LoRA training job.
public struct TrainingConfig: Sendable, Equatable {
    /// `--model`: a GGUF file, HF directory or cached model name.
    public var model = "smollm2-135m"
    /// Training data, JSONL.
    public var data = ""
    /// A held-out JSONL file for evaluation.
    public var validationData: String?
    /// The fraction of the training examples held out for evaluation when no validation file is given.
    public var validationSplit = 0.0
    /// The run directory (checkpoint, adapter, metrics).
    public var output = ""
    /// An adapter to start from instead of a fresh one (PEFT directory or GGUF LoRA).
    public var initAdapter: String?

    public var lora = LoRAConfig()
    public var learningRate = 2e-4
    public var schedule = ScheduleKind.cosine
    public var warmupSteps = 0
    /// Final learning rate as a fraction of the peak (cosine and linear).
    public var minLearningRateRatio = 0.0
    public var weightDecay = 0.0
    public var beta1 = 0.9
    public var beta2 = 0.999
    public var epsilon = 1e-8
    /// Clip the global gradient norm to this (0: no clipping).
    public var maxGradNorm = 1.0

    /// Rows per micro-batch.
    public var batchSize = 4
    /// Micro-batches per optimizer step.
    public var gradientAccumulation = 1
    /// Tokens per row.
    public var sequenceLength = 256
    /// Optimizer steps; when 0, `epochs` decides.
    public var steps = 0
    /// Passes over the data when `steps` is 0.
    public var epochs = 1.0
    public var batchMode = BatchMode.pack
    public var lossOn = LossOn.auto
    /// Evaluate every this many steps (0: only at the end, when there is validation data).
    public var evalEvery = 0
    /// Write a checkpoint every this many steps (0: only at the end and on interruption).
    public var saveEvery = 50
    public var seed: UInt64 = 0
    /// Skip (and count) malformed records instead of failing on the first.
    public var skipBadRecords = false
    /// A chat template name overriding the model's.
    public var chatTemplate: String?
    public var recompute = RecomputeMode.auto
    /// The memory a training step may use, in bytes (weights, adapter state and activations); nil: the base plus
    /// 80 % of the memory available once it is loaded.
    public var memoryLimit: Int?
    /// `--base-precision`: fp32 weights, or matrices kept in the file's quantisation.
    public var basePrecision = BasePrecisionChoice.auto
    /// Kernel threads (nil: all cores).
    public var threads: Int?
    /// How a cluster job is distributed (`cairn train` runs on one machine and ignores it).
    public var mode = DistributionMode.sync
    /// diloco/federated: local steps per round (H).
    public var innerSteps = 16
    /// diloco/federated: outer Nesterov learning rate and momentum. The default (1, 0) is the token-weighted
    /// average of the workers' updates in ΔW space; DiLoCo's pretraining setting (0.7, 0.9) overshot in the
    /// few-round LoRA runs measured here (held-out loss 0.061 against 0.045 on two-digit additions, SmolLM2-135M).
    public var outerLearningRate = 1.0
    public var outerMomentum = 0.0
    /// diloco/federated: pseudo-gradients up (with error feedback); the adapter down is bf16 unless `none`.
    public var compression = RoundCompression.int8
    /// diloco/federated: the token-weighted mean of the updates, or (robust to a few bad participants) the
    /// coordinate-wise median or trimmed mean of their ΔW.
    public var aggregate = RoundAggregation.mean
    /// trimmed_mean: the fraction of participants dropped at each end of each entry (at least one).
    public var trimFraction = 0.2
    /// diloco/federated: each participant's update norm (ΔW space, all modules) is clipped to this; 0: no clipping.
    public var clipUpdateNorm = 0.0
    /// Cluster jobs: the job's weight in the share of the pool's rows between jobs running at once (2: twice the rows
    /// of a job of priority 1).
    public var priority = 1.0
    /// evaluate: the adapters to score.
    public var candidates: [EvaluationCandidate] = []
    /// diloco/federated: score each participant's update on the held-out data (on the coordinator) and leave out
    /// those that make the held-out loss worse.
    public var scoreUpdates = false

    /// Defaults.
    public init() {}

    /// The precision to load the base in: the chosen one, or for `auto` fp32 when the fp32 weights and every
    /// layer's activations fit in `memory_limit` or 80 % of `availableBytes` (default: MemAvailable now), else q.
    /// (A q base that keeps its activations trains nearly as fast as fp32; an fp32 base that recomputes them
    /// does not.)
    public func resolvedBasePrecision(model: LlamaConfig, availableBytes: Int? = nil) -> BasePrecision {
        switch basePrecision {
        case .f32: return .f32
        case .q: return .q
        case .auto:
            let limit = memoryLimit ?? (availableBytes ?? Self.availableMemory()).map { Int(0.8 * Double($0)) }
            guard let limit else { return .f32 }
            let probe = LoRAAdapter(model: model, config: lora, seed: 0)
            var keepAll = self
            keepAll.recompute = .never
            let needed = keepAll.activationPlan(model: model, adapter: probe, baseBytes: 4 * model.parameterCount)
            return needed.stepBytes <= limit ? .f32 : .q
        }
    }

    /// MemAvailable from /proc/meminfo, in bytes, or nil where there is none.
    public static func availableMemory() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let kib = Int(fields[1]) { return kib * 1024 }
        }
        return nil
    }

    /// Problems with the settings, each naming its field; empty when valid.
    public func problems() -> [String] {
        var p: [String] = []
        if model.isEmpty { p.append("model: required") }
        if data.isEmpty, mode != .federated { p.append("data: required (a JSONL file)") }
        if !(validationSplit >= 0 && validationSplit < 1) { p.append("validation_split: must be in [0, 1)") }
        if validationData != nil, validationSplit > 0 {
            p.append("validation_split: give it or validation_data, not both")
        }
        if !(learningRate > 0 && learningRate < 1) { p.append("learning_rate: must be in (0, 1)") }
        if warmupSteps < 0 { p.append("warmup_steps: must be 0 or more") }
        if !(minLearningRateRatio >= 0 && minLearningRateRatio <= 1) { p.append("min_lr_ratio: must be in [0, 1]") }
        if !(weightDecay >= 0 && weightDecay < 1) { p.append("weight_decay: must be in [0, 1)") }
        if !(beta1 >= 0 && beta1 < 1) { p.append("beta1: must be in [0, 1)") }
        if !(beta2 >= 0 && beta2 < 1) { p.append("beta2: must be in [0, 1)") }
        if !(epsilon > 0) { p.append("epsilon: must be positive") }
        if !(maxGradNorm >= 0) { p.append("max_grad_norm: must be 0 (off) or positive") }
        if batchSize < 1 || batchSize > 4096 { p.append("batch_size: must be between 1 and 4096") }
        if gradientAccumulation < 1 || gradientAccumulation > 4096 {
            p.append("grad_accum: must be between 1 and 4096")
        }
        if sequenceLength < 2 || sequenceLength > 1 << 16 { p.append("seq_len: must be between 2 and 65536") }
        if steps < 0 { p.append("steps: must be 0 (use epochs) or more") }
        if steps == 0, !(epochs > 0 && epochs <= 10_000) { p.append("epochs: must be positive") }
        if evalEvery < 0 { p.append("eval_every: must be 0 or more") }
        if saveEvery < 0 { p.append("save_every: must be 0 or more") }
        if let threads, threads < 1 || threads > 1024 { p.append("threads: must be between 1 and 1024") }
        if lora.rank < 1 || lora.rank > 4096 { p.append("rank: must be between 1 and 4096") }
        if !(lora.alpha > 0) { p.append("alpha: must be positive") }
        if !(lora.dropout >= 0 && lora.dropout < 1) { p.append("dropout: must be in [0, 1)") }
        if lora.targets.isEmpty { p.append("targets: at least one") }
        if innerSteps < 1 || innerSteps > 100_000 { p.append("inner_steps: must be between 1 and 100000") }
        if !(outerLearningRate > 0 && outerLearningRate <= 10) { p.append("outer_learning_rate: must be in (0, 10]") }
        if !(outerMomentum >= 0 && outerMomentum < 1) { p.append("outer_momentum: must be in [0, 1)") }
        if !(trimFraction > 0 && trimFraction < 0.5) { p.append("trim_fraction: must be in (0, 0.5)") }
        if !(priority > 0 && priority <= 1000) { p.append("priority: must be in (0, 1000]") }
        if !(clipUpdateNorm >= 0 && clipUpdateNorm.isFinite) {
            p.append("clip_update_norm: must be 0 (off) or positive")
        }
        return p
    }
}
