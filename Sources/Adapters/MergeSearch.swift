// MergeSearch: the merge weights (and, for the entrywise methods, the density) that minimise a held-out loss,
// found without gradients by Nelder–Mead on a box.
//
// The objective is whatever the caller measures of a candidate (the held-out loss of the merged adapter); the
// search only proposes points. It starts from the uniform merge (every weight 1/n, the density given), so the
// chosen point is never worse than the uniform merge on the data it was searched on. Points are clamped to the box
// before they are evaluated, and a point already evaluated is not evaluated again. Everything is deterministic:
// the same objective gives the same candidates in the same order.

/// Settings of a merge search.
public struct MergeSearchOptions: Sendable, Equatable {
    /// Inputs to weigh.
    public var inputs: Int
    /// Search the density too (ties, dare, magnitude-prune), starting from `density`.
    public var searchDensity: Bool
    public var density: Double
    /// Evaluations at most (the uniform merge is the first).
    public var budget: Int
    /// Weights are searched in [minWeight, maxWeight]; the density in [0.05, 1].
    public var minWeight: Double
    public var maxWeight: Double

    public init(
        inputs: Int, searchDensity: Bool = false, density: Double = 1, budget: Int = 30, minWeight: Double = 0,
        maxWeight: Double = 1.5
    ) {
        self.inputs = inputs
        self.searchDensity = searchDensity
        self.density = density
        self.budget = budget
        self.minWeight = minWeight
        self.maxWeight = maxWeight
    }
}

/// One evaluated candidate.
public struct MergeCandidate: Sendable, Equatable {
    public var weights: [Double]
    /// nil when the density is not searched.
    public var density: Double?
    public var loss: Double
}

/// What a search found.
public struct MergeSearchResult: Sendable {
    /// Every candidate, in the order evaluated (the first is the uniform merge).
    public var candidates: [MergeCandidate]
    public var best: MergeCandidate { candidates.min { $0.loss < $1.loss }! }
    public var uniform: MergeCandidate { candidates[0] }
}

public enum MergeSearch {
    /// Nelder–Mead over the weights (and density) within the box, from the uniform point.
    ///
    /// - Parameter evaluate: the loss of a candidate (weights, density or nil); lower is better. A non-finite
    ///   loss counts as +∞.
    public static func run(
        _ options: MergeSearchOptions, evaluate: ([Double], Double?) throws -> Double
    ) rethrows -> MergeSearchResult {
        try run(options, evaluateAll: { points in try points.map { try evaluate($0.weights, $0.density) } })
    }

    /// The same search, handing over the points it needs at once (the first simplex, a shrink) together, so a
    /// caller can evaluate them in parallel (one evaluation job on a cluster).
    ///
    /// - Parameter evaluateAll: the losses of the candidates, in order.
    public static func run(
        _ options: MergeSearchOptions, evaluateAll: ([(weights: [Double], density: Double?)]) throws -> [Double]
    ) rethrows -> MergeSearchResult {
        let n = options.inputs
        let dims = n + (options.searchDensity ? 1 : 0)
        let lower = [Double](repeating: options.minWeight, count: n) + (options.searchDensity ? [0.05] : [])
        let upper = [Double](repeating: options.maxWeight, count: n) + (options.searchDensity ? [1] : [])
        func clamp(_ x: [Double]) -> [Double] { (0..<dims).map { min(upper[$0], max(lower[$0], x[$0])) } }

        var candidates: [MergeCandidate] = []
        var seen: [[Double]: Double] = [:]
        /// Losses of points, evaluating (together) those not seen yet, within the budget.
        func fAll(_ xs: [[Double]]) throws -> [Double] {
            let ps = xs.map { clamp($0).map { ($0 * 1e9).rounded() / 1e9 } }
            var fresh: [[Double]] = []
            for p in ps where seen[p] == nil && !fresh.contains(p) && candidates.count + fresh.count < options.budget {
                fresh.append(p)
            }
            if !fresh.isEmpty {
                let losses = try evaluateAll(fresh.map { (Array($0[0..<n]), options.searchDensity ? $0[n] : nil) })
                for (p, l) in zip(fresh, losses) {
                    let loss = l.isFinite ? l : .infinity
                    seen[p] = loss
                    candidates.append(
                        MergeCandidate(
                            weights: Array(p[0..<n]), density: options.searchDensity ? p[n] : nil, loss: loss))
                }
            }
            return ps.map { seen[$0] ?? .infinity }
        }
        func f(_ x: [Double]) throws -> Double { try fAll([x])[0] }

        // The uniform merge, and a simplex around it: each weight (and the density) moved in turn.
        let start = [Double](repeating: 1 / Double(n), count: n) + (options.searchDensity ? [options.density] : [])
        var vertices = [start]
        for d in 0..<dims {
            var x = start
            let step = d < n ? max(0.25, 0.5 / Double(n)) : (options.density > 0.5 ? -0.3 : 0.3)
            x[d] = x[d] + step <= upper[d] ? x[d] + step : x[d] - step
            vertices.append(clamp(x))
        }
        let first = try fAll(vertices)
        var simplex: [(x: [Double], f: Double)] = Array(zip(vertices, first))
        // Standard coefficients: reflection 1, expansion 2, contraction 0.5, shrink 0.5.
        // Bounded: points already evaluated cost nothing, so iterations are capped as well as evaluations.
        var iterations = 0
        while candidates.count < options.budget, iterations < 50 * options.budget {
            iterations += 1
            simplex.sort { $0.f < $1.f }
            let worst = simplex[dims]
            var centroid = [Double](repeating: 0, count: dims)
            for v in simplex[0..<dims] { for i in 0..<dims { centroid[i] += v.x[i] / Double(dims) } }
            func along(_ t: Double) -> [Double] {
                clamp((0..<dims).map { centroid[$0] + t * (worst.x[$0] - centroid[$0]) })
            }
            let r = along(-1)
            let fr = try f(r)
            if fr < simplex[0].f {
                let e = along(-2)
                let fe = try f(e)
                simplex[dims] = fe < fr ? (e, fe) : (r, fr)
            } else if fr < simplex[dims - 1].f {
                simplex[dims] = (r, fr)
            } else {
                let c = fr < worst.f ? along(-0.5) : along(0.5)
                let fc = try f(c)
                if fc < min(fr, worst.f) {
                    simplex[dims] = (c, fc)
                } else {
                    let best = simplex[0].x
                    let shrunk = (1...dims).map { i in
                        clamp((0..<dims).map { best[$0] + 0.5 * (simplex[i].x[$0] - best[$0]) })
                    }
                    for (i, (x, fx)) in zip(shrunk, try fAll(shrunk)).enumerated() { simplex[i + 1] = (x, fx) }
                }
            }
            // Converged: every vertex at one point (nothing new can be evaluated).
            let spread = simplex.map(\.x).reduce(0.0) { m, x in
                max(m, zip(x, simplex[0].x).map { abs($0 - $1) }.max() ?? 0)
            }
            if spread < 1e-6 { break }
        }
        return MergeSearchResult(candidates: candidates)
    }
}
