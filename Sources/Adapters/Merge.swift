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

    /// Merges the inputs into a new adapter (scale 1 on every module), with what each module kept.
    public static func merge(_ inputs: [MergeInput], options: MergeOptions) throws(MergeError) -> (
        LoRAAdapter, MergeReport
    ) {
        try validate(inputs, options: options)
        let weights = options.weights ?? inputs.map { _ in 1 }
        // Every (layer, target) any input adapts, with its shape.
        var shapes:
            [Int: (layer: Int, target: LoRATarget, inFeatures: Int, outFeatures: Int, maxRank: Int, sumRank: Int)] =
                [:]
        for input in inputs {
            for m in input.adapter.modules {
                let key = m.layer * 8 + LoRATarget.allCases.firstIndex(of: m.target)!
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
                // One module's dense ΔW at a time.
                let dense = entrywise(
                    parts.map { ($0.0.dense(), $0.1) }, method: options.method, density: options.density,
                    seed: options.seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15)
                (kept, energy) = truncate(dense: dense, rows: s.outFeatures, columns: s.inFeatures, rank: target)
            } else {
                var delta = LowRankDelta(rows: s.outFeatures, columns: s.inFeatures)
                for (d, w) in parts { delta.add(d, weight: Float(w)) }
                (kept, energy) = truncate(delta, rank: target)
            }
            merged.append(kept)
            report.append(.init(layer: s.layer, target: s.target, rank: kept.inner, energyKept: energy))
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
        guard dense.contains(where: { $0 != 0 }) else { return (LowRankDelta(rows: m, columns: n), 1) }
        let (u, s, vt) = thinSVD(dense, rows: m, columns: n)
        let p = s.count
        let k = min(rank, p)
        var left = [Float](repeating: 0, count: m * k)
        for i in 0..<m { for j in 0..<k { left[i * k + j] = u[i * p + j] * s[j] } }
        let total = s.reduce(0) { $0 + Double($1) * Double($1) }
        let kept = s.prefix(k).reduce(0) { $0 + Double($1) * Double($1) }
        return (
            LowRankDelta(rows: m, columns: n, left: left, right: Array(vt.prefix(k * n))), total > 0 ? kept / total : 1
        )
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

    /// TIES, DARE and magnitude pruning on dense ΔW's (row-major, equal shapes) with their weights.
    public static func entrywise(_ parts: [([Float], Double)], method: MergeMethod, density: Double, seed: UInt64)
        -> [Float]
    {
        guard let n = parts.first?.0.count else { return [] }
        var rng = SeededGenerator(seed: seed)
        var pruned: [[Float]] = []
        for (d, _) in parts {
            switch method {
            case .ties, .magnitudePrune:
                pruned.append(keepLargest(d, fraction: density))
            case .dareLinear, .dareTies:
                let scale = Float(1 / density)
                pruned.append(d.map { x in rng.nextUnitFloat() < Float(density) ? x * scale : 0 })
            default:
                pruned.append(d)
            }
        }
        var out = [Float](repeating: 0, count: n)
        switch method {
        case .ties, .dareTies:
            // Elect a sign per entry by the summed (unweighted) mass; average the weighted entries that agree.
            for j in 0..<n {
                var mass: Float = 0
                for p in pruned { mass += p[j] }
                let sign: Float = mass >= 0 ? 1 : -1
                var sum: Float = 0
                var count = 0
                for (i, p) in pruned.enumerated() where p[j] != 0 && (p[j] > 0) == (sign > 0) {
                    sum += Float(parts[i].1) * p[j]
                    count += 1
                }
                out[j] = count > 0 ? sum / Float(count) : 0
            }
        default:
            for (i, p) in pruned.enumerated() {
                let w = Float(parts[i].1)
                for j in 0..<n { out[j] += w * p[j] }
            }
        }
        return out
    }

    /// The entries of largest magnitude (a `fraction` of them, rounded down), the rest zero.
    static func keepLargest(_ d: [Float], fraction: Double) -> [Float] {
        let k = Int(fraction * Double(d.count))
        guard k < d.count else { return d }
        guard k > 0 else { return [Float](repeating: 0, count: d.count) }
        let order = d.indices.sorted { abs(d[$0]) > abs(d[$1]) || (abs(d[$0]) == abs(d[$1]) && $0 < $1) }
        var out = [Float](repeating: 0, count: d.count)
        for i in order.prefix(k) { out[i] = d[i] }
        return out
    }
}
