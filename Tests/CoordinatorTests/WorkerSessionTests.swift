import Foundation
import Testing
import ModelFormats
import Training
import Wire
import Worker

/// The worker's session, driven directly: no socket, no thread, no clock; virtual time and an in-memory cache.
@Suite struct WorkerSessionTests {
    /// A cache in memory: blobs, partial files, one claim, free space, and a disk that can fail.
    final class MemoryCache: ModelCache {
        var blobs: [String: [UInt8]] = [:]
        var partial: [String: [UInt8]] = [:]
        var freeBytes: Int? = 1 << 40
        var claimedElsewhere = false
        var claimed = false
        var diskFails = false

        final class Claim: CacheClaim {
            let cache: MemoryCache
            init(_ cache: MemoryCache) { self.cache = cache }
            func release() { cache.claimed = false }
        }

        func contains(_ blob: String) -> Bool { blobs[blob] != nil }
        func partialSize(_ blob: String) -> Int { partial[blob]?.count ?? 0 }
        func claim(_ blob: String) -> (any CacheClaim)? {
            guard !claimedElsewhere, !claimed else { return nil }
            claimed = true
            return Claim(self)
        }
        func appendPartial(_ blob: String, _ bytes: [UInt8]) throws(FormatError) {
            if diskFails { throw FormatError(.io, path: "/cache", "no space left on device") }
            partial[blob, default: []] += bytes
        }
        func completePartial(_ blob: String) throws(FormatError) {
            let bytes = partial.removeValue(forKey: blob) ?? []
            guard FileHash.sha256(bytes) == blob else {
                throw FormatError(.invalidValue, path: blob, "SHA-256 differs")
            }
            blobs[blob] = bytes
        }
        func path(_ blob: String) -> String { "/cache/\(blob)" }
    }

