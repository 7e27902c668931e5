// WorkerAgent: a cluster worker process's runner. Its decisions (liveness, the job, the model transfer, which
// assignment runs) are WorkerSession's; this class turns the DEALER socket, two kinds of background thread and
// the wall clock into the session's events, and performs its actions: one loop thread owns the socket; loading a
// model and computing an assignment run on their own threads and report back through an inbox. Computing runs
// the training engine (Training: TrainingSession, its `localRound` for the round modes) on the coordinator's rows
// and parameters. Every job held has its own engine; jobs on one base share one loaded model, and their step
// assignments handed over together run as one `SharedPass`. `stop()` finishes the assignment in hand, returns it,
// says bye and leaves.

import Foundation
import Llama
import Logging
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
    private let logger: Logger
    private let blobs: BlobStore
    private let context = Context()
    private var socket: DealerEndpoint?
    private let lock = NSLock()
    private var stopRequested = false
    /// Events from the load and compute threads, for the loop thread.
    private var inbox: [WorkerSession.Event] = []
    /// The loaded jobs' engines, by job id.
    private var engines: [String: Engine] = [:]
    /// Loaded bases, by file and precision: one copy for every job on it.
    private var models: [String: LanguageModel] = [:]
    /// Passes shared by jobs on one base, by their job ids (they keep their workspaces from step to step).
    private var sharedPasses: [[String]: SharedPass] = [:]
    /// Loads run one at a time, so a second job on a base finds it loaded.
    private let loadLock = NSLock()
    private var localExamples = 0

    /// A job's model and training session, once loaded.
    private final class Engine: @unchecked Sendable {
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

    /// A worker; `logger` is where its log goes (default: nowhere; a library never prints).
    public init(
        options: WorkerOptions,
        logger: Logger = Logger(label: "cairn.worker", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws(WorkerError) {
        self.options = options
        self.logger = logger
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
        let gflops = Self.measureGFLOPs()
        logger.info("kernel throughput \(String(format: "%.1f", gflops)) GFLOP/s on \(Parallel.threadCount) threads")
        let info = ProcessInfo.processInfo
        var session = WorkerSession(
            machine: WorkerSession.Machine(
                name: options.name, cores: info.activeProcessorCount, memory: Int(info.physicalMemory), gflops: gflops,
                threads: Parallel.threadCount, host: info.hostName, localExamples: localExamples,
                endpoint: options.credentials.endpoint, cacheDirectory: options.cacheDirectory),
            cache: blobs)
        var stopSent = false
        // Performs the actions of one event; the events they lead to (a connection opened) are handled in turn.
        func feed(_ event: WorkerSession.Event) throws(WorkerError) -> Bool {
            var pending = [event]
            while !pending.isEmpty {
                for action in session.handle(pending.removeFirst(), now: Self.now) {
                    switch try perform(action) {
                    case .some(let next): pending.append(next)
                    case .none: break
                    }
                }
            }
            return session.finished
        }
        while true {
            let events = lock.withLock {
                defer { inbox = [] }
                return inbox
            }
            for e in events where try feed(e) { return }
            if shouldStop, !stopSent {
                stopSent = true
                if try feed(.stop) { return }
            }
            guard let socket else {
                if try feed(.tick) { return }
                Thread.sleep(forTimeInterval: 0.02)
                continue
            }
            do {
                if let first = try socket.receive(timeoutMilliseconds: 20) {
                    if try feed(.received(first.frames)) { return }
                    while let r = try socket.receiveNow() { if try feed(.received(r.frames)) { return } }
                    if try feed(.drained) { return }
                }
            } catch let e as WorkerError {
                throw e
            } catch {
                logger.warning("transport error: \(error)")
            }
            if socket.refused(), try feed(.refused) { return }
            // After reading what has arrived: a loop that was held up (a large result sent, a busy machine) does
            // not take the messages waiting for it for the coordinator's silence.
            if try feed(.tick) { return }
        }
    }

    /// Performs one action; returns the event it leads to, if any.
    private func perform(_ action: WorkerSession.Action) throws(WorkerError) -> WorkerSession.Event? {
        switch action {
        case .connect:
            do {
                socket = try options.connect?() ?? ZMQDealer(context: context, credentials: options.credentials)
                return .connected
            } catch {
                close()
                return .connectFailed("\(error)")
            }
        case .disconnect: close()
        case .send(let m):
            do { try socket?.send(m.encode()) } catch { logger.warning("cannot send \(m.type): \(error)") }
            // A bye is the last thing sent: give it a moment to leave before the socket closes.
            if m.type == .bye { Thread.sleep(forTimeInterval: 0.05) }
        case .load(let spec): load(spec)
        case .unload(let job): unload(job)
        case .compute(let works): compute(works)
        case .log(let level, let text): logger.log(level: level, "\(text)")
        case .leave: close()
        case .fail(let error):
            close()
            throw error
        }
        return nil
    }

    private func close() {
        socket?.close()
        socket = nil
    }

    private func post(_ event: WorkerSession.Event) { lock.withLock { inbox.append(event) } }

    /// Loads the job's model and builds its session on a background thread.
    private func load(_ spec: WorkerSession.JobSpec) {
        let localData = options.localData
        Thread.detachNewThread { [self] in
            let id = spec.id
            let config = spec.config
            do {
                let source = ModelSource.gguf(spec.modelPath)
                let precision = config.resolvedBasePrecision(model: try source.config())
                let baseKey = "\(spec.modelPath)|\(precision)"
                let lm: LanguageModel = try loadLock.withLock {
                    if let shared = lock.withLock({ models[baseKey] }) { return shared }
                    let lm = try LanguageModel.load(source, precision: precision)
                    lock.withLock { models[baseKey] = lm }
                    return lm
                }
                let adapter = LoRAAdapter(model: lm.model.config, config: config.lora, seed: config.seed)
                let activations = config.activationPlan(
                    model: lm.model.config, adapter: adapter, baseBytes: lm.model.weights.residentBytes)
                // The job's own optimizer settings: diloco and federated rounds take local AdamW steps.
                let session = TrainingSession(
                    model: lm.model, adapter: adapter, config: config, totalSteps: spec.totalSteps,
                    keptLayers: activations.keptLayers)
                var plan: RowPlan?
                if config.mode == .federated {
                    guard let localData else {
                        throw WorkerError("\(id) is a federated job and this worker has no --data")
                    }
                    var c = config
                    c.data = localData
                    plan =
                        try JobRows.load(
                            config: c, tokenizer: try lm.requireTokenizer(),
                            template: ChatTemplate.forJob(override: c.chatTemplate, source: lm.chatTemplateSource)
                        ).train
                }
                let weights = lm.model.weights
                let base = weights.precision == .q ? "kept quantised" : "in fp32"
                logger.info(
                    "loaded \(id): base \(base) (\(weights.residentBytes >> 20) MiB), activations \(activations.summary)"
                )
                let engine = Engine(id: id, session: session, config: config, plan: plan)
                lock.withLock { engines[id] = engine }
                post(
                    .loaded(
                        WorkerSession.LoadedJob(
                            id: id, parameterCount: adapter.parameters.count, vocabularySize: lm.model.config.vocabSize,
                            sequenceLength: config.sequenceLength, federated: plan != nil, base: baseKey)))
            } catch {
                post(.loadFailed(job: id, message: "cannot load the model for \(id): \(error)"))
            }
        }
    }

    /// Forgets a job's engine, its shared passes, and its base when no other job uses it.
    private func unload(_ job: String) {
        lock.withLock {
            guard engines.removeValue(forKey: job) != nil else { return }
            sharedPasses = sharedPasses.filter { !$0.key.contains(job) }
            let used = Set(engines.values.map { ObjectIdentifier($0.session.model) })
            models = models.filter { used.contains(ObjectIdentifier($0.value.model)) }
        }
        logger.info("unloaded \(job)")
    }

    /// Runs assignments on a background thread (several: step assignments of jobs on one base, in one pass); posts
    /// each result.
    private func compute(_ works: [WorkerSession.Work]) {
        // The session checked each job against what it knows is loaded, but a job may have been unloaded since.
        let found = lock.withLock { works.map { engines[$0.job] } }
        var ready: [(WorkerSession.Work, Engine)] = []
        for (work, engine) in zip(works, found) {
            if let engine {
                ready.append((work, engine))
            } else {
                post(.computeFailed(assignment: work.assignment, why: "\(work.job) is no longer loaded here"))
            }
        }
        let together = ready
        let pass = ready.count > 1 ? sharedPass(ready.map(\.1)) : nil
        // One thread, one pass at a time: the kernels use every thread the worker was given.
        Thread.detachNewThread { [self] in
            if let pass {
                computeShared(together, pass: pass)
            } else {
                for (work, engine) in together { computeAlone(work, engine: engine) }
            }
        }
    }

    /// The shared pass of these engines' sessions (nil unless they train on one model).
    private func sharedPass(_ engines: [Engine]) -> SharedPass? {
        let sessions = engines.map(\.session)
        guard sessions.allSatisfy({ $0.model === sessions[0].model }) else { return nil }
        let key = engines.map(\.id)
        return lock.withLock {
            if let pass = sharedPasses[key] { return pass }
            let pass = SharedPass(sessions)
            sharedPasses[key] = pass
            return pass
        }
    }

    /// Sync step assignments of several jobs on one base: each job's gradient over its rows, as `computeAlone`
    /// gives it, with the base's products run once over all of them.
    private func computeShared(_ works: [(WorkerSession.Work, Engine)], pass: SharedPass) {
        let started = Self.now
        var batches: [[TrainingBatch]] = []
        for (work, engine) in works {
            engine.session.adapter.parameters.pointer.update(from: work.parameters, count: work.parameters.count)
            batches.append(work.rows!.split(maxRows: engine.config.batchSize))
        }
        let losses = pass.computeGradients(microBatches: batches, normalize: false)
        let seconds = Self.now - started
        logger.debug("steps of \(works.map(\.0.job).joined(separator: ", ")) computed in one pass over the base")
        for ((work, engine), loss) in zip(works, losses) {
            let result = StepResult(
                job: work.job, assignment: work.assignment, step: work.step, loss: loss.sum, tokens: loss.tokens,
                seconds: seconds,
                gradient: Tensor(name: "gradient", floats: UnsafeBufferPointer(engine.session.gradients.buffer))
            ).message
            post(.computed(assignment: work.assignment, result: result))
        }
    }

    /// Runs one assignment (on the compute thread); posts its result.
    private func computeAlone(_ work: WorkerSession.Work, engine: Engine) {
        do {
            let started = Self.now
            let session = engine.session
            let size = engine.config.batchSize
            let seconds = { Self.now - started }
            let result: Message
            switch work.kind {
            case .gradient, .evaluation:
                // Rounds start from the parameters the coordinator sends, so an evaluation between them overwrites
                // nothing a diloco or federated worker still needs.
                session.adapter.parameters.pointer.update(from: work.parameters, count: work.parameters.count)
                let batch = work.rows!
                if work.kind == .evaluation {
                    // Batches of the training shape, so the training workspace serves them.
                    let loss = session.evaluate(batch.split(maxRows: size).map { $0.padded(toRows: size, padId: 0) })
                    result =
                        EvalResult(
                            job: work.job, assignment: work.assignment, step: work.step, loss: loss.sum,
                            tokens: loss.tokens, seconds: seconds()
                        ).message
                } else {
                    let loss = session.computeGradients(batch.split(maxRows: size), normalize: false)
                    result =
                        StepResult(
                            job: work.job, assignment: work.assignment, step: work.step, loss: loss.sum,
                            tokens: loss.tokens, seconds: seconds(),
                            gradient: Tensor(name: "gradient", floats: UnsafeBufferPointer(session.gradients.buffer))
                        ).message
                }
            case .round(let round, let firstStep, let steps, let perStep):
                // Local AdamW steps from the global adapter, then the compressed pseudo-gradient (global − local,
                // plus the error left over from the last round).
                let r = session.localRound(
                    from: work.parameters, steps: steps, firstStep: firstStep, microBatch: size
                ) { h in
                    guard let plan = engine.plan else { return work.rows!.rows(h * perStep..<(h + 1) * perStep) }
                    defer { engine.cursor += perStep }
                    return plan.batch(from: engine.cursor, count: perStep)
                }
                let compression = Compression(rawValue: engine.config.compression.rawValue) ?? .int8
                let corrected = engine.errorFeedback.corrected(r.delta)
                let delta = corrected.withUnsafeBufferPointer { compression.encode($0, name: "delta") }
                engine.errorFeedback.carry(
                    sent: corrected, arrived: compression.decode(delta, name: "delta", count: corrected.count))
                result =
                    RoundResult(
                        job: work.job, assignment: work.assignment, round: round, loss: r.loss.sum,
                        tokens: r.loss.tokens,
                        seconds: seconds(), delta: delta
                    ).message
            }
            post(.computed(assignment: work.assignment, result: result))
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
