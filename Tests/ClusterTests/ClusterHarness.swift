// ClusterHarness: a coordinator and workers as real `cairn` processes on loopback, in a temporary directory,
// with bounded waits on observable state (the coordinator's status, files) instead of sleeps.

import Foundation
import ModelFormats
import TestSupport
import Testing

let tinyModel = Fixtures.path("tiny-llama/a.gguf")

/// A cluster of processes; everything it started is killed when it goes away.
class ClusterHarness {
    let dir: URL
    var state: String { dir.appendingPathComponent("state").path }
    private(set) var coordinator: Process?
    private(set) var workers: [String: Process] = [:]
    private(set) var endpoint = ""
    /// Heartbeat interval given to the coordinator (liveness is 5 intervals).
    let heartbeatMs: Int
    /// Where the coordinator serves its dashboard: a free loopback port unless a test asks otherwise (the default
    /// port is for users, and tests run side by side).
    var http = "127.0.0.1:0"

    init(_ label: String, heartbeatMs: Int = 250) {
        dir = Fixtures.temporaryDirectory("cairn-cluster-\(label)")
        self.heartbeatMs = heartbeatMs
    }

    deinit {
        for p in workers.values where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        if let c = coordinator, c.isRunning { kill(c.processIdentifier, SIGKILL) }
        for p in workers.values { p.waitUntilExit() }
        coordinator?.waitUntilExit()
        try? FileManager.default.removeItem(at: dir)
    }

