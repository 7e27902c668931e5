import Adapters
import Foundation
import Llama
import TensorKernels
import TestSupport
import Testing

@Suite struct MergeTests {
    static let config = DeltaSpaceTests.config

    /// An adapter with random A and B on the given modules.
    func adapter(seed: UInt64, rank: Int, scale: Float, targets: [LoRATarget] = [.q, .down]) -> LoRAAdapter {
        let a = LoRAAdapter(
            model: Self.config,
            modules: targets.flatMap { t in
                (0..<Self.config.layers).map { (layer: $0, target: t, rank: rank, scale: scale) }
            })
        let values = randomFloats(a.parameters.count, seed: seed, in: -0.5...0.5)
        a.parameters.pointer.update(from: values, count: values.count)
        return a
    }

    func input(_ name: String, _ a: LoRAAdapter, base: String? = nil) -> MergeInput {
        var p = AdapterProvenance()
        p.baseModelHash = base
        return MergeInput(name: name, adapter: a, provenance: p)
    }

    /// ΔW of a module, or zeros when the adapter lacks it.
    func delta(_ a: LoRAAdapter, _ layer: Int, _ t: LoRATarget) -> [Float] {
        let (inF, outF) = t.shape(Self.config)
        guard let m = a.module(layer: layer, target: t) else { return [Float](repeating: 0, count: inF * outF) }
        return LowRankDelta(module: m, parameters: UnsafeBufferPointer(a.parameters.buffer)).dense()
    }

    func bestRank(_ d: [Float], rows: Int, columns: Int, rank: Int) -> [Float] {
        let (u, s, vt) = thinSVD(d, rows: rows, columns: columns)
        let p = s.count
        var out = [Float](repeating: 0, count: d.count)
        for i in 0..<rows {
            for j in 0..<columns {
                for t in 0..<min(rank, p) { out[i * columns + j] += u[i * p + t] * s[t] * vt[t * columns + j] }
            }
        }
        return out
    }

    @Test func oneAdapterWithWeightOneIsReproduced() throws {
        let a = adapter(seed: 1, rank: 4, scale: 2)
        for method in [MergeMethod.linear, .cat, .svd, .taskArithmetic] {
            let (out, report) = try AdapterMerge.merge([input("a", a)], options: MergeOptions(method: method))
            for m in a.modules {
                #expect(relativeL2(delta(out, m.layer, m.target), delta(a, m.layer, m.target)) < 1e-6, "\(method)")
            }
            #expect(report.minimumEnergyKept > 0.999999)
        }
    }

    /// cat is exact at rank Σrᵢ, whatever the inputs' ranks and scales (alpha/r, rsLoRA: only s·B·A counts).
    @Test func catIsExactAcrossRanksAndScales() throws {
        let a = adapter(seed: 2, rank: 4, scale: 2)
        let b = adapter(seed: 3, rank: 8, scale: 0.5)
        var options = MergeOptions(method: .cat)
        options.weights = [1, -0.5]
        let (out, _) = try AdapterMerge.merge([input("a", a), input("b", b)], options: options)
        for m in out.modules {
            #expect(m.rank == 12 && m.scale == 1)
            let expected = zip(delta(a, m.layer, m.target), delta(b, m.layer, m.target)).map { $0 - 0.5 * $1 }
            #expect(relativeL2(delta(out, m.layer, m.target), expected) < 1e-5)
        }
    }

    /// The SVD re-factoring is exact at full rank and the best rank-k approximation below it.
    @Test func refactoringIsExactAtFullRankAndBestBelow() throws {
        let a = adapter(seed: 4, rank: 4, scale: 1)
        let b = adapter(seed: 5, rank: 4, scale: 1)
        for rank in [8, 3] {
            var options = MergeOptions(method: .svd)
            options.rank = rank
            let (out, report) = try AdapterMerge.merge([input("a", a), input("b", b)], options: options)
            for m in out.modules {
                let (inF, outF) = m.target.shape(Self.config)
                let sum = zip(delta(a, m.layer, m.target), delta(b, m.layer, m.target)).map { $0 + $1 }
                let expected = rank >= 8 ? sum : bestRank(sum, rows: outF, columns: inF, rank: rank)
                #expect(relativeL2(delta(out, m.layer, m.target), expected) < 1e-4, "rank \(rank)")
            }
            #expect(rank == 8 ? report.minimumEnergyKept > 0.9999 : report.minimumEnergyKept < 0.99)
        }
    }

