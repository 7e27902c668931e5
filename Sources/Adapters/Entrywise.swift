// Entrywise: TIES, DARE and magnitude pruning act on single entries of ΔW, so they need the dense update. Eight
// inputs' dense ΔW for one module is 8·out·in floats (28 MB for SmolLM2's MLP, 1.4 GB for a 7B model's), and
// passes over it are what such a merge costs, so it is never stored. Each input's rows are regenerated from its
// factors (an sgemm of inner dimension r: little arithmetic) one cache-sized block at a time, in two passes:
//
//   1. thresholds: for each input, the k-th largest magnitude, exactly. A seeded sample of entries brackets it;
//      one pass counts the entries above the bracket and collects those inside it (a few percent); sorting the
//      collected gives the k-th. When the bracket misses (a distribution the sample misjudged), the input is
//      materialised once and a radix select (TensorKernels.magnitudeThreshold) decides.
//   2. combine: per block, every input trimmed (or DARE-dropped) in cache, then summed, or signs elected and the
//      agreeing entries averaged, into the output rows.
//
// Ties at the threshold keep the first entries in index order, as a sort would: when the k-th magnitude is shared
// across the cut, a third pass counts equal entries per block and gives each block its quota.

import Foundation
import Synchronization
import TensorKernels

extension AdapterMerge {
    /// TIES, DARE and magnitude pruning on dense ΔW's (row-major, equal sizes) with their weights.
    public static func entrywise(_ parts: [([Float], Double)], method: MergeMethod, density: Double, seed: UInt64)
        -> [Float]
    {
        guard let n = parts.first?.0.count else { return [] }
        precondition(parts.allSatisfy { $0.0.count == n }, "entrywise: tensors of different sizes")
        return entrywise(
            parts.map { (EntrywiseSource.dense($0.0), $0.1) }, rows: n, columns: 1, method: method, density: density,
            seed: seed)
    }

    /// TIES, DARE and magnitude pruning on ΔW's given as factors (equal shapes), without storing their dense forms.
    public static func entrywise(
        _ parts: [(LowRankDelta, Double)], method: MergeMethod, density: Double, seed: UInt64
    ) -> [Float] {
        guard let first = parts.first?.0 else { return [] }
        precondition(
            parts.allSatisfy { $0.0.rows == first.rows && $0.0.columns == first.columns },
            "entrywise: shapes differ")
        return entrywise(
            parts.map { (EntrywiseSource.factors($0.0), $0.1) }, rows: first.rows, columns: first.columns,
            method: method, density: density, seed: seed)
    }

    static func entrywise(
        _ parts: [(EntrywiseSource, Double)], rows m: Int, columns n: Int, method: MergeMethod, density: Double,
        seed: UInt64
    ) -> [Float] {
        let count = parts.count
        let sources = parts.map(\.0)
        let weights = parts.map { Float($0.1) }
        // Blocks of whole rows: all inputs' rows, plus two rows of scratch, fit in about 512 KiB (within L2).
        let blockRows = max(1, (1 << 17) / ((count + 2) * n))
        let blocks = (m + blockRows - 1) / blockRows
        let layout = BlockLayout(rows: m, columns: n, blockRows: blockRows, blocks: blocks)

        let trims: [Trim]
        switch method {
        case .ties, .magnitudePrune:
            trims = sources.map { trim($0, layout: layout, keep: Int(density * Double(m * n))) }
        default:
            trims = []
        }
        let dare = method == .dareLinear || method == .dareTies
        let elect = method == .ties || method == .dareTies
        let dropScale = Float(1 / density)
        let dropLimit = UInt64(density * Double(UInt64(1) << 53))

        var out = [Float](repeating: 0, count: m * n)
        out.withUnsafeMutableBufferPointer { o in
            let result = UncheckedBox(o)
            let workers = min(Parallel.threadCount, blocks)
            Parallel.forEach(workers) { w in
                let out = result.value.baseAddress!
                let stride = blockRows * n
                let scratch = UnsafeMutablePointer<Float>.allocate(capacity: (count + 2) * stride)
                defer { scratch.deallocate() }
                for b in Swift.stride(from: w, to: blocks, by: workers) {
                    let rows = layout.rows(of: b)
                    let len = rows.count * n
                    let base = rows.lowerBound * n
                    for i in 0..<count {
                        let x = scratch + i * len
                        sources[i].fill(rows: rows, columns: n, into: x)
                        if !trims.isEmpty {
                            trims[i].apply(x, count: len, block: b)
                        } else if dare {
                            let s = seed &+ UInt64(i) &* 0xD1B5_4A32_D192_ED03
                            for j in 0..<len {
                                x[j] =
                                    mix(s &+ UInt64(base + j) &* 0x9E37_79B9_7F4A_7C15) >> 11 < dropLimit
                                    ? x[j] * dropScale : 0
                            }
                        }
                    }
                    let o = out + base
                    guard elect else {
                        for j in 0..<len { o[j] = 0 }
                        for i in 0..<count {
                            let x = scratch + i * len
                            let wi = weights[i]
                            for j in 0..<len { o[j] += wi * x[j] }
                        }
                        continue
                    }
                    // A sign per entry by the summed (unweighted) mass; the mean of the weighted entries that agree.
                    let mass = scratch + count * len
                    let agreeing = mass + len
                    for j in 0..<len {
                        mass[j] = 0
                        agreeing[j] = 0
                        o[j] = 0
                    }
                    for i in 0..<count {
                        let x = scratch + i * len
                        for j in 0..<len { mass[j] += x[j] }
                    }
                    // The elected sign as ±1; an entry agrees when x·sign > 0 (nonzero, same sign). Branch-free.
                    let sign = mass
                    for j in 0..<len { sign[j] = mass[j] >= 0 ? 1 : -1 }
                    for i in 0..<count {
                        let x = scratch + i * len
                        let wi = weights[i]
                        for j in 0..<len {
                            let agrees = x[j] * sign[j] > 0
                            o[j] += agrees ? wi * x[j] : 0
                            agreeing[j] += agrees ? 1 : 0
                        }
                    }
                    for j in 0..<len { o[j] = agreeing[j] > 0 ? o[j] / agreeing[j] : 0 }
                }
            }
        }
        return out
    }

