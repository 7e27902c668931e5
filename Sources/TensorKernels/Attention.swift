// Attention: causal scaled-dot-product attention with grouped-query heads (GQA), for training (all queries at
// once) and for cached generation (new queries against a key/value cache).
//
// Dims:
//   B   = sequences in the batch
//   T   = query rows per sequence; query t sits at position `start + t`
//   S   = key/value capacity per sequence (the cache length); keys 0..<start+T are valid
//   NH  = query heads, NKV = key/value heads (NH % NKV == 0); query head h reads kv head h / (NH/NKV)
//   HS  = head size; scale = 1/sqrt(HS) unless the model sets another (Gemma's query_pre_attn_scalar^-1/2)
// Layouts (row-major): q, out (B, T, NH, HS); k, v (B, S, NKV, HS); lse (B, NH, T).
// Query t attends to keys s ≤ start + t (causal; Docs/FORMATS.md §9). With `keyStarts` (B, T), query t of sequence b
// also ignores keys before keyStarts[b, t]: several documents packed into one row never attend to each other.
// With a sliding window W (Mistral v0.1, Gemma 2/3's local layers), query t also ignores keys s ≤ start + t − W:
// it sees itself and the W − 1 keys before it.
// With a soft cap c (Gemma 2), a score z becomes c·tanh(z/c) before the softmax; its backward multiplies dS by
// 1 − tanh²(z/c).
//
// Forward per (b, h) and tile of queries: scores = scale·Q·Kᵀ (sgemm), masked softmax, out = P·V (sgemm).
// It saves only lse = log Σ exp(scores) per query row; the backward recomputes P = exp(scores − lse)
// (FlashAttention's recomputation, Dao et al. 2022), so memory stays O(T) per head rather than O(T²):
//   dV += Pᵀ·dO     dP = dO·Vᵀ     D_t = Σ dO_t ⊙ O_t     dS = P ⊙ (dP − D)
//   dQ += scale·dS·K     dK += scale·dSᵀ·Q

import CKernels
import Foundation

/// Shape of an attention call.
public struct AttentionShape: Sendable, Equatable {
    /// B, sequences.
    public var batch: Int
    /// T, query rows per sequence.
    public var queries: Int
    /// S, key/value rows stored per sequence (≥ start + T).
    public var keyCapacity: Int
    /// Position of the first query; keys before it come from the cache.
    public var start: Int
    /// NH, query heads.
    public var heads: Int
    /// NKV, key/value heads; divides `heads`.
    public var kvHeads: Int
    /// HS, head size.
    public var headDim: Int
    /// The factor on q·k (1/√HS by default).
    public var scale: Float
    /// c of the score soft cap c·tanh(z/c) (Gemma 2), or nil.
    public var softCap: Float?
    /// W, the sliding window (a query sees itself and the W − 1 keys before it), or nil for none.
    public var window: Int?

    /// Describes an attention call; see the file header for the layouts.
    public init(
        batch: Int, queries: Int, keyCapacity: Int, start: Int, heads: Int, kvHeads: Int, headDim: Int,
        scale: Float? = nil, softCap: Float? = nil, window: Int? = nil
    ) {
        precondition(batch >= 0 && queries >= 0 && start >= 0 && heads > 0 && kvHeads > 0 && headDim > 0)
        precondition(softCap.map { $0 > 0 } ?? true, "attention: soft cap must be positive")
        precondition(window.map { $0 > 0 } ?? true, "attention: window must be positive")
        precondition(heads % kvHeads == 0, "attention: \(heads) heads not divisible by \(kvHeads) kv heads")
        precondition(
            start + queries <= keyCapacity, "attention: start \(start) + T \(queries) > capacity \(keyCapacity)")
        self.batch = batch
        self.queries = queries
        self.keyCapacity = keyCapacity
        self.start = start
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.scale = scale ?? 1 / Float(headDim).squareRoot()
        self.softCap = softCap
        self.window = window
    }

