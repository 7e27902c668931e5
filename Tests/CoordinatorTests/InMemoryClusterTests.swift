// The coordinator and workers in this process over an in-memory network that cuts links and drops messages
// on purpose (seeded, so each run sees the same losses), checking the state machines' promises without
// sockets: the job finishes, every step is journaled once, and sync arithmetic equals one machine's.

import Coordinator
import Foundation
import Logging
import ModelFormats
import TestSupport
import Testing
import Transport
import Wire
import Worker

final class MemoryCluster {
    let network: InMemoryNetwork
    let dir = Fixtures.temporaryDirectory("cairn-memory-cluster")
    let coordinator: Coordinator
    private var threads: [Thread] = []
    private var agents: [String: WorkerAgent] = [:]
    private(set) var links: [String: Int] = [:]
    let logLock = NSLock()
    var lines: [String] = []

    init(
        seed: UInt64, heartbeatMs: Int = 50, journalProbe: (@Sendable (_ point: String, _ step: Int) -> Void)? = nil
    ) throws {
        network = InMemoryNetwork(seed: seed)
        var options = CoordinatorOptions(
            stateDirectory: dir.appendingPathComponent("state").path, listen: "inproc://memory")
        options.insecure = true
        options.heartbeatMilliseconds = heartbeatMs
        options.deadlineFloor = 0.5
        options.firstDeadline = 5
        options.journalProbe = journalProbe
        let sink = LogSink()
        coordinator = try Coordinator(
            options: options, transport: network.router(), logger: sink.logger("coordinator"))
        self.sink = sink
        let c = coordinator
        let t = Thread { try? c.run() }
        t.start()
        threads.append(t)
    }

    let sink: LogSink

    final class LogSink: @unchecked Sendable {
        private let lock = NSLock()
        private var lines: [String] = []
        func add(_ s: String) { lock.withLock { lines.append(s) } }
        var text: String { lock.withLock { lines.joined(separator: "\n") } }

        /// A logger whose records land here, "[who] message", for a failing test's report.
        func logger(_ who: String) -> Logger {
            Logger(label: "cairn.test.\(who)") { _ in Handler(sink: self, who: who) }
        }

        struct Handler: LogHandler {
            let sink: LogSink
            let who: String
            var logLevel: Logger.Level = .trace
            var metadata: Logger.Metadata = [:]
            subscript(metadataKey key: String) -> Logger.Metadata.Value? {
                get { metadata[key] }
                set { metadata[key] = newValue }
            }
            func log(event: LogEvent) { sink.add("[\(who)] \(event.message)") }
        }
    }

    /// Starts a worker whose connections all go through one link of the network (reconnects reuse it); `tamper`
    /// rewrites what it sends (an adversary on the wire).
    func startWorker(_ name: String, tamper: (@Sendable ([[UInt8]]) -> [[UInt8]])? = nil) throws {
        let network = self.network
        let box = LinkBox()
        var options = WorkerOptions(
            credentials: Credentials(endpoint: "inproc://memory", serverKey: nil, keys: nil), name: name,
            cacheDirectory: dir.appendingPathComponent("cache-\(name)").path)
        options.connect = { () throws(TransportError) -> DealerEndpoint in
            let (id, endpoint) = network.dealer(userId: nil)
            // A connection made later (a reconnect) gets the worker's link settings so far: cut stays cut, lossy
            // stays lossy.
            network.update(id, box.add(id))
            return tamper.map { TamperingDealer(endpoint, $0) } ?? endpoint
        }
        let sink = self.sink
        let agent = try WorkerAgent(options: options, logger: sink.logger(name))
        agents[name] = agent
        boxes[name] = box
        let t = Thread { try? agent.run() }
        t.start()
        threads.append(t)
    }

    /// A worker's connections, and the changes made to its links, which hold for connections made later too.
    final class LinkBox: @unchecked Sendable {
        private let lock = NSLock()
        private var ids: [Int] = []
        private var settings: @Sendable (inout InMemoryNetwork.Link) -> Void = { _ in }

        /// Records a new connection; returns the settings to give it.
        func add(_ id: Int) -> @Sendable (inout InMemoryNetwork.Link) -> Void {
            lock.withLock {
                ids.append(id)
                return settings
            }
        }

        /// Adds a change to the settings; returns every connection so far.
        func change(_ change: @escaping @Sendable (inout InMemoryNetwork.Link) -> Void) -> [Int] {
            lock.withLock {
                let before = settings
                settings = {
                    before(&$0)
                    change(&$0)
                }
                return ids
            }
        }
    }
    private var boxes: [String: LinkBox] = [:]

