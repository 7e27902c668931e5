// Trainer: a whole training run: configuration → model, data, adapter → steps → evaluations, checkpoints,
// the final adapter. Progress is reported as values to a callback that can stop the run (the CLI turns them
// into a progress line; a cluster worker into messages); the library never prints.
//
// Run directory (`output`):
//   job.yaml                    the resolved settings (what --resume reads)
//   checkpoint.safetensors      parameters, AdamW moments, step, data cursor (written every save_every steps,
//                               at the end and when stopped)
//   adapter_config.json, adapter_model.safetensors   the adapter as of the checkpoint, in PEFT format
//   metrics.jsonl               one line per step and per evaluation

import Foundation
import Llama
import ModelFormats
import TensorKernels
import Tokenizer

/// Why a run could not start or continue.
public enum TrainingError: Error, Sendable, CustomStringConvertible {
    case config([String])
    case data(InputError)
    case file(FormatError)
    case template(ChatTemplateError)
    case run(String)

    public var description: String {
        switch self {
        case .config(let problems): "invalid settings: " + problems.joined(separator: "; ")
        case .data(let e): e.description
        case .file(let e): e.description
        case .template(let e): e.description
        case .run(let why): why
        }
    }
}

/// What the run will do, reported before the first step.
public struct TrainingPlan: Sendable {
    public var examples: Int
    public var skippedRecords: Int
    public var truncatedExamples: Int
    public var emptyExamples: Int
    public var validationExamples: Int
    public var rowsPerEpoch: Int
    public var trainedTokensPerEpoch: Int
    public var totalSteps: Int
    public var startStep: Int
    public var tokensPerStep: Int
    public var trainableParameters: Int
    /// Which layers keep their activations, and the workspace's bytes.
    public var activations: ActivationPlan
    /// How the base's matrices are held, and the bytes its weights take.
    public var basePrecision: BasePrecision
    public var baseBytes: Int
    /// FLOPs of one optimizer step's forward and backward, counting matrix products (see `trainingFLOPs`).
    public var flopsPerStep: Double
}

/// Progress of a run.
public enum TrainingEvent: Sendable {
    case planned(TrainingPlan)
    case step(StepResult, totalSteps: Int, tokens: Int, seconds: Double)
    case evaluation(step: Int, loss: StepLoss)
    case checkpoint(step: Int, directory: String)
}

/// The callback's answer.
public enum TrainingDisposition: Sendable {
    case proceed, stop
}

/// How a run ended.
public struct TrainingSummary: Sendable {
    public var steps: Int
    public var stopped: Bool
    public var lastLoss: Double?
    public var lastEvalLoss: Double?
    public var directory: String
}

/// Runs LoRA training from a configuration.
public final class Trainer {
    /// The settings (for a resumed run: those of its job.yaml).
    public private(set) var config: TrainingConfig
    private let resuming: Bool

    /// A trainer for a new run.
    public init(config: TrainingConfig) {
        self.config = config
        resuming = false
    }

    /// A trainer that continues the run in `directory` from its last checkpoint.
    ///
    /// - Throws: `TrainingError` when the directory holds no run.
    public init(resuming directory: String) throws(TrainingError) {
        let job = (directory as NSString).appendingPathComponent("job.yaml")
        guard FileManager.default.fileExists(atPath: job) else {
            throw .run("\(directory) has no job.yaml; it is not a run directory")
        }
        var c = TrainingConfig()
        do { try c.apply(yamlFile: job) } catch { throw .config([error.description]) }
        c.output = directory
        config = c
        resuming = true
    }

    static func path(_ dir: String, _ name: String) -> String { (dir as NSString).appendingPathComponent(name) }

