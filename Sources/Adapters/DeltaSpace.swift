// DeltaSpace: adapters combined exactly in ΔW space. A LoRA module's update is ΔW = s·B·A (out×in, rank r).
// Averaging A and B separately is not averaging the update (mean(B)·mean(A) ≠ mean(B·A)), so adapters that
// diverged are combined as a sum of low-rank products, stacked (exact, rank Σrᵢ), and brought back to the
// job's rank with a truncated SVD computed from the factors (TensorKernels.truncatedSVD), never forming the
// out×in matrix for large layers.

import Foundation
import Llama
import TensorKernels

/// A module's ΔW as L·R (L: out×k, R: k×in); k = 0 is the zero update.
public struct LowRankDelta: Sendable {
    public let rows: Int
    public let columns: Int
    public private(set) var inner = 0
    /// out×inner, row-major.
    public private(set) var left: [Float] = []
    /// inner×in, row-major.
    public private(set) var right: [Float] = []

    public init(rows: Int, columns: Int) {
        self.rows = rows
        self.columns = columns
    }

    /// L·R from factors (L: rows×k, R: k×columns).
    public init(rows: Int, columns: Int, left: [Float], right: [Float]) {
        precondition(left.count % rows == 0 && right.count == (left.count / rows) * columns, "LowRankDelta: shapes")
        self.rows = rows
        self.columns = columns
        inner = left.count / rows
        self.left = left
        self.right = right
    }

    /// s·B·A of one module of a flat adapter buffer.
    public init(module m: LoRAModule, parameters p: UnsafeBufferPointer<Float>) {
        self.init(rows: m.outFeatures, columns: m.inFeatures)
        inner = m.rank
        left = (0..<m.outFeatures * m.rank).map { m.scale * p[m.bOffset + $0] }
        right = Array(p[m.aOffset..<m.aOffset + m.rank * m.inFeatures])
    }

    /// Adds weight·other (stacking factors: exact).
    public mutating func add(_ other: LowRankDelta, weight: Float) {
        precondition(other.rows == rows && other.columns == columns, "LowRankDelta: shapes differ")
        guard other.inner > 0, weight != 0 else { return }
        let k = inner + other.inner
        var l = [Float](repeating: 0, count: rows * k)
        for i in 0..<rows {
            for j in 0..<inner { l[i * k + j] = left[i * inner + j] }
            for j in 0..<other.inner { l[i * k + inner + j] = weight * other.left[i * other.inner + j] }
        }
        left = l
        right += other.right
        inner = k
    }

    /// The best rank-`rank` approximation, as L = U·Σ, R = Vᵀ.
    public func truncated(rank: Int) -> LowRankDelta {
        guard inner > 0 else { return self }
        let (u, s, vt) = truncatedSVD(left: left, right: right, rows: rows, inner: inner, columns: columns, rank: rank)
        var out = LowRankDelta(rows: rows, columns: columns)
        out.inner = s.count
        out.left = u
        for i in 0..<rows { for j in 0..<s.count { out.left[i * s.count + j] *= s[j] } }
        out.right = vt
        return out
    }

    /// The out×in matrix (tests and small layers).
    public func dense() -> [Float] {
        guard inner > 0 else { return [Float](repeating: 0, count: rows * columns) }
        return product(left, right, rows, inner, columns)
    }
}

