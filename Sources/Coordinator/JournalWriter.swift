// JournalWriter: writes the running jobs' state to the state directory on a thread of its own: each finished step
// or round (its checkpoint and row), and a finished job's export. A checkpoint is the adapter with both optimizer
// moments; written and synced on the coordinator's loop, it held that loop for 1–2 s on a busy disk, the workers
// heard no heartbeat, reconnected, and the rounds they were computing were handed out again. Here the loop hands
// the work over and goes on. The writer keeps the order of each job's items; an entry that waits behind a slow
// write is merged with the job's next one (both rows journaled, only the newer checkpoint written), so at most two
// checkpoints per job are ever in memory. A job's state changes (failed, cancelled) wait for that job's writes
// first (`drain(job:)`), and the coordinator's exit for all (`drain`), so a late entry never marks a finished job
// running again.

import Foundation
import Support
import Training

final class JournalWriter: @unchecked Sendable {
    /// A finished unit to journal: its record(s) and the checkpoint after the last of them.
    struct Entry {
        var job: String
        var records: [StepRecord]
        var checkpoint: Checkpoint
        /// For the report: the job's mode, what its units are called ("step", "round") and how many it has.
        var mode: String
        var unitName: String
        var units: Int
    }

    /// What became of an item, for the coordinator's loop to report (or to stop the job).
    enum Outcome {
        case journaled(Entry)
        case failed(Entry, message: String)
        /// A task's own report: what to log, and whether it failed.
        case finished(job: String, message: String, failed: Bool)
    }

    private enum Item {
        case entry(Entry)
        case task(job: String, run: @Sendable () -> Outcome)

        var job: String {
            switch self {
            case .entry(let e): e.job
            case .task(let job, _): job
            }
        }
    }

    private let store: Store
    private let blobs: BlobStore
    private let scratch: String
    private let probe: (@Sendable (_ point: String, _ step: Int) -> Void)?
    private let condition = NSCondition()
    private var queue: [Item] = []
    /// The job whose item is being done, if any.
    private var writing: String?
    private var started = false
    private var closed = false
    private var outcomes: [Outcome] = []
    /// Each job's journaled checkpoint blob (the one its next checkpoint replaces).
    private var checkpoints: [String: String] = [:]

    /// - Parameters:
    ///   - scratch: the file a checkpoint is written to before it is moved into the blob store.
    ///   - probe: called at each crash point of a journal write (tests kill the process there).
    init(
        store: Store, blobs: BlobStore, scratch: String,
        probe: (@Sendable (_ point: String, _ step: Int) -> Void)?
    ) {
        self.store = store
        self.blobs = blobs
        self.scratch = scratch
        self.probe = probe
    }

    /// Queues a finished unit; one of the same job still waiting (and last of that job's items) takes this one's
    /// records and checkpoint instead.
    func submit(_ entry: Entry) {
        enqueue(.entry(entry)) { queue in
            guard let i = queue.lastIndex(where: { $0.job == entry.job }), case .entry(var waiting) = queue[i] else {
                return false
            }
            waiting.records += entry.records
            waiting.checkpoint = entry.checkpoint
            queue[i] = .entry(waiting)
            return true
        }
    }

    /// Queues other work on a job's state, run after the job's entries queued before it.
    func submit(job: String, _ run: @escaping @Sendable () -> Outcome) {
        enqueue(.task(job: job, run: run)) { _ in false }
    }

    /// Waits until every queued item is done.
    func drain() {
        condition.withLock {
            while !queue.isEmpty || writing != nil { condition.wait() }
        }
    }

    /// Waits until the job's queued items are done (not other jobs', which may be slow to write).
    func drain(job: String) {
        condition.withLock {
            while writing == job || queue.contains(where: { $0.job == job }) { condition.wait() }
        }
    }

    /// The outcomes since the last call.
    func take() -> [Outcome] {
        condition.withLock {
            defer { outcomes = [] }
            return outcomes
        }
    }

    /// The job's journaled checkpoint blob.
    func checkpoint(of job: String) -> String? { condition.withLock { checkpoints[job] } }

    /// Records the checkpoint a job starts from (its journaled one, at activation).
    func setCheckpoint(_ blob: String?, of job: String) { condition.withLock { checkpoints[job] = blob } }

    /// Does what is queued, then ends the thread; later items are done at once on the caller's thread.
    func close() {
        drain()
        condition.withLock {
            closed = true
            condition.broadcast()
        }
    }

    private func enqueue(_ item: Item, merge: (inout [Item]) -> Bool) {
        let closedAlready = condition.withLock { closed }
        if closedAlready {
            let outcome = perform(item)
            condition.withLock { outcomes.append(outcome) }
            return
        }
        condition.withLock {
            // The thread starts with the first item (a coordinator that never journals has none).
            if !started {
                started = true
                let thread = Thread { [self] in run() }
                thread.name = "cairn-journal"
                thread.start()
            }
            if !merge(&queue) { queue.append(item) }
            condition.broadcast()
        }
    }

    private func run() {
        while true {
            let next: Item? = condition.withLock {
                while queue.isEmpty, !closed { condition.wait() }
                guard !queue.isEmpty else { return nil }
                let item = queue.removeFirst()
                writing = item.job
                return item
            }
            guard let item = next else { return }
            let outcome = perform(item)
            condition.withLock {
                outcomes.append(outcome)
                writing = nil
                condition.broadcast()
            }
        }
    }

    private func perform(_ item: Item) -> Outcome {
        switch item {
        case .entry(let entry): write(entry)
        case .task(_, let run): run()
        }
    }

    /// Checkpoint blob first, then the records and the job's pointer in one transaction, then the previous
    /// checkpoint dropped.
    private func write(_ entry: Entry) -> Outcome {
        let steps = entry.records.map(\.step)
        do {
            try entry.checkpoint.write(to: scratch)
            let blob = try blobs.adopt(file: scratch)
            for s in steps { probe?("checkpoint", s) }
            try store.journal(job: entry.job, steps: entry.records, checkpointBlob: blob) {
                for s in steps { probe?("transaction", s) }
            }
            for s in steps { probe?("cleanup", s) }
            let old = condition.withLock {
                defer { checkpoints[entry.job] = blob }
                return checkpoints[entry.job]
            }
            if let old, old != blob { blobs.remove(old) }
            return .journaled(entry)
        } catch {
            // The job stops: nothing of it is written after a gap.
            condition.withLock { queue.removeAll { $0.job == entry.job } }
            return .failed(entry, message: "\(error)")
        }
    }
}
