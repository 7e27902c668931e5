// LlamaModel: the forward pass of a llama-family decoder (Docs/FORMATS.md §9), in fp32 over the flat weights.
//
//   x = embed(tokens) (· √C for Gemma)
//   per block:  h = RMSNorm(x)·w;  q,k,v = h·Wᵀ (+b);  [q, k = RMSNorm per head];  RoPE(q,k)
//               a = causal GQA attention(q, K, V) [scale, soft cap, sliding window of the layer]
//               x += [PostNorm](a·Woᵀ (+b));  h = RMSNorm(x)·w;  x += [PostNorm]((act(h·Wgᵀ) ⊙ h·Wuᵀ)·Wdᵀ)
//   out = RMSNorm(x)·w;  logits = out·Eᵀ (E = embedding table when tied) [c·tanh(logits/c) for Gemma 2]
// Bracketed steps belong to some families only (LlamaConfig); act is silu or tanh GELU.
//
// Dims in comments: N = B·T rows processed in one call; C = dim; the rest as LlamaConfig names them.

import Foundation
import TensorKernels

/// A loaded model: configuration, weights and RoPE table.
public final class LlamaModel: @unchecked Sendable {
    /// The architecture.
    public let config: LlamaConfig
    /// The frozen weights (Hugging Face layout).
    public let weights: LlamaWeights
    /// The distinct cos/sin tables the layers use (one for most models; Gemma 3 has a local and a global one).
    public let ropeTables: [RoPETable]
    /// Each layer's table, for sequences within LongRoPE's original context (or any, for other models).
    let layerTable: [Int]
    /// Each layer's table for longer sequences, when the model uses LongRoPE.
    let layerTableLong: [Int]?
    /// Positions this model runs: the context length, capped at `positionLimit`.
    public let maxPositions: Int

    /// The most positions Cairn prepares RoPE tables for (a 64k-position table of head size 128 is 32 MiB).
    public static let positionLimit = 1 << 16

    /// Wraps loaded weights.
    public init(weights: LlamaWeights) {
        self.weights = weights
        config = weights.config
        maxPositions = min(config.contextLength, Self.positionLimit)
        let c = weights.config
        let positions = maxPositions
        var tables: [RoPETable] = []
        var seen: [RoPEFrequencies] = []
        func table(_ f: RoPEFrequencies) -> Int {
            if let i = seen.firstIndex(of: f) { return i }
            seen.append(f)
            tables.append(RoPETable(headDim: c.headDim, positions: positions, frequencies: f))
            return tables.count - 1
        }
        layerTable = (0..<c.layers).map { table(c.ropeFrequencies(layer: $0, positions: 1)) }
        if c.ropeLongFactors != nil, let original = c.ropeOriginalContext, positions > original {
            layerTableLong = (0..<c.layers).map { table(c.ropeFrequencies(layer: $0, positions: original + 1)) }
        } else {
            layerTableLong = nil
        }
        ropeTables = tables
    }

    /// The RoPE table of layer `l` for sequences of up to `positions` positions.
    public func rope(layer l: Int, positions: Int) -> RoPETable {
        if let long = layerTableLong, let original = config.ropeOriginalContext, positions > original {
            return ropeTables[long[l]]
        }
        return ropeTables[layerTable[l]]
    }