    static let machine = WorkerSession.Machine(
        name: "w", cores: 2, memory: 1 << 30, gflops: 10, threads: 2, host: "h", localExamples: 0,
        endpoint: "tcp://127.0.0.1:1", cacheDirectory: "/cache")
    /// The model: 2.5 chunks.
    static let model = (0..<(Wire.chunkBytes * 5 / 2)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
    static let blob = FileHash.sha256(model)
    static let loaded = WorkerSession.LoadedJob(
        id: "job-1", parameterCount: 4, vocabularySize: 10, sequenceLength: 2, federated: false)

    /// The session, its cache and virtual time.
    struct Harness {
        var session: WorkerSession
        let cache = MemoryCache()
        var now = 100.0
        var sent: [Message] = []
        var actions: [WorkerSession.Action] = []

        init() { session = WorkerSession(machine: WorkerSessionTests.machine, cache: cache) }

        /// Feeds an event; answers `.connect` with `.connected`. Returns the actions, records the messages sent.
        @discardableResult
        mutating func feed(_ e: WorkerSession.Event, after seconds: Double = 0) -> [WorkerSession.Action] {
            now += seconds
            var pending = [e]
            var all: [WorkerSession.Action] = []
            while !pending.isEmpty {
                for a in session.handle(pending.removeFirst(), now: now) {
                    all.append(a)
                    if case .connect = a { pending.append(.connected) }
                    if case .send(let m) = a { sent.append(m) }
                }
            }
            actions += all
            return all
        }

        /// A message, and then the end of what the connection holds (`drained`), as the agent's loop feeds them.
        mutating func receive(_ m: Message, after seconds: Double = 0) -> [WorkerSession.Action] {
            feed(.received(m.encode()), after: seconds) + feed(.drained)
        }

        /// Connected and welcomed.
        mutating func join() {
            feed(.tick)
            _ = receive(Message(.welcome, ["worker": "w-1", "heartbeat_ms": 1000, "liveness": 5]))
        }

        /// A chunk the coordinator sends for a `fetch`.
        static func chunk(for fetch: Message) -> Message {
            let offset = fetch.int("offset")
            let bytes = Array(model[offset..<offset + fetch.int("length")])
            return Message(
                .chunk,
                ["blob": .string(blob), "offset": .integer(Int64(offset)), "total": .integer(Int64(model.count))],
                tensors: [Tensor(name: "data", dtype: .u8, shape: [bytes.count], bytes: bytes)])
        }
    }

    static func job(totalSteps: Int? = 40, id: String = "job-1", blob: String = blob) -> Message {
        var fields: JSONObject = [
            "job": .string(id), "spec": "steps: 0\nepochs: 2\nseq_len: 2\nbatch_size: 1", "model_blob": .string(blob),
            "model_bytes": .integer(Int64(model.count)), "mode": "sync",
        ]
        if let totalSteps { fields["total_steps"] = .integer(Int64(totalSteps)) }
        return Message(.job, fields)
    }

    static func assign(
        _ id: Int, parameters: Int = 4, token: Int32 = 3, type: MessageType = .assign, job: String = "job-1"
    ) -> Message {
        Message(
            type, ["job": .string(job), "assignment": .integer(Int64(id)), "step": 1, "rows": 1],
            tensors: [
                Tensor(name: "parameters", floats: [Float](repeating: 0.5, count: parameters)),
                Tensor(name: "tokens", ints: [token, 1]), Tensor(name: "targets", ints: [1, -1]),
                Tensor(name: "positions", ints: [0, 1]), Tensor(name: "starts", ints: [0, 0]),
            ])
    }

    static func loads(_ actions: [WorkerSession.Action]) -> [WorkerSession.JobSpec] {
        actions.compactMap { if case .load(let s) = $0 { s } else { nil } }
    }

    static func work(_ actions: [WorkerSession.Action]) -> [WorkerSession.Work] {
        actions.flatMap { a -> [WorkerSession.Work] in
            if case .compute(let w) = a { return w }
            return []
        }
    }

    static func result(_ id: Int) -> Message {
        Message(.result, ["job": "job-1", "assignment": .integer(Int64(id)), "loss": 1, "tokens": 1])
    }

    /// Hello on connecting, heartbeats while quiet, and after the coordinator's silence a reconnect with a
    /// backoff that doubles, until a message resets it.
    @Test func livenessHeartbeatsAndBackoff() {
        var h = Harness()
        h.join()
        #expect(h.sent.map(\.type) == [.hello])
        #expect(h.sent[0].int("cores") == 2 && h.sent[0].string("name") == "w")
        h.feed(.tick, after: 0.5)
        #expect(h.sent.count == 1)
        h.feed(.tick, after: 0.6)
        #expect(h.sent.last?.type == .heartbeat)
        // 5 heartbeats of silence: disconnect; then attempts at 0.5 s, 1 s, 2 s apart.
        let silent = h.feed(.tick, after: 4.0)
        #expect(silent.contains { if case .disconnect = $0 { true } else { false } })
        #expect(!h.session.connected)
        var gaps: [Double] = []
        var last = h.now
        for _ in 0..<3 {
            while !h.feed(.tick, after: 0.1).contains(where: { if case .connect = $0 { true } else { false } }) {}
            gaps.append(h.now - last)
            last = h.now
            h.feed(.tick, after: 5.1)  // silent again
            last = h.now
        }
        #expect(zip(gaps, [0.5, 1.0, 2.0]).allSatisfy { abs($0 - $1) < 0.11 }, "\(gaps)")
        // A message from the coordinator resets the backoff.
        while !h.feed(.tick, after: 0.1).contains(where: { if case .connect = $0 { true } else { false } }) {}
        _ = h.receive(Message(.welcome, ["worker": "w-1", "heartbeat_ms": 1000, "liveness": 5]))
        h.feed(.tick, after: 5.1)
        let start = h.now
        while !h.feed(.tick, after: 0.1).contains(where: { if case .connect = $0 { true } else { false } }) {}
        #expect(abs(h.now - start - 0.5) < 0.11)
    }

    /// A job's model is fetched in credit-sized windows, verified and loaded with the job's step count; a lost
    /// connection resumes the transfer from what arrived.
    @Test func fetchesTheModelResumesAndLoadsIt() throws {
        var h = Harness()
        h.join()
        _ = h.receive(Self.job())
        var fetches = h.sent.filter { $0.type == .fetch }
        #expect(fetches.count == 3)
        // The first chunk arrives; the connection drops; the others are asked for again on reconnecting.
        _ = h.receive(Harness.chunk(for: fetches[0]))
        #expect(h.cache.partialSize(Self.blob) == Wire.chunkBytes)
        h.feed(.tick, after: 6)
        h.sent = []
        while h.sent.isEmpty { h.feed(.tick, after: 0.1) }
        #expect(h.sent.map(\.type) == [.hello])
        _ = h.receive(Message(.welcome, ["worker": "w-2", "heartbeat_ms": 1000, "liveness": 10]))
        fetches = h.sent.filter { $0.type == .fetch }
        #expect(fetches.map { $0.int("offset") } == [Wire.chunkBytes, 2 * Wire.chunkBytes])
        // One of them is lost: after a stall the outstanding one is asked for again.
        _ = h.receive(Harness.chunk(for: fetches[0]))
        h.sent = []
        h.feed(.tick, after: 5.5)
        fetches += h.sent.filter { $0.type == .fetch }
        #expect(fetches.map { $0.int("offset") } == [Wire.chunkBytes, 2 * Wire.chunkBytes, 2 * Wire.chunkBytes])
        fetches.removeFirst(2)
        var loads: [WorkerSession.JobSpec] = []
        for f in fetches.reversed() { loads += Self.loads(h.receive(Harness.chunk(for: f))) }
        #expect(h.cache.contains(Self.blob) && !h.cache.claimed)
        let spec = try #require(loads.first)
        #expect(loads.count == 1 && spec.id == "job-1" && spec.totalSteps == 40 && spec.modelPath.hasSuffix(Self.blob))
        h.feed(.loaded(Self.loaded))
        #expect(h.sent.last?.type == .ready)
        // Without total_steps (an older coordinator): the spec's steps, at least 1.
        var old = Harness()
        old.cache.blobs[Self.blob] = Self.model
        old.join()
        #expect(Self.loads(old.receive(Self.job(totalSteps: nil))).first?.totalSteps == 1)
    }

    /// A cache without room, a disk that fails and a model that does not load are each reported once as the
    /// job's `error`, and nothing more is tried for the job.
    @Test func faultsAreReportedOnce() {
        var h = Harness()
        h.cache.freeBytes = 1000
        h.join()
        _ = h.receive(Self.job())
        let errors = h.sent.filter { $0.type == .error }
        #expect(
            errors.count == 1 && errors[0].string("code") == "cache" && errors[0].string("message").contains("free"))
        h.feed(.tick, after: 1.1)
        #expect(h.sent.filter { $0.type == .error || $0.type == .fetch }.count == 1)
        // Sent the job again (space may have been freed), the worker tries again.
        _ = h.receive(Self.job())
        #expect(h.sent.filter { $0.type == .error }.count == 2)

        var d = Harness()
        d.cache.diskFails = true
        d.join()
        _ = d.receive(Self.job())
        let fetch = d.sent.first { $0.type == .fetch }!
        _ = d.receive(Harness.chunk(for: fetch))
        #expect(d.sent.last?.type == .error && d.sent.last?.string("message").contains("no space") == true)
        #expect(!d.cache.claimed)

        var l = Harness()
        l.cache.blobs[Self.blob] = Self.model
        l.join()
        _ = l.receive(Self.job())
        l.feed(.loadFailed(job: "job-1", message: "cannot load the model for job-1: bad file"))
        #expect(l.sent.last?.type == .error && l.sent.last?.string("code") == "load")
    }

