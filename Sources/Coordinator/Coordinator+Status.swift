// Coordinator+Status: the JSON shapes of what the coordinator reports. One set of builders serves the `status`
// and `workers` replies (`cairn status --json`, `cairn workers --json`) and the HTTP API (/api/status,
// /api/workers, /api/jobs/ID), so they cannot drift apart. The shapes are documented in the README.

import Foundation
import Llama
import ModelFormats
import Training

extension Coordinator {
    /// The most steps one job reply lists: over the wire (a reply's metadata frame holds 256 KiB) and over HTTP.
    static let maxStepsInStatus = 800
    static let maxStepsInHTTP = 5000
    /// Bytes of step JSON a wire reply may carry (the rest of the frame is left for jobs and workers).
    static let statusStepBytes = 160 << 10

    /// Every job's summary, the workers and the coordinator's health (`status` without a job, /api/status).
    func statusBody() -> JSONValue {
        let jobs = ((try? store.jobs()) ?? []).map { JSONValue.object(jobSummary($0)) }
        return ["jobs": .array(jobs), "workers": workersBody(), "coordinator": coordinatorHealth()]
    }

    /// One job: its summary, then its steps, evaluations, settings, lineage and the names of the workers that
    /// took part; nil when there is no such job.
    ///
    /// - Parameters:
    ///   - after: list the steps after this one, oldest first (`steps_more` says whether more follow); nil: the most
    ///     recent steps (`steps_omitted` counts the older ones left out).
    ///   - limit: at most this many steps.
    ///   - byteBudget: at most about this many bytes of step JSON.
    func jobDetail(_ id: String, after: Int?, limit: Int, byteBudget: Int = .max) -> JSONObject? {
        guard let r = try? store.job(id) else { return nil }
        var o = jobSummary(r)
        let records: [StepRecord]
        if let after {
            records = (try? store.steps(job: id, after: after, limit: limit + 1)) ?? []
        } else {
            records = (try? store.steps(job: id, last: limit)) ?? []
        }
        var steps: [JSONValue] = []
        var bytes = 0
        let ordered = after == nil ? Array(records.reversed()) : Array(records.prefix(limit))
        for s in ordered {
            let v = Self.stepJSON(s)
            bytes += v.serialized().utf8.count
            if bytes > byteBudget, !steps.isEmpty { break }
            steps.append(v)
        }
        if after == nil {
            steps.reverse()
            if steps.count < r.step { o["steps_omitted"] = .integer(Int64(r.step - steps.count)) }
        } else {
            o["steps_more"] = .bool(records.count > steps.count)
        }
        o["steps"] = .array(steps)
        o["evals"] = .array(
            ((try? store.evals(job: id)) ?? []).map {
                ["step": .integer(Int64($0.step)), "loss": .number($0.loss), "tokens": .integer(Int64($0.tokens))]
            })
        let config = Self.config(of: r)
        if let config {
            o["settings"] = .object(JSONObject(config.settings().map { ($0.key, JSONValue.string($0.value)) }))
        }
        o["lineage"] = .object(lineage(of: r, config: config))
        var names = JSONObject()
        for w in (try? store.workers()) ?? [] { names[w.id] = .string(w.name) }
        o["worker_names"] = .object(names)
        return o
    }

    /// A job's state and progress: what the jobs table shows.
    func jobSummary(_ r: JobRecord) -> JSONObject {
        var o: JSONObject = [
            "id": .string(r.id), "state": .string(r.state.rawValue), "mode": .string(r.mode),
            "step": .integer(Int64(r.step)), "total_steps": .integer(Int64(r.totalSteps)),
            "data": .string(r.dataName), "created": .number(r.created),
        ]
        if let v = r.validationName { o["validation_data"] = .string(v) }
        if let e = r.error { o["error"] = .string(e) }
        let recent = (try? store.steps(job: r.id, last: 5)) ?? []
        if let last = recent.last {
            o["loss"] = .number(last.loss)
            let seconds = recent.reduce(0) { $0 + $1.seconds }
            if seconds > 0 {
                o["tokens_per_second"] = .number(Double(recent.reduce(0) { $0 + $1.tokens }) / seconds)
                if r.state == .running || r.state == .queued {
                    o["eta_seconds"] = .number(Double(max(0, r.totalSteps - r.step)) * seconds / Double(recent.count))
                }
            }
        }
        if let e = try? store.lastEval(job: r.id) { o["eval_loss"] = .number(e.loss) }
        return o
    }

