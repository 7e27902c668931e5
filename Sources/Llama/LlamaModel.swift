// LlamaModel: the forward pass of a llama-family decoder (formats.md §9), in fp32 over the flat weights.
//
//   x = embed(tokens)
//   per block:  h = RMSNorm(x)·w;  q,k,v = h·Wᵀ (+b);  RoPE(q,k);  a = causal GQA attention(q, K, V)
//               x += a·Woᵀ (+b);  h = RMSNorm(x)·w;  x += (silu(h·Wgᵀ) ⊙ h·Wuᵀ)·Wdᵀ
//   out = RMSNorm(x)·w;  logits = out·Eᵀ (E = embedding table when tied)
//
// Dims in comments: N = B·T rows processed in one call; C = dim; the rest as LlamaConfig names them.

import TensorKernels

/// A loaded model: configuration, weights and RoPE table.
public final class LlamaModel: @unchecked Sendable {
    /// The architecture.
    public let config: LlamaConfig
    /// The frozen weights (Hugging Face layout).
    public let weights: LlamaWeights
    /// cos/sin for every usable position.
    public let rope: RoPETable
    /// Positions this model runs: the context length, capped at `positionLimit`.
    public let maxPositions: Int

    /// The most positions Cairn prepares RoPE tables for (a 64k-position table of head size 128 is 32 MiB).
    public static let positionLimit = 1 << 16

    /// Wraps loaded weights.
    public init(weights: LlamaWeights) {
        self.weights = weights
        config = weights.config
        maxPositions = min(config.contextLength, Self.positionLimit)
        rope = RoPETable(headDim: config.headDim, positions: maxPositions, base: config.ropeTheta)
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
        let shape = AttentionShape(
            batch: B, queries: T, keyCapacity: state.capacity, start: start, heads: c.heads, kvHeads: c.kvHeads,
            headDim: c.headDim)
        let layerCache = B * state.capacity * c.kvDim

        embeddingForward(out: x, tokens: tokens, table: weights.embedding, count: N)
        for (l, w) in weights.layers.enumerated() {
            rmsNormForward(out: h, rstd: nil, input: x, weight: w.attentionNorm, rows: N, dim: c.dim, eps: c.rmsEps)
            linearForward(out: q, input: h, weight: w.q, bias: w.qBias, rows: N)
            linearForward(out: k, input: h, weight: w.k, bias: w.kBias, rows: N)
            linearForward(out: v, input: h, weight: w.v, bias: w.vBias, rows: N)
            ropeForward(q, positions: state.positions, rows: N, heads: c.heads, table: rope, style: .halfSplit)
            ropeForward(k, positions: state.positions, rows: N, heads: c.kvHeads, table: rope, style: .halfSplit)
            // Append this chunk's keys and values to the cache: sequence b, positions start..<start+T.
            let keys = state.keys.pointer + l * layerCache
            let values = state.values.pointer + l * layerCache
            for b in 0..<B {
                let row = (b * state.capacity + start) * c.kvDim
                (keys + row).update(from: k + b * T * c.kvDim, count: T * c.kvDim)
                (values + row).update(from: v + b * T * c.kvDim, count: T * c.kvDim)
            }
            attentionForward(out: att, lse: nil, q: q, k: keys, v: values, shape: shape)
            // x += att·Woᵀ (+ bias): the residual is the matmul's beta = 1.
            w.o.multiplyTransposed(x, att, n: N, beta: 1)
            if let bias = w.oBias {
                for r in 0..<N { for i in 0..<c.dim { x[r * c.dim + i] += bias[i] } }
            }
            rmsNormForward(out: h, rstd: nil, input: x, weight: w.ffnNorm, rows: N, dim: c.dim, eps: c.rmsEps)
            linearForward(out: gate, input: h, weight: w.gate, bias: nil, rows: N)
            linearForward(out: up, input: h, weight: w.up, bias: nil, rows: N)
            swigluForward(out: gate, gate: gate, up: up, count: N * c.ffnDim)
            w.down.multiplyTransposed(x, gate, n: N, beta: 1)
        }
        rmsNormForward(out: h, rstd: nil, input: x, weight: weights.outputNorm, rows: N, dim: c.dim, eps: c.rmsEps)
        state.length += T
        return UnsafePointer(h)
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