    /// Runs `T` new tokens of each of the state's B sequences through the model, after the positions already
    /// cached, and appends their keys and values to the cache.
    ///
    /// - Parameters:
    ///   - tokens: (B, T) token ids, each below `config.vocabSize`.
    ///   - count: T, at most `state.maxChunk`, with `state.length + T ≤ state.capacity`.
    ///   - state: The cache and scratch; its length grows by T.
    /// - Returns: (B·T, dim) final hidden states after the output norm, valid until the next call on `state`.
    public func forward(tokens: UnsafePointer<Int32>, count T: Int, state: InferenceState) -> UnsafePointer<Float> {
        let c = config
        let B = state.batch
        let N = B * T
        let start = state.length
        precondition(
            T > 0 && T <= state.maxChunk, "forward: \(T) tokens per sequence, at most \(state.maxChunk) per call")
        precondition(start + T <= state.capacity, "forward: cache full (\(start) + \(T) > \(state.capacity))")
        precondition(start + T <= maxPositions, "forward: beyond the usable context \(maxPositions)")
        for i in 0..<N {
            precondition(
                tokens[i] >= 0 && Int(tokens[i]) < c.vocabSize, "forward: token id \(tokens[i]) outside the vocabulary")
        }
        for b in 0..<B {
            for t in 0..<T { state.positions[b * T + t] = Int32(start + t) }
        }
        let x = state.x.pointer
        let h = state.normed.pointer
        let q = state.q.pointer
        let k = state.k.pointer
        let v = state.v.pointer
        let att = state.attention.pointer
        let gate = state.gate.pointer
        let up = state.up.pointer
        let scratch = state.scratch.pointer
        let layerCache = B * state.capacity * c.kvDim
        /// x += PostNorm(input·Wᵀ) where the family norms its branches (Gemma), else x += input·Wᵀ (the residual
        /// is the matmul's beta = 1).
        func addBranch(_ m: FrozenMatrix, _ input: UnsafeMutablePointer<Float>, postNorm: UnsafeMutablePointer<Float>?)
        {
            guard let post = postNorm else {
                m.multiplyTransposed(x, input, n: N, beta: 1)
                return
            }
            m.multiplyTransposed(scratch, input, n: N)
            rmsNormForward(out: h, rstd: nil, input: scratch, weight: post, rows: N, dim: c.dim, eps: c.rmsEps)
            addInPlace(x, h, count: N * c.dim)
        }

        embeddingForward(out: x, tokens: tokens, table: weights.embedding, count: N)
        if let scale = c.embeddingScale { scaleInPlace(x, N * c.dim, by: scale) }
        for (l, w) in weights.layers.enumerated() {
            let table = rope(layer: l, positions: state.capacity)
            rmsNormForward(out: h, rstd: nil, input: x, weight: w.attentionNorm, rows: N, dim: c.dim, eps: c.rmsEps)
            linearForward(out: q, input: h, weight: w.q, bias: w.qBias, rows: N)
            linearForward(out: k, input: h, weight: w.k, bias: w.kBias, rows: N)
            linearForward(out: v, input: h, weight: w.v, bias: w.vBias, rows: N)
            if let qNorm = w.qNorm, let kNorm = w.kNorm {
                scratch.update(from: q, count: N * c.qDim)
                rmsNormForward(
                    out: q, rstd: nil, input: scratch, weight: qNorm, rows: N * c.heads, dim: c.headDim, eps: c.rmsEps)
                scratch.update(from: k, count: N * c.kvDim)
                rmsNormForward(
                    out: k, rstd: nil, input: scratch, weight: kNorm, rows: N * c.kvHeads, dim: c.headDim,
                    eps: c.rmsEps)
            }
            ropeForward(q, positions: state.positions, rows: N, heads: c.heads, table: table, style: .halfSplit)
            ropeForward(k, positions: state.positions, rows: N, heads: c.kvHeads, table: table, style: .halfSplit)
            // Append this chunk's keys and values to the cache: sequence b, positions start..<start+T.
            let keys = state.keys.pointer + l * layerCache
            let values = state.values.pointer + l * layerCache
            for b in 0..<B {
                let row = (b * state.capacity + start) * c.kvDim
                (keys + row).update(from: k + b * T * c.kvDim, count: T * c.kvDim)
                (values + row).update(from: v + b * T * c.kvDim, count: T * c.kvDim)
            }
            let shape = c.attentionShape(layer: l, batch: B, queries: T, keyCapacity: state.capacity, start: start)
            attentionForward(out: att, lse: nil, q: q, k: keys, v: values, shape: shape)
            addBranch(w.o, att, postNorm: w.postAttentionNorm)
            // The output projection's bias (Qwen2 has none on o, but a model may; no post-norm family has one).
            if w.postAttentionNorm == nil, let bias = w.oBias {
                for r in 0..<N { for i in 0..<c.dim { x[r * c.dim + i] += bias[i] } }
            }
            rmsNormForward(out: h, rstd: nil, input: x, weight: w.ffnNorm, rows: N, dim: c.dim, eps: c.rmsEps)
            linearForward(out: gate, input: h, weight: w.gate, bias: nil, rows: N)
            linearForward(out: up, input: h, weight: w.up, bias: nil, rows: N)
            gatedForward(c.activation, out: gate, gate: gate, up: up, count: N * c.ffnDim)
            addBranch(w.down, gate, postNorm: w.postFFNNorm)
        }
        rmsNormForward(out: h, rstd: nil, input: x, weight: weights.outputNorm, rows: N, dim: c.dim, eps: c.rmsEps)
        state.length += T
        return UnsafePointer(h)
    }

    /// y += x over `count` values (residual adds), split across cores.
    func addInPlace(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count: Int) {
        Parallel.forRanges(count, grain: 1 << 14) { range in
            for i in range { y[i] += x[i] }
        }
    }

    /// Logits of hidden states: `logits = hidden · outputᵀ`.
    ///
    /// - Parameters:
    ///   - hidden: (rows, dim), as returned by `forward`.
    ///   - rowStride: Distance between consecutive rows of `hidden`, in floats (dim when contiguous).
    ///   - logits: (rows, vocabSize), overwritten.
    public func logits(
        hidden: UnsafePointer<Float>, rows: Int, rowStride: Int? = nil, into logits: UnsafeMutablePointer<Float>
    ) {
        weights.output.multiplyTransposed(logits, hidden, n: rows, lda: rowStride ?? config.dim)
        if let cap = config.finalSoftCap { softCap(logits, count: rows * config.vocabSize, cap: cap, derivative: nil) }
    }

    /// logits → c·tanh(logits/c) in place (Gemma 2's final soft cap); with `derivative`, 1 − tanh² there too.
    func softCap(
        _ logits: UnsafeMutablePointer<Float>, count: Int, cap: Float, derivative: UnsafeMutablePointer<Float>?
    ) {
        Parallel.forRanges(count, grain: 1 << 14) { range in
            for i in range {
                let t = Foundation.tanh(logits[i] / cap)
                logits[i] = cap * t
                derivative?[i] = 1 - t * t
            }
        }
    }

    /// FLOPs of one forward pass over `tokens` new tokens after `past` cached positions, counting the matrix
    /// products (2 per multiply-add) of the projections, attention and `logitRows` rows of output logits.
    public func forwardFLOPs(tokens: Int, past: Int = 0, logitRows: Int) -> Double {
        let c = config
        let projections = 2.0 * Double(c.dim) * Double(c.qDim + 2 * c.kvDim + c.qDim + 3 * c.ffnDim)
        // Query t attends to past + t + 1 keys: QKᵀ and P·V, each 2·headDim per head and key.
        let keys = Double(tokens) * Double(past) + Double(tokens) * Double(tokens + 1) / 2
        let attention = 4.0 * Double(c.heads * c.headDim) * keys
        return Double(c.layers) * (projections * Double(tokens) + attention) + 2.0 * Double(c.dim * c.vocabSize)
            * Double(logitRows)
    }
}
