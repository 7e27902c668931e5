// CoordinatorCore on virtual time: roles, rate limits, liveness, hellos, results checked against the job, and a
// cancelled job's revokes. No sockets, no store: events in, actions out.

import Coordinator
import Support
import TensorKernels
import Testing
import Wire

@Suite struct CoordinatorCoreTests {
    struct Harness {
        var core: CoordinatorCore
        var now = 100.0

        init(messagesPerSecond: Double = 500) {
            var settings = CoordinatorCore.Settings()
            settings.heartbeatMilliseconds = 1000
            settings.liveness = 3
            settings.messagesPerSecond = messagesPerSecond
            settings.deadlines = Deadlines(floor: 5, first: 60)
            core = CoordinatorCore(settings: settings)
        }

        static func connection(_ name: String) -> CoordinatorCore.Connection { Array(name.utf8) }

        @discardableResult
        mutating func receive(_ name: String, as userId: String, _ m: Message, after dt: Double = 0.01)
            -> [CoordinatorCore.Action]
        {
            now += dt
            return core.handle(.received(Self.connection(name), userId: userId, frames: m.encode()), now: now)
        }

        @discardableResult
        mutating func tick(after dt: Double) -> [CoordinatorCore.Action] {
            now += dt
            return core.handle(.tick, now: now)
        }

        @discardableResult
        mutating func start(
            _ plan: JobPlan, parameters: Int = 2, id: String = "job-1", priority: Double = 1,
            firstAssignment: Int = 1 << 20
        ) -> [CoordinatorCore.Action] {
            let job = CoordinatorCore.ActiveJob(
                announcement: JobAnnouncement(
                    job: id, spec: "", modelBlob: "ff", modelBytes: 1, mode: plan.mode.rawValue,
                    totalSteps: plan.totalSteps),
                plan: plan, unit: 0, evaluationPending: false, parameterCount: parameters, compression: .none,
                firstAssignment: firstAssignment, priority: priority)
            return core.handle(.started(job), now: now)
        }

        /// A worker that says hello and is ready for `jobs`.
        mutating func join(_ name: String, jobs: [String] = ["job-1"]) -> [CoordinatorCore.Action] {
            receive(
                name, as: "worker key-\(name)", Hello(name: name, cores: 2, memory: 1, gflops: 10, threads: 2).message)
            return jobs.flatMap { receive(name, as: "worker key-\(name)", Ready(job: $0).message) }
        }
    }

    static func sent(_ actions: [CoordinatorCore.Action]) -> [(to: String, Message)] {
        actions.compactMap {
            if case .send(let c, let m) = $0 { (String(decoding: c, as: UTF8.self), m) } else { nil }
        }
    }

    static func assigned(_ actions: [CoordinatorCore.Action]) -> [(to: String, Assignment)] {
        actions.compactMap {
            if case .assign(let c, let a, _, _, _) = $0 { (String(decoding: c, as: UTF8.self), a) } else { nil }
        }
    }

    static func errorCode(_ actions: [CoordinatorCore.Action]) -> String? {
        sent(actions).compactMap { try? $0.1.decode(as: ErrorReport.self).code }.first
    }

    static let plan = JobPlan(
        mode: .sync, totalSteps: 2, rowsPerStep: 4, innerSteps: 1, evaluationRows: 0, evalEvery: 0)

    /// Each role sends only its messages; a worker the core has not met is asked to say hello; an enrolment key
    /// may only enrol, and its request goes to the store with the token it came with.
    @Test func rolesAreEnforcedBeforeAnythingChanges() {
        var h = Harness()
        let forbidden = h.receive("c", as: "client key-c", Ready(job: "job-1").message)
        #expect(Self.errorCode(forbidden) == "forbidden")
        #expect(h.core.messagesRejected == 1)
        let unknown = h.receive("w", as: "worker key-w", Message(.heartbeat))
        #expect(Self.errorCode(unknown) == "hello_first")
        let enrolHello = h.receive(
            "e", as: "enrol tok-1", Hello(name: "x", cores: 1, memory: 1, gflops: 1, threads: 1).message)
        #expect(Self.errorCode(enrolHello) == "forbidden" && h.core.peers.values.allSatisfy { $0.worker == nil })
        let enrol = h.receive("e", as: "enrol tok-1", Enrol(publicKey: "k", role: "worker", name: "x").message)
        guard case .serve(_, .enrol(let token, let e)) = enrol.first else {
            Issue.record("no enrol request: \(enrol)")
            return
        }
        #expect(token == "tok-1" && e.name == "x")
        // A status request from a client goes to the store.
        let status = h.receive("c", as: "client key-c", StatusRequest(job: "job-1").message)
        #expect(status.contains { if case .serve(_, .status(let s)) = $0 { s.job == "job-1" } else { false } })
    }

