import Foundation
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

@Suite struct RandomizedSVDTests {
    /// On a matrix with a decaying spectrum, the randomized top-k is as good as the exact top-k (the error of
    /// the rank-k reconstruction within 1 % of the optimum, singular values within 1e-3 relative).
    @Test func matchesTheExactTruncationOnADecayingSpectrum() {
        let (m, n, k) = (120, 200, 8)
        // A = Σ σ_i u_i v_iᵀ with σ_i = 0.7^i, built from random factors.
        let u = thinQR(randomFloats(m * 40, seed: 1), rows: m, columns: 40).q
        let v = thinQR(randomFloats(n * 40, seed: 2), rows: n, columns: 40).q
        var a = [Float](repeating: 0, count: m * n)
        for t in 0..<40 {
            let s = Float(pow(0.7, Double(t)))
            for i in 0..<m { for j in 0..<n { a[i * n + j] += s * u[i * 40 + t] * v[j * 40 + t] } }
        }
        let exact = thinSVD(a, rows: m, columns: n)
        let fast = randomizedSVD(a, rows: m, columns: n, rank: k)
        #expect(fast.s.count == k)
        for t in 0..<k { #expect(abs(fast.s[t] - exact.s[t]) <= 1e-3 * exact.s[0], "σ\(t)") }
        func error(_ u: [Float], _ s: [Float], _ vt: [Float], _ w: Int) -> Double {
            var e = 0.0
            for i in 0..<m {
                for j in 0..<n {
                    var x: Float = 0
                    for t in 0..<k { x += u[i * w + t] * s[t] * vt[t * n + j] }
                    e += Double(a[i * n + j] - x) * Double(a[i * n + j] - x)
                }
            }
            return e.squareRoot()
        }
        let best = error(exact.u, exact.s, exact.vt, min(m, n))
        #expect(error(fast.u, fast.s, fast.vt, k) <= best * 1.01 + 1e-6)
    }

    /// The radix select keeps exactly k entries, the same ones a full sort by magnitude keeps.
    @Test func magnitudeThresholdAgreesWithSorting() {
        var values = randomFloats(50_000, seed: 3)
        for i in stride(from: 0, to: values.count, by: 97) { values[i] = 0.25 }  // many equal magnitudes
        for i in stride(from: 1, to: values.count, by: 101) { values[i] = -0.25 }
        for k in [1, 17, 1000, 25_000, 49_999] {
            let (threshold, equal, _) = values.withUnsafeBufferPointer { magnitudeThreshold($0, keep: k) }
            var kept = 0
            var equalSeen = 0
            for x in values {
                let bits = x.bitPattern & 0x7FFF_FFFF
                if bits > threshold {
                    kept += 1
                } else if bits == threshold, equalSeen < equal {
                    kept += 1
                    equalSeen += 1
                }
            }
            #expect(kept == k)
            let sorted = values.map { abs($0) }.sorted(by: >)
            #expect(Float(bitPattern: threshold) == sorted[k - 1], "k = \(k)")
        }
    }
}
