// JobSchedule: the decisions that keep a running job correct, as one pure state machine. It owns who is ready,
// how fast each worker is, which rows or rounds are handed to whom, deadlines, lost workers, when a step, round or
// evaluation is complete, and what must be journaled. It takes events (a worker is ready, a worker is gone, a
// result arrived, time passed) and returns actions (assign, revoke, accept, journal, complete); it never touches a
// socket, a file, a clock or a thread. The coordinator is the runner that turns messages and its clock into events
// and performs the actions; the deterministic simulator in the tests drives the same type under seeded fault
// schedules.
//
// The arithmetic (summing gradients, the outer step, checkpoints) stays with the runner's job objects: an `accept`
// action is where the runner adds a result's payload, and a `finish` action where it journals the unit.

/// The shape of a job, as far as scheduling goes.
public struct JobPlan: Sendable, Equatable {
    /// `evaluate`: no training; unit k is the evaluation of the job's k-th adapter over all its rows.
    public enum Mode: String, Sendable { case sync, diloco, federated, evaluate }

    public var mode: Mode
    /// Optimizer steps (sync), or local steps per worker (rounds).
    public var totalSteps: Int
    /// Rows per optimizer step (sync), or per local step of one worker (rounds).
    public var rowsPerStep: Int
    /// Local steps per round (rounds; 1 for sync).
    public var innerSteps: Int
    /// Held-out rows evaluated after the units `cairn train` would evaluate after (0: none).
    public var evaluationRows: Int
    public var evalEvery: Int

    public init(
        mode: Mode, totalSteps: Int, rowsPerStep: Int, innerSteps: Int = 1, evaluationRows: Int = 0, evalEvery: Int = 0
    ) {
        self.mode = mode
        self.totalSteps = totalSteps
        self.rowsPerStep = rowsPerStep
        self.innerSteps = mode == .sync || mode == .evaluate ? 1 : max(1, innerSteps)
        self.evaluationRows = evaluationRows
        self.evalEvery = evalEvery
    }

    /// Units journaled: steps (sync), rounds, or adapters evaluated (evaluate: `totalSteps` counts the adapters).
    public var units: Int {
        mode == .sync || mode == .evaluate ? totalSteps : (totalSteps + innerSteps - 1) / innerSteps
    }

    /// Local steps in the round after `done` rounds (the last round may be shorter).
    public func stepsInRound(after done: Int) -> Int { min(innerSteps, totalSteps - done * innerSteps) }

    /// Whether `cairn train` would evaluate after this unit (every `evalEvery` optimizer or local steps, and after
    /// the last).
    public func evaluationDue(after unit: Int) -> Bool {
        guard evaluationRows > 0, mode != .evaluate else { return false }
        let local = min(totalSteps, unit * innerSteps)
        let previous = min(totalSteps, (unit - 1) * innerSteps)
        return local >= totalSteps || (evalEvery > 0 && local / evalEvery > previous / evalEvery)
    }
}

/// How long the schedule waits for an assignment before it gives it up (seconds).
public struct Deadlines: Sendable, Equatable {
    /// Given up on after 3 × its expected time + this, and never sooner than this.
    public var floor: Double
    /// Before a worker's speed is measured.
    public var first: Double

    public init(floor: Double = 10, first: Double = 600) {
        self.floor = floor
        self.first = first
    }
}

/// What a unit of work is.
public enum WorkKind: String, Sendable, Equatable { case step, round, evaluation }

/// The schedule of one running job.
public struct JobSchedule: Sendable {
    public enum Event: Sendable, Equatable {
        /// A worker has the job loaded (`rowsPerSecond`: its speed measured earlier, if any; `localExamples`: its own
        /// data, for federated jobs).
        case ready(worker: String, gflops: Double, rowsPerSecond: Double?, localExamples: Int?)
        /// A worker left the job: lost, disconnected, reconnected under a new connection, or unable to take part.
        case gone(worker: String)
        /// A well-formed result for `assignment`, `unit` being the step or round it is for (the unit evaluated, for
        /// an evaluation), computed in `seconds` by the worker's account.
        case result(worker: String, assignment: Int, kind: WorkKind, unit: Int, seconds: Double)
        /// A result whose payload does not fit the job: the assignment's rows go to others.
        case malformed(worker: String, assignment: Int)
        /// Time passed.
        case tick
    }

