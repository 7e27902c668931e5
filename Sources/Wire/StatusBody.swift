// StatusBody: what the coordinator reports of its jobs, workers and itself. One set of types serves the `status`
// and `workers` replies, the HTTP API (/api/status, /api/workers, /api/jobs/ID), `cairn status`, `cairn workers`
// and `cairn report` (which also describes a one-machine run in the same shape), so the writers and the readers
// cannot drift apart. The JSON shapes are documented in the README; `json` writes them and `init(json:)` reads them
// (absent optional fields stay nil; a body from an older coordinator reads with what it has).

import Support

/// One job: its state and progress, and with `cairn status JOB` its steps, evaluations, settings and lineage.
public struct JobStatus: Sendable, Equatable {
    public var id: String
    /// queued, running, done, failed, cancelled (or `stopped` for a one-machine run that did not finish).
    public var state: String
    /// sync, diloco, federated (or `one machine`).
    public var mode: String
    public var step: Int
    public var totalSteps: Int
    /// The training data's name.
    public var data: String
    /// Seconds since 1970.
    public var created: Double?
    public var validationData: String?
    public var error: String?
    /// The last step's training loss.
    public var loss: Double?
    /// Trained tokens per second over the last five steps.
    public var tokensPerSecond: Double?
    public var etaSeconds: Double?
    public var evalLoss: Double?

    // The detail of one job.

    /// Older steps left out of `steps` (the latest are listed).
    public var stepsOmitted: Int?
    /// Whether steps after the last listed follow (with `after`).
    public var stepsMore: Bool?
    public var steps: [StepStatus]?
    public var evals: [EvalStatus]?
    /// The job file's settings, in the job file's order.
    public var settings: [(key: String, value: String)]?
    /// A lineage node, in the shape of `cairn lineage --json`.
    public var lineage: JSONObject?
    /// Names of the workers that took part, by id.
    public var workerNames: [String: String]?
    /// An evaluation job's adapters, in order (evaluation k scores adapter k), with their content hashes.
    public var adapters: [(label: String, sha256: String)]?

    public init(id: String, state: String, mode: String, step: Int, totalSteps: Int, data: String) {
        self.id = id
        self.state = state
        self.mode = mode
        self.step = step
        self.totalSteps = totalSteps
        self.data = data
    }

    /// Whether nothing more will happen to it.
    public var isFinished: Bool { ["done", "failed", "cancelled"].contains(state) }

    public static func == (a: JobStatus, b: JobStatus) -> Bool { a.json == b.json }

    public var json: JSONValue {
        var o: JSONObject = [
            "id": .string(id), "state": .string(state), "mode": .string(mode), "step": .integer(Int64(step)),
            "total_steps": .integer(Int64(totalSteps)), "data": .string(data),
        ]
        o["created"] = created.map(JSONValue.number)
        o["validation_data"] = validationData.map(JSONValue.string)
        o["error"] = error.map(JSONValue.string)
        o["loss"] = loss.map(JSONValue.number)
        o["tokens_per_second"] = tokensPerSecond.map(JSONValue.number)
        o["eta_seconds"] = etaSeconds.map(JSONValue.number)
        o["eval_loss"] = evalLoss.map(JSONValue.number)
        o["steps_omitted"] = stepsOmitted.map { .integer(Int64($0)) }
        o["steps_more"] = stepsMore.map(JSONValue.bool)
        o["steps"] = steps.map { .array($0.map(\.json)) }
        o["evals"] = evals.map { .array($0.map(\.json)) }
        o["settings"] = settings.map { .object(JSONObject($0.map { ($0.key, .string($0.value)) })) }
        o["lineage"] = lineage.map(JSONValue.object)
        o["worker_names"] = workerNames.map { names in
            .object(JSONObject(names.keys.sorted().map { ($0, .string(names[$0]!)) }))
        }
        o["adapters"] = adapters.map { list in
            .array(list.map { ["label": .string($0.label), "sha256": .string($0.sha256)] })
        }
        return .object(o)
    }

