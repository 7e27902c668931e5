// WorkerSession: a cluster worker's decisions as a state machine. It takes events (time passed, a connection
// opened, frames from the coordinator, a model loaded, an assignment computed, a stop asked for) and returns
// actions (connect, send, load a model, compute, log, leave). It owns the connection's liveness (heartbeats,
// silence, reconnecting with backoff), the jobs it holds (every job the coordinator runs, loaded one after another),
// the model transfer (credit-based, resumable, shared with the other workers of a cache), and the assignments: one
// pass computing, the others queued, revoked ones dropped. Step assignments of several jobs on one base that are
// queued together are computed in one pass over the base.
//
// No sockets, threads or clock inside: `WorkerAgent` turns its socket, its threads and the wall clock into
// events and performs the actions, and tests drive the session directly. The one outside thing it touches is the
// model cache, through `ModelCache` (the blob store on disk; a simulated one in tests).

import Llama
import Logging
import ModelFormats
import Training
import Wire

/// The model cache as a worker's session uses it.
public protocol ModelCache: AnyObject {
    func contains(_ blob: String) -> Bool
    /// Bytes of the blob received so far (its partial file).
    func partialSize(_ blob: String) -> Int
    /// Free bytes where the cache lives (nil: unknown).
    var freeBytes: Int? { get }
    /// The exclusive right to fetch `blob` into the cache, shared with other workers; nil while another holds it.
    func claim(_ blob: String) -> (any CacheClaim)?
    func appendPartial(_ blob: String, _ bytes: [UInt8]) throws(FormatError)
    /// Verifies the partial file's SHA-256 and makes it the blob.
    func completePartial(_ blob: String) throws(FormatError)
    func path(_ blob: String) -> String
}

/// A held claim on fetching a blob.
public protocol CacheClaim: AnyObject {
    func release()
}

extension BlobStore.Claim: CacheClaim {}

extension BlobStore: ModelCache {
    public var freeBytes: Int? { Self.freeBytes(atPath: root) }
    public func claim(_ blob: String) -> (any CacheClaim)? { claim(blob) as Claim? }
}

/// A cluster worker's session with its coordinator.
public struct WorkerSession {
    /// What the worker says of itself in `hello`.
    public struct Machine: Sendable {
        public var name: String
        public var cores: Int
        public var memory: Int
        /// Measured sgemm rate.
        public var gflops: Double
        public var threads: Int
        public var host: String
        /// Examples in this worker's own data (federated jobs); 0 without.
        public var localExamples: Int
        /// The coordinator's address and the cache directory, for messages.
        public var endpoint: String
        public var cacheDirectory: String

        public init(
            name: String, cores: Int, memory: Int, gflops: Double, threads: Int, host: String, localExamples: Int,
            endpoint: String, cacheDirectory: String
        ) {
            self.name = name
            self.cores = cores
            self.memory = memory
            self.gflops = gflops
            self.threads = threads
            self.host = host
            self.localExamples = localExamples
            self.endpoint = endpoint
            self.cacheDirectory = cacheDirectory
        }
    }

    /// A job's model to load.
    public struct JobSpec: Sendable {
        public var id: String
        public var config: TrainingConfig
        /// The job's optimizer steps (its learning-rate schedule spans them).
        public var totalSteps: Int
        public var modelPath: String
    }

    /// What the session needs to know of a loaded job to check its assignments.
    public struct LoadedJob: Sendable, Equatable {
        public var id: String
        public var parameterCount: Int
        public var vocabularySize: Int
        public var sequenceLength: Int
        public var federated: Bool
        /// The loaded base (file and precision): jobs with the same one share it, and their steps can share a pass.
        public var base: String

        public init(
            id: String, parameterCount: Int, vocabularySize: Int, sequenceLength: Int, federated: Bool,
            base: String = ""
        ) {
            self.id = id
            self.parameterCount = parameterCount
            self.vocabularySize = vocabularySize
            self.sequenceLength = sequenceLength
            self.federated = federated
            self.base = base
        }
    }

