import TensorKernels
import TestSupport
import Testing

@Suite struct LowRankTests {
    func product(_ a: [Float], _ b: [Float], _ m: Int, _ k: Int, _ n: Int) -> [Float] {
        var c = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { for t in 0..<k { c[i * n + j] += a[i * k + t] * b[t * n + j] } } }
        return c
    }

    @Test func qrFactorsWithOrthonormalColumns() {
        let (m, k) = (20, 5)
        let a = randomFloats(m * k, seed: 1)
        let (q, r) = thinQR(a, rows: m, columns: k)
        expectClose(product(q, r, m, k, k), a, tolerance: 1e-5)
        let qtq = product((0..<k * m).map { q[($0 % m) * k + $0 / m] }, q, k, m, k)
        expectClose(qtq, (0..<k * k).map { $0 / k == $0 % k ? 1 : 0 }, tolerance: 1e-5)
        for i in 1..<k { for j in 0..<i { #expect(r[i * k + j] == 0) } }
    }

    @Test func svdReconstructsWithDescendingSingularValues() {
        let (m, n) = (7, 11)
        let a = randomFloats(m * n, seed: 2)
        let (u, s, vt) = thinSVD(a, rows: m, columns: n)
        #expect(s.count == 7 && zip(s, s.dropFirst()).allSatisfy { $0 >= $1 })
        var us = u
        for i in 0..<m { for j in 0..<7 { us[i * 7 + j] *= s[j] } }
        expectClose(product(us, vt, m, 7, n), a, tolerance: 1e-5)
    }

    /// The factored path (QR of the factors, SVD of the k×k core) against the dense reference (form L·R, SVD it).
    @Test func truncatedSVDOfStackedFactorsMatchesTheDenseReference() {
        let (m, k, n) = (48, 6, 40)
        let l = randomFloats(m * k, seed: 3)
        let r = randomFloats(k * n, seed: 4)
        let full = product(l, r, m, k, n)
        // Exact at rank ≥ k.
        let (u, s, vt) = truncatedSVD(left: l, right: r, rows: m, inner: k, columns: n, rank: 8)
        #expect(s.count == 6)
        var us = u
        for i in 0..<m { for j in 0..<6 { us[i * 6 + j] *= s[j] } }
        expectClose(product(us, vt, m, 6, n), full, tolerance: 1e-4)
        // Truncated: equal to the dense SVD truncated to the same rank (the best rank-3 approximation).
        let (u3, s3, vt3) = truncatedSVD(left: l, right: r, rows: m, inner: k, columns: n, rank: 3)
        let (ud, sd, vtd) = thinSVD(full, rows: m, columns: n)
        expectClose(s3, Array(sd.prefix(3)), tolerance: 1e-4)
        func rank3(_ u: [Float], _ w: Int, _ s: [Float], _ vt: [Float]) -> [Float] {
            var x = [Float](repeating: 0, count: m * n)
            for i in 0..<m { for j in 0..<n { for t in 0..<3 { x[i * n + j] += u[i * w + t] * s[t] * vt[t * n + j] } } }
            return x
        }
        expectClose(rank3(u3, 3, s3, vt3), rank3(ud, min(m, n), sd, vtd), tolerance: 1e-4)
    }
}
