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
            journalWriter.setCheckpoint(record.checkpointBlob, of: j.id)
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
    /// Its journal entries are written first, so none lands after the state the caller sets next.
    func stopJob(_ id: String) {
        guard jobs.removeValue(forKey: id) != nil else { return }
        journalWriter.drain(job: id)
        perform(core.handle(.stopped(job: id), now: Self.now))
        nextActivation = 0
    }

    /// Journals a completed step or round: hands it to the journal writer (checkpoint blob first, then the
    /// step's row and the job's pointer in one transaction, then the previous checkpoint dropped) and goes on; the
    /// step is reported once it is written (`journaled`).
    func journal(_ job: any RunningJob, record: StepRecord, checkpoint: Checkpoint) {
        journalWriter.submit(
            JournalWriter.Entry(
                job: job.id, records: [record], checkpoint: checkpoint, mode: job.record.mode,
                unitName: job.unitName, units: job.units))
    }

    /// Reports what the journal writer has written since last asked, and stops a job it could not journal.
    func reportJournaled() {
        for outcome in journalWriter.take() {
            switch outcome {
            case .journaled(let e):
                for record in e.records {
                    metrics.observeStep(mode: e.mode, seconds: record.seconds)
                    metrics.step(rows: record.shares)
                    let shares = record.shares.sorted { $0.key < $1.key }.map { "\(core.name(of: $0.key))=\($0.value)" }
                        .joined(separator: " ")
                    log(
                        "\(e.job) \(e.unitName) \(record.step)/\(e.units) loss \(String(format: "%.4f", record.loss)) "
                            + "\(record.tokens) tok \(String(format: "%.2f", record.seconds)) s \(record.bytes >> 10) KiB "
                            + "[\(shares)]")
                }
            case .finished(let id, let message, let failed):
                log(failed ? .error : .info, message)
                stopJob(id)
            case .failed(let e, let message):
                let step = e.records.first?.step ?? 0
                log(.error, "cannot journal \(e.unitName) \(step) of \(e.job): \(message); stopping the job")
                // (A job cancelled meanwhile stays cancelled.)
                guard jobs[e.job] != nil else { continue }
                stopJob(e.job)
                try? store.setState(e.job, .failed, error: "cannot journal \(e.unitName) \(step): \(message)")
            }
        }
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

    /// Every unit journaled: exports the adapter (PEFT and GGUF) into the blob store and marks the job done, on the
    /// journal writer's thread after the job's last entry (the loop goes on meanwhile); the job is dropped when
    /// that is done (`finished`).
    func complete(_ job: any RunningJob) {
        if job is EvaluationJob {
            do { try store.setState(job.id, .done) } catch { log(.error, "cannot mark \(job.id) done: \(error)") }
            log("\(job.id) done: \(job.units) adapters scored; `cairn status \(job.id)` lists them")
            stopJob(job.id)
            return
        }
        let (id, adapter, provenance, recipe) = (job.id, job.adapter, job.provenance(), job.prepared.config.lora)
        let (record, step, unitName) = (job.record, job.step, job.unitName)
        let (store, blobs, writer) = (self.store, self.blobs, journalWriter)
        let tmp = (options.stateDirectory as NSString).appendingPathComponent("export-\(id)")
        journalWriter.submit(job: id) {
            defer { try? FileManager.default.removeItem(atPath: tmp) }
            do {
                try? FileManager.default.removeItem(atPath: tmp)
                try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
                try adapter.savePEFT(directory: tmp, provenance: provenance, recipe: recipe)
                try adapter.saveGGUF(
                    path: (tmp as NSString).appendingPathComponent("adapter.gguf"), provenance: provenance, name: id)
                var outputs: [String: String] = [:]
                for name in ["adapter_config.json", "adapter_model.safetensors", "adapter.gguf"] {
                    outputs[name] = try blobs.add(file: (tmp as NSString).appendingPathComponent(name))
                }
                if let c = writer.checkpoint(of: id) { outputs["checkpoint.safetensors"] = c }
                try store.finish(
                    job: id, outputs: outputs, adapterBlob: outputs["adapter_model.safetensors"]!,
                    baseBlob: record.modelBlob, dataBlob: record.dataBlob, steps: provenance.steps ?? step,
                    parents: record.initAdapter.map { [$0.sha256] } ?? [])
                return .finished(
                    job: id, message: "\(id) done after \(step) \(unitName)s; `cairn pull \(id)` fetches the adapter",
                    failed: false)
            } catch {
                try? store.setState(id, .failed, error: "cannot write the adapter: \(error)")
                return .finished(
                    job: id, message: "\(id) finished training but its adapter cannot be written: \(error)",
                    failed: true)
            }
        }
    }
}
