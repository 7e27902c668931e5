// Coordinator+Journal: the running jobs' life in the store: loading the jobs to run, journaling each finished step
// or round (checkpoint blob, then one transaction, then the old checkpoint dropped), evaluations, and the export of
// the finished adapter. A failure to journal fails that job alone; nothing half-written is ever read back as a step.

import Foundation
import Llama
import ModelFormats
import Training
import Wire

extension Coordinator {
    /// Loads runnable jobs from the store, up to `options.maxRunningJobs` at once (those that were running first,
    /// then the queue in submission order), and tells the core each runs.
    func activateJobs() {
        guard jobs.count < options.maxRunningJobs, Self.now >= nextActivation else { return }
        // The store is asked again after a submission, or every second (a job another process changed).
        nextActivation = Self.now + 1
        guard let records = try? store.jobs() else { return }
        let runnable = records.filter {
            ($0.state == .running || $0.state == .queued) && !failedToLoad.contains($0.id) && jobs[$0.id] == nil
        }
        let order = runnable.filter { $0.state == .running } + runnable.filter { $0.state != .running }
        for record in order.prefix(options.maxRunningJobs - jobs.count) { activate(record) }
    }

    private func activate(_ record: JobRecord) {
        do {
            let j = try loadJob(record: record, blobs: blobs)
            try store.setState(record.id, .running)
            jobs[j.id] = j as any RunningJob
            lastCheckpoint[j.id] = record.checkpointBlob
            log("\(j.id) running from \(j.unitName) \(j.step) of \(j.units)")
            let announcement = JobAnnouncement(
                job: j.id, spec: j.prepared.config.yaml(), modelBlob: record.modelBlob,
                modelBytes: blobs.size(record.modelBlob) ?? 0, mode: record.mode, totalSteps: j.prepared.totalSteps)
            let active = CoordinatorCore.ActiveJob(
                announcement: announcement, plan: j.plan, unit: j.step,
                evaluationPending: j.step > 0 && (try? store.lastEval(job: j.id))?.step != j.step,
                parameterCount: j.adapter.parameters.count, compression: (j as? RoundJob)?.compression ?? .none,
                firstAssignment: Int.random(in: 1...(1 << 31)) << 20, priority: j.prepared.config.priority)
            perform(core.handle(.started(active), now: Self.now))
        } catch {
            failedToLoad.insert(record.id)
            log(.error, "\(record.id) cannot run: \(error)")
            try? store.setState(record.id, .failed, error: "\(error)")
        }
    }

    /// Drops a running job (cancelled, failed or done); the workers that hold it drop its work and unload it.
    func stopJob(_ id: String) {
        guard jobs.removeValue(forKey: id) != nil else { return }
        perform(core.handle(.stopped(job: id), now: Self.now))
        nextActivation = 0
    }

    /// Journals a completed step or round: checkpoint blob first, then the step's row and the job's pointer in one
    /// transaction, then the previous checkpoint dropped.
    func journal(_ job: any RunningJob, record: StepRecord, checkpoint: Checkpoint) {
        let previous = job.record.checkpointBlob
        do {
            let tmp = (options.stateDirectory as NSString).appendingPathComponent("checkpoint.tmp")
            try checkpoint.write(to: tmp)
            let blob = try blobs.adopt(file: tmp)
            let probe = options.journalProbe
            probe?("checkpoint", record.step)
            try store.journal(job: job.id, step: record, checkpointBlob: blob) { probe?("transaction", record.step) }
            probe?("cleanup", record.step)
            if let old = lastCheckpoint[job.id] ?? previous, old != blob { blobs.remove(old) }
            lastCheckpoint[job.id] = blob
        } catch {
            log(.error, "cannot journal \(job.unitName) \(record.step) of \(job.id): \(error); stopping the job")
            try? store.setState(job.id, .failed, error: "cannot journal \(job.unitName) \(record.step): \(error)")
            stopJob(job.id)
            return
        }
        metrics.observeStep(mode: job.record.mode, seconds: record.seconds)
        metrics.step(rows: record.shares)
        let shares = record.shares.sorted { $0.key < $1.key }.map { "\(core.name(of: $0.key))=\($0.value)" }.joined(
            separator: " ")
        log(
            "\(job.id) \(job.unitName) \(record.step)/\(job.units) loss \(String(format: "%.4f", record.loss)) "
                + "\(record.tokens) tok \(String(format: "%.2f", record.seconds)) s \(record.bytes >> 10) KiB [\(shares)]"
        )
    }