    /// A job spec newer than this worker reads, or settings it does not know, are said to the coordinator as the
    /// job's `error` (which leaves the worker out and shows why) instead of stalling the job.
    @Test func aSpecThisWorkerCannotRunIsReported() {
        var newer = Harness()
        newer.join()
        var m = Self.job()
        m.metadata["spec_version"] = .integer(Int64(Wire.jobSpecVersion + 1))
        #expect(Self.loads(newer.receive(m)).isEmpty)
        let version = newer.sent.last
        #expect(version?.type == .error && version?.string("code") == "version")
        #expect(version?.string("message").contains("update cairn on this machine") == true)

        var unknown = Harness()
        unknown.join()
        m = Self.job()
        m.metadata["spec"] = "steps: 3\nfuture_setting: 1"
        #expect(Self.loads(unknown.receive(m)).isEmpty)
        let spec = unknown.sent.last
        #expect(spec?.type == .error && spec?.string("code") == "spec" && spec?.string("job") == "job-1")
        #expect(spec?.string("message").contains("future_setting") == true)
    }

    /// Another worker sharing the cache is fetching: wait, then load what it fetched.
    @Test func waitsForAnotherWorkerSharingTheCache() {
        var h = Harness()
        h.cache.claimedElsewhere = true
        h.join()
        _ = h.receive(Self.job())
        #expect(h.sent.filter { $0.type == .fetch }.isEmpty)
        #expect(Self.loads(h.feed(.tick, after: 1.1)).isEmpty)
        h.cache.blobs[Self.blob] = Self.model
        #expect(Self.loads(h.feed(.tick, after: 1.1)).count == 1)
    }