    /// Changes every link of every worker, now and after reconnections (client connections stay clean).
    func changeWorkerLinks(_ change: @escaping @Sendable (inout InMemoryNetwork.Link) -> Void) {
        for box in boxes.values {
            for id in box.change(change) { network.update(id, change) }
        }
    }

    /// Cuts (or restores) every connection a worker has made, and those it makes later.
    func cut(_ name: String, _ cut: Bool) {
        for id in boxes[name]?.change({ $0.cut = cut }) ?? [] { network.update(id) { $0.cut = cut } }
    }

    /// A request from a client connection, waiting for the reply (bounded).
    func request(_ m: Message, timeout: Double = 20) throws -> Message? {
        let (_, client) = network.dealer(userId: nil)
        defer { client.close() }
        try client.send(m.encode())
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let r = try client.receive(timeoutMilliseconds: 50), let reply = try? Message.decode(r.frames),
                reply.type != .heartbeat
            {
                return reply
            }
        }
        return nil
    }

    func status(_ job: String) -> JSONObject? {
        (try? request(Message(.status, ["job": .string(job)])))??.metadata["body"]?.objectValue?["jobs"]?.arrayValue?
            .first?.objectValue
    }

    func waitUntil(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return condition()
    }

    func shutdown() {
        for a in agents.values { a.stop() }
        coordinator.stop()
        _ = waitUntil(10) { threads.allSatisfy(\.isFinished) }
        try? FileManager.default.removeItem(at: dir)
    }

    /// Submits the tiny job (with `heldOut` lines as its validation data, evaluated every `evalEvery` steps, and
    /// `extra` lines in its job file); returns its id and the job file (for the one-machine reference).
    func submit(
        steps: Int, heldOut: [String] = [], evalEvery: Int = 0, extra: String = "", file: String = "job.yaml",
        rank: Int = 4, seed: Int = 3
    ) throws -> (String, String) {
        let lines = [
            "the cat sat on the mat", "a dog ran in the park", "bread and butter", "one two three", "hello world",
            "pebbles in a pile", "north south east west", "red green blue", "stones on stones", "the river runs",
        ]
        let data = Array(lines.map { JSONValue.object(["text": .string($0)]).serialized() + "\n" }.joined().utf8)
        try Data(data).write(to: dir.appendingPathComponent("data.jsonl"))
        let spec = """
            model: \(Fixtures.path("tiny-llama/a.gguf"))
            data: data.jsonl
            rank: \(rank)
            steps: \(steps)
            seq_len: 24
            batch_size: 4
            learning_rate: 0.01
            seed: \(seed)
            eval_every: \(evalEvery)
            """ + (heldOut.isEmpty ? "" : "\nvalidation_data: held.jsonl") + (extra.isEmpty ? "" : "\n" + extra)
        let jobFile = dir.appendingPathComponent(file).path
        try Data(spec.utf8).write(to: URL(fileURLWithPath: jobFile))
        var tensors = [Tensor(name: "data", dtype: .u8, shape: [data.count], bytes: data)]
        var meta: JSONObject = ["spec": .string(spec), "data_name": "data.jsonl"]
        if !heldOut.isEmpty {
            let held = Array(heldOut.map { JSONValue.object(["text": .string($0)]).serialized() + "\n" }.joined().utf8)
            try Data(held).write(to: dir.appendingPathComponent("held.jsonl"))
            tensors.append(Tensor(name: "validation", dtype: .u8, shape: [held.count], bytes: held))
            meta["validation_name"] = "held.jsonl"
        }
        let reply = try request(Message(.submit, meta, tensors: tensors))
        #expect(reply?.type == .submitted, "\(String(describing: reply?.metadata))")
        return (reply?.string("job") ?? "", jobFile)
    }
}

/// A worker's connection whose outgoing messages pass through `tamper` first.
final class TamperingDealer: DealerEndpoint {
    let inner: any DealerEndpoint
    let tamper: @Sendable ([[UInt8]]) -> [[UInt8]]
    init(_ inner: any DealerEndpoint, _ tamper: @escaping @Sendable ([[UInt8]]) -> [[UInt8]]) {
        self.inner = inner
        self.tamper = tamper
    }
    func receive(timeoutMilliseconds: Int) throws(TransportError) -> Received? {
        try inner.receive(timeoutMilliseconds: timeoutMilliseconds)
    }
    func receiveNow() throws(TransportError) -> Received? { try inner.receiveNow() }
    func send(_ frames: [[UInt8]]) throws(TransportError) { try inner.send(tamper(frames)) }
    func refused() -> Bool { inner.refused() }
    func close() { inner.close() }
}

