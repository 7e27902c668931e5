// CoordinatorCore: the coordinator's decisions as a pure state machine. It owns the connections (peers), their
// roles and rate limits, liveness (heartbeats out, silence in), the workers' hellos, readiness and faults, the
// running jobs' announcements and schedules (which rows go to whom, deadlines, rounds, evaluations), the share
// policy between running jobs, and it checks every result against its job before that job's schedule sees it. It
// takes events (frames received, a tick, a send that failed, a job started or stopped) with the time, and returns
// actions (send, assign, accept a result, journal a finished unit, serve a request with the store, log). It has no
// sockets, no SQLite, no clock and no threads: `Coordinator` turns those into events and performs the actions, and
// the simulator in the tests drives the same core on a virtual clock and network.
//
// What stays outside, because it is storage or numerics: the store (jobs, tokens, keys, the journal), the blob
// store, and each running job's parameters and optimizer (SyncJob, RoundJob), which the actions feed.
//
// Several jobs run at once. Each has its own schedule over the workers ready for it, so a worker may hold one
// assignment of each (a worker computes assignments of two jobs on one base in one pass). The share policy is
// weighted fair share of rows: a job begins its next unit only while the rows it has been served, over its
// priority, are no more than any other running job's; a job that starts, or comes back after a time without ready
// workers, starts level with the others instead of owed the rows it missed.

import Logging
import Support
import Wire

public struct CoordinatorCore: Sendable {
    /// A connection: the ROUTER socket's routing id.
    public typealias Connection = [UInt8]

    /// The rules the core applies.
    public struct Settings: Sendable {
        public var heartbeatMilliseconds = Wire.heartbeatMilliseconds
        /// Heartbeats of silence after which a peer is gone.
        public var liveness = Wire.heartbeatLiveness
        /// Messages a second one connection may send (a burst of twice that); beyond it they are dropped before
        /// decoding.
        public var messagesPerSecond = 500.0
        public var deadlines = Deadlines()
        /// No keys: every peer may speak as a worker or a client (loopback only).
        public var insecure = false

        public init() {}

        var heartbeat: Double { Double(heartbeatMilliseconds) / 1000 }
    }

    /// The running job, as the core needs it: what to announce, its shape, where it stands, and what a result must
    /// look like.
    public struct ActiveJob: Sendable {
        public var announcement: JobAnnouncement
        public var plan: JobPlan
        /// Units (steps or rounds) journaled.
        public var unit: Int
        /// Stopped between a unit and its evaluation: the evaluation runs first.
        public var evaluationPending: Bool
        /// Length of a gradient or round delta.
        public var parameterCount: Int
        /// How round results are compressed.
        public var compression: Compression
        /// The first assignment id of this run: drawn at random by the runner, so a result computed for an
        /// assignment of an earlier run (before a restart) never matches one of this run.
        public var firstAssignment: Int
        /// Its weight in the share of rows between running jobs (the job file's `priority`; 1 by default).
        public var priority: Double

        public init(
            announcement: JobAnnouncement, plan: JobPlan, unit: Int, evaluationPending: Bool, parameterCount: Int,
            compression: Compression, firstAssignment: Int, priority: Double = 1
        ) {
            self.announcement = announcement
            self.plan = plan
            self.unit = unit
            self.evaluationPending = evaluationPending
            self.parameterCount = parameterCount
            self.compression = compression
            self.firstAssignment = firstAssignment
            self.priority = priority.isFinite && priority > 0 ? priority : 1
        }

        public var id: String { announcement.job }
    }

    public enum Event: Sendable {
        /// Frames from a connection (routing id stripped), with the user id its handshake assigned ("worker KEY",
        /// "client KEY", "enrol TOKEN").
        case received(Connection, userId: String?, frames: [[UInt8]])
        /// Time passed: heartbeats, silent peers, deadlines, scheduling.
        case tick
        /// A send to this connection failed because the peer is gone.
        case unreachable(Connection)
        /// A job runs (loaded by the runner from the store), beside those running already.
        case started(ActiveJob)
        /// A running job ended (done, cancelled, failed to journal): every worker that holds it is told to drop its
        /// assignments and unload it (a revoke of assignment 0).
        case stopped(job: String)
    }