    /// How an input is trimmed to its `keep` entries of largest magnitude (see the file comment).
    static func trim(_ source: EntrywiseSource, layout: BlockLayout, keep k: Int) -> Trim {
        let total = layout.rows * layout.columns
        if k >= total { return Trim(kind: .keepAll) }
        if k <= 0 { return Trim(kind: .keepNone) }
        var found = total >= 1 << 16 ? bracketedThreshold(source, layout: layout, keep: k) : nil
        if found == nil {
            // Small, or the sample misjudged the distribution: materialise this input once, radix-select.
            var dense = [Float](repeating: 0, count: total)
            dense.withUnsafeMutableBufferPointer {
                source.fill(rows: 0..<layout.rows, columns: layout.columns, into: $0.baseAddress!)
                found = magnitudeThreshold(UnsafeBufferPointer($0), keep: k)
            }
        }
        let (threshold, equalKept, equalTotal) = found!
        // Equal magnitudes are all kept (or the threshold is 0, where keeping a zero changes nothing): one test.
        if equalKept == equalTotal || threshold == 0 { return Trim(kind: .threshold(threshold)) }
        // Otherwise each block keeps its share of them, in index order.
        let equalPerBlock = perBlock(source, layout: layout) { x, len in
            var e = 0
            for j in 0..<len where x[j].bitPattern & 0x7FFF_FFFF == threshold { e += 1 }
            return e
        }
        var quotas: [Int] = []
        var left = equalKept
        for e in equalPerBlock {
            quotas.append(min(e, left))
            left -= min(e, left)
        }
        return Trim(kind: .ties(threshold, quotas))
    }

    /// The k-th largest magnitude found through a sampled bracket and one counting pass, or nil when the bracket
    /// does not contain it.
    static func bracketedThreshold(_ source: EntrywiseSource, layout: BlockLayout, keep k: Int) -> (
        threshold: UInt32, equalKept: Int, equalTotal: Int
    )? {
        let total = layout.rows * layout.columns
        let samples = 16384
        var state: UInt64 = 0x7E57_AB1E
        let sample = source.values(
            at: (0..<samples).map { _ in
                state &+= 0x9E37_79B9_7F4A_7C15
                return Int(mix(state) % UInt64(total))
            }, columns: layout.columns)
        // The bracket: the sample's order statistics a few standard deviations either side of k's position.
        let p = Double(k) / Double(total)
        let position = Int(p * Double(samples))
        let margin = Int(4 * (Double(samples) * p * (1 - p)).squareRoot()) + 16
        func largest(_ r: Int) -> UInt32 { sample.withUnsafeBufferPointer { magnitudeThreshold($0, keep: r).0 } }
        let high = position - margin < 0 ? UInt32.max : largest(position - margin + 1)
        let low = position + margin >= samples ? 0 : largest(position + margin + 1)
        // A cap on what is collected, far above what the bracket should hold, bounds memory if it misjudged.
        let expected = Double(total) * Double(2 * margin) / Double(samples)
        let cap = Int(4 * expected / Double(layout.blocks)) + 4096
        var above = [Int](repeating: 0, count: layout.blocks)
        var candidates = [[UInt32]](repeating: [], count: layout.blocks)
        let overflow = Atomic(false)
        above.withUnsafeMutableBufferPointer { a in
            candidates.withUnsafeMutableBufferPointer { c in
                let (aboveOut, candidatesOut) = (UncheckedBox(a), UncheckedBox(c))
                let width = high &- low
                forEachBlock(source, layout: layout) { b, x, len in
                    var n = 0
                    for j in 0..<len { n += x[j].bitPattern & 0x7FFF_FFFF > high ? 1 : 0 }
                    var mine: [UInt32] = []
                    for j in 0..<len {
                        let bits = x[j].bitPattern & 0x7FFF_FFFF
                        if bits &- low <= width { mine.append(bits) }  // low ≤ bits ≤ high, rarely true
                    }
                    if mine.count > cap { overflow.store(true, ordering: .relaxed) }
                    aboveOut.value[b] = n
                    candidatesOut.value[b] = mine.count > cap ? [] : mine
                }
            }
        }
        if overflow.load(ordering: .relaxed) { return nil }
        let countAbove = above.reduce(0, +)
        let inside = candidates.flatMap { $0 }
        guard countAbove < k, countAbove + inside.count >= k else { return nil }
        // The threshold is the (k − above)-th largest inside; every entry equal to it is inside too.
        return inside.withUnsafeBufferPointer {
            $0.withMemoryRebound(to: Float.self) { magnitudeThreshold($0, keep: k - countAbove) }
        }
    }

