// A deterministic simulator of a cluster around the coordinator's own core (CoordinatorCore, the code the real
// coordinator runs): a virtual clock, a network that loses, duplicates, delays and reorders messages and cuts
// links, workers that crash (losing their memory), restart, run slow or find their disk full, a coordinator that
// crashes and restarts on its journal (a fresh core; the journal is the simulation's), forged results from workers,
// from a peer that never said hello and from a client, and several jobs in a row in all three modes. Workers speak
// the real protocol: their messages are Wire frames the core decodes, checks and acts on. The runner here does what
// Coordinator does with the core's actions (send, assign, accept, journal, complete); the training is a stand-in
// whose sums the checker can verify exactly: each row of a step or evaluation has a known value, a worker returns
// the sum over its rows.
//
// Everything comes from one seed. Faults happen in a window at the start; after it the network is clean and every
// worker is up, and each job must then finish. Invariants are checked after every event and at the end.

import Coordinator
import ModelFormats
import TensorKernels
import Wire

/// What one simulated run found.
struct SimulationReport: CustomStringConvertible {
    var seed: UInt64
    var violations: [String] = []
    var events = 0
    var virtualSeconds = 0.0
    var jobs: [String] = []
    var faults: [String] = []

    var passed: Bool { violations.isEmpty }

    var description: String {
        "seed \(seed): \(passed ? "passed" : "FAILED") after \(events) events, \(Int(virtualSeconds)) virtual s; "
            + "jobs \(jobs.joined(separator: ", ")); faults \(faults.joined(separator: ", "))"
            + (passed ? "" : "\n  " + violations.prefix(5).joined(separator: "\n  "))
            + "\n  replay: CAIRN_SIMULATION_SEED=\(seed) swift test --filter SimulationTests/replay"
    }
}

/// One seeded run.
struct Simulation {
    // MARK: The world

    /// What travels to a worker: a protocol message, or an assignment (the runner's part: the real one adds the
    /// parameters and rows as tensors).
    enum Packet {
        case wire(Message)
        case assign(job: String, Assignment, WorkKind, unit: Int)
    }

    /// How a forged result was sent.
    enum Forger: String { case worker, stranger, client }

    enum Event {
        case toCoordinator(connection: [UInt8], userId: String, frames: [[UInt8]])
        case toWorker(String, Packet, incarnation: Int)
        case forged(connection: [UInt8], userId: String, frames: [[UInt8]], by: Forger)
        case coordinatorTick, workerBeat(String, incarnation: Int)
        case loaded(String, job: Int, incarnation: Int)
        case computed(String, assignment: Int, incarnation: Int)
        case crashWorker(String), restartWorker(String)
        case crashCoordinator, restartCoordinator
        case cutLink(String), healLink(String)
        case forge
    }

    struct Scheduled: HeapOrdered {
        var time: Double
        var order: Int
        var event: Event
        func precedes(_ other: Self) -> Bool { (time, order) < (other.time, other.order) }
    }

    struct Job {
        var plan: JobPlan
        var journal: [Int] = []
        var evaluations: [Int: Int] = [:]
        var done = false
        var doneAt: Double?
        /// When it was last activated or journaled a unit.
        var progressAt = 0.0
    }

    struct Work {
        var assignment: Assignment
        var job: String
        var kind: WorkKind
        var unit: Int
    }

    struct Worker {
        var id: String
        var speed: Double  // rows per virtual second
        var alive = true
        var incarnation = 0
        var loaded: Set<Int> = []
        var loading: Set<Int> = []
        var queue: [Work] = []
        var computing: Int?
        var localExamples: Int
        var fullDiskFor: Set<Int> = []

        /// Its connection to the coordinator: a new one for each start.
        var connection: [UInt8] { Array("\(id)/\(incarnation)".utf8) }
        var userId: String { "worker key-\(id)" }
    }

    /// The job index of a job id ("job-2" → 2).
    static func index(of job: String) -> Int? { Int(job.dropFirst(4)) }