    /// One assignment computes at a time; the next waits; a revoked one's result is dropped; malformed ones
    /// (another adapter size, a token outside the vocabulary, another job) are never computed.
    @Test func assignmentsQueueRevokeAndAreChecked() throws {
        var h = Harness()
        h.cache.blobs[Self.blob] = Self.model
        h.join()
        _ = h.receive(Self.job())
        h.feed(.loaded(Self.loaded))
        let first = Self.work(h.receive(Self.assign(1)))
        #expect(first.count == 1 && first[0].kind == .gradient && first[0].rows?.tokens == [3, 1])
        #expect(Self.work(h.receive(Self.assign(2))).isEmpty)
        _ = h.receive(Message(.revoke, ["job": "job-1", "assignment": 1]))
        let next = Self.work(h.feed(.computed(assignment: 1, result: Self.result(1))))
        #expect(!h.sent.contains { $0.type == .result })
        #expect(next.map(\.assignment) == [2])
        h.feed(.computed(assignment: 2, result: Self.result(2)))
        #expect(h.sent.filter { $0.type == .result }.map { $0.int("assignment") } == [2])
        for bad in [Self.assign(3, parameters: 5), Self.assign(4, token: 10), Self.assign(5, type: .evaluate)] {
            var m = bad
            if m.int("assignment") == 5 { m.metadata["job"] = "job-2" }
            #expect(Self.work(h.receive(m)).isEmpty)
            #expect(h.session.computing.isEmpty)
        }
        #expect(Self.work(h.receive(Self.assign(6, type: .evaluate))).first?.kind == .evaluation)
        // Work that could not run (its model replaced meanwhile) frees the worker for the next, and sends nothing.
        #expect(Self.work(h.receive(Self.assign(7))).isEmpty)
        let sent = h.sent.count
        let after = Self.work(h.feed(.computeFailed(assignment: 6, why: "replaced")))
        #expect(after.map(\.assignment) == [7] && h.sent.count == sent)
    }

    /// Asked to stop while computing: the result goes back first, then `bye`, then the worker leaves.
    @Test func stopReturnsTheAssignmentInHandFirst() {
        var h = Harness()
        h.cache.blobs[Self.blob] = Self.model
        h.join()
        _ = h.receive(Self.job())
        h.feed(.loaded(Self.loaded))
        _ = h.receive(Self.assign(1))
        #expect(!h.feed(.stop).contains { if case .leave = $0 { true } else { false } })
        _ = h.receive(Self.assign(2))
        let end = h.feed(.computed(assignment: 1, result: Self.result(1)))
        #expect(h.sent.suffix(2).map(\.type) == [.result, .bye])
        #expect(end.contains { if case .leave = $0 { true } else { false } })
        #expect(Self.work(end).isEmpty && h.session.finished)
        #expect(h.feed(.tick, after: 1).isEmpty)
    }

    /// A refused key ends the session with an error that says what to do.
    @Test func aRefusedKeyFails() {
        var h = Harness()
        h.join()
        let end = h.feed(.refused)
        let failure = end.compactMap { if case .fail(let e) = $0 { e } else { nil } }.first
        #expect(failure?.message.contains("join again with a new token") == true)
        #expect(h.session.finished)
    }

    // MARK: Several jobs

    static func loaded(_ id: String, base: String) -> WorkerSession.LoadedJob {
        WorkerSession.LoadedJob(
            id: id, parameterCount: 4, vocabularySize: 10, sequenceLength: 2, federated: false, base: base)
    }

    /// The assignments of each pass started, in order.
    static func passes(_ actions: [WorkerSession.Action]) -> [[Int]] {
        actions.compactMap { if case .compute(let w) = $0 { w.map(\.assignment) } else { nil } }
    }

    /// A session, connected and welcomed, holding these jobs (id, base) loaded.
    static func holding(_ jobs: [(id: String, base: String)]) -> Harness {
        var h = Harness()
        h.cache.blobs[Self.blob] = Self.model
        h.join()
        for (id, base) in jobs {
            _ = h.receive(Self.job(id: id))
            h.feed(.loaded(Self.loaded(id, base: base)))
        }
        return h
    }

    static func unloads(_ actions: [WorkerSession.Action]) -> [String] {
        actions.compactMap { if case .unload(let job) = $0 { job } else { nil } }
    }

    /// Every job the coordinator announces is held: their models load one after another, each is said ready, and an
    /// announcement again of a held job is answered at once.
    @Test func holdsSeveralJobsLoadingOneAtATime() {
        var h = Harness()
        h.cache.blobs[Self.blob] = Self.model
        h.join()
        #expect(Self.loads(h.receive(Self.job(id: "job-1"))).map(\.id) == ["job-1"])
        #expect(Self.loads(h.receive(Self.job(id: "job-2"))).isEmpty, "job-2 waits for job-1's load")
        #expect(Self.loads(h.feed(.loaded(Self.loaded("job-1", base: "b")))).map(\.id) == ["job-2"])
        h.feed(.loaded(Self.loaded("job-2", base: "b")))
        #expect(h.sent.filter { $0.type == .ready }.map { $0.string("job") } == ["job-1", "job-2"])
        #expect(Set(h.session.loaded.keys) == ["job-1", "job-2"])
        _ = h.receive(Self.job(id: "job-1"))
        #expect(h.sent.last?.type == .ready && h.sent.last?.string("job") == "job-1")
    }

