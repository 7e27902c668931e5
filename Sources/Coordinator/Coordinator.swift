// Coordinator: the runner around the store, the job and the step bookkeeping. One thread: it polls the ROUTER
// socket and the ZAP handler, handles each message, then ticks (heartbeats, lost workers, deadlines,
// scheduling, journaling). Every message is decoded and validated by Wire before anything trusts it; a peer
// may only send the messages of its role (an enrolment key: only `enrol`); a peer that keeps sending bad
// messages is ignored for the rest of its connection.
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

/// Why the coordinator cannot start.
public struct CoordinatorError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Settings of a coordinator.
public struct CoordinatorOptions: Sendable {
    public var stateDirectory: String
    /// ZeroMQ endpoint to bind, e.g. tcp://0.0.0.0:7070 (tcp://127.0.0.1:* picks a free port).
    public var listen: String
    /// No CURVE, no keys (loopback only).
    public var insecure = false
    public var heartbeatMilliseconds = Wire.heartbeatMilliseconds
    public var liveness = Wire.heartbeatLiveness
    /// Deadlines: an assignment is given up on after 3 × its expected time + this, and never sooner than this
    /// (seconds); before a worker's speed is measured, after `firstDeadline`.
    public var deadlineFloor = 10.0
    public var firstDeadline = 600.0
    /// Called at each point of journaling a step: `checkpoint` (its checkpoint blob stored, the database not yet
    /// told), `transaction` (inside the database transaction, half written), `cleanup` (committed, the previous
    /// checkpoint not yet removed), with the step. The chaos tests kill the process there; nil in normal use.
    public var journalProbe: (@Sendable (_ point: String, _ step: Int) -> Void)?
    /// Messages a second one connection may send (a burst of twice that), far above what workers and clients
    /// need (heartbeats, blob chunk requests, results); beyond it messages are dropped before decoding, so a
    /// flooding peer costs little and the others are served.
    public var messagesPerSecond = 500.0
    /// Where to serve the dashboard, JSON API and /metrics (HOST:PORT; port 0 picks one); nil: nowhere. Bound beyond
    /// loopback, the data routes need the bearer token in STATE/http-token.
    public var http: String?
    /// Whether failing to bind `http` stops the coordinator (an address the user asked for) or is only logged (the
    /// default address, which another coordinator on this machine may hold).
    public var httpRequired = true

    public init(stateDirectory: String, listen: String) {
        self.stateDirectory = stateDirectory
        self.listen = listen
    }
}

/// Files of a state directory.
public enum StateFiles {
    public static func server(_ dir: String) -> String { (dir as NSString).appendingPathComponent("server.json") }
    public static func client(_ dir: String) -> String { (dir as NSString).appendingPathComponent("client.json") }
    public static func blobs(_ dir: String) -> String { (dir as NSString).appendingPathComponent("blobs") }

    /// Whether an endpoint is on this machine only (loopback TCP, IPC, inproc).
    public static func isLoopback(_ endpoint: String) -> Bool {
        endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") || endpoint.hasPrefix("tcp://127.")
            || endpoint.hasPrefix("tcp://localhost:") || endpoint.hasPrefix("tcp://[::1]:")
    }

    /// The coordinator's CURVE key pair, created the first time by whichever comes first: the coordinator or a
    /// token issued before it ever started (both may run at once; the file is created once).
    static func serverKeys(_ dir: String, listen: String) throws(CoordinatorError) -> CurveKeyPair {
        for _ in 0..<2 {
            if let existing = try? Credentials.load(from: server(dir)), let keys = existing.keys { return keys }
            do {
                let keys = try CurveKeyPair.generate()
                if try Credentials(endpoint: listen, serverKey: keys.publicKey, keys: keys).saveIfAbsent(
                    to: server(dir))
                {
                    return keys
                }
            } catch { throw CoordinatorError("cannot create the coordinator's keys in \(dir): \(error)") }
        }
        throw CoordinatorError("\(server(dir)) holds no key pair; remove it to have a new one made")
    }

    /// Issues a join token (beside a live coordinator, or before its first start: the store is shared through
    /// SQLite, and the key pair is made by whichever comes first).
    public static func issueToken(stateDirectory dir: String, role: String, validFor seconds: Double)
        throws(CoordinatorError) -> JoinToken
    {
        if let existing = try? Credentials.load(from: server(dir)), existing.keys == nil {
            throw CoordinatorError("the coordinator in \(dir) runs without keys (--insecure); it needs no tokens")
        }
        let key = try serverKeys(dir, listen: "").publicKey
        let token = JoinToken.generate(serverKey: key)
        do {
            let store = try Store(directory: dir)
            try store.addToken(
                id: token.id, enrolKey: try token.enrolmentKeys().publicKey, role: role,
                expires: Date().timeIntervalSince1970 + seconds)
        } catch { throw CoordinatorError("cannot record the token: \(error)") }
        return token
    }
}

