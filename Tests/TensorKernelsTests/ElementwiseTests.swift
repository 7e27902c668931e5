import Foundation
import Testing
import TensorKernels
import TestSupport

@Suite struct EmbeddingTests {
    @Test func forwardMatchesNaiveAndBackwardScattersRepeatedIds() {
        let (V, C) = (7, 5)
        let table = randomBuffer(V * C, seed: 1)
        let tokens: [Int32] = [3, 0, 6, 3, 3]
        let fast = FloatBuffer(count: tokens.count * C)
        let naive = FloatBuffer(count: tokens.count * C)
        embeddingForward(
            out: fast.pointer, tokens: tokens, table: table.pointer, count: tokens.count, vocabSize: V, dim: C)
        embeddingForwardNaive(
            out: naive.pointer, tokens: tokens, table: table.pointer, count: tokens.count, vocabSize: V, dim: C)
        #expect(fast.array == naive.array)

        let r = randomBuffer(tokens.count * C, seed: 2)
        func loss() -> Double {
            embeddingForward(
                out: fast.pointer, tokens: tokens, table: table.pointer, count: tokens.count, vocabSize: V, dim: C)
            return projection(fast, r)
        }
        let dTable = FloatBuffer(count: V * C)
        embeddingBackward(
            dTable: dTable.pointer, dOut: r.pointer, tokens: tokens, count: tokens.count, vocabSize: V, dim: C)
        expectGradient(dTable.array, numericGradient(of: table, loss: loss), "dTable")
    }
}

@Suite struct RMSNormTests {
    @Test func forwardMatchesNaive() {
        let (N, C) = (37, 48)
        let x = randomBuffer(N * C, seed: 1, in: -3...3)
        let w = randomBuffer(C, seed: 2)
        let (fast, naive) = (FloatBuffer(count: N * C), FloatBuffer(count: N * C))
        let (rFast, rNaive) = (FloatBuffer(count: N), FloatBuffer(count: N))
        rmsNormForward(
            out: fast.pointer, rstd: rFast.pointer, input: x.pointer, weight: w.pointer, rows: N, dim: C, eps: 1e-5)
        rmsNormForwardNaive(
            out: naive.pointer, rstd: rNaive.pointer, input: x.pointer, weight: w.pointer, rows: N, dim: C, eps: 1e-5)
        expectClose(fast, naive, tolerance: Tolerance.fastVersusNaive, "out")
        expectClose(rFast, rNaive, tolerance: Tolerance.fastVersusNaive, "rstd")
    }

    @Test func backwardMatchesFiniteDifferences() {
        let (N, C) = (3, 8)
        let x = randomBuffer(N * C, seed: 3)
        let w = randomBuffer(C, seed: 4)
        let r = randomBuffer(N * C, seed: 5)
        let out = FloatBuffer(count: N * C)
        let rstd = FloatBuffer(count: N)
        func loss() -> Double {
            rmsNormForward(
                out: out.pointer, rstd: rstd.pointer, input: x.pointer, weight: w.pointer, rows: N, dim: C, eps: 1e-5)
            return projection(out, r)
        }
        _ = loss()
        let dx = FloatBuffer(count: N * C)
        let dw = FloatBuffer(count: C)
        rmsNormBackward(
            dInput: dx.pointer, dWeight: dw.pointer, dOut: r.pointer, input: x.pointer, weight: w.pointer,
            rstd: rstd.pointer, rows: N, dim: C)
        expectGradient(dx.array, numericGradient(of: x, step: 1e-3, loss: loss), "dInput")
        expectGradient(dw.array, numericGradient(of: w, step: 1e-3, loss: loss), "dWeight")
    }
}

@Suite struct RoPETests {
    static let (N, NH, HS) = (6, 3, 8)

    @Test(arguments: RoPEStyle.allCases)
    func forwardMatchesNaive(style: RoPEStyle) {
        let positions: [Int32] = [0, 1, 2, 7, 30, 511]
        let table = RoPETable(headDim: Self.HS, positions: 512, base: 10000)
        let fast = randomBuffer(Self.N * Self.NH * Self.HS, seed: 1)
        let naive = FloatBuffer(fast.array)
        ropeForward(fast.pointer, positions: positions, rows: Self.N, heads: Self.NH, table: table, style: style)
        ropeForwardNaive(
            naive.pointer, positions: positions, rows: Self.N, heads: Self.NH, headDim: Self.HS, base: 10000,
            style: style)
        expectClose(fast, naive, tolerance: Tolerance.fastVersusNaive)
    }

