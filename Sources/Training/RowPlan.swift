// RowPlan: examples into rows of T tokens, the unit a training step consumes.
//
// Each epoch visits the examples in an order shuffled by (seed, epoch). In `pack` mode examples are laid end to
// end and a row is closed when the next example does not fit; in `pad` mode each example gets a row. An
// example longer than T is truncated. Inside a row every document has its own positions (from 0) and its tokens
// attend only within it; the last token of a document predicts nothing, and neither do padding tokens. Rows
// form an endless stream across epochs, so a step is "the next B rows" and the cursor (rows consumed) says
// exactly where to resume.

import Llama
import TensorKernels

/// Rows of one epoch, built from examples.
public final class RowPlan: @unchecked Sendable {
    /// Tokens per row.
    public let length: Int
    /// Packing or padding.
    public let mode: BatchMode
    /// Token used to fill rows.
    public let padId: Int32
    /// Shuffling seed (nil: keep the given order, as for validation data).
    public let seed: UInt64?
    /// Examples that were longer than a row and got truncated.
    public let truncatedCount: Int
    /// Examples left out because no token of theirs is trained.
    public let emptyCount: Int

    private let examples: [Example]
    private var cachedEpoch = -1
    private var cachedRows: [TrainingBatch] = []
    private var epochSizes: [Int] = []

    /// Prepares examples for rows of `length` tokens.
    public init(examples: [Example], length: Int, mode: BatchMode, padId: Int32, seed: UInt64?) {
        precondition(length >= 2, "RowPlan: rows need at least 2 tokens")
        self.length = length
        self.mode = mode
        self.padId = padId
        self.seed = seed
        var kept: [Example] = []
        var truncated = 0
        var empty = 0
        for e in examples {
            var e = e
            if e.tokens.count > length {
                e = Example(tokens: Array(e.tokens.prefix(length)), trained: Array(e.trained.prefix(length)))
                truncated += 1
            }
            if e.trainedCount == 0 {
                empty += 1
                continue
            }
            kept.append(e)
        }
        self.examples = kept
        truncatedCount = truncated
        emptyCount = empty
    }

    /// Examples used.
    public var exampleCount: Int { examples.count }

    /// Trained tokens over one pass of the examples.
    public var trainedTokensPerEpoch: Int { examples.reduce(0) { $0 + $1.trainedCount } }

    /// Rows in an epoch (packing a different order can change the count slightly).
    public func rowCount(epoch: Int) -> Int {
        while epochSizes.count <= epoch { epochSizes.append(build(epoch: epochSizes.count).count) }
        return epochSizes[epoch]
    }

    /// The row at a position of the endless stream, with the epoch it belongs to.
    public func row(at cursor: Int) -> (row: TrainingBatch, epoch: Int) {
        precondition(!examples.isEmpty, "RowPlan: no examples")
        var epoch = 0
        var index = cursor
        while index >= rowCount(epoch: epoch) {
            index -= rowCount(epoch: epoch)
            epoch += 1
        }
        if cachedEpoch != epoch {
            cachedRows = build(epoch: epoch)
            cachedEpoch = epoch
        }
        return (cachedRows[index], epoch)
    }

    /// `count` consecutive rows from `cursor` as one batch.
    public func batch(from cursor: Int, count: Int) -> TrainingBatch {
        TrainingBatch(concatenating: (0..<count).map { row(at: cursor + $0).row }, length: length)
    }

    /// The visiting order of an epoch.
    func order(epoch: Int) -> [Int] {
        var order = Array(examples.indices)
        guard let seed else { return order }
        var rng = SeededGenerator(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15)
        for i in stride(from: order.count - 1, to: 0, by: -1) {
            order.swapAt(i, Int(rng.next() % UInt64(i + 1)))
        }
        return order
    }

    private func build(epoch: Int) -> [TrainingBatch] {
        var rows: [TrainingBatch] = []
        var current = RowBuilder(length: length, padId: padId)
        for i in order(epoch: epoch) {
            let e = examples[i]
            if mode == .pad || current.used + e.tokens.count > length, current.used > 0 {
                rows.append(current.finish())
                current = RowBuilder(length: length, padId: padId)
            }
            current.add(e)
        }
        if current.used > 0 { rows.append(current.finish()) }
        return rows
    }
}

/// Fills one row document by document.
private struct RowBuilder {
    let length: Int
    let padId: Int32
    var tokens: [Int32] = []
    var targets: [Int32] = []
    var positions: [Int32] = []
    var starts: [Int32] = []
    var used: Int { tokens.count }

    init(length: Int, padId: Int32) {
        self.length = length
        self.padId = padId
    }

    mutating func add(_ e: Example) {
        let start = Int32(tokens.count)
        let n = e.tokens.count
        tokens += e.tokens
        for i in 0..<n {
            targets.append(i + 1 < n && e.trained[i + 1] ? e.tokens[i + 1] : -1)
            positions.append(Int32(i))
            starts.append(start)
        }
    }

    mutating func finish() -> TrainingBatch {
        let start = Int32(tokens.count)
        let padding = length - tokens.count
        tokens += [Int32](repeating: padId, count: padding)
        targets += [Int32](repeating: -1, count: padding)
        positions += (0..<padding).map(Int32.init)
        starts += [Int32](repeating: start, count: padding)
        return TrainingBatch(
            batch: 1, length: length, tokens: tokens, targets: targets, positions: positions, documentStarts: starts)
    }
}
