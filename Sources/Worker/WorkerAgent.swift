// WorkerAgent: a cluster worker. One loop thread owns the DEALER socket: it says hello (cores, memory, a
// measured sgemm rate), heartbeats, fetches the blobs a job needs into its cache (credit-based, resumable,
// SHA-256-verified), and hands assignments to one compute thread, which runs the training engine on the rows
// with the coordinator's parameters and returns the gradient of the summed loss. Silence from the coordinator
// past the liveness window means reconnect, with exponential backoff; the loaded model and cached blobs
// survive, so a restarted coordinator gets the worker back ready. `stop()` finishes the assignment in hand,
// returns it, says bye and leaves.

import Foundation
import Llama
import ModelFormats
import TensorKernels
import Training
import Tokenizer
import Transport
import Wire

/// Why a worker stopped.
public struct WorkerError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Settings of a worker.
public struct WorkerOptions: Sendable {
    public var credentials: Credentials
    public var name: String
    /// Kernel threads (nil: all cores).
    public var threads: Int?
    /// Where blobs (base models) are cached.
    public var cacheDirectory: String
    /// This worker's own JSONL data, for federated jobs (it never leaves this machine).
    public var localData: String?
    /// Opens a connection (tests: an in-memory network); nil: ZeroMQ to `credentials`.
    public var connect: (@Sendable () throws(TransportError) -> DealerEndpoint)?

    public init(credentials: Credentials, name: String, cacheDirectory: String) {
        self.credentials = credentials
        self.name = name
        self.cacheDirectory = cacheDirectory
    }
}

/// A cluster worker.
public final class WorkerAgent: @unchecked Sendable {
    public let options: WorkerOptions
    private let log: @Sendable (String) -> Void
    private let blobs: BlobStore
    private let context = Context()
    private var socket: DealerEndpoint?
    private let lock = NSLock()
    private var stopRequested = false
    private var outbox: [Message] = []
    private var loaded: [LoadedJob] = []

    private var heartbeat = Double(Wire.heartbeatMilliseconds) / 1000
    private var liveness = Wire.heartbeatLiveness
    private var lastHeard = 0.0
    private var lastSent = 0.0
    private var connectedAt = 0.0
    private var backoff = 0.5
    private var welcomed = false
    private var gflops = 0.0
    private var lastChunk = 0.0
    /// When the model transfer in progress started (and from how many bytes), and when its progress was last logged.
    private var transferStarted = (time: 0.0, bytes: 0)
    private var transferLogged = 0.0
    private var failedFetches = 0
    private var localExamples = 0

    private var job: JobState?
    private var computing: Int?
    private var revoked: Set<Int> = []
    private var queued: [Message] = []

    /// A job's model and training session, once loaded.
    private final class LoadedJob: @unchecked Sendable {
        let id: String
        let session: TrainingSession
        let config: TrainingConfig
        /// Federated jobs: this worker's rows, and how far it has read them.
        let plan: RowPlan?
        var cursor = 0
        /// Compression error carried into the next round's pseudo-gradient.
        var errorFeedback: ErrorFeedback

        init(id: String, session: TrainingSession, config: TrainingConfig, plan: RowPlan?) {
            self.id = id
            self.session = session
            self.config = config
            self.plan = plan
            errorFeedback = ErrorFeedback(count: session.adapter.parameters.count)
        }
    }

    private struct JobState {
        var id: String
        var config: TrainingConfig
        /// The job's optimizer steps (its learning-rate schedule spans them).
        var totalSteps: Int
        var modelBlob: String
        var download: BlobDownload?
        var modelBytes = 0
        /// This process's claim on fetching the model into the shared cache.
        var claim: BlobStore.Claim?
        var waitingForPeer = false
        var loading = false
        var ready = false
        /// This worker cannot take part (reported to the coordinator); nothing more is tried for the job.
        var failed = false
    }