    /// A checked result, ready to be added to the job.
    public struct Contribution: Sendable, Equatable {
        public var worker: String
        public var loss: Double
        public var tokens: Int
        public var seconds: Double
        /// The gradient (step), the pseudo-gradient (round), or nothing (evaluation).
        public var values: [Float]
    }

    /// A request the runner answers from the store or the blob store.
    public enum Request: Sendable {
        case enrol(token: String, Enrol)
        case submit(JobSubmission)
        case status(StatusRequest)
        case workers
        case cancel(job: String)
        case pull(job: String)
        case fetch(Fetch, worker: String?)
        /// Publish an adapter; `publisher` is the sender's key (nil on an insecure loopback coordinator).
        case publish(Publish, publisher: String?)
        case adapters(AdapterListRequest)
        case resolve(Resolve)
    }

    public enum Action: Sendable {
        case send(Connection, Message)
        /// Send assignment `Assignment` of `job`'s `unit` to this connection (the runner adds parameters and rows).
        case assign(Connection, Assignment, WorkKind, unit: Int, job: String)
        /// A unit of `job` starts: reset its sums (or build the evaluation).
        case begin(WorkKind, unit: Int, job: String)
        /// Add a result to the job's sums.
        case accept(Assignment, WorkKind, Contribution, job: String)
        /// The unit is complete: apply it and journal it (checkpoint, then the step's row).
        case finish(WorkKind, unit: Int, rows: [String: Int], job: String)
        /// Every unit of `job` is journaled: export the adapter and mark the job done.
        case complete(job: String)
        /// Bytes of a result of a running job (the job's traffic, journaled with its step).
        case jobTraffic(Int, job: String)
        /// A worker said hello: record it.
        case saw(WorkerRecord)
        case serve(Connection, Request)
        case log(Logger.Level, String, Logger.Metadata?)
    }

    public let settings: Settings
    public private(set) var peers: [Connection: Peer] = [:]
    /// The running jobs, in the order they started.
    public private(set) var jobs: [ActiveJob] = []
    /// Their schedules, by job id.
    public private(set) var schedules: [String: JobSchedule] = [:]
    /// Rows credited to a job beyond those it was served: the level it started at (or came back at) in the share.
    private var shareOffset: [String: Double] = [:]
    /// Jobs that could use the pool when the share was last looked at.
    private var wanting: Set<String> = []
    /// A worker's assignments in flight (steps, rounds, evaluations), of every job: it computes them one pass after
    /// another (steps of jobs on one base in the same pass), so with several jobs running its speed is measured over
    /// each time it is busy, from the first assignment handed to it to the last result in, and each new assignment's
    /// deadline allows for the rows ahead of it.
    private struct Busy {
        var since: Double
        var open: [Int: Int] = [:]
        var rowsDone = 0
    }
    private var busy: [String: Busy] = [:]
    /// How each worker's last connection ended (by worker id), for `cairn workers`.
    public private(set) var departures: [String: Departure] = [:]
    /// Gaps between consecutive messages from workers, and workers declared gone for silence.
    public private(set) var heartbeatGaps = GapSamples()
    public private(set) var workersDeclaredSilent = 0
    /// Messages dropped by the per-connection rate limit.
    public private(set) var messagesRateLimited = 0
    /// Messages refused: malformed, or not allowed for the sender's role.
    public private(set) var messagesRejected = 0

    private var out: [Action] = []
    private var now = 0.0

    public init(settings: Settings) { self.settings = settings }

    /// A running job, by id.
    public func job(_ id: String) -> ActiveJob? { jobs.first { $0.id == id } }

    /// A running job's schedule.
    public func schedule(of job: String) -> JobSchedule? { schedules[job] }

    /// The running jobs' ids, in the order they started.
    public var runningJobIds: [String] { jobs.map(\.id) }