    public init(json v: JSONValue) throws(StatusError) {
        let o = try StatusError.object(v, "job")
        self.init(
            id: try o.string("id"), state: try o.string("state"), mode: o.optionalString("mode") ?? "",
            step: o.optionalInt("step") ?? 0, totalSteps: o.optionalInt("total_steps") ?? 0,
            data: o.optionalString("data") ?? "")
        created = o.optionalDouble("created")
        validationData = o.optionalString("validation_data")
        error = o.optionalString("error")
        loss = o.optionalDouble("loss")
        tokensPerSecond = o.optionalDouble("tokens_per_second")
        etaSeconds = o.optionalDouble("eta_seconds")
        evalLoss = o.optionalDouble("eval_loss")
        stepsOmitted = o.optionalInt("steps_omitted")
        stepsMore = o["steps_more"]?.boolValue
        steps = try o["steps"]?.arrayValue.map { a throws(StatusError) in
            var out: [StepStatus] = []
            for s in a { out.append(try StepStatus(json: s)) }
            return out
        }
        evals = try o["evals"]?.arrayValue.map { a throws(StatusError) in
            var out: [EvalStatus] = []
            for e in a { out.append(try EvalStatus(json: e)) }
            return out
        }
        settings = o["settings"]?.objectValue.map { s in s.members.compactMap { k, v in v.stringValue.map { (k, $0) } }
        }
        lineage = o["lineage"]?.objectValue
        workerNames = o["worker_names"]?.objectValue.map { n in
            Dictionary(n.members.compactMap { k, v in v.stringValue.map { (k, $0) } }, uniquingKeysWith: { a, _ in a })
        }
        adapters = o["adapters"]?.arrayValue.map { list in
            list.compactMap { v in
                v.objectValue.flatMap { a in
                    a["label"]?.stringValue.flatMap { l in a["sha256"]?.stringValue.map { (l, $0) } }
                }
            }
        }
    }
}

/// A journaled step or round.
public struct StepStatus: Sendable, Equatable {
    /// What one worker did in it.
    public struct Work: Sendable, Equatable {
        public var tokens: Int
        public var seconds: Double
        /// Round modes: the norm of its update (ΔW space), the factor it was clipped by (when it was), and why
        /// the round left it out (when it did).
        public var updateNorm: Double?
        public var clipScale: Double?
        public var leftOut: String?
        public init(
            tokens: Int, seconds: Double, updateNorm: Double? = nil, clipScale: Double? = nil, leftOut: String? = nil
        ) {
            self.tokens = tokens
            self.seconds = seconds
            self.updateNorm = updateNorm
            self.clipScale = clipScale
            self.leftOut = leftOut
        }

        var json: JSONValue {
            var o: JSONObject = ["tokens": .integer(Int64(tokens)), "seconds": .number(seconds)]
            o["update_norm"] = updateNorm.map(JSONValue.number)
            o["clipped_by"] = clipScale.map(JSONValue.number)
            o["left_out"] = leftOut.map(JSONValue.string)
            return .object(o)
        }

        init(json w: JSONObject) {
            self.init(
                tokens: w.optionalInt("tokens") ?? 0, seconds: w.optionalDouble("seconds") ?? 0,
                updateNorm: w.optionalDouble("update_norm"), clipScale: w.optionalDouble("clipped_by"),
                leftOut: w.optionalString("left_out"))
        }
    }

    public var step: Int
    public var loss: Double
    public var tokens: Int
    public var seconds: Double
    /// Training traffic of the step (cluster jobs).
    public var bytes: Int?
    /// The slowest worker's compute time (cluster jobs).
    public var computeSeconds: Double?
    /// Rows each worker computed, by worker id (cluster jobs).
    public var shares: [String: Int]?
    /// Tokens and compute seconds by worker id.
    public var workers: [String: Work]