    public init(options: WorkerOptions, log: @escaping @Sendable (String) -> Void) throws(WorkerError) {
        self.options = options
        self.log = log
        do { blobs = try BlobStore(root: (options.cacheDirectory as NSString).appendingPathComponent("blobs")) } catch {
            throw WorkerError("\(error)")
        }
        if let local = options.localData {
            // Read now, so a bad file is reported before joining, with its line.
            do { localExamples = try Dataset(path: local).records.count } catch { throw WorkerError(error.description) }
            guard localExamples > 0 else { throw WorkerError("\(local) holds no records") }
        }
    }

    /// Asks the worker to leave after returning the assignment in hand.
    public func stop() { lock.withLock { stopRequested = true } }
    private var shouldStop: Bool { lock.withLock { stopRequested } }

    static var now: Double { Date().timeIntervalSince1970 }

    /// Runs until `stop()`.
    ///
    /// - Throws: `WorkerError` when the coordinator refuses this worker's key.
    public func run() throws(WorkerError) {
        if let t = options.threads { Parallel.threadCount = t }
        gflops = Self.measureGFLOPs()
        log("kernel throughput \(String(format: "%.1f", gflops)) GFLOP/s on \(Parallel.threadCount) threads")
        var nextAttempt = 0.0
        var leaving = false
        while true {
            let now = Self.now
            if shouldStop, !leaving {
                leaving = true
                if computing != nil { log("stopping: finishing the assignment in hand first") }
            }
            if leaving, computing == nil {
                if let socket, welcomed {
                    flushOutbox()
                    try? socket.send(Message(.bye, ["reason": "stopped"]).encode())
                    Thread.sleep(forTimeInterval: 0.05)
                }
                close()
                log("left the cluster")
                return
            }
            if socket == nil {
                if now >= nextAttempt {
                    connect(now: now)
                } else {
                    Thread.sleep(forTimeInterval: min(0.05, nextAttempt - now))
                    continue
                }
            }
            guard let socket else { continue }
            do {
                if let first = try socket.receive(timeoutMilliseconds: 20) {
                    handle(first.frames, now: Self.now)
                    while let r = try socket.receiveNow() { handle(r.frames, now: Self.now) }
                }
            } catch {
                log("transport error: \(error)")
            }
            if socket.refused() {
                close()
                throw WorkerError(
                    "the coordinator refused this worker's key (not enrolled, or revoked); join again with a new token")
            }
            flushOutbox()
            let t = Self.now
            // Heartbeats even before `welcome` (a coordinator that lost our hello answers `hello_first`).
            if t - lastSent >= heartbeat { send(Message(.heartbeat)) }
            // Another worker on this machine was fetching the model: see whether it is there now (or whether the
            // other worker died and left its claim, in which case this one resumes the transfer).
            if job?.waitingForPeer == true { startFetch() }
            // A blob transfer that stopped moving (a request or chunk was lost): ask again from what we have.
            if var d = job?.download, !d.outstanding.isEmpty, t - lastChunk > max(2, 5 * heartbeat) {
                d.reset()
                job?.download = d
                lastChunk = t
                requestChunks()
            }
            let silent = t - max(lastHeard, connectedAt)
            if silent > heartbeat * Double(liveness) {
                log(
                    welcomed
                        ? "the coordinator is silent (\(String(format: "%.1f", silent)) s); reconnecting"
                        : "no answer from \(options.credentials.endpoint) yet; retrying")
                close()
                nextAttempt = t + backoff
                backoff = min(backoff * 2, 30)
            }
        }
    }

    private func connect(now: Double) {
        do {
            socket = try options.connect?() ?? ZMQDealer(context: context, credentials: options.credentials)
            connectedAt = now
            welcomed = false
            job?.download?.reset()
            sayHello()
        } catch {
            log("cannot connect to \(options.credentials.endpoint): \(error)")
            close()
        }
    }

