// SyncJob: a sync-mode job on the coordinator. The coordinator owns the job's truth: the data plan (rows of the
// tokenized data, shuffled by the job's seed), the adapter parameters and AdamW state. Each step it hands rows
// to workers with the current parameters, sums the gradient shares they return (each the gradient of the
// summed loss over its rows), divides by the step's trained tokens, clips and applies one AdamW update: the
// same arithmetic as `cairn train` with the same global batch, up to the order of floating-point sums.

import Foundation
import Llama
import ModelFormats
import TensorKernels
import Tokenizer
import Training
import Wire

/// Why a job cannot run.
public struct JobError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The tokenized data and settings of a job, as the coordinator reads them at submit time and again on restart.
public struct PreparedJob: Sendable {
    public var config: TrainingConfig
    public var modelConfig: LlamaConfig
    /// The data's rows (nil for federated jobs: the data stays on the workers).
    public var plan: RowPlan?
    /// The held-out rows (validation_data, or validation_split of the data), in order; nil without held-out data.
    public var validationPlan: RowPlan?
    public var dataHash: String
    /// Optimizer steps (sync), or local steps per worker (diloco, federated).
    public var totalSteps: Int
    /// Rows per optimizer step (sync), or per local step of one worker (diloco, federated).
    public var rowsPerStep: Int
    /// The adapter the job starts from (`init_adapter`, a registry entry), and its lineage node; nil: a fresh
    /// adapter from the seed. `config.lora` then describes its layout.
    public var initial: LoRAAdapter?
    public var initialNode: JSONObject?

    /// Units of progress the coordinator journals: steps (sync) or rounds.
    public var units: Int {
        config.mode == .sync ? totalSteps : (totalSteps + config.innerSteps - 1) / config.innerSteps
    }