/// Writes a ΔW back into one module's A and B at the module's rank (the best rank-r approximation), choosing,
/// among the factorizations of that ΔW, the one whose A is closest to the A it replaces: A_new is the old A
/// projected onto the new row space (Procrustes, A_new = Q·Â with Q = A_old·Âᵀ/c²) and B_new = B̂·Q⁻¹. When only
/// B moved, A stays exactly as it was, and workers' optimizer moments keep their meaning across rounds. When
/// the row space turned too far for that (Q ill-conditioned), A gets orthonormal rows scaled to the old rows'
/// RMS norm, each signed to agree with the old row.
public func refactor(_ delta: LowRankDelta, into m: LoRAModule, parameters p: UnsafeMutableBufferPointer<Float>) {
    let t = delta.truncated(rank: m.rank)
    let r = m.rank
    let n = m.inFeatures
    let out = m.outFeatures
    let old = Array(p[m.aOffset..<m.aOffset + r * n])
    var sumSquares: Float = 0
    for x in old { sumSquares += x * x }
    let c = sumSquares > 0 ? (sumSquares / Float(r)).squareRoot() : 1
    // The orthonormal gauge: Â rows = c·(unit right singular vectors), B̂ = L·‖R_j‖/(c·s).
    var a = old
    var b = [Float](repeating: 0, count: out * r)
    for j in 0..<min(r, t.inner) {
        var norm: Float = 0
        for i in 0..<n { norm += t.right[j * n + i] * t.right[j * n + i] }
        norm = norm.squareRoot()
        guard norm > 0 else { continue }
        for i in 0..<n { a[j * n + i] = c * t.right[j * n + i] / norm }
        for i in 0..<out { b[i * r + j] = t.left[i * t.inner + j] * norm / (c * m.scale) }
    }
    var aligned = false
    if t.inner == r, sumSquares > 0 {
        // Q = A_old·Âᵀ / c² (r×r); well-conditioned → A_new = Q·Â, B_new = B̂·Q⁻¹.
        let q = product(old, a, r, n, r, transposeB: true, scale: 1 / (c * c))
        let (u, sv, vt) = thinSVD(q, rows: r, columns: r)
        if let smallest = sv.last, smallest > 0, sv[0] / smallest < 100 {
            // Q⁻¹ = V·Σ⁻¹·Uᵀ
            var inverseSigmaUt = [Float](repeating: 0, count: r * r)
            for k in 0..<r { for y in 0..<r { inverseSigmaUt[k * r + y] = u[y * r + k] / sv[k] } }
            let qInverse = product(vt, inverseSigmaUt, r, r, r, transposeA: true)
            a = product(q, a, r, r, n)
            b = product(b, qInverse, out, r, r)
            aligned = true
        }
    }
    if !aligned {
        for j in 0..<min(r, t.inner) {
            var agree: Float = 0
            for i in 0..<n { agree += a[j * n + i] * old[j * n + i] }
            guard agree < 0 else { continue }
            for i in 0..<n { a[j * n + i] = -a[j * n + i] }
            for i in 0..<out { b[i * r + j] = -b[i * r + j] }
        }
    }
    for i in 0..<r * n { p[m.aOffset + i] = a[i] }
    for i in 0..<out * r { p[m.bOffset + i] = b[i] }
}

/// The outer optimizer of DiLoCo and federated rounds, in ΔW space: the outer gradient is
/// G = ΔW_global − Σᵢ wᵢ·ΔWᵢ (the workers' adapters weighted by trained tokens), Nesterov momentum
/// M ← μ·M + G, and ΔW_new = ΔW_global − η·(G + μ·M), refactored to the job's rank. With η = 1 and μ = 0 the new
/// adapter is the best rank-r approximation of the workers' mean update.
public final class OuterOptimizer: @unchecked Sendable {
    public let learningRate: Float
    public let momentum: Float
    /// Momentum is kept as a low-rank product truncated to this multiple of the module rank.
    public let momentumRankFactor: Int
    private var momentumState: [LowRankDelta?]

    public init(modules: Int, learningRate: Float, momentum: Float, momentumRankFactor: Int = 2) {
        self.learningRate = learningRate
        self.momentum = momentum
        self.momentumRankFactor = momentumRankFactor
        momentumState = Array(repeating: nil, count: modules)
    }

    /// The momentum as one vector (per module: the inner size, then L and R), for checkpoints.
    public func state() -> [Float] {
        var out: [Float] = []
        for m in momentumState {
            out.append(Float(m?.inner ?? 0))
            if let m {
                out += m.left
                out += m.right
            }
        }
        return out
    }