    static func stepJSON(_ s: StepRecord) -> JSONValue {
        let ids = s.workers.keys.sorted()
        return [
            "step": .integer(Int64(s.step)), "loss": .number(s.loss), "tokens": .integer(Int64(s.tokens)),
            "seconds": .number(s.seconds), "bytes": .integer(Int64(s.bytes)),
            "compute_seconds": .number(s.computeSeconds),
            "shares": .object(JSONObject(ids.map { ($0, .integer(Int64(s.workers[$0]!.rows))) })),
            "workers": .object(
                JSONObject(
                    ids.map { id in
                        let w = s.workers[id]!
                        return (id, ["tokens": .integer(Int64(w.tokens)), "seconds": .number(w.seconds)])
                    })),
        ]
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
        } else if let job, job.id == r.id {
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
        /// computing, ready, loading, idle, failed (for the running job), or gone.
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
            peers.values.compactMap { p in p.worker.map { ($0.id, ($0, p)) } }, uniquingKeysWith: { a, _ in a })
        return ((try? store.workers()) ?? []).map { r in
            var v = WorkerView(
                record: r, traffic: metrics.workers[r.id] ?? Traffic(), transfer: metrics.transfers[r.id])
            guard let (w, p) = connected[r.id] else { return v }
            v.info = w
            // The running job's schedule holds the speeds it measures; a worker's own is the last job's.
            v.info?.rowsPerSecond = schedule?.workers[w.id]?.rowsPerSecond ?? w.rowsPerSecond
            if let job, let fault = w.fault, fault.job == job.id {
                v.state = "failed"
                v.error = fault.message
            } else {
                let busy = schedule?.busyWorkers.contains(w.id) ?? false
                v.state = busy ? "computing" : job == nil ? "idle" : w.readyJob == job?.id ? "ready" : "loading"
            }
            v.lastHeard = max(0, now - p.lastSeen)
            if job != nil { v.share = metrics.shares[w.id] ?? 0 }
            return v
        }
    }

    /// Every worker seen: connected or not, its state in the running job, speed, share, traffic, transfer.
    func workersBody() -> JSONValue {
        .array(
            workerViews().map { v in
                let r = v.record
                var o: JSONObject = [
                    "id": .string(r.id), "name": .string(r.name), "cores": .integer(Int64(r.cores)),
                    "memory": .integer(Int64(r.memory)), "gflops": .number(r.gflops),
                    "rows_done": .integer(Int64(r.rows)), "connected": .bool(v.connected), "state": .string(v.state),
                ]
                o["error"] = v.error.map(JSONValue.string)
                // How its last connection ended (left, silent, unreachable, reconnected), while it is away.
                o["departure"] = v.connected ? nil : departures[r.id].map { .string($0.name) }
                o["rows_per_second"] = v.info?.rowsPerSecond.map(JSONValue.number)
                o["job"] = v.info?.readyJob.map(JSONValue.string)
                o["host"] = v.info?.host.map(JSONValue.string)
                o["threads"] = v.info.map { .integer(Int64($0.threads)) }
                o["last_heard_seconds"] = v.lastHeard.map(JSONValue.number)
                o["share"] = v.share.map(JSONValue.number)
                o["bytes_sent"] = .integer(Int64(v.traffic.sent))
                o["bytes_received"] = .integer(Int64(v.traffic.received))
                if let t = v.transfer {
                    o["transfer"] = [
                        "blob": .string(t.blob), "received": .integer(Int64(t.received)),
                        "total": .integer(Int64(t.total)),
                    ]
                }
                return .object(o)
            })
    }

    /// Gaps between workers' messages and silent deaths: what a load test watches.
    func coordinatorHealth() -> JSONValue {
        var gaps = JSONObject()
        for (name, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)] {
            gaps[name] = .number((heartbeatGaps.quantile(q) * 1000).rounded())
        }
        gaps["count"] = .integer(Int64(heartbeatGaps.count))
        var o: JSONObject = [
            "heartbeat_ms": .integer(Int64(options.heartbeatMilliseconds)), "worker_message_gap_ms": .object(gaps),
            "workers_declared_silent": .integer(Int64(workersDeclaredSilent)),
            "messages_rate_limited": .integer(Int64(messagesRateLimited)),
            "messages_rejected": .integer(Int64(messagesRejected)),
            "blob_bytes_sent": .integer(Int64(metrics.blobBytesSent)),
        ]
        if let d = dashboardAddress { o["dashboard"] = .string(d) }
        return .object(o)
    }
}