    let seed: UInt64
    private var rng: SeededGenerator
    private var now = 0.0
    private var queue = PriorityHeap<Scheduled>()
    private var order = 0
    private var jobs: [Job] = []
    private var workers: [String: Worker] = [:]
    private var cut: Set<String> = []
    private var report: SimulationReport
    // The coordinator's process: its core, and the running jobs' sums (what SyncJob and RoundJob hold).
    private var coordinatorUp = true
    private var coordinatorRun = 0
    private var core: CoordinatorCore
    /// Jobs running at once (the coordinator's `--max-jobs`), and those running now.
    private var maxRunning = 1
    private var running: Set<Int> = []
    /// The sums of each running job's unit in progress.
    private struct Sums {
        var unitSum = 0
        var unitRows: [Int] = []
        var roundResults = 0
        var roundContributors: Set<String> = []
    }
    private var sums: [Int: Sums] = [:]
    /// Sums accepted for the unit in progress, and the rows they covered.
    // The world's settings.
    private let faultWindow: Double
    private let lossRate: Double
    private let duplicateRate: Double
    private let heartbeat = 0.25
    private let tickEvery = 0.1
    private static let settings = {
        var s = CoordinatorCore.Settings()
        s.heartbeatMilliseconds = 250
        s.liveness = 3
        s.messagesPerSecond = 1e6
        s.deadlines = Deadlines(floor: 1, first: 30)
        return s
    }()
    private let patience = 400.0
    /// When a unit, an evaluation or a job was last journaled.
    private var lastProgress = 0.0

    init(seed: UInt64) {
        self.seed = seed
        rng = SeededGenerator(seed: seed)
        report = SimulationReport(seed: seed)
        core = CoordinatorCore(settings: Self.settings)
        faultWindow = Double.random(in: 5...40, using: &rng)
        lossRate = [0, 0.01, 0.05, 0.2][Int.random(in: 0..<4, using: &rng)]
        duplicateRate = [0, 0.02, 0.1][Int.random(in: 0..<3, using: &rng)]
        let workerCount = [1, 1, 2, 3, 4, 6][Int.random(in: 0..<6, using: &rng)]
        let jobCount = Int.random(in: 1...3, using: &rng)
        for j in 0..<jobCount {
            let mode = [JobPlan.Mode.sync, .diloco, .federated, .evaluate][Int.random(in: 0..<4, using: &rng)]
            // Evaluation jobs always have held-out rows (each unit is their evaluation).
            let evaluate = Bool.random(using: &rng) || mode == .evaluate
            let plan = JobPlan(
                mode: mode, totalSteps: Int.random(in: 3...24, using: &rng),
                rowsPerStep: Int.random(in: 1...9, using: &rng),
                innerSteps: Int.random(in: 1...4, using: &rng),
                evaluationRows: evaluate ? Int.random(in: 1...7, using: &rng) : 0,
                evalEvery: evaluate ? Int.random(in: 0...6, using: &rng) : 0)
            jobs.append(Job(plan: plan))
            report.jobs.append("\(j):\(mode.rawValue) \(plan.units) units")
        }
        for i in 0..<workerCount {
            let id = "w\(i)"
            var w = Worker(
                id: id, speed: [2.0, 10, 40][Int.random(in: 0..<3, using: &rng)],
                localExamples: i == 0 || Bool.random(using: &rng) ? Int.random(in: 1...50, using: &rng) : 0)
            // Some workers cannot hold some jobs' models; w0 always can.
            if i > 0, Int.random(in: 0..<8, using: &rng) == 0 {
                w.fullDiskFor = [Int.random(in: 0..<jobCount, using: &rng)]
            }
            workers[id] = w
        }
        planFaults(workerCount: workerCount)
        // Drawn last, so the jobs, workers and faults of a seed are those it had when jobs ran one at a time.
        maxRunning = Int.random(in: 1...3, using: &rng)
        priorities = jobs.indices.map { _ in [1.0, 1, 2, 0.5][Int.random(in: 0..<4, using: &rng)] }
        report.jobs[0] += " (\(maxRunning) at once)"
    }

