// Coordinator: the runner around CoordinatorCore. One thread: it polls the ROUTER socket and the ZAP handler, hands
// each message to the core with the time, then a tick, and performs what the core returns (sends, the job's
// arithmetic, journaling, requests to the store). The decisions (roles, rate limits, liveness, the schedule, which
// results count) are the core's, so they run the same here and in the simulator. The store's part is in
// Coordinator+Requests and Coordinator+Journal; the reports in Coordinator+Status and Coordinator+HTTP.
//
// State directory:
//   cairn.sqlite     jobs, journaled steps, keys and tokens, workers, lineage (Store)
//   blobs/sha256/    models, datasets, checkpoints, exported adapters (BlobStore)
//   server.json      the coordinator's CURVE key pair (0600)
//   client.json      credentials of the local client key, enrolled at first start (0600)

import Foundation
import Logging
import HTTP
import Llama
import ModelFormats
import TensorKernels
import Training
import Transport
import Wire

/// The coordinator process: the runner around `CoordinatorCore`. It turns the ROUTER socket, the clock and the
/// store into the core's events and performs the core's actions: sends, the job's arithmetic (SyncJob, RoundJob),
/// journaling, and the requests the store answers.
public final class Coordinator: @unchecked Sendable {
    public let options: CoordinatorOptions
    let store: Store
    let blobs: BlobStore
    /// Published adapters (over the store and the blobs).
    var registry: Registry { Registry(store: store, blobs: blobs, scratch: options.stateDirectory) }
    let serverKeys: CurveKeyPair?
    private let context = Context()
    private var router: RouterEndpoint?
    /// Every decision about peers, liveness and the running job's schedule.
    var core: CoordinatorCore
    /// The running jobs' parameters and sums, by id (the core holds their schedules).
    var jobs: [String: any RunningJob] = [:]
    /// What this process has counted (traffic, step times, transfers, shares).
    var metrics = CoordinatorMetrics()
    /// The dashboard, JSON API and /metrics; requests wait in the mailbox for this thread to answer them.
    var httpServer: HTTPServer?
    let mailbox = HTTPMailbox()
    /// Where the dashboard is served (HOST:PORT), when it is.
    public internal(set) var dashboardAddress: String?
    var failedToLoad: Set<String> = []
    /// When the store is next asked for jobs to run (0: at once, after a submission or a job's end).
    var nextActivation = 0.0
    /// Writes finished steps and rounds (checkpoints) off this thread, in order.
    let journalWriter: JournalWriter
    /// The coordinator's log (swift-log: the CLI prints it; tests collect it). Nothing decides on its wording.
    let logger: Logger

    func log(_ message: String) { logger.info("\(message)") }

    func log(_ level: Logger.Level, _ message: String, _ metadata: Logger.Metadata? = nil) {
        logger.log(level: level, "\(message)", metadata: metadata)
    }
    private let stopLock = NSLock()
    private var stopRequested = false
    /// The endpoint bound (with the port resolved).
    public private(set) var endpoint = ""

