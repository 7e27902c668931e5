// FrozenMatrix: a frozen weight matrix (rows = out features, columns = in features), held either as fp32 or in
// the block type its file stores (Q4_1, Q8_0, Q6_K, F16, …), with the products a linear layer needs from it:
//
//   y  = x·Wᵀ   (forward)          multiplyTransposed
//   dx = dy·W   (activation grad)  multiply
//   W[i, :]     (embedding rows)   copyRow
//
// A quantised matrix is never expanded whole. Each product walks it in panels of rows that fit in about 1 MiB
// of fp32 (a core's L2 on common x86 parts), dequantises one panel (split across cores), and hands it to sgemm:
// the forward writes the panel's columns of y, the backward accumulates the panel's contribution into dx.
// Dequantising costs O(rows·columns) per product against O(n·rows·columns) multiply-adds, so with n ≥ a few
// hundred rows of activations the products stay sgemm-bound while the weights take 4–8× less memory.
// Panels come from a small pool that keeps its buffers, so steady-state steps allocate nothing.

import Synchronization

/// A frozen weight matrix, fp32 or block-quantised.
public struct FrozenMatrix: @unchecked Sendable, Equatable {
    /// Where the values are.
    public enum Storage: Equatable {
        /// Row-major fp32.
        case f32(UnsafeMutablePointer<Float>)
        /// Row-major blocks of a dequantizable type, each row `columns / blockSize` blocks.
        case blocks(GGMLType, UnsafeRawPointer)
    }

    /// The values.
    public let storage: Storage
    /// Output features.
    public let rows: Int
    /// Input features.
    public let columns: Int

    /// An fp32 matrix.
    public init(_ pointer: UnsafeMutablePointer<Float>, rows: Int, columns: Int) {
        storage = .f32(pointer)
        self.rows = rows
        self.columns = columns
    }

    /// A matrix kept in `type`'s blocks at `bytes` (`rows · rowBytes` bytes).
    public init(type: GGMLType, bytes: UnsafeRawPointer, rows: Int, columns: Int) {
        precondition(type.isDequantizable, "FrozenMatrix: \(type) cannot be dequantised")
        precondition(columns % type.blockSize == 0, "FrozenMatrix: \(columns) columns is not whole \(type) blocks")
        storage = .blocks(type, bytes)
        self.rows = rows
        self.columns = columns
    }

    /// Rows `range` as a matrix of their own, sharing the storage (the parts of a fused projection).
    public func rowRange(_ range: Range<Int>) -> FrozenMatrix {
        precondition(range.lowerBound >= 0 && range.upperBound <= rows, "FrozenMatrix: rows \(range) of \(rows)")
        switch storage {
        case .f32(let p): return FrozenMatrix(p + range.lowerBound * columns, rows: range.count, columns: columns)
        case .blocks(let type, let bytes):
            return FrozenMatrix(
                type: type, bytes: bytes + range.lowerBound * rowBytes, rows: range.count, columns: columns)
        }
    }

    /// The fp32 values, or nil when the matrix is kept quantised.
    public var floats: UnsafeMutablePointer<Float>? {
        if case .f32(let p) = storage { return p }
        return nil
    }

    /// The element type as stored.
    public var type: GGMLType {
        switch storage {
        case .f32: .f32
        case .blocks(let t, _): t
        }
    }

    /// Bytes of one row as stored.
    public var rowBytes: Int { columns / type.blockSize * type.blockBytes }

    /// Bytes of the whole matrix as stored.
    public var byteCount: Int { rows * rowBytes }

    /// fp32 elements in one dequantised panel: 1 MiB.
    public static let panelElements = 1 << 18

    /// Rows per panel: as many as fit in `panelElements`, at least 64 (sgemm wants a deep enough K for the
    /// backward), at most all.
    public var panelRows: Int { min(rows, max(64, Self.panelElements / max(1, columns))) }

    /// `out (n, rows) = alpha · x (n, columns) · Wᵀ + beta · out`.
    ///
    /// - Parameters:
    ///   - lda: Row stride of `x` (default `columns`). - ldc: Row stride of `out` (default `rows`).
    public func multiplyTransposed(
        _ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, n: Int, alpha: Float = 1, beta: Float = 0,
        lda: Int? = nil, ldc: Int? = nil
    ) {
        let lda = lda ?? columns
        let ldc = ldc ?? rows
        switch storage {
        case .f32(let w):
            matmul(out, x, w, M: n, N: rows, K: columns, transB: true, alpha: alpha, beta: beta, lda: lda, ldc: ldc)
        case .blocks(let type, let bytes):
            forEachPanel(type, bytes) { panel, r0, count in
                matmul(
                    out + r0, x, panel, M: n, N: count, K: columns, transB: true, alpha: alpha, beta: beta, lda: lda,
                    ldb: columns, ldc: ldc)
            }
        }
    }