    public enum Action: Sendable, Equatable {
        /// Begin a unit: step or round `unit` (1-based), or the evaluation after unit `unit`.
        case begin(WorkKind, unit: Int)
        case assign(Assignment, WorkKind, unit: Int)
        /// Tell the worker to drop an assignment it missed the deadline of.
        case revoke(Assignment, WorkKind)
        /// A lost worker's assignment, given back (sync, evaluation) or given up on (rounds).
        case released(Assignment, WorkKind)
        /// Add this result's payload.
        case accept(Assignment, WorkKind)
        /// A result not outstanding (late, repeated, revoked, from an earlier run or forged): ignore it.
        case ignore(worker: String, assignment: Int, WorkKind)
        /// The unit is complete: journal it. For a step, `rows` gives each worker's rows.
        case finish(WorkKind, unit: Int, rows: [String: Int])
        /// The job's last unit (and its evaluation) are journaled.
        case complete
    }

    /// A ready worker, as the schedule sees it.
    public struct Worker: Sendable, Equatable {
        public var gflops: Double
        /// Measured rows per second (moving average), once known.
        public var rowsPerSecond: Double?
        public var localExamples: Int?
        /// Deadlines missed in a row: each doubles the next deadline (up to 64×), so a worker slower than every
        /// deadline, whose speed is never measured, still finishes an assignment in the end.
        public var missedDeadlines = 0

        var patience: Double { Double(1 << min(6, missedDeadlines)) }
    }

    /// A round in progress: who took part, what is outstanding, how many results are in.
    struct Round: Sendable {
        var participants: Set<String> = []
        var outstanding: [Int: Assignment] = [:]
        var results = 0
    }

    enum Phase: Sendable {
        case idle
        case step(StepWork)
        case round(Round)
        case evaluation(StepWork, after: Int)
    }

    public let plan: JobPlan
    public let deadlines: Deadlines
    /// Units journaled.
    public private(set) var unit: Int
    public private(set) var workers: [String: Worker] = [:]
    private var phase = Phase.idle
    private var nextAssignment: Int
    private var completed = false
    /// Rows of accepted results (steps, rounds and evaluations): what the pool has spent on this job so far, for
    /// the share policy between running jobs.
    public private(set) var servedRows = 0
    /// The share policy's say: a new unit begins only while `servedRows` is at most this (nil: no limit). Set by the
    /// runner before each event; a unit in progress always runs to its end.
    public var beginLimit: Double?
    /// Whether a step's result measures its worker's speed (rows over turnaround). With several jobs on the pool a
    /// worker's turnaround holds other jobs' rows too, so the runner measures whole passes instead and hands the
    /// speed in (`observe`).
    public var measuresSpeed = true
    /// Rows other jobs have in flight on each worker (set by the runner while several jobs run): an assignment's
    /// deadline allows for them, as the worker computes them first or in the same pass.
    public var rowsInFlight: [String: Int] = [:]

    /// A schedule starting after `unit` journaled units; `evaluationPending`: the evaluation after that unit is due
    /// and not journaled (a coordinator stopped between the two). Assignment ids start at `firstAssignment`: a
    /// runner picks a fresh range per run, so a result for an earlier run's assignment never matches.
    public init(
        plan: JobPlan, unit: Int = 0, evaluationPending: Bool = false, firstAssignment: Int, deadlines: Deadlines
    ) {
        self.plan = plan
        self.unit = unit
        self.deadlines = deadlines
        nextAssignment = firstAssignment
        if evaluationPending, unit > 0, plan.evaluationDue(after: unit) { owedEvaluation = unit }
    }

    /// The evaluation after this unit is to run before anything else (restored at init).
    private var owedEvaluation: Int?

    public var isFinished: Bool { unit >= plan.units }