    private func spawn(_ arguments: [String], log: String, environment: [String: String] = [:]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: cairnExecutable)
        p.arguments = arguments
        if !environment.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let logURL = dir.appendingPathComponent(log)
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        let handle = try FileHandle(forWritingTo: logURL)
        handle.seekToEndOfFile()
        p.standardOutput = handle
        p.standardError = handle
        p.standardInput = FileHandle.nullDevice
        try p.run()
        return p
    }

    func log(_ name: String) -> String {
        (try? String(contentsOf: dir.appendingPathComponent(name), encoding: .utf8)) ?? ""
    }

    /// Every log, for failure messages.
    var logs: String {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).filter {
            $0.hasSuffix(".log")
        }
        return names.sorted().map { "--- \($0)\n" + log($0) }.joined(separator: "\n")
    }

    /// Starts the coordinator (on a free port the first time, the same port after a restart) and waits until it
    /// has written its client credentials and answers.
    func startCoordinator(extra: [String] = [], environment: [String: String] = [:]) throws {
        let listen = endpoint.isEmpty ? "tcp://127.0.0.1:*" : endpoint
        let client = (state as NSString).appendingPathComponent("client.json")
        coordinator = try spawn(
            ["coordinator", "--state", state, "--listen", listen, "--heartbeat-ms", "\(heartbeatMs)", "--http", http]
                + extra, log: "coordinator.log", environment: environment)
        // A fresh state directory has no client.json until the coordinator is listening; after a restart the old
        // one is there, and the new coordinator answering is what counts.
        let ready = waitUntil(30) {
            guard let data = FileManager.default.contents(atPath: client),
                let e = (try? JSONValue.parse(Array(data)))?.objectValue?["endpoint"]?.stringValue
            else { return false }
            endpoint = e
            return (try? cairn("workers", "--json").status) == 0
        }
        #expect(ready, "the coordinator came up: \(logs)")
    }

    /// SIGKILLs the coordinator and waits for it to be gone.
    func killCoordinator() {
        guard let c = coordinator else { return }
        kill(c.processIdentifier, SIGKILL)
        c.waitUntilExit()
    }

    func token() throws -> String {
        let r = try runCommand(cairnExecutable, ["coordinator", "token", "--state", state])
        #expect(r.status == 0, "\(r.stderr)")
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Starts a worker that enrols with a fresh token (or `token`) and its own cache.
    @discardableResult
    func startWorker(
        _ name: String, threads: Int = 1, cache: String? = nil, data: String? = nil, token given: String? = nil
    ) throws -> Process {
        let p = try spawn(
            [
                "worker", "join", endpoint, "--token", try given ?? token(), "--name", name, "--threads", "\(threads)",
                "--credentials", dir.appendingPathComponent("\(name).json").path,
                "--cache", dir.appendingPathComponent(cache ?? "cache-\(name)").path,
            ] + (data.map { ["--data", $0] } ?? []), log: "\(name).log")
        workers[name] = p
        return p
    }

    /// Starts the coordinator and the named workers, and waits (bounded) until every worker is connected.
    func startCluster(workers names: [String], cache: String? = nil, timeout: Double = 60) throws {
        try startCoordinator()
        for name in names { try startWorker(name, cache: cache) }
        #expect(waitUntil(timeout) { connectedWorkers().count == names.count }, "\(logs)")
    }

    func killWorker(_ name: String, signal: Int32 = SIGKILL) {
        guard let p = workers[name] else { return }
        kill(p.processIdentifier, signal)
        p.waitUntilExit()
    }

    /// Runs a client command against this cluster's coordinator.
    func cairn(_ arguments: String...) throws -> CommandResult { try client(arguments) }

    /// Runs a client command (`status JOB --json`, …) against this cluster's coordinator.
    func client(_ arguments: [String]) throws -> CommandResult {
        try runCommand(cairnExecutable, [arguments[0], "--state", state] + arguments.dropFirst())
    }

    /// Polls `condition` every 50 ms for up to `seconds`.
    func waitUntil(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return condition()
    }

    /// The coordinator's status of a job.
    func status(_ job: String) -> JSONObject? {
        guard let r = try? cairn("status", job, "--json"), r.status == 0 else { return nil }
        return (try? JSONValue.parse(r.stdout))?.objectValue?["jobs"]?.arrayValue?.first?.objectValue
    }

    /// Workers connected and ready or computing.
    /// A worker's row of `cairn workers --json`.
    func worker(_ name: String) -> JSONObject? {
        guard let r = try? client(["workers", "--json"]), r.status == 0 else { return nil }
        return (try? JSONValue.parse(r.stdout))?.arrayValue?.compactMap(\.objectValue).first {
            $0["name"]?.stringValue == name
        }
    }

    /// The coordinator's own counters: `coordinator` of `cairn status --json`.
    func coordinatorHealth() -> JSONObject? {
        guard let r = try? client(["status", "--json"]), r.status == 0 else { return nil }
        return (try? JSONValue.parse(r.stdout))?.objectValue?["coordinator"]?.objectValue
    }

    func connectedWorkers() -> [JSONObject] {
        guard let r = try? cairn("workers", "--json"), r.status == 0,
            let list = (try? JSONValue.parse(r.stdout))?.arrayValue
        else { return [] }
        return list.compactMap(\.objectValue).filter { $0["connected"] == .bool(true) }
    }

    /// Writes the tiny training data and a job file; returns the job file's path.
    /// (Long runs on the tiny model memorize the ten lines, and once the loss is near zero floating-point
    /// reordering grows to ~1e-3; the defaults keep the checks in the regime where curves must agree closely.)
    func writeJob(steps: Int, batch: Int = 4, seqLen: Int = 24, learningRate: Double = 0.01, extra: String = "") throws
        -> String
    {
        let lines = [
            "the cat sat on the mat", "a dog ran in the park", "bread and butter", "one two three", "hello world",
            "pebbles in a pile", "north south east west", "red green blue", "stones on stones", "the river runs",
        ]
        return try writeJob(
            data: "data", job: "job", lines: lines, steps: steps, batch: batch, seqLen: seqLen,
            learningRate: learningRate,
            extra: extra)
    }

    /// Writes `lines` as DATA.jsonl and a job file JOB.yaml for the tiny model over it; returns the job's path.
    func writeJob(
        data dataName: String, job name: String, lines: [String], steps: Int, batch: Int, seqLen: Int,
        learningRate: Double, model: String = tinyModel,
        extra: String = ""
    ) throws -> String {
        try Data(lines.map { JSONValue.object(["text": .string($0)]).serialized() + "\n" }.joined().utf8).write(
            to: dir.appendingPathComponent("\(dataName).jsonl"))
        let job = dir.appendingPathComponent("\(name).yaml")
        try Data(
            """
            model: \(model)
            data: \(dataName).jsonl
            rank: 4
            steps: \(steps)
            seq_len: \(seqLen)
            batch_size: \(batch)
            learning_rate: \(learningRate)
            seed: 7
            save_every: 0
            \(extra)
            """.utf8
        ).write(to: job)
        return job.path
    }

    /// Submits a job file; returns the job id.
    func submit(_ job: String) throws -> String {
        let r = try cairn("submit", job)
        #expect(r.status == 0, "\(r.stderr)\n\(logs)")
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Waits for a job to finish; returns its final status.
    func waitForJob(_ job: String, seconds: Double = 240) -> JSONObject? {
        var last: JSONObject?
        _ = waitUntil(seconds) {
            last = status(job)
            return ["done", "failed", "cancelled"].contains(last?["state"]?.stringValue ?? "")
        }
        return last
    }

    /// The journaled losses of a job, by step.
    static func losses(_ status: JSONObject?) -> [(step: Int, loss: Double)] {
        (status?["steps"]?.arrayValue ?? []).compactMap(\.objectValue).compactMap { s in
            guard let step = s["step"]?.intValue, let loss = s["loss"]?.doubleValue else { return nil }
            return (step, loss)
        }
    }

    /// The loss curve of `cairn train` on the same job file: the single-machine reference.
    func referenceLosses(_ job: String) throws -> [Double] {
        try reference(job).steps
    }

    /// `cairn train` on the same job file: its loss per step, and its held-out loss by step.
    func reference(_ job: String) throws -> (steps: [Double], evals: [(step: Int, loss: Double)]) {
        let out = dir.appendingPathComponent("reference-run").path
        try? FileManager.default.removeItem(atPath: out)
        let r = try runCommand(cairnExecutable, ["train", "--config", job, "--output", out, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        var steps: [Double] = []
        var evals: [(step: Int, loss: Double)] = []
        for line in r.stdout.split(separator: "\n") {
            guard let o = (try? JSONValue.parse(String(line)))?.objectValue else { continue }
            if o["event"] == "step", let loss = o["loss"]?.doubleValue { steps.append(loss) }
            if o["event"] == "evaluation", let step = o["step"]?.intValue, let loss = o["eval_loss"]?.doubleValue {
                evals.append((step, loss))
            }
        }
        return (steps, evals)
    }

    /// The journaled evaluations of a job (from its status).
    static func evals(_ status: JSONObject?) -> [(step: Int, loss: Double)] {
        (status?["evals"]?.arrayValue ?? []).compactMap(\.objectValue).compactMap { e in
            guard let step = e["step"]?.intValue, let loss = e["loss"]?.doubleValue else { return nil }
            return (step, loss)
        }
    }

    /// Writes held-out lines as NAME.jsonl; returns the file name (relative to the job files).
    func writeHeldOut(_ name: String = "held", lines: [String]) throws -> String {
        try Data(lines.map { JSONValue.object(["text": .string($0)]).serialized() + "\n" }.joined().utf8).write(
            to: dir.appendingPathComponent("\(name).jsonl"))
        return "\(name).jsonl"
    }
}

/// Largest relative difference between two curves of equal length (nil when the lengths differ).
func maxRelativeDifference(_ a: [Double], _ b: [Double]) -> Double? {
    guard a.count == b.count else { return nil }
    return zip(a, b).map { abs($0 - $1) / max(abs($1), 1e-12) }.max() ?? 0
}
