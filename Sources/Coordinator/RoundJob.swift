// RoundJob: a diloco or federated job on the coordinator. Each round every participating worker starts from the
// global adapter, takes up to `inner_steps` local AdamW steps (diloco: on rows the coordinator sends; federated:
// on its own data), and returns its pseudo-gradient Δ = global − local, compressed with error feedback. The
// coordinator rebuilds each worker's adapter, weighs it by trained tokens and applies the outer Nesterov step in
// ΔW space (Adapters.OuterOptimizer). With compression on, the global adapter is kept bf16-representable, so the
// bf16 copy broadcast to workers is exactly the coordinator's.
//
// A worker takes at most one assignment per round. A worker lost mid-round contributes nothing to it (its rows
// are skipped, not counted); the round completes when every outstanding assignment is in or given up on and at
// least one result arrived.

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

    private(set) var inProgress = false
    private(set) var outstanding: [Int: Assignment] = [:]
    private(set) var participants: Set<String> = []
    private var results: [(parameters: [Float], weight: Double)] = []
    private var lossSum = 0.0
    private var tokens = 0
    private var shares: [String: WorkerShare] = [:]
    private var bytes = 0
    private var started = 0.0
    private var nextAssignment = Int.random(in: 1...(1 << 31)) << 20

    init(record: JobRecord, blobs: BlobStore) throws(JobError) {
        id = record.id
        self.record = record
        prepared = try PreparedJob.prepare(record: record, blobs: blobs)
        let c = prepared.config
        federated = c.mode == .federated
        compression = Compression(rawValue: c.compression.rawValue) ?? .int8
        innerSteps = c.innerSteps
        rounds = prepared.units
        adapter = LoRAAdapter(model: prepared.modelConfig, config: c.lora, seed: c.seed)
        outer = OuterOptimizer(
            modules: adapter.modules.count, learningRate: Float(c.outerLearningRate), momentum: Float(c.outerMomentum))
        if let blob = record.checkpointBlob {
            let checkpoint: Checkpoint
            do { checkpoint = try Checkpoint.read(from: blobs.path(blob)) } catch {
                throw JobError("the job's last checkpoint cannot be read: \(error)")
            }
            guard checkpoint.parameters.count == adapter.parameters.count,
                outer.restore(checkpoint.extra["outer_momentum"] ?? [], modules: adapter.modules)
            else { throw JobError("the job's last checkpoint does not match its settings") }
            adapter.parameters.pointer.update(from: checkpoint.parameters, count: checkpoint.parameters.count)
            round = checkpoint.step
            cursor = checkpoint.cursor
        }
        canonicalize()
    }

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
        precondition(!inProgress && !isFinished)
        inProgress = true
        outstanding = [:]
        participants = []
        results = []
        lossSum = 0
        tokens = 0
        shares = [:]
        bytes = 0
        started = now
    }

    func countBytes(_ n: Int) { bytes += n }

    /// Hands a round's work to a worker; nil when it already took part in this round. For diloco, the rows
    /// (steps × rows per step) come from the data stream.
    func assign(worker: String, now: Double, deadline: Double) -> (Assignment, TrainingBatch?)? {
        guard inProgress, !participants.contains(worker) else { return nil }
        participants.insert(worker)
        let rowCount = stepsThisRound * prepared.rowsPerStep
        var batch: TrainingBatch?
        if !federated {
            batch = prepared.plan!.batch(from: cursor, count: rowCount)
            cursor += rowCount
        }
        let a = Assignment(id: nextAssignment, worker: worker, rows: Array(0..<rowCount), deadline: now + deadline)
        nextAssignment += 1
        outstanding[a.id] = a
        return (a, batch)
    }

    /// Takes a worker's pseudo-gradient; false when the assignment is not outstanding or the tensors do not fit.
    func accept(_ m: Message, worker: String) -> Bool {
        guard let a = outstanding[m.int("assignment")], a.worker == worker, m.int("round") == round + 1 else {
            return false
        }
        guard let delta = compression.decode(m.tensors, name: "delta", count: adapter.parameters.count),
            delta.allSatisfy(\.isFinite)
        else { return false }
        outstanding[a.id] = nil
        let global = adapter.parameters.pointer
        results.append(((0..<delta.count).map { global[$0] - delta[$0] }, Double(m.int("tokens"))))
        lossSum += m.double("loss")
        tokens += m.int("tokens")
        shares[worker, default: WorkerShare(rows: 0)].add(
            rows: a.rows.count, tokens: m.int("tokens"), seconds: m.double("seconds"))
        return true
    }

    /// Gives up on a worker's assignment (its work this round is skipped).
    @discardableResult
    func lose(worker: String) -> [Assignment] {
        let lost = outstanding.values.filter { $0.worker == worker }
        for a in lost { outstanding[a.id] = nil }
        return lost
    }

    func expire(now: Double) -> [Assignment] {
        let late = outstanding.values.filter { $0.deadline <= now }
        for a in late { outstanding[a.id] = nil }
        return late
    }

    var busyWorkers: Set<String> {
        Set(outstanding.values.map(\.worker)).union(evaluation?.work.busyWorkers ?? [])
    }
    var evaluation: Evaluation?

    func evaluationDue(after unit: Int) -> Bool {
        prepared.validationPlan != nil
            && Evaluation.due(
                every: prepared.config.evalEvery, previous: min(totalSteps, (unit - 1) * innerSteps),
                local: min(totalSteps, unit * innerSteps), total: totalSteps)
    }

    var roundComplete: Bool { inProgress && outstanding.isEmpty && !results.isEmpty }

    /// Applies the outer step; returns the round's record and the checkpoint to journal.
    func finishRound(now: Double) -> (StepRecord, Checkpoint) {
        outer.step(global: adapter, workers: results)
        canonicalize()
        round += 1
        inProgress = false
        let record = StepRecord(
            step: round, loss: tokens > 0 ? lossSum / Double(tokens) : 0, tokens: tokens, seconds: now - started,
            bytes: bytes, workers: shares, computeSeconds: shares.computeSeconds)
        var checkpoint = Checkpoint(
            step: round, cursor: cursor, dataHash: prepared.dataHash, baseModelHash: self.record.modelBlob,
            modules: adapter.modules.map { ($0.layer, $0.target, $0.rank, $0.scale) },
            parameters: adapter.parameters.array, firstMoment: [], secondMoment: [])
        checkpoint.extra["outer_momentum"] = outer.state()
        results = []
        return (record, checkpoint)
    }

    func provenance() -> AdapterProvenance {
        var p = AdapterProvenance()
        p.baseModelHash = record.modelBlob
        p.dataHash = federated ? nil : prepared.dataHash
        p.recipe = try? JSONValue.parse(Trainer.recipeJSON(prepared.config))
        p.steps = localSteps
        return p
    }
}
