// LowRank: thin QR and SVD through LAPACK (OpenBLAS), and the truncated SVD of a product of stacked low-rank
// factors L·R (L: m×k, R: k×n, k small) without forming the m×n matrix: QR of L and of Rᵀ, SVD of the k×k core
// R_L·R_Rᵀ, then rotate back. This is how adapters that diverged (DiLoCo rounds, federated rounds, merges) are
// combined exactly in ΔW space and brought back to a LoRA rank. Matrices here are row-major [Float].

import CBLAS

/// Thin QR of an m×k matrix (m ≥ k): Q (m×k, orthonormal columns) and R (k×k, upper triangular), A = Q·R.
public func thinQR(_ a: [Float], rows m: Int, columns k: Int) -> (q: [Float], r: [Float]) {
    precondition(a.count == m * k && m >= k && k >= 1, "thinQR: need an m×k matrix with m ≥ k ≥ 1")
    // Column-major copy for LAPACK.
    var col = [Float](repeating: 0, count: m * k)
    for i in 0..<m { for j in 0..<k { col[j * m + i] = a[i * k + j] } }
    var tau = [Float](repeating: 0, count: k)
    var mm = Int32(m)
    var kk = Int32(k)
    var lda = Int32(m)
    var info: Int32 = 0
    var lwork = Int32(max(1, 64 * k))
    var work = [Float](repeating: 0, count: Int(lwork))
    sgeqrf_(&mm, &kk, &col, &lda, &tau, &work, &lwork, &info)
    precondition(info == 0, "sgeqrf failed: \(info)")
    var r = [Float](repeating: 0, count: k * k)
    for i in 0..<k { for j in i..<k { r[i * k + j] = col[j * m + i] } }
    sorgqr_(&mm, &kk, &kk, &col, &lda, &tau, &work, &lwork, &info)
    precondition(info == 0, "sorgqr failed: \(info)")
    var q = [Float](repeating: 0, count: m * k)
    for i in 0..<m { for j in 0..<k { q[i * k + j] = col[j * m + i] } }
    return (q, r)
}

/// Thin SVD of an m×n matrix: U (m×p), singular values (p, descending), Vᵀ (p×n), p = min(m, n).
public func thinSVD(_ a: [Float], rows m: Int, columns n: Int) -> (u: [Float], s: [Float], vt: [Float]) {
    precondition(a.count == m * n && m >= 1 && n >= 1, "thinSVD: need an m×n matrix")
    let p = min(m, n)
    var col = [Float](repeating: 0, count: m * n)
    for i in 0..<m { for j in 0..<n { col[j * m + i] = a[i * n + j] } }
    var s = [Float](repeating: 0, count: p)
    var uc = [Float](repeating: 0, count: m * p)
    var vtc = [Float](repeating: 0, count: p * n)
    var jobz = Int8(UInt8(ascii: "S"))
    var mm = Int32(m)
    var nn = Int32(n)
    var lda = Int32(m)
    var ldu = Int32(m)
    var ldvt = Int32(p)
    var info: Int32 = 0
    var iwork = [Int32](repeating: 0, count: 8 * p)
    var lwork: Int32 = -1
    var query: Float = 0
    sgesdd_(&jobz, &mm, &nn, &col, &lda, &s, &uc, &ldu, &vtc, &ldvt, &query, &lwork, &iwork, &info)
    lwork = Int32(query) + 1
    var work = [Float](repeating: 0, count: Int(lwork))
    sgesdd_(&jobz, &mm, &nn, &col, &lda, &s, &uc, &ldu, &vtc, &ldvt, &work, &lwork, &iwork, &info)
    precondition(info == 0, "sgesdd failed: \(info)")
    var u = [Float](repeating: 0, count: m * p)
    for i in 0..<m { for j in 0..<p { u[i * p + j] = uc[j * m + i] } }
    var vt = [Float](repeating: 0, count: p * n)
    for i in 0..<p { for j in 0..<n { vt[i * n + j] = vtc[j * p + i] } }
    return (u, s, vt)
}

