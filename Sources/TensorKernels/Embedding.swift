// Embedding: token ids to rows of a table, and the scatter-add that is its backward.
//
// Dims: N = number of tokens (B·T flattened), C = row length (the model width), V = rows in the table.

/// Embedding forward: `out[n, :] = table[tokens[n], :]`.
///
/// - Parameters:
///   - out: (N, C), overwritten.
///   - tokens: (N) ids, each in `0..<vocabSize` (checked: a bad id is a programmer error upstream).
///   - table: (V, C).
public func embeddingForward(
    out: UnsafeMutablePointer<Float>, tokens: UnsafePointer<Int32>, table: UnsafePointer<Float>,
    count N: Int, vocabSize V: Int, dim C: Int
) {
    Parallel.forRanges(N, grain: 64) { range in
        for n in range {
            let id = Int(tokens[n])
            precondition(id >= 0 && id < V, "embeddingForward: token id \(id) outside 0..<\(V)")
            (out + n * C).update(from: table + id * C, count: C)
        }
    }
}

/// Embedding backward: `dTable[tokens[n], :] += dOut[n, :]` (serial: ids repeat, so rows collide).
///
/// - Parameters:
///   - dTable: (V, C), accumulated.
///   - dOut: (N, C).
///   - tokens: (N).
public func embeddingBackward(
    dTable: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>, tokens: UnsafePointer<Int32>,
    count N: Int, vocabSize V: Int, dim C: Int
) {
    for n in 0..<N {
        let id = Int(tokens[n])
        precondition(id >= 0 && id < V, "embeddingBackward: token id \(id) outside 0..<\(V)")
        axpy(dTable + id * C, 1, dOut + n * C, C)
    }
}

/// The reference for `embeddingForward`: element by element on one thread. Same arguments.
public func embeddingForwardNaive(
    out: UnsafeMutablePointer<Float>, tokens: UnsafePointer<Int32>, table: UnsafePointer<Float>,
    count N: Int, vocabSize V: Int, dim C: Int
) {
    for n in 0..<N {
        for c in 0..<C { out[n * C + c] = table[Int(tokens[n]) * C + c] }
    }
}