    var qRowStride: Int { heads * headDim }
    var kvRowStride: Int { kvHeads * headDim }
    var groupSize: Int { heads / kvHeads }
}

private let queryTile = 64

/// Attention forward.
///
/// - Parameters:
///   - out: (B, T, NH, HS), overwritten.
///   - lse: (B, NH, T) receives the log-sum-exp of each query's scores, or nil when no backward follows.
///   - q: (B, T, NH, HS), rotary embedding already applied.
///   - k: (B, S, NKV, HS), rows `0..<start+T` valid.
///   - v: (B, S, NKV, HS).
///   - shape: The dimensions.
///   - keyStarts: (B, T) the first key position each query may see (its document's start), or nil for 0.
public func attentionForward(
    out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?, q: UnsafePointer<Float>,
    k: UnsafePointer<Float>, v: UnsafePointer<Float>, shape: AttentionShape, keyStarts: UnsafePointer<Int32>? = nil
) {
    let (B, T, S, NH, HS) = (shape.batch, shape.queries, shape.keyCapacity, shape.heads, shape.headDim)
    guard B > 0, T > 0 else { return }
    let start = shape.start
    let tiles = (T + queryTile - 1) / queryTile
    _ = BLAS.configured
    Parallel.forEach(B * NH * tiles) { task in
        let tile = task % tiles
        let h = (task / tiles) % NH
        let b = task / (tiles * NH)
        let g = h / shape.groupSize
        let t0 = tile * queryTile
        let t1 = min(T, t0 + queryTile)
        let rows = t1 - t0
        let keys = start + t1  // keys visible to the last row of the tile
        let qTile = q + (b * T + t0) * shape.qRowStride + h * HS
        let kHead = k + b * S * shape.kvRowStride + g * HS
        let vHead = v + b * S * shape.kvRowStride + g * HS
        PanelPool.shared.withPanel(queryTile * (start + T)) { scores in
            BLAS.sgemm(
                transA: false, transB: true, m: rows, n: keys, k: HS, alpha: shape.scale,
                a: qTile, lda: shape.qRowStride, b: kHead, ldb: shape.kvRowStride, beta: 0, c: scores, ldc: keys)
            for r in 0..<rows {
                let row = scores + r * keys
                let visible = start + t0 + r + 1
                let first = firstKey(keyStarts, b * T + t0 + r, visible, window: shape.window)
                if let cap = shape.softCap { softCapInPlace(row + first, visible - first, cap: cap, derivative: nil) }
                let m = maxValue(row + first, visible - first)
                let sum = expShiftedInPlace(row + first, visible - first, shift: m)
                scaleInPlace(row + first, visible - first, by: 1 / sum)
                if first > 0 { row.update(repeating: 0, count: first) }
                if visible < keys { (row + visible).update(repeating: 0, count: keys - visible) }
                lse?[(b * NH + h) * T + t0 + r] = m + Foundation.log(sum)
            }
            BLAS.sgemm(
                transA: false, transB: false, m: rows, n: HS, k: keys, alpha: 1,
                a: scores, lda: keys, b: vHead, ldb: shape.kvRowStride, beta: 0,
                c: out + (b * T + t0) * shape.qRowStride + h * HS, ldc: shape.qRowStride)
        }
    }
}

