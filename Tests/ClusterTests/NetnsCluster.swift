// NetnsCluster: a ClusterHarness whose coordinator and workers are hosts of Cluster/netns (one network namespace
// each, joined by a bridge), so links can be cut and capped. Root only; run by Scripts/test with CAIRN_CHAOS=1
// (in release, where the tiny model's steps are fast enough for jobs that outlast a 20-second link cut).

import Coordinator
import Foundation
import ModelFormats
import TensorKernels
import TestSupport
import Testing

final class NetnsCluster: ClusterHarness {
    /// The chaos, load and security suites run when asked (CAIRN_CHAOS=1) and as root.
    static var enabled: Bool {
        ProcessInfo.processInfo.environment["CAIRN_CHAOS"] == "1" && geteuid() == 0
    }

    static let script = Fixtures.directory.deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Cluster/netns").path

    var netnsDir: String { dir.appendingPathComponent("netns").path }
    /// The coordinator's state directory inside the cluster.
    var coordinatorState: String { netnsDir + "/coord" }

    /// Brings up a coordinator and `workers` workers (heartbeat 250 ms, so a silent peer is gone after 1.25 s).
    /// With `workerData`, each worker wN gets its own share of the long job's lines as its `--data` (federated
    /// jobs), hosts w1…w`workerData` (restarted ones keep theirs).
    init(
        _ label: String, workers: Int, workerData: Int = 0, extra: [String] = [], environment: [String: String] = [:]
    ) throws {
        super.init("netns-\(label)")
        var extra = extra
        if workerData > 0 {
            let data = dir.appendingPathComponent("worker-data")
            try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
            let lines = Self.longLines
            for w in 1...workerData {
                let mine = lines.indices.filter { $0 % workerData == w - 1 }.map { lines[$0] }
                try Data(mine.map { JSONValue.object(["text": .string($0)]).serialized() + "\n" }.joined().utf8).write(
                    to: data.appendingPathComponent("w\(w).jsonl"))
            }
            extra += ["--worker-data", data.path]
        }
        let r = try netns(
            ["up", "--workers", "\(workers)", "--heartbeat-ms", "\(heartbeatMs)"] + extra, environment: environment)
        #expect(r.status == 0, "Cluster/netns up: \(r.stderr)")
        #expect(waitUntil(60) { connectedWorkers().count == workers }, "\(logs)")
    }

    deinit { _ = try? netns(["down"]) }

    /// Runs `Cluster/netns ARGS --dir DIR --cairn BINARY`.
    @discardableResult
    func netns(_ arguments: [String], environment: [String: String] = [:]) throws -> CommandResult {
        try runCommand(
            Self.script, arguments + ["--dir", netnsDir, "--cairn", cairnExecutable], environment: environment)
    }

    override func client(_ arguments: [String]) throws -> CommandResult {
        try runCommand(Self.script, ["cairn"] + arguments + ["--dir", netnsDir, "--cairn", cairnExecutable])
    }

    override var logs: String {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: netnsDir)) ?? []).filter {
            $0.hasSuffix(".log")
        }
        return names.sorted().map {
            "--- \($0)\n" + ((try? String(contentsOfFile: netnsDir + "/" + $0, encoding: .utf8)) ?? "")
        }.joined(separator: "\n")
    }

    func hostLog(_ host: String) -> String {
        (try? String(contentsOfFile: "\(netnsDir)/\(host).log", encoding: .utf8)) ?? ""
    }

    func rowsDone(_ name: String) -> Int { worker(name)?["rows_done"]?.intValue ?? 0 }

    func step(_ job: String) -> Int { status(job)?["step"]?.intValue ?? 0 }

    /// A job long enough to outlast the faults: 200 lines of 40 words, 64-token rows, 8 rows a step, a small
    /// learning rate (the final adapters of two runs with different splits stay within ChaosTests.tolerance).
    func writeLongJob(steps: Int, extra: String = "") throws -> String {
        try writeJob(
            data: "long", job: "long", lines: Self.longLines, steps: steps, batch: 8, seqLen: 64, learningRate: 0.002,
            extra: extra)
    }

    /// The long job's data: 200 lines of 40 words.
    static let longLines: [String] = {
        var rng = SeededGenerator(seed: 42)
        let words = """
            the cat sat on mat a dog ran in park bread and butter one two three hello world pebbles pile north \
            south east west red green blue stones river runs
            """.split(separator: " ")
        return (0..<200).map { _ in
            (0..<40).map { _ in String(words[Int(rng.next() % UInt64(words.count))]) }.joined(separator: " ")
        }
    }()

    /// The worst relative L2 difference, over the adapter's tensors, between the job's pulled adapter and
    /// `cairn train` of the same job file on one machine.
    func adapterDifferenceFromOneMachine(job: String, jobFile: String) throws -> Double {
        let pulled = dir.appendingPathComponent("pulled-\(job)").path
        let pull = try client(["pull", job, "--format", "peft", "-o", pulled])
        #expect(pull.status == 0, "\(pull.stderr)")
        let reference = dir.appendingPathComponent("one-machine").path
        try? FileManager.default.removeItem(atPath: reference)
        let train = try runCommand(cairnExecutable, ["train", "--config", jobFile, "--output", reference])
        #expect(train.status == 0, "\(train.stderr)")
        let a = try SafetensorsFile(path: pulled + "/adapter_model.safetensors")
        let b = try SafetensorsFile(path: reference + "/adapter_model.safetensors")
        var worst = 0.0
        #expect(a.tensors.count == b.tensors.count && !a.tensors.isEmpty)
        for t in a.tensors {
            let other = try #require(b.tensor(named: t.name))
            let x = a.data(for: t).withMemoryRebound(to: Float.self) { Array($0) }
            let y = b.data(for: other).withMemoryRebound(to: Float.self) { Array($0) }
            worst = max(worst, relativeL2(x, y))
        }
        return worst
    }

    /// The steps journaled for a job, read from the coordinator's SQLite journal itself.
    func journaledSteps(_ job: String) throws -> [Int] {
        try Store(directory: coordinatorState).steps(job: job).map(\.step)
    }

    /// Polls until `condition`, returning the seconds it took (nil when `seconds` passed first).
    func secondsUntil(_ seconds: Double, _ condition: () -> Bool) -> Double? {
        let start = Date()
        return waitUntil(seconds, condition) ? Date().timeIntervalSince(start) : nil
    }
}

/// One row of Docs/RELIABILITY.md's table, appended (Markdown) to $CAIRN_RELIABILITY_OUT when it is set.
struct ReliabilityRow {
    var scenario: String
    var checked: String
    var result: String
    var stepsLost: Int
    var dataLost: Int
    var recovery: String
    var test: String

    func record() {
        guard let path = ProcessInfo.processInfo.environment["CAIRN_RELIABILITY_OUT"] else { return }
        let cells = [
            scenario, checked, result, "\(stepsLost)", "\(dataLost)", recovery,
            "`CAIRN_CHAOS=1 swift test -c release --filter \(test)`",
        ].map { $0.replacingOccurrences(of: "|", with: "\\|") }
        let line = "| " + cells.joined(separator: " | ") + " |\n"
        if !FileManager.default.fileExists(atPath: path) {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
        }
        if let h = FileHandle(forWritingAtPath: path) {
            h.seekToEndOfFile()
            h.write(Data(line.utf8))
            try? h.close()
        }
    }
}
