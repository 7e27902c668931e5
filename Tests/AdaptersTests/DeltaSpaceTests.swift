import Adapters
import Llama
import TensorKernels
import TestSupport
import Testing

@Suite struct DeltaSpaceTests {
    static let config = LlamaConfig(
        dim: 32, layers: 1, heads: 4, kvHeads: 2, ffnDim: 48, vocabSize: 16, contextLength: 64)

    /// An adapter with random A and B (as after some training).
    func trained(seed: UInt64, rank: Int = 4) -> LoRAAdapter {
        let a = LoRAAdapter(
            model: Self.config, config: LoRAConfig(rank: rank, alpha: 8, targets: [.q, .down]), seed: seed)
        let b = randomFloats(a.parameters.count, seed: seed &+ 100, in: -0.3...0.3)
        for m in a.modules {
            for i in 0..<m.outFeatures * m.rank { a.parameters.pointer[m.bOffset + i] = b[m.bOffset + i] }
        }
        return a
    }

    func delta(_ a: LoRAAdapter, _ m: LoRAModule) -> [Float] {
        LowRankDelta(module: m, parameters: UnsafeBufferPointer(a.parameters.buffer)).dense()
    }

    /// The best rank-r approximation of a dense matrix (the reference, from a dense SVD).
    func bestRank(_ d: [Float], _ m: LoRAModule) -> [Float] {
        let (u, s, vt) = thinSVD(d, rows: m.outFeatures, columns: m.inFeatures)
        let w = min(m.outFeatures, m.inFeatures)
        var out = [Float](repeating: 0, count: d.count)
        for i in 0..<m.outFeatures {
            for j in 0..<m.inFeatures {
                for t in 0..<m.rank { out[i * m.inFeatures + j] += u[i * w + t] * s[t] * vt[t * m.inFeatures + j] }
            }
        }
        return out
    }

    @Test func stackingIsExact() {
        let a = trained(seed: 1)
        let b = trained(seed: 2)
        for m in a.modules {
            var sum = LowRankDelta(module: m, parameters: UnsafeBufferPointer(a.parameters.buffer))
            sum.add(LowRankDelta(module: m, parameters: UnsafeBufferPointer(b.parameters.buffer)), weight: -0.5)
            #expect(sum.inner == 2 * m.rank)
            let expected = zip(delta(a, m), delta(b, m)).map { $0 - 0.5 * $1 }
            expectClose(sum.dense(), expected, tolerance: 1e-5)
        }
    }

    /// η = 1, μ = 0: the new global adapter is the best rank-r approximation of the token-weighted mean of the
    /// workers' ΔW, which is not what averaging A and B separately gives.
    @Test func outerStepAveragesInDeltaSpace() {
        let global = trained(seed: 3)
        let w1 = trained(seed: 4)
        let w2 = trained(seed: 5)
        let outer = OuterOptimizer(modules: global.modules.count, learningRate: 1, momentum: 0)
        outer.step(global: global, workers: [(w1.parameters.array, 1), (w2.parameters.array, 3)])
        for m in global.modules {
            let mean = zip(delta(w1, m), delta(w2, m)).map { 0.25 * $0 + 0.75 * $1 }
            expectClose(delta(global, m), bestRank(mean, m), tolerance: 1e-4, "module \(m.layer).\(m.target)")
            // A keeps its magnitude (RMS row norm of the old A); B carries the update.
            let naive = LoRAAdapter(
                model: Self.config, modules: global.modules.map { ($0.layer, $0.target, $0.rank, $0.scale) })
            for i in 0..<naive.parameters.count {
                naive.parameters.pointer[i] = 0.25 * w1.parameters.pointer[i] + 0.75 * w2.parameters.pointer[i]
            }
            let naiveDelta = delta(naive, m)
            let gap = zip(naiveDelta, mean).map { abs($0 - $1) }.max() ?? 0
            #expect(gap > 1e-2, "mean(B)·mean(A) differs from mean(B·A)")
        }
        // One worker and η = 1: exactly its update.
        let single = trained(seed: 6)
        let again = OuterOptimizer(modules: single.modules.count, learningRate: 1, momentum: 0)
        let target = trained(seed: 7)
        again.step(global: single, workers: [(target.parameters.array, 1)])
        for m in single.modules { expectClose(delta(single, m), delta(target, m), tolerance: 1e-4) }
    }