    @Test(arguments: RoPEStyle.allCases)
    func backwardMatchesFiniteDifferences(style: RoPEStyle) {
        let positions: [Int32] = [0, 3, 5, 9, 2, 1]
        let table = RoPETable(headDim: Self.HS, positions: 16, base: 100)
        let x = randomBuffer(Self.N * Self.NH * Self.HS, seed: 2)
        let r = randomBuffer(x.count, seed: 3)
        let work = FloatBuffer(count: x.count)
        func loss() -> Double {
            work.pointer.update(from: x.pointer, count: x.count)
            ropeForward(work.pointer, positions: positions, rows: Self.N, heads: Self.NH, table: table, style: style)
            return projection(work, r)
        }
        let dx = FloatBuffer(r.array)
        ropeBackward(dx.pointer, positions: positions, rows: Self.N, heads: Self.NH, table: table, style: style)
        expectGradient(dx.array, numericGradient(of: x, loss: loss), "dx")
    }

    /// Partial rotary dims, per-pair factors and an attention factor (Phi-4-mini's LongRoPE shape): the table
    /// against the per-element reference, the untouched tail of each head, and the backward by finite
    /// differences.
    @Test(arguments: RoPEStyle.allCases)
    func partialScaledRotation(style: RoPEStyle) {
        let frequencies = RoPEFrequencies(
            base: 500, rotaryDim: 6, factors: [1, 2.5, 7], attentionFactor: 1.19, linearScale: 2)
        let positions: [Int32] = [0, 1, 4, 7, 13, 15]
        let table = RoPETable(headDim: Self.HS, positions: 16, frequencies: frequencies)
        let x = randomBuffer(Self.N * Self.NH * Self.HS, seed: 5)
        let fast = FloatBuffer(x.array)
        let naive = FloatBuffer(x.array)
        ropeForward(fast.pointer, positions: positions, rows: Self.N, heads: Self.NH, table: table, style: style)
        ropeForwardNaive(
            naive.pointer, positions: positions, rows: Self.N, heads: Self.NH, headDim: Self.HS,
            frequencies: frequencies, style: style)
        expectClose(fast, naive, tolerance: Tolerance.fastVersusNaive)
        for head in 0..<Self.N * Self.NH {
            for i in 6..<Self.HS { #expect(fast[head * Self.HS + i] == x[head * Self.HS + i]) }
        }
        let r = randomBuffer(x.count, seed: 6)
        let work = FloatBuffer(count: x.count)
        func loss() -> Double {
            work.pointer.update(from: x.pointer, count: x.count)
            ropeForward(work.pointer, positions: positions, rows: Self.N, heads: Self.NH, table: table, style: style)
            return projection(work, r)
        }
        let dx = FloatBuffer(r.array)
        ropeBackward(dx.pointer, positions: positions, rows: Self.N, heads: Self.NH, table: table, style: style)
        expectGradient(dx.array, numericGradient(of: x, loss: loss), "dx")
    }

    /// Docs/FORMATS.md §4: permuting a head's rows from the half-split to the interleaved layout turns
    /// half-split RoPE into interleaved RoPE. This is why un-permuting GGUF Q/K rows at load is exact.
    @Test func interleavedOnPermutedRowsEqualsHalfSplitOnOriginalRows() {
        let HS = Self.HS
        let positions: [Int32] = [5]
        let table = RoPETable(headDim: HS, positions: 8, base: 10000)
        let hf = randomBuffer(HS, seed: 4)
        let gguf = FloatBuffer(count: HS)
        for i in 0..<HS / 2 {
            gguf[2 * i] = hf[i]
            gguf[2 * i + 1] = hf[i + HS / 2]
        }
        ropeForward(hf.pointer, positions: positions, rows: 1, heads: 1, table: table, style: .halfSplit)
        ropeForward(gguf.pointer, positions: positions, rows: 1, heads: 1, table: table, style: .interleaved)
        for i in 0..<HS / 2 {
            #expect(gguf[2 * i] == hf[i])
            #expect(gguf[2 * i + 1] == hf[i + HS / 2])
        }
    }
}

/// SwiGLU and GeGLU through the dispatch the model uses: forward against the naive version in Double, backward
/// against finite differences, and the in-place backward that turns the saved activations into their gradients.
@Suite struct GatedFeedForwardTests {
    @Test(arguments: GateActivation.allCases)
    func forwardMatchesNaiveAndBackwardMatchesFiniteDifferences(activation: GateActivation) {
        let n = 40
        let seed: UInt64 = activation == .silu ? 1 : 11
        let gate = randomBuffer(n, seed: seed, in: -4...4)
        let up = randomBuffer(n, seed: seed + 1)
        let out = FloatBuffer(count: n)
        let naive = FloatBuffer(count: n)
        gatedForward(activation, out: out.pointer, gate: gate.pointer, up: up.pointer, count: n)
        switch activation {
        case .silu: swigluForwardNaive(out: naive.pointer, gate: gate.pointer, up: up.pointer, count: n)
        case .geluTanh: gegluForwardNaive(out: naive.pointer, gate: gate.pointer, up: up.pointer, count: n)
        }
        expectClose(out, naive, tolerance: Tolerance.fastVersusNaive)

        let r = randomBuffer(n, seed: seed + 2)
        func loss() -> Double {
            gatedForward(activation, out: out.pointer, gate: gate.pointer, up: up.pointer, count: n)
            return projection(out, r)
        }
        let dGate = FloatBuffer(count: n)
        let dUp = FloatBuffer(count: n)
        gatedBackward(
            activation, dGate: dGate.pointer, dUp: dUp.pointer, dOut: r.pointer, gate: gate.pointer, up: up.pointer,
            count: n)
        expectGradient(dGate.array, numericGradient(of: gate, step: 1e-3, loss: loss), "dGate")
        expectGradient(dUp.array, numericGradient(of: up, step: 1e-3, loss: loss), "dUp")
        // In place, overwriting: the saved activations become their gradients.
        let g2 = FloatBuffer(gate.array)
        let u2 = FloatBuffer(up.array)
        gatedBackward(
            activation, dGate: g2.pointer, dUp: u2.pointer, dOut: r.pointer, gate: g2.pointer, up: u2.pointer,
            count: n, accumulate: false)
        #expect(g2.array == dGate.array)
        #expect(u2.array == dUp.array)
    }
}

@Suite struct CrossEntropyTests {
    @Test func forwardMatchesNaiveAndMasksNegativeTargets() {
        let (N, V) = (9, 50)
        let logits = randomBuffer(N * V, seed: 1, in: -8...8)
        let targets: [Int32] = [0, 49, 3, -1, 7, 7, -100, 20, 1]
        let (fast, naive) = (FloatBuffer(count: N), FloatBuffer(count: N))
        let (lFast, lNaive) = (FloatBuffer(count: N), FloatBuffer(count: N))
        crossEntropyForward(
            losses: fast.pointer, logSumExp: lFast.pointer, logits: logits.pointer, targets: targets, rows: N,
            vocabSize: V)
        crossEntropyForwardNaive(
            losses: naive.pointer, logSumExp: lNaive.pointer, logits: logits.pointer, targets: targets, rows: N,
            vocabSize: V)
        expectClose(fast, naive, tolerance: Tolerance.fastVersusNaive, "loss")
        expectClose(lFast, lNaive, tolerance: Tolerance.fastVersusNaive, "lse")
        #expect(fast[3] == 0 && fast[6] == 0)
        #expect(fast.array.enumerated().allSatisfy { targets[$0.offset] < 0 || $0.element > 0 })
    }