    /// Restores `state()` for an adapter's modules; false (and no change) when it does not fit.
    public func restore(_ state: [Float], modules: [LoRAModule]) -> Bool {
        guard modules.count == momentumState.count else { return false }
        var restored: [LowRankDelta?] = []
        var i = 0
        for m in modules {
            guard i < state.count, state[i] >= 0, state[i] <= 1e6, let k = Int(exactly: state[i]) else { return false }
            i += 1
            if k == 0 {
                restored.append(nil)
                continue
            }
            let l = k * m.outFeatures
            let r = k * m.inFeatures
            guard i + l + r <= state.count else { return false }
            restored.append(
                LowRankDelta(
                    rows: m.outFeatures, columns: m.inFeatures, left: Array(state[i..<i + l]),
                    right: Array(state[i + l..<i + l + r])))
            i += l + r
        }
        guard i == state.count else { return false }
        momentumState = restored
        return true
    }

    /// Updates the global adapter in place from the workers' adapters (flat buffers of the same layout), combined
    /// by `aggregation`; returns what each worker's update measured and how far it was scaled down.
    @discardableResult
    public func step(
        global: LoRAAdapter, workers: [(parameters: [Float], weight: Double)],
        aggregation: Aggregation = Aggregation()
    ) -> [Aggregation.Participant] {
        let g = UnsafeMutableBufferPointer(start: global.parameters.pointer, count: global.parameters.count)
        let participants = aggregation.participants(global: global, workers: workers)
        let robust = aggregation.rule != .mean && workers.filter({ $0.weight > 0 }).count >= 3
        let total = workers.reduce(0) { $0 + $1.weight }
        guard total > 0 else { return participants }
        let weights = zip(workers, participants).map { $0.weight / total * $1.scale }
        for (index, m) in global.modules.enumerated() {
            let current = LowRankDelta(module: m, parameters: UnsafeBufferPointer(g))
            var gradient: LowRankDelta
            if robust {
                // G = ΔW_global − robust(ΔWᵢ), entry by entry: a full-rank matrix, so the step is taken on the
                // dense matrices and only its result brought back to the module's rank (with η = 1, μ = 0 the best
                // rank-r approximation of the robust combination). Momentum keeps a truncated G.
                let target = aggregation.combine(
                    module: m, global: current, workers: workers, participants: participants)
                let before = current.dense()
                var update = zip(before, target).map { $0 - $1 }
                if momentum > 0 {
                    let g = AdapterMerge.truncate(
                        dense: update, rows: m.outFeatures, columns: m.inFeatures,
                        rank: min(m.rank * momentumRankFactor, m.outFeatures, m.inFeatures)
                    ).0
                    let mom = advanceMomentum(index, m, gradient: g)
                    for (i, x) in mom.dense().enumerated() { update[i] += momentum * x }
                }
                let next = zip(before, update).map { $0 - learningRate * $1 }
                refactor(
                    AdapterMerge.truncate(dense: next, rows: m.outFeatures, columns: m.inFeatures, rank: m.rank).0,
                    into: m, parameters: g)
                continue
            } else {
                // G = Σ wᵢ·sᵢ·(ΔW_global − ΔWᵢ) with Σ wᵢ = 1: the token-weighted mean of the (clipped) updates.
                if participants.allSatisfy({ $0.scale == 1 }) {
                    gradient = current
                } else {
                    gradient = LowRankDelta(rows: m.outFeatures, columns: m.inFeatures)
                    gradient.add(current, weight: Float(weights.reduce(0, +)))
                }
                for (w, weight) in zip(workers, weights) where weight > 0 {
                    w.parameters.withUnsafeBufferPointer { p in
                        gradient.add(LowRankDelta(module: m, parameters: p), weight: -Float(weight))
                    }
                }
                gradient = gradient.truncated(rank: m.rank * (workers.count + 1))
            }
            var update = gradient
            if momentum > 0 { update.add(advanceMomentum(index, m, gradient: gradient), weight: momentum) }
            var next = current
            next.add(update, weight: -learningRate)
            refactor(next, into: m, parameters: g)
        }
        return participants
    }
}