    func journalEvaluation(_ evaluation: Evaluation, of job: any RunningJob) {
        let record = evaluation.record
        if let scoring = job as? EvaluationJob {
            journalScore(record, of: scoring)
            return
        }
        do { try store.journalEval(job: job.id, record) } catch {
            log(.error, "cannot journal the evaluation of \(job.id): \(error); stopping the job")
            try? store.setState(job.id, .failed, error: "cannot journal an evaluation: \(error)")
            stopJob(job.id)
            return
        }
        log(
            "\(job.id) eval after \(job.unitName) \(record.step): loss \(String(format: "%.4f", record.loss)) over "
                + "\(record.tokens) held-out tokens")
    }

    /// An evaluation job's adapter scored: its loss, the job's progress and the adapter's score, together.
    func journalScore(_ record: EvalRecord, of job: EvaluationJob) {
        let k = record.step
        guard k >= 1, k <= job.candidates.candidates.count else { return }
        let candidate = job.candidates.candidates[k - 1]
        let score = AdapterScore(
            dataHash: job.record.dataBlob, dataName: job.record.dataName, loss: record.loss, tokens: record.tokens,
            job: job.id, created: Self.now)
        do { try store.journalCandidate(job: job.id, record, score: (candidate.sha256, score)) } catch {
            log(.error, "cannot journal the score of \(candidate.label) in \(job.id): \(error); stopping the job")
            try? store.setState(job.id, .failed, error: "cannot journal a score: \(error)")
            stopJob(job.id)
            return
        }
        job.scored(k)
        log(
            "\(job.id) adapter \(k)/\(job.units) \(candidate.label): held-out loss \(String(format: "%.4f", record.loss)) "
                + "over \(record.tokens) tokens")
    }

    /// Every unit journaled: exports the adapter (PEFT and GGUF) into the blob store and marks the job done.
    func complete(_ job: any RunningJob) {
        if job is EvaluationJob {
            do { try store.setState(job.id, .done) } catch { log(.error, "cannot mark \(job.id) done: \(error)") }
            log("\(job.id) done: \(job.units) adapters scored; `cairn status \(job.id)` lists them")
            stopJob(job.id)
            return
        }
        let tmp = (options.stateDirectory as NSString).appendingPathComponent("export-\(job.id)")
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        do {
            try? FileManager.default.removeItem(atPath: tmp)
            try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
            let provenance = job.provenance()
            try job.adapter.savePEFT(directory: tmp, provenance: provenance, recipe: job.prepared.config.lora)
            try job.adapter.saveGGUF(
                path: (tmp as NSString).appendingPathComponent("adapter.gguf"), provenance: provenance, name: job.id)
            var outputs: [String: String] = [:]
            for name in ["adapter_config.json", "adapter_model.safetensors", "adapter.gguf"] {
                outputs[name] = try blobs.add(file: (tmp as NSString).appendingPathComponent(name))
            }
            if let c = lastCheckpoint[job.id] { outputs["checkpoint.safetensors"] = c }
            try store.finish(
                job: job.id, outputs: outputs, adapterBlob: outputs["adapter_model.safetensors"]!,
                baseBlob: job.record.modelBlob, dataBlob: job.record.dataBlob,
                steps: job.provenance().steps ?? job.step,
                parents: job.record.initAdapter.map { [$0.sha256] } ?? [])
            log("\(job.id) done after \(job.step) \(job.unitName)s; `cairn pull \(job.id)` fetches the adapter")
        } catch {
            log(.error, "\(job.id) finished training but its adapter cannot be written: \(error)")
            try? store.setState(job.id, .failed, error: "cannot write the adapter: \(error)")
        }
        stopJob(job.id)
    }
}
