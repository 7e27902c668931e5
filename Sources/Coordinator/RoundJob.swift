// RoundJob: a diloco or federated job on the coordinator. Each round every participating worker starts from the
// global adapter, takes up to `inner_steps` local AdamW steps (diloco: on rows the coordinator sends; federated:
// on its own data), and returns its pseudo-gradient Δ = global − local, compressed with error feedback. The
// coordinator rebuilds each worker's adapter, weighs it by trained tokens and applies the outer Nesterov step in
// ΔW space (Adapters.OuterOptimizer). With compression on, the global adapter is kept bf16-representable, so the
// bf16 copy broadcast to workers is exactly the coordinator's.
//
// Who takes part in a round, deadlines and when it is complete are the JobSchedule's; this is the round's
// arithmetic. A worker lost mid-round contributes nothing to it (its rows are skipped, not counted).

import Adapters
import Foundation
import Llama
import ModelFormats
import TensorKernels
import Training
import Wire

/// A running diloco or federated job.
final class RoundJob: RunningJob {
    let id: String
    let record: JobRecord
    let prepared: PreparedJob
    let adapter: LoRAAdapter
    let outer: OuterOptimizer
    let compression: Compression
    let federated: Bool
    let innerSteps: Int
    let rounds: Int
    /// Rounds completed.
    private(set) var round = 0
    private(set) var cursor = 0
    var totalSteps: Int { prepared.totalSteps }
    /// Rounds journaled (the unit of progress of this job).
    var step: Int { round }
    var units: Int { rounds }
    /// Local steps each worker has taken so far.
    var localSteps: Int { min(totalSteps, round * innerSteps) }
    var isFinished: Bool { round >= rounds }
    var evaluation: Evaluation?

    private var results: [(parameters: [Float], weight: Double, worker: String)] = []
    /// How the round's results are combined (the job's aggregate, trim_fraction, clip_update_norm).
    let aggregation: Aggregation
    private var lossSum = 0.0
    private var tokens = 0
    private var shares: [String: WorkerShare] = [:]
    private var bytes = 0
    private var started = 0.0

    init(record: JobRecord, blobs: BlobStore) throws(JobError) {
        id = record.id
        self.record = record
        prepared = try PreparedJob.prepare(record: record, blobs: blobs)
        let c = prepared.config
        federated = c.mode == .federated
        compression = Compression(rawValue: c.compression.rawValue) ?? .int8
        innerSteps = c.innerSteps
        aggregation = Aggregation(
            rule: Aggregation.Rule(rawValue: c.aggregate.rawValue) ?? .mean, trimFraction: c.trimFraction,
            clipNorm: c.clipUpdateNorm)
        rounds = prepared.units
        adapter = prepared.startingAdapter()
        outer = OuterOptimizer(
            modules: adapter.modules.count, learningRate: Float(c.outerLearningRate), momentum: Float(c.outerMomentum))
        if let blob = record.checkpointBlob {
            let checkpoint = try record.checkpoint(blob, in: blobs)
            guard outer.restore(checkpoint.extra["outer_momentum"] ?? [], modules: adapter.modules) else {
                throw JobError("the job's last checkpoint does not match its settings (its outer momentum)")
            }
            cursor = try restore(checkpoint, moments: nil)
            round = checkpoint.step
        }
        if c.scoreUpdates {
            scorer = try UpdateScorer(prepared: prepared, modelPath: blobs.path(record.modelBlob), layout: adapter)
        }
        canonicalize()
    }

    /// `score_updates`: the held-out loss of adapters, on the coordinator.
    private var scorer: UpdateScorer?

    /// Local steps in the current round (the last round may be shorter).
    var stepsThisRound: Int { min(innerSteps, totalSteps - round * innerSteps) }

    /// Rounds the global adapter to what the wire carries, so every worker starts from exactly the same values.
    private func canonicalize() {
        guard compression != .none else { return }
        let p = adapter.parameters.pointer
        for i in 0..<adapter.parameters.count { p[i] = bfloat16ToFloat(floatToBFloat16(p[i])) }
    }

    /// The global adapter as sent to workers.
    func parametersTensor() -> Tensor {
        let buffer = UnsafeBufferPointer(adapter.parameters.buffer)
        let kind: Compression = compression == .none ? .none : .bf16
        var t = kind.encode(buffer, name: "parameters")[0]
        t.name = "parameters"
        return t
    }

    func startRound(now: Double) {
        precondition(!isFinished)
        results = []
        lossSum = 0
        tokens = 0
        shares = [:]
        bytes = 0
        started = now
    }

    func countBytes(_ n: Int) { bytes += n }

    /// The rows of a diloco assignment of `count` rows, taken from the data stream (nil for federated jobs: the
    /// workers train on their own data).
    func batch(rows count: Int) -> TrainingBatch? {
        guard !federated else { return nil }
        defer { cursor += count }
        return prepared.plan!.batch(from: cursor, count: count)
    }

    /// Takes an accepted result: the worker's adapter (global − Δ), weighed by its trained tokens.
    func add(delta: [Float], loss: Double, tokens n: Int, seconds: Double, rows: Int, worker: String) {
        let global = adapter.parameters.pointer
        results.append(((0..<delta.count).map { global[$0] - delta[$0] }, Double(n), worker))
        lossSum += loss
        tokens += n
        shares[worker, default: WorkerShare(rows: 0)].add(rows: rows, tokens: n, seconds: seconds)
    }

    /// Applies the outer step; returns the round's record and the checkpoint to journal.
    func finishRound(now: Double) -> (StepRecord, Checkpoint) {
        if let scorer, !results.isEmpty {
            // Each participant's adapter against the global one on the held-out rows; worse ones are left out.
            let without = scorer.loss(adapter.parameters.array)
            for i in results.indices {
                let with = scorer.loss(results[i].parameters)
                guard !(with <= without) else { continue }
                results[i].weight = 0
                shares[results[i].worker]?.leftOut =
                    "held-out loss \(Self.decimal(with)) with its update, \(Self.decimal(without)) without"
            }
        }
        let measured = outer.step(
            global: adapter, workers: results.map { ($0.parameters, $0.weight) }, aggregation: aggregation)
        for (result, m) in zip(results, measured) {
            shares[result.worker]?.updateNorm = m.norm
            if m.scale < 1 { shares[result.worker]?.clipScale = m.scale }
        }
        canonicalize()
        round += 1
        let record = StepRecord(
            step: round, loss: tokens > 0 ? lossSum / Double(tokens) : 0, tokens: tokens, seconds: now - started,
            bytes: bytes, workers: shares, computeSeconds: shares.computeSeconds)
        var checkpoint = Checkpoint(
            step: round, cursor: cursor, dataHash: prepared.dataHash, baseModelHash: self.record.modelBlob,
            adapter: adapter, moments: nil)
        checkpoint.extra["outer_momentum"] = outer.state()
        results = []
        return (record, checkpoint)
    }

    static func decimal(_ x: Double) -> String { String(format: "%.4f", x) }

    func provenance() -> AdapterProvenance {
        AdapterProvenance(
            training: prepared.config, baseModelHash: record.modelBlob, dataHash: federated ? nil : prepared.dataHash,
            steps: localSteps, startedFrom: prepared.initialNode)
    }
}
