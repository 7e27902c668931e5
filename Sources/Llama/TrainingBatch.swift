// TrainingBatch: what one forward/backward pass consumes: B rows of T tokens, each row possibly several
// documents packed together, with next-token targets (−1 where no loss is taken), positions that restart at
// every document, and for every position the row index where its document starts (attention's key start).

/// B rows of T tokens with targets and document structure, row-major (B, T).
public struct TrainingBatch: Sendable, Equatable {
    /// Rows.
    public var batch: Int
    /// Tokens per row.
    public var length: Int
    /// Input ids.
    public var tokens: [Int32]
    /// The id each position must predict, or −1 (padding, prompt tokens, document ends).
    public var targets: [Int32]
    /// RoPE position of each token inside its document.
    public var positions: [Int32]
    /// Row index of the first token of each token's document.
    public var documentStarts: [Int32]

    /// A batch; the arrays hold batch × length entries.
    public init(batch: Int, length: Int, tokens: [Int32], targets: [Int32], positions: [Int32], documentStarts: [Int32])
    {
        precondition(
            tokens.count == batch * length && targets.count == tokens.count && positions.count == tokens.count
                && documentStarts.count == tokens.count, "TrainingBatch: array sizes must be batch × length")
        self.batch = batch
        self.length = length
        self.tokens = tokens
        self.targets = targets
        self.positions = positions
        self.documentStarts = documentStarts
    }

    /// One document per row, no padding: targets are the next tokens (the last position has none).
    public init(rows: [[Int32]]) {
        let length = rows.first?.count ?? 0
        precondition(rows.allSatisfy { $0.count == length }, "TrainingBatch(rows:): rows must have equal length")
        var targets: [Int32] = []
        for row in rows { targets += Array(row.dropFirst()) + [-1] }
        self.init(
            batch: rows.count, length: length, tokens: rows.flatMap { $0 }, targets: targets,
            positions: rows.flatMap { _ in (0..<length).map(Int32.init) },
            documentStarts: [Int32](repeating: 0, count: rows.count * length))
    }

    /// Positions that carry a target.
    public var targetCount: Int { targets.reduce(0) { $0 + ($1 >= 0 ? 1 : 0) } }

    /// Rows of several batches of the same length, one after another.
    public init(concatenating parts: [TrainingBatch], length: Int) {
        precondition(parts.allSatisfy { $0.length == length }, "TrainingBatch: rows of different lengths")
        self.init(
            batch: parts.reduce(0) { $0 + $1.batch }, length: length, tokens: parts.flatMap(\.tokens),
            targets: parts.flatMap(\.targets), positions: parts.flatMap(\.positions),
            documentStarts: parts.flatMap(\.documentStarts))
    }

    /// Rows `range` of this batch.
    public func rows(_ range: Range<Int>) -> TrainingBatch {
        let r = range.lowerBound * length..<range.upperBound * length
        return TrainingBatch(
            batch: range.count, length: length, tokens: Array(tokens[r]), targets: Array(targets[r]),
            positions: Array(positions[r]), documentStarts: Array(documentStarts[r]))
    }

    /// The batch with rows that train nothing appended up to `rows` rows (evaluation in the training shape, so
    /// the training workspace serves it instead of one allocated for a new shape).
    public func padded(toRows rows: Int, padId: Int32) -> TrainingBatch {
        let extra = max(0, rows - batch) * length
        guard extra > 0 else { return self }
        return TrainingBatch(
            batch: max(rows, batch), length: length, tokens: tokens + [Int32](repeating: padId, count: extra),
            targets: targets + [Int32](repeating: -1, count: extra),
            positions: positions + (0..<extra).map { Int32($0 % length) },
            documentStarts: documentStarts + [Int32](repeating: 0, count: extra))
    }

    /// Each row extended to `length` tokens with positions that train nothing. Causal attention keeps them from
    /// the real positions, which compute exactly what they did; each padding position is a document of its own at
    /// position 0, so it changes neither the documents nor the furthest position (LongRoPE's choice of factors).
    public func padded(toLength newLength: Int) -> TrainingBatch {
        precondition(newLength >= length, "TrainingBatch: cannot pad to a shorter length")
        guard newLength > length else { return self }
        var out = TrainingBatch(
            batch: batch, length: newLength, tokens: [Int32](repeating: 0, count: batch * newLength),
            targets: [Int32](repeating: -1, count: batch * newLength),
            positions: [Int32](repeating: 0, count: batch * newLength),
            documentStarts: (0..<batch * newLength).map { Int32($0 % newLength) })
        for r in 0..<batch {
            for t in 0..<length {
                let (from, to) = (r * length + t, r * newLength + t)
                out.tokens[to] = tokens[from]
                out.targets[to] = targets[from]
                out.positions[to] = positions[from]
                out.documentStarts[to] = documentStarts[from]
            }
        }
        return out
    }

    /// The rows in micro-batches of at most `maxRows` (gradient accumulation over them sums the same loss).
    public func split(maxRows: Int) -> [TrainingBatch] {
        stride(from: 0, to: batch, by: max(1, maxRows)).map { rows($0..<min(batch, $0 + max(1, maxRows))) }
    }

    /// Whether every id indexes inside a vocabulary of `vocabularySize` and every position and document start
    /// inside a row: what must hold before a batch from elsewhere (the network) reaches the kernels.
    public func isValid(vocabularySize: Int) -> Bool {
        let vocab = Int32(clamping: vocabularySize)
        let row = Int32(clamping: length)
        return tokens.allSatisfy { $0 >= 0 && $0 < vocab } && targets.allSatisfy { $0 >= -1 && $0 < vocab }
            && positions.allSatisfy { $0 >= 0 && $0 < row } && documentStarts.allSatisfy { $0 >= 0 && $0 < row }
    }
}