    /// An assignment, checked against the loaded job: what the compute thread runs.
    public struct Work: Sendable {
        public enum Kind: Sendable, Equatable {
            /// A sync step's rows: the gradient of their summed loss.
            case gradient
            /// Held-out rows: their loss, forward only.
            case evaluation
            /// A diloco or federated round: `steps` local steps of `rowsPerStep` rows from `firstStep` on.
            case round(round: Int, firstStep: Int, steps: Int, rowsPerStep: Int)
        }
        public var kind: Kind
        public var job: String
        public var assignment: Int
        /// The step an assignment belongs to (sync and evaluations).
        public var step: Int
        /// The adapter's parameters to start from.
        public var parameters: [Float]
        /// The rows (nil for a federated round: the worker's own data).
        public var rows: TrainingBatch?
    }

    public enum Event: Sendable {
        /// Time passed.
        case tick
        /// Leave after returning the assignment in hand.
        case stop
        /// The connection asked for by `.connect` is open, or why not.
        case connected
        case connectFailed(String)
        case received([[UInt8]])
        /// Every message waiting on the connection has been received: queued assignments start now (those of
        /// several jobs on one base, together).
        case drained
        /// The coordinator refused this worker's key.
        case refused
        case loaded(LoadedJob)
        case loadFailed(job: String, message: String)
        /// A `result`, `round_result` or `eval_result` of the work in hand.
        case computed(assignment: Int, result: Message)
        /// The work in hand could not run (its job was unloaded meanwhile).
        case computeFailed(assignment: Int, why: String)
    }

    public enum Action: Sendable {
        case connect
        case disconnect
        case send(Message)
        case load(JobSpec)
        /// Forget a job's model and session (the coordinator ended it, or too many are held).
        case unload(job: String)
        /// Compute these assignments, in one pass where there are several (step assignments of jobs on one base).
        case compute([Work])
        case log(Logger.Level, String)
        /// Stop running: the worker has left.
        case leave
        /// Stop running with an error.
        case fail(WorkerError)
    }

    public let machine: Machine
    private let cache: any ModelCache

    // The connection.
    public private(set) var connected = false
    public private(set) var welcomed = false
    private var heartbeat = Double(Wire.heartbeatMilliseconds) / 1000
    private var liveness = Wire.heartbeatLiveness
    private var lastHeard = 0.0
    private var lastSent = 0.0
    private var connectedAt = 0.0
    private var backoff = 0.5
    private var nextAttempt = 0.0
    public private(set) var leaving = false
    public private(set) var finished = false

    // The jobs held, and the model transfer of the one being fetched or loaded.
    private struct JobState {
        var id: String
        var config: TrainingConfig
        var totalSteps: Int
        var modelBlob: String
        var modelBytes: Int
        var download: BlobDownload?
        /// This worker's claim on fetching the model into the shared cache.
        var claim: (any CacheClaim)?
        var waitingForPeer = false
        var loading = false
        var ready = false
        /// This worker cannot take part (reported to the coordinator); nothing more is tried for the job.
        var failed = false
    }
    /// Jobs announced and not ended, by id; `order` is the order they were last announced in.
    private var jobs: [String: JobState] = [:]
    private var order: [String] = []
    /// The job whose model is being fetched or loaded (one at a time); the others wait in `order`.
    private var focus: String?
    /// The job in focus.
    private var job: JobState? {
        get { focus.flatMap { jobs[$0] } }
        set { if let id = focus { jobs[id] = newValue } }
    }
    /// Jobs held at most (the oldest idle one is unloaded beyond it; a coordinator runs 4 by default).
    static let maxJobs = 8
    private var lastChunk = 0.0
    /// When the transfer in progress started (and from how many bytes), and when its progress was last logged.
    private var transferStarted = (time: 0.0, bytes: 0)
    private var transferLogged = 0.0
    private var failedFetches = 0

    // Assignments.
    public private(set) var loaded: [String: LoadedJob] = [:]
    /// The assignments of the pass in hand, in ascending order.
    public var computing: [Int] { computingJobs.keys.sorted() }
    private var revoked: Set<Int> = []
    private var queued: [Incoming] = []