    /// Runs the job to its end, or until `onEvent` returns `.stop` (a checkpoint is written either way).
    public func run(onEvent: (TrainingEvent) -> TrainingDisposition) throws(TrainingError) -> TrainingSummary {
        let problems = config.problems() + (config.output.isEmpty ? ["output: required (the run directory)"] : [])
        guard problems.isEmpty else { throw .config(problems) }
        let dir = config.output
        let checkpointPath = Self.path(dir, "checkpoint.safetensors")
        if !resuming { try checkDirectoryIsFree(dir) }
        if let threads = config.threads { Parallel.threadCount = threads }

        // Model, tokenizer, template.
        let lm: LanguageModel
        let baseHash: String
        do {
            let source = try ModelSource.resolve(config.model)
            let precision = config.resolvedBasePrecision(model: try source.config())
            lm = try LanguageModel.load(source, precision: precision)
            baseHash = try FileHash.modelIdentity(path: lm.source.path)
        } catch { throw .file(error) }
        let model = lm.model
        try config.check(model: model.config)
        let tokenizer: BPETokenizer
        do { tokenizer = try lm.requireTokenizer() } catch { throw .file(error) }

        // Data.
        let rows = try JobRows.load(
            config: config, tokenizer: tokenizer,
            template: ChatTemplate.forJob(override: config.chatTemplate, source: lm.chatTemplateSource))
        let (plan, validationPlan, rowsPerStep, totalSteps) = (
            rows.train, rows.validation, rows.rowsPerStep, rows.totalSteps
        )
        let padId = tokenizer.eosId ?? 0

        // Adapter and optimizer state.
        let adapter: LoRAAdapter
        var parent: JSONObject?
        if let initial = config.initAdapter {
            let recorded: AdapterProvenance
            do { (adapter, recorded) = try LoRAAdapter.load(path: initial, model: model.config) } catch {
                throw .file(error)
            }
            parent = recorded.lineageNode(name: (initial as NSString).lastPathComponent, hash: adapter.contentHash)
        } else {
            adapter = LoRAAdapter(model: model.config, config: config.lora, seed: config.seed)
        }
        let activations = config.activationPlan(
            model: model.config, adapter: adapter, baseBytes: model.weights.residentBytes)
        let session = TrainingSession(
            model: model, adapter: adapter, config: config, totalSteps: totalSteps, keptLayers: activations.keptLayers)
        var cursor = 0
        if resuming {
            let c: Checkpoint
            do { c = try Checkpoint.read(from: checkpointPath) } catch { throw .file(error) }
            try c.restore(
                into: adapter, moments: session.optimizer.adamW, dataHash: rows.dataHash, baseModelHash: baseHash)
            cursor = c.cursor
            try trimMetrics(after: c.step)
        }

        // Everything loaded: only now does the run directory come into being, so a bad setting or record
        // leaves nothing behind to clear up.
        if !resuming { try createDirectory(dir) }
        let flops = model.trainingFLOPs(tokens: config.sequenceLength, adapter: adapter) * Double(rowsPerStep)
        _ = onEvent(
            .planned(
                TrainingPlan(
                    examples: plan.exampleCount, skippedRecords: rows.skipped, truncatedExamples: plan.truncatedCount,
                    emptyExamples: plan.emptyCount,
                    validationExamples: rows.validationExamples, rowsPerEpoch: plan.rowCount(epoch: 0),
                    trainedTokensPerEpoch: plan.trainedTokensPerEpoch,
                    totalSteps: totalSteps, startStep: session.stepCount,
                    tokensPerStep: rowsPerStep * config.sequenceLength,
                    trainableParameters: adapter.parameterCount, activations: activations,
                    basePrecision: model.weights.precision, baseBytes: model.weights.residentBytes,
                    flopsPerStep: flops)))

        let baseName = (lm.source.path as NSString).lastPathComponent
        func save() throws(TrainingError) {
            let provenance = AdapterProvenance(
                training: config, baseModelHash: baseHash, baseModelName: baseName, dataHash: rows.dataHash,
                steps: session.stepCount, startedFrom: parent)
            do {
                try Checkpoint(session.optimizer, cursor: cursor, dataHash: rows.dataHash, baseModelHash: baseHash)
                    .write(to: checkpointPath)
                try adapter.savePEFT(
                    directory: dir, provenance: provenance, recipe: config.initAdapter == nil ? config.lora : nil)
            } catch { throw .file(error) }
        }

        let metrics = MetricsLog(path: Self.path(dir, "metrics.jsonl"))
        var summary = TrainingSummary(steps: session.stepCount, stopped: false, directory: dir)
        var evaluatedAt = -1
        func evaluate() -> Bool {
            guard let validationPlan else { return true }
            // Batches of the training shape (the last one filled with empty rows), so evaluation reuses the
            // training workspace instead of allocating one for a new shape.
            let count = validationPlan.rowCount(epoch: 0)
            var loss = StepLoss()
            for first in stride(from: 0, to: count, by: config.batchSize) {
                let rows = (first..<min(count, first + config.batchSize)).map { validationPlan.row(at: $0).row }
                let batch = TrainingBatch(concatenating: rows, length: config.sequenceLength)
                loss += session.evaluate([batch.padded(toRows: config.batchSize, padId: padId)])
            }
            evaluatedAt = session.stepCount
            summary.lastEvalLoss = loss.mean
            metrics.append([
                "step": .integer(Int64(session.stepCount)), "eval_loss": .number(loss.mean),
                "eval_tokens": .integer(Int64(loss.tokens)),
            ])
            return onEvent(.evaluation(step: session.stepCount, loss: loss)) == .proceed
        }

        let clock = ContinuousClock()
        while session.stepCount < totalSteps {
            let started = clock.now
            let result = session.step(rows.step(at: cursor, batchSize: config.batchSize))
            cursor += rowsPerStep
            let seconds = (clock.now - started).seconds
            summary.steps = session.stepCount
            summary.lastLoss = result.loss.mean
            metrics.append([
                "step": .integer(Int64(result.step)), "loss": .number(result.loss.mean),
                "trained_tokens": .integer(Int64(result.loss.tokens)),
                "lr": .number(result.learningRate), "grad_norm": .number(result.gradientNorm),
                "seconds": .number(seconds),
            ])
            var proceed =
                onEvent(
                    .step(result, totalSteps: totalSteps, tokens: rowsPerStep * config.sequenceLength, seconds: seconds)
                ) == .proceed
            if proceed, config.evalEvery > 0, session.stepCount % config.evalEvery == 0 { proceed = evaluate() }
            let due = config.saveEvery > 0 && session.stepCount % config.saveEvery == 0
            if due || !proceed || session.stepCount == totalSteps {
                try save()
                _ = onEvent(.checkpoint(step: session.stepCount, directory: dir))
            }
            if !proceed {
                summary.stopped = true
                return summary
            }
        }
        if evaluatedAt != session.stepCount { _ = evaluate() }
        return summary
    }

