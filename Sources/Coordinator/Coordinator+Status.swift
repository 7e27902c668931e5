// Coordinator+Status: what the coordinator reports, as Wire's status types (StatusBody, JobStatus, WorkerStatus,
// CoordinatorHealth). One set of builders serves the `status` and `workers` replies (`cairn status --json`,
// `cairn workers --json`) and the HTTP API (/api/status, /api/workers, /api/jobs/ID); the CLI reads the same types.

import Foundation
import Llama
import ModelFormats
import Training
import Wire

extension Coordinator {
    /// The most steps one job reply lists: over the wire (a reply's metadata frame holds 256 KiB) and over HTTP.
    static let maxStepsInStatus = 800
    static let maxStepsInHTTP = 5000
    /// Bytes of step JSON a wire reply may carry (the rest of the frame is left for jobs and workers).
    static let statusStepBytes = 160 << 10

    /// Every job's summary, the workers and the coordinator's health (`status` without a job, /api/status).
    func statusBody() -> StatusBody {
        StatusBody(
            jobs: ((try? store.jobs()) ?? []).map(jobSummary), workers: workerStatuses(),
            coordinator: coordinatorHealth())
    }

    /// One job: its summary, then its steps, evaluations, settings, lineage and the names of the workers that
    /// took part; nil when there is no such job.
    ///
    /// - Parameters:
    ///   - after: list the steps after this one, oldest first (`stepsMore` says whether more follow); nil: the most
    ///     recent steps (`stepsOmitted` counts the older ones left out).
    ///   - limit: at most this many steps.
    ///   - byteBudget: at most about this many bytes of step JSON.
    func jobDetail(_ id: String, after: Int?, limit: Int, byteBudget: Int = .max) -> JobStatus? {
        guard let r = try? store.job(id) else { return nil }
        var o = jobSummary(r)
        let records: [StepRecord]
        if let after {
            records = (try? store.steps(job: id, after: after, limit: limit + 1)) ?? []
        } else {
            records = (try? store.steps(job: id, last: limit)) ?? []
        }
        var steps: [StepStatus] = []
        var bytes = 0
        let ordered = after == nil ? Array(records.reversed()) : Array(records.prefix(limit))
        for s in ordered {
            let v = Self.stepStatus(s)
            bytes += v.json.serialized().utf8.count
            if bytes > byteBudget, !steps.isEmpty { break }
            steps.append(v)
        }
        if after == nil {
            steps.reverse()
            if steps.count < r.step { o.stepsOmitted = r.step - steps.count }
        } else {
            o.stepsMore = records.count > steps.count
        }
        o.steps = steps
        o.evals = ((try? store.evals(job: id)) ?? []).map {
            EvalStatus(step: $0.step, loss: $0.loss, tokens: $0.tokens)
        }
        let config = Self.config(of: r)
        o.settings = config?.settings()
        o.lineage = lineage(of: r, config: config)
        var names: [String: String] = [:]
        for w in (try? store.workers()) ?? [] { names[w.id] = w.name }
        o.workerNames = names
        o.adapters = r.candidates?.candidates.map { ($0.label, $0.sha256) }
        return o
    }

    /// A job's state and progress: what the jobs table shows.
    func jobSummary(_ r: JobRecord) -> JobStatus {
        var o = JobStatus(
            id: r.id, state: r.state.rawValue, mode: r.mode, step: r.step, totalSteps: r.totalSteps, data: r.dataName)
        o.created = r.created
        o.validationData = r.validationName
        o.error = r.error
        let recent = (try? store.steps(job: r.id, last: 5)) ?? []
        if let last = recent.last {
            o.loss = last.loss
            let seconds = recent.reduce(0) { $0 + $1.seconds }
            if seconds > 0 {
                o.tokensPerSecond = Double(recent.reduce(0) { $0 + $1.tokens }) / seconds
                if r.state == .running || r.state == .queued {
                    o.etaSeconds = Double(max(0, r.totalSteps - r.step)) * seconds / Double(recent.count)
                }
            }
        }
        o.evalLoss = (try? store.lastEval(job: r.id))?.loss
        return o
    }

    static func stepStatus(_ s: StepRecord) -> StepStatus {
        StepStatus(
            step: s.step, loss: s.loss, tokens: s.tokens, seconds: s.seconds, bytes: s.bytes,
            computeSeconds: s.computeSeconds, shares: s.workers.mapValues(\.rows),
            workers: s.workers.mapValues {
                StepStatus.Work(
                    tokens: $0.tokens, seconds: $0.seconds, updateNorm: $0.updateNorm, clipScale: $0.clipScale,
                    leftOut: $0.leftOut)
            })
    }

    /// The job file's settings, as submitted (paths as the client named them).
    static func config(of r: JobRecord) -> TrainingConfig? {
        var c = TrainingConfig()
        do { try c.apply(yaml: r.spec, source: r.id) } catch { return nil }
        return c
    }