    /// An assignment as it arrived (checked against the loaded job when it starts).
    enum Incoming {
        case step(StepAssignment)
        case round(RoundAssignment)

        var job: String {
            switch self {
            case .step(let a): a.job
            case .round(let a): a.job
            }
        }

        var assignment: Int {
            switch self {
            case .step(let a): a.assignment
            case .round(let a): a.assignment
            }
        }
    }

    private var out: [Action] = []
    private var now = 0.0

    public init(machine: Machine, cache: any ModelCache) {
        self.machine = machine
        self.cache = cache
    }

    /// Takes one event at time `now` (seconds); returns what to do, in order.
    public mutating func handle(_ event: Event, now: Double) -> [Action] {
        guard !finished else { return [] }
        self.now = now
        out = []
        switch event {
        case .tick:
            tick()
            startNext()
        case .stop:
            if !leaving {
                leaving = true
                if !computingJobs.isEmpty { log("stopping: finishing the assignment in hand first") }
            }
        case .connected:
            connected = true
            welcomed = false
            connectedAt = now
            sayHello()
        case .connectFailed(let why):
            log(.warning, "cannot connect to \(machine.endpoint): \(why)")
            disconnect(retry: true)
        case .received(let frames): receive(frames)
        case .drained: startNext()
        case .refused:
            disconnect(retry: false)
            out.append(
                .fail(
                    WorkerError(
                        "the coordinator refused this worker's key (not enrolled, or revoked); join again with a new "
                            + "token")))
            finished = true
        case .loaded(let info):
            if jobs[info.id] == nil {
                // Ended while it loaded.
                out.append(.unload(job: info.id))
            } else {
                loaded[info.id] = info
                jobs[info.id]?.ready = true
                jobs[info.id]?.loading = false
                send(Ready(job: info.id).message)
            }
            nextFocus()
        case .loadFailed(let id, let message):
            // Logged here and reported, so the coordinator leaves this worker out of the job and says why.
            log(.error, message)
            jobs[id]?.loading = false
            jobs[id]?.failed = true
            send(ErrorReport(code: "load", text: message, job: id).message)
            nextFocus()
        case .computed(let assignment, let result):
            computingJobs[assignment] = nil
            if computingJobs.isEmpty { lastPassSeconds = now - passStarted }
            if revoked.remove(assignment) == nil { send(result) }
            startNext()
        case .computeFailed(let assignment, let why):
            // Nothing goes back: the coordinator gives the work to another worker when its deadline passes.
            computingJobs[assignment] = nil
            revoked.remove(assignment)
            log(.warning, "assignment \(assignment) not computed: \(why)")
            startNext()
        }
        if leaving, computingJobs.isEmpty, !finished { leave() }
        return out
    }

    // MARK: The connection

    private mutating func tick() {
        guard connected else {
            if !leaving, now >= nextAttempt { out.append(.connect) }
            return
        }
        // Heartbeats even before `welcome` (a coordinator that lost our hello answers `hello_first`).
        if now - lastSent >= heartbeat { send(Message(.heartbeat)) }
        // Another worker on this machine was fetching the model: see whether it is there now (or whether the
        // other worker died and left its claim, in which case this one resumes the transfer).
        if job?.waitingForPeer == true { startFetch() }
        // A transfer that stopped moving (a request or chunk was lost): ask again from what we have.
        if var d = job?.download, !d.outstanding.isEmpty, now - lastChunk > max(2, 5 * heartbeat) {
            d.reset()
            job?.download = d
            lastChunk = now
            requestChunks()
        }
        let silent = now - max(lastHeard, connectedAt)
        if silent > heartbeat * Double(liveness) {
            log(
                .notice,
                welcomed
                    ? "the coordinator is silent (\(Self.seconds(silent))); reconnecting"
                    : "no answer from \(machine.endpoint) yet; retrying")
            disconnect(retry: true)
        }
    }

    private mutating func disconnect(retry: Bool) {
        if connected { out.append(.disconnect) }
        connected = false
        welcomed = false
        if retry {
            nextAttempt = now + backoff
            backoff = min(backoff * 2, 30)
        }
    }