/// Attention backward; `dQ`, `dK` and `dV` accumulate.
///
/// - Parameters:
///   - dQ: (B, T, NH, HS) `+=`.
///   - dK: (B, S, NKV, HS) `+=` (rows `0..<start+T`).
///   - dV: (B, S, NKV, HS) `+=`.
///   - dOut: (B, T, NH, HS).
///   - q, k, v: The forward inputs.
///   - lse: (B, NH, T), saved by the forward.
///   - recomputedOut: (B, T, NH, HS) receives the forward output P·V again, for a caller that needs it (the
///     o projection's LoRA gradient) without having kept it; nil when none does. The backward itself needs
///     only P and dP: its row term rowsum(dO ⊙ O) equals rowsum(P ⊙ dP).
///   - shape: The dimensions.
///   - keyStarts: As in the forward.
public func attentionBackward(
    dQ: UnsafeMutablePointer<Float>, dK: UnsafeMutablePointer<Float>, dV: UnsafeMutablePointer<Float>,
    dOut: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    lse: UnsafePointer<Float>, recomputedOut: UnsafeMutablePointer<Float>? = nil, shape: AttentionShape,
    keyStarts: UnsafePointer<Int32>? = nil
) {
    let (B, T, S, NH, HS) = (shape.batch, shape.queries, shape.keyCapacity, shape.heads, shape.headDim)
    guard B > 0, T > 0 else { return }
    let NKV = shape.kvHeads
    let start = shape.start
    let scale = shape.scale
    let (qs, kvs) = (shape.qRowStride, shape.kvRowStride)
    _ = BLAS.configured
    // One task per (sequence, kv head): it owns dK/dV of that head and dQ of the query heads in its group.
    Parallel.forEach(B * NKV) { task in
        let g = task % NKV
        let b = task / NKV
        let kHead = k + b * S * kvs + g * HS
        let vHead = v + b * S * kvs + g * HS
        let dKHead = dK + b * S * kvs + g * HS
        let dVHead = dV + b * S * kvs + g * HS
        let panels = shape.softCap == nil ? 2 : 3
        PanelPool.shared.withPanel(panels * queryTile * (start + T)) { p in
            let dP = p + queryTile * (start + T)
            let capDerivative = dP + queryTile * (start + T)  // 1 − tanh², soft cap only
            for h in g * shape.groupSize..<(g + 1) * shape.groupSize {
                var t0 = 0
                while t0 < T {
                    let t1 = min(T, t0 + queryTile)
                    let rows = t1 - t0
                    let keys = start + t1
                    let rowOffset = (b * T + t0) * qs + h * HS
                    // P = exp(scale·Q·Kᵀ − lse), causally masked.
                    BLAS.sgemm(
                        transA: false, transB: true, m: rows, n: keys, k: HS, alpha: scale,
                        a: q + rowOffset, lda: qs, b: kHead, ldb: kvs, beta: 0, c: p, ldc: keys)
                    // dP = dO·Vᵀ
                    BLAS.sgemm(
                        transA: false, transB: true, m: rows, n: keys, k: HS, alpha: 1,
                        a: dOut + rowOffset, lda: qs, b: vHead, ldb: kvs, beta: 0, c: dP, ldc: keys)
                    for r in 0..<rows {
                        let visible = start + t0 + r + 1
                        let first = firstKey(keyStarts, b * T + t0 + r, visible, window: shape.window)
                        let rowLSE = lse[(b * NH + h) * T + t0 + r]
                        let pRow = p + r * keys
                        let dPRow = dP + r * keys
                        if let cap = shape.softCap {
                            softCapInPlace(
                                pRow + first, visible - first, cap: cap, derivative: capDerivative + r * keys + first)
                        }
                        // P = exp(S − lse) and dS = P ⊙ (dP − rowsum(P ⊙ dP)) over the visible keys; zero elsewhere.
                        cairn_softmax_backward_row(pRow + first, dPRow + first, visible - first, rowLSE)
                        if shape.softCap != nil {
                            let d = capDerivative + r * keys
                            for s in first..<visible { dPRow[s] *= d[s] }
                        }
                        for s in 0..<first {
                            pRow[s] = 0
                            dPRow[s] = 0
                        }
                        for s in visible..<keys {
                            pRow[s] = 0
                            dPRow[s] = 0
                        }
                    }
                    if let recomputedOut {
                        // O = P·V, as the forward computed it.
                        BLAS.sgemm(
                            transA: false, transB: false, m: rows, n: HS, k: keys, alpha: 1,
                            a: p, lda: keys, b: vHead, ldb: kvs, beta: 0, c: recomputedOut + rowOffset, ldc: qs)
                    }
                    // dV += Pᵀ·dO
                    BLAS.sgemm(
                        transA: true, transB: false, m: keys, n: HS, k: rows, alpha: 1,
                        a: p, lda: keys, b: dOut + rowOffset, ldb: qs, beta: 1, c: dVHead, ldc: kvs)
                    // dQ += scale·dS·K
                    BLAS.sgemm(
                        transA: false, transB: false, m: rows, n: HS, k: keys, alpha: scale,
                        a: dP, lda: keys, b: kHead, ldb: kvs, beta: 1, c: dQ + rowOffset, ldc: qs)
                    // dK += scale·dSᵀ·Q
                    BLAS.sgemm(
                        transA: true, transB: false, m: keys, n: HS, k: rows, alpha: scale,
                        a: dP, lda: keys, b: q + rowOffset, ldb: qs, beta: 1, c: dKHead, ldc: kvs)
                    t0 = t1
                }
            }
        }
    }
}