    /// Each job's `priority`.
    private var priorities: [Double] = []

    private mutating func planFaults(workerCount: Int) {
        let ids = workers.keys.sorted()
        let count = Int.random(in: 0...12, using: &rng)
        for _ in 0..<count {
            let t = Double.random(in: 0..<faultWindow, using: &rng)
            let id = ids[Int.random(in: 0..<ids.count, using: &rng)]
            let back = min(faultWindow, t + Double.random(in: 0.2...8, using: &rng))
            switch Int.random(in: 0..<10, using: &rng) {
            case 0...3:
                at(t, .crashWorker(id))
                at(back, .restartWorker(id))
                report.faults.append(String(format: "%@ crash %.1f–%.1f", id, t, back))
            case 4...5:
                at(t, .cutLink(id))
                at(back, .healLink(id))
                report.faults.append(String(format: "%@ cut %.1f–%.1f", id, t, back))
            case 6:
                at(t, .crashCoordinator)
                at(min(faultWindow, t + Double.random(in: 0.1...3, using: &rng)), .restartCoordinator)
                report.faults.append(String(format: "coordinator crash %.1f", t))
            default:
                at(t, .forge)
                report.faults.append(String(format: "forgery %.1f", t))
            }
        }
    }

    // MARK: Running

    mutating func run() -> SimulationReport {
        at(0, .coordinatorTick)
        for id in workers.keys.sorted() { startWorker(id) }
        while let next = queue.pop() {
            now = next.time
            report.events += 1
            handle(next.event)
            if jobs.allSatisfy(\.done) { break }
            // Once the faults are over, every job must keep moving: a unit (or an evaluation) at least every
            // `patience` seconds, whatever the workers' speeds and deadlines.
            if now > max(faultWindow, lastProgress) + patience {
                violation(
                    String(
                        format: "stalled: nothing journaled for %.0f s after the faults ended",
                        now - max(faultWindow, lastProgress)))
                break
            }
            // And none of them starves while others run.
            if let j = running.sorted().first(where: { now > max(faultWindow, jobs[$0].progressAt) + patience }) {
                violation(
                    String(
                        format: "job %d starved: nothing of it journaled for %.0f s after the faults ended", j,
                        now - max(faultWindow, jobs[j].progressAt)))
                break
            }
            if report.violations.count > 20 { break }
        }
        report.virtualSeconds = now
        if !jobs.allSatisfy(\.done), report.violations.isEmpty { violation("the simulation ran out of events") }
        finalChecks()
        return report
    }

    private var inFaultWindow: Bool { now < faultWindow }

    private mutating func at(_ time: Double, _ event: Event) {
        order += 1
        queue.push(Scheduled(time: time, order: order, event: event))
    }

    private mutating func violation(_ text: String) {
        report.violations.append(String(format: "t=%.2f ", now) + text + stateSummary)
    }

    private var stateSummary: String {
        let s = running.sorted().map { j in
            core.schedule(of: "job-\(j)").map {
                " [job \(j): unit \($0.unit)/\($0.plan.units) \($0.current.map { "\($0.kind) \($0.unit)" } ?? "idle"), ready \($0.workers.keys.sorted()), outstanding \($0.outstanding.count), served \($0.servedRows)]"
            } ?? " [job \(j): no schedule]"
        }
        return " (running \(running.sorted())\(s.joined()))"
    }

    /// Sends over the network: lost, duplicated, delayed and reordered while faults last; cut links drop it.
    private mutating func transmit(worker: String, _ event: (Int) -> Event) {
        guard !cut.contains(worker) else { return }
        var copies = 1
        if inFaultWindow {
            if Double.random(in: 0..<1, using: &rng) < lossRate { copies = 0 }
            if Double.random(in: 0..<1, using: &rng) < duplicateRate { copies += 1 }
        }
        for _ in 0..<copies {
            let delay =
                0.002
                + (inFaultWindow ? Double.random(in: 0..<0.3, using: &rng) : Double.random(in: 0..<0.01, using: &rng))
            at(now + delay, event(0))
        }
    }