    /// Takes one event at time `now` (seconds); returns what to do, in order.
    public mutating func handle(_ event: Event, now: Double) -> [Action] {
        self.now = now
        out = []
        switch event {
        case .received(let c, let userId, let frames): receive(c, userId: userId, frames: frames)
        case .tick: tick()
        case .unreachable(let c): lose(c, .unreachable)
        case .started(let active): start(active)
        case .stopped(let job): stop(job)
        }
        // A connection dropped later in the same event (a tick that finds two workers silent, a reconnect) gets
        // nothing: its work is back in the pool already.
        out.removeAll {
            switch $0 {
            case .send(let c, _): peers[c] == nil
            case .assign(let c, let a, _, _, _): peers[c]?.worker?.id != a.worker
            default: false
            }
        }
        return out
    }

    /// Every connection in a fixed order (a dictionary's order changes from one process to the next; the core's
    /// actions must not, so that a simulated seed replays exactly).
    private var connections: [Connection] { peers.keys.sorted { $0.lexicographicallyPrecedes($1) } }

    /// The connection of a worker, by its id (at most one: a worker's new connection drops its old one).
    public func connection(of worker: String) -> Connection? {
        peers.first { $0.value.worker?.id == worker }?.key
    }

    /// A worker's name for logs (its id when it is not connected).
    public func name(of worker: String) -> String {
        peers.values.first { $0.worker?.id == worker }?.worker?.name ?? worker
    }

    // MARK: Receiving

    private mutating func receive(_ c: Connection, userId: String?, frames: [[UInt8]]) {
        var peer = peers[c] ?? Peer(routingId: c, userId: userId, now: now, insecure: settings.insecure)
        guard !peer.ignored else { return }
        // A token bucket per connection.
        let burst = 2 * settings.messagesPerSecond
        peer.allowance = min(burst, peer.allowance + (now - peer.refilled) * settings.messagesPerSecond)
        peer.refilled = now
        if peer.worker != nil { heartbeatGaps.record(now - peer.lastSeen) }
        guard peer.allowance >= 1 else {
            peer.dropped += 1
            messagesRateLimited += 1
            if now - peer.droppedLogged >= 5 {
                note(
                    .warning,
                    "rate-limited \(peer.label): dropped \(peer.dropped) messages so far (over "
                        + "\(Int(settings.messagesPerSecond))/s)")
                peer.droppedLogged = now
            }
            peers[c] = peer
            return
        }
        peer.allowance -= 1
        peer.lastSeen = now
        let message: Message
        do {
            message = try Message.decode(frames)
        } catch {
            peer.bad += 1
            messagesRejected += 1
            note(.warning, "dropped a message from \(peer.label): \(error)")
            if peer.bad >= Peer.badLimit {
                peer.ignored = true
                note(.warning, "ignoring \(peer.label) for the rest of its connection after \(peer.bad) bad messages")
            }
            peers[c] = peer
            return
        }
        guard peer.role.allows(message.type) else {
            peer.bad += 1
            messagesRejected += 1
            note(.warning, "dropped \(message.type) from \(peer.label): not allowed for a \(peer.role.name)")
            peers[c] = peer
            refuse(c, "forbidden", "\(message.type) is not allowed for a \(peer.role.name)")
            return
        }
        peers[c] = peer
        let fromWorker: Set<MessageType> = [.heartbeat, .ready, .result, .roundResult, .evalResult]
        if peer.worker == nil, fromWorker.contains(message.type), !peer.role.isClient {
            // A worker this coordinator has not met (it restarted): ask it to say hello again.
            refuse(c, "hello_first", "unknown worker; send hello")
            return
        }
        let bytes = frames.reduce(0) { $0 + $1.count }
        // Decoding into the typed form cannot fail after `Message.decode` checked the schema.
        do {
            switch message.type {
            case .enrol:
                guard case .enrol(let token) = peer.role else { return }
                out.append(.serve(c, .enrol(token: token, try message.decode(as: Enrol.self))))
            case .hello: hello(c, try message.decode())
            case .heartbeat: break
            case .ready: ready(c, try message.decode())
            case .result: result(c, try message.decode(), bytes: bytes)
            case .roundResult: roundResult(c, try message.decode(), bytes: bytes)
            case .evalResult: evalResult(c, try message.decode(), bytes: bytes)
            case .fetch: out.append(.serve(c, .fetch(try message.decode(), worker: peer.worker?.id)))
            case .bye: lose(c, .left(reason: try message.decode(as: Bye.self).reason))
            case .error: fault(c, try message.decode())
            case .submit: out.append(.serve(c, .submit(try message.decode())))
            case .status: out.append(.serve(c, .status(try message.decode())))
            case .workers: out.append(.serve(c, .workers))
            case .cancel: out.append(.serve(c, .cancel(job: try message.decodeJobRequest().job)))
            case .pull: out.append(.serve(c, .pull(job: try message.decodeJobRequest().job)))
            case .publish: out.append(.serve(c, .publish(try message.decode(), publisher: peer.key)))
            case .adapters: out.append(.serve(c, .adapters(try message.decode())))
            case .resolve: out.append(.serve(c, .resolve(try message.decode())))
            default: break
            }
        } catch {
            note(.warning, "dropped \(message.type) from \(peer.label): \(error)")
        }
    }