/// The coordinator process.
public final class Coordinator: @unchecked Sendable {
    public let options: CoordinatorOptions
    let store: Store
    let blobs: BlobStore
    let serverKeys: CurveKeyPair?
    private let context = Context()
    private var router: RouterEndpoint?
    var peers: [[UInt8]: Peer] = [:]
    var job: (any RunningJob)?
    /// The running job's schedule: what to compute, by whom, and when a unit is complete.
    var schedule: JobSchedule?
    /// What this process has counted (traffic, step times, transfers, shares).
    var metrics = CoordinatorMetrics()
    /// The dashboard, JSON API and /metrics; requests wait in the mailbox for this thread to answer them.
    var httpServer: HTTPServer?
    let mailbox = HTTPMailbox()
    /// Where the dashboard is served (HOST:PORT), when it is.
    public internal(set) var dashboardAddress: String?
    private var failedToLoad: Set<String> = []
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
        let dir = options.stateDirectory
        do {
            store = try Store(directory: dir)
            blobs = try BlobStore(root: StateFiles.blobs(dir))
        } catch { throw CoordinatorError("\(error)") }
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
            if let keys { try store.addKey(keys.publicKey, role: "client", name: "local") }
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
                    handle(m)
                    handled += 1
                }
                tick(now: Self.now)
                answerHTTPRequests()
            } catch {
                if error.kind == .closed { break }
                log(.warning, "transport error: \(error)")
            }
        }
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

    // MARK: Messages

    private func handle(_ received: Received) {
        guard received.frames.count >= 2 else { return }
        let rid = received.frames[0]
        let now = Self.now
        var peer = peers[rid] ?? Peer(routingId: rid, userId: received.userId, now: now, insecure: serverKeys == nil)
        guard !peer.ignored else { return }
        metrics.received(received.byteCount, worker: peer.worker?.id, mode: nil)
        // A token bucket per connection.
        let burst = 2 * options.messagesPerSecond
        peer.allowance = min(burst, peer.allowance + (now - peer.refilled) * options.messagesPerSecond)
        peer.refilled = now
        if peer.worker != nil { heartbeatGaps.record(now - peer.lastSeen) }
        guard peer.allowance >= 1 else {
            peer.dropped += 1
            messagesRateLimited += 1
            if now - peer.droppedLogged >= 5 {
                log(
                    .warning,
                    "rate-limited \(peer.label): dropped \(peer.dropped) messages so far (over "
                        + "\(Int(options.messagesPerSecond))/s)")
                peer.droppedLogged = now
            }
            peers[rid] = peer
            return
        }
        peer.allowance -= 1
        peer.lastSeen = now
        let message: Message
        do {
            message = try Message.decode(Array(received.frames.dropFirst()))
        } catch {
            peer.bad += 1
            messagesRejected += 1
            log(.warning, "dropped a message from \(peer.label): \(error)")
            if peer.bad >= Peer.badLimit {
                peer.ignored = true
                log(.warning, "ignoring \(peer.label) for the rest of its connection after \(peer.bad) bad messages")
            }
            peers[rid] = peer
            return
        }
        guard peer.role.allows(message.type) else {
            peer.bad += 1
            messagesRejected += 1
            log(.warning, "dropped \(message.type) from \(peer.label): not allowed for a \(peer.role.name)")
            peers[rid] = peer
            fail(rid, "forbidden", "\(message.type) is not allowed for a \(peer.role.name)")
            return
        }
        peers[rid] = peer
        if peer.worker == nil, [.heartbeat, .ready, .result, .roundResult, .evalResult].contains(message.type),
            peer.role != .client
        {
            // A worker this coordinator has not met (it restarted): ask it to say hello again.
            fail(rid, "hello_first", "unknown worker; send hello")
            return
        }
        if let job, [MessageType.result, .roundResult, .evalResult].contains(message.type) {
            metrics.received(received.byteCount, worker: nil, mode: job.record.mode)
            job.countBytes(received.byteCount)
        }
        switch message.type {
        case .enrol: enrol(rid, message)
        case .hello: hello(rid, message)
        case .heartbeat: break
        case .ready: ready(rid, message)
        case .result: result(rid, message, now: now)
        case .roundResult: roundResult(rid, message, now: now)
        case .evalResult: evalResult(rid, message)
        case .fetch: fetch(rid, message)
        case .bye: lose(rid, .left(reason: message.string("reason")))
        case .error: workerFault(rid, message)
        case .submit: submit(rid, message)
        case .status: status(rid, message)
        case .workers: send(rid, Message(.workersReply, ["body": workersBody()]))
        case .cancel: cancel(rid, message)
        case .pull: pull(rid, message)
        default: break
        }
    }

    @discardableResult
    private func send(_ rid: [UInt8], _ message: Message) -> Int {
        guard let router else { return 0 }
        let frames = message.encode()
        do {
            try router.send([rid] + frames)
            peers[rid]?.lastSent = Self.now
            let bytes = frames.reduce(0) { $0 + $1.count }
            let training = [MessageType.assign, .roundAssign, .evaluate].contains(message.type)
            metrics.sent(
                bytes, worker: peers[rid]?.worker?.id, mode: training ? job?.record.mode : nil,
                blob: message.type == .chunk)
            return bytes
        } catch {
            if error.kind == .unreachable {
                lose(rid, .unreachable)
            } else {
                log(.warning, "cannot send \(message.type) to \(peers[rid]?.label ?? "a peer"): \(error)")
            }
            return 0
        }
    }

    private func enrol(_ rid: [UInt8], _ m: Message) {
        guard case .enrol(let tokenId) = peers[rid]?.role else { return }
        let key = m.string("public_key")
        guard CurveKeyPair.isValidKey(key) else {
            fail(rid, "bad_key", "public_key is not a Z85 CURVE key")
            return
        }
        do {
            guard try store.redeemToken(id: tokenId, publicKey: key, name: m.string("name")) else {
                fail(rid, "token_used", "the token was used, revoked or expired; ask for a new one")
                return
            }
        } catch {
            fail(rid, "internal", "\(error)")
            return
        }
        log("enrolled \(m.string("name")) (key \(key.prefix(8))…) with token \(tokenId)")
        send(rid, Message(.enrolled, ["id": .string(String(key.prefix(8)))]))
    }

    private func hello(_ rid: [UInt8], _ m: Message) {
        guard var peer = peers[rid] else { return }
        let id = peer.key.map { String(FileHash.sha256(Array($0.utf8)).prefix(10)) } ?? "w-" + m.string("name")
        // The same worker reconnecting: its old connection's work goes back to the pool.
        for (other, p) in peers where other != rid && p.worker?.id == id { lose(other, .reconnected) }
        peer.worker = WorkerInfo(
            id: id, name: m.string("name"), cores: m.int("cores"), memory: m.int("memory"), gflops: m.double("gflops"),
            threads: m.int("threads"), localExamples: m.optionalInt("local_examples"), host: m.optionalString("host"))
        peers[rid] = peer
        try? store.saw(
            worker: WorkerRecord(
                id: id, name: m.string("name"), cores: m.int("cores"), memory: m.int("memory"),
                gflops: m.double("gflops"),
                lastSeen: Self.now, rows: 0))
        log(
            "worker \(m.string("name")) [\(id)] joined: \(m.int("cores")) cores, \(String(format: "%.1f", m.double("gflops"))) GFLOP/s"
        )
        send(
            rid,
            Message(
                .welcome,
                [
                    "worker": .string(id), "heartbeat_ms": .integer(Int64(options.heartbeatMilliseconds)),
                    "liveness": .integer(Int64(options.liveness)),
                ]))
        if let job { sendJob(rid, job) }
    }

    private func sendJob(_ rid: [UInt8], _ job: any RunningJob) {
        peers[rid]?.worker?.jobSentAt = Self.now
        send(
            rid,
            Message(
                .job,
                [
                    "job": .string(job.id), "spec": .string(job.prepared.config.yaml()),
                    "model_blob": .string(job.record.modelBlob),
                    "total_steps": .integer(Int64(job.prepared.totalSteps)),
                    "spec_version": .integer(Int64(Wire.jobSpecVersion)),
                    "model_bytes": .integer(Int64(blobs.size(job.record.modelBlob) ?? 0)),
                    "mode": .string(job.record.mode),
                ]))
    }

    /// A worker that cannot take part in a job (its cache is full, the model does not load): excluded from it, its
    /// rows handed to others, the reason shown by `cairn workers`.
    private func workerFault(_ rid: [UInt8], _ m: Message) {
        guard let worker = peers[rid]?.worker, let job, m.string("job") == job.id else { return }
        let text = String(m.string("message").prefix(500))
        peers[rid]?.worker?.fault = (job.id, "\(m.string("code")): \(text)")
        peers[rid]?.worker?.readyJob = nil
        log(.warning, "worker \(peers[rid]!.label) cannot take part in \(job.id) and is left out of it: \(text)")
        schedule(.gone(worker: worker.id), now: Self.now)
    }

    private func ready(_ rid: [UInt8], _ m: Message) {
        guard let job, m.string("job") == job.id, let w = peers[rid]?.worker else { return }
        peers[rid]?.worker?.readyJob = job.id
        log("worker \(peers[rid]!.label) is ready for \(job.id)")
        schedule(
            .ready(worker: w.id, gflops: w.gflops, rowsPerSecond: w.rowsPerSecond, localExamples: w.localExamples),
            now: Self.now)
    }

    private func result(_ rid: [UInt8], _ m: Message, now: Double) {
        guard let job = job as? SyncJob, m.string("job") == job.id, let worker = peers[rid]?.worker else { return }
        guard let g = m.tensor("gradient"), g.dtype == .f32, g.count == job.adapter.parameters.count else {
            log(.warning, "dropped a malformed gradient from \(worker.name); its rows go to others")
            peers[rid]?.bad += 1
            schedule(.malformed(worker: worker.id, assignment: m.int("assignment")), now: now)
            return
        }
        let event = JobSchedule.Event.result(
            worker: worker.id, assignment: m.int("assignment"), kind: .step, unit: m.int("step"),
            seconds: m.double("seconds"))
        schedule(event, now: now) { _ in
            job.add(
                gradient: g.floats(), loss: m.double("loss"), tokens: m.int("tokens"), seconds: m.double("seconds"),
                worker: worker.id)
        }
    }

    private func fetch(_ rid: [UInt8], _ m: Message) {
        let hash = m.string("blob")
        guard BlobStore.isHash(hash), let size = blobs.size(hash) else {
            fail(rid, "no_blob", "no blob \(hash.prefix(16))")
            return
        }
        let offset = m.int("offset")
        guard offset < size else {
            fail(rid, "bad_offset", "offset \(offset) is past the blob's end")
            return
        }
        do {
            let bytes = try blobs.read(hash, offset: offset, length: min(m.int("length"), size - offset))
            if let worker = peers[rid]?.worker {
                metrics.transfer(worker: worker.id, blob: hash, through: offset + bytes.count, of: size)
            }
            send(
                rid,
                Message(
                    .chunk, ["blob": .string(hash), "offset": .integer(Int64(offset)), "total": .integer(Int64(size))],
                    tensors: [Tensor(name: "data", dtype: .u8, shape: [bytes.count], bytes: bytes)]))
        } catch {
            fail(rid, "internal", "\(error)")
        }
    }

    /// Gaps between consecutive messages from workers (their heartbeats when nothing else is said), and workers
    /// declared gone for silence: what a load test watches.
    var heartbeatGaps = GapSamples()
    var workersDeclaredSilent = 0

    /// Messages dropped by the per-connection rate limit since this coordinator started.
    var messagesRateLimited = 0
    /// Messages refused since this coordinator started: malformed, or not allowed for the sender's role.
    var messagesRejected = 0
    /// How each worker's last connection ended (by worker id), for `cairn workers`.
    var departures: [String: Departure] = [:]

    private func lose(_ rid: [UInt8], _ why: Departure) {
        guard let peer = peers.removeValue(forKey: rid) else { return }
        guard let worker = peer.worker else { return }
        departures[worker.id] = why
        if case .silent = why { workersDeclaredSilent += 1 }
        let released = schedule(.gone(worker: worker.id), now: Self.now).reduce(0) {
            if case .released(let a, _) = $1 { return $0 + a.rows.count }
            return $0
        }
        log(
            .notice, "worker \(peer.label) \(why)" + (released == 0 ? "" : "; its \(released) rows go to others"),
            ["worker": "\(worker.id)", "departure": "\(why.name)"])
    }

    // MARK: Clients

    private func fail(_ rid: [UInt8], _ code: String, _ message: String) {
        send(rid, Message(.error, ["code": .string(code), "message": .string(message)]))
    }

    private func submit(_ rid: [UInt8], _ m: Message) {
        guard let data = m.tensor("data") else { return }
        let spec = m.string("spec")
        let dataName = m.string("data_name")
        var config = TrainingConfig()
        do { try config.apply(yaml: spec, source: "job file") } catch {
            fail(rid, "bad_job", error.description)
            return
        }
        let modelSource: ModelSource
        do { modelSource = try ModelSource.resolve(config.model) } catch {
            fail(rid, "bad_model", "model \(config.model) on the coordinator: \(error)")
            return
        }
        guard case .gguf(let modelPath) = modelSource else {
            fail(rid, "bad_model", "cluster jobs need a GGUF model file for now; \(config.model) is a directory")
            return
        }
        do {
            let dataBlob = try blobs.add(data.bytes)
            let modelBlob = try blobs.add(file: modelPath)
            var validation: (blob: String, name: String)?
            if let v = m.tensor("validation") {
                validation = (try blobs.add(v.bytes), m.optionalString("validation_name") ?? "validation_data")
            }
            let prepared = try PreparedJob.prepare(
                spec: spec, source: "job file", modelPath: blobs.path(modelBlob), dataPath: blobs.path(dataBlob),
                dataName: dataName, validation: validation.map { (blobs.path($0.blob), $0.name) })
            let id = try store.addJob(
                spec: spec, mode: prepared.config.mode.rawValue, modelBlob: modelBlob, dataBlob: dataBlob,
                dataName: dataName, validation: validation, totalSteps: prepared.units)
            let c = prepared.config
            log(
                c.mode == .sync
                    ? "\(id) submitted: sync, \(prepared.totalSteps) steps of \(prepared.rowsPerStep) rows × \(c.sequenceLength) tokens"
                    : "\(id) submitted: \(c.mode.rawValue), \(prepared.units) rounds of \(c.innerSteps) local steps × "
                        + "\(prepared.rowsPerStep) rows × \(c.sequenceLength) tokens, compression \(c.compression.rawValue)"
            )
            send(rid, Message(.submitted, ["job": .string(id)]))
        } catch let e as JobError {
            fail(rid, "bad_job", e.message)
        } catch {
            fail(rid, "internal", "\(error)")
        }
    }

    private func cancel(_ rid: [UInt8], _ m: Message) {
        let id = m.string("job")
        guard let record = try? store.job(id) else {
            fail(rid, "no_job", "no job \(id)")
            return
        }
        guard !record.state.isFinished else {
            fail(rid, "finished", "\(id) already \(record.state.rawValue)")
            return
        }
        if let job, job.id == id {
            let busy = schedule?.busyWorkers ?? []
            for (prid, p) in peers {
                if let w = p.worker, busy.contains(w.id) {
                    send(prid, Message(.revoke, ["job": .string(id), "assignment": 0]))
                }
            }
            stopJob()
        }
        try? store.setState(id, .cancelled)
        log("\(id) cancelled")
        send(rid, Message(.cancelled, ["job": .string(id)]))
    }

    private func pull(_ rid: [UInt8], _ m: Message) {
        let id = m.string("job")
        guard let record = try? store.job(id) else {
            fail(rid, "no_job", "no job \(id)")
            return
        }
        guard record.state == .done else {
            fail(
                rid, "not_done",
                "\(id) is \(record.state.rawValue) (\(record.step) of \(record.totalSteps) steps); pull it when it is done"
            )
            return
        }
        let files: [JSONValue] = record.outputs.sorted { $0.key < $1.key }.map { name, blob in
            ["name": .string(name), "blob": .string(blob), "bytes": .integer(Int64(blobs.size(blob) ?? 0))]
        }
        send(rid, Message(.pullReply, ["job": .string(id), "files": .array(files)]))
    }

    private func status(_ rid: [UInt8], _ m: Message) {
        guard let only = m.optionalString("job") else {
            send(rid, Message(.statusReply, ["body": statusBody()]))
            return
        }
        guard
            let detail = jobDetail(
                only, after: m.optionalInt("after"), limit: Self.maxStepsInStatus, byteBudget: Self.statusStepBytes)
        else {
            fail(rid, "no_job", "no job \(only)")
            return
        }
        send(
            rid,
            Message(
                .statusReply,
                ["body": ["jobs": [.object(detail)], "workers": workersBody(), "coordinator": coordinatorHealth()]]))
    }

    // MARK: Tick

    private func tick(now: Double) {
        let interval = Double(options.heartbeatMilliseconds) / 1000
        for (rid, p) in peers {
            if now - p.lastSeen > interval * Double(options.liveness) {
                lose(rid, .silent(seconds: now - p.lastSeen))
            } else if p.worker != nil, now - p.lastSent >= interval {
                send(rid, Message(.heartbeat))
            }
        }
        // A worker not ready for the running job long after it was told (the `job` or its `ready` was lost): tell
        // it again. Workers treat a repeated `job` as a no-op, or answer `ready` again.
        if let job {
            for (rid, p) in peers {
                guard let w = p.worker, w.readyJob != job.id, w.fault?.job != job.id,
                    now - w.jobSentAt > max(2, 5 * interval)
                else { continue }
                sendJob(rid, job)
            }
        }
        if job == nil { activateNextJob() }
        schedule(.tick, now: now)
    }

    // MARK: Scheduling

    /// Hands an event to the running job's schedule and performs the actions it returns, in order (an `accept` by
    /// `accept`, which adds the result's payload); returns them. Stops early when an action ends the job.
    @discardableResult
    private func schedule(
        _ event: JobSchedule.Event, now: Double, accept: (Assignment) -> Void = { _ in }
    ) -> [JobSchedule.Action] {
        guard let job, var s = schedule else { return [] }
        let actions = s.handle(event, now: now)
        schedule = s
        for action in actions {
            guard self.job === job else { break }
            if case .accept(let a, _) = action { accept(a) } else { perform(action, job: job, now: now) }
        }
        return actions
    }

    private func perform(_ action: JobSchedule.Action, job: any RunningJob, now: Double) {
        switch action {
        case .begin(.step, _): (job as? SyncJob)?.startStep(now: now)
        case .begin(.round, _): (job as? RoundJob)?.startRound(now: now)
        case .begin(.evaluation, let after):
            if let plan = job.prepared.validationPlan {
                job.evaluation = Evaluation(step: after, plan: plan, length: job.prepared.config.sequenceLength)
            }
        case .assign(let a, let kind, let unit):
            guard let rid = peers.first(where: { $0.value.worker?.id == a.worker })?.key,
                let m = assignment(a, kind, unit: unit, of: job)
            else { return }
            job.countBytes(send(rid, m))
        case .revoke(let a, let kind):
            log(
                kind == .round
                    ? "\(name(of: a.worker)) missed the deadline of round \(job.step + 1); the round goes on without it"
                    : "assignment \(a.id) of \(kind == .step ? "step \(job.step + 1)" : "the evaluation") missed its "
                        + "deadline; its \(a.rows.count) rows go to others")
            if let rid = peers.first(where: { $0.value.worker?.id == a.worker })?.key {
                send(rid, Message(.revoke, ["job": .string(job.id), "assignment": .integer(Int64(a.id))]))
            }
        case .released, .accept: break
        case .ignore(let worker, let assignment, let kind):
            log(
                "ignored a \(kind.rawValue) result for assignment \(assignment) from \(name(of: worker)) (not outstanding)"
            )
        case .finish(.step, _, let rows):
            guard let sync = job as? SyncJob else { return }
            let (record, checkpoint) = sync.finishStep(now: now, rows: rows)
            journal(job, record: record, checkpoint: checkpoint)
        case .finish(.round, _, _):
            guard let rounds = job as? RoundJob else { return }
            let (record, checkpoint) = rounds.finishRound(now: now)
            journal(job, record: record, checkpoint: checkpoint)
        case .finish(.evaluation, _, _):
            guard let evaluation = job.evaluation else { return }
            job.evaluation = nil
            journalEvaluation(evaluation, of: job)
        case .complete: complete(job)
        }
    }

    /// The message that hands an assignment to its worker.
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
            return Message(
                kind == .step ? .assign : .evaluate,
                [
                    "job": .string(job.id), "assignment": .integer(Int64(a.id)), "step": .integer(Int64(unit)),
                    "rows": .integer(Int64(a.rows.count)),
                ],
                tensors: [Tensor(name: "parameters", floats: UnsafeBufferPointer(job.adapter.parameters.buffer))]
                    + Self.rowTensors(batch))
        case .round:
            guard let rounds = job as? RoundJob else { return nil }
            let steps = rounds.stepsThisRound
            return Message(
                .roundAssign,
                [
                    "job": .string(job.id), "assignment": .integer(Int64(a.id)), "round": .integer(Int64(unit)),
                    "first_step": .integer(Int64((unit - 1) * rounds.innerSteps)), "steps": .integer(Int64(steps)),
                    "rows_per_step": .integer(Int64(job.prepared.rowsPerStep)),
                ], tensors: [rounds.parametersTensor()] + (rounds.batch(rows: a.rows.count).map(Self.rowTensors) ?? []))
        }
    }

    static func rowTensors(_ batch: TrainingBatch) -> [Tensor] {
        [
            Tensor(name: "tokens", ints: batch.tokens), Tensor(name: "targets", ints: batch.targets),
            Tensor(name: "positions", ints: batch.positions), Tensor(name: "starts", ints: batch.documentStarts),
        ]
    }

    private func roundResult(_ rid: [UInt8], _ m: Message, now: Double) {
        guard let job = job as? RoundJob, m.string("job") == job.id, let worker = peers[rid]?.worker else { return }
        guard let delta = job.delta(of: m) else {
            log(
                "dropped a round result from \(worker.name) whose tensors do not fit the job; the round goes on without it"
            )
            peers[rid]?.bad += 1
            schedule(.malformed(worker: worker.id, assignment: m.int("assignment")), now: now)
            return
        }
        let event = JobSchedule.Event.result(
            worker: worker.id, assignment: m.int("assignment"), kind: .round, unit: m.int("round"),
            seconds: m.double("seconds"))
        schedule(event, now: now) { a in
            job.add(
                delta: delta, loss: m.double("loss"), tokens: m.int("tokens"), seconds: m.double("seconds"),
                rows: a.rows.count, worker: worker.id)
        }
    }

    private func evalResult(_ rid: [UInt8], _ m: Message) {
        guard let job, m.string("job") == job.id, let evaluation = job.evaluation, let worker = peers[rid]?.worker
        else { return }
        let event = JobSchedule.Event.result(
            worker: worker.id, assignment: m.int("assignment"), kind: .evaluation, unit: m.int("step"),
            seconds: m.double("seconds"))
        schedule(event, now: Self.now) { _ in evaluation.add(loss: m.double("loss"), tokens: m.int("tokens")) }
    }

    // MARK: Journal

    /// Journals a completed step or round: checkpoint blob first, then the step's row and the job's pointer in one
    /// transaction, then the previous checkpoint dropped.
    private func journal(_ job: any RunningJob, record: StepRecord, checkpoint: Checkpoint) {
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
            stopJob()
            return
        }
        metrics.observeStep(mode: job.record.mode, seconds: record.seconds)
        metrics.step(rows: record.shares)
        let shares = record.shares.sorted { $0.key < $1.key }.map { "\(name(of: $0.key))=\($0.value)" }.joined(
            separator: " ")
        log(
            "\(job.id) \(job.unitName) \(record.step)/\(job.units) loss \(String(format: "%.4f", record.loss)) "
                + "\(record.tokens) tok \(String(format: "%.2f", record.seconds)) s \(record.bytes >> 10) KiB [\(shares)]"
        )
    }

    private func journalEvaluation(_ evaluation: Evaluation, of job: any RunningJob) {
        let record = evaluation.record
        do { try store.journalEval(job: job.id, record) } catch {
            log(.error, "cannot journal the evaluation of \(job.id): \(error); stopping the job")
            try? store.setState(job.id, .failed, error: "cannot journal an evaluation: \(error)")
            stopJob()
            return
        }
        log(
            "\(job.id) eval after \(job.unitName) \(record.step): loss \(String(format: "%.4f", record.loss)) over "
                + "\(record.tokens) held-out tokens")
    }

    /// Drops the running job (cancelled, failed or done) and its schedule, keeping the speeds it measured for the
    /// next job.
    private func stopJob() {
        for (rid, p) in peers {
            if let id = p.worker?.id, let speed = schedule?.workers[id]?.rowsPerSecond {
                peers[rid]?.worker?.rowsPerSecond = speed
            }
        }
        job = nil
        schedule = nil
    }

    private var lastCheckpoint: [String: String] = [:]

    private func name(of workerId: String) -> String {
        peers.values.first { $0.worker?.id == workerId }?.worker?.name ?? workerId
    }

    private func activateNextJob() {
        guard let records = try? store.jobs() else { return }
        let runnable = records.filter { ($0.state == .running || $0.state == .queued) && !failedToLoad.contains($0.id) }
        guard let record = runnable.first(where: { $0.state == .running }) ?? runnable.first else { return }
        do {
            let j = try loadJob(record: record, blobs: blobs)
            try store.setState(record.id, .running)
            job = j as any RunningJob
            // Assignment ids start at a random point per run, so a result computed for an assignment of an earlier
            // run (before a restart) never matches one of this run. Stopped between a unit and its evaluation: the
            // evaluation runs first.
            schedule = JobSchedule(
                plan: j.plan, unit: j.step,
                evaluationPending: j.step > 0 && (try? store.lastEval(job: j.id))?.step != j.step,
                firstAssignment: Int.random(in: 1...(1 << 31)) << 20,
                deadlines: Deadlines(floor: options.deadlineFloor, first: options.firstDeadline))
            lastCheckpoint[j.id] = record.checkpointBlob
            log("\(j.id) running from \(j.unitName) \(j.step) of \(j.units)")
            for (rid, p) in peers where p.worker != nil { sendJob(rid, j) }
        } catch {
            failedToLoad.insert(record.id)
            log(.error, "\(record.id) cannot run: \(error)")
            try? store.setState(record.id, .failed, error: "\(error)")
        }
    }

    private func complete(_ job: any RunningJob) {
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
                baseBlob: job.record.modelBlob, dataBlob: job.record.dataBlob, steps: job.provenance().steps ?? job.step
            )
            log("\(job.id) done after \(job.step) \(job.unitName)s; `cairn pull \(job.id)` fetches the adapter")
        } catch {
            log(.error, "\(job.id) finished training but its adapter cannot be written: \(error)")
            try? store.setState(job.id, .failed, error: "cannot write the adapter: \(error)")
        }
        stopJob()
    }
}