    /// Calls `body(block, rows, length)` for every block of the source, regenerated into per-thread scratch.
    static func forEachBlock(
        _ source: EntrywiseSource, layout: BlockLayout, _ body: (Int, UnsafeMutablePointer<Float>, Int) -> Void
    ) {
        let workers = min(Parallel.threadCount, layout.blocks)
        Parallel.forEach(workers) { w in
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: layout.blockRows * layout.columns)
            defer { scratch.deallocate() }
            for b in stride(from: w, to: layout.blocks, by: workers) {
                let rows = layout.rows(of: b)
                source.fill(rows: rows, columns: layout.columns, into: scratch)
                body(b, scratch, rows.count * layout.columns)
            }
        }
    }

    /// `count(block's entries, length)` for every block, in block order.
    static func perBlock(
        _ source: EntrywiseSource, layout: BlockLayout, _ count: (UnsafeMutablePointer<Float>, Int) -> Int
    ) -> [Int] {
        var out = [Int](repeating: 0, count: layout.blocks)
        out.withUnsafeMutableBufferPointer { o in
            let box = UncheckedBox(o)
            forEachBlock(source, layout: layout) { b, x, len in box.value[b] = count(x, len) }
        }
        return out
    }
}

/// One input of an entrywise merge: its dense ΔW, whole (row-major) or as factors L·R.
enum EntrywiseSource: Sendable {
    case dense([Float])
    case factors(LowRankDelta)

    /// Writes rows `rows` (of `columns` entries each) into `out`.
    func fill(rows: Range<Int>, columns n: Int, into out: UnsafeMutablePointer<Float>) {
        switch self {
        case .dense(let a):
            a.withUnsafeBufferPointer { out.update(from: $0.baseAddress! + rows.lowerBound * n, count: rows.count * n) }
        case .factors(let d):
            guard d.inner > 0 else {
                out.update(repeating: 0, count: rows.count * n)
                return
            }
            d.left.withUnsafeBufferPointer { l in
                d.right.withUnsafeBufferPointer { r in
                    matmul(
                        out, l.baseAddress! + rows.lowerBound * d.inner, r.baseAddress!, M: rows.count, N: n,
                        K: d.inner, threads: 1)
                }
            }
        }
    }

    /// The entries at flat row-major indices.
    func values(at indices: [Int], columns n: Int) -> [Float] {
        switch self {
        case .dense(let a): return indices.map { a[$0] }
        case .factors(let d):
            return d.left.withUnsafeBufferPointer { l in
                d.right.withUnsafeBufferPointer { r in
                    indices.map { index in
                        let (row, column) = index.quotientAndRemainder(dividingBy: n)
                        var sum: Float = 0
                        for t in 0..<d.inner { sum += l[row * d.inner + t] * r[t * n + column] }
                        return sum
                    }
                }
            }
        }
    }
}

/// Rows split into blocks of `blockRows` (the last one shorter).
struct BlockLayout: Sendable {
    let rows: Int
    let columns: Int
    let blockRows: Int
    let blocks: Int

    func rows(of block: Int) -> Range<Int> { block * blockRows..<min(rows, (block + 1) * blockRows) }
}

/// How one input's entries are trimmed by magnitude.
struct Trim: Sendable {
    enum Kind: Sendable {
        case keepAll, keepNone
        /// Keep entries whose magnitude bits are ≥ the threshold.
        case threshold(UInt32)
        /// Keep those above the threshold, and of those equal to it the block's quota, first in index order.
        case ties(UInt32, [Int])
    }
    let kind: Kind

    func apply(_ x: UnsafeMutablePointer<Float>, count len: Int, block: Int) {
        switch kind {
        case .keepAll: return
        case .keepNone: x.update(repeating: 0, count: len)
        case .threshold(let t):
            for j in 0..<len { x[j] = x[j].bitPattern & 0x7FFF_FFFF < t ? 0 : x[j] }
        case .ties(let t, let quotas):
            var quota = quotas[block]
            for j in 0..<len {
                let bits = x[j].bitPattern & 0x7FFF_FFFF
                if bits > t { continue }
                if bits == t, quota > 0 {
                    quota -= 1
                    continue
                }
                x[j] = 0
            }
        }
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of a counter.
@inline(__always)
func mix(_ x: UInt64) -> UInt64 {
    var z = x
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}
