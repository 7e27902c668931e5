import Synchronization
import Testing
import TensorKernels

@Suite(.serialized) struct ParallelTests {
    @Test(arguments: [0, 1, 2, 7, 1000, 4097])
    func rangesCoverEveryIndexExactlyOnce(count: Int) {
        let hits = UnsafeMutablePointer<Int32>.allocate(capacity: max(1, count))
        defer { hits.deallocate() }
        hits.initialize(repeating: 0, count: max(1, count))
        Parallel.forRanges(count, grain: 3, chunksPerThread: 4) { range in
            for i in range { hits[i] += 1 }
        }
        #expect((0..<count).allSatisfy { hits[$0] == 1 })
    }

    /// With one worker, no two items run at once. (The count is passed explicitly: changing the global
    /// `threadCount` would change how other suites, running in parallel, split their products.)
    @Test func honoursTheThreadCount() {
        let running = Atomic<Int>(0)
        let peak = Atomic<Int>(0)
        Parallel.forEach(64, threads: 1) { _ in
            let now = running.wrappingAdd(1, ordering: .relaxed).newValue
            _ = peak.max(now, ordering: .relaxed)
            running.wrappingSubtract(1, ordering: .relaxed)
        }
        #expect(peak.load(ordering: .relaxed) == 1)
    }
}

@Suite struct RandomTests {
    @Test func sameSeedSameStreamAndStateResumes() {
        var a = SeededGenerator(seed: 42)
        var b = SeededGenerator(seed: 42)
        var c = SeededGenerator(seed: 43)
        let first = (0..<5).map { _ in a.next() }
        #expect(first == (0..<5).map { _ in b.next() })
        #expect(first != (0..<5).map { _ in c.next() })
        var resumed = a
        #expect((0..<5).map { _ in a.next() } == (0..<5).map { _ in resumed.next() })
    }

    @Test func unitFloatsStayInRangeAndNormalsHaveUnitVariance() {
        var rng = SeededGenerator(seed: 7)
        let u = (0..<10_000).map { _ in rng.nextUnitFloat() }
        #expect(u.allSatisfy { $0 >= 0 && $0 < 1 })
        let z = (0..<20_000).map { _ in Double(rng.nextNormal()) }
        let mean = z.reduce(0, +) / Double(z.count)
        let variance = z.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(z.count)
        #expect(abs(mean) < 0.03 && abs(variance - 1) < 0.05, "mean \(mean) variance \(variance)")
    }
}