/// The reference for `attentionForward`: explicit loops in Double, one query at a time.
public func attentionForwardNaive(
    out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?, q: UnsafePointer<Float>,
    k: UnsafePointer<Float>, v: UnsafePointer<Float>, shape: AttentionShape, keyStarts: UnsafePointer<Int32>? = nil
) {
    let (B, T, S, NH, HS) = (shape.batch, shape.queries, shape.keyCapacity, shape.heads, shape.headDim)
    let (qs, kvs) = (shape.qRowStride, shape.kvRowStride)
    for b in 0..<B {
        for t in 0..<T {
            for h in 0..<NH {
                let g = h / shape.groupSize
                let qRow = q + (b * T + t) * qs + h * HS
                let visible = shape.start + t + 1
                var first = keyStarts.map { Int($0[b * T + t]) } ?? 0
                if let w = shape.window { first = max(first, visible - w) }
                var scores = [Double](repeating: -.infinity, count: visible)
                for s in first..<visible {
                    let kRow = k + (b * S + s) * kvs + g * HS
                    var sum = 0.0
                    for i in 0..<HS { sum += Double(qRow[i]) * Double(kRow[i]) }
                    scores[s] = sum * Double(shape.scale)
                    if let cap = shape.softCap { scores[s] = Double(cap) * Foundation.tanh(scores[s] / Double(cap)) }
                }
                let m = scores.max()!
                let z = scores.reduce(0) { $0 + Foundation.exp($1 - m) }
                lse?[(b * NH + h) * T + t] = Float(m + Foundation.log(z))
                let o = out + (b * T + t) * qs + h * HS
                for i in 0..<HS {
                    var acc = 0.0
                    for s in first..<visible {
                        acc += Foundation.exp(scores[s] - m) / z * Double(v[(b * S + s) * kvs + g * HS + i])
                    }
                    o[i] = Float(acc)
                }
            }
        }
    }
}

/// The first key a query row may see: its document's start and the sliding window's, within the causal horizon.
@inline(__always)
private func firstKey(_ keyStarts: UnsafePointer<Int32>?, _ row: Int, _ visible: Int, window: Int?) -> Int {
    var first = 0
    if let keyStarts {
        first = Int(keyStarts[row])
        precondition(first >= 0 && first < visible, "attention: key start \(first) outside 0..<\(visible)")
    }
    if let window { first = max(first, visible - window) }
    return first
}

/// z → c·tanh(z/c) over `count` scores; with `derivative`, also writes 1 − tanh²(z/c) there.
@inline(__always)
private func softCapInPlace(
    _ z: UnsafeMutablePointer<Float>, _ count: Int, cap: Float, derivative: UnsafeMutablePointer<Float>?
) {
    for i in 0..<count {
        let t = Foundation.tanh(z[i] / cap)
        z[i] = cap * t
        derivative?[i] = 1 - t * t
    }
}
