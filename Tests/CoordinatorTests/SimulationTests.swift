// The deterministic simulation of the coordinator's core (Simulator.swift): many seeded fault schedules in all
// three modes, each checked after every event and at the end. The number of seeds comes from
// CAIRN_SIMULATION_SEEDS (Scripts/test runs 10,000 in release; `Scripts/simulate N` runs more); a failing seed prints
// the one command that replays it.

import Coordinator
import Foundation
import Testing

@Suite struct SimulationTests {
    static var seedCount: Int {
        ProcessInfo.processInfo.environment["CAIRN_SIMULATION_SEEDS"].flatMap(Int.init) ?? 300
    }

    /// Where the seeds start (CAIRN_SIMULATION_FIRST_SEED), so long runs can cover new ground.
    static var firstSeed: UInt64 {
        ProcessInfo.processInfo.environment["CAIRN_SIMULATION_FIRST_SEED"].flatMap(UInt64.init) ?? 1
    }

    @Test func seededFaultSchedulesKeepEveryInvariant() {
        let first = Self.firstSeed
        var failed: [SimulationReport] = []
        var events = 0
        var modes: [String: Int] = [:]
        for seed in first..<first + UInt64(Self.seedCount) {
            var simulation = Simulation(seed: seed)
            let report = simulation.run()
            events += report.events
            for job in report.jobs {
                modes[String(job.split(separator: " ")[0].split(separator: ":")[1]), default: 0] += 1
            }
            if !report.passed { failed.append(report) }
        }
        let summary =
            "simulation: \(Self.seedCount) seeds from \(first), \(events) events, jobs by mode \(modes.sorted { $0.key < $1.key }), "
            + "\(failed.count) failed"
        print(summary)
        let firstViolations = failed.map { "  seed \($0.seed): \($0.violations.first ?? "")" }.joined(separator: "\n")
        #expect(
            failed.isEmpty,
            "\(summary)\n\(firstViolations)\n\(failed.prefix(3).map(\.description).joined(separator: "\n"))")
        #expect(modes.count == 4, "every mode was simulated: sync, diloco, federated and evaluate")
    }

    /// Seeds that found defects, kept. Before the simulation drove the coordinator's core (it drove the schedule
    /// alone): 13 (a lone diloco worker crashed mid-round; on its return the round waited on nobody), 1 and 25 (the
    /// same stall in federated jobs, after crashes of the coordinator and of a worker), 3 (the first fix of that
    /// stall let a worker whose round result was in take the round again after a reconnect, and add a second
    /// result); these schedules changed with the move, and JobScheduleTests pins each defect. On the core: 8, 85,
    /// 187, 252 (a worker asked twice to say hello after a coordinator restart said it twice on one connection; the
    /// second hello forgot that it was ready while the schedule still gave it work), 500 and 2090 (an assignment
    /// went out to a connection dropped later in the same tick).
    @Test(arguments: [13, 1, 25, 3, 8, 85, 187, 252, 500, 2090] as [UInt64]) func regression(seed: UInt64) {
        var simulation = Simulation(seed: seed)
        let report = simulation.run()
        #expect(report.passed, "\(report)")
    }

    /// Replays CAIRN_SIMULATION_SEED and prints what happened.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["CAIRN_SIMULATION_SEED"] != nil))
    func replay() throws {
        let seed = try #require(ProcessInfo.processInfo.environment["CAIRN_SIMULATION_SEED"].flatMap(UInt64.init))
        var simulation = Simulation(seed: seed)
        let report = simulation.run()
        print(report)
        #expect(report.passed, "\(report)")
    }
}