    private mutating func leave() {
        if connected, welcomed { send(Bye(reason: "stopped").message) }
        disconnect(retry: false)
        log("left the cluster")
        out.append(.leave)
        finished = true
    }

    private mutating func send(_ m: Message) {
        // Without a connection a message is lost; the coordinator re-assigns what it does not hear back about.
        guard connected else { return }
        out.append(.send(m))
        lastSent = now
    }

    private mutating func log(_ text: String) { out.append(.log(.info, text)) }
    private mutating func log(_ level: Logger.Level, _ text: String) { out.append(.log(level, text)) }

    private mutating func sayHello() {
        let m = machine
        send(
            Hello(
                name: m.name, cores: m.cores, memory: m.memory, gflops: m.gflops, threads: m.threads,
                localExamples: m.localExamples > 0 ? m.localExamples : nil, host: String(m.host.prefix(256))
            ).message)
    }

    // MARK: Messages

    private mutating func receive(_ frames: [[UInt8]]) {
        lastHeard = now
        backoff = 0.5
        let m: Message
        do { m = try Message.decode(frames) } catch {
            log(.warning, "dropped a message from the coordinator: \(error)")
            return
        }
        switch m.type {
        case .welcome:
            guard let w = try? m.decode(as: Welcome.self) else { return }
            welcomed = true
            heartbeat = Double(min(max(w.heartbeatMilliseconds, 10), 60_000)) / 1000
            liveness = min(max(w.liveness, 1), 100)
            log("connected to \(machine.endpoint) as \(w.worker)")
            // A transfer the lost connection interrupted goes on from what arrived.
            if job?.download != nil {
                job?.download?.reset()
                lastChunk = now
                requestChunks()
            }
        case .job: if let j = try? m.decode(as: JobAnnouncement.self) { receiveJob(j) }
        case .chunk: receiveChunk(m)
        case .assign, .roundAssign, .evaluate:
            let a: Incoming
            do {
                a =
                    m.type == .roundAssign
                    ? .round(try m.decode(as: RoundAssignment.self)) : .step(try m.decodeStepAssignment())
            } catch { return }
            // Started once every waiting message is in (`drained`), so assignments of two jobs sent together share
            // a pass.
            if case .step(let m) = a, !m.evaluation { lastStep[m.job] = now }
            queued.append(a)
        case .revoke:
            guard let r = try? m.decode(as: Revoke.self) else { return }
            if r.assignment == 0 {
                // Assignment 0: the job ended (cancelled, done or failed): its work is dropped and it is unloaded.
                revoked.formUnion(computingJobs.filter { $0.value == r.job }.keys)
                queued.removeAll { $0.job == r.job }
                drop(r.job)
            } else {
                if computingJobs[r.assignment] != nil { revoked.insert(r.assignment) }
                queued.removeAll { $0.assignment == r.assignment }
            }
        case .error:
            guard let e = try? m.decode(as: ErrorReport.self) else { return }
            if e.code == "hello_first" {
                sayHello()
            } else {
                log(.warning, "coordinator: \(e.text)")
            }
        default: break
        }
    }

    private mutating func receiveJob(_ m: JobAnnouncement) {
        let id = m.job
        if let held = jobs[id], !held.failed {
            if held.ready { send(Ready(job: id).message) }
            return
        }
        let blob = m.modelBlob
        guard BlobStore.isHash(blob) else { return }
        if focus == id {
            job?.claim?.release()
            focus = nil
        }
        order.removeAll { $0 == id }
        order.append(id)
        jobs[id] = nil
        evictIfFull()
        // The job in focus (its model in transfer or loading) goes on; this one waits for it.
        let previous = focus
        let waits = previous != nil
        focus = id
        defer { if waits { focus = previous } }
        // A job this worker cannot run is said to the coordinator (it leaves the worker out and shows why), not
        // guessed at or silently ignored.
        let version = m.specVersion
        var config = TrainingConfig()
        do {
            guard version <= Wire.jobSpecVersion else {
                throw WorkerError(
                    "the job's spec is version \(version) and this worker's cairn reads up to \(Wire.jobSpecVersion); "
                        + "update cairn on this machine")
            }
            try config.apply(yaml: m.spec, source: "\(id) job")
        } catch {
            job = JobState(id: id, config: config, totalSteps: 1, modelBlob: blob, modelBytes: 0)
            fault(version > Wire.jobSpecVersion ? "version" : "spec", "cannot run \(id): \(error)")
            return
        }
        // Coordinators before `total_steps` was sent: the spec's steps.
        let totalSteps = m.totalSteps ?? max(1, config.steps)
        job = JobState(id: id, config: config, totalSteps: totalSteps, modelBlob: blob, modelBytes: m.modelBytes)
        if loaded[id] != nil {
            job?.ready = true
            send(Ready(job: id).message)
            return
        }
        if !waits { startFetch() }
    }