    private mutating func refuse(_ c: Connection, _ code: String, _ text: String) {
        send(c, ErrorReport(code: code, text: text).message)
    }

    private mutating func send(_ c: Connection, _ message: Message) {
        peers[c]?.lastSent = now
        out.append(.send(c, message))
    }

    // MARK: Workers

    private mutating func hello(_ c: Connection, _ h: Hello) {
        guard var peer = peers[c] else { return }
        let id = peer.key.map { String(FileHash.sha256(Array($0.utf8)).prefix(10)) } ?? "w-" + h.name
        // The same worker reconnecting: its old connection's work goes back to the pool.
        for other in connections where other != c && peers[other]?.worker?.id == id { lose(other, .reconnected) }
        var info = WorkerInfo(
            id: id, name: h.name, cores: h.cores, memory: h.memory, gflops: h.gflops, threads: h.threads,
            localExamples: h.localExamples, host: h.host)
        // A hello again on the same connection (it was asked twice to say hello, after a restart of this
        // coordinator) is the same session: what it has loaded and said stays, as it does in the schedule.
        if let same = peer.worker, same.id == id {
            info.readyJobs = same.readyJobs
            info.faults = same.faults
            info.jobSentAt = same.jobSentAt
            info.rowsPerSecond = same.rowsPerSecond
        }
        peer.worker = info
        peers[c] = peer
        out.append(
            .saw(
                WorkerRecord(
                    id: id, name: h.name, cores: h.cores, memory: h.memory, gflops: h.gflops, lastSeen: now, rows: 0)))
        note(.info, "worker \(h.name) [\(id)] joined: \(h.cores) cores, \(Self.decimal(h.gflops)) GFLOP/s")
        send(
            c,
            Welcome(worker: id, heartbeatMilliseconds: settings.heartbeatMilliseconds, liveness: settings.liveness)
                .message)
        for job in jobs where !info.readyJobs.contains(job.id) { announce(job, to: c) }
    }

    private mutating func announce(_ job: ActiveJob, to c: Connection) {
        peers[c]?.worker?.jobSentAt[job.id] = now
        send(c, job.announcement.message)
    }

    /// A worker that cannot take part in a job (its cache is full, the model does not load, the spec is too new):
    /// excluded from it, its rows handed to others, the reason shown by `cairn workers`.
    private mutating func fault(_ c: Connection, _ e: ErrorReport) {
        guard let worker = peers[c]?.worker, let id = e.job, let job = job(id) else { return }
        let text = String(e.text.prefix(500))
        peers[c]?.worker?.faults[job.id] = "\(e.code): \(text)"
        peers[c]?.worker?.readyJobs.remove(job.id)
        note(.warning, "worker \(peers[c]!.label) cannot take part in \(job.id) and is left out of it: \(text)")
        scheduled(job.id, .gone(worker: worker.id))
    }