    /// Nesterov in ΔW space: ΔW − η(G + μ·M) with M = G on the first step, against the dense arithmetic.
    @Test func nesterovStepMatchesDenseArithmetic() {
        let global = trained(seed: 8)
        let before = global.modules.map { delta(global, $0) }
        let oldParameters = global.parameters.array
        let worker = trained(seed: 9)
        let outer = OuterOptimizer(modules: global.modules.count, learningRate: 0.7, momentum: 0.9)
        outer.step(global: global, workers: [(worker.parameters.array, 1)])
        for (i, m) in global.modules.enumerated() {
            let g = zip(before[i], delta(worker, m)).map { $0 - $1 }
            let expected = zip(before[i], g).map { $0 - 0.7 * ($1 + 0.9 * $1) }
            expectClose(delta(global, m), bestRank(expected, m), tolerance: 1e-4)
            // Sign continuity: each new A row points the same way as the row it replaced.
            for j in 0..<m.rank {
                var dot: Float = 0
                for c in 0..<m.inFeatures {
                    let k = m.aOffset + j * m.inFeatures + c
                    dot += global.parameters.pointer[k] * oldParameters[k]
                }
                #expect(dot >= 0, "row \(j) of \(m.target)")
            }
        }
    }

    /// η = 1, μ = 0 with the coordinate-wise median (and the trimmed mean) of five participants, one of them sending
    /// its update sign-flipped and scaled: the new global ΔW is the best rank-r approximation of the dense
    /// entry-by-entry median (trimmed mean) of their ΔW, computed here naively.
    @Test func medianAndTrimmedMeanAreTakenEntryByEntryInDeltaSpace() {
        for rule in [Aggregation.Rule.median, .trimmedMean] {
            let global = trained(seed: 20)
            let honest = (21...24).map { trained(seed: UInt64($0)) }
            let poisoned = trained(seed: 25)
            for i in 0..<poisoned.parameters.count {
                // The update global − poisoned, flipped and scaled ×10: B of the poisoned adapter far out.
                poisoned.parameters.pointer[i] =
                    global.parameters.pointer[i] + 10 * (global.parameters.pointer[i] - poisoned.parameters.pointer[i])
            }
            let all = honest + [poisoned]
            let outer = OuterOptimizer(modules: global.modules.count, learningRate: 1, momentum: 0)
            let aggregation = Aggregation(rule: rule, trimFraction: 0.2)
            #expect(aggregation.trimmed(of: 5) == 1)
            outer.step(global: global, workers: all.map { ($0.parameters.array, 7) }, aggregation: aggregation)
            for m in global.modules {
                let ds = all.map { delta($0, m) }
                var robust = [Float](repeating: 0, count: ds[0].count)
                for e in 0..<robust.count {
                    let v = ds.map { $0[e] }.sorted()
                    robust[e] = rule == .median ? v[2] : (v[1] + v[2] + v[3]) / 3
                }
                expectClose(delta(global, m), bestRank(robust, m), tolerance: 1e-3, "\(rule) \(m.target)")
                // The poisoned participant did not pull the result: closer to the honest mean than to it.
                let honestMean = (0..<robust.count).map { e in ds[0..<4].map { $0[e] }.reduce(0, +) / 4 }
                let moved = zip(delta(global, m), honestMean).map { abs($0 - $1) }.max() ?? 0
                let plain =
                    zip(
                        ds.reduce([Float](repeating: 0, count: robust.count)) { zip($0, $1).map { $0 + $1 / 5 } },
                        honestMean
                    ).map { abs($0 - $1) }.max() ?? 0
                #expect(moved < plain / 3, "\(rule): \(moved) vs the plain mean's \(plain)")
            }
        }
    }

    /// Clipping: each participant's update norm over all modules (from the factors) is reported, and one above the
    /// limit is scaled to it; with the mean, the result is the mean of the clipped updates.
    @Test func clippingScalesLargeUpdatesToTheLimit() {
        let global = trained(seed: 30)
        let small = trained(seed: 31)
        let large = trained(seed: 32)
        for i in 0..<large.parameters.count {
            large.parameters.pointer[i] =
                global.parameters.pointer[i] + 5 * (large.parameters.pointer[i] - global.parameters.pointer[i])
        }
        func norm(_ a: LoRAAdapter) -> Double {
            global.modules.reduce(0.0) { sum, m in
                sum + zip(delta(a, m), delta(global, m)).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }
            }.squareRoot()
        }
        let (smallNorm, largeNorm) = (norm(small), norm(large))
        let limit = smallNorm * 1.5
        let before = global.modules.map { delta(global, $0) }
        let outer = OuterOptimizer(modules: global.modules.count, learningRate: 1, momentum: 0)
        let report = outer.step(
            global: global, workers: [(small.parameters.array, 1), (large.parameters.array, 1)],
            aggregation: Aggregation(rule: .mean, clipNorm: limit))
        #expect(abs(report[0].norm - smallNorm) < 1e-4 * smallNorm && report[0].scale == 1)
        #expect(abs(report[1].norm - largeNorm) < 1e-4 * largeNorm)
        #expect(abs(report[1].scale - limit / largeNorm) < 1e-4 * report[1].scale)
        for (i, m) in global.modules.enumerated() {
            let s = Float(report[1].scale)
            let expected = zip(zip(delta(small, m), delta(large, m)), before[i]).map { pair, g in
                0.5 * pair.0 + 0.5 * (g + s * (pair.1 - g))
            }
            expectClose(delta(global, m), bestRank(expected, m), tolerance: 1e-4)
        }
    }
}