/// What the coordinator knows of a connected worker.
struct WorkerInfo {
    var id: String
    var name: String
    var cores: Int
    var memory: Int
    var gflops: Double
    var threads: Int
    /// Examples of its own data (federated jobs), if it brought any.
    var localExamples: Int?
    /// The machine's host name, as it says.
    var host: String?
    /// The job whose model and data it has loaded.
    var readyJob: String?
    /// Measured rows per second (moving average) when the last job ended; the running job's schedule holds the
    /// current figure.
    var rowsPerSecond: Double?
    /// When the running job was last announced to it.
    var jobSentAt = 0.0
    /// A job it said it cannot take part in, and why.
    var fault: (job: String, message: String)?
}

/// A connection to the coordinator's ROUTER socket.
struct Peer {
    enum Role: Equatable {
        case worker, client, enrol(String), any

        var name: String {
            switch self {
            case .worker: "worker"
            case .client: "client"
            case .enrol: "enrolment key"
            case .any: "peer"
            }
        }

        func allows(_ t: MessageType) -> Bool {
            switch self {
            case .enrol: return t == .enrol
            case .worker:
                return [.hello, .heartbeat, .ready, .result, .roundResult, .evalResult, .fetch, .bye, .error].contains(
                    t)
            case .client: return [.submit, .status, .workers, .cancel, .pull, .fetch, .heartbeat].contains(t)
            case .any: return t != .enrol && Self.worker.allows(t) || Self.client.allows(t)
            }
        }
    }