    /// Opens the state directory (creating keys and the local client's credentials the first time) and binds.
    ///
    /// - Parameter transport: an endpoint to serve instead of binding `options.listen` (an in-memory network
    ///   in tests; peers' roles then come from the user ids that network assigns).
    /// - Parameter logger: where its log goes (default: nowhere; a library never prints).
    public init(
        options: CoordinatorOptions, transport: RouterEndpoint? = nil,
        logger: Logger = Logger(label: "cairn.coordinator", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws(CoordinatorError) {
        self.options = options
        self.logger = logger
        if options.insecure, !StateFiles.isLoopback(options.listen) {
            throw CoordinatorError(
                "--insecure listens without encryption or keys; it is allowed only on loopback (tcp://127.0.0.1:PORT), not \(options.listen)"
            )
        }
        var settings = CoordinatorCore.Settings()
        settings.heartbeatMilliseconds = options.heartbeatMilliseconds
        settings.liveness = options.liveness
        settings.messagesPerSecond = options.messagesPerSecond
        settings.deadlines = Deadlines(floor: options.deadlineFloor, first: options.firstDeadline)
        settings.insecure = options.insecure
        core = CoordinatorCore(settings: settings)
        let dir = options.stateDirectory
        do {
            store = try Store(directory: dir)
            blobs = try BlobStore(root: StateFiles.blobs(dir))
        } catch { throw CoordinatorError("\(error)") }
        journalWriter = JournalWriter(
            store: store, blobs: blobs, scratch: (dir as NSString).appendingPathComponent("checkpoint.tmp"),
            probe: options.journalProbe)
        serverKeys = options.insecure ? nil : try StateFiles.serverKeys(dir, listen: options.listen)
        try startHTTP()
        if let transport {
            router = transport
            endpoint = "memory"
            return
        }
        do {
            let r = try ZMQRouter(
                context: context, endpoint: options.listen, keys: serverKeys,
                maxMessageBytes: Wire.maxTensorBytes + (1 << 20)
            ) { [weak self] key in self?.authorize(key) }
            router = r
            endpoint = r.endpoint
        } catch {
            throw CoordinatorError("cannot listen on \(options.listen): \(error)")
        }
        try writeLocalClient()
    }

    /// The local client's credentials: written and enrolled at every start (the endpoint may have changed).
    private func writeLocalClient() throws(CoordinatorError) {
        let path = StateFiles.client(options.stateDirectory)
        var connect = endpoint
        for any in ["tcp://0.0.0.0:", "tcp://*:"] where connect.hasPrefix(any) {
            connect = "tcp://127.0.0.1:" + connect.dropFirst(any.count)
        }
        do {
            var keys = (try? Credentials.load(from: path))?.keys
            if serverKeys != nil, keys == nil { keys = try CurveKeyPair.generate() }
            if serverKeys == nil { keys = nil }
            if let keys { try store.addKey(keys.publicKey, role: "publisher", name: "local") }
            try Credentials(endpoint: connect, serverKey: serverKeys?.publicKey, keys: keys).save(to: path)
        } catch { throw CoordinatorError("cannot write \(path): \(error)") }
    }

    /// Asks `run()` to return (from any thread or a signal handler's queue).
    public func stop() { stopLock.withLock { stopRequested = true } }

    private var shouldStop: Bool { stopLock.withLock { stopRequested } }

    static var now: Double { Date().timeIntervalSince1970 }

    /// Serves until `stop()`. Jobs left running resume here from their last journaled step.
    public func run() throws(CoordinatorError) {
        guard let router else { return }
        log("listening on \(endpoint)" + (serverKeys == nil ? " WITHOUT encryption or keys (--insecure)" : " (CURVE)"))
        httpServer?.start()
        while !shouldStop {
            do {
                try router.wait(timeoutMilliseconds: 20)
                var handled = 0
                while handled < 256, let m = try router.receiveNow() {
                    receive(m)
                    handled += 1
                }
                reportJournaled()
                activateJobs()
                perform(core.handle(.tick, now: Self.now))
                answerHTTPRequests()
            } catch {
                if error.kind == .closed { break }
                log(.warning, "transport error: \(error)")
            }
        }
        // What was journaled in memory is written before the process may exit.
        journalWriter.close()
        reportJournaled()
        httpServer?.stop()
        mailbox.close()
        router.close()
    }

    // MARK: Authentication

    /// ZAP: enrolled keys by role; an unused, unexpired token's enrolment key for `enrol` only.
    private func authorize(_ key: String) -> String? {
        if let role = try? store.role(ofKey: key) { return "\(role) \(key)" }
        if let token = try? store.usableToken(enrolKey: key) { return "enrol \(token.id)" }
        // A refused client reconnects every few hundred milliseconds: say so once a minute per key.
        let now = Self.now
        if now - (refusalsLogged[key] ?? 0) > 60 {
            if refusalsLogged.count > 10_000 { refusalsLogged = [:] }
            refusalsLogged[key] = now
            log(.notice, "refused a connection from an unenrolled key \(key.prefix(8))…")
        }
        return nil
    }

    private var refusalsLogged: [String: Double] = [:]

    // MARK: Events in, actions out

    private func receive(_ received: Received) {
        guard received.frames.count >= 2 else { return }
        let rid = received.frames[0]
        metrics.received(received.byteCount, worker: core.peers[rid]?.worker?.id, mode: nil)
        perform(
            core.handle(
                .received(rid, userId: received.userId, frames: Array(received.frames.dropFirst())), now: Self.now))
    }

    /// Performs the core's actions in order. Actions about a job are skipped once it has stopped (a journal that
    /// failed stops it midway through a list).
    func perform(_ actions: [CoordinatorCore.Action]) {
        for action in actions {
            switch action {
            case .send(let c, let m): send(c, m)
            case .serve(let c, let request): serve(c, request)
            case .saw(let record): try? store.saw(worker: record)
            case .log(let level, let text, let metadata): log(level, text, metadata)
            case .jobTraffic(_, let id), .begin(_, _, let id), .assign(_, _, _, _, let id), .accept(_, _, _, let id),
                .finish(_, _, _, let id), .complete(let id):
                guard let job = jobs[id] else { continue }
                performJobAction(action, job: job)
            }
        }
    }

    private func performJobAction(_ action: CoordinatorCore.Action, job: any RunningJob) {
        let now = Self.now
        switch action {
        case .jobTraffic(let bytes, _):
            metrics.received(bytes, worker: nil, mode: job.record.mode)
            job.countBytes(bytes)
        case .begin(.step, _, _): (job as? SyncJob)?.startStep(now: now)
        case .begin(.round, _, _): (job as? RoundJob)?.startRound(now: now)
        case .begin(.evaluation, let after, _):
            (job as? EvaluationJob)?.select(after)
            if let plan = job.prepared.validationPlan {
                job.evaluation = Evaluation(step: after, plan: plan, length: job.prepared.config.sequenceLength)
            }
        case .assign(let c, let a, let kind, let unit, _):
            guard let m = assignment(a, kind, unit: unit, of: job) else { return }
            job.countBytes(send(c, m, mode: job.record.mode))
        case .accept(_, .step, let r, _):
            (job as? SyncJob)?.add(
                gradient: r.values, loss: r.loss, tokens: r.tokens, seconds: r.seconds, worker: r.worker)
        case .accept(let a, .round, let r, _):
            (job as? RoundJob)?.add(
                delta: r.values, loss: r.loss, tokens: r.tokens, seconds: r.seconds, rows: a.rows.count,
                worker: r.worker)
        case .accept(_, .evaluation, let r, _): job.evaluation?.add(loss: r.loss, tokens: r.tokens)
        case .finish(.step, _, let rows, _):
            guard let sync = job as? SyncJob else { return }
            let (record, checkpoint) = sync.finishStep(now: now, rows: rows)
            journal(job, record: record, checkpoint: checkpoint)
        case .finish(.round, _, _, _):
            guard let rounds = job as? RoundJob else { return }
            let (record, checkpoint) = rounds.finishRound(now: now)
            journal(job, record: record, checkpoint: checkpoint)
        case .finish(.evaluation, _, _, _):
            guard let evaluation = job.evaluation else { return }
            job.evaluation = nil
            journalEvaluation(evaluation, of: job)
        case .complete: complete(job)
        case .send, .serve, .saw, .log: break
        }
    }

    /// Sends a message; `mode` is the job's when it carries a job's training work (for the traffic counters).
    @discardableResult
    func send(_ c: CoordinatorCore.Connection, _ message: Message, mode: String? = nil) -> Int {
        guard let router else { return 0 }
        let frames = message.encode()
        do {
            try router.send([c] + frames)
            let bytes = frames.reduce(0) { $0 + $1.count }
            metrics.sent(bytes, worker: core.peers[c]?.worker?.id, mode: mode, blob: message.type == .chunk)
            return bytes
        } catch {
            if error.kind == .unreachable {
                perform(core.handle(.unreachable(c), now: Self.now))
            } else {
                log(.warning, "cannot send \(message.type) to \(core.peers[c]?.label ?? "a peer"): \(error)")
            }
            return 0
        }
    }

    func fail(_ c: CoordinatorCore.Connection, _ code: String, _ text: String) {
        send(c, ErrorReport(code: code, text: text).message)
    }

    /// The message that hands an assignment to its worker, with the job's parameters and rows.
    private func assignment(_ a: Assignment, _ kind: WorkKind, unit: Int, of job: any RunningJob) -> Message? {
        switch kind {
        case .step, .evaluation:
            // The rows of a step, or of the evaluation after step (or round) `unit`, with the current parameters.
            let batch: TrainingBatch
            if kind == .step {
                guard let sync = job as? SyncJob else { return nil }
                batch = sync.batch(rows: a.rows)
            } else {
                guard let evaluation = job.evaluation else { return nil }
                batch = evaluation.batch(rows: a.rows)
            }
            return StepAssignment(
                evaluation: kind == .evaluation, job: job.id, assignment: a.id, step: unit, rows: a.rows.count,
                parameters: Tensor(name: "parameters", floats: UnsafeBufferPointer(job.adapter.parameters.buffer)),
                rowTensors: Self.rowTensors(batch)
            ).message
        case .round:
            guard let rounds = job as? RoundJob else { return nil }
            return RoundAssignment(
                job: job.id, assignment: a.id, round: unit, firstStep: (unit - 1) * rounds.innerSteps,
                steps: rounds.stepsThisRound, rowsPerStep: job.prepared.rowsPerStep,
                parameters: rounds.parametersTensor(), rowTensors: rounds.batch(rows: a.rows.count).map(Self.rowTensors)
            ).message
        }
    }

    static func rowTensors(_ batch: TrainingBatch) -> RowTensors {
        RowTensors(
            tokens: batch.tokens, targets: batch.targets, positions: batch.positions, starts: batch.documentStarts)
    }
}