    /// The next held job whose model is neither loaded nor failed gets the focus, and its fetch starts.
    private mutating func nextFocus() {
        if let f = focus, let j = jobs[f], j.download != nil || j.loading || j.waitingForPeer { return }
        focus = order.first { id in jobs[id].map { !$0.ready && !$0.failed } ?? false }
        startFetch()
    }

    /// Forgets a job: its transfer stops, and its model and session are unloaded.
    private mutating func drop(_ id: String) {
        guard let j = jobs.removeValue(forKey: id) else { return }
        j.claim?.release()
        order.removeAll { $0 == id }
        lastStep[id] = nil
        if loaded.removeValue(forKey: id) != nil { out.append(.unload(job: id)) }
        if focus == id {
            focus = nil
            nextFocus()
        }
    }

    /// Beyond `maxJobs` held, the oldest announced that has no work here and is not in transfer is dropped (a job
    /// a coordinator ended while this worker was away is never revoked).
    private mutating func evictIfFull() {
        while jobs.count >= Self.maxJobs {
            let busy = Set(queued.map(\.job)).union(computingJobs.values)
            guard let oldest = order.first(where: { $0 != focus && !busy.contains($0) }) else { return }
            log("unloading \(oldest): \(Self.maxJobs) jobs are held")
            drop(oldest)
        }
    }

    // MARK: The model

    /// Loads the job's model if cached; otherwise fetches it, unless another worker sharing this cache already
    /// is (then the tick checks back until the blob appears or the other's claim lapses).
    private mutating func startFetch() {
        guard let job, job.download == nil, !job.loading, !job.ready, !job.failed else {
            if job?.ready == true || job?.failed == true { nextFocus() }
            return
        }
        let blob = job.modelBlob
        if cache.contains(blob) {
            load()
            return
        }
        // A cache that cannot hold the model is said at once, not after filling the disk.
        let needed = job.modelBytes - cache.partialSize(blob)
        if let free = cache.freeBytes, free < needed {
            fault(
                "cache",
                "the cache \(machine.cacheDirectory) has \(Self.size(free)) free and the model needs "
                    + "\(Self.size(needed)); free space there, or start the worker with --cache on a roomier disk")
            return
        }
        guard let claim = cache.claim(blob) else {
            if !job.waitingForPeer { log("another worker on this machine is fetching the model; waiting for it") }
            self.job?.waitingForPeer = true
            return
        }
        if cache.contains(blob) {
            claim.release()
            load()
            return
        }
        self.job?.waitingForPeer = false
        self.job?.claim = claim
        let have = cache.partialSize(blob)
        log(
            "fetching the model (\(job.modelBytes >> 20) MiB" + (have > 0 ? ", resuming at \(have >> 20) MiB)" : ")"))
        self.job?.download = BlobDownload(hash: blob, total: job.modelBytes, received: have)
        lastChunk = now
        transferStarted = (now, have)
        transferLogged = now
        requestChunks()
    }

    /// Reports that this worker cannot take part in the current job, and stops trying.
    private mutating func fault(_ code: String, _ message: String) {
        guard let id = job?.id else { return }
        log(.error, "cannot take part in \(id): \(message)")
        job?.failed = true
        send(ErrorReport(code: code, text: message, job: id).message)
        nextFocus()
    }

