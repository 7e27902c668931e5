// BLAS: Cairn's one entry into OpenBLAS. OpenBLAS is set to a single thread on first use; Parallel splits
// large products into row or column panels instead (see Parallel.swift for why).

import CBLAS

enum BLAS {
    /// Pins OpenBLAS to one thread; evaluated once, on first use, thread-safely.
    static let configured: Bool = {
        openblas_set_num_threads(1)
        return true
    }()

    /// C (m×n) = alpha · op(A) · op(B) + beta · C on the calling thread, row-major.
    @inline(__always)
    static func sgemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        cblas_sgemm(
            CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}