    /// Whether the job can use the pool now: units are left and a worker is ready to take one.
    public var wantsWork: Bool {
        if case .idle = phase, owedEvaluation == nil, isFinished { return false }
        return plan.mode == .diloco || plan.mode == .federated ? !eligibleForRounds.isEmpty : !workers.isEmpty
    }

    /// Workers with an assignment outstanding.
    public var busyWorkers: Set<String> {
        switch phase {
        case .idle: []
        case .step(let w), .evaluation(let w, _): w.busyWorkers
        case .round(let r): Set(r.outstanding.values.map(\.worker))
        }
    }

    /// Assignments outstanding, by id.
    public var outstanding: [Int: Assignment] {
        switch phase {
        case .idle: [:]
        case .step(let w), .evaluation(let w, _): w.running
        case .round(let r): r.outstanding
        }
    }

    /// What is in progress: the kind of work and its unit, nil between units.
    public var current: (kind: WorkKind, unit: Int)? {
        switch phase {
        case .idle: nil
        case .step: (.step, unit + 1)
        case .round: (.round, unit + 1)
        case .evaluation(_, let after): (.evaluation, after)
        }
    }

    /// Rows of the step or evaluation in progress not yet assigned.
    public var pendingRows: [Int] {
        switch phase {
        case .step(let w), .evaluation(let w, _): w.pending
        default: []
        }
    }

    public mutating func handle(_ event: Event, now: Double) -> [Action] {
        var out: [Action] = []
        switch event {
        case .ready(let id, let gflops, let speed, let local):
            var w = workers[id] ?? Worker(gflops: gflops, rowsPerSecond: speed, localExamples: local)
            w.gflops = gflops
            w.localExamples = local
            w.rowsPerSecond = w.rowsPerSecond ?? speed
            workers[id] = w
        case .gone(let id):
            workers[id] = nil
            out += release(worker: id)
        case .result(let id, let assignment, let kind, let resultUnit, let seconds):
            out += result(worker: id, assignment: assignment, kind: kind, unit: resultUnit, seconds: seconds, now: now)
        case .malformed(let id, let assignment):
            out += malformed(worker: id, assignment: assignment)
        case .tick:
            break
        }
        out += advance(now: now)
        return out
    }

    // MARK: Events

    private mutating func release(worker id: String) -> [Action] {
        switch phase {
        case .idle: return []
        case .step(var w):
            let lost = w.lose(worker: id)
            phase = .step(w)
            return lost.map { .released($0, .step) }
        case .evaluation(var w, let after):
            let lost = w.lose(worker: id)
            phase = .evaluation(w, after: after)
            return lost.map { .released($0, .evaluation) }
        case .round(var r):
            let lost = r.outstanding.values.filter { $0.worker == id }.sorted { $0.id < $1.id }
            for a in lost { r.outstanding[a.id] = nil }
            // Lost with its assignment, it contributed nothing to this round: back, it may take the round again (a
            // lone worker restarted would otherwise leave the round waiting on nobody). One whose result is in
            // stays a participant: a worker adds at most one result to a round.
            if !lost.isEmpty { r.participants.remove(id) }
            phase = .round(r)
            return lost.map { .released($0, .round) }
        }
    }

    private mutating func result(
        worker id: String, assignment: Int, kind: WorkKind, unit resultUnit: Int, seconds: Double, now: Double
    ) -> [Action] {
        let ignored = [Action.ignore(worker: id, assignment: assignment, kind)]
        guard current?.kind == kind, current?.unit == resultUnit, workers[id] != nil else { return ignored }
        switch phase {
        case .idle: return ignored
        case .step(var w):
            guard let a = w.complete(assignment, worker: id) else { return ignored }
            phase = .step(w)
            // Speed from the turnaround (sent to received), not the compute time the worker reports: a worker on a
            // slow link is slower to the job however fast it computes, and gets fewer rows.
            if measuresSpeed {
                measure(id, rows: a.rows.count, seconds: max(1e-3, now - a.started, seconds))
            } else {
                workers[id]?.missedDeadlines = 0
            }
            servedRows += a.rows.count
            return [.accept(a, .step)]
        case .evaluation(var w, let after):
            guard let a = w.complete(assignment, worker: id) else { return ignored }
            phase = .evaluation(w, after: after)
            servedRows += a.rows.count
            return [.accept(a, .evaluation)]
        case .round(var r):
            guard let a = r.outstanding[assignment], a.worker == id else { return ignored }
            r.outstanding[assignment] = nil
            r.results += 1
            phase = .round(r)
            measure(id, rows: a.rows.count, seconds: max(1e-3, seconds))
            servedRows += a.rows.count
            return [.accept(a, .round)]
        }
    }

