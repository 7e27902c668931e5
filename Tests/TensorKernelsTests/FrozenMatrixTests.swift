import Foundation
import Testing
import TensorKernels
import TestSupport

/// Random but valid blocks of `type`: random bytes with every f16 scale field set to a modest value, so the
/// dequantised matrix is finite and of order 1.
func randomBlocks(_ type: GGMLType, rows: Int, columns: Int, seed: UInt64) -> [UInt8] {
    var rng = SeededGenerator(seed: seed)
    let count = type.byteCount(elements: rows * columns)!
    var bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    func half(_ at: Int, _ value: Float) {
        let h = floatToHalf(value)
        bytes[at] = UInt8(h & 0xFF)
        bytes[at + 1] = UInt8(h >> 8)
    }
    let blocks = rows * columns / type.blockSize
    for b in 0..<blocks {
        let base = b * type.blockBytes
        let scale = 0.01 + 0.02 * rng.nextUnitFloat()
        switch type {
        case .f16:
            half(base, 2 * rng.nextUnitFloat() - 1)
        case .q8_0, .q4_0, .q5_0: half(base, scale)
        case .q4_1, .q5_1, .q4_K, .q5_K:
            half(base, scale)
            half(base + 2, scale)
        case .q6_K: half(base + 208, scale)
        default: preconditionFailure("randomBlocks: \(type) not covered")
        }
    }
    return bytes
}

@Suite struct FrozenMatrixTests {
    static let types: [GGMLType] = [.q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q4_K, .q5_K, .q6_K, .f16]