    /// A worker's message to the coordinator, as frames on its current connection.
    private mutating func send(_ message: Message, from w: Worker) {
        let connection = w.connection
        let userId = w.userId
        let frames = message.encode()
        transmit(worker: w.id) { _ in .toCoordinator(connection: connection, userId: userId, frames: frames) }
    }

    /// The coordinator's packet to the worker of `connection` (dropped when that connection is not the worker's
    /// current one: the process it belonged to is gone).
    private mutating func send(_ packet: Packet, to connection: [UInt8]) {
        let name = String(decoding: connection, as: UTF8.self)
        let parts = name.split(separator: "/")
        guard parts.count == 2, let incarnation = Int(parts[1]) else { return }
        let id = String(parts[0])
        transmit(worker: id) { _ in .toWorker(id, packet, incarnation: incarnation) }
    }

    private mutating func handle(_ event: Event) {
        switch event {
        case .toCoordinator(let connection, let userId, let frames):
            // Messages a worker sent before it crashed may still arrive: they are not filtered here.
            guard coordinatorUp else { return }
            coordinator(.received(connection, userId: userId, frames: frames))
        case .forged(let connection, let userId, let frames, let forger):
            guard coordinatorUp else { return }
            forged(connection: connection, userId: userId, frames: frames, by: forger)
        case .toWorker(let id, let packet, let incarnation):
            guard var w = workers[id], w.alive, w.incarnation == incarnation else { return }
            workerReceives(packet, &w)
            workers[id] = w
        case .coordinatorTick:
            if coordinatorUp {
                activateJobs()
                coordinator(.tick)
            }
            at(now + tickEvery, .coordinatorTick)
        case .workerBeat(let id, let incarnation):
            guard let w = workers[id], w.alive, w.incarnation == incarnation else { return }
            send(Message(.heartbeat), from: w)
            at(now + heartbeat, .workerBeat(id, incarnation: incarnation))
        case .loaded(let id, let job, let incarnation):
            guard var w = workers[id], w.alive, w.incarnation == incarnation else { return }
            w.loading.remove(job)
            w.loaded.insert(job)
            workers[id] = w
            send(Ready(job: "job-\(job)").message, from: w)
        case .computed(let id, let assignment, let incarnation):
            guard var w = workers[id], w.alive, w.incarnation == incarnation, w.computing == assignment,
                let i = w.queue.firstIndex(where: { $0.assignment.id == assignment })
            else { return }
            let work = w.queue.remove(at: i)
            w.computing = nil
            let seconds = Double(work.assignment.rows.count) / w.speed
            send(Self.result(of: work, seconds: seconds), from: w)
            startNext(&w)
            workers[id] = w
        case .crashWorker(let id):
            workers[id]?.alive = false
        case .restartWorker(let id):
            guard let w = workers[id], !w.alive else { return }
            startWorker(id)
        case .cutLink(let id): cut.insert(id)
        case .healLink(let id): cut.remove(id)
        case .crashCoordinator:
            coordinatorUp = false
        case .restartCoordinator:
            guard !coordinatorUp else { return }
            restartCoordinator()
        case .forge:
            forge()
        }
    }

    // MARK: Workers

    /// Starts (or restarts) a worker: a new incarnation (a new connection) with an empty memory and the model cache
    /// it had.
    private mutating func startWorker(_ id: String) {
        guard var w = workers[id] else { return }
        w.alive = true
        w.incarnation += 1
        w.queue = []
        w.computing = nil
        w.loading = []
        workers[id] = w
        sayHello(w)
        at(now + heartbeat, .workerBeat(id, incarnation: w.incarnation))
    }

