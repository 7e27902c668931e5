// Aggregation: how a diloco or federated round combines its participants' adapters, robustly when asked.
//
// Each participant i returns an adapter whose update, module by module, is Uᵢ = ΔWᵢ − ΔW_global. Clipping scales
// Uᵢ so that its norm over all modules (Frobenius, from the factors: no out×in matrix is formed) is at most
// `clipNorm`; a participant that scales its update up gets the weight of a normal one. The mean is the
// token-weighted mean of the (clipped) updates, exact in ΔW space. The coordinate-wise median and the trimmed mean
// are taken over each entry of the (clipped) ΔWᵢ, unweighted, on the out×in matrix of one module at a time; the
// result is brought back to a rank by a truncated SVD like every ΔW-space combination. With fewer than three
// participants there is nothing to out-vote, and the mean is used.

import Llama
import TensorKernels

/// How the round's participants are combined.
public struct Aggregation: Sendable, Equatable {
    public enum Rule: String, Sendable, CaseIterable {
        /// The token-weighted mean of the updates.
        case mean
        /// The coordinate-wise median of the participants' ΔW.
        case median
        /// The coordinate-wise mean after dropping the `trimFraction` largest and smallest values of each entry.
        case trimmedMean = "trimmed_mean"
    }

    /// What one participant's update measured in a round.
    public struct Participant: Sendable, Equatable {
        /// ‖ΔWᵢ − ΔW_global‖ over all modules.
        public var norm: Double
        /// The factor its update was scaled by (1: not clipped).
        public var scale: Double
    }

    public var rule: Rule
    /// The fraction of participants dropped at each end of each entry (trimmed mean), at least one.
    public var trimFraction: Double
    /// The largest update norm kept (0: no clipping).
    public var clipNorm: Double

    public init(rule: Rule = .mean, trimFraction: Double = 0.2, clipNorm: Double = 0) {
        self.rule = rule
        self.trimFraction = trimFraction
        self.clipNorm = clipNorm
    }

    /// Values dropped at each end of an entry for `n` participants: ⌈trim·n⌉, at least 1 and leaving at least 1.
    public func trimmed(of n: Int) -> Int {
        guard n >= 3 else { return 0 }
        let k = Int((trimFraction * Double(n)).rounded(.up))
        return min(max(1, k), (n - 1) / 2)
    }

    /// Each participant's update norm and clipping factor.
    func participants(global: LoRAAdapter, workers: [(parameters: [Float], weight: Double)]) -> [Participant] {
        let g = UnsafeBufferPointer(global.parameters.buffer)
        var squares = [Double](repeating: 0, count: workers.count)
        for m in global.modules {
            let current = LowRankDelta(module: m, parameters: g)
            for (i, w) in workers.enumerated() {
                var update = w.parameters.withUnsafeBufferPointer { LowRankDelta(module: m, parameters: $0) }
                update.add(current, weight: -1)
                squares[i] += max(0, update.dot(update))
            }
        }
        return squares.map { square in
            let norm = square.squareRoot()
            let scale = clipNorm > 0 && norm > clipNorm ? clipNorm / norm : 1
            return Participant(norm: norm, scale: scale)
        }
    }

    /// The robust combination of one module's (clipped) ΔWᵢ, dense (out×in, row-major), over the participants
    /// with a positive weight.
    func combine(
        module m: LoRAModule, global: LowRankDelta, workers: [(parameters: [Float], weight: Double)],
        participants: [Participant]
    ) -> [Float] {
        let g = global.dense()
        var matrices: [[Float]] = []
        for (w, p) in zip(workers, participants) where w.weight > 0 {
            var d = w.parameters.withUnsafeBufferPointer { LowRankDelta(module: m, parameters: $0) }.dense()
            if p.scale < 1 {
                let s = Float(p.scale)
                for i in 0..<d.count { d[i] = g[i] + s * (d[i] - g[i]) }
            }
            matrices.append(d)
        }
        let n = matrices.count
        let k = rule == .trimmedMean ? trimmed(of: n) : 0
        var out = [Float](repeating: 0, count: g.count)
        var column = [Float](repeating: 0, count: n)
        for i in 0..<g.count {
            for j in 0..<n { column[j] = matrices[j][i] }
            column.sort()
            switch rule {
            case .median:
                out[i] = n % 2 == 1 ? column[n / 2] : (column[n / 2 - 1] + column[n / 2]) / 2
            case .trimmedMean:
                var sum: Float = 0
                for j in k..<(n - k) { sum += column[j] }
                out[i] = sum / Float(n - 2 * k)
            case .mean:
                out[i] = column.reduce(0, +) / Float(n)
            }
        }
        return out
    }
}