    private mutating func releaseClaim() {
        job?.claim?.release()
        job?.claim = nil
    }

    private mutating func requestChunks() {
        guard var d = job?.download else { return }
        if d.isComplete {
            job?.download = nil
            defer { releaseClaim() }
            do { try cache.completePartial(d.hash) } catch {
                failedFetches += 1
                guard failedFetches < 3 else {
                    fault("cache", "\(error); gave up on this job's model after three tries")
                    return
                }
                log(.warning, "\(error); fetching again")
                job?.download = BlobDownload(hash: d.hash, total: d.total)
                requestChunks()
                return
            }
            log("model received and verified (SHA-256)")
            load()
            return
        }
        for r in d.requests() { send(r) }
        job?.download = d
    }

    private mutating func receiveChunk(_ m: Message) {
        guard var d = job?.download else { return }
        lastChunk = now
        let bytes: [UInt8]
        do { bytes = try d.accept(m) } catch {
            log(.warning, "dropped a chunk: \(error)")
            return
        }
        if !bytes.isEmpty {
            do { try cache.appendPartial(d.hash, bytes) } catch {
                // The cache cannot take it (a full disk, a read-only directory): retrying would not help.
                job?.download = nil
                releaseClaim()
                fault("cache", "cannot write the model into the cache \(machine.cacheDirectory): \(error)")
                return
            }
        }
        job?.download = d
        logTransfer(d)
        requestChunks()
    }

    /// A line every 10 s while the model arrives: how far, how fast, how long still.
    private mutating func logTransfer(_ d: BlobDownload) {
        guard now - transferLogged >= 10, !d.isComplete else { return }
        transferLogged = now
        let rate = Double(d.received - transferStarted.bytes) / max(1e-3, now - transferStarted.time)
        let left = rate > 0 ? Double(d.total - d.received) / rate : 0
        log(
            "fetching the model: \(Int(100 * Double(d.received) / Double(max(1, d.total))))% "
                + "(\(Self.size(d.received)) of \(Self.size(d.total))) · \(Self.mebibytes(rate))/s · "
                + "\(Int(left.rounded())) s left")
    }

    private mutating func load() {
        guard let job, !job.loading else { return }
        self.job?.loading = true
        log("loading the model for \(job.id)")
        out.append(
            .load(
                JobSpec(
                    id: job.id, config: job.config, totalSteps: job.totalSteps, modelPath: cache.path(job.modelBlob))))
    }

    // MARK: Assignments

    /// The pass in hand: the job of each of its assignments still computing.
    private var computingJobs: [Int: String] = [:]

    /// When a step assignment of each job last arrived, and how long the last pass took.
    private var lastStep: [String: Double] = [:]
    private var passStarted = 0.0
    private var lastPassSeconds: Double?
    /// Since when the next step assignment has waited for a companion.
    private var holdingSince: Double?

    /// Whether the next queued assignment should wait a moment for another job's: it is a step, nothing queued can
    /// share its pass, and another loaded job on its base had steps lately (the coordinator sends two jobs' steps
    /// together, but the second may still be on the wire). The wait is at most a tenth of the last pass, and never
    /// over 0.25 s.
    private mutating func waitsForCompanion() -> Bool {
        guard case .step(let m)? = queued.first, !m.evaluation, let base = loaded[m.job]?.base, !base.isEmpty else {
            return false
        }
        let companionQueued = queued.dropFirst().contains {
            if case .step(let o) = $0, !o.evaluation, o.job != m.job, loaded[o.job]?.base == base {
                true
            } else {
                false
            }
        }
        let companionActive = loaded.values.contains {
            $0.id != m.job && $0.base == base && now - (lastStep[$0.id] ?? -.infinity) < 30
        }
        guard !companionQueued, companionActive else {
            holdingSince = nil
            return false
        }
        let since = holdingSince ?? now
        holdingSince = since
        let limit = min(0.25, max(0.02, 0.1 * (lastPassSeconds ?? 0.5)))
        if now - since < limit { return true }
        holdingSince = nil
        return false
    }