/// The best rank-`rank` approximation of L·R (L: m×k, R: k×n) as U (m×rank), singular values, Vᵀ (rank×n).
/// Exact when rank ≥ rank(L·R). Works through k×k problems when k < min(m, n); otherwise forms L·R. Returns
/// min(rank, k, m, n) components.
public func truncatedSVD(left l: [Float], right r: [Float], rows m: Int, inner k: Int, columns n: Int, rank: Int)
    -> (u: [Float], s: [Float], vt: [Float])
{
    precondition(l.count == m * k && r.count == k * n && rank >= 1, "truncatedSVD: shapes")
    var u: [Float]
    var s: [Float]
    var vt: [Float]
    var width: Int
    if k >= min(m, n) {
        (u, s, vt) = thinSVD(product(l, r, m, k, n), rows: m, columns: n)
        width = min(m, n)
    } else {
        let (qu, ru) = thinQR(l, rows: m, columns: k)
        var rt = [Float](repeating: 0, count: n * k)
        for i in 0..<k { for j in 0..<n { rt[j * k + i] = r[i * n + j] } }
        let (qv, rv) = thinQR(rt, rows: n, columns: k)
        // core = R_u · R_vᵀ (k×k); then U = Q_u · X (m×k) and Vᵀ = Yᵀ · Q_vᵀ (k×n).
        let core = product(ru, rv, k, k, k, transposeB: true)
        let (x, sc, yt) = thinSVD(core, rows: k, columns: k)
        u = product(qu, x, m, k, k)
        vt = product(yt, qv, k, k, n, transposeB: true)
        s = sc
        width = k
    }
    let keep = min(rank, width)
    var ut = [Float](repeating: 0, count: m * keep)
    for i in 0..<m { for j in 0..<keep { ut[i * keep + j] = u[i * width + j] } }
    return (ut, Array(s.prefix(keep)), Array(vt.prefix(keep * n)))
}

/// op(A)·op(B)·scale as a new row-major array, (m×k)·(k×n) after the optional transposes (sgemm).
public func product(
    _ a: [Float], _ b: [Float], _ m: Int, _ k: Int, _ n: Int, transposeA: Bool = false, transposeB: Bool = false,
    scale: Float = 1
) -> [Float] {
    precondition(a.count == m * k && b.count == k * n, "product: shapes")
    var c = [Float](repeating: 0, count: m * n)
    a.withUnsafeBufferPointer { pa in
        b.withUnsafeBufferPointer { pb in
            c.withUnsafeMutableBufferPointer {
                matmul(
                    $0.baseAddress!, pa.baseAddress!, pb.baseAddress!, M: m, N: n, K: k, transA: transposeA,
                    transB: transposeB, alpha: scale)
            }
        }
    }
    return c
}

