// Merge: several adapters of one base model into one, in ΔW space (each module's update ΔW = s·B·A, whatever
// the inputs' ranks, alphas and rsLoRA conventions).
//
//   cat                 exact: the factors stacked, rank Σ rᵢ
//   linear (task-arithmetic), svd
//                       Σ wᵢ·ΔWᵢ, stacked exactly, then brought to --rank (default: the largest input rank) by a
//                       truncated SVD of the factors (never forming ΔW); the spectral energy kept is reported
//   ties                trim each ΔWᵢ to its largest-magnitude `density` fraction, elect each entry's sign by the
//                       summed mass, average the weighted entries that agree with it
//   dare-linear, dare-ties
//                       drop each entry with probability 1 − density (seeded) and rescale by 1/density; then sum,
//                       or elect and average as ties
//   magnitude-prune     trim to `density` by magnitude, then the weighted sum
// The last four work on one module's dense ΔW at a time, then refactor it to the rank.
//
// A module missing from an input counts as zero. Inputs for another base are refused: the architecture and every
// module shape always, the recorded base-model hash unless forced.

import Foundation
import Llama
import ModelFormats
import TensorKernels

/// How adapters are combined.
public enum MergeMethod: String, Sendable, CaseIterable {
    case linear, cat, svd, ties
    case taskArithmetic = "task-arithmetic"
    case dareLinear = "dare-linear"
    case dareTies = "dare-ties"
    case magnitudePrune = "magnitude-prune"

    /// Whether the method works entry by entry on the dense ΔW (and so needs a density).
    public var isEntrywise: Bool { [.ties, .dareLinear, .dareTies, .magnitudePrune].contains(self) }
}

/// Settings of a merge.
public struct MergeOptions: Sendable {
    public var method: MergeMethod
    /// One weight per input (default all 1).
    public var weights: [Double]?
    /// Fraction of entries kept by ties, dare and magnitude-prune.
    public var density = 1.0
    /// Seed of dare's random drops.
    public var seed: UInt64 = 0
    /// Output rank (default: the largest input rank; `cat` keeps Σ rᵢ unless given).
    public var rank: Int?
    /// Merge adapters whose recorded base hashes differ (shapes are always checked).
    public var force = false

    public init(method: MergeMethod) { self.method = method }
}

/// One adapter to merge.
public struct MergeInput: Sendable {
    public var name: String
    public var adapter: LoRAAdapter
    public var provenance: AdapterProvenance

    public init(name: String, adapter: LoRAAdapter, provenance: AdapterProvenance) {
        self.name = name
        self.adapter = adapter
        self.provenance = provenance
    }
}

/// Why adapters cannot be merged.
public struct MergeError: Error, Sendable, CustomStringConvertible {
    public var problems: [String]
    public init(_ problems: [String]) { self.problems = problems }
    public var description: String {
        problems.count == 1
            ? problems[0] : "cannot merge:\n" + problems.map { "  - " + $0 }.joined(separator: "\n")
    }
}

/// What a merge kept, per module.
public struct MergeReport: Sendable {
    public struct Module: Sendable {
        public var layer: Int
        public var target: LoRATarget
        public var rank: Int
        /// Fraction of the merged ΔW's spectral energy (Σσ²) the output keeps.
        public var energyKept: Double
    }
    public var modules: [Module]

    /// The smallest fraction kept by any module.
    public var minimumEnergyKept: Double { modules.map(\.energyKept).min() ?? 1 }
}

/// Merges adapters.
public enum AdapterMerge {
    /// Checks that the inputs can be merged; throws every problem at once.
    public static func validate(_ inputs: [MergeInput], options: MergeOptions) throws(MergeError) {
        var problems: [String] = []
        if inputs.isEmpty { problems.append("no adapters to merge") }
        if let w = options.weights {
            if w.count != inputs.count {
                problems.append("--weights has \(w.count) values for \(inputs.count) adapters")
            }
            if !w.allSatisfy(\.isFinite) { problems.append("--weights must be finite numbers") }
        }
        if options.method.isEntrywise, !(options.density > 0 && options.density <= 1) {
            problems.append("--density must be in (0, 1] (the fraction of entries kept)")
        }
        if let r = options.rank, r < 1 || r > 65536 { problems.append("--rank must be between 1 and 65536") }
        guard let first = inputs.first else { throw MergeError(problems) }
        let c0 = first.adapter.modelConfig
        for input in inputs.dropFirst() {
            let c = input.adapter.modelConfig
            let dims: [(String, Int, Int)] = [
                ("layers", c0.layers, c.layers), ("hidden size", c0.dim, c.dim), ("heads", c0.heads, c.heads),
                ("key/value heads", c0.kvHeads, c.kvHeads), ("head size", c0.headDim, c.headDim),
                ("feed-forward size", c0.ffnDim, c.ffnDim),
            ]
            for (what, a, b) in dims where a != b {
                problems.append("\(input.name): \(what) \(b), but \(first.name) has \(a)")
            }
            if let h0 = first.provenance.baseModelHash, let h = input.provenance.baseModelHash, h0 != h, !options.force
            {
                problems.append(
                    "\(input.name) was trained on base \(h.prefix(12))…, \(first.name) on \(h0.prefix(12))…; "
                        + "--force merges anyway when the shapes agree")
            }
            for m in input.adapter.modules {
                if let other = first.adapter.module(layer: m.layer, target: m.target),
                    other.inFeatures != m.inFeatures || other.outFeatures != m.outFeatures
                {
                    problems.append(
                        "\(input.name): layer \(m.layer) \(m.target.rawValue) is \(m.outFeatures)×\(m.inFeatures), "
                            + "\(first.name)'s is \(other.outFeatures)×\(other.inFeatures)")
                }
            }
        }
        guard problems.isEmpty else { throw MergeError(problems) }
    }