    /// Starts the next queued assignment, with the step assignments of other jobs on the same base queued now (one
    /// per job): they are computed in one pass over the base.
    private mutating func startNext() {
        guard !leaving, computingJobs.isEmpty, !waitsForCompanion() else { return }
        while !queued.isEmpty {
            let a = queued.removeFirst()
            guard let first = check(a) else { continue }
            var works = [first]
            if first.kind == .gradient, let base = loaded[first.job]?.base, !base.isEmpty {
                var jobsInPass: Set<String> = [first.job]
                var rest: [Incoming] = []
                for b in queued {
                    if case .step(let m) = b, !m.evaluation, !jobsInPass.contains(m.job), loaded[m.job]?.base == base {
                        if let w = check(b) {
                            works.append(w)
                            jobsInPass.insert(m.job)
                        }
                    } else {
                        rest.append(b)
                    }
                }
                queued = rest
            }
            computingJobs = Dictionary(works.map { ($0.assignment, $0.job) }, uniquingKeysWith: { first, _ in first })
            passStarted = now
            out.append(.compute(works))
            return
        }
    }

    /// The work of an assignment, or nil (logged) when its job is not loaded here or it does not fit the job.
    private mutating func check(_ a: Incoming) -> Work? {
        guard let job = loaded[a.job] else {
            log(.warning, "assignment for \(a.job), which is not loaded here; ignored")
            return nil
        }
        guard let work = Self.work(of: a, loaded: job) else {
            log(.warning, "dropped a malformed assignment (tensor sizes, or ids out of range)")
            return nil
        }
        return work
    }

    /// An assignment checked against the loaded job, or nil when its tensors do not fit it (untrusted input: it
    /// must be checked before it reaches the kernels).
    static func work(of a: Incoming, loaded: LoadedJob) -> Work? {
        switch a {
        case .step(let m):
            let p = m.parameters
            guard p.count == loaded.parameterCount, p.dtype == .f32,
                let rows = rows(of: m.rowTensors, count: m.rows, loaded: loaded)
            else { return nil }
            return Work(
                kind: m.evaluation ? .evaluation : .gradient, job: m.job, assignment: m.assignment, step: m.step,
                parameters: p.floats(), rows: rows)
        case .round(let m):
            let p = m.parameters
            guard p.count == loaded.parameterCount, p.dtype == .f32 || p.dtype == .bf16,
                (1...1_000_000).contains(m.steps), (1...1_000_000).contains(m.rowsPerStep)
            else { return nil }
            var rows: TrainingBatch?
            if !loaded.federated {
                guard let t = m.rowTensors, let r = Self.rows(of: t, count: m.steps * m.rowsPerStep, loaded: loaded)
                else { return nil }
                rows = r
            }
            return Work(
                kind: .round(round: m.round, firstStep: m.firstStep, steps: m.steps, rowsPerStep: m.rowsPerStep),
                job: m.job, assignment: m.assignment, step: 0, parameters: p.floats(), rows: rows)
        }
    }

    /// The rows an assignment carries, or nil when its tensors are not `count` rows of the job's length or hold
    /// ids the model cannot index.
    static func rows(of t: RowTensors, count: Int, loaded: LoadedJob) -> TrainingBatch? {
        let length = loaded.sequenceLength
        guard count > 0, count <= 1 << 20, let r = t.ints(elements: count * length) else { return nil }
        let batch = TrainingBatch(
            batch: count, length: length, tokens: r.tokens, targets: r.targets, positions: r.positions,
            documentStarts: r.starts)
        return batch.isValid(vocabularySize: loaded.vocabularySize) ? batch : nil
    }

    // MARK: Formatting

    static func size(_ bytes: Int) -> String {
        bytes >= 1 << 20 ? mebibytes(Double(bytes)) : "\(max(0, bytes) >> 10) KiB"
    }

    static func mebibytes(_ bytes: Double) -> String {
        let tenths = Int((bytes / 104857.6).rounded())
        return "\(tenths / 10).\(tenths % 10) MiB"
    }

    static func seconds(_ s: Double) -> String {
        let tenths = Int((s * 10).rounded())
        return "\(tenths / 10).\(tenths % 10) s"
    }
}
