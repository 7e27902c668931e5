// Parallel: how every kernel spreads its work across cores.
//
// Kernels split their outer loop into chunks and call `Parallel.forRanges`. A fixed number of workers
// (`Parallel.threadCount`, default: all cores) pull chunks from a shared counter, so uneven chunks
// (causal attention rows) balance themselves and the thread count is honoured exactly. OpenBLAS is pinned
// to one thread (see BLAS.swift): two thread pools competing for two cores is slower than one that splits
// the matrix itself, measured on the development machine (Docs/ARCHITECTURE.md, "Threads").

import Dispatch
import Foundation
import Synchronization

/// Work splitting across cores for the kernels.
public enum Parallel {
    private static let configuredThreads = Atomic<Int>(0)

    /// The number of threads kernels use. Defaults to the number of active cores.
    ///
    /// Set it once at start-up (the CLI's `--threads`); kernels read it on each call.
    public static var threadCount: Int {
        get {
            let n = configuredThreads.load(ordering: .relaxed)
            return n > 0 ? n : cores
        }
        set { configuredThreads.store(max(1, newValue), ordering: .relaxed) }
    }

    /// The active cores, read once: Foundation reads them from /proc and the cgroup files on every call, which
    /// cost more than the small products that ask for them.
    private static let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Runs `body(i)` for every `i` in `0..<count`, spread over `threadCount` workers.
    ///
    /// - Parameters:
    ///   - count: The number of work items.
    ///   - threads: Workers to use (default `threadCount`).
    ///   - body: Called once per item, possibly concurrently; items must not write the same memory.
    public static func forEach(_ count: Int, threads: Int? = nil, _ body: (Int) -> Void) {
        guard count > 0 else { return }
        let workers = min(max(1, threads ?? threadCount), count)
        if workers == 1 {
            for i in 0..<count { body(i) }
            return
        }
        let next = ChunkCounter()
        withoutActuallyEscaping(body) { body in
            let work = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: workers) { _ in
                while true {
                    let i = next.take()
                    if i >= count { break }
                    work.value(i)
                }
            }
        }
    }

    /// Splits `0..<count` into contiguous ranges of at least `grain` items and runs them in parallel.
    ///
    /// - Parameters:
    ///   - count: The size of the index space.
    ///   - grain: The smallest range worth a task; small problems run on the calling thread.
    ///   - chunksPerThread: How many ranges each thread gets on average (more balances uneven work).
    ///   - body: Called with disjoint ranges that together cover `0..<count`.
    public static func forRanges(
        _ count: Int, grain: Int = 1, chunksPerThread: Int = 1, _ body: (Range<Int>) -> Void
    ) {
        guard count > 0 else { return }
        let maxChunks = max(1, count / max(1, grain))
        let chunks = min(maxChunks, threadCount * max(1, chunksPerThread))
        if chunks == 1 {
            body(0..<count)
            return
        }
        forEach(chunks) { c in
            let lo = count * c / chunks
            let hi = count * (c + 1) / chunks
            if hi > lo { body(lo..<hi) }
        }
    }
}

/// A shared counter that hands out work-item indices.
private final class ChunkCounter: Sendable {
    private let value = Atomic<Int>(0)
    func take() -> Int { value.wrappingAdd(1, ordering: .relaxed).oldValue }
}

/// Carries a value into a concurrent region whose safety the caller guarantees (disjoint writes).
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
