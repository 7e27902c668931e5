// StepWork: the bookkeeping of one sync step, as a pure state machine. The step's rows start pending; idle
// workers get contiguous shares in proportion to their speed; a result is accepted only for an assignment
// still outstanding (so a late or repeated result is never counted twice); a worker that is lost or misses
// its deadline gives its rows back to pending, for the others. The step is complete when every row's
// gradient is in.

/// Splits `count` items in proportion to `weights` (largest remainder; ties to the earlier entry).
public func proportionalSplit(_ count: Int, weights: [Double]) -> [Int] {
    guard !weights.isEmpty else { return [] }
    let clean = weights.map { $0.isFinite && $0 > 0 ? $0 : 0 }
    let total = clean.reduce(0, +)
    let w = total > 0 ? clean.map { $0 / total } : clean.map { _ in 1 / Double(clean.count) }
    let exact = w.map { $0 * Double(count) }
    var shares = exact.map { Int($0.rounded(.down)) }
    var left = count - shares.reduce(0, +)
    let order = exact.indices.sorted { (exact[$0] - Double(shares[$0]), -$0) > (exact[$1] - Double(shares[$1]), -$1) }
    var i = 0
    while left > 0 {
        shares[order[i % order.count]] += 1
        left -= 1
        i += 1
    }
    return shares
}

/// Rows handed to one worker.
public struct Assignment: Sendable, Equatable {
    public var id: Int
    public var worker: String
    /// Row indices within the step, ascending and contiguous.
    public var rows: [Int]
    /// When the assignment is given up on (seconds, the caller's clock).
    public var deadline: Double
    /// When it was handed out (the same clock).
    public var started: Double = 0
}

/// The work of one step.
public struct StepWork: Sendable {
    /// Rows not yet assigned (or given back), ascending.
    public private(set) var pending: [Int]
    /// Assignments outstanding, by id.
    public private(set) var running: [Int: Assignment] = [:]
    /// Rows whose gradient is in, by worker.
    public private(set) var completedRows: [String: Int] = [:]
    private var nextId: Int

    /// A step of `rows` rows; assignment ids start at `firstAssignment` (unique across steps).
    public init(rows: Int, firstAssignment: Int) {
        pending = Array(0..<rows)
        nextId = firstAssignment
    }

    /// The id the next assignment will get.
    public var nextAssignmentId: Int { nextId }

    public var isComplete: Bool { pending.isEmpty && running.isEmpty }

    /// Workers with an assignment outstanding.
    public var busyWorkers: Set<String> { Set(running.values.map(\.worker)) }

    /// Hands all pending rows to `idle` workers in proportion to their speed (rows per second); a worker whose
    /// share rounds to zero gets nothing. `duration(worker, rows)` gives each assignment's deadline.
    public mutating func distribute(
        idle: [(worker: String, speed: Double)], now: Double, deadline: (String, Int) -> Double
    ) -> [Assignment] {
        let free = idle.filter { w in !running.values.contains { $0.worker == w.worker } }
        guard !pending.isEmpty, !free.isEmpty else { return [] }
        let shares = proportionalSplit(pending.count, weights: free.map(\.speed))
        var out: [Assignment] = []
        var start = 0
        for (w, n) in zip(free, shares) where n > 0 {
            let rows = Array(pending[start..<start + n])
            start += n
            let a = Assignment(
                id: nextId, worker: w.worker, rows: rows, deadline: now + deadline(w.worker, n), started: now)
            nextId += 1
            running[a.id] = a
            out.append(a)
        }
        pending = []
        return out
    }

    /// Accepts the result of an assignment; nil when it is not outstanding for that worker (late, repeated,
    /// revoked or forged), in which case the result must be ignored.
    public mutating func complete(_ id: Int, worker: String) -> Assignment? {
        guard let a = running[id], a.worker == worker else { return nil }
        running[id] = nil
        completedRows[worker, default: 0] += a.rows.count
        return a
    }

    /// Gives back the rows of a lost worker; returns the revoked assignments.
    @discardableResult
    public mutating func lose(worker: String) -> [Assignment] {
        let lost = running.values.filter { $0.worker == worker }
        for a in lost {
            running[a.id] = nil
            pending += a.rows
        }
        pending.sort()
        return lost
    }

    /// Gives back the rows of assignments past their deadline; returns them.
    public mutating func expire(now: Double) -> [Assignment] {
        let late = running.values.filter { $0.deadline <= now }.sorted { $0.id < $1.id }
        for a in late {
            running[a.id] = nil
            pending += a.rows
        }
        pending.sort()
        return late
    }
}