/// The one-machine loss curve of a job file (`cairn train`).
func referenceCurve(_ jobFile: String, _ dir: URL) throws -> [Double] {
    try referenceEvents(jobFile, dir, event: "step", key: "loss").map(\.1)
}

/// The values of `key` in the JSON events named `event` of `cairn train` on a job file, with their steps.
func referenceEvents(_ jobFile: String, _ dir: URL, event: String, key: String) throws -> [(Int, Double)] {
    let out = dir.appendingPathComponent("ref").path
    try? FileManager.default.removeItem(atPath: out)
    let r = try runCommand(cairnExecutable, ["train", "--config", jobFile, "--output", out, "--json"])
    #expect(r.status == 0, "\(r.stderr)")
    return r.stdout.split(separator: "\n").compactMap { line in
        guard let o = (try? JSONValue.parse(String(line)))?.objectValue, o["event"] == .string(event),
            let step = o["step"]?.intValue, let value = o[key]?.doubleValue
        else { return nil }
        return (step, value)
    }
}

/// A finished job's status against its one-machine run: every step journaled once, each loss within 1e-4 of it.
func expectEqualsOneMachine(
    _ final: JSONObject?, steps: Int, jobFile: String, dir: URL, _ label: String = "",
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    #expect(
        curve(final).map(\.0) == Array(1...steps), "\(label)every step journaled once", sourceLocation: sourceLocation)
    let reference = try referenceCurve(jobFile, dir)
    let worst = zip(curve(final).map(\.1), reference).map { abs($0 - $1) / $1 }.max() ?? 1
    #expect(
        reference.count == steps && worst < 1e-4, "\(label)worst relative difference \(worst)",
        sourceLocation: sourceLocation)
}

func curve(_ status: JSONObject?) -> [(Int, Double)] {
    (status?["steps"]?.arrayValue ?? []).compactMap(\.objectValue).compactMap { s in
        guard let step = s["step"]?.intValue, let loss = s["loss"]?.doubleValue else { return nil }
        return (step, loss)
    }
}

