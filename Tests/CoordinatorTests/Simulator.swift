// A deterministic simulator of a cluster around the coordinator's JobSchedule: a virtual clock, a network that
// loses, duplicates, delays and reorders messages and cuts links, workers that crash (losing their memory),
// restart, run slow or find their disk full, a coordinator that crashes and restarts on its journal, forged
// results, and several jobs in a row in all three modes. The runner here plays the coordinator's part around the
// schedule the way Coordinator does (peers declared gone after silence, the job announced again to workers that
// are not ready, results handed to the schedule); the training is a stand-in whose sums the checker can verify
// exactly: each row of a step or evaluation has a known value, a worker returns the sum over its rows.
//
// Everything comes from one seed. Faults happen in a window at the start; after it the network is clean and every
// worker is up, and each job must then finish. Invariants are checked after every event and at the end.

import Coordinator
import ModelFormats
import TensorKernels

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

    enum Message {
        case hello, ready(job: Int), heartbeat
        case result(job: Int, assignment: Int, kind: WorkKind, unit: Int, value: Int, seconds: Double)
        case diskFull(job: Int)
        // coordinator → worker
        case helloFirst, welcome, announce(job: Int), assign(job: Int, Assignment, WorkKind, unit: Int), revoke(Int)
        case beat
    }

    enum Event {
        case deliver(to: String, from: String, Message, incarnation: Int)
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
    }

    struct Work {
        var assignment: Assignment
        var job: Int
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
    }

    struct Peer {
        var lastSeen: Double
        var ready = false
        var fault = false
        var announcedAt: Double
    }

    let seed: UInt64
    private var rng: SeededGenerator
    private var now = 0.0
    private var queue = PriorityHeap<Scheduled>()
    private var order = 0
    private var jobs: [Job] = []
    private var workers: [String: Worker] = [:]
    private var cut: Set<String> = []
    private var report: SimulationReport
    // The coordinator's process.
    private var coordinatorUp = true
    private var coordinatorRun = 0
    private var peers: [String: Peer] = [:]
    private var running: Int?
    private var schedule: JobSchedule?
    /// Sums accepted for the unit in progress, and the rows they covered.
    private var unitSum = 0
    private var unitRows: [Int] = []
    private var roundResults = 0
    private var roundContributors: Set<String> = []
    // The world's settings.
    private let faultWindow: Double
    private let lossRate: Double
    private let duplicateRate: Double
    private let heartbeat = 0.25
    private let liveness = 3.0
    private let tickEvery = 0.1
    private let deadlines = Deadlines(floor: 1, first: 30)
    private let patience = 400.0
    /// When a unit, an evaluation or a job was last journaled.
    private var lastProgress = 0.0

    init(seed: UInt64) {
        self.seed = seed
        rng = SeededGenerator(seed: seed)
        report = SimulationReport(seed: seed)
        faultWindow = Double.random(in: 5...40, using: &rng)
        lossRate = [0, 0.01, 0.05, 0.2][Int.random(in: 0..<4, using: &rng)]
        duplicateRate = [0, 0.02, 0.1][Int.random(in: 0..<3, using: &rng)]
        let workerCount = [1, 1, 2, 3, 4, 6][Int.random(in: 0..<6, using: &rng)]
        let jobCount = Int.random(in: 1...3, using: &rng)
        for j in 0..<jobCount {
            let mode = [JobPlan.Mode.sync, .diloco, .federated][Int.random(in: 0..<3, using: &rng)]
            let evaluate = Bool.random(using: &rng)
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
    }

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
                report.faults.append(String(format: "forged result %.1f", t))
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
        let s =
            schedule.map {
                " [schedule: unit \($0.unit)/\($0.plan.units) \($0.current.map { "\($0.kind) \($0.unit)" } ?? "idle"), ready \($0.workers.keys.sorted()), outstanding \($0.outstanding.count)]"
            } ?? ""
        return " (job \(running.map(String.init) ?? "none")\(s))"
    }

    /// Sends over the network: lost, duplicated, delayed and reordered while faults last; cut links drop it.
    private mutating func send(_ message: Message, from: String, to: String) {
        let worker = from == "coordinator" ? to : from
        guard !cut.contains(worker) else { return }
        let incarnation = workers[worker]?.incarnation ?? 0
        var copies = 1
        if inFaultWindow {
            if Double.random(in: 0..<1, using: &rng) < lossRate { copies = 0 }
            if Double.random(in: 0..<1, using: &rng) < duplicateRate { copies += 1 }
        }
        for _ in 0..<copies {
            let delay =
                0.002
                + (inFaultWindow ? Double.random(in: 0..<0.3, using: &rng) : Double.random(in: 0..<0.01, using: &rng))
            at(now + delay, .deliver(to: to, from: from, message, incarnation: incarnation))
        }
    }

    private mutating func handle(_ event: Event) {
        switch event {
        case .deliver(let to, let from, let message, let incarnation):
            if to == "coordinator" {
                // Messages a worker sent before it crashed may still arrive: they are not filtered here.
                guard coordinatorUp else { return }
                coordinatorReceives(message, from: from)
            } else {
                guard var w = workers[to], w.alive, w.incarnation == incarnation else { return }
                workerReceives(message, &w)
                workers[to] = w
            }
        case .coordinatorTick:
            if coordinatorUp { coordinatorTick() }
            at(now + tickEvery, .coordinatorTick)
        case .workerBeat(let id, let incarnation):
            guard let w = workers[id], w.alive, w.incarnation == incarnation else { return }
            send(.heartbeat, from: id, to: "coordinator")
            at(now + heartbeat, .workerBeat(id, incarnation: incarnation))
        case .loaded(let id, let job, let incarnation):
            guard var w = workers[id], w.alive, w.incarnation == incarnation else { return }
            w.loading.remove(job)
            w.loaded.insert(job)
            workers[id] = w
            send(.ready(job: job), from: id, to: "coordinator")
        case .computed(let id, let assignment, let incarnation):
            guard var w = workers[id], w.alive, w.incarnation == incarnation, w.computing == assignment,
                let i = w.queue.firstIndex(where: { $0.assignment.id == assignment })
            else { return }
            let work = w.queue.remove(at: i)
            w.computing = nil
            let value = Self.value(
                job: work.job, kind: work.kind, unit: work.unit, rows: work.assignment.rows, worker: id)
            send(
                .result(
                    job: work.job, assignment: assignment, kind: work.kind, unit: work.unit, value: value,
                    seconds: Double(work.assignment.rows.count) / w.speed), from: id, to: "coordinator")
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

    /// Starts (or restarts) a worker: a new incarnation with an empty memory and the model cache it had.
    private mutating func startWorker(_ id: String) {
        guard var w = workers[id] else { return }
        w.alive = true
        w.incarnation += 1
        w.queue = []
        w.computing = nil
        w.loading = []
        workers[id] = w
        send(.hello, from: id, to: "coordinator")
        at(now + heartbeat, .workerBeat(id, incarnation: w.incarnation))
    }

    private mutating func workerReceives(_ message: Message, _ w: inout Worker) {
        switch message {
        case .helloFirst:
            send(.hello, from: w.id, to: "coordinator")
        case .welcome:
            // A new session: work of the old one is dropped.
            w.queue = []
            w.computing = nil
        case .announce(let job):
            if w.fullDiskFor.contains(job) {
                send(.diskFull(job: job), from: w.id, to: "coordinator")
            } else if w.loaded.contains(job) {
                send(.ready(job: job), from: w.id, to: "coordinator")
            } else if !w.loading.contains(job) {
                w.loading.insert(job)
                at(now + Double.random(in: 0.05...2, using: &rng), .loaded(w.id, job: job, incarnation: w.incarnation))
            }
        case .assign(let job, let a, let kind, let unit):
            guard !w.queue.contains(where: { $0.assignment.id == a.id }) else { return }
            w.queue.append(Work(assignment: a, job: job, kind: kind, unit: unit))
            if w.computing == nil { startNext(&w) }
        case .revoke(let id):
            w.queue.removeAll { $0.assignment.id == id }
            if w.computing == id {
                w.computing = nil
                startNext(&w)
            }
        case .beat: break
        default: break
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

    /// The stand-in training: each row of a step or evaluation has a value, a worker returns the sum over its rows;
    /// a round's result is the worker's own contribution.
    static func value(job: Int, kind: WorkKind, unit: Int, rows: [Int], worker: String) -> Int {
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

    // MARK: The coordinator's part

    private mutating func coordinatorReceives(_ message: Message, from id: String) {
        if case .hello = message {
            // The same worker again: its old session's work goes back to the pool.
            if peers[id] != nil { step(.gone(worker: id)) }
            peers[id] = Peer(lastSeen: now, announcedAt: now)
            send(.welcome, from: "coordinator", to: id)
            if let job = running { send(.announce(job: job), from: "coordinator", to: id) }
            return
        }
        guard var peer = peers[id] else {
            if case .result = message, message.isForged {
                // A forged result from a peer the coordinator never met reaches the schedule only if the runner
                // let it through; the schedule must ignore it all the same.
                forgedResult(message, from: id)
                return
            }
            send(.helloFirst, from: "coordinator", to: id)
            return
        }
        peer.lastSeen = now
        peers[id] = peer
        switch message {
        case .ready(let job):
            guard job == running, let w = workers[id] else { return }
            peers[id]?.ready = true
            step(.ready(worker: id, gflops: w.speed, rowsPerSecond: nil, localExamples: w.localExamples))
        case .diskFull(let job):
            guard job == running else { return }
            peers[id]?.fault = true
            peers[id]?.ready = false
            step(.gone(worker: id))
        case .result(let job, let assignment, let kind, let unit, let value, let seconds):
            guard job == running else { return }
            if message.isForged {
                forgedResult(message, from: id)
                return
            }
            step(.result(worker: id, assignment: assignment, kind: kind, unit: unit, seconds: seconds), value: value)
        default: break
        }
    }

    private mutating func coordinatorTick() {
        for (id, p) in peers.sorted(by: { $0.key < $1.key }) {
            if now - p.lastSeen > heartbeat * liveness {
                peers[id] = nil
                step(.gone(worker: id))
            } else {
                send(.beat, from: "coordinator", to: id)
            }
        }
        if let job = running {
            for (id, p) in peers.sorted(by: { $0.key < $1.key }) where !p.ready && !p.fault && now - p.announcedAt > 2 {
                peers[id]?.announcedAt = now
                send(.announce(job: job), from: "coordinator", to: id)
            }
        }
        if running == nil { activateNextJob() }
        step(.tick)
    }

    private mutating func activateNextJob() {
        guard let next = jobs.indices.first(where: { !jobs[$0].done }) else { return }
        running = next
        let job = jobs[next]
        let unit = job.journal.count
        schedule = JobSchedule(
            plan: job.plan, unit: unit, evaluationPending: unit > 0 && job.evaluations[unit] == nil,
            firstAssignment: Int.random(in: 1...(1 << 31), using: &rng) << 20, deadlines: deadlines)
        unitSum = 0
        unitRows = []
        roundResults = 0
        roundContributors = []
        for id in peers.keys.sorted() {
            peers[id]?.ready = false
            peers[id]?.fault = false
            peers[id]?.announcedAt = now
            send(.announce(job: next), from: "coordinator", to: id)
        }
    }

    private mutating func restartCoordinator() {
        coordinatorUp = true
        coordinatorRun += 1
        peers = [:]
        running = nil
        schedule = nil
    }

    /// Hands an event to the schedule and performs its actions; `value` is the result's payload.
    private mutating func step(_ event: JobSchedule.Event, value: Int = 0) {
        guard var s = schedule, let job = running else { return }
        let before = s.unit
        let actions = s.handle(event, now: now)
        schedule = s
        for action in actions { perform(action, job: job, value: value, event: event) }
        checkInvariants(s, before: before, job: job)
    }

    private mutating func perform(_ action: JobSchedule.Action, job: Int, value: Int, event: JobSchedule.Event) {
        switch action {
        case .begin(let kind, _):
            unitSum = 0
            unitRows = []
            roundResults = 0
            roundContributors = []
            _ = kind
        case .assign(let a, let kind, let unit):
            guard peers[a.worker] != nil else {
                violation("assigned \(a.id) to \(a.worker), who is not connected")
                return
            }
            if peers[a.worker]?.ready != true { violation("assigned \(a.id) to \(a.worker), who is not ready") }
            send(.assign(job: job, a, kind, unit: unit), from: "coordinator", to: a.worker)
        case .revoke(let a, _):
            send(.revoke(a.id), from: "coordinator", to: a.worker)
        case .released: break
        case .accept(let a, let kind):
            guard case .result(let worker, _, _, _, _) = event else {
                violation("accepted \(a.id) without a result")
                return
            }
            if worker != a.worker { violation("accepted \(a.worker)'s assignment \(a.id) from \(worker)") }
            if kind == .round {
                roundResults += 1
                if !roundContributors.insert(worker).inserted {
                    violation("\(worker) added a second result to round \(jobs[job].journal.count + 1)")
                }
            } else {
                unitSum += value
                unitRows += a.rows
            }
        case .ignore: break
        case .finish(let kind, let unit, let rows):
            finish(kind, unit: unit, rows: rows, job: job)
        case .complete:
            let units = jobs[job].plan.units
            if jobs[job].journal.count != units {
                violation("job \(job) completed with \(jobs[job].journal.count) of \(units) units journaled")
            }
            jobs[job].done = true
            jobs[job].doneAt = now
            lastProgress = now
            running = nil
            schedule = nil
        }
    }

    private mutating func finish(_ kind: WorkKind, unit: Int, rows: [String: Int], job: Int) {
        lastProgress = now
        let plan = jobs[job].plan
        switch kind {
        case .step, .evaluation:
            let count = kind == .step ? plan.rowsPerStep : plan.evaluationRows
            if unitRows.sorted() != Array(0..<count) {
                violation(
                    "\(kind) \(unit) of job \(job) finished with rows \(unitRows.sorted()), not each of 0..<\(count) once"
                )
            }
            let expected = Self.value(job: job, kind: kind, unit: unit, rows: Array(0..<count), worker: "")
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
        } else {
            if unit != jobs[job].journal.count + 1 {
                violation("\(kind) \(unit) of job \(job) journaled after \(jobs[job].journal.count) units")
            }
            jobs[job].journal.append(kind == .round ? roundResults : unitSum)
        }
        unitSum = 0
        unitRows = []
        roundResults = 0
        roundContributors = []
    }

    // MARK: Forgeries

    /// A result from a worker for an assignment it does not hold (another's outstanding one, or a made-up id), or
    /// from a peer the coordinator never met.
    private mutating func forge() {
        guard let job = running, let s = schedule else { return }
        let outstanding = s.outstanding.values.sorted { $0.id < $1.id }
        let ids = workers.keys.sorted() + ["intruder"]
        let from = ids[Int.random(in: 0..<ids.count, using: &rng)]
        let target = outstanding.filter { $0.worker != from }.first
        let assignment = target?.id ?? Int.random(in: 1...(1 << 40), using: &rng)
        let (kind, unit) = s.current ?? (.step, s.unit + 1)
        at(
            now + 0.01,
            .deliver(
                to: "coordinator", from: from,
                .result(job: job, assignment: assignment, kind: kind, unit: unit, value: -1, seconds: 1),
                incarnation: -1))
    }

    private mutating func forgedResult(_ message: Message, from id: String) {
        guard case .result(_, let assignment, let kind, let unit, _, let seconds) = message, var s = schedule else {
            return
        }
        let before = s.outstanding
        let actions = s.handle(
            .result(worker: id, assignment: assignment, kind: kind, unit: unit, seconds: seconds), now: now)
        for a in actions {
            if case .accept = a { violation("a forged result from \(id) for assignment \(assignment) was accepted") }
        }
        if s.outstanding.keys.sorted() != before.keys.sorted(),
            actions.allSatisfy({ if case .ignore = $0 { true } else { false } })
        {
            violation("a forged result from \(id) changed the outstanding assignments")
        }
        // The runner performs what the schedule decided (a tick's worth of hand-outs may ride along).
        schedule = s
        if let job = running { for a in actions { perform(a, job: job, value: 0, event: .tick) } }
    }

    // MARK: Invariants

    private mutating func checkInvariants(_ s: JobSchedule, before: Int, job: Int) {
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
                    let expected = Self.value(
                        job: i, kind: .step, unit: n + 1, rows: Array(0..<plan.rowsPerStep), worker: "")
                    if sum != expected { violation("job \(i) step \(n + 1): \(sum), one machine \(expected)") }
                }
            }
            for unit in 1...plan.units where plan.evaluationDue(after: unit) {
                if job.evaluations[unit] == nil { violation("job \(i): the evaluation after unit \(unit) is missing") }
            }
        }
    }
}

extension Simulation.Message {
    /// Forged results carry the value -1 (a real worker's sums are never negative).
    var isForged: Bool {
        if case .result(_, _, _, _, let value, _) = self { return value < 0 }
        return false
    }
}