    static let badLimit = 20

    let routingId: [UInt8]
    var key: String?
    var role: Role
    var lastSeen: Double
    var lastSent: Double
    var worker: WorkerInfo?
    var bad = 0
    var ignored = false
    /// Token bucket: messages it may still send now, when it was last refilled, how many were dropped.
    var allowance = 1000.0
    var refilled = 0.0
    var dropped = 0
    var droppedLogged = -1e9

    init(routingId: [UInt8], userId: String?, now: Double, insecure: Bool) {
        self.routingId = routingId
        lastSeen = now
        lastSent = now
        if insecure {
            role = .any
            return
        }
        let parts = (userId ?? "").split(separator: " ").map(String.init)
        switch parts.first {
        case "worker":
            role = .worker
            key = parts.count > 1 ? parts[1] : nil
        case "client":
            role = .client
            key = parts.count > 1 ? parts[1] : nil
        case "enrol" where parts.count > 1: role = .enrol(parts[1])
        default: role = .enrol("")
        }
    }

    var label: String {
        if let w = worker { return "\(w.name) [\(w.id)]" }
        return
            "\(role.name) \(key.map { String($0.prefix(8)) + "…" } ?? routingId.prefix(4).map { String(format: "%02x", $0) }.joined())"
    }
}

/// The last 65 536 gaps (seconds), for quantiles.
struct GapSamples {
    private var samples: [Double] = []
    private var next = 0
    private(set) var count = 0

