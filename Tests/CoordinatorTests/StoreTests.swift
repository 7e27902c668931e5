import Coordinator
import Foundation
import Synchronization
import TestSupport
import Testing

@Suite struct StoreTests {
    func store() throws -> (Store, URL) {
        let dir = Fixtures.temporaryDirectory("cairn-store")
        return (try Store(directory: dir.path), dir)
    }

    /// A coordinator starting while a script issues tokens: both open a new state directory at the same moment.
    /// Each open must find the schema whole, migrated once.
    @Test func concurrentOpensOfANewStateDirectoryMigrateOnce() throws {
        for round in 0..<5 {
            let dir = Fixtures.temporaryDirectory("cairn-store-race-\(round)")
            defer { try? FileManager.default.removeItem(at: dir) }
            let failures = Mutex<[String]>([])
            DispatchQueue.concurrentPerform(iterations: 6) { i in
                do {
                    let s = try Store(directory: dir.path)
                    try s.addToken(id: "t\(i)", enrolKey: "k\(i)", role: "worker", expires: 1e12)
                } catch { failures.withLock { $0.append("\(error)") } }
            }
            #expect(failures.withLock { $0 }.isEmpty, "round \(round)")
            let s = try Store(directory: dir.path)
            #expect(try (0..<6).allSatisfy { try s.usableToken(enrolKey: "k\($0)") != nil })
        }
    }

    @Test func tokensAdmitOnceUntilTheyExpireOrAreRevoked() throws {
        let (s, dir) = try store()
        defer { try? FileManager.default.removeItem(at: dir) }
        let now = Date().timeIntervalSince1970
        try s.addToken(id: "t1", enrolKey: "k1", role: "worker", expires: now + 60)
        try s.addToken(id: "t2", enrolKey: "k2", role: "client", expires: now - 1)
        try s.addToken(id: "t3", enrolKey: "k3", role: "worker", expires: now + 60)
        #expect(try s.usableToken(enrolKey: "k1")?.id == "t1")
        #expect(try s.usableToken(enrolKey: "k2") == nil, "expired")
        #expect(try s.revokeToken(id: "t3"))
        #expect(try s.usableToken(enrolKey: "k3") == nil, "revoked")
        #expect(try !s.revokeToken(id: "nope"))
        #expect(try s.redeemToken(id: "t1", publicKey: "P", name: "laptop"))
        #expect(try !s.redeemToken(id: "t1", publicKey: "Q", name: "again"), "a token enrols once")
        #expect(try s.role(ofKey: "P") == "worker" && s.role(ofKey: "Q") == nil)
        #expect(try s.revokeKey("laptop") == 1)
        #expect(try s.role(ofKey: "P") == nil, "a revoked key is refused")
    }

    @Test func journaledStepsReadBackAndSurviveReopening() throws {
        let (s, dir) = try store()
        defer { try? FileManager.default.removeItem(at: dir) }
        let id = try s.addJob(
            spec: "x", mode: "sync", modelBlob: "m", dataBlob: "d", dataName: "d.jsonl", totalSteps: 3)
        #expect(id == "job-1")
        try s.saw(worker: WorkerRecord(id: "w", name: "w", cores: 2, memory: 1, gflops: 1, lastSeen: 0, rows: 0))
        let step = StepRecord(
            step: 1, loss: 2.5, tokens: 10, seconds: 0.5, bytes: 100,
            workers: ["w": WorkerShare(rows: 4, tokens: 9, seconds: 0.4)], computeSeconds: 0.4)
        try s.journal(job: id, step: step, checkpointBlob: "c1")
        let reopened = try Store(directory: dir.path)
        #expect(try reopened.steps(job: id) == [step])
        #expect(try reopened.job(id)?.step == 1 && reopened.job(id)?.checkpointBlob == "c1")
        #expect(try reopened.job(id)?.state == .running)
        #expect(try reopened.workers().first?.rows == 4)
        #expect(
            try reopened.addJob(spec: "y", mode: "sync", modelBlob: "m", dataBlob: "d", dataName: "", totalSteps: 1)
                == "job-2")
        var later = step
        for n in 2...3 {
            later.step = n
            try reopened.journal(job: id, step: later, checkpointBlob: "c\(n)")
        }
        #expect(try reopened.steps(job: id, last: 2).map(\.step) == [2, 3], "the most recent, in order")
    }
}