    /// `out (n, columns) = dy (n, rows) · W + beta · out`.
    public func multiply(_ out: UnsafeMutablePointer<Float>, _ dy: UnsafePointer<Float>, n: Int, beta: Float = 0) {
        switch storage {
        case .f32(let w):
            matmul(out, dy, w, M: n, N: columns, K: rows, beta: beta)
        case .blocks(let type, let bytes):
            // Each panel adds its rows' share: dx += dy[:, panel rows] · W[panel rows, :].
            forEachPanel(type, bytes) { panel, r0, count in
                matmul(
                    out, dy + r0, panel, M: n, N: columns, K: count, beta: r0 == 0 ? beta : 1, lda: rows,
                    ldb: columns, ldc: columns)
            }
        }
    }

    /// Dequantises a block matrix one panel of rows at a time into a pooled buffer and calls
    /// `body(panel, first row, rows in the panel)` for each.
    private func forEachPanel(
        _ type: GGMLType, _ bytes: UnsafeRawPointer, _ body: (UnsafeMutablePointer<Float>, Int, Int) -> Void
    ) {
        let step = panelRows
        PanelPool.shared.withPanel(step * columns) { panel in
            for r0 in stride(from: 0, to: rows, by: step) {
                let count = min(step, rows - r0)
                dequantize(type, from: bytes + r0 * rowBytes, to: panel, count: count * columns)
                body(panel, r0, count)
            }
        }
    }

    /// Writes row `i` as fp32 into `destination` (`columns` floats).
    public func copyRow(_ i: Int, into destination: UnsafeMutablePointer<Float>) {
        precondition(i >= 0 && i < rows, "FrozenMatrix.copyRow: row \(i) outside 0..<\(rows)")
        switch storage {
        case .f32(let w): destination.update(from: w + i * columns, count: columns)
        case .blocks(let type, let bytes):
            dequantize(type, from: bytes + i * rowBytes, to: destination, count: columns)
        }
    }

    /// All values as fp32, row-major (for export and tests; allocates rows·columns floats).
    public func dequantized() -> [Float] {
        [Float](unsafeUninitializedCapacity: rows * columns) { buffer, count in
            switch storage {
            case .f32(let w): buffer.baseAddress!.update(from: w, count: rows * columns)
            case .blocks(let type, let bytes):
                dequantize(type, from: bytes, to: buffer.baseAddress!, count: rows * columns)
            }
            count = rows * columns
        }
    }
}

/// Scratch panels for dequantised tiles: a buffer is taken for one product and returned after, so after the
/// first step no product allocates. Concurrent products (two models, two threads) each get their own buffer.
public final class PanelPool: Sendable {
    /// The process's pool.
    public static let shared = PanelPool()

    private struct Free: @unchecked Sendable {
        var buffers: [(pointer: UnsafeMutablePointer<Float>, capacity: Int)] = []
    }
    private let free = Mutex(Free())

    /// An empty pool (the kernels use `shared`).
    public init() {}

    deinit {
        free.withLock { f in for b in f.buffers { b.pointer.deallocate() } }
    }

    /// Runs `body` with a panel of at least `count` floats (contents undefined).
    @discardableResult
    public func withPanel<R>(_ count: Int, _ body: (UnsafeMutablePointer<Float>) -> R) -> R {
        let taken: (pointer: UnsafeMutablePointer<Float>, capacity: Int) = free.withLock { f in
            if let i = f.buffers.firstIndex(where: { $0.capacity >= count }) { return f.buffers.remove(at: i) }
            if let i = f.buffers.indices.last {
                // Too small: drop it in favour of a bigger one.
                f.buffers[i].pointer.deallocate()
                f.buffers.remove(at: i)
            }
            return (UnsafeMutablePointer<Float>.allocate(capacity: count), count)
        }
        defer { free.withLock { $0.buffers.append(taken) } }
        return body(taken.pointer)
    }

    /// Panels held for reuse (for tests).
    public var heldCount: Int { free.withLock { $0.buffers.count } }
}

/// Linear layer forward over a frozen matrix: `out (rows, W.rows) = input · Wᵀ + bias`.
public func linearForward(
    out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>, weight: FrozenMatrix,
    bias: UnsafePointer<Float>?, rows: Int
) {
    if let bias {
        for r in 0..<rows { (out + r * weight.rows).update(from: bias, count: weight.rows) }
    }
    weight.multiplyTransposed(out, input, n: rows, beta: bias == nil ? 0 : 1)
}

/// Embedding forward over a frozen table: `out[n, :] = table[tokens[n], :]`, ids checked against its rows.
public func embeddingForward(
    out: UnsafeMutablePointer<Float>, tokens: UnsafePointer<Int32>, table: FrozenMatrix, count N: Int
) {
    if let floats = table.floats {
        embeddingForward(out: out, tokens: tokens, table: floats, count: N, vocabSize: table.rows, dim: table.columns)
        return
    }
    Parallel.forRanges(N, grain: 64) { range in
        for n in range {
            let id = Int(tokens[n])
            precondition(id >= 0 && id < table.rows, "embeddingForward: token id \(id) outside 0..<\(table.rows)")
            table.copyRow(id, into: out + n * table.columns)
        }
    }
}