/// The top `rank` singular triplets of a dense m×n matrix by randomized subspace iteration (Halko, Martinsson
/// and Tropp): an orthonormal basis of A·Ω for a seeded random Ω with `oversample` extra columns, refined by
/// `powerIterations` rounds of A·Aᵀ, then the exact SVD of the small projection. Cost O(m·n·(rank+oversample)·
/// (2·powerIterations+2)) instead of a full SVD's O(m·n·min(m,n)); near-optimal when the spectrum decays, exact
/// when the matrix's rank is at most rank + oversample. Small matrices go to `thinSVD` directly.
public func randomizedSVD(
    _ a: [Float], rows m: Int, columns n: Int, rank: Int, oversample: Int = 10, powerIterations: Int = 3,
    seed: UInt64 = 0x5EED
) -> (u: [Float], s: [Float], vt: [Float]) {
    precondition(a.count == m * n && rank >= 1, "randomizedSVD: shapes")
    let l = rank + oversample
    if 2 * l >= min(m, n) {
        let (u, s, vt) = thinSVD(a, rows: m, columns: n)
        let p = s.count
        let k = min(rank, p)
        var uk = [Float](repeating: 0, count: m * k)
        for i in 0..<m { for j in 0..<k { uk[i * k + j] = u[i * p + j] } }
        return (uk, Array(s.prefix(k)), Array(vt.prefix(k * n)))
    }
    var rng = SeededGenerator(seed: seed)
    let omega = (0..<n * l).map { _ in 2 * rng.nextUnitFloat() - 1 }
    var q = thinQR(product(a, omega, m, n, l), rows: m, columns: l).q
    for _ in 0..<powerIterations {
        let z = thinQR(product(a, q, n, m, l, transposeA: true), rows: n, columns: l).q  // Aᵀ·Q (n×l)
        q = thinQR(product(a, z, m, n, l), rows: m, columns: l).q  // A·Z (m×l)
    }
    let b = product(q, a, l, m, n, transposeA: true)  // Qᵀ·A (l×n)
    let (ub, s, vt) = thinSVD(b, rows: l, columns: n)
    let k = min(rank, s.count)
    let u = product(q, ub, m, l, l)
    var uk = [Float](repeating: 0, count: m * k)
    for i in 0..<m { for j in 0..<k { uk[i * k + j] = u[i * l + j] } }
    return (uk, Array(s.prefix(k)), Array(vt.prefix(k * n)))
}

/// The magnitude of the k-th largest |x| (as its bit pattern: non-negative floats order as their bits), how many
/// entries at exactly that magnitude to keep (in index order) so that exactly k are kept, and how many there are. A radix select in
/// three passes over 12, 10 and 10 bits of |x|, each a tight counting loop split across cores: O(n).
public func magnitudeThreshold(_ x: UnsafeBufferPointer<Float>, keep k: Int) -> (
    threshold: UInt32, equalKept: Int, equalTotal: Int
) {
    precondition(k >= 1 && k <= x.count, "magnitudeThreshold: 1 ≤ k ≤ count")
    let raw = UnsafeBufferPointer(
        start: UnsafeRawPointer(x.baseAddress!).assumingMemoryBound(to: UInt32.self), count: x.count)
    let chunks = max(1, min(Parallel.threadCount, x.count / 32768))
    /// Counts, over entries whose bits above `shift + width` equal `prefix`, the `width`-bit digit at `shift`.
    func histogram(prefix: UInt32, shift: UInt32, width: UInt32) -> [Int] {
        let buckets = 1 << Int(width)
        let above = shift + width
        var partial = [[Int]](repeating: [], count: chunks)
        partial.withUnsafeMutableBufferPointer { parts in
            let out = UncheckedSendable(parts)
            Parallel.forEach(chunks) { c in
                var h = [Int](repeating: 0, count: buckets)
                h.withUnsafeMutableBufferPointer { h in
                    let mask = UInt32(buckets - 1)
                    for i in x.count * c / chunks..<x.count * (c + 1) / chunks {
                        let bits = raw[i] & 0x7FFF_FFFF
                        if above >= 32 || bits >> above == prefix { h[Int((bits >> shift) & mask)] += 1 }
                    }
                }
                out.value[c] = h
            }
        }
        var total = [Int](repeating: 0, count: buckets)
        for h in partial { for i in 0..<buckets { total[i] += h[i] } }
        return total
    }
    var prefix: UInt32 = 0
    var above = 0  // entries known to be larger than the current prefix's range
    var equal = 0
    for (shift, width) in [(UInt32(20), UInt32(12)), (10, 10), (0, 10)] {
        let h = histogram(prefix: prefix, shift: shift, width: width)
        var digit = h.count - 1
        while digit > 0, above + h[digit] < k {
            above += h[digit]
            digit -= 1
        }
        prefix = prefix << width | UInt32(digit)
        equal = h[digit]
    }
    return (prefix, k - above, equal)
}