    /// Where the maths is symmetric, so is the merge.
    @Test func mergesAreOrderIndependent() throws {
        let a = adapter(seed: 6, rank: 4, scale: 1)
        let b = adapter(seed: 7, rank: 4, scale: 1)
        for method in [MergeMethod.linear, .cat, .ties, .magnitudePrune] {
            var options = MergeOptions(method: method)
            options.density = 0.5
            options.rank = 8
            let (ab, _) = try AdapterMerge.merge([input("a", a), input("b", b)], options: options)
            let (ba, _) = try AdapterMerge.merge([input("b", b), input("a", a)], options: options)
            for m in ab.modules {
                #expect(relativeL2(delta(ab, m.layer, m.target), delta(ba, m.layer, m.target)) < 1e-4, "\(method)")
            }
        }
    }

    /// TIES against a plain reimplementation of its definition (trim by magnitude, sign by summed mass,
    /// disjoint weighted mean), at full rank on a module where the dense result is compared directly.
    @Test func tiesFollowsItsDefinition() throws {
        let x: [Float] = [3, -1, 0.5, -4, 2, 0.1]
        let y: [Float] = [-2, -3, 1, 1, -0.2, 0.3]
        let z: [Float] = [1, 2, -0.4, -1, 0.5, -0.05]
        let merged = AdapterMerge.entrywise([(x, 1), (y, 2), (z, 1)], method: .ties, density: 0.5, seed: 0)
        // Trim to the top 3 magnitudes each: x → [3,0,0,-4,2,0], y → [-2,-3,0,0,0,0]... y's top 3 are -3,-2,1.
        let tx: [Float] = [3, 0, 0, -4, 2, 0]
        let ty: [Float] = [-2, -3, 1, 0, 0, 0]
        let tz: [Float] = [1, 2, 0, -1, 0, 0]
        var expected = [Float](repeating: 0, count: 6)
        for j in 0..<6 {
            let sign: Float = tx[j] + ty[j] + tz[j] >= 0 ? 1 : -1
            var sum: Float = 0
            var count: Float = 0
            for (t, w) in [(tx, Float(1)), (ty, 2), (tz, 1)] where t[j] != 0 && (t[j] > 0) == (sign > 0) {
                sum += w * t[j]
                count += 1
            }
            expected[j] = count > 0 ? sum / count : 0
        }
        #expect(merged == expected, "\(merged) vs \(expected)")
        // DARE keeps about `density` of the entries, rescaled, reproducibly for a seed.
        let big = randomFloats(10_000, seed: 8)
        let dare = AdapterMerge.entrywise([(big, 1)], method: .dareLinear, density: 0.3, seed: 42)
        let kept = zip(big, dare).filter { $1 != 0 }
        #expect(abs(Double(kept.count) / 10_000 - 0.3) < 0.02)
        #expect(kept.allSatisfy { abs($1 - $0 / 0.3) < 1e-5 })
        #expect(dare == AdapterMerge.entrywise([(big, 1)], method: .dareLinear, density: 0.3, seed: 42))
        #expect(AdapterMerge.entrywise([(big, 1)], method: .dareLinear, density: 1, seed: 1) == big)
    }

    /// The definition of TIES and magnitude pruning written plainly: a stable sort by magnitude for each input's
    /// kept set (equal magnitudes: first in index order), then the sign election and the mean, or the sum.
    func entrywiseByDefinition(_ parts: [([Float], Float)], elect: Bool, density: Double) -> [Float] {
        let n = parts[0].0.count
        let k = Int(density * Double(n))
        let trimmed = parts.map { x, _ -> [Float] in
            let order = x.indices.sorted { abs(x[$0]) > abs(x[$1]) || (abs(x[$0]) == abs(x[$1]) && $0 < $1) }
            var t = [Float](repeating: 0, count: n)
            for i in order.prefix(k) { t[i] = x[i] }
            return t
        }
        return (0..<n).map { j in
            guard elect else { return zip(trimmed, parts).reduce(Float(0)) { $0 + $1.1.1 * $1.0[j] } }
            let sign: Float = trimmed.reduce(Float(0)) { $0 + $1[j] } >= 0 ? 1 : -1
            var sum: Float = 0
            var count: Float = 0
            for (t, p) in zip(trimmed, parts) where t[j] * sign > 0 {
                sum += p.1 * t[j]
                count += 1
            }
            return count > 0 ? sum / count : 0
        }
    }