    /// Parses the job file and tokenizes the data.
    ///
    /// - Parameters:
    ///   - spec: the job file's YAML; its `model`, `data` and `validation_data` are replaced by the given paths.
    ///   - source: the name to report in errors (the client's file name).
    ///   - validation: the held-out data sent with the job (its path here, and the client's file name).
    public static func prepare(
        spec: String, source: String, modelPath: String, dataPath: String, dataName: String,
        validation: (path: String, name: String)? = nil, initial: (entry: RegistryEntry, blobs: BlobStore)? = nil,
        evaluation: (layout: LoRAConfig, count: Int)? = nil
    ) throws(JobError) -> PreparedJob {
        var config = TrainingConfig()
        do { try config.apply(yaml: spec, source: source) } catch { throw JobError(error.description) }
        config.model = modelPath
        config.data = dataPath
        config.output = ""
        if config.validationData != nil {
            guard let validation else {
                throw JobError("\(source): validation_data: the file was not sent with the job (submit it again)")
            }
            config.validationData = validation.path
        }
        if config.mode == .federated, config.validationSplit > 0 {
            throw JobError(
                "\(source): validation_split: a federated job's data stays on the workers; hold out data with "
                    + "validation_data (a file sent with the job) instead")
        }
        if config.mode == .evaluate {
            if config.validationData != nil || config.validationSplit > 0 || config.initAdapter != nil {
                throw JobError(
                    "\(source): an evaluation job scores its adapters on its data, which is the held-out set; "
                        + "remove validation_data, validation_split and init_adapter")
            }
            guard config.candidates.isEmpty == false || evaluation != nil else {
                throw JobError("\(source): adapters: an evaluation job needs adapters to score")
            }
        } else if !config.candidates.isEmpty {
            throw JobError("\(source): adapters: only evaluation jobs (mode: evaluate) take a list of adapters")
        }
        if config.initAdapter != nil, initial == nil {
            throw JobError(
                "\(source): init_adapter: a cluster job starts from a published adapter; publish it first "
                    + "(cairn publish DIR --name NAME) and give its name (init_adapter: NAME or NAME@VERSION)")
        }
        if config.mode == .sync, config.aggregate != .mean || config.clipUpdateNorm > 0 || config.scoreUpdates {
            throw JobError(
                "\(source): aggregate, clip_update_norm and score_updates combine the updates of diloco and "
                    + "federated rounds; a sync job sums exact gradients (set mode: diloco or federated)")
        }
        if config.scoreUpdates, config.validationData == nil, config.validationSplit <= 0 {
            throw JobError(
                "\(source): score_updates: needs held-out data to score the updates on (validation_data)")
        }
        if config.lora.dropout > 0 {
            throw JobError(
                "\(source): dropout: cluster jobs train without LoRA dropout for now (masks would depend on how rows are split)"
            )
        }
        let problems = config.problems()
        guard problems.isEmpty else { throw JobError("\(source): " + problems.joined(separator: "; ")) }
        if config.mode == .federated, config.steps <= 0 {
            throw JobError("\(source): steps: federated jobs need steps (local steps per worker); epochs do not apply")
        }
        let model = ModelSource.gguf(modelPath)
        let modelConfig: LlamaConfig
        let tokenizer: BPETokenizer
        let templateSource: String?
        do {
            modelConfig = try model.config()
            (tokenizer, templateSource) = try model.tokenizer()
        } catch { throw JobError(error.description) }
        do { try config.check(model: modelConfig) } catch { throw JobError("\(source): \(error.description)") }
        var start: (adapter: LoRAAdapter, node: JSONObject)?
        if let initial {
            let e = initial.entry
            let adapter: LoRAAdapter
            do { adapter = try e.loadAdapter(model: modelConfig, blobs: initial.blobs).0 } catch {
                throw JobError("\(source): init_adapter: \(e.reference) cannot be loaded: \(error)")
            }
            guard let lora = LoRAConfig(describing: adapter) else {
                throw JobError(
                    "\(source): init_adapter: \(e.reference) has modules of different ranks or scales; a cluster "
                        + "job trains adapters of one rank and one scale over its layers and projections")
            }
            config.lora = lora
            config.initAdapter = nil
            start = (adapter, e.lineageNode)
        }
        let template = ChatTemplate.forJob(override: config.chatTemplate, source: templateSource)
        func load(_ c: TrainingConfig, shuffled: Bool = true) throws(JobError) -> JobRows {
            do {
                return try JobRows.load(config: c, tokenizer: tokenizer, template: template, shuffled: shuffled)
            } catch {
                var text = error.description.replacingOccurrences(of: dataPath, with: dataName)
                if let validation { text = text.replacingOccurrences(of: validation.path, with: validation.name) }
                throw JobError(text)
            }
        }
        if config.mode == .evaluate {
            guard let evaluation else {
                throw JobError("\(source): the evaluation job's adapters were not prepared")
            }
            config.lora = evaluation.layout
            let rows = try load(config, shuffled: false)
            return PreparedJob(
                config: config, modelConfig: modelConfig, plan: nil, validationPlan: rows.train,
                dataHash: rows.dataHash, totalSteps: evaluation.count, rowsPerStep: 1)
        }
        if config.mode == .federated {
            var validationPlan: RowPlan?
            if let path = config.validationData {
                // The held-out file read as data: its examples are the only ones the coordinator has.
                var c = config
                c.data = path
                c.validationData = nil
                validationPlan = try load(c, shuffled: false).train
            }
            return PreparedJob(
                config: config, modelConfig: modelConfig, plan: nil, validationPlan: validationPlan, dataHash: "",
                totalSteps: config.steps, rowsPerStep: config.batchSize * config.gradientAccumulation,
                initial: start?.adapter, initialNode: start?.node)
        }
        let rows = try load(config)
        return PreparedJob(
            config: config, modelConfig: modelConfig, plan: rows.train, validationPlan: rows.validation,
            dataHash: rows.dataHash, totalSteps: rows.totalSteps, rowsPerStep: rows.rowsPerStep,
            initial: start?.adapter, initialNode: start?.node)
    }
}

