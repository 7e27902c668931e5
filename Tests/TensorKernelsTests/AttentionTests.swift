import Testing
import TensorKernels
import TestSupport

@Suite struct AttentionTests {
    /// B=2 sequences, NH=4 query heads over NKV=2 kv heads, HS=8.
    static func shape(queries: Int, start: Int, capacity: Int) -> AttentionShape {
        AttentionShape(
            batch: 2, queries: queries, keyCapacity: capacity, start: start, heads: 4, kvHeads: 2, headDim: 8)
    }

    @Test(arguments: [(5, 0, 5), (3, 4, 9), (1, 7, 12), (70, 0, 70), (66, 10, 80)])
    func forwardMatchesNaive(queries: Int, start: Int, capacity: Int) {
        let s = Self.shape(queries: queries, start: start, capacity: capacity)
        let q = randomBuffer(2 * queries * 4 * 8, seed: 1, in: -2...2)
        let k = randomBuffer(2 * capacity * 2 * 8, seed: 2, in: -2...2)
        let v = randomBuffer(2 * capacity * 2 * 8, seed: 3)
        let (fast, naive) = (FloatBuffer(count: q.count), FloatBuffer(count: q.count))
        let (lseFast, lseNaive) = (FloatBuffer(count: 2 * 4 * queries), FloatBuffer(count: 2 * 4 * queries))
        attentionForward(out: fast.pointer, lse: lseFast.pointer, q: q.pointer, k: k.pointer, v: v.pointer, shape: s)
        attentionForwardNaive(
            out: naive.pointer, lse: lseNaive.pointer, q: q.pointer, k: k.pointer, v: v.pointer, shape: s)
        expectClose(fast, naive, tolerance: Tolerance.fastVersusNaive, "out")
        expectClose(lseFast, lseNaive, tolerance: Tolerance.fastVersusNaive, "lse")
    }

    /// Keys past `start + T` (stale cache rows) must not influence anything.
    @Test func ignoresKeysBeyondTheCausalHorizon() {
        let s = Self.shape(queries: 3, start: 2, capacity: 8)
        let q = randomBuffer(2 * 3 * 4 * 8, seed: 4)
        let k = randomBuffer(2 * 8 * 2 * 8, seed: 5)
        let v = randomBuffer(2 * 8 * 2 * 8, seed: 6)
        let first = FloatBuffer(count: q.count)
        attentionForward(out: first.pointer, lse: nil, q: q.pointer, k: k.pointer, v: v.pointer, shape: s)
        for b in 0..<2 {
            for row in 5..<8 {
                for i in 0..<16 {
                    k[(b * 8 + row) * 16 + i] = 1e6
                    v[(b * 8 + row) * 16 + i] = .nan
                }
            }
        }
        let second = FloatBuffer(count: q.count)
        attentionForward(out: second.pointer, lse: nil, q: q.pointer, k: k.pointer, v: v.pointer, shape: s)
        #expect(first.array == second.array)
    }

    @Test(arguments: [(4, 0, 4), (3, 2, 6)])
    func backwardMatchesFiniteDifferences(queries: Int, start: Int, capacity: Int) {
        let s = Self.shape(queries: queries, start: start, capacity: capacity)
        let q = randomBuffer(2 * queries * 4 * 8, seed: 7)
        let k = randomBuffer(2 * capacity * 2 * 8, seed: 8)
        let v = randomBuffer(2 * capacity * 2 * 8, seed: 9)
        expectAttentionGradients(q: q, k: k, v: v, r: randomBuffer(q.count, seed: 10), shape: s)
    }
}

/// Packed documents: with key starts, each query sees only its own document, exactly as if the documents
/// were run separately.
@Suite struct PackedAttentionTests {
    // One row of 9 positions holding three documents: [0, 4), [4, 6), [6, 9).
    static let starts: [Int32] = [0, 0, 0, 0, 4, 4, 6, 6, 6]
    static let shape = AttentionShape(batch: 1, queries: 9, keyCapacity: 9, start: 0, heads: 4, kvHeads: 2, headDim: 8)