@Suite struct OuterStateTests {
    @Test func momentumSurvivesACheckpointRoundTrip() {
        let t = DeltaSpaceTests()
        let a = t.trained(seed: 11)
        let b = t.trained(seed: 11)
        let worker = t.trained(seed: 12)
        let first = OuterOptimizer(modules: a.modules.count, learningRate: 0.7, momentum: 0.9)
        first.step(global: a, workers: [(worker.parameters.array, 1)])
        let second = OuterOptimizer(modules: b.modules.count, learningRate: 0.7, momentum: 0.9)
        second.step(global: b, workers: [(worker.parameters.array, 1)])
        // Restore a fresh optimizer from the first one's state: the next step must match exactly.
        let restored = OuterOptimizer(modules: a.modules.count, learningRate: 0.7, momentum: 0.9)
        #expect(restored.restore(first.state(), modules: a.modules))
        let next = t.trained(seed: 13)
        second.step(global: b, workers: [(next.parameters.array, 1)])
        restored.step(global: a, workers: [(next.parameters.array, 1)])
        #expect(a.parameters.array == b.parameters.array)
        #expect(!restored.restore([1, 2, 3], modules: a.modules), "a state of the wrong shape is refused")
    }
}

@Suite struct RefactorGaugeTests {
    /// Workers that moved only B (same A): the outer step keeps A exactly and B becomes the weighted mean of the
    /// B's, so nothing a worker's optimizer tracks is rotated away.
    @Test func whenOnlyBMovedAStaysAndBIsTheMean() {
        let t = DeltaSpaceTests()
        let global = t.trained(seed: 21)
        func withB(seed: UInt64) -> [Float] {
            var p = global.parameters.array
            let b = randomFloats(p.count, seed: seed, in: -0.2...0.2)
            for m in global.modules { for i in 0..<m.outFeatures * m.rank { p[m.bOffset + i] = b[m.bOffset + i] } }
            return p
        }
        let w1 = withB(seed: 22)
        let w2 = withB(seed: 23)
        let before = global.parameters.array
        OuterOptimizer(modules: global.modules.count, learningRate: 1, momentum: 0)
            .step(global: global, workers: [(w1, 1), (w2, 1)])
        for m in global.modules {
            let a = Array(global.parameters.array[m.aOffset..<m.aOffset + m.rank * m.inFeatures])
            expectClose(a, Array(before[m.aOffset..<m.aOffset + m.rank * m.inFeatures]), tolerance: 1e-4, "A kept")
            let b = Array(global.parameters.array[m.bOffset..<m.bOffset + m.rank * m.outFeatures])
            let mean = (0..<m.rank * m.outFeatures).map { 0.5 * (w1[m.bOffset + $0] + w2[m.bOffset + $0]) }
            expectClose(b, mean, tolerance: 1e-4, "B is the mean")
        }
    }
}

@Suite struct CompareTests {
    @Test func dotAndEffectiveRankFromFactorsMatchTheDenseDefinitions() {
        let t = DeltaSpaceTests()
        let a = t.trained(seed: 31)
        let b = t.trained(seed: 32)
        for m in a.modules {
            let da = LowRankDelta(module: m, parameters: UnsafeBufferPointer(a.parameters.buffer))
            let db = LowRankDelta(
                module: b.module(layer: m.layer, target: m.target)!,
                parameters: UnsafeBufferPointer(b.parameters.buffer))
            let dense = zip(da.dense(), db.dense()).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
            #expect(abs(da.dot(db) - dense) <= 1e-4 * max(1, abs(dense)))
        }
        // One direction → 1; two orthogonal directions of equal strength → 2.
        let one = LowRankDelta(rows: 2, columns: 2, left: [1, 0], right: [0, 1])
        let two = LowRankDelta(rows: 2, columns: 2, left: [1, 0, 0, 1], right: [1, 0, 0, 1])
        #expect(abs(one.effectiveRank - 1) < 1e-6 && abs(two.effectiveRank - 2) < 1e-5)
        let rows = compareAdapters(a, a)
        #expect(rows.count == a.modules.count && rows.allSatisfy { abs(($0.cosine ?? 0) - 1) < 1e-5 })
        let negated = LoRAAdapter(
            model: a.modelConfig, modules: a.modules.map { ($0.layer, $0.target, $0.rank, -$0.scale) })
        negated.parameters.pointer.update(from: a.parameters.array, count: a.parameters.count)
        #expect(compareAdapters(a, negated).allSatisfy { abs(($0.cosine ?? 0) + 1) < 1e-5 })
    }
}