    private mutating func ready(_ c: Connection, _ r: Ready) {
        guard let job = job(r.job), let w = peers[c]?.worker, w.faults[job.id] == nil else { return }
        let again = w.readyJobs.contains(job.id)
        peers[c]?.worker?.readyJobs.insert(job.id)
        if !again { note(.info, "worker \(peers[c]!.label) is ready for \(job.id)") }
        scheduled(
            job.id,
            .ready(worker: w.id, gflops: w.gflops, rowsPerSecond: w.rowsPerSecond, localExamples: w.localExamples))
    }

    /// Drops a connection; a worker's work goes back to the pool.
    private mutating func lose(_ c: Connection, _ why: Departure) {
        guard let peer = peers.removeValue(forKey: c), let worker = peer.worker else { return }
        departures[worker.id] = why
        if case .silent = why { workersDeclaredSilent += 1 }
        var released = 0
        for job in jobs {
            released += scheduled(job.id, .gone(worker: worker.id)).reduce(0) {
                if case .released(let a, _) = $1 { return $0 + a.rows.count }
                return $0
            }
        }
        note(
            .notice, "worker \(peer.label) \(why)" + (released == 0 ? "" : "; its \(released) rows go to others"),
            ["worker": "\(worker.id)", "departure": "\(why.name)"])
    }

    // MARK: Results

    private mutating func result(_ c: Connection, _ r: StepResult, bytes: Int) {
        guard let job = job(r.job), job.plan.mode == .sync, let worker = peers[c]?.worker else { return }
        out.append(.jobTraffic(bytes, job: job.id))
        guard r.gradient.dtype == .f32, r.gradient.count == job.parameterCount else {
            malformed(c, worker, job.id, r.assignment, "a gradient that does not fit the job; its rows go to others")
            return
        }
        let values = r.gradient.floats()
        guard values.allSatisfy(\.isFinite) else {
            malformed(c, worker, job.id, r.assignment, "a gradient that is not finite; its rows go to others")
            return
        }
        scheduled(
            job.id,
            .result(worker: worker.id, assignment: r.assignment, kind: .step, unit: r.step, seconds: r.seconds),
            Contribution(worker: worker.id, loss: r.loss, tokens: r.tokens, seconds: r.seconds, values: values))
    }

    private mutating func roundResult(_ c: Connection, _ r: RoundResult, bytes: Int) {
        guard let job = job(r.job), job.plan.mode == .diloco || job.plan.mode == .federated,
            let worker = peers[c]?.worker
        else { return }
        out.append(.jobTraffic(bytes, job: job.id))
        guard let delta = job.compression.decode(r.delta, name: "delta", count: job.parameterCount),
            delta.allSatisfy(\.isFinite)
        else {
            malformed(
                c, worker, job.id, r.assignment, "a round result whose tensors do not fit the job; the round goes on")
            return
        }
        scheduled(
            job.id,
            .result(worker: worker.id, assignment: r.assignment, kind: .round, unit: r.round, seconds: r.seconds),
            Contribution(worker: worker.id, loss: r.loss, tokens: r.tokens, seconds: r.seconds, values: delta))
    }

    private mutating func evalResult(_ c: Connection, _ r: EvalResult, bytes: Int) {
        guard let job = job(r.job), let worker = peers[c]?.worker else { return }
        out.append(.jobTraffic(bytes, job: job.id))
        scheduled(
            job.id,
            .result(worker: worker.id, assignment: r.assignment, kind: .evaluation, unit: r.step, seconds: r.seconds),
            Contribution(worker: worker.id, loss: r.loss, tokens: r.tokens, seconds: r.seconds, values: []))
    }

    private mutating func malformed(
        _ c: Connection, _ worker: WorkerInfo, _ job: String, _ assignment: Int, _ what: String
    ) {
        note(.warning, "dropped \(what) from \(worker.name)")
        peers[c]?.bad += 1
        scheduled(job, .malformed(worker: worker.id, assignment: assignment))
    }

    // MARK: Time