    private mutating func sayHello(_ w: Worker) {
        send(
            Hello(
                name: w.id, cores: 2, memory: 1 << 30, gflops: w.speed, threads: 2,
                localExamples: w.localExamples > 0 ? w.localExamples : nil
            ).message, from: w)
    }

    private mutating func workerReceives(_ packet: Packet, _ w: inout Worker) {
        switch packet {
        case .assign(let job, let a, let kind, let unit):
            guard !w.queue.contains(where: { $0.assignment.id == a.id }) else { return }
            w.queue.append(Work(assignment: a, job: job, kind: kind, unit: unit))
            if w.computing == nil { startNext(&w) }
        case .wire(let m):
            switch m.type {
            case .error:
                if (try? m.decode(as: ErrorReport.self))?.code == "hello_first" { sayHello(w) }
            case .welcome:
                // A new session: work of the old one is dropped.
                w.queue = []
                w.computing = nil
            case .job:
                guard let a = try? m.decode(as: JobAnnouncement.self), let job = Self.index(of: a.job) else { return }
                if w.fullDiskFor.contains(job) {
                    send(ErrorReport(code: "cache", text: "the disk is full", job: a.job).message, from: w)
                } else if w.loaded.contains(job) {
                    send(Ready(job: a.job).message, from: w)
                } else if !w.loading.contains(job) {
                    w.loading.insert(job)
                    at(
                        now + Double.random(in: 0.05...2, using: &rng),
                        .loaded(w.id, job: job, incarnation: w.incarnation))
                }
            case .revoke:
                guard let r = try? m.decode(as: Revoke.self) else { return }
                let dropped = w.queue.filter { r.assignment == 0 ? $0.job == r.job : $0.assignment.id == r.assignment }
                w.queue.removeAll { r.assignment == 0 ? $0.job == r.job : $0.assignment.id == r.assignment }
                // Assignment 0: the job ended; its model is unloaded.
                if r.assignment == 0, let job = Self.index(of: r.job) { w.loaded.remove(job) }
                if let c = w.computing, dropped.contains(where: { $0.assignment.id == c }) {
                    w.computing = nil
                    startNext(&w)
                }
            default: break
            }
        }
    }

    private mutating func startNext(_ w: inout Worker) {
        guard let work = w.queue.first else { return }
        w.computing = work.assignment.id
        let rows = Double(work.assignment.rows.count)
        let slow = inFaultWindow && Int.random(in: 0..<10, using: &rng) == 0 ? 5.0 : 1.0
        at(
            now + slow * rows / w.speed + 0.001,
            .computed(w.id, assignment: work.assignment.id, incarnation: w.incarnation))
    }

    /// The result message of a piece of work: a gradient of one value (the rows' sum), an evaluation's loss (the
    /// sum), or a round's delta of one value (1: the checker counts contributions).
    static func result(of work: Work, seconds: Double, forged: Bool = false) -> Message {
        result(
            job: work.job, kind: work.kind, unit: work.unit, assignment: work.assignment.id, rows: work.assignment.rows,
            seconds: seconds, forged: forged)
    }

    static func result(
        job: String, kind: WorkKind, unit: Int, assignment a: Int, rows: [Int], seconds: Double, forged: Bool = false
    ) -> Message {
        let value = forged ? -1 : Self.value(job: Self.index(of: job) ?? 0, kind: kind, unit: unit, rows: rows)
        let seconds = forged ? forgedSeconds : seconds
        switch kind {
        case .step:
            return StepResult(
                job: job, assignment: a, step: unit, loss: 0, tokens: rows.count, seconds: seconds,
                gradient: Tensor(name: "gradient", floats: [Float(value)])
            ).message
        case .evaluation:
            return EvalResult(
                job: job, assignment: a, step: unit, loss: Double(max(0, value)), tokens: rows.count, seconds: seconds
            ).message
        case .round:
            return RoundResult(
                job: job, assignment: a, round: unit, loss: 0, tokens: 1, seconds: seconds,
                delta: [Tensor(name: "delta", floats: [Float(value)])]
            ).message
        }
    }