    /// Large inputs take the sampled-bracket threshold; it must select exactly what a sort selects, also when
    /// many magnitudes are equal at the cut (per-block quotas) and when the sample misjudges the distribution
    /// (the radix fallback).
    @Test func entrywiseThresholdsAreExactOnLargeInputs() throws {
        let n = 100_000
        let smooth = randomFloats(n, seed: 21)
        // Magnitudes from a handful of values: the cut falls inside a run of equal ones.
        let coarse = randomFloats(n, seed: 22).map { ($0 * 4).rounded() / 4 }
        // Nearly all one magnitude: the bracket cannot separate them.
        let flat = randomFloats(n, seed: 23).enumerated().map { i, x in i % 97 == 0 ? x : (x >= 0 ? 0.5 : -0.5) }
        let parts: [([Float], Float)] = [(smooth, 1), (coarse, 0.5), (flat, 2)]
        for density in [0.3, 0.5, 0.9] {
            for (method, elect) in [(MergeMethod.ties, true), (.magnitudePrune, false)] {
                let got = AdapterMerge.entrywise(
                    parts.map { ($0.0, Double($0.1)) }, method: method, density: density, seed: 0)
                let want = entrywiseByDefinition(parts, elect: elect, density: density)
                let differing = zip(got, want).filter { $0 != $1 }.count
                #expect(differing == 0, "\(method) at density \(density): \(differing) entries differ")
            }
        }
    }

    /// Factors and their dense product give the same merge (up to the product's rounding), at sizes that use the
    /// block-wise regeneration and the bracket.
    @Test func entrywiseOnFactorsMatchesDense() throws {
        let (rows, columns, rank) = (300, 400, 6)
        let deltas = (0..<3).map { i in
            LowRankDelta(
                rows: rows, columns: columns, left: randomFloats(rows * rank, seed: 30 + UInt64(i)),
                right: randomFloats(rank * columns, seed: 40 + UInt64(i)))
        }
        for method in [MergeMethod.ties, .magnitudePrune, .dareTies, .dareLinear] {
            let fromFactors = AdapterMerge.entrywise(deltas.map { ($0, 1.5) }, method: method, density: 0.4, seed: 9)
            let fromDense = AdapterMerge.entrywise(
                deltas.map { ($0.dense(), 1.5) }, method: method, density: 0.4, seed: 9)
            #expect(relativeL2(fromFactors, fromDense) < 1e-4, "\(method)")
        }
    }

    /// A module one input lacks counts as zero for it.
    @Test func missingModulesCountAsZero() throws {
        let a = adapter(seed: 9, rank: 4, scale: 1, targets: [.q])
        let b = adapter(seed: 10, rank: 4, scale: 1, targets: [.q, .v])
        let (out, _) = try AdapterMerge.merge([input("a", a), input("b", b)], options: MergeOptions(method: .cat))
        #expect(Set(out.modules.map(\.target)) == [.q, .v])
        #expect(relativeL2(delta(out, 0, .v), delta(b, 0, .v)) < 1e-5)
    }

    /// Every problem at once: shapes always, the base hash unless forced, bad settings.
    @Test func refusesWhatCannotBeMerged() throws {
        let a = adapter(seed: 11, rank: 4, scale: 1)
        let other = LlamaConfig(dim: 48, layers: 2, heads: 4, kvHeads: 2, ffnDim: 48, vocabSize: 16, contextLength: 64)
        let b = LoRAAdapter(model: other, modules: [(0, .q, 4, 1)])
        var options = MergeOptions(method: .ties)
        options.weights = [1]
        options.density = 0
        #expect {
            try AdapterMerge.merge([input("a", a), input("b", b)], options: options)
        } throws: { e in
            let text = (e as? MergeError)?.description ?? ""
            return text.contains("hidden size 48") && text.contains("--weights") && text.contains("--density")
                && text.contains("layer 0 q_proj")
        }
        let c = adapter(seed: 12, rank: 4, scale: 1)
        #expect(throws: MergeError.self) {
            try AdapterMerge.merge(
                [input("a", a, base: "aaaa"), input("c", c, base: "bbbb")], options: MergeOptions(method: .linear))
        }
        var forced = MergeOptions(method: .linear)
        forced.force = true
        #expect(throws: Never.self) {
            try AdapterMerge.merge([input("a", a, base: "aaaa"), input("c", c, base: "bbbb")], options: forced)
        }
    }
}