    /// Beyond its burst a connection's messages are dropped undecoded and counted; a connection that keeps sending
    /// garbage is ignored for the rest of its life.
    @Test func floodsAreLimitedAndGarbageIsIgnored() {
        var h = Harness(messagesPerSecond: 10)
        for _ in 0..<40 { h.receive("c", as: "client key-c", StatusRequest().message, after: 0) }
        #expect(h.core.messagesRateLimited == 20)
        var g = Harness()
        for _ in 0..<25 {
            g.now += 0.01
            _ = g.core.handle(
                .received(Harness.connection("x"), userId: "client key-x", frames: [[1, 2, 3]]), now: g.now)
        }
        #expect(g.core.messagesRejected == 20, "after 20 bad messages nothing more is even counted")
        let after = g.receive("x", as: "client key-x", StatusRequest().message)
        #expect(after.isEmpty)
    }

    /// Heartbeats go to quiet workers; a silent one is dropped after the liveness window and its rows go back.
    @Test func silentWorkersAreLostAndTheirRowsReassigned() throws {
        var h = Harness()
        h.start(Self.plan)
        let first = try #require(Self.assigned(h.join("a")).first?.1)
        _ = h.join("b")
        // Step 1 was a's alone; step 2 is split across both.
        let r = StepResult(
            job: "job-1", assignment: first.id, step: 1, loss: 1, tokens: 4, seconds: 0.01,
            gradient: Tensor(name: "gradient", floats: [0, 0]))
        let split = Self.assigned(h.receive("a", as: "worker key-a", r.message))
        #expect(Set(split.map(\.to)) == ["a", "b"], "\(split)")
        let beats = Self.sent(h.tick(after: 1.1)).filter { $0.1.type == .heartbeat }
        #expect(Set(beats.map(\.to)) == ["a", "b"])
        // a keeps talking, b goes quiet: after the liveness window b is dropped and its rows go to a.
        h.receive("a", as: "worker key-a", Message(.heartbeat), after: 1.5)
        let lost = h.tick(after: 1.6)
        #expect(h.core.peers[Harness.connection("b")] == nil && h.core.workersDeclaredSilent == 1)
        #expect(h.core.departures.values.contains { $0.name == "silent" })
        let bRows = split.filter { $0.to == "b" }.reduce(0) { $0 + $1.1.rows.count }
        #expect(h.core.schedule(of: "job-1")?.pendingRows.count == bRows, "b's rows wait for a: \(lost)")
        let aId = h.core.peers[Harness.connection("a")]?.worker?.id
        #expect(h.core.schedule(of: "job-1")?.outstanding.values.allSatisfy { $0.worker == aId } == true)
        let outstanding = h.core.schedule(of: "job-1")?.outstanding.values.reduce(0) { $0 + $1.rows.count } ?? 0
        #expect(outstanding + bRows == 4, "every row of step 2 is a's or pending")
    }

    /// A gradient of the wrong length, or not finite, is never accepted: the assignment's rows go to others.
    @Test func resultsAreCheckedAgainstTheJob() throws {
        var h = Harness()
        h.start(Self.plan, parameters: 2)
        let work = Self.assigned(h.join("a"))
        let a = try #require(work.first?.1)
        for bad in [[Float](repeating: 1, count: 3), [Float.nan, 1]] {
            let r = StepResult(
                job: "job-1", assignment: a.id, step: 1, loss: 1, tokens: 4, seconds: 1,
                gradient: Tensor(name: "gradient", floats: bad))
            let actions = h.receive("a", as: "worker key-a", r.message)
            #expect(!actions.contains { if case .accept = $0 { true } else { false } })
        }
        // The rows were released and handed out again; a good result for the new assignment is accepted.
        let again = try #require(h.core.schedule(of: "job-1")?.outstanding.values.first)
        #expect(again.id != a.id)
        let good = StepResult(
            job: "job-1", assignment: again.id, step: 1, loss: 1, tokens: 4, seconds: 1,
            gradient: Tensor(name: "gradient", floats: [1, 2]))
        let accepted = h.receive("a", as: "worker key-a", good.message)
        #expect(accepted.contains { if case .accept(_, .step, let c, _) = $0 { c.values == [1, 2] } else { false } })
        #expect(accepted.contains { if case .finish(.step, 1, _, _) = $0 { true } else { false } })
    }