    /// What marks a forged result (a real worker's compute seconds never take this value).
    static let forgedSeconds = 12345.0

    /// The stand-in training: each row of a step or evaluation has a value, a worker returns the sum over its rows;
    /// a round's result is the worker's own contribution.
    static func value(job: Int, kind: WorkKind, unit: Int, rows: [Int]) -> Int {
        switch kind {
        case .round: return 1
        case .step, .evaluation:
            return rows.reduce(0) { $0 + rowValue(job: job, kind: kind, unit: unit, row: $1) }
        }
    }

    static func rowValue(job: Int, kind: WorkKind, unit: Int, row: Int) -> Int {
        var h = UInt64(job &* 1_000_003 &+ unit &* 7919 &+ row &* 31 &+ (kind == .evaluation ? 17 : 0))
        h = (h ^ (h >> 29)) &* 0xBF58_476D_1CE4_E5B9
        return Int(h >> 44)
    }

    // MARK: The coordinator's part: the core, and a runner like Coordinator's

    /// Hands an event to the core, performs its actions, checks the invariants.
    private mutating func coordinator(_ event: CoordinatorCore.Event) {
        let before = running.reduce(into: [Int: Int]()) { $0[$1] = core.schedule(of: "job-\($1)")?.unit }
        perform(core.handle(event, now: now))
        for (j, unit) in before.sorted(by: { $0.key < $1.key }) {
            if let s = core.schedule(of: "job-\(j)") { checkInvariants(s, before: unit) }
        }
        if core.jobs.count > maxRunning { violation("\(core.jobs.count) jobs run at once, over \(maxRunning)") }
    }

    private mutating func perform(_ actions: [CoordinatorCore.Action]) {
        for action in actions {
            switch action {
            case .send(let c, let m): send(.wire(m), to: c)
            case .assign(let c, let a, let kind, let unit, let id):
                guard let job = Self.index(of: id), running.contains(job) else {
                    violation("assigned \(a.id) of \(id), which is not running")
                    continue
                }
                guard let peer = core.peers[c], peer.worker?.id == a.worker else {
                    violation("assigned \(a.id) to \(a.worker) on a connection that is not its own")
                    continue
                }
                if peer.worker?.readyJobs.contains(id) != true {
                    violation("assigned \(a.id) of \(id) to \(a.worker), who is not ready for it")
                }
                send(.assign(job: id, a, kind, unit: unit), to: c)
            case .begin(_, _, let id):
                guard let job = Self.index(of: id) else { continue }
                sums[job] = Sums()
            case .accept(let a, let kind, let r, let id):
                guard let job = Self.index(of: id), running.contains(job) else {
                    violation("accepted a result of \(id), which is not running")
                    continue
                }
                if r.seconds == Self.forgedSeconds {
                    violation("a forged \(kind) result for assignment \(a.id) was accepted")
                    continue
                }
                if r.worker != a.worker { violation("accepted \(a.worker)'s assignment \(a.id) from \(r.worker)") }
                var u = sums[job] ?? Sums()
                switch kind {
                case .round:
                    u.roundResults += 1
                    if !u.roundContributors.insert(r.worker).inserted {
                        violation(
                            "\(r.worker) added a second result to round \(jobs[job].journal.count + 1) of job \(job)")
                    }
                case .step:
                    u.unitSum += Int(r.values.first ?? 0)
                    u.unitRows += a.rows
                case .evaluation:
                    u.unitSum += Int(r.loss)
                    u.unitRows += a.rows
                }
                sums[job] = u
            case .finish(let kind, let unit, let rows, let id):
                guard let job = Self.index(of: id), running.contains(job) else { continue }
                finish(kind, unit: unit, rows: rows, job: job)
            case .complete(let id):
                guard let job = Self.index(of: id), running.contains(job) else { continue }
                let units = jobs[job].plan.units
                if jobs[job].journal.count != units {
                    violation("job \(job) completed with \(jobs[job].journal.count) of \(units) units journaled")
                }
                jobs[job].done = true
                jobs[job].doneAt = now
                lastProgress = now
                running.remove(job)
                sums[job] = nil
                perform(core.handle(.stopped(job: id), now: now))
            case .serve(_, let request):
                if case .status = request { continue }
                violation("a request the simulation never makes reached the store: \(request)")
            case .jobTraffic, .saw, .log: break
            }
        }
    }