    mutating func record(_ gap: Double) {
        count += 1
        if samples.count < 65536 {
            samples.append(gap)
        } else {
            samples[next] = gap
            next = (next + 1) % samples.count
        }
    }

    func quantile(_ q: Double) -> Double {
        guard !samples.isEmpty else { return 0 }
        let sorted = samples.sorted()
        return sorted[min(sorted.count - 1, Int(q * Double(sorted.count - 1)))]
    }
}

/// Why a worker's connection ended.
enum Departure: Sendable, Equatable, CustomStringConvertible {
    /// It said `bye`.
    case left(reason: String)
    /// Nothing heard from it for the liveness window.
    case silent(seconds: Double)
    /// Its connection refused a send (the process died, the TCP connection closed).
    case unreachable
    /// The same worker connected again; the old connection is dropped.
    case reconnected

    /// One word, for `cairn workers --json` and metrics.
    var name: String {
        switch self {
        case .left: "left"
        case .silent: "silent"
        case .unreachable: "unreachable"
        case .reconnected: "reconnected"
        }
    }

    var description: String {
        switch self {
        case .left(let reason): "left (\(reason))"
        case .silent(let seconds): "lost (silent for \(String(format: "%.1f", seconds)) s)"
        case .unreachable: "unreachable"
        case .reconnected: "reconnected"
        }
    }
}