    /// A lineage node in the shape of `cairn lineage --json`, with the base model's and the data's names: for a
    /// finished job, read from its adapter's metadata (what a pulled adapter says of itself); otherwise what is
    /// known so far.
    func lineage(of r: JobRecord, config: TrainingConfig?) -> JSONObject {
        var provenance = AdapterProvenance()
        if let blob = r.outputs["adapter_model.safetensors"],
            let recorded = AdapterProvenance.recorded(inPEFTFile: blobs.path(blob))
        {
            provenance = recorded
        } else if let job = jobs[r.id] {
            provenance = job.provenance()
        }
        provenance.baseModelHash = provenance.baseModelHash ?? r.modelBlob
        var node = provenance.lineageNode(name: r.id, hash: provenance.adapterHash)
        node["base_model"] = config.map { .string($0.model) }
        node["data"] = .string(r.dataName)
        return node
    }

    /// What is known of one worker: its record, and when connected its connection's view and its state in the
    /// running job.
    struct WorkerView {
        var record: WorkerRecord
        /// What its connection said and was measured, when connected.
        var info: WorkerInfo?
        /// computing, ready, loading, idle, failed (for every running job), or gone.
        var state = "gone"
        var error: String?
        var lastHeard: Double?
        var share: Double?
        var traffic: Traffic
        var transfer: BlobTransfer?

        var connected: Bool { info != nil }
    }

    /// Every worker seen, in name order.
    func workerViews() -> [WorkerView] {
        let now = Self.now
        let connected = Dictionary(
            core.peers.values.compactMap { p in p.worker.map { ($0.id, ($0, p)) } }, uniquingKeysWith: { a, _ in a })
        let running = core.runningJobIds
        let schedules = running.compactMap { core.schedule(of: $0) }
        return ((try? store.workers()) ?? []).map { r in
            var v = WorkerView(
                record: r, traffic: metrics.workers[r.id] ?? Traffic(), transfer: metrics.transfers[r.id])
            guard let (w, p) = connected[r.id] else { return v }
            v.info = w
            // The running jobs' schedules hold the speeds they measure (the first job's is shown); a worker's own
            // is the last job's.
            v.info?.rowsPerSecond =
                schedules.lazy.compactMap { $0.workers[w.id]?.rowsPerSecond }.first ?? w.rowsPerSecond
            let failed = running.filter { w.faults[$0] != nil }
            if !failed.isEmpty { v.error = failed.compactMap { w.faults[$0] }.joined(separator: "; ") }
            if !running.isEmpty, failed.count == running.count {
                v.state = "failed"
            } else {
                let busy = schedules.contains { $0.busyWorkers.contains(w.id) }
                v.state =
                    busy
                    ? "computing"
                    : running.isEmpty ? "idle" : running.contains { w.readyJobs.contains($0) } ? "ready" : "loading"
            }
            v.lastHeard = max(0, now - p.lastSeen)
            if !running.isEmpty { v.share = metrics.shares[w.id] ?? 0 }
            return v
        }
    }

    /// Every worker seen: connected or not, its state in the running job, speed, share, traffic, transfer.
    func workerStatuses() -> [WorkerStatus] {
        workerViews().map { v in
            let r = v.record
            var w = WorkerStatus(
                id: r.id, name: r.name, cores: r.cores, memory: r.memory, gflops: r.gflops, rowsDone: r.rows,
                connected: v.connected, state: v.state)
            w.error = v.error
            // How its last connection ended (left, silent, unreachable, reconnected), while it is away.
            w.departure = v.connected ? nil : core.departures[r.id]?.name
            w.rowsPerSecond = v.info?.rowsPerSecond
            w.job = v.info.map { info in
                core.runningJobIds.filter { info.readyJobs.contains($0) }.joined(separator: ",")
            }
            .flatMap { $0.isEmpty ? nil : $0 }
            w.host = v.info?.host
            w.threads = v.info?.threads
            w.lastHeardSeconds = v.lastHeard
            w.share = v.share
            w.bytesSent = v.traffic.sent
            w.bytesReceived = v.traffic.received
            w.transfer = v.transfer.map { WorkerStatus.Transfer(blob: $0.blob, received: $0.received, total: $0.total) }
            return w
        }
    }

    /// Gaps between workers' messages and silent deaths: what a load test watches.
    func coordinatorHealth() -> CoordinatorHealth {
        var h = CoordinatorHealth(heartbeatMilliseconds: options.heartbeatMilliseconds)
        let gaps = core.heartbeatGaps
        h.gapP50 = (gaps.quantile(0.5) * 1000).rounded()
        h.gapP95 = (gaps.quantile(0.95) * 1000).rounded()
        h.gapP99 = (gaps.quantile(0.99) * 1000).rounded()
        h.gapMax = (gaps.quantile(1) * 1000).rounded()
        h.gapCount = gaps.count
        h.workersDeclaredSilent = core.workersDeclaredSilent
        h.messagesRateLimited = core.messagesRateLimited
        h.messagesRejected = core.messagesRejected
        h.blobBytesSent = metrics.blobBytesSent
        h.dashboard = dashboardAddress
        return h
    }
}
