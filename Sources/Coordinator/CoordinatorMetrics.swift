// CoordinatorMetrics: what this coordinator process has counted since it started, for /metrics and the dashboard:
// step and round durations per distribution mode (a histogram), bytes of training traffic per mode and direction,
// blob bytes served, and per worker its bytes each way, its last model transfer and its share of the last step.
// Durable facts (steps, tokens, losses) come from the store instead, so they survive a restart.

/// Bytes each way.
public struct Traffic: Sendable, Equatable {
    public var sent = 0
    public var received = 0
}

/// A blob a worker is fetching (or fetched): how far it has asked for, of how much.
public struct BlobTransfer: Sendable, Equatable {
    public var blob: String
    public var received: Int
    public var total: Int
}

/// Counters of one coordinator process.
struct CoordinatorMetrics {
    /// Upper bounds of the step-duration histogram's buckets (seconds).
    static let stepBuckets: [Double] = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900]

    /// Per mode: observations per bucket (the last one for +Inf) and their sum.
    private(set) var stepSeconds: [String: (counts: [Int], sum: Double)] = [:]
    /// Training traffic (assignments down, results up) per distribution mode.
    private(set) var wire: [String: Traffic] = [:]
    /// Bytes of blob chunks sent (models to workers, adapters to clients).
    private(set) var blobBytesSent = 0
    /// Every byte to and from each worker (by worker id), across its reconnections.
    private(set) var workers: [String: Traffic] = [:]
    /// Each worker's latest blob transfer.
    private(set) var transfers: [String: BlobTransfer] = [:]
    /// Each worker's fraction of the rows of the running job's last step or round.
    private(set) var shares: [String: Double] = [:]

    mutating func observeStep(mode: String, seconds: Double) {
        var entry = stepSeconds[mode] ?? ([Int](repeating: 0, count: Self.stepBuckets.count + 1), 0)
        let bucket = Self.stepBuckets.firstIndex { seconds <= $0 } ?? Self.stepBuckets.count
        entry.counts[bucket] += 1
        entry.sum += seconds
        stepSeconds[mode] = entry
    }

    mutating func sent(_ bytes: Int, worker: String?, mode: String?, blob: Bool) {
        if let worker { workers[worker, default: Traffic()].sent += bytes }
        if let mode { wire[mode, default: Traffic()].sent += bytes }
        if blob { blobBytesSent += bytes }
    }

    mutating func received(_ bytes: Int, worker: String?, mode: String?) {
        if let worker { workers[worker, default: Traffic()].received += bytes }
        if let mode { wire[mode, default: Traffic()].received += bytes }
    }

    mutating func transfer(worker: String, blob: String, through end: Int, of total: Int) {
        var t =
            transfers[worker].flatMap { $0.blob == blob ? $0 : nil }
            ?? BlobTransfer(blob: blob, received: 0, total: total)
        t.received = max(t.received, min(end, total))
        transfers[worker] = t
    }

    /// The last step's rows per worker become the shares (workers not in it have none).
    mutating func step(rows: [String: Int]) {
        let total = rows.values.reduce(0, +)
        shares = total > 0 ? rows.mapValues { Double($0) / Double(total) } : [:]
    }
}
