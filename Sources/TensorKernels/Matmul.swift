// Matmul: C = alpha·op(A)·op(B) + beta·C through OpenBLAS sgemm, split across cores, the naive triple loop
// it is tested against, and the linear layer y = x·Wᵀ + b with its backward: the products every
// transformer block is made of.
//
// Dims follow BLAS: op(A) is M×K, op(B) is K×N, C is M×N, all row-major with leading dimensions
// (lda, ldb, ldc = the distance in elements between consecutive rows as stored). A linear layer maps
// `rows` input vectors of `inFeatures` to `outFeatures`; its weight is stored (outFeatures, inFeatures),
// the layout of PyTorch's nn.Linear and of GGUF's ne = [in, out].

/// Computes `C = alpha · op(A) · op(B) + beta · C` with sgemm, split across `Parallel.threadCount` threads.
///
/// - Parameters:
///   - c: Output (M, N), row stride `ldc`.
///   - a: (M, K) row stride `lda`, or (K, M) when `transA`.
///   - b: (K, N) row stride `ldb`, or (N, K) when `transB`.
///   - transA: Use Aᵀ. - transB: Use Bᵀ.
///   - alpha: Scale of the product. - beta: Scale of the old C (0 ignores its contents).
///   - lda: Defaults to the stored row length of A. - ldb, ldc: likewise.
///   - threads: At most this many threads (default `Parallel.threadCount`); 1 inside a parallel region.
public func matmul(
    _ c: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
    M: Int, N: Int, K: Int, transA: Bool = false, transB: Bool = false,
    alpha: Float = 1, beta: Float = 0, lda: Int? = nil, ldb: Int? = nil, ldc: Int? = nil, threads: Int? = nil
) {
    precondition(M >= 0 && N >= 0 && K >= 0, "matmul: negative dimension M=\(M) N=\(N) K=\(K)")
    guard M > 0, N > 0 else { return }
    _ = BLAS.configured
    let lda = lda ?? (transA ? M : K)
    let ldb = ldb ?? (transB ? K : N)
    let ldc = ldc ?? N
    precondition(lda >= max(1, transA ? M : K), "matmul: lda \(lda) too small")
    precondition(ldb >= max(1, transB ? K : N), "matmul: ldb \(ldb) too small")
    precondition(ldc >= N, "matmul: ldc \(ldc) smaller than N \(N)")
    if K == 0 {
        for i in 0..<M {
            for j in 0..<N { c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j] }
        }
        return
    }
    let threads = min(threads ?? Parallel.threadCount, Parallel.threadCount)
    // Below ~2 MFLOP a second thread costs more than it saves.
    if threads == 1 || M * N * K < 1 << 20 {
        BLAS.sgemm(
            transA: transA, transB: transB, m: M, n: N, k: K, alpha: alpha,
            a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        return
    }
    if M >= N {
        // Row panels of C: rows of op(A).
        Parallel.forRanges(M, grain: 16) { rows in
            let aPanel = transA ? a + rows.lowerBound : a + rows.lowerBound * lda
            BLAS.sgemm(
                transA: transA, transB: transB, m: rows.count, n: N, k: K, alpha: alpha,
                a: aPanel, lda: lda, b: b, ldb: ldb, beta: beta, c: c + rows.lowerBound * ldc, ldc: ldc)
        }
    } else {
        // Column panels of C: columns of op(B).
        Parallel.forRanges(N, grain: 16) { cols in
            let bPanel = transB ? b + cols.lowerBound * ldb : b + cols.lowerBound
            BLAS.sgemm(
                transA: transA, transB: transB, m: M, n: cols.count, k: K, alpha: alpha,
                a: a, lda: lda, b: bPanel, ldb: ldb, beta: beta, c: c + cols.lowerBound, ldc: ldc)
        }
    }
}

/// The reference for `matmul`: a triple loop accumulating in Double. Same arguments and semantics.
public func matmulNaive(
    _ c: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
    M: Int, N: Int, K: Int, transA: Bool = false, transB: Bool = false,
    alpha: Float = 1, beta: Float = 0, lda: Int? = nil, ldb: Int? = nil, ldc: Int? = nil
) {
    let lda = lda ?? (transA ? M : K)
    let ldb = ldb ?? (transB ? K : N)
    let ldc = ldc ?? N
    for i in 0..<M {
        for j in 0..<N {
            var sum = 0.0
            for p in 0..<K {
                let x = transA ? a[p * lda + i] : a[i * lda + p]
                let y = transB ? b[j * ldb + p] : b[p * ldb + j]
                sum += Double(x) * Double(y)
            }
            let old = beta == 0 ? 0 : Double(beta) * Double(c[i * ldc + j])
            c[i * ldc + j] = Float(Double(alpha) * sum + old)
        }
    }
}

/// Linear layer forward: `out = input · weightᵀ + bias`.
///
/// - Parameters:
///   - out: (rows, outFeatures), overwritten.
///   - input: (rows, inFeatures).
///   - weight: (outFeatures, inFeatures).
///   - bias: (outFeatures), or nil.
public func linearForward(
    out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    bias: UnsafePointer<Float>?, rows: Int, inFeatures: Int, outFeatures: Int
) {
    if let bias {
        for r in 0..<rows { (out + r * outFeatures).update(from: bias, count: outFeatures) }
    }
    matmul(
        out, input, weight, M: rows, N: outFeatures, K: inFeatures, transB: true, beta: bias == nil ? 0 : 1)
}

/// Linear layer backward; every gradient *accumulates* (`+=`).
///
/// - Parameters:
///   - dInput: (rows, inFeatures) `+= dOut · weight`, or nil to skip (the first layer).
///   - dWeight: (outFeatures, inFeatures) `+= dOutᵀ · input`, or nil for a frozen weight.
///   - dBias: (outFeatures) `+= Σ_rows dOut`, or nil.
///   - dOut: (rows, outFeatures), the gradient of the output.
///   - input: (rows, inFeatures), the forward input.
///   - weight: (outFeatures, inFeatures).
public func linearBackward(
    dInput: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
    dOut: UnsafePointer<Float>, input: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    rows: Int, inFeatures: Int, outFeatures: Int
) {
    if let dInput {
        matmul(dInput, dOut, weight, M: rows, N: inFeatures, K: outFeatures, beta: 1)
    }
    if let dWeight {
        matmul(dWeight, dOut, input, M: outFeatures, N: inFeatures, K: rows, transA: true, beta: 1)
    }
    if let dBias {
        for r in 0..<rows {
            let row = dOut + r * outFeatures
            for o in 0..<outFeatures { dBias[o] += row[o] }
        }
    }
}