    private mutating func malformed(worker id: String, assignment: Int) -> [Action] {
        guard outstanding[assignment]?.worker == id else { return [] }
        return release(worker: id)
    }

    private mutating func missed(_ id: String) {
        workers[id]?.missedDeadlines += 1
    }

    /// A worker's speed measured by the runner over a whole pass (rows of every job in it over its turnaround).
    public mutating func observe(worker id: String, rowsPerSecond speed: Double) {
        guard workers[id] != nil, speed.isFinite, speed > 0 else { return }
        let previous = workers[id]?.rowsPerSecond
        workers[id]?.rowsPerSecond = previous.map { 0.5 * $0 + 0.5 * speed } ?? speed
    }

    private mutating func measure(_ id: String, rows: Int, seconds: Double) {
        workers[id]?.missedDeadlines = 0
        let speed = Double(rows) / seconds
        let previous = workers[id]?.rowsPerSecond
        workers[id]?.rowsPerSecond = previous.map { 0.5 * $0 + 0.5 * speed } ?? speed
    }

    // MARK: Progress

    /// Starts, hands out and finishes work until nothing more can happen now.
    private mutating func advance(now: Double) -> [Action] {
        var out: [Action] = []
        // Each pass starts a unit, finishes one, or returns; at most a finish, an evaluation's start and finish, and
        // the next unit's start can happen at once.
        for _ in 0..<8 {
            switch phase {
            case .idle:
                if let after = owedEvaluation {
                    owedEvaluation = nil
                    startEvaluation(after: after, &out)
                    continue
                }
                guard !isFinished else {
                    if !completed {
                        completed = true
                        out.append(.complete)
                    }
                    return out
                }
                // Held back by the share policy: another running job has had less than its share so far.
                if let limit = beginLimit, Double(servedRows) > limit { return out }
                if plan.mode == .evaluate {
                    // The next adapter's evaluation: unit k scores adapter k.
                    guard !workers.isEmpty else { return out }
                    startEvaluation(after: unit + 1, &out)
                } else if plan.mode == .sync {
                    guard !workers.isEmpty else { return out }
                    phase = .step(StepWork(rows: plan.rowsPerStep, firstAssignment: nextAssignment))
                    out.append(.begin(.step, unit: unit + 1))
                } else {
                    guard !eligibleForRounds.isEmpty else { return out }
                    phase = .round(Round())
                    out.append(.begin(.round, unit: unit + 1))
                }
            case .step(var w):
                out += handOut(&w, .step, unit: unit + 1, now: now)
                guard w.isComplete else {
                    phase = .step(w)
                    return out
                }
                unit += 1
                phase = .idle
                out.append(.finish(.step, unit: unit, rows: w.completedRows))
                beginEvaluationIfDue(&out)
            case .evaluation(var w, let after):
                out += handOut(&w, .evaluation, unit: after, now: now)
                guard w.isComplete else {
                    phase = .evaluation(w, after: after)
                    return out
                }
                phase = .idle
                if plan.mode == .evaluate { unit = after }
                out.append(.finish(.evaluation, unit: after, rows: w.completedRows))
            case .round(var r):
                out += tickRound(&r, now: now)
                guard r.outstanding.isEmpty, r.results > 0 else {
                    phase = .round(r)
                    return out
                }
                unit += 1
                phase = .idle
                out.append(.finish(.round, unit: unit, rows: [:]))
                beginEvaluationIfDue(&out)
            }
        }
        return out
    }