    public init(
        step: Int, loss: Double, tokens: Int, seconds: Double, bytes: Int? = nil, computeSeconds: Double? = nil,
        shares: [String: Int]? = nil, workers: [String: Work] = [:]
    ) {
        self.step = step
        self.loss = loss
        self.tokens = tokens
        self.seconds = seconds
        self.bytes = bytes
        self.computeSeconds = computeSeconds
        self.shares = shares
        self.workers = workers
    }

    public var json: JSONValue {
        var o: JSONObject = [
            "step": .integer(Int64(step)), "loss": .number(loss), "tokens": .integer(Int64(tokens)),
            "seconds": .number(seconds),
        ]
        o["bytes"] = bytes.map { .integer(Int64($0)) }
        o["compute_seconds"] = computeSeconds.map(JSONValue.number)
        o["shares"] = shares.map { s in .object(JSONObject(s.keys.sorted().map { ($0, .integer(Int64(s[$0]!))) })) }
        o["workers"] = .object(JSONObject(workers.keys.sorted().map { id in (id, workers[id]!.json) }))
        return .object(o)
    }

    public init(json v: JSONValue) throws(StatusError) {
        let o = try StatusError.object(v, "step")
        self.init(
            step: try o.int("step"), loss: try o.double("loss"), tokens: o.optionalInt("tokens") ?? 0,
            seconds: o.optionalDouble("seconds") ?? 0, bytes: o.optionalInt("bytes"),
            computeSeconds: o.optionalDouble("compute_seconds"),
            shares: o["shares"]?.objectValue.map { s in
                Dictionary(s.members.compactMap { k, v in v.intValue.map { (k, $0) } }, uniquingKeysWith: { a, _ in a })
            })
        for (id, w) in o["workers"]?.objectValue?.members ?? [] {
            guard let w = w.objectValue else { continue }
            workers[id] = Work(json: w)
        }
    }
}

/// A held-out evaluation.
public struct EvalStatus: Sendable, Equatable {
    /// The step (or round) after which it ran.
    public var step: Int
    public var loss: Double
    public var tokens: Int

    public init(step: Int, loss: Double, tokens: Int) {
        self.step = step
        self.loss = loss
        self.tokens = tokens
    }

    public var json: JSONValue {
        ["step": .integer(Int64(step)), "loss": .number(loss), "tokens": .integer(Int64(tokens))]
    }

    public init(json v: JSONValue) throws(StatusError) {
        let o = try StatusError.object(v, "evaluation")
        self.init(step: try o.int("step"), loss: try o.double("loss"), tokens: o.optionalInt("tokens") ?? 0)
    }
}

/// A worker the coordinator has seen: connected or not, its state in the running job, speed, share, traffic.
public struct WorkerStatus: Sendable, Equatable {
    /// A blob it is fetching (or fetched).
    public struct Transfer: Sendable, Equatable {
        public var blob: String
        public var received: Int
        public var total: Int
        public init(blob: String, received: Int, total: Int) {
            self.blob = blob
            self.received = received
            self.total = total
        }
    }

    public var id: String
    public var name: String
    public var cores: Int
    public var memory: Int
    public var gflops: Double
    public var rowsDone: Int
    public var connected: Bool
    /// computing, ready, loading, idle, failed (for the running job), or gone.
    public var state: String
    /// Why it cannot take part in the running job.
    public var error: String?
    /// How its last connection ended (left, silent, unreachable, reconnected), while it is away.
    public var departure: String?
    public var rowsPerSecond: Double?
    /// The job it has loaded.
    public var job: String?
    public var host: String?
    public var threads: Int?
    public var lastHeardSeconds: Double?
    /// Its fraction of the rows of the running job's last step or round.
    public var share: Double?
    public var bytesSent = 0
    public var bytesReceived = 0
    public var transfer: Transfer?

