import Testing
import TensorKernels
import TestSupport

@Suite struct MatmulTests {
    @Test(arguments: [(false, false), (false, true), (true, false), (true, true)])
    func fastMatchesNaiveForEveryTransposeCombination(transA: Bool, transB: Bool) {
        // Sizes on both sides of the parallel split, tall and wide, with padded leading dimensions.
        for (M, N, K) in [(3, 5, 7), (130, 17, 33), (19, 260, 129), (257, 255, 64)] {
            let lda = (transA ? M : K) + 3
            let ldb = (transB ? K : N) + 1
            let ldc = N + 2
            let a = randomBuffer((transA ? K : M) * lda, seed: 1)
            let b = randomBuffer((transB ? N : K) * ldb, seed: 2)
            let fast = randomBuffer(M * ldc, seed: 3)
            let naive = FloatBuffer(fast.array)
            matmul(
                fast.pointer, a.pointer, b.pointer, M: M, N: N, K: K, transA: transA, transB: transB,
                alpha: 0.5, beta: 0.25, lda: lda, ldb: ldb, ldc: ldc)
            matmulNaive(
                naive.pointer, a.pointer, b.pointer, M: M, N: N, K: K, transA: transA, transB: transB,
                alpha: 0.5, beta: 0.25, lda: lda, ldb: ldb, ldc: ldc)
            expectClose(
                fast, naive, tolerance: Tolerance.fastVersusNaive, "matmul \(M)x\(N)x\(K) tA=\(transA) tB=\(transB)")
        }
    }

    @Test func betaZeroIgnoresGarbageInTheOutput() {
        let a = randomBuffer(4 * 3, seed: 4)
        let b = randomBuffer(3 * 2, seed: 5)
        let c = FloatBuffer([Float](repeating: .nan, count: 8))
        let reference = FloatBuffer(count: 8)
        matmul(c.pointer, a.pointer, b.pointer, M: 4, N: 2, K: 3)
        matmulNaive(reference.pointer, a.pointer, b.pointer, M: 4, N: 2, K: 3)
        #expect(c.array.allSatisfy { !$0.isNaN })
        expectClose(c, reference, tolerance: Tolerance.fastVersusNaive)
    }

    @Test func linearBackwardMatchesFiniteDifferences() {
        let (rows, inF, outF) = (5, 6, 4)
        let x = randomBuffer(rows * inF, seed: 10)
        let w = randomBuffer(outF * inF, seed: 11)
        let bias = randomBuffer(outF, seed: 12)
        let r = randomBuffer(rows * outF, seed: 13)
        let out = FloatBuffer(count: rows * outF)
        func loss() -> Double {
            linearForward(
                out: out.pointer, input: x.pointer, weight: w.pointer, bias: bias.pointer,
                rows: rows, inFeatures: inF, outFeatures: outF)
            return projection(out, r)
        }
        let dx = FloatBuffer(count: rows * inF)
        let dw = FloatBuffer(count: outF * inF)
        let db = FloatBuffer(count: outF)
        linearBackward(
            dInput: dx.pointer, dWeight: dw.pointer, dBias: db.pointer, dOut: r.pointer, input: x.pointer,
            weight: w.pointer, rows: rows, inFeatures: inF, outFeatures: outF)
        expectGradient(dx.array, numericGradient(of: x, loss: loss), "dInput")
        expectGradient(dw.array, numericGradient(of: w, loss: loss), "dWeight")
        expectGradient(db.array, numericGradient(of: bias, loss: loss), "dBias")
    }

    @Test func linearBackwardAccumulates() {
        let x = randomBuffer(2 * 3, seed: 20)
        let w = randomBuffer(4 * 3, seed: 21)
        let dOut = randomBuffer(2 * 4, seed: 22)
        let once = FloatBuffer(count: 6)
        let twice = FloatBuffer(count: 6)
        linearBackward(
            dInput: once.pointer, dWeight: nil, dBias: nil, dOut: dOut.pointer, input: x.pointer,
            weight: w.pointer, rows: 2, inFeatures: 3, outFeatures: 4)
        for _ in 0..<2 {
            linearBackward(
                dInput: twice.pointer, dWeight: nil, dBias: nil, dOut: dOut.pointer, input: x.pointer,
                weight: w.pointer, rows: 2, inFeatures: 3, outFeatures: 4)
        }
        expectClose(twice.array, once.array.map { 2 * $0 }, tolerance: Tolerance.reordered)
    }
}