    /// Step assignments of two jobs on one base that arrive together are computed in one pass; an evaluation, or a
    /// job on another base, is computed on its own.
    @Test func stepsOfJobsOnOneBaseShareAPass() {
        var h = Self.holding([("job-1", "b"), ("job-2", "b"), ("job-3", "other")])
        // Received one after another, started once the connection is drained.
        var actions = h.feed(.received(Self.assign(1, job: "job-1").encode()))
        actions += h.feed(.received(Self.assign(2, job: "job-3").encode()))
        actions += h.feed(.received(Self.assign(3, job: "job-2").encode()))
        actions += h.feed(.received(Self.assign(4, type: .evaluate, job: "job-2").encode()))
        #expect(Self.work(actions).isEmpty)
        #expect(Self.passes(h.feed(.drained)) == [[1, 3]])
        #expect(h.session.computing == [1, 3])
        #expect(Self.passes(h.feed(.computed(assignment: 3, result: Self.result(3)))).isEmpty, "the pass is not over")
        #expect(Self.passes(h.feed(.computed(assignment: 1, result: Self.result(1)))) == [[2]])
        #expect(Self.passes(h.feed(.computed(assignment: 2, result: Self.result(2)))) == [[4]])
        #expect(h.sent.filter { $0.type == .result }.map { $0.int("assignment") } == [3, 1, 2])
    }

    /// A job the coordinator ends (revoke of assignment 0) is dropped: its queued work, its result in hand, and its
    /// model (unloaded); announced again, it loads again.
    @Test func anEndedJobIsUnloaded() {
        var h = Self.holding([("job-1", "b"), ("job-2", "b")])
        _ = h.receive(Self.assign(1, job: "job-1"))
        _ = h.receive(Self.assign(2, job: "job-1"))
        let revoked = h.receive(Message(.revoke, ["job": "job-1", "assignment": 0]))
        #expect(Self.unloads(revoked) == ["job-1"] && Array(h.session.loaded.keys) == ["job-2"])
        let after = h.feed(.computed(assignment: 1, result: Self.result(1)))
        #expect(Self.work(after).isEmpty && !h.sent.contains { $0.type == .result }, "nothing of job-1 goes back")
        #expect(Self.loads(h.receive(Self.job(id: "job-1"))).map(\.id) == ["job-1"])
    }

    /// A step assignment that arrives alone, while another job on its base has been sending steps, waits a moment
    /// for that job's (still on the wire) and goes into one pass with it; if none comes, it starts alone after at
    /// most a tenth of the last pass.
    @Test func aLoneStepWaitsBrieflyForItsCompanion() {
        var h = Self.holding([("job-1", "b"), ("job-2", "b")])
        var actions = h.feed(.received(Self.assign(1, job: "job-1").encode()))
        actions += h.feed(.received(Self.assign(2, job: "job-2").encode()))
        #expect(Self.passes(actions + h.feed(.drained)) == [[1, 2]])
        h.feed(.computed(assignment: 1, result: Self.result(1)))
        h.feed(.computed(assignment: 2, result: Self.result(2)), after: 1)
        // The last pass took 1 s: a lone step waits up to 0.1 s.
        #expect(Self.passes(h.receive(Self.assign(3, job: "job-1"))).isEmpty)
        #expect(Self.passes(h.feed(.tick, after: 0.05)).isEmpty)
        #expect(Self.passes(h.receive(Self.assign(4, job: "job-2"), after: 0.01)) == [[3, 4]])
        h.feed(.computed(assignment: 3, result: Self.result(3)))
        h.feed(.computed(assignment: 4, result: Self.result(4)), after: 1)
        #expect(Self.passes(h.receive(Self.assign(5, job: "job-1"))).isEmpty)
        #expect(Self.passes(h.feed(.tick, after: 0.11)) == [[5]], "no companion came: it runs alone")
        // An evaluation never waits.
        h.feed(.computed(assignment: 5, result: Self.result(5)))
        #expect(Self.passes(h.receive(Self.assign(6, type: .evaluate, job: "job-1"))) == [[6]])
    }
}
