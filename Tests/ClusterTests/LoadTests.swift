// Load: one coordinator and 32 worker processes on the tiny model, with the production heartbeat (1 s,
// liveness 5 s), through a whole sync job. Run with the chaos suite (CAIRN_CHAOS=1, release).

import Foundation
import ModelFormats
import TestSupport
import Testing

@Suite(.serialized, .enabled(if: ProcessInfo.processInfo.environment["CAIRN_CHAOS"] == "1")) struct LoadTests {
    @Test func thirtyTwoWorkersAndNoFalseDeaths() throws {
        let workers = 32
        let c = ClusterHarness("load", heartbeatMs: 1000)
        try c.startCoordinator()
        let names = (1...workers).map { "w\($0)" }
        for name in names { try c.startWorker(name) }
        #expect(c.waitUntil(180) { c.connectedWorkers().count == workers }, "\(c.logs)")
        let pid = try #require(c.coordinator?.processIdentifier)
        func cpuSeconds() -> Double {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let tail = stat.split(separator: ")").last
            else { return 0 }
            let fields = tail.split(separator: " ")
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after "pid (comm)".
            return (Double(fields[11]) ?? 0) / 100 + (Double(fields[12]) ?? 0) / 100
        }
        let steps = 300
        let job = try c.writeJob(steps: steps, batch: workers)
        let cpuBefore = cpuSeconds()
        let started = Date()
        let id = try c.submit(job)
        let final = c.waitForJob(id, seconds: 600)
        let wall = Date().timeIntervalSince(started)
        let cpu = cpuSeconds() - cpuBefore
        #expect(final?["state"] == "done", "\(c.logs)")
        let status = try #require(
            (try? JSONValue.parse(try c.cairn("status", "--json").stdout))?.objectValue?["coordinator"]?.objectValue)
        let gaps = try #require(status["worker_message_gap_ms"]?.objectValue)
        let silent = status["workers_declared_silent"]?.intValue ?? -1
        #expect(silent == 0, "no worker was wrongly declared dead")
        #expect(c.connectedWorkers().count == workers, "all \(workers) are still connected")
        #expect((gaps["max"]?.doubleValue ?? .infinity) < 5000, "every gap under the 5 s liveness")
        let took = c.connectedWorkers().filter { ($0["rows_done"]?.intValue ?? 0) > 0 }.count
        let status2 = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let peakKiB = status2.split(separator: "\n").first { $0.hasPrefix("VmHWM:") }.flatMap {
            Int($0.split(separator: " ").dropFirst().first ?? "")
        }
        func ms(_ key: String) -> String { String(format: "%.0f", gaps[key]?.doubleValue ?? -1) }
        ReliabilityRow(
            scenario: "Load: 1 coordinator, \(workers) worker processes (1 thread each, 2 cores in all)",
            checked: "\(steps) sync steps of \(workers) rows; heartbeat 1 s, liveness 5 s",
            result: "passed; \(took) workers took rows; gaps between a worker's messages p50 \(ms("p50")) ms, "
                + "p95 \(ms("p95")) ms, p99 \(ms("p99")) ms, max \(ms("max")) ms; coordinator CPU "
                + String(format: "%.1f s in %.0f s (%.0f%% of a core)", cpu, wall, 100 * cpu / max(wall, 1e-3))
                + ", peak RSS \((peakKiB ?? 0) / 1024) MiB; 0 workers declared dead",
            stepsLost: 0, dataLost: 0, recovery: "n/a", test: "LoadTests/thirtyTwoWorkersAndNoFalseDeaths"
        ).record()
    }
}