    /// A second hello on the same connection (asked twice after a restart) keeps what the worker said: still
    /// ready, not announced the job again. Found by the simulator (seeds 8, 85, 187, 252).
    @Test func aRepeatedHelloIsTheSameSession() {
        var h = Harness()
        h.start(Self.plan)
        _ = h.join("a")
        let again = h.receive(
            "a", as: "worker key-a", Hello(name: "a", cores: 2, memory: 1, gflops: 10, threads: 2).message)
        #expect(Self.sent(again).map(\.1.type) == [.welcome])
        #expect(h.core.peers[Harness.connection("a")]?.worker?.readyJobs == ["job-1"])
        // A new connection of the same worker is a new session: the old one is dropped, the job announced.
        let reconnect = h.receive(
            "a2", as: "worker key-a", Hello(name: "a", cores: 2, memory: 1, gflops: 10, threads: 2).message)
        #expect(Self.sent(reconnect).map(\.1.type) == [.welcome, .job])
        #expect(h.core.peers[Harness.connection("a")] == nil)
        #expect(h.core.departures.values.contains { $0.name == "reconnected" })
    }

    /// A job that ends: the workers that hold it are told to drop everything of it and unload it (assignment 0).
    @Test func stoppingAJobTellsItsWorkers() {
        var h = Harness()
        h.start(Self.plan)
        _ = h.join("a")
        let actions = h.core.handle(.stopped(job: "job-1"), now: h.now)
        let revokes = Self.sent(actions).compactMap { try? $0.1.decode(as: Revoke.self) }
        #expect(revokes == [Revoke(job: "job-1", assignment: 0)])
        #expect(h.core.jobs.isEmpty && h.core.schedule(of: "job-1") == nil)
        // Nothing of the old job is taken any more.
        let late = h.receive("a", as: "worker key-a", Ready(job: "job-1").message)
        #expect(late.isEmpty)
    }

    // MARK: Several jobs

    /// An assignment handed out, as the pool sees it.
    struct Handed {
        var to: String
        var job: String
        var assignment: Assignment
        var unit: Int
    }

    static func handed(_ actions: [CoordinatorCore.Action]) -> [Handed] {
        actions.compactMap {
            if case .assign(let c, let a, _, let unit, let job) = $0 {
                Handed(to: String(decoding: c, as: UTF8.self), job: job, assignment: a, unit: unit)
            } else {
                nil
            }
        }
    }

    /// Answers the oldest outstanding assignment, `count` times (a pool that works through what it was given in
    /// order, a second per row); returns the rows accepted per job.
    static func work(_ h: inout Harness, _ pending: inout [Handed], results count: Int) -> [String: Int] {
        var rows: [String: Int] = [:]
        for _ in 0..<count {
            guard !pending.isEmpty else { break }
            let next = pending.removeFirst()
            let r = StepResult(
                job: next.job, assignment: next.assignment.id, step: next.unit, loss: 1,
                tokens: next.assignment.rows.count, seconds: Double(next.assignment.rows.count),
                gradient: Tensor(name: "gradient", floats: [1, 1]))
            let actions =
                h.receive(next.to, as: "worker key-\(next.to)", r.message, after: Double(next.assignment.rows.count))
                + h.tick(after: 0.01)
            for case .accept(let a, _, _, let job) in actions { rows[job, default: 0] += a.rows.count }
            pending += handed(actions)
        }
        return rows
    }