    private mutating func beginEvaluationIfDue(_ out: inout [Action]) {
        if plan.evaluationDue(after: unit) { startEvaluation(after: unit, &out) }
    }

    private mutating func startEvaluation(after: Int, _ out: inout [Action]) {
        phase = .evaluation(StepWork(rows: plan.evaluationRows, firstAssignment: nextAssignment), after: after)
        out.append(.begin(.evaluation, unit: after))
    }

    /// Ready workers, in id order (the order shares are handed out in).
    private var ready: [(id: String, worker: Worker)] {
        workers.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// Workers that can take a round: federated ones need data of their own.
    private var eligibleForRounds: [(id: String, worker: Worker)] {
        ready.filter { plan.mode != .federated || ($0.worker.localExamples ?? 0) > 0 }
    }

    /// Revokes the assignments past their deadline (their rows become pending again) and hands the pending rows
    /// to the idle ready workers in proportion to their speed.
    private mutating func handOut(_ w: inout StepWork, _ kind: WorkKind, unit: Int, now: Double) -> [Action] {
        let late = w.expire(now: now)
        for a in late { missed(a.worker) }
        var out = late.map { Action.revoke($0, kind) }
        defer { nextAssignment = w.nextAssignmentId }
        let busy = w.busyWorkers
        let idle = ready.filter { !busy.contains($0.id) }
        guard !idle.isEmpty, !w.pending.isEmpty else { return out }
        // Speeds: measured rows/s when every idle worker has one, else the kernel benchmark.
        let measured = idle.allSatisfy { $0.worker.rowsPerSecond != nil }
        let speeds = idle.map {
            (worker: $0.id, speed: measured ? $0.worker.rowsPerSecond! : max(0.1, $0.worker.gflops))
        }
        let deadlines = self.deadlines
        let known = workers
        let inFlight = rowsInFlight
        let assignments = w.distribute(idle: speeds, now: now) { id, rows in
            let patience = known[id]?.patience ?? 1
            guard let rps = known[id]?.rowsPerSecond else { return deadlines.first * patience }
            let queued = Double(rows + (inFlight[id] ?? 0))
            return max(deadlines.floor, 3 * queued / rps + deadlines.floor / 2) * patience
        }
        // A ready worker left without rows (too slow for a share, e.g. behind a slow link) has its speed estimate
        // raised a little each time, so every few dozen steps it is tried again with a row and re-measured: a link
        // that got better is noticed, and a straggler costs at most an occasional slow step.
        let assigned = Set(assignments.map(\.worker))
        for (id, _) in idle where !assigned.contains(id) {
            if let s = workers[id]?.rowsPerSecond { workers[id]?.rowsPerSecond = s * 1.1 }
        }
        out += assignments.map { .assign($0, kind, unit: unit) }
        return out
    }

    /// Gives up on the round's late assignments and hands the round to each eligible worker that has not taken
    /// part in it yet.
    private mutating func tickRound(_ r: inout Round, now: Double) -> [Action] {
        var out: [Action] = []
        for a in r.outstanding.values.filter({ $0.deadline <= now }).sorted(by: { $0.id < $1.id }) {
            r.outstanding[a.id] = nil
            r.participants.remove(a.worker)
            missed(a.worker)
            out.append(.revoke(a, .round))
        }
        let steps = plan.stepsInRound(after: unit)
        let rows = steps * plan.rowsPerStep
        for (id, w) in eligibleForRounds where !r.participants.contains(id) {
            let queued = Double(rows + (rowsInFlight[id] ?? 0))
            let deadline =
                (w.rowsPerSecond.map { max(deadlines.floor, 3 * queued / $0 + deadlines.floor) }
                    ?? deadlines.first * 3) * w.patience
            let a = Assignment(
                id: nextAssignment, worker: id, rows: Array(0..<rows), deadline: now + deadline, started: now)
            nextAssignment += 1
            r.participants.insert(id)
            r.outstanding[a.id] = a
            out.append(.assign(a, .round, unit: unit + 1))
        }
        return out
    }
}
