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
}