    @Test func packedEqualsSeparateAndMatchesNaive() {
        let q = randomBuffer(9 * 32, seed: 21)
        let k = randomBuffer(9 * 16, seed: 22)
        let v = randomBuffer(9 * 16, seed: 23)
        let packed = FloatBuffer(count: q.count)
        let naive = FloatBuffer(count: q.count)
        attentionForward(
            out: packed.pointer, lse: nil, q: q.pointer, k: k.pointer, v: v.pointer, shape: Self.shape,
            keyStarts: Self.starts)
        attentionForwardNaive(
            out: naive.pointer, lse: nil, q: q.pointer, k: k.pointer, v: v.pointer, shape: Self.shape,
            keyStarts: Self.starts)
        expectClose(packed, naive, tolerance: Tolerance.fastVersusNaive, "packed vs naive")
        for (lo, hi) in [(0, 4), (4, 6), (6, 9)] {
            let n = hi - lo
            let alone = FloatBuffer(count: n * 32)
            let s = AttentionShape(batch: 1, queries: n, keyCapacity: n, start: 0, heads: 4, kvHeads: 2, headDim: 8)
            attentionForward(
                out: alone.pointer, lse: nil, q: q.pointer + lo * 32, k: k.pointer + lo * 16, v: v.pointer + lo * 16,
                shape: s)
            expectClose(
                Array(packed.array[lo * 32..<hi * 32]), alone.array, tolerance: Tolerance.reordered,
                "document \(lo)..<\(hi)")
        }
    }

    @Test func packedBackwardMatchesFiniteDifferences() {
        let q = randomBuffer(9 * 32, seed: 24)
        let k = randomBuffer(9 * 16, seed: 25)
        let v = randomBuffer(9 * 16, seed: 26)
        Self.starts.withUnsafeBufferPointer {
            expectAttentionGradients(
                q: q, k: k, v: v, r: randomBuffer(q.count, seed: 27), shape: Self.shape, keyStarts: $0.baseAddress)
        }
    }
}

/// Gemma's variations: a scale other than 1/√HS, a soft cap on the scores, and a sliding window, alone and
/// together, with packed documents, against the naive reference and by finite differences.
@Suite struct AttentionVariantTests {
    static func shape(queries: Int, start: Int, capacity: Int, softCap: Float?, window: Int?) -> AttentionShape {
        AttentionShape(
            batch: 2, queries: queries, keyCapacity: capacity, start: start, heads: 4, kvHeads: 2, headDim: 8,
            scale: 0.3, softCap: softCap, window: window)
    }

    static let variants: [(Float?, Int?)] = [(nil, 3), (2.5, nil), (1.5, 4), (nil, 1)]

    @Test(arguments: variants)
    func forwardMatchesNaive(softCap: Float?, window: Int?) {
        for (queries, start, capacity) in [(9, 0, 9), (70, 0, 70), (3, 5, 10)] {
            let s = Self.shape(queries: queries, start: start, capacity: capacity, softCap: softCap, window: window)
            let q = randomBuffer(2 * queries * 32, seed: 31, in: -3...3)
            let k = randomBuffer(2 * capacity * 16, seed: 32, in: -3...3)
            let v = randomBuffer(2 * capacity * 16, seed: 33)
            let (fast, naive) = (FloatBuffer(count: q.count), FloatBuffer(count: q.count))
            let (lseFast, lseNaive) = (FloatBuffer(count: 8 * queries), FloatBuffer(count: 8 * queries))
            attentionForward(
                out: fast.pointer, lse: lseFast.pointer, q: q.pointer, k: k.pointer, v: v.pointer, shape: s)
            attentionForwardNaive(
                out: naive.pointer, lse: lseNaive.pointer, q: q.pointer, k: k.pointer, v: v.pointer, shape: s)
            expectClose(fast, naive, tolerance: Tolerance.fastVersusNaive, "out \(queries) after \(start)")
            expectClose(lseFast, lseNaive, tolerance: Tolerance.fastVersusNaive, "lse \(queries) after \(start)")
        }
    }