    /// Loads unfinished jobs from the journal, up to `maxRunning` at once, as Coordinator does from its store.
    private mutating func activateJobs() {
        for next in jobs.indices where !jobs[next].done && !running.contains(next) {
            guard running.count < maxRunning else { return }
            running.insert(next)
            let job = jobs[next]
            let unit = job.journal.count
            sums[next] = Sums()
            jobs[next].progressAt = now
            let active = CoordinatorCore.ActiveJob(
                announcement: JobAnnouncement(
                    job: "job-\(next)", spec: "", modelBlob: "model-\(next)", modelBytes: 0,
                    mode: job.plan.mode.rawValue, totalSteps: job.plan.totalSteps),
                plan: job.plan, unit: unit, evaluationPending: unit > 0 && job.evaluations[unit] == nil,
                parameterCount: 1, compression: .none,
                firstAssignment: Int.random(in: 1...(1 << 31), using: &rng) << 20, priority: priorities[next])
            perform(core.handle(.started(active), now: now))
        }
    }

    private mutating func restartCoordinator() {
        coordinatorUp = true
        coordinatorRun += 1
        core = CoordinatorCore(settings: Self.settings)
        running = []
        sums = [:]
    }

    private mutating func finish(_ kind: WorkKind, unit: Int, rows: [String: Int], job: Int) {
        lastProgress = now
        jobs[job].progressAt = now
        let plan = jobs[job].plan
        let u = sums[job] ?? Sums()
        let unitSum = u.unitSum
        let unitRows = u.unitRows
        let roundResults = u.roundResults
        switch kind {
        case .step, .evaluation:
            let count = kind == .step ? plan.rowsPerStep : plan.evaluationRows
            if unitRows.sorted() != Array(0..<count) {
                violation(
                    "\(kind) \(unit) of job \(job) finished with rows \(unitRows.sorted()), not each of 0..<\(count) once"
                )
            }
            let expected = Self.value(job: job, kind: kind, unit: unit, rows: Array(0..<count))
            if unitSum != expected {
                violation("\(kind) \(unit) of job \(job) summed \(unitSum), one machine \(expected)")
            }
            if rows.values.reduce(0, +) != count { violation("\(kind) \(unit) counted \(rows) rows, not \(count)") }
        case .round:
            if roundResults == 0 { violation("round \(unit) of job \(job) finished with no result") }
        }
        if kind == .evaluation {
            if jobs[job].evaluations[unit] != nil {
                violation("the evaluation after \(unit) of job \(job) was journaled twice")
            }
            jobs[job].evaluations[unit] = unitSum
            if plan.mode == .evaluate {
                // An evaluation job's unit k is its k-th adapter's evaluation, journaled in order.
                if unit != jobs[job].journal.count + 1 {
                    violation("adapter \(unit) of job \(job) journaled after \(jobs[job].journal.count) adapters")
                }
                jobs[job].journal.append(unitSum)
            }
        } else {
            if unit != jobs[job].journal.count + 1 {
                violation("\(kind) \(unit) of job \(job) journaled after \(jobs[job].journal.count) units")
            }
            jobs[job].journal.append(kind == .round ? roundResults : unitSum)
        }
        sums[job] = Sums()
    }

    // MARK: Forgeries