    private mutating func tick() {
        let interval = settings.heartbeat
        for c in connections {
            guard let p = peers[c] else { continue }
            if now - p.lastSeen > interval * Double(settings.liveness) {
                lose(c, .silent(seconds: now - p.lastSeen))
            } else if p.worker != nil, now - p.lastSent >= interval {
                send(c, Message(.heartbeat))
            }
        }
        // A worker not ready for the running job long after it was told (the `job` or its `ready` was lost): tell
        // it again. Workers treat a repeated `job` as a no-op, or answer `ready` again.
        for job in jobs {
            for c in connections {
                guard let w = peers[c]?.worker, !w.readyJobs.contains(job.id), w.faults[job.id] == nil,
                    now - (w.jobSentAt[job.id] ?? 0) > max(2, 5 * interval)
                else { continue }
                announce(job, to: c)
            }
        }
        for job in jobs { scheduled(job.id, .tick) }
    }

    // MARK: The job

    private mutating func start(_ active: ActiveJob) {
        if let i = jobs.firstIndex(where: { $0.id == active.id }) {
            jobs[i] = active
        } else {
            jobs.append(active)
        }
        schedules[active.id] = JobSchedule(
            plan: active.plan, unit: active.unit, evaluationPending: active.evaluationPending,
            firstAssignment: active.firstAssignment, deadlines: settings.deadlines)
        shareOffset[active.id] = 0
        wanting.remove(active.id)
        for c in connections where peers[c]?.worker != nil {
            peers[c]?.worker?.readyJobs.remove(active.id)
            peers[c]?.worker?.faults[active.id] = nil
            announce(active, to: c)
        }
    }

    /// Drops a running job and its schedule, keeping the speeds it measured for the next job.
    private mutating func stop(_ id: String) {
        guard let schedule = schedules[id] else { return }
        for c in connections {
            if let w = peers[c]?.worker, schedule.busyWorkers.contains(w.id) || w.readyJobs.contains(id) {
                send(c, Revoke(job: id, assignment: 0).message)
            }
        }
        for (c, p) in peers {
            if let w = p.worker, let speed = schedule.workers[w.id]?.rowsPerSecond {
                peers[c]?.worker?.rowsPerSecond = speed
            }
            peers[c]?.worker?.readyJobs.remove(id)
            peers[c]?.worker?.faults[id] = nil
            peers[c]?.worker?.jobSentAt[id] = nil
        }
        // Its assignments in flight no longer keep their workers busy.
        for a in schedule.outstanding.values.sorted(by: { $0.id < $1.id }) {
            settle(worker: a.worker, assignment: a.id, done: false)
        }
        jobs.removeAll { $0.id == id }
        schedules[id] = nil
        shareOffset[id] = nil
        wanting.remove(id)
    }

    // MARK: The share between running jobs

    /// A job's place in the share: rows served (and credited), over its priority.
    private func level(_ id: String) -> Double {
        guard let s = schedules[id], let job = job(id) else { return 0 }
        return (Double(s.servedRows) + (shareOffset[id] ?? 0)) / job.priority
    }

    /// The rows job `id` may have been served and still begin a unit: its priority times the lowest level of the
    /// other jobs that want the pool (nil when none does: it may run freely). A job that comes to want the pool is
    /// first lifted to that level, so a job never starves the others to catch up on time it could not use.
    private mutating func shareLimit(_ id: String) -> Double? {
        let now = jobs.filter { schedules[$0.id]?.wantsWork == true }.map(\.id)
        if let floor = now.filter({ wanting.contains($0) }).map(level).min() {
            for newcomer in now where !wanting.contains(newcomer) {
                guard let job = job(newcomer), let s = schedules[newcomer] else { continue }
                shareOffset[newcomer] = max(shareOffset[newcomer] ?? 0, floor * job.priority - Double(s.servedRows))
            }
        }
        wanting = Set(now)
        guard let job = job(id),
            let floor = jobs.filter({ $0.id != id && wanting.contains($0.id) }).map({ level($0.id) }).min()
        else { return nil }
        return floor * job.priority - (shareOffset[id] ?? 0)
    }