    /// An input whose update stands out from the others.
    public struct Outlier: Sendable, Equatable {
        public var index: Int
        public var reason: String
    }

    /// Inputs whose update norm or agreement with the consensus is an outlier among the inputs: the modified
    /// z-score (0.6745·(x − median)/MAD) of the log of each input's total update norm, and of its mean cosine
    /// similarity to the sum of all inputs' updates, beyond `threshold`. Computed from the factors (pairwise
    /// inner products per module), never forming ΔW. Needs at least three inputs.
    public static func outliers(_ inputs: [MergeInput], threshold: Double = 3.5) -> [Outlier] {
        guard inputs.count >= 3 else { return [] }
        var keys = Set<Int>()
        for input in inputs {
            for m in input.adapter.modules { keys.insert(LoRAAdapter.key(m.layer, m.target)) }
        }
        var squaredNorms = [Double](repeating: 0, count: inputs.count)
        var cosineSums = [Double](repeating: 0, count: inputs.count)
        var cosineCounts = [Double](repeating: 0, count: inputs.count)
        for key in keys {
            let (layer, target) = LoRAAdapter.module(ofKey: key)
            let deltas = inputs.map { input in
                input.adapter.module(layer: layer, target: target).map {
                    LowRankDelta(module: $0, parameters: UnsafeBufferPointer(input.adapter.parameters.buffer))
                }
            }
            var gram = [[Double]](repeating: [Double](repeating: 0, count: inputs.count), count: inputs.count)
            for i in inputs.indices {
                for j in i..<inputs.count {
                    guard let a = deltas[i], let b = deltas[j] else { continue }
                    gram[i][j] = a.dot(b)
                    gram[j][i] = gram[i][j]
                }
            }
            let total = gram.reduce(0) { $0 + $1.reduce(0, +) }  // ‖Σ ΔW‖²
            for i in inputs.indices where deltas[i] != nil {
                squaredNorms[i] += gram[i][i]
                guard gram[i][i] > 0, total > 0 else { continue }
                cosineSums[i] += gram[i].reduce(0, +) / (gram[i][i].squareRoot() * total.squareRoot())
                cosineCounts[i] += 1
            }
        }
        func scores(_ x: [Double]) -> [Double] {
            let sorted = x.sorted()
            let median = sorted[sorted.count / 2]
            let deviations = x.map { abs($0 - median) }.sorted()
            let mad = deviations[deviations.count / 2]
            return x.map { v in
                if mad > 1e-12 { return 0.6745 * (v - median) / mad }
                return abs(v - median) > 1e-6 * max(1, abs(median)) ? (v > median ? .infinity : -.infinity) : 0
            }
        }
        let logNorms = squaredNorms.map { 0.5 * log(max($0, 1e-30)) }
        let cosines = cosineSums.indices.map { cosineCounts[$0] > 0 ? cosineSums[$0] / cosineCounts[$0] : 0 }
        let normScores = scores(logNorms)
        let cosineScores = scores(cosines)
        var out: [Outlier] = []
        for i in inputs.indices {
            var why: [String] = []
            if abs(normScores[i]) > threshold {
                why.append(
                    String(
                        format: "update norm %.3g is %@ the others' (median %.3g)", exp(logNorms[i]),
                        normScores[i] > 0 ? "far above" : "far below", exp(logNorms.sorted()[logNorms.count / 2])))
            }
            if cosineScores[i] < -threshold {
                why.append(
                    String(
                        format: "agrees little with the consensus (cosine %.2f, median %.2f)", cosines[i],
                        cosines.sorted()[cosines.count / 2]))
            }
            if !why.isEmpty { out.append(Outlier(index: i, reason: why.joined(separator: "; "))) }
        }
        return out
    }