    public init(
        id: String, name: String, cores: Int, memory: Int, gflops: Double, rowsDone: Int, connected: Bool,
        state: String
    ) {
        self.id = id
        self.name = name
        self.cores = cores
        self.memory = memory
        self.gflops = gflops
        self.rowsDone = rowsDone
        self.connected = connected
        self.state = state
    }

    public var json: JSONValue {
        var o: JSONObject = [
            "id": .string(id), "name": .string(name), "cores": .integer(Int64(cores)),
            "memory": .integer(Int64(memory)), "gflops": .number(gflops), "rows_done": .integer(Int64(rowsDone)),
            "connected": .bool(connected), "state": .string(state),
        ]
        o["error"] = error.map(JSONValue.string)
        o["departure"] = departure.map(JSONValue.string)
        o["rows_per_second"] = rowsPerSecond.map(JSONValue.number)
        o["job"] = job.map(JSONValue.string)
        o["host"] = host.map(JSONValue.string)
        o["threads"] = threads.map { .integer(Int64($0)) }
        o["last_heard_seconds"] = lastHeardSeconds.map(JSONValue.number)
        o["share"] = share.map(JSONValue.number)
        o["bytes_sent"] = .integer(Int64(bytesSent))
        o["bytes_received"] = .integer(Int64(bytesReceived))
        o["transfer"] = transfer.map {
            ["blob": .string($0.blob), "received": .integer(Int64($0.received)), "total": .integer(Int64($0.total))]
        }
        return .object(o)
    }

    public init(json v: JSONValue) throws(StatusError) {
        let o = try StatusError.object(v, "worker")
        self.init(
            id: try o.string("id"), name: o.optionalString("name") ?? "", cores: o.optionalInt("cores") ?? 0,
            memory: o.optionalInt("memory") ?? 0, gflops: o.optionalDouble("gflops") ?? 0,
            rowsDone: o.optionalInt("rows_done") ?? 0, connected: o["connected"]?.boolValue ?? false,
            state: o.optionalString("state") ?? "")
        error = o.optionalString("error")
        departure = o.optionalString("departure")
        rowsPerSecond = o.optionalDouble("rows_per_second")
        job = o.optionalString("job")
        host = o.optionalString("host")
        threads = o.optionalInt("threads")
        lastHeardSeconds = o.optionalDouble("last_heard_seconds")
        share = o.optionalDouble("share")
        bytesSent = o.optionalInt("bytes_sent") ?? 0
        bytesReceived = o.optionalInt("bytes_received") ?? 0
        if let t = o["transfer"]?.objectValue, let blob = t.optionalString("blob") {
            transfer = Transfer(
                blob: blob, received: t.optionalInt("received") ?? 0, total: t.optionalInt("total") ?? 0)
        }
    }

    /// A `workers_reply` body.
    public static func list(json v: JSONValue) throws(StatusError) -> [WorkerStatus] {
        guard let a = v.arrayValue else { throw StatusError("the workers list is not an array") }
        var out: [WorkerStatus] = []
        for w in a { out.append(try WorkerStatus(json: w)) }
        return out
    }
}

/// The coordinator's own health: what a load test watches.
public struct CoordinatorHealth: Sendable, Equatable {
    public var heartbeatMilliseconds: Int
    /// Gaps between consecutive messages from workers (ms): p50, p95, p99, max.
    public var gapP50 = 0.0
    public var gapP95 = 0.0
    public var gapP99 = 0.0
    public var gapMax = 0.0
    public var gapCount = 0
    public var workersDeclaredSilent = 0
    public var messagesRateLimited = 0
    public var messagesRejected = 0
    public var blobBytesSent = 0
    /// Where the dashboard is served (HOST:PORT), when it is.
    public var dashboard: String?

    public init(heartbeatMilliseconds: Int) { self.heartbeatMilliseconds = heartbeatMilliseconds }