    /// A window of W: a query's output does not depend on keys W or more positions back.
    @Test func windowHidesOlderKeys() {
        let s = Self.shape(queries: 8, start: 0, capacity: 8, softCap: nil, window: 3)
        let q = randomBuffer(2 * 8 * 32, seed: 34)
        let k = randomBuffer(2 * 8 * 16, seed: 35)
        let v = randomBuffer(2 * 8 * 16, seed: 36)
        let first = FloatBuffer(count: q.count)
        attentionForward(out: first.pointer, lse: nil, q: q.pointer, k: k.pointer, v: v.pointer, shape: s)
        for b in 0..<2 { for i in 0..<16 { v[(b * 8 + 0) * 16 + i] = 1e3 } }  // key 0: seen by queries 0...2 only
        let second = FloatBuffer(count: q.count)
        attentionForward(out: second.pointer, lse: nil, q: q.pointer, k: k.pointer, v: v.pointer, shape: s)
        for b in 0..<2 {
            for t in 0..<8 {
                let row = Array(first.array[(b * 8 + t) * 32..<(b * 8 + t + 1) * 32])
                let again = Array(second.array[(b * 8 + t) * 32..<(b * 8 + t + 1) * 32])
                #expect((row == again) == (t >= 3), "query \(t) of sequence \(b)")
            }
        }
    }

    @Test(arguments: variants)
    func backwardMatchesFiniteDifferences(softCap: Float?, window: Int?) {
        let starts: [Int32] = (0..<2).flatMap { _ in [0, 0, 0, 0, 0, 5, 5, 5, 5] as [Int32] }
        check(softCap: softCap, window: window, keyStarts: nil)
        starts.withUnsafeBufferPointer { check(softCap: softCap, window: window, keyStarts: $0.baseAddress) }
    }

    private func check(softCap: Float?, window: Int?, keyStarts: UnsafePointer<Int32>?) {
        let s = Self.shape(queries: 9, start: 0, capacity: 9, softCap: softCap, window: window)
        let q = randomBuffer(2 * 9 * 32, seed: 37, in: -2...2)
        let k = randomBuffer(2 * 9 * 16, seed: 38, in: -2...2)
        let v = randomBuffer(2 * 9 * 16, seed: 39)
        expectAttentionGradients(q: q, k: k, v: v, r: randomBuffer(q.count, seed: 40), shape: s, keyStarts: keyStarts)
    }
}

/// Attention's backward against central finite differences of the output projected on `r`, and the output the
/// backward recomputes against the forward's.
func expectAttentionGradients(
    q: FloatBuffer, k: FloatBuffer, v: FloatBuffer, r: FloatBuffer, shape s: AttentionShape,
    keyStarts: UnsafePointer<Int32>? = nil
) {
    let out = FloatBuffer(count: q.count)
    let lse = FloatBuffer(count: s.batch * s.heads * s.queries)
    func loss() -> Double {
        attentionForward(
            out: out.pointer, lse: lse.pointer, q: q.pointer, k: k.pointer, v: v.pointer, shape: s,
            keyStarts: keyStarts)
        return projection(out, r)
    }
    _ = loss()
    let again = FloatBuffer(count: q.count)
    let (dq, dk, dv) = (FloatBuffer(count: q.count), FloatBuffer(count: k.count), FloatBuffer(count: v.count))
    attentionBackward(
        dQ: dq.pointer, dK: dk.pointer, dV: dv.pointer, dOut: r.pointer, q: q.pointer, k: k.pointer,
        v: v.pointer, lse: lse.pointer, recomputedOut: again.pointer, shape: s, keyStarts: keyStarts)
    expectClose(again, out, tolerance: Tolerance.reordered, "the output recomputed by the backward")
    expectGradient(dq.array, numericGradient(of: q, step: 1e-3, loss: loss), "dQ")
    expectGradient(dk.array, numericGradient(of: k, step: 1e-3, loss: loss), "dK")
    expectGradient(dv.array, numericGradient(of: v, step: 1e-3, loss: loss), "dV")
}