    /// Two jobs on one pool run at once: every worker ready for both holds an assignment of each, and by default
    /// each job gets the same rows (a job ahead waits to begin its next step until the other has caught up).
    @Test func twoJobsShareThePoolFairlyByRows() {
        var h = Harness()
        let plan = JobPlan(mode: .sync, totalSteps: 1000, rowsPerStep: 4)
        h.start(plan, id: "job-1")
        h.start(JobPlan(mode: .sync, totalSteps: 1000, rowsPerStep: 8), id: "job-2", firstAssignment: 1 << 30)
        var pending = Self.handed(h.join("a", jobs: ["job-1", "job-2"]) + h.join("b", jobs: ["job-1", "job-2"]))
        #expect(
            Set(pending.map(\.job)) == ["job-1", "job-2"], "both jobs have work out at once: \(pending.map(\.job))")
        let rows = Self.work(&h, &pending, results: 200)
        let one = rows["job-1", default: 0]
        let two = rows["job-2", default: 0]
        #expect(one > 0 && two > 0)
        // Level within a step of the larger job (8 rows) plus the steps in flight.
        #expect(abs(one - two) <= 16, "job-1 \(one) rows, job-2 \(two)")
    }

    /// A job's `priority` weighs its share: priority 2 gets twice the rows of priority 1.
    @Test func priorityWeighsTheShare() {
        var h = Harness()
        let plan = JobPlan(mode: .sync, totalSteps: 1000, rowsPerStep: 4)
        h.start(plan, id: "job-1")
        h.start(plan, id: "job-2", priority: 2, firstAssignment: 1 << 30)
        var pending = Self.handed(h.join("a", jobs: ["job-1", "job-2"]) + h.join("b", jobs: ["job-1", "job-2"]))
        let rows = Self.work(&h, &pending, results: 300)
        let ratio = Double(rows["job-2", default: 0]) / Double(max(1, rows["job-1", default: 0]))
        #expect(ratio > 1.8 && ratio < 2.2, "job-2 (priority 2) got \(ratio)× job-1's rows: \(rows)")
    }

    /// A job that starts while another has run a long time starts level with it: the first job is not held back
    /// until the newcomer has caught up on the rows it was never there for.
    @Test func aNewJobStartsLevelWithTheRunningOnes() {
        var h = Harness()
        let plan = JobPlan(mode: .sync, totalSteps: 1000, rowsPerStep: 4)
        h.start(plan, id: "job-1")
        var pending = Self.handed(h.join("a"))
        let alone = Self.work(&h, &pending, results: 40)
        #expect(alone["job-1", default: 0] == 160)
        pending += Self.handed(h.start(plan, id: "job-2", firstAssignment: 1 << 30))
        pending += Self.handed(h.receive("a", as: "worker key-a", Ready(job: "job-2").message))
        let after = Self.work(&h, &pending, results: 40)
        #expect(after["job-1", default: 0] >= 60, "job-1 keeps about half the pool: \(after)")
        #expect(after["job-2", default: 0] >= 60, "job-2 gets about half the pool: \(after)")
    }

    /// The job the share held back begins its step as soon as the other finishes, in the same breath as the other's
    /// next: the worker gets both jobs' assignments together (what lets it compute them in one pass).
    @Test func heldJobsBeginTogetherWithTheOthers() throws {
        var h = Harness()
        let plan = JobPlan(mode: .sync, totalSteps: 10, rowsPerStep: 4)
        h.start(plan, id: "job-1")
        h.start(plan, id: "job-2", firstAssignment: 1 << 30)
        let first = Self.handed(h.join("a", jobs: ["job-1", "job-2"]))
        #expect(first.map(\.job) == ["job-1", "job-2"])
        func answer(_ x: Handed) -> [CoordinatorCore.Action] {
            h.receive(
                "a", as: "worker key-a",
                StepResult(
                    job: x.job, assignment: x.assignment.id, step: x.unit, loss: 1, tokens: 4, seconds: 1,
                    gradient: Tensor(name: "gradient", floats: [1, 1])
                ).message)
        }
        // job-1 is a step ahead once its first is in: it waits.
        #expect(Self.handed(answer(first[0])).isEmpty)
        // job-2's result finishes its step: both begin their next at once.
        let both = Self.handed(answer(first[1]))
        #expect(Set(both.map(\.job)) == ["job-1", "job-2"] && both.allSatisfy { $0.unit == 2 }, "\(both)")
    }

    static func answer(_ h: inout Harness, _ x: Handed, after seconds: Double) -> [CoordinatorCore.Action] {
        let r = StepResult(
            job: x.job, assignment: x.assignment.id, step: x.unit, loss: 1, tokens: x.assignment.rows.count,
            seconds: seconds, gradient: Tensor(name: "gradient", floats: [1, 1]))
        return h.receive(x.to, as: "worker key-\(x.to)", r.message, after: seconds)
    }

    /// With two jobs, a worker computes both jobs' rows in each pass, so its turnaround for one job holds the other's
    /// rows too: speeds are measured over whole passes, and every job sees the worker's speed over all its rows
    /// (measured per job, a worker's speed for a job depended on how many rows of the other job it also held, and
    /// on a real pool the split of a job between two equal workers settled at 3 rows to 1).
    @Test func aWorkersSpeedIsMeasuredOverItsWholePass() throws {
        var h = Harness()
        let plan = JobPlan(mode: .sync, totalSteps: 10, rowsPerStep: 4)
        h.start(plan, id: "job-1")
        h.start(JobPlan(mode: .sync, totalSteps: 10, rowsPerStep: 2), id: "job-2", firstAssignment: 1 << 30)
        let pass = Self.handed(h.join("a", jobs: ["job-1", "job-2"]))
        #expect(pass.map(\.assignment.rows.count) == [4, 2])
        let started = try #require(pass.first?.assignment.started)
        _ = Self.answer(&h, pass[0], after: 5)
        _ = Self.answer(&h, pass[1], after: 1)
        // 6 rows in 6 s: one row a second, for both jobs.
        let id = try #require(h.core.peers[Harness.connection("a")]?.worker?.id)
        #expect(abs(h.now - started - 6) < 0.1)
        for job in ["job-1", "job-2"] {
            let speed = try #require(h.core.schedule(of: job)?.workers[id]?.rowsPerSecond)
            #expect(abs(speed - 6 / (h.now - started)) < 1e-9, "\(job): \(speed) rows/s")
        }
    }
}