    /// A result for an assignment its sender does not hold (another worker's outstanding one, or a made-up id):
    /// from an enrolled worker, from a worker key that never said hello on its connection, or from a client.
    private mutating func forge() {
        let live = running.sorted()
        guard !live.isEmpty else { return }
        let job = live[Int.random(in: 0..<live.count, using: &rng)]
        guard let s = core.schedule(of: "job-\(job)") else { return }
        let outstanding = s.outstanding.values.sorted { $0.id < $1.id }
        let forger = [Forger.worker, .stranger, .client][Int.random(in: 0..<3, using: &rng)]
        let ids = workers.keys.sorted()
        let w = workers[ids[Int.random(in: 0..<ids.count, using: &rng)]]!
        let (connection, userId): ([UInt8], String) =
            switch forger {
            case .worker: (w.connection, w.userId)
            case .stranger: (Array("stranger/\(coordinatorRun)".utf8), "worker key-stranger")
            case .client: (Array("client/\(coordinatorRun)".utf8), "client key-client")
            }
        let coreId = core.peers[w.connection]?.worker?.id
        let target = outstanding.first { forger != .worker || $0.worker != coreId }
        let assignment = target?.id ?? Int.random(in: 1...(1 << 40), using: &rng)
        let (kind, unit) = s.current ?? (.step, s.unit + 1)
        let message = Self.result(
            job: "job-\(job)", kind: kind, unit: unit, assignment: assignment, rows: target?.rows ?? [0], seconds: 0,
            forged: true)
        at(now + 0.01, .forged(connection: connection, userId: userId, frames: message.encode(), by: forger))
    }

    /// Delivers a forged result. Nothing from a peer that is not a worker the core met on that connection may change
    /// the schedule; from a worker, the result must be ignored (the accept check in `perform` catches the rest).
    private mutating func forged(connection: [UInt8], userId: String, frames: [[UInt8]], by forger: Forger) {
        let snapshot = { (core: CoordinatorCore) in
            core.runningJobIds.map { id in
                core.schedule(of: id).map {
                    "\(id) \($0.unit) \($0.outstanding.keys.sorted()) \($0.workers.keys.sorted())"
                }
            }
        }
        let before = snapshot(core)
        let actions = core.handle(.received(connection, userId: userId, frames: frames), now: now)
        if forger != .worker {
            if before != snapshot(core) {
                violation("a result from a \(forger.rawValue) (\(userId)) changed the schedule")
            }
            if core.peers[connection]?.worker != nil { violation("a \(forger.rawValue) became a worker without hello") }
            let refused = actions.contains {
                if case .send(_, let m) = $0, m.type == .error { true } else { false }
            }
            if !refused { violation("a result from a \(forger.rawValue) was not refused") }
        }
        perform(actions)
    }

    // MARK: Invariants

    private mutating func checkInvariants(_ s: JobSchedule, before: Int) {
        if s.unit < before { violation("the schedule went back from unit \(before) to \(s.unit)") }
        if s.unit > s.plan.units { violation("unit \(s.unit) is past the job's \(s.plan.units)") }
        for a in s.outstanding.values where s.workers[a.worker] == nil {
            violation("assignment \(a.id) is outstanding for \(a.worker), who is not ready")
        }
        let pending = s.pendingRows
        if Set(pending).count != pending.count { violation("a row is pending twice: \(pending)") }
    }

    private mutating func finalChecks() {
        for (i, job) in jobs.enumerated() where job.done {
            let plan = job.plan
            if job.journal.count != plan.units {
                violation("job \(i): \(job.journal.count) units journaled of \(plan.units)")
            }
            if plan.mode == .sync {
                for (n, sum) in job.journal.enumerated() {
                    let expected = Self.value(job: i, kind: .step, unit: n + 1, rows: Array(0..<plan.rowsPerStep))
                    if sum != expected { violation("job \(i) step \(n + 1): \(sum), one machine \(expected)") }
                }
            }
            for unit in 1...plan.units where plan.evaluationDue(after: unit) {
                if job.evaluations[unit] == nil { violation("job \(i): the evaluation after unit \(unit) is missing") }
            }
        }
    }
}