extension OuterOptimizer {
    /// Nesterov's momentum of module `index`: M ← μ·M + G, kept as a low-rank product truncated to
    /// `momentumRankFactor` × r; returns the new M.
    fileprivate func advanceMomentum(_ index: Int, _ m: LoRAModule, gradient: LowRankDelta) -> LowRankDelta {
        var next = LowRankDelta(rows: m.outFeatures, columns: m.inFeatures)
        if let mom = momentumState[index] { next.add(mom, weight: momentum) }
        next.add(gradient, weight: 1)
        let mom = next.truncated(rank: m.rank * momentumRankFactor)
        momentumState[index] = mom
        return mom
    }
}

/// How two adapters' updates compare on one module.
public struct ModuleComparison: Sendable {
    public var layer: Int
    public var target: LoRATarget
    /// ‖ΔW‖ (Frobenius) of each; 0 where an adapter lacks the module.
    public var normA: Double
    public var normB: Double
    /// ⟨ΔW_a, ΔW_b⟩ / (‖ΔW_a‖·‖ΔW_b‖); nil when either is zero.
    public var cosine: Double?
    /// Effective rank of each update, exp(entropy of σᵢ²/Σσ²): 1 for a single direction, r for r equal ones.
    public var effectiveRankA: Double
    public var effectiveRankB: Double
}

extension LowRankDelta {
    /// ⟨self, other⟩ in the Frobenius sense, from the factors: trace((L₁ᵀL₂)(R₂R₁ᵀ)), never forming ΔW.
    public func dot(_ other: LowRankDelta) -> Double {
        guard inner > 0, other.inner > 0 else { return 0 }
        let ll = product(left, other.left, inner, rows, other.inner, transposeA: true)  // k₁×k₂
        let rr = product(other.right, right, other.inner, columns, inner, transposeB: true)  // k₂×k₁
        var trace = 0.0
        for i in 0..<inner {
            for j in 0..<other.inner { trace += Double(ll[i * other.inner + j]) * Double(rr[j * inner + i]) }
        }
        return trace
    }

    /// exp(entropy of the normalised squared singular values).
    public var effectiveRank: Double {
        guard inner > 0 else { return 0 }
        let (_, s, _) = truncatedSVD(left: left, right: right, rows: rows, inner: inner, columns: columns, rank: inner)
        let energy = s.map { Double($0) * Double($0) }
        let total = energy.reduce(0, +)
        guard total > 0 else { return 0 }
        let entropy = energy.reduce(0.0) { h, e in e > 0 ? h - (e / total) * log(e / total) : h }
        return exp(entropy)
    }
}

/// Per-module comparison of two adapters of the same base (modules of either, in layer order).
public func compareAdapters(_ a: LoRAAdapter, _ b: LoRAAdapter) -> [ModuleComparison] {
    var keys = Set<Int>()
    for m in a.modules + b.modules { keys.insert(LoRAAdapter.key(m.layer, m.target)) }
    return keys.sorted().map { key in
        let (layer, target) = LoRAAdapter.module(ofKey: key)
        func delta(_ x: LoRAAdapter) -> LowRankDelta? {
            x.module(layer: layer, target: target).map {
                LowRankDelta(module: $0, parameters: UnsafeBufferPointer(x.parameters.buffer))
            }
        }
        let da = delta(a)
        let db = delta(b)
        let na = da.map { $0.dot($0).squareRoot() } ?? 0
        let nb = db.map { $0.dot($0).squareRoot() } ?? 0
        var cosine: Double?
        if let da, let db, na > 0, nb > 0 { cosine = da.dot(db) / (na * nb) }
        return ModuleComparison(
            layer: layer, target: target, normA: na, normB: nb, cosine: cosine, effectiveRankA: da?.effectiveRank ?? 0,
            effectiveRankB: db?.effectiveRank ?? 0)
    }
}