    /// Merges the inputs into a new adapter (scale 1 on every module), with what each module kept.
    ///
    /// - Parameter progress: told (modules merged, modules in all) after each module.
    public static func merge(
        _ inputs: [MergeInput], options: MergeOptions, progress: (_ done: Int, _ total: Int) -> Void = { _, _ in }
    ) throws(MergeError) -> (LoRAAdapter, MergeReport) {
        try validate(inputs, options: options)
        let weights = options.weights ?? inputs.map { _ in 1 }
        // Every (layer, target) any input adapts, with its shape.
        var shapes:
            [Int: (layer: Int, target: LoRATarget, inFeatures: Int, outFeatures: Int, maxRank: Int, sumRank: Int)] =
                [:]
        for input in inputs {
            for m in input.adapter.modules {
                let key = LoRAAdapter.key(m.layer, m.target)
                var s = shapes[key] ?? (m.layer, m.target, m.inFeatures, m.outFeatures, 0, 0)
                s.maxRank = max(s.maxRank, m.rank)
                s.sumRank += m.rank
                shapes[key] = s
            }
        }
        let keys = shapes.keys.sorted()
        // Each module's merged ΔW as factors L·R (L: out×k, R: k×in).
        var merged: [LowRankDelta] = []
        var report: [MergeReport.Module] = []
        for (index, key) in keys.enumerated() {
            let s = shapes[key]!
            let parts: [(LowRankDelta, Double)] = inputs.enumerated().compactMap { i, input in
                guard let m = input.adapter.module(layer: s.layer, target: s.target) else { return nil }
                return (
                    LowRankDelta(module: m, parameters: UnsafeBufferPointer(input.adapter.parameters.buffer)),
                    weights[i]
                )
            }
            let target = options.rank ?? (options.method == .cat ? s.sumRank : s.maxRank)
            let kept: LowRankDelta
            let energy: Double
            if options.method.isEntrywise {
                // One module's dense ΔW at a time (its inputs' never stored whole: Entrywise.swift).
                let dense = entrywise(
                    parts, method: options.method, density: options.density,
                    seed: options.seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15)
                (kept, energy) = truncate(dense: dense, rows: s.outFeatures, columns: s.inFeatures, rank: target)
            } else {
                var delta = LowRankDelta(rows: s.outFeatures, columns: s.inFeatures)
                for (d, w) in parts { delta.add(d, weight: Float(w)) }
                (kept, energy) = truncate(delta, rank: target)
            }
            merged.append(kept)
            report.append(.init(layer: s.layer, target: s.target, rank: kept.inner, energyKept: energy))
            progress(index + 1, keys.count)
        }
        let adapter = LoRAAdapter(
            model: inputs[0].adapter.modelConfig,
            modules: keys.enumerated().map { i, key in
                (shapes[key]!.layer, shapes[key]!.target, max(1, merged[i].inner), Float(1))
            })
        let p = adapter.parameters.pointer
        for (i, m) in adapter.modules.enumerated() {
            let d = merged[i]
            guard d.inner > 0 else { continue }  // an all-zero update: A and B stay zero
            // ΔW = B·A with scale 1: B = L (out×r), A = R (r×in).
            for j in 0..<m.outFeatures * m.rank { p[m.bOffset + j] = d.left[j] }
            for j in 0..<m.rank * m.inFeatures { p[m.aOffset + j] = d.right[j] }
        }
        return (adapter, MergeReport(modules: report))
    }

    /// The best rank-`rank` approximation of a dense m×n matrix, and the fraction of spectral energy it keeps.
    static func truncate(dense: [Float], rows m: Int, columns n: Int, rank: Int) -> (LowRankDelta, Double) {
        let total = dense.reduce(0) { $0 + Double($1) * Double($1) }  // Σσ² = ‖ΔW‖²
        guard total > 0 else { return (LowRankDelta(rows: m, columns: n), 1) }
        let (u, s, vt) = randomizedSVD(dense, rows: m, columns: n, rank: rank)
        let k = s.count
        var left = [Float](repeating: 0, count: m * k)
        for i in 0..<m { for j in 0..<k { left[i * k + j] = u[i * k + j] * s[j] } }
        let kept = s.reduce(0) { $0 + Double($1) * Double($1) }
        return (LowRankDelta(rows: m, columns: n, left: left, right: vt), min(1, kept / total))
    }

    /// The best rank-`rank` approximation, and the fraction of spectral energy it keeps.
    static func truncate(_ d: LowRankDelta, rank: Int) -> (LowRankDelta, Double) {
        guard d.inner > 0 else { return (d, 1) }
        let all = d.truncated(rank: min(d.inner, d.rows, d.columns))
        let kept = all.truncated(rank: rank)
        func energy(_ x: LowRankDelta) -> Double {
            // L = U·Σ with orthonormal U, so Σσ² = ‖L‖².
            x.left.reduce(0) { $0 + Double($1) * Double($1) }
        }
        let total = energy(all)
        return (kept, total > 0 ? min(1, energy(kept) / total) : 1)
    }
}

/// Carries a buffer into a parallel region whose writes are disjoint.
struct UncheckedBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