@Suite(.serialized) struct InMemoryClusterTests {
    /// A worker's link cut mid-job and restored later: the coordinator gives its rows to the other worker, the
    /// worker reconnects by itself, and the job's arithmetic is untouched.
    @Test func aCutLinkLosesNothingAndTheWorkerComesBack() throws {
        let c = try MemoryCluster(seed: 1)
        defer { c.shutdown() }
        try c.startWorker("w1")
        try c.startWorker("w2")
        let (id, jobFile) = try c.submit(steps: 60)
        #expect(c.waitUntil(60) { (c.status(id)?["step"]?.intValue ?? 0) >= 5 }, "\(c.sink.text)")
        c.cut("w2", true)
        // Whichever side's liveness runs out first: the coordinator declares w2 silent, or w2 gives up on the
        // coordinator, reconnects (its old connection closes) and the coordinator's next send to it fails.
        #expect(
            c.waitUntil(60) {
                c.sink.text.split(separator: "\n").contains {
                    $0.contains("worker w2") && ($0.contains("lost (silent") || $0.contains("unreachable"))
                }
            }, "\(c.sink.text)")
        let cutAt = c.status(id)?["step"]?.intValue ?? 0
        #expect(c.waitUntil(60) { (c.status(id)?["step"]?.intValue ?? 0) >= cutAt + 5 }, "the job went on without w2")
        c.cut("w2", false)
        #expect(c.waitUntil(60) { c.status(id)?["state"] == "done" }, "\(c.sink.text)")
        try expectEqualsOneMachine(c.status(id), steps: 60, jobFile: jobFile, dir: c.dir)
        #expect(
            c.sink.text.components(separatedBy: "worker w2").count > 2
                && c.sink.text.contains("[w2] the coordinator is silent"),
            "w2 noticed the silence and came back")
    }

    /// 5 % of all messages lost, both ways (heartbeats, assignments, results, evaluations, the job announcement,
    /// ready): deadlines, re-announcements and reconnects carry the job to its end with nothing counted twice.
    @Test func aLossyNetworkStillFinishesTheJobExactly() throws {
        let c = try MemoryCluster(seed: 42)
        defer { c.shutdown() }
        try c.startWorker("w1")
        try c.startWorker("w2")
        let (id, jobFile) = try c.submit(
            steps: 30, heldOut: ["the mat sat on the cat", "a park in the dog", "three two one", "blue green red"],
            evalEvery: 10)
        c.changeWorkerLinks {
            $0.dropRate = 0.05
            $0.delay = 0.002
        }
        #expect(c.waitUntil(120) { c.status(id)?["state"] == "done" }, "\(c.sink.text)")
        c.changeWorkerLinks { $0.dropRate = 0 }
        let final = c.status(id)
        try expectEqualsOneMachine(final, steps: 30, jobFile: jobFile, dir: c.dir)
        let evals = (final?["evals"]?.arrayValue ?? []).compactMap(\.objectValue).compactMap { e in
            e["step"]?.intValue.flatMap { s in e["loss"]?.doubleValue.map { (s, $0) } }
        }
        let referenceEvals = try referenceEvents(jobFile, c.dir, event: "evaluation", key: "eval_loss")
        #expect(evals.map(\.0) == [10, 20, 30] && referenceEvals.map(\.0) == [10, 20, 30], "\(evals)")
        let worstEval = zip(evals.map(\.1), referenceEvals.map(\.1)).map { abs($0 - $1) / $1 }.max() ?? 1
        #expect(worstEval < 1e-4, "held-out loss \(evals) vs one machine \(referenceEvals)")
        #expect(c.network.dropped > 0, "messages were dropped")
    }

    /// Two jobs on one pool at once, on the same base: both run to their end, each journals every step once and
    /// equals its own one-machine run (their steps computed in shared passes on the workers), and the pool was
    /// shared: each job had both workers' rows while the other ran.
    @Test func twoJobsAtOnceEachEqualOneMachine() throws {
        let c = try MemoryCluster(seed: 7)
        defer { c.shutdown() }
        try c.startWorker("w1")
        try c.startWorker("w2")
        let (first, firstFile) = try c.submit(steps: 20, file: "first.yaml")
        let (second, secondFile) = try c.submit(
            steps: 12, file: "second.yaml", rank: 2, seed: 5)
        #expect(
            c.waitUntil(120) { c.status(first)?["state"] == "done" && c.status(second)?["state"] == "done" },
            "\(c.sink.text)")
        for (id, file, steps) in [(first, firstFile, 20), (second, secondFile, 12)] {
            try expectEqualsOneMachine(c.status(id), steps: steps, jobFile: file, dir: c.dir, "\(id): ")
        }
        #expect(c.sink.text.contains("in one pass"), "a worker computed both jobs' steps in one pass")
    }

    /// A checkpoint write that hangs (a slow disk) holds up neither the coordinator's answers nor the job: while
    /// step 2's write waits, status is answered and the workers get and return later steps. Released, the writer
    /// journals the steps that piled up behind it (in one entry), and the job equals its one-machine run.
    @Test func aHangingCheckpointWriteHoldsNothingUp() throws {
        let gate = Gate()
        let c = try MemoryCluster(seed: 3) { point, step in
            if point == "checkpoint", step == 2 { gate.hold() }
        }
        defer {
            gate.open()
            c.shutdown()
        }
        let results = Counter()
        // Counts the step results the workers send: each answers an assignment the coordinator's loop handed out.
        let counting: @Sendable ([[UInt8]]) -> [[UInt8]] = { frames in
            if (try? Message.decode(frames))?.type == .result { results.add() }
            return frames
        }
        try c.startWorker("w1", tamper: counting)
        try c.startWorker("w2", tamper: counting)
        let (id, jobFile) = try c.submit(steps: 40)
        #expect(c.waitUntil(60) { gate.held }, "step 2's checkpoint write began: \(c.sink.text)")
        let status = c.status(id)
        #expect(status?["state"] == "running" && (status?["step"]?.intValue ?? 9) <= 1, "\(String(describing: status))")
        let before = results.value
        #expect(
            c.waitUntil(60) { results.value >= before + 6 },
            "later steps were handed out and returned while the write hung: \(c.sink.text)")
        gate.open()
        #expect(c.waitUntil(120) { c.status(id)?["state"] == "done" }, "\(c.sink.text)")
        try expectEqualsOneMachine(c.status(id), steps: 40, jobFile: jobFile, dir: c.dir)
    }
}

/// Holds a thread (`hold`) until another opens it; says whether one is held.
final class Gate: @unchecked Sendable {
    private let condition = NSCondition()
    private var isOpen = false
    private var holding = false

    var held: Bool { condition.withLock { holding } }

    func hold() {
        condition.withLock {
            holding = true
            while !isOpen { condition.wait() }
            holding = false
        }
    }

    func open() {
        condition.withLock {
            isOpen = true
            condition.broadcast()
        }
    }
}

/// A count shared between threads.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    var value: Int { lock.withLock { n } }
    func add() { lock.withLock { n += 1 } }
}