    /// Hands an event to a job's schedule and turns its actions into the core's (an accepted result with its
    /// contribution); returns the schedule's actions.
    @discardableResult
    private mutating func scheduled(
        _ id: String, _ event: JobSchedule.Event, _ contribution: Contribution? = nil
    ) -> [JobSchedule.Action] {
        guard schedules[id] != nil else { return [] }
        let limit = shareLimit(id)
        guard var s = schedules[id] else { return [] }
        s.beginLimit = limit
        s.measuresSpeed = jobs.count == 1
        s.rowsInFlight = jobs.count == 1 ? [:] : busy.mapValues { $0.open.values.reduce(0, +) }
        let actions = s.handle(event, now: now)
        schedules[id] = s
        trackBusy(actions)
        for action in actions {
            switch action {
            case .begin(let kind, let unit): out.append(.begin(kind, unit: unit, job: id))
            case .assign(let a, let kind, let unit):
                guard let c = connection(of: a.worker) else { continue }
                peers[c]?.lastSent = now
                out.append(.assign(c, a, kind, unit: unit, job: id))
            case .revoke(let a, let kind):
                note(
                    .info,
                    kind == .round
                        ? "\(name(of: a.worker)) missed the deadline of round \(s.unit + 1); the round goes on without it"
                        : "assignment \(a.id) of \(kind == .step ? "step \(s.unit + 1)" : "the evaluation") missed its "
                            + "deadline; its \(a.rows.count) rows go to others")
                if let c = connection(of: a.worker) { send(c, Revoke(job: id, assignment: a.id).message) }
            case .released: break
            case .accept(let a, let kind):
                if let contribution { out.append(.accept(a, kind, contribution, job: id)) }
            case .ignore(let worker, let assignment, let kind):
                note(
                    .info,
                    "ignored a \(kind.rawValue) result for assignment \(assignment) from \(name(of: worker)) (not outstanding)"
                )
            case .finish(let kind, let unit, let rows): out.append(.finish(kind, unit: unit, rows: rows, job: id))
            case .complete: out.append(.complete(job: id))
            }
        }
        // A unit finished: the jobs the share held back may begin theirs now, beside this job's next, so a worker
        // gets both jobs' assignments together (and computes them in one pass where they share a base).
        if !nudging, actions.contains(where: { if case .finish = $0 { true } else { false } }) {
            nudging = true
            for other in jobs where other.id != id { scheduled(other.id, .tick) }
            nudging = false
        }
        return actions
    }

    /// Set while the other jobs are nudged after a finished unit (they do not nudge in turn).
    private var nudging = false

    /// Follows each worker's assignments across jobs; when the last one in flight is done, the rows it computed over
    /// the time it was busy are its speed for every job (while several jobs run).
    private mutating func trackBusy(_ actions: [JobSchedule.Action]) {
        for action in actions {
            switch action {
            case .assign(let a, _, _): busy[a.worker, default: Busy(since: now)].open[a.id] = a.rows.count
            case .accept(let a, _): settle(worker: a.worker, assignment: a.id, done: true)
            case .revoke(let a, _), .released(let a, _): settle(worker: a.worker, assignment: a.id, done: false)
            default: break
            }
        }
    }

    private mutating func settle(worker: String, assignment: Int, done: Bool) {
        guard var b = busy[worker], let rows = b.open.removeValue(forKey: assignment) else { return }
        if done { b.rowsDone += rows }
        guard b.open.isEmpty else {
            busy[worker] = b
            return
        }
        busy[worker] = nil
        guard jobs.count > 1, b.rowsDone > 0 else { return }
        let speed = Double(b.rowsDone) / max(1e-3, now - b.since)
        for id in schedules.keys { schedules[id]?.observe(worker: worker, rowsPerSecond: speed) }
    }

    private mutating func note(_ level: Logger.Level, _ text: String, _ metadata: Logger.Metadata? = nil) {
        out.append(.log(level, text, metadata))
    }

    static func decimal(_ x: Double) -> String {
        let tenths = Int((x * 10).rounded())
        return "\(tenths / 10).\(abs(tenths % 10))"
    }
}