extension PreparedJob {
    /// The job's adapter before its first step: a copy of the adapter it starts from, or a fresh one from the seed.
    func startingAdapter() -> LoRAAdapter {
        let adapter = LoRAAdapter(model: modelConfig, config: config.lora, seed: config.seed)
        if let initial {
            precondition(initial.modules == adapter.modules, "PreparedJob: the initial adapter's layout changed")
            adapter.parameters.pointer.update(from: initial.parameters.pointer, count: adapter.parameters.count)
        }
        return adapter
    }

    /// Prepares a stored job from the blobs it was submitted with.
    static func prepare(record: JobRecord, blobs: BlobStore) throws(JobError) -> PreparedJob {
        try prepare(
            spec: record.spec, source: "\(record.id) job file", modelPath: blobs.path(record.modelBlob),
            dataPath: blobs.path(record.dataBlob), dataName: record.dataName,
            validation: record.validationBlob.map { (blobs.path($0), record.validationName ?? "validation_data") },
            initial: record.initAdapter.map { ($0, blobs) },
            evaluation: record.candidates.map { ($0.lora, $0.candidates.count) })
    }
}

/// What the coordinator's loop needs of any running job: its arithmetic and its files. Who computes what, and
/// when a unit is complete, is the JobSchedule's.
protocol RunningJob: AnyObject {
    var id: String { get }
    var record: JobRecord { get }
    var prepared: PreparedJob { get }
    var adapter: LoRAAdapter { get }
    /// Units (steps or rounds) journaled, and in all.
    var step: Int { get }
    var units: Int { get }
    var isFinished: Bool { get }
    /// The evaluation on held-out rows in progress (the job waits for it).
    var evaluation: Evaluation? { get set }
    func countBytes(_ n: Int)
    func provenance() -> AdapterProvenance
}

extension RunningJob {
    /// What the job journals: "step" (sync) or "round" (diloco, federated).
    var unitName: String { self is SyncJob ? "step" : self is EvaluationJob ? "adapter" : "round" }

    /// The job's shape, for its schedule.
    var plan: JobPlan {
        let c = prepared.config
        return JobPlan(
            mode: JobPlan.Mode(rawValue: c.mode.rawValue) ?? .sync, totalSteps: prepared.totalSteps,
            rowsPerStep: prepared.rowsPerStep, innerSteps: c.innerSteps,
            evaluationRows: prepared.validationPlan?.rowCount(epoch: 0) ?? 0, evalEvery: c.evalEvery)
    }
}

extension RunningJob {
    /// Loads the job's checkpoint into its adapter (and AdamW state); returns the data cursor.
    func restore(_ checkpoint: Checkpoint, moments: AdamWOptimizer?) throws(JobError) -> Int {
        do {
            try checkpoint.restore(
                into: adapter, moments: moments, dataHash: prepared.plan == nil ? nil : prepared.dataHash,
                baseModelHash: record.modelBlob)
        } catch { throw JobError("the job's last checkpoint cannot be used: \(error)") }
        return checkpoint.cursor
    }
}

extension JobRecord {
    /// The checkpoint journaled as `blob`.
    func checkpoint(_ blob: String, in blobs: BlobStore) throws(JobError) -> Checkpoint {
        do { return try Checkpoint.read(from: blobs.path(blob)) } catch {
            throw JobError("the job's last checkpoint cannot be read: \(error)")
        }
    }
}

/// Loads a job of any mode, fresh or from its last journaled checkpoint.
func loadJob(record: JobRecord, blobs: BlobStore) throws(JobError) -> any RunningJob {
    switch DistributionMode(rawValue: record.mode) {
    case .sync: try SyncJob(record: record, blobs: blobs)
    case .evaluate: try EvaluationJob(record: record, blobs: blobs)
    default: try RoundJob(record: record, blobs: blobs)
    }
}

/// A running sync job.
final class SyncJob: RunningJob {
    let id: String
    let record: JobRecord
    let prepared: PreparedJob
    let optimizer: AdapterOptimizer
    var adapter: LoRAAdapter { optimizer.adapter }
    private(set) var cursor: Int
    var step: Int { optimizer.stepCount }
    var totalSteps: Int { prepared.totalSteps }
    var isFinished: Bool { step >= totalSteps }
    var units: Int { totalSteps }
    var evaluation: Evaluation?

