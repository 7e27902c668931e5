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