/// What the coordinator knows of a connected worker.
public struct WorkerInfo: Sendable {
    public var id: String
    public var name: String
    public var cores: Int
    public var memory: Int
    public var gflops: Double
    public var threads: Int
    /// Examples of its own data (federated jobs), if it brought any.
    public var localExamples: Int?
    /// The machine's host name, as it says.
    public var host: String?
    /// The running jobs whose model and data it has loaded.
    public var readyJobs: Set<String> = []
    /// Measured rows per second (moving average) when the last job ended; the running jobs' schedules hold the
    /// current figures.
    public var rowsPerSecond: Double?
    /// When each running job was last announced to it.
    public var jobSentAt: [String: Double] = [:]
    /// Running jobs it said it cannot take part in, and why.
    public var faults: [String: String] = [:]
}

/// A connection to the coordinator's ROUTER socket.
public struct Peer: Sendable {
    public enum Role: Sendable, Equatable {
        /// A publisher is a client that may also publish adapters to the registry.
        case worker, client, publisher, enrol(String), any

        var isClient: Bool { self == .client || self == .publisher }

        var name: String {
            switch self {
            case .worker: "worker"
            case .client: "client"
            case .publisher: "publisher"
            case .enrol: "enrolment key"
            case .any: "peer"
            }
        }

        func allows(_ t: MessageType) -> Bool {
            switch self {
            case .enrol: return t == .enrol
            case .worker:
                return [
                    .hello, .heartbeat, .ready, .result, .roundResult, .evalResult, .fetch, .bye, .error, .adapters,
                    .resolve,
                ].contains(t)
            case .client:
                return [.submit, .status, .workers, .cancel, .pull, .fetch, .heartbeat, .adapters, .resolve].contains(t)
            case .publisher: return t == .publish || Self.client.allows(t)
            case .any: return t != .enrol && Self.worker.allows(t) || Self.publisher.allows(t)
            }
        }
    }

    /// Bad messages after which a connection is ignored.
    static let badLimit = 20

    public let routingId: [UInt8]
    public var key: String?
    public var role: Role
    public var lastSeen: Double
    public var lastSent: Double
    public var worker: WorkerInfo?
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
        case "publisher":
            role = .publisher
            key = parts.count > 1 ? parts[1] : nil
        case "enrol" where parts.count > 1: role = .enrol(parts[1])
        default: role = .enrol("")
        }
    }

    public var label: String {
        if let w = worker { return "\(w.name) [\(w.id)]" }
        let hex = "0123456789abcdef".map { $0 }
        return
            "\(role.name) \(key.map { String($0.prefix(8)) + "…" } ?? routingId.prefix(4).map { "\(hex[Int($0 >> 4)])\(hex[Int($0 & 15)])" }.joined())"
    }
}

/// The last 65 536 gaps (seconds), for quantiles.
public struct GapSamples: Sendable {
    private var samples: [Double] = []
    private var next = 0
    public private(set) var count = 0

    mutating func record(_ gap: Double) {
        count += 1
        if samples.count < 65536 {
            samples.append(gap)
        } else {
            samples[next] = gap
            next = (next + 1) % samples.count
        }
    }

    public func quantile(_ q: Double) -> Double {
        guard !samples.isEmpty else { return 0 }
        let sorted = samples.sorted()
        return sorted[min(sorted.count - 1, Int(q * Double(sorted.count - 1)))]
    }
}

/// Why a worker's connection ended.
public enum Departure: Sendable, Equatable, CustomStringConvertible {
    /// It said `bye`.
    case left(reason: String)
    /// Nothing heard from it for the liveness window.
    case silent(seconds: Double)
    /// Its connection refused a send (the process died, the TCP connection closed).
    case unreachable
    /// The same worker connected again; the old connection is dropped.
    case reconnected

    /// One word, for `cairn workers --json` and metrics.
    public var name: String {
        switch self {
        case .left: "left"
        case .silent: "silent"
        case .unreachable: "unreachable"
        case .reconnected: "reconnected"
        }
    }

    public var description: String {
        switch self {
        case .left(let reason): "left (\(reason))"
        case .silent(let seconds): "lost (silent for \(CoordinatorCore.decimal(seconds)) s)"
        case .unreachable: "unreachable"
        case .reconnected: "reconnected"
        }
    }
}