    /// Both products over a quantised matrix equal the naive products over its dequantised values, across
    /// several panels with a partial last one, with strides, alpha and beta.
    @Test(arguments: types) func productsMatchTheDequantisedMatrix(_ type: GGMLType) {
        let columns = 256
        let rows = FrozenMatrix.panelElements / columns * 2 + 37  // two full panels and a partial one
        let bytes = randomBlocks(type, rows: rows, columns: columns, seed: 7)
        bytes.withUnsafeBytes { raw in
            let w = FrozenMatrix(type: type, bytes: raw.baseAddress!, rows: rows, columns: columns)
            #expect(w.floats == nil && w.type == type && w.byteCount == bytes.count)
            let dense = FloatBuffer(w.dequantized())
            #expect(dense.array.allSatisfy { $0.isFinite })
            let n = 3
            let lda = columns + 5
            let x = randomBuffer(n * lda, seed: 1)
            // y = 0.5·x·Wᵀ + 2·y, into rows of stride rows + 3.
            let ldc = rows + 3
            let y = randomBuffer(n * ldc, seed: 2)
            let expected = FloatBuffer(y.array)
            w.multiplyTransposed(y.pointer, x.pointer, n: n, alpha: 0.5, beta: 2, lda: lda, ldc: ldc)
            matmulNaive(
                expected.pointer, x.pointer, dense.pointer, M: n, N: rows, K: columns, transB: true, alpha: 0.5,
                beta: 2, lda: lda, ldc: ldc)
            expectClose(y, expected, tolerance: Tolerance.fastVersusNaive, "\(type) y = x·Wᵀ")
            // dx = dy·W + dx.
            let dy = randomBuffer(n * rows, seed: 3)
            let dx = randomBuffer(n * columns, seed: 4)
            let dxExpected = FloatBuffer(dx.array)
            w.multiply(dx.pointer, dy.pointer, n: n, beta: 1)
            matmulNaive(dxExpected.pointer, dy.pointer, dense.pointer, M: n, N: columns, K: rows, beta: 1)
            expectClose(dx, dxExpected, tolerance: Tolerance.fastVersusNaive, "\(type) dx = dy·W")
            // Rows, one at a time and as an embedding lookup.
            let row = FloatBuffer(count: columns)
            w.copyRow(rows - 1, into: row.pointer)
            #expect(row.array == Array(dense.array[(rows - 1) * columns..<rows * columns]))
            let tokens: [Int32] = [0, Int32(rows - 1), 5, 5]
            let looked = FloatBuffer(count: tokens.count * columns)
            embeddingForward(out: looked.pointer, tokens: tokens, table: w, count: tokens.count)
            for (i, t) in tokens.enumerated() {
                #expect(
                    Array(looked.array[i * columns..<(i + 1) * columns])
                        == Array(dense.array[Int(t) * columns..<(Int(t) + 1) * columns]))
            }
        }
    }

    /// An fp32 FrozenMatrix is the plain matmul, and linearForward adds the bias either way.
    @Test func f32MatrixAndBias() {
        let (rows, columns, n) = (40, 32, 5)
        let dense = randomBuffer(rows * columns, seed: 9)
        let w = FrozenMatrix(dense.pointer, rows: rows, columns: columns)
        #expect(w.floats == dense.pointer && w.type == .f32)
        let x = randomBuffer(n * columns, seed: 10)
        let bias = randomBuffer(rows, seed: 11)
        let y = FloatBuffer(count: n * rows)
        linearForward(out: y.pointer, input: x.pointer, weight: w, bias: bias.pointer, rows: n)
        let expected = FloatBuffer(count: n * rows)
        linearForward(
            out: expected.pointer, input: x.pointer, weight: dense.pointer, bias: bias.pointer, rows: n,
            inFeatures: columns, outFeatures: rows)
        #expect(y.array == expected.array)
    }

    /// Panels are reused: repeated products take no new buffers once the pool holds one large enough.
    @Test func panelsAreReused() {
        let pool = PanelPool()
        var addresses = Set<UnsafeMutablePointer<Float>>()
        for _ in 0..<5 { pool.withPanel(1000) { addresses.insert($0) } }
        #expect(addresses.count == 1 && pool.heldCount == 1)
        // Two taken at once are two buffers, and both come back.
        pool.withPanel(1000) { a in pool.withPanel(10) { b in #expect(a != b) } }
        #expect(pool.heldCount == 2)
        // A request larger than any held buffer replaces one.
        pool.withPanel(5000) { _ in }
        #expect(pool.heldCount == 2)
    }
}

@Suite(.serialized) struct VectorExpTests {
    /// The exponential of both kernel builds (AVX2+FMA and portable) stays within 2 ulp of the correctly
    /// rounded result over the whole float range where exp is a normal number, flushes below it to 0, and keeps
    /// inf and NaN.
    @Test(arguments: [true, false]) func withinTwoUlpOfFoundation(wide: Bool) {
        let before = elementwiseKernelsAreWide
        defer { elementwiseKernelsAreWide = before }
        elementwiseKernelsAreWide = wide
        var xs: [Float] = stride(from: Float(-87.3), through: 88.7, by: 0.000_731).map { $0 }
        xs += [0, -0.0, 1e-30, -1e-30, 88.72, -87.33, 1, -1, 0.5, 20]
        var ys = [Float](repeating: 0, count: xs.count)
        vectorExp(xs, &ys, count: xs.count)
        var worst: Float = 0
        for (x, y) in zip(xs, ys) {
            let exact = Foundation.exp(Double(x))
            let ulp = Float(exact).ulp
            worst = max(worst, Float(abs(Double(y) - exact)) / ulp)
        }
        #expect(worst <= 2, "worst error \(worst) ulp (wide: \(elementwiseKernelsAreWide))")
        let special: [Float] = [-100, -.infinity, 100, .infinity, .nan, -87.5, 88.8, 3, 3, 3, 3, 3, 3]
        var out = [Float](repeating: 1, count: special.count)
        vectorExp(special, &out, count: special.count)
        #expect(out[0] == 0 && out[1] == 0 && out[5] == 0)
        #expect(out[2] == .infinity && out[3] == .infinity && out[6] == .infinity)
        #expect(out[4].isNaN)
    }

    /// The block types dequantised in CKernels.
    static let quantised: [GGMLType] = [.q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q4_K, .q5_K, .q6_K]

    /// SwiGLU and the fused cross-entropy give the same results with either build, and dequantisation the same
    /// bits.
    @Test func bothBuildsAgree() {
        let before = elementwiseKernelsAreWide
        defer { elementwiseKernelsAreWide = before }
        func run() -> [[Float]] {
            let n = 1003
            let gate = randomBuffer(n, seed: 1, in: -9...9)
            let up = randomBuffer(n, seed: 2)
            let dOut = randomBuffer(n, seed: 3)
            let out = FloatBuffer(count: n)
            swigluForward(out: out.pointer, gate: gate.pointer, up: up.pointer, count: n)
            let (dGate, dUp) = (FloatBuffer(count: n), FloatBuffer(count: n))
            swigluBackward(
                dGate: dGate.pointer, dUp: dUp.pointer, dOut: dOut.pointer, gate: gate.pointer, up: up.pointer,
                count: n)
            let (N, V) = (3, 211)
            let logits = randomBuffer(N * V, seed: 4, in: -6...6)
            let losses = FloatBuffer(count: N)
            crossEntropyForwardBackward(
                losses: losses.pointer, logits: logits.pointer, targets: [3, -1, 210], dLoss: 0.5, rows: N,
                vocabSize: V)
            var results = [out.array, dGate.array, dUp.array, logits.array, losses.array]
            for type in Self.quantised {
                let bytes = randomBlocks(type, rows: 7, columns: 256, seed: 5)
                var values = [Float](repeating: 0, count: 7 * 256)
                dequantize(type, from: bytes, to: &values, count: values.count)
                results.append(values)
            }
            return results
        }
        elementwiseKernelsAreWide = true
        let wide = run()
        elementwiseKernelsAreWide = false
        #expect(!elementwiseKernelsAreWide)
        let portable = run()
        for (a, b) in zip(wide, portable).prefix(5) { expectClose(a, b, tolerance: 1e-6) }
        for (type, (a, b)) in zip(
            Self.quantised, zip(wide.suffix(Self.quantised.count), portable.suffix(Self.quantised.count)))
        {
            #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "\(type): dequantised values are bit-identical")
        }
    }
}

@Suite struct FusedKernelTests {
    /// The fused cross-entropy gives the separate kernels' losses and gradients, masked rows included.
    @Test func crossEntropyForwardBackwardMatchesTheSeparateKernels() {
        let (N, V) = (6, 203)
        let logits = randomBuffer(N * V, seed: 4, in: -6...6)
        let targets: [Int32] = [0, 202, -1, 17, 17, -100]
        let scale: Float = 0.37
        let losses = FloatBuffer(count: N)
        let lse = FloatBuffer(count: N)
        crossEntropyForward(
            losses: losses.pointer, logSumExp: lse.pointer, logits: logits.pointer, targets: targets, rows: N,
            vocabSize: V)
        let gradients = FloatBuffer(count: N * V)
        let dLosses = FloatBuffer([Float](repeating: scale, count: N))
        crossEntropyBackward(
            dLogits: gradients.pointer, logits: logits.pointer, logSumExp: lse.pointer, targets: targets,
            dLosses: dLosses.pointer, rows: N, vocabSize: V)
        let fused = FloatBuffer(logits.array)
        let fusedLosses = FloatBuffer(count: N)
        crossEntropyForwardBackward(
            losses: fusedLosses.pointer, logits: fused.pointer, targets: targets, dLoss: scale, rows: N, vocabSize: V)
        expectClose(fusedLosses, losses, tolerance: Tolerance.reordered, "losses")
        expectClose(fused, gradients, tolerance: Tolerance.reordered, "gradients")
        #expect(fusedLosses[2] == 0 && fused.array[2 * V..<3 * V].allSatisfy { $0 == 0 })
    }

    /// SwiGLU's backward may overwrite instead of accumulate, in place over its own inputs.
    @Test func swigluBackwardInPlaceOverwrites() {
        let n = 1003
        let gate = randomBuffer(n, seed: 1, in: -6...6)
        let up = randomBuffer(n, seed: 2)
        let dOut = randomBuffer(n, seed: 3)
        let (dGate, dUp) = (FloatBuffer(count: n), FloatBuffer(count: n))
        swigluBackward(
            dGate: dGate.pointer, dUp: dUp.pointer, dOut: dOut.pointer, gate: gate.pointer, up: up.pointer, count: n)
        let (g, u) = (FloatBuffer(gate.array), FloatBuffer(up.array))
        swigluBackward(
            dGate: g.pointer, dUp: u.pointer, dOut: dOut.pointer, gate: g.pointer, up: u.pointer, count: n,
            accumulate: false)
        #expect(g.array == dGate.array && u.array == dUp.array)
    }
}