    public var json: JSONValue {
        var o: JSONObject = [
            "heartbeat_ms": .integer(Int64(heartbeatMilliseconds)),
            "worker_message_gap_ms": [
                "p50": .number(gapP50), "p95": .number(gapP95), "p99": .number(gapP99), "max": .number(gapMax),
                "count": .integer(Int64(gapCount)),
            ],
            "workers_declared_silent": .integer(Int64(workersDeclaredSilent)),
            "messages_rate_limited": .integer(Int64(messagesRateLimited)),
            "messages_rejected": .integer(Int64(messagesRejected)), "blob_bytes_sent": .integer(Int64(blobBytesSent)),
        ]
        o["dashboard"] = dashboard.map(JSONValue.string)
        return .object(o)
    }

    public init(json v: JSONValue) throws(StatusError) {
        let o = try StatusError.object(v, "coordinator")
        self.init(heartbeatMilliseconds: o.optionalInt("heartbeat_ms") ?? 0)
        let g = o["worker_message_gap_ms"]?.objectValue ?? JSONObject()
        gapP50 = g.optionalDouble("p50") ?? 0
        gapP95 = g.optionalDouble("p95") ?? 0
        gapP99 = g.optionalDouble("p99") ?? 0
        gapMax = g.optionalDouble("max") ?? 0
        gapCount = g.optionalInt("count") ?? 0
        workersDeclaredSilent = o.optionalInt("workers_declared_silent") ?? 0
        messagesRateLimited = o.optionalInt("messages_rate_limited") ?? 0
        messagesRejected = o.optionalInt("messages_rejected") ?? 0
        blobBytesSent = o.optionalInt("blob_bytes_sent") ?? 0
        dashboard = o.optionalString("dashboard")
    }
}

/// A `status_reply` body (and /api/status): jobs, workers, the coordinator's health.
public struct StatusBody: Sendable, Equatable {
    public var jobs: [JobStatus]
    public var workers: [WorkerStatus]
    public var coordinator: CoordinatorHealth?

    public init(jobs: [JobStatus], workers: [WorkerStatus], coordinator: CoordinatorHealth?) {
        self.jobs = jobs
        self.workers = workers
        self.coordinator = coordinator
    }

    public var json: JSONValue {
        var o: JSONObject = ["jobs": .array(jobs.map(\.json)), "workers": .array(workers.map(\.json))]
        o["coordinator"] = coordinator?.json
        return .object(o)
    }

    public init(json v: JSONValue) throws(StatusError) {
        let o = try StatusError.object(v, "status")
        var jobs: [JobStatus] = []
        for j in o["jobs"]?.arrayValue ?? [] { jobs.append(try JobStatus(json: j)) }
        self.init(
            jobs: jobs, workers: try WorkerStatus.list(json: o["workers"] ?? .array([])),
            coordinator: try o["coordinator"].map { v throws(StatusError) in try CoordinatorHealth(json: v) })
    }
}

/// A status body that does not have the documented shape.
public struct StatusError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }

    static func object(_ v: JSONValue, _ what: String) throws(StatusError) -> JSONObject {
        guard let o = v.objectValue else { throw StatusError("a \(what) entry is not a JSON object") }
        return o
    }
}

extension JSONObject {
    func string(_ key: String) throws(StatusError) -> String {
        guard let s = self[key]?.stringValue else { throw StatusError("field \"\(key)\" is missing or not a string") }
        return s
    }
    func int(_ key: String) throws(StatusError) -> Int {
        guard let n = self[key]?.intValue else { throw StatusError("field \"\(key)\" is missing or not an integer") }
        return n
    }
    func double(_ key: String) throws(StatusError) -> Double {
        guard let x = self[key]?.doubleValue else { throw StatusError("field \"\(key)\" is missing or not a number") }
        return x
    }
    func optionalString(_ key: String) -> String? { self[key]?.stringValue }
    func optionalInt(_ key: String) -> Int? { self[key]?.intValue }
    func optionalDouble(_ key: String) -> Double? { self[key]?.doubleValue }
}