@Suite struct OutlierTests {
    /// Five adapters near a common update, one 20× larger and one pointing the other way: those two are flagged.
    @Test func flagsTheInputsThatStandOut() {
        let t = MergeTests()
        let common = t.adapter(seed: 40, rank: 4, scale: 1)
        func variant(_ seed: UInt64, scale: Float = 1, flip: Bool = false) -> MergeInput {
            let a = LoRAAdapter(
                model: MergeTests.config,
                modules: common.modules.map { ($0.layer, $0.target, $0.rank, flip ? -scale : scale) })
            let noise = randomFloats(a.parameters.count, seed: seed, in: -0.02...0.02)
            for i in 0..<a.parameters.count { a.parameters.pointer[i] = common.parameters.pointer[i] + noise[i] }
            return t.input("v\(seed)", a)
        }
        let inputs = (1...5).map { variant($0) } + [variant(6, scale: 20), variant(7, flip: true)]
        let flagged = AdapterMerge.outliers(inputs)
        #expect(flagged.map(\.index) == [5, 6], "\(flagged)")
        #expect(flagged.first?.reason.contains("far above") == true)
        #expect(flagged.last?.reason.contains("consensus") == true)
        #expect(AdapterMerge.outliers(Array(inputs.prefix(5))).isEmpty, "similar adapters: nothing flagged")
    }
}

@Suite struct ContentHashTests {
    /// The same merge of the same inputs has the same id, in either file format; a different weight gives another.
    @Test func theSameMergeHasTheSameId() throws {
        let t = MergeTests()
        let a = t.input("a", t.adapter(seed: 50, rank: 4, scale: 1))
        let b = t.input("b", t.adapter(seed: 51, rank: 4, scale: 2))
        var options = MergeOptions(method: .ties)
        options.density = 0.5
        let first = try AdapterMerge.merge([a, b], options: options).0.contentHash
        let again = try AdapterMerge.merge([a, b], options: options).0.contentHash
        options.weights = [1, 0.9]
        let other = try AdapterMerge.merge([a, b], options: options).0.contentHash
        #expect(first == again && first != other && first.count == 64)
        // Written as PEFT and as GGUF LoRA (Q/K rows interleaved on disk) and read back: the same id.
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        options.weights = nil
        let merged = try AdapterMerge.merge([a, b], options: options).0
        let peft = dir.appendingPathComponent("peft").path
        let gguf = dir.appendingPathComponent("m.gguf").path
        try merged.savePEFT(directory: peft, provenance: AdapterProvenance())
        try merged.saveGGUF(path: gguf, provenance: AdapterProvenance())
        #expect(try LoRAAdapter.load(path: peft, model: MergeTests.config).0.contentHash == first)
        #expect(try LoRAAdapter.load(path: gguf, model: MergeTests.config).0.contentHash == first)
    }
}

@Suite struct MergeSearchTests {
    /// Nelder–Mead finds the minimum of a smooth bowl inside the box, starts from the uniform point, never
    /// evaluates a point twice, stays within its budget and the box, and is deterministic.
    @Test func findsTheMinimumOfABowlWithinTheBudget() {
        let target = [0.9, 0.2, 0.55]
        func bowl(_ w: [Double], _ d: Double?) -> Double {
            zip(w, target).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) } + (d.map { ($0 - 0.4) * ($0 - 0.4) } ?? 0)
        }
        let options = MergeSearchOptions(inputs: 3, searchDensity: true, density: 0.8, budget: 120)
        let result = MergeSearch.run(options, evaluate: bowl)
        #expect(result.uniform.weights.allSatisfy { abs($0 - 1.0 / 3) < 1e-8 } && result.uniform.density == 0.8)
        #expect(result.candidates.count <= 120)
        #expect(result.best.loss < 1e-4, "\(result.best)")
        #expect(result.best.loss <= result.uniform.loss)
        let points = result.candidates.map { $0.weights + [$0.density!] }
        #expect(Set(points).count == points.count, "no point evaluated twice")
        #expect(points.allSatisfy { p in p.prefix(3).allSatisfy { $0 >= 0 && $0 <= 1.5 } && p[3] >= 0.05 && p[3] <= 1 })
        let again = MergeSearch.run(options, evaluate: bowl)
        #expect(again.candidates == result.candidates)
        // Handed over in batches (a cluster scores a batch in one job), the search is the same.
        var batches: [Int] = []
        let batched = MergeSearch.run(options) { points in
            batches.append(points.count)
            return points.map { bowl($0.weights, $0.density) }
        }
        #expect(batched.candidates == result.candidates)
        #expect(batches.first == 5, "the first simplex at once: \(batches)")
        // A minimum outside the box: the search ends on its edge.
        let edge = MergeSearch.run(MergeSearchOptions(inputs: 2, budget: 60)) { w, _ in
            (w[0] - 3) * (w[0] - 3) + (w[1] - 0.5) * (w[1] - 0.5)
        }
        #expect(abs(edge.best.weights[0] - 1.5) < 1e-3 && abs(edge.best.weights[1] - 0.5) < 1e-2, "\(edge.best)")
    }
}