    private func checkDirectoryIsFree(_ dir: String) throws(TrainingError) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDirectory) else { return }
        guard isDirectory.boolValue else { throw .run("\(dir) exists and is not a directory") }
        guard ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).isEmpty else {
            throw .run("\(dir) already holds a run; continue it with --resume \(dir), or choose another --output")
        }
    }

    private func createDirectory(_ dir: String) throws(TrainingError) {
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try writeFileAtomically(Self.path(dir, "job.yaml"), Array(config.withAbsolutePaths().yaml().utf8))
        } catch let e as FormatError {
            throw .file(e)
        } catch {
            throw .run("cannot create \(dir): \(error.localizedDescription)")
        }
    }

    /// SHA-256 of tokenized examples (ids and masks): the data's identity for resume and provenance.
    public static func hash(_ examples: [Example]) -> String {
        var bytes: [UInt8] = []
        for e in examples {
            withUnsafeBytes(of: UInt32(e.tokens.count).littleEndian) { bytes += $0 }
            for (t, m) in zip(e.tokens, e.trained) {
                withUnsafeBytes(of: t.littleEndian) { bytes += $0 }
                bytes.append(m ? 1 : 0)
            }
        }
        return FileHash.sha256(bytes)
    }

    public static func recipeJSON(_ c: TrainingConfig) -> String {
        let o: JSONValue = [
            "rank": .integer(Int64(c.lora.rank)), "alpha": .number(c.lora.alpha), "rslora": .bool(c.lora.useRSLoRA),
            "dropout": .number(c.lora.dropout), "targets": .array(c.lora.targets.map { .string($0.rawValue) }),
            "learning_rate": .number(c.learningRate), "schedule": .string(c.schedule.rawValue),
            "warmup_steps": .integer(Int64(c.warmupSteps)),
            "batch_size": .integer(Int64(c.batchSize)), "grad_accum": .integer(Int64(c.gradientAccumulation)),
            "seq_len": .integer(Int64(c.sequenceLength)), "seed": .integer(Int64(bitPattern: c.seed)),
            "weight_decay": .number(c.weightDecay), "max_grad_norm": .number(c.maxGradNorm),
            "batch_mode": .string(c.batchMode.rawValue),
            "loss_on": .string(c.lossOn.rawValue),
        ]
        return o.serialized(sortedKeys: true)
    }

    /// Drops metric lines of steps after the checkpoint (work lost when the run was interrupted).
    private func trimMetrics(after step: Int) throws(TrainingError) {
        let path = Self.path(config.output, "metrics.jsonl")
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return }
        let kept = text.split(separator: "\n").filter { line in
            (try? JSONValue.parse(String(line)).objectValue?["step"]?.intValue).flatMap { $0 }.map { $0 <= step }
                ?? false
        }
        do {
            try writeFileAtomically(path, Array((kept.joined(separator: "\n") + (kept.isEmpty ? "" : "\n")).utf8))
        } catch { throw .file(error) }
    }
}

/// Appends JSON lines to a metrics file.
final class MetricsLog {
    private let handle: FileHandle?

    init(path: String) {
        if !FileManager.default.fileExists(atPath: path) {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
        }
        handle = FileHandle(forWritingAtPath: path)
        handle?.seekToEndOfFile()
    }

    deinit { try? handle?.close() }

    func append(_ object: JSONObject) {
        handle?.write(Data((JSONValue.object(object).serialized() + "\n").utf8))
    }
}