    private func sayHello() {
        send(
            Message(
                .hello,
                [
                    "name": .string(options.name),
                    "cores": .integer(Int64(ProcessInfo.processInfo.activeProcessorCount)),
                    "memory": .integer(Int64(ProcessInfo.processInfo.physicalMemory)), "gflops": .number(gflops),
                    "threads": .integer(Int64(Parallel.threadCount)),
                    "host": .string(String(ProcessInfo.processInfo.hostName.prefix(256))),
                    "local_examples": localExamples > 0 ? .integer(Int64(localExamples)) : .null,
                ]))
    }

    private func close() {
        socket?.close()
        socket = nil
        welcomed = false
    }

    private func send(_ m: Message) {
        guard let socket else { return }
        do {
            try socket.send(m.encode())
            lastSent = Self.now
        } catch {
            log("cannot send \(m.type): \(error)")
        }
    }

    private func post(_ m: Message) { lock.withLock { outbox.append(m) } }

    private func flushOutbox() {
        let messages = lock.withLock {
            let m = outbox
            outbox = []
            return m
        }
        for m in messages {
            if [.result, .roundResult, .evalResult].contains(m.type) {
                let id = m.int("assignment")
                computing = nil
                if revoked.remove(id) != nil { continue }
            }
            if m.type == .ready { job?.ready = true; job?.loading = false }
            if m.type == .error {
                // A local failure (the model would not load): logged here and reported, so the coordinator leaves
                // this worker out of the job and says why.
                log(m.string("message"))
                job?.loading = false
                job?.failed = true
            }
            send(m)
        }
        if computing == nil, !queued.isEmpty { startAssignment(queued.removeFirst()) }
    }

    // MARK: Messages

    private func handle(_ frames: [[UInt8]], now: Double) {
        lastHeard = now
        backoff = 0.5
        let m: Message
        do { m = try Message.decode(frames) } catch {
            log("dropped a message from the coordinator: \(error)")
            return
        }
        switch m.type {
        case .welcome:
            welcomed = true
            heartbeat = Double(m.int("heartbeat_ms")) / 1000
            liveness = m.int("liveness")
            log("connected to \(options.credentials.endpoint) as \(m.string("worker"))")
        case .job: receiveJob(m)
        case .chunk: receiveChunk(m)
        case .assign, .roundAssign, .evaluate:
            if computing == nil { startAssignment(m) } else { queued.append(m) }
        case .revoke:
            // Assignment 0: every assignment of the job (it was cancelled).
            let id = m.int("assignment")
            if let c = computing, id == 0 || c == id { revoked.insert(c) }
            queued.removeAll { id == 0 ? $0.string("job") == m.string("job") : $0.int("assignment") == id }
        case .error:
            if m.string("code") == "hello_first" {
                sayHello()
            } else {
                log("coordinator: \(m.string("message"))")
            }
        default: break
        }
    }

    private func receiveJob(_ m: Message) {
        let id = m.string("job")
        if let job, job.id == id, !job.failed {
            if job.ready { send(Message(.ready, ["job": .string(id)])) }
            return
        }
        var config = TrainingConfig()
        do { try config.apply(yaml: m.string("spec"), source: "\(id) job") } catch {
            log("cannot read \(id)'s settings: \(error)")
            return
        }
        let blob = m.string("model_blob")
        guard BlobStore.isHash(blob) else { return }
        // Coordinators before `total_steps` was sent: the spec's steps.
        let totalSteps = m.int("total_steps") > 0 ? m.int("total_steps") : max(1, config.steps)
        job = JobState(id: id, config: config, totalSteps: totalSteps, modelBlob: blob)
        if loaded.contains(where: { $0.id == id }) {
            job?.ready = true
            send(Message(.ready, ["job": .string(id)]))
            return
        }
        job?.modelBytes = m.int("model_bytes")
        startFetch()
    }