    private let gradientSum: FloatBuffer
    private var lossSum = 0.0
    private var tokens = 0
    private var shares: [String: WorkerShare] = [:]
    private(set) var stepBytes = 0
    private var stepStarted = 0.0
    /// Rows of the step in progress (a batch per row, by index).
    private var stepRows: [TrainingBatch] = []

    /// Loads a job: fresh, or from its last journaled checkpoint.
    init(record: JobRecord, blobs: BlobStore) throws(JobError) {
        id = record.id
        self.record = record
        guard blobs.contains(record.modelBlob), blobs.contains(record.dataBlob),
            record.validationBlob.map(blobs.contains) ?? true
        else {
            throw JobError("the job's model or data is missing from the state directory's blobs")
        }
        prepared = try PreparedJob.prepare(record: record, blobs: blobs)
        let c = prepared.config
        optimizer = AdapterOptimizer(
            adapter: prepared.startingAdapter(), config: c, totalSteps: prepared.totalSteps)
        gradientSum = FloatBuffer(count: optimizer.adapter.parameters.count)
        cursor = 0
        if let blob = record.checkpointBlob {
            cursor = try restore(record.checkpoint(blob, in: blobs), moments: optimizer.adamW)
        }
    }

    /// Begins the next step: its rows, nothing summed yet.
    func startStep(now: Double) {
        precondition(!isFinished)
        let plan = prepared.plan!
        stepRows = (0..<prepared.rowsPerStep).map { plan.row(at: cursor + $0).row }
        gradientSum.zero()
        lossSum = 0
        tokens = 0
        shares = [:]
        stepBytes = 0
        stepStarted = now
    }

    /// The rows of an assignment as one batch.
    func batch(rows: [Int]) -> TrainingBatch {
        TrainingBatch(concatenating: rows.map { stepRows[$0] }, length: prepared.config.sequenceLength)
    }

    func countBytes(_ n: Int) { stepBytes += n }

    /// Adds an accepted result's gradient share, computed by `worker` in `seconds`.
    func add(gradient: [Float], loss: Double, tokens n: Int, seconds: Double, worker: String) {
        // Rows are counted by the step's schedule and filled in at the end.
        shares[worker, default: WorkerShare(rows: 0)].add(rows: 0, tokens: n, seconds: seconds)
        gradient.withUnsafeBufferPointer { g in
            let s = gradientSum.pointer
            for i in 0..<min(g.count, gradientSum.count) { s[i] += g[i] }
        }
        lossSum += loss
        tokens += n
    }

    /// Completes the step: the averaged gradient, clipping, the AdamW update. `rows` gives each worker's rows.
    /// Returns the step's record and the checkpoint to journal.
    func finishStep(now: Double, rows: [String: Int]) -> (StepRecord, Checkpoint) {
        for (worker, n) in rows { shares[worker, default: WorkerShare(rows: 0)].rows = n }
        optimizer.step(gradientSum, loss: StepLoss(sum: lossSum, tokens: tokens), summed: true)
        cursor += prepared.rowsPerStep
        let stepRecord = StepRecord(
            step: optimizer.stepCount, loss: tokens > 0 ? lossSum / Double(tokens) : 0, tokens: tokens,
            seconds: now - stepStarted, bytes: stepBytes, workers: shares,
            computeSeconds: shares.computeSeconds)
        return (
            stepRecord,
            Checkpoint(optimizer, cursor: cursor, dataHash: prepared.dataHash, baseModelHash: record.modelBlob)
        )
    }

    /// The adapter's provenance for its exported files.
    func provenance() -> AdapterProvenance {
        AdapterProvenance(
            training: prepared.config, baseModelHash: record.modelBlob, dataHash: prepared.dataHash, steps: step,
            startedFrom: prepared.initialNode)
    }
}