    @Test func backwardMatchesFiniteDifferencesAndRunsInPlace() {
        let (N, V) = (4, 6)
        let logits = randomBuffer(N * V, seed: 2, in: -2...2)
        let targets: [Int32] = [5, -1, 0, 2]
        let weights = FloatBuffer([0.5, 1, 2, 0.25])
        let losses = FloatBuffer(count: N)
        let lse = FloatBuffer(count: N)
        func loss() -> Double {
            crossEntropyForward(
                losses: losses.pointer, logSumExp: lse.pointer, logits: logits.pointer, targets: targets, rows: N,
                vocabSize: V)
            return projection(losses, weights)
        }
        _ = loss()
        let numeric = numericGradient(of: logits, step: 1e-3, loss: loss)
        let inPlace = FloatBuffer(logits.array)
        crossEntropyBackward(
            dLogits: inPlace.pointer, logits: inPlace.pointer, logSumExp: lse.pointer, targets: targets,
            dLosses: weights.pointer, rows: N, vocabSize: V)
        expectGradient(inPlace.array, numeric, "dLogits")
        #expect(inPlace.array[V..<2 * V].allSatisfy { $0 == 0 }, "the masked row has no gradient")
    }
}

@Suite struct AdamWTests {
    @Test func fastMatchesNaiveOverSeveralSteps() {
        let n = 70_001
        let settings = AdamWSettings(learningRate: 1e-2, weightDecay: 0.1)
        let (p1, m1, v1) = (randomBuffer(n, seed: 1), FloatBuffer(count: n), FloatBuffer(count: n))
        let (p2, m2, v2) = (FloatBuffer(p1.array), FloatBuffer(count: n), FloatBuffer(count: n))
        for step in 1...3 {
            let g = randomBuffer(n, seed: UInt64(10 + step))
            adamWUpdate(
                parameters: p1.pointer, gradients: g.pointer, m: m1.pointer, v: v1.pointer, count: n, step: step,
                settings: settings)
            adamWUpdateNaive(
                parameters: p2.pointer, gradients: g.pointer, m: m2.pointer, v: v2.pointer, count: n, step: step,
                settings: settings)
        }
        expectClose(p1, p2, tolerance: Tolerance.fastVersusNaive, "parameters")
        expectClose(v1, v2, tolerance: Tolerance.fastVersusNaive, "second moment")
    }
}