    /// Loads the job's model if cached; otherwise fetches it, unless another worker sharing this cache already
    /// is (then the tick checks back until the blob appears or the other's claim lapses).
    private func startFetch() {
        guard let job, job.download == nil, !job.loading, !job.ready, !job.failed else { return }
        let blob = job.modelBlob
        if blobs.contains(blob) {
            load()
            return
        }
        // A cache that cannot hold the model is said at once, not after filling the disk.
        let needed = job.modelBytes - blobs.partialSize(blob)
        if let free = BlobStore.freeBytes(atPath: blobs.root), free < needed {
            fault(
                "cache",
                "the cache \(options.cacheDirectory) has \(Self.size(free)) free and the model needs "
                    + "\(Self.size(needed)); free space there, or start the worker with --cache on a roomier disk")
            return
        }
        guard let claim = blobs.claim(blob) else {
            if !job.waitingForPeer { log("another worker on this machine is fetching the model; waiting for it") }
            self.job?.waitingForPeer = true
            return
        }
        if blobs.contains(blob) {
            claim.release()
            load()
            return
        }
        self.job?.waitingForPeer = false
        self.job?.claim = claim
        let have = blobs.partialSize(blob)
        log(
            "fetching the model (\(job.modelBytes >> 20) MiB" + (have > 0 ? ", resuming at \(have >> 20) MiB)" : ")"))
        self.job?.download = BlobDownload(hash: blob, total: job.modelBytes, received: have)
        lastChunk = Self.now
        transferStarted = (lastChunk, have)
        transferLogged = lastChunk
        requestChunks()
    }

    /// Reports that this worker cannot take part in the current job, and stops trying.
    private func fault(_ code: String, _ message: String) {
        guard let id = job?.id else { return }
        log("cannot take part in \(id): \(message)")
        job?.failed = true
        send(Message(.error, ["code": .string(code), "job": .string(id), "message": .string(message)]))
    }

    static func size(_ bytes: Int) -> String {
        bytes >= 1 << 20 ? String(format: "%.1f MiB", Double(bytes) / 1048576) : "\(max(0, bytes) >> 10) KiB"
    }

    private func requestChunks() {
        guard var d = job?.download else { return }
        if d.isComplete {
            job?.download = nil
            defer {
                job?.claim?.release()
                job?.claim = nil
            }
            do { try blobs.completePartial(d.hash) } catch {
                failedFetches += 1
                guard failedFetches < 3 else {
                    fault("cache", "\(error); gave up on this job's model after three tries")
                    return
                }
                log("\(error); fetching again")
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

    private func receiveChunk(_ m: Message) {
        guard var d = job?.download else { return }
        lastChunk = Self.now
        let bytes: [UInt8]
        do { bytes = try d.accept(m) } catch {
            log("dropped a chunk: \(error)")
            return
        }
        if !bytes.isEmpty {
            do { try blobs.appendPartial(d.hash, bytes) } catch {
                // The cache cannot take it (a full disk, a read-only directory): retrying would not help.
                job?.download = nil
                job?.claim?.release()
                job?.claim = nil
                fault("cache", "cannot write the model into the cache \(options.cacheDirectory): \(error)")
                return
            }
        }
        job?.download = d
        logTransfer(d)
        requestChunks()
    }

    /// A line every 10 s while the model arrives: how far, how fast, how long still.
    private func logTransfer(_ d: BlobDownload) {
        let now = Self.now
        guard now - transferLogged >= 10, !d.isComplete else { return }
        transferLogged = now
        let rate = Double(d.received - transferStarted.bytes) / max(1e-3, now - transferStarted.time)
        let left = rate > 0 ? Double(d.total - d.received) / rate : 0
        log(
            String(
                format: "fetching the model: %d%% (%@ of %@) · %.1f MiB/s · %.0f s left",
                Int(100 * Double(d.received) / Double(max(1, d.total))), Self.size(d.received), Self.size(d.total),
                rate / 1_048_576, left))
    }

    /// Loads the job's model and builds its session on a background thread; posts `ready` when done.
    private func load() {
        guard let job, !job.loading else { return }
        self.job?.loading = true
        let path = blobs.path(job.modelBlob)
        let config = job.config
        let id = job.id
        let totalSteps = job.totalSteps
        log("loading the model for \(id)")
        Thread.detachNewThread { [self] in
            do {
                let source = ModelSource.gguf(path)
                let lm = try LanguageModel.load(
                    source, precision: config.resolvedBasePrecision(model: try source.config()))
                let adapter = LoRAAdapter(model: lm.model.config, config: config.lora, seed: config.seed)
                let recompute = config.recomputes(
                    model: lm.model.config, adapter: adapter, precision: lm.model.weights.precision)
                // The job's own optimizer settings: diloco and federated rounds take local AdamW steps.
                let session = TrainingSession(
                    model: lm.model, adapter: adapter, config: config, totalSteps: totalSteps, recompute: recompute)
                var plan: RowPlan?
                if config.mode == .federated {
                    guard let local = options.localData else {
                        throw WorkerError("\(id) is a federated job and this worker has no --data")
                    }
                    var c = config
                    c.data = local
                    plan =
                        try JobRows.load(
                            config: c, tokenizer: try lm.requireTokenizer(),
                            template: ChatTemplate.forJob(override: c.chatTemplate, source: lm.chatTemplateSource)
                        ).train
                }
                let weights = lm.model.weights
                log(
                    "loaded \(id): base \(weights.precision == .q ? "kept quantised" : "in fp32") "
                        + "(\(weights.residentBytes >> 20) MiB), activations \(recompute ? "recomputed" : "kept")")
                let job = LoadedJob(id: id, session: session, config: config, plan: plan)
                lock.withLock { loaded = [job] }
                post(Message(.ready, ["job": .string(id)]))
            } catch {
                post(
                    Message(
                        .error,
                        [
                            "code": "load", "job": .string(id),
                            "message": .string("cannot load the model for \(id): \(error)"),
                        ]))
            }
        }
    }

    private func startAssignment(_ m: Message) {
        let jobId = m.string("job")
        guard let loadedJob = lock.withLock({ loaded.first { $0.id == jobId } }) else {
            log("assignment for \(jobId), which is not loaded here; ignored")
            return
        }
        if m.type == .roundAssign {
            startRound(m, loadedJob)
            return
        }
        // `assign` (a step's rows: the gradient of their summed loss) and `evaluate` (held-out rows: their loss,
        // forward only) carry the same fields and tensors.
        let evaluate = m.type == .evaluate
        let session = loadedJob.session
        let size = loadedJob.config.batchSize
        guard let params = m.tensor("parameters"), params.dtype == .f32,
            params.count == session.adapter.parameters.count,
            let batch = Self.rows(of: m, count: m.int("rows"), length: loadedJob.config.sequenceLength, model: session)
        else {
            log("dropped a malformed \(evaluate ? "evaluation" : "assignment") (tensor sizes, or ids out of range)")
            return
        }
        let assignment = m.int("assignment")
        let step = m.int("step")
        computing = assignment
        Thread.detachNewThread { [self] in
            let started = Self.now
            let p = params.floats()
            // Rounds start from the parameters the coordinator sends, so an evaluation between them overwrites
            // nothing a diloco or federated worker still needs.
            session.adapter.parameters.pointer.update(from: p, count: p.count)
            let loss: StepLoss
            var tensors: [Tensor] = []
            if evaluate {
                // Batches of the training shape, so the training workspace serves them.
                loss = session.evaluate(batch.split(maxRows: size).map { $0.padded(toRows: size, padId: 0) })
            } else {
                loss = session.computeGradients(batch.split(maxRows: size), normalize: false)
                tensors = [Tensor(name: "gradient", floats: UnsafeBufferPointer(session.gradients.buffer))]
            }
            post(
                Message(
                    evaluate ? .evalResult : .result,
                    [
                        "job": .string(jobId), "assignment": .integer(Int64(assignment)), "step": .integer(Int64(step)),
                        "loss": .number(loss.sum), "tokens": .integer(Int64(loss.tokens)),
                        "seconds": .number(Self.now - started),
                    ], tensors: tensors))
        }
    }

    /// The rows an assignment carries, or nil when its tensors are not `count` rows of `length` tokens or hold
    /// ids the model cannot index (untrusted input: it must be checked before it reaches the kernels).
    static func rows(of m: Message, count: Int, length: Int, model session: TrainingSession) -> TrainingBatch? {
        let n = count * length
        guard let t = m.tensor("tokens"), t.dtype == .i32, t.count == n, let g = m.tensor("targets"), g.dtype == .i32,
            g.count == n, let p = m.tensor("positions"), p.dtype == .i32, p.count == n,
            let s = m.tensor("starts"), s.dtype == .i32, s.count == n
        else { return nil }
        let batch = TrainingBatch(
            batch: count, length: length, tokens: t.ints(), targets: g.ints(), positions: p.ints(),
            documentStarts: s.ints())
        return batch.isValid(vocabularySize: session.model.config.vocabSize) ? batch : nil
    }

    /// A diloco or federated round: local AdamW steps from the global adapter, then the compressed
    /// pseudo-gradient (global − local, plus the error left over from the last round).
    private func startRound(_ m: Message, _ job: LoadedJob) {
        let session = job.session
        let config = job.config
        let n = session.adapter.parameters.count
        let steps = m.int("steps")
        let perStep = m.int("rows_per_step")
        let compression = Compression(rawValue: config.compression.rawValue) ?? .int8
        let sent =
            job.plan == nil
            ? Self.rows(of: m, count: steps * perStep, length: config.sequenceLength, model: session) : nil
        guard let params = m.tensor("parameters"), params.count == n, params.dtype == .f32 || params.dtype == .bf16,
            job.plan != nil || sent != nil
        else {
            log("dropped a malformed round assignment (tensor sizes, or ids out of range)")
            return
        }
        let assignment = m.int("assignment")
        computing = assignment
        Thread.detachNewThread { [self] in
            let started = Self.now
            let (loss, delta) = session.localRound(
                from: params.floats(), steps: steps, firstStep: m.int("first_step"), microBatch: config.batchSize
            ) { h in
                guard let plan = job.plan else { return sent!.rows(h * perStep..<(h + 1) * perStep) }
                defer { job.cursor += perStep }
                return plan.batch(from: job.cursor, count: perStep)
            }
            let corrected = job.errorFeedback.corrected(delta)
            let tensors = corrected.withUnsafeBufferPointer { compression.encode($0, name: "delta") }
            job.errorFeedback.carry(sent: corrected, arrived: compression.decode(tensors, name: "delta", count: n))
            post(
                Message(
                    .roundResult,
                    [
                        "job": .string(job.id), "assignment": .integer(Int64(assignment)),
                        "round": .integer(Int64(m.int("round"))), "loss": .number(loss.sum),
                        "tokens": .integer(Int64(loss.tokens)), "seconds": .number(Self.now - started),
                    ], tensors: tensors))
        }
    }

    /// sgemm GFLOP/s on a 256³ product (what the coordinator splits work by until it has measured steps).
    static func measureGFLOPs() -> Double {
        let n = 256
        let a = [Float](repeating: 0.5, count: n * n)
        var c = [Float](repeating: 0, count: n * n)
        let clock = ContinuousClock()
        var best = Double.infinity
        for _ in 0..<5 {
            let t = clock.measure {
                c.withUnsafeMutableBufferPointer { matmul($0.baseAddress!, a, a, M: n, N: n, K: n) }
            }
            best = min(best, Double(t.components.seconds) + Double(t.components.attoseconds) * 1e-18)
        }
        return 2 * Double(n * n * n) / max(best, 1e-9) / 1e9
    }
}
