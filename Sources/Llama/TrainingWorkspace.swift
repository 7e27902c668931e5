// TrainingWorkspace: the activations a training step keeps for its backward pass, and the gradient scratch.
//
// Per layer l (N = B·T rows): the block input x_l (always kept), and unless `recompute` is set: rstd of both
// norms, q and k after RoPE, v, the attention output, its log-sum-exp, the residual after attention x2, the
// gate and up projections, and each LoRA module's A·x. With `recompute`, one set of those buffers serves every
// layer and the backward re-runs each block's forward from x_l first: memory falls from O(layers) sets to one,
// for one extra forward pass. Normalised inputs and silu(gate)⊙up are recomputed in either mode (cheap,
// elementwise).

import TensorKernels

/// Saved activations of one block.
struct BlockBuffers {
    let rstd1: FloatBuffer  // (N)
    let q: FloatBuffer  // (N, qDim) after RoPE
    let k: FloatBuffer  // (N, kvDim) after RoPE
    let v: FloatBuffer  // (N, kvDim)
    let attention: FloatBuffer  // (N, qDim)
    let lse: FloatBuffer  // (B, heads, T)
    let x2: FloatBuffer  // (N, dim)
    let rstd2: FloatBuffer  // (N)
    let gate: FloatBuffer  // (N, ffnDim)
    let up: FloatBuffer  // (N, ffnDim)
    let lora: FloatBuffer  // A·x of each module of the layer, (N, rank) each, at loraOffsets
    let loraOffsets: [LoRATarget: Int]

    init(config c: LlamaConfig, rows N: Int, batch B: Int, length T: Int, modules: [LoRAModule]) {
        rstd1 = FloatBuffer(count: N)
        q = FloatBuffer(count: N * c.qDim)
        k = FloatBuffer(count: N * c.kvDim)
        v = FloatBuffer(count: N * c.kvDim)
        attention = FloatBuffer(count: N * c.qDim)
        lse = FloatBuffer(count: B * c.heads * T)
        x2 = FloatBuffer(count: N * c.dim)
        rstd2 = FloatBuffer(count: N)
        gate = FloatBuffer(count: N * c.ffnDim)
        up = FloatBuffer(count: N * c.ffnDim)
        var offsets: [LoRATarget: Int] = [:]
        var total = 0
        for m in modules {
            offsets[m.target] = total
            total += N * m.rank
        }
        loraOffsets = offsets
        lora = FloatBuffer(count: total)
    }
}

/// Activations and scratch for training steps of a fixed batch shape.
public final class TrainingWorkspace: @unchecked Sendable {
    /// Rows per step.
    public let batch: Int
    /// Tokens per row.
    public let length: Int
    /// Whether blocks are recomputed in the backward instead of keeping every layer's activations.
    public let recompute: Bool
    /// Rows of the vocabulary projection computed at once (bounds the logits buffer).
    public let logitChunk: Int

    /// 256 rows: 48 MiB of logits over a 49k vocabulary. Each chunk streams the whole output matrix through
    /// sgemm's packing, so fewer rows cost throughput: 128 rows measured 1 % slower per step and 64 rows 4 %
    /// (SmolLM2-135M, 4 × 256, cairn-bench train).
    public static let defaultLogitChunk = 256

    let rows: Int
    let residuals: FloatBuffer  // (layers + 1, N, dim): x_0 ... x_L
    let blocks: [BlockBuffers]  // layers entries, or one when recomputing
    let rstdFinal: FloatBuffer
    let normedFinal: FloatBuffer  // (N, dim)
    let logits: FloatBuffer  // (logitChunk, vocab)
    let losses: FloatBuffer
    // Gradient and recomputation scratch.
    let dx: FloatBuffer  // (N, dim): the residual stream's gradient, block by block
    let dNormed: FloatBuffer  // (N, max(dim, qDim))
    let normedScratch: FloatBuffer  // (N, dim): recomputed norm outputs
    let dq: FloatBuffer
    let dk: FloatBuffer
    let dv: FloatBuffer
    let dAttention: FloatBuffer
    let hidden: FloatBuffer  // (N, ffnDim): silu(gate) ⊙ up
    let dHidden: FloatBuffer
    let loraScratch: FloatBuffer  // (N, max rank)
    let dropped: FloatBuffer  // (N, max in) the dropped-out LoRA input, when dropout is on
    let blockOutput: FloatBuffer  // (N, dim) where recomputed blocks write their unused output

    /// Allocates everything a step of `batch × length` needs for `adapter` on `model`.
    ///
    /// - Parameters:
    ///   - recompute: Keep only block inputs and recompute blocks in the backward.
    ///   - dropout: Whether LoRA dropout will be used (allocates its scratch).
    public init(
        model c: LlamaConfig, adapter: LoRAAdapter, batch: Int, length: Int, recompute: Bool, dropout: Bool = false,
        logitChunk: Int = TrainingWorkspace.defaultLogitChunk
    ) {
        precondition(batch > 0 && length > 0, "TrainingWorkspace: empty batch")
        self.batch = batch
        self.length = length
        self.recompute = recompute
        let N = batch * length
        rows = N
        self.logitChunk = min(logitChunk, N)
        residuals = FloatBuffer(count: (c.layers + 1) * N * c.dim)
        let layersKept = recompute ? 1 : c.layers
        blocks = (0..<layersKept).map { l in
            let modules = recompute ? Self.widestModules(adapter) : adapter.modules.filter { $0.layer == l }
            return BlockBuffers(config: c, rows: N, batch: batch, length: length, modules: modules)
        }
        rstdFinal = FloatBuffer(count: N)
        normedFinal = FloatBuffer(count: N * c.dim)
        logits = FloatBuffer(count: self.logitChunk * c.vocabSize)
        losses = FloatBuffer(count: self.logitChunk)
        dx = FloatBuffer(count: N * c.dim)
        dNormed = FloatBuffer(count: N * max(c.dim, c.qDim))
        normedScratch = FloatBuffer(count: N * max(c.dim, c.qDim))
        dq = FloatBuffer(count: N * c.qDim)
        dk = FloatBuffer(count: N * c.kvDim)
        dv = FloatBuffer(count: N * c.kvDim)
        dAttention = FloatBuffer(count: N * c.qDim)
        hidden = FloatBuffer(count: N * c.ffnDim)
        dHidden = FloatBuffer(count: N * c.ffnDim)
        loraScratch = FloatBuffer(count: N * max(1, adapter.modules.map(\.rank).max() ?? 1))
        dropped = FloatBuffer(count: dropout ? N * max(c.dim, c.qDim, c.ffnDim) : 0)
        blockOutput = FloatBuffer(count: recompute ? N * c.dim : 0)
    }

    /// One module per target with the largest rank used by that target: the shared buffers of recompute mode.
    static func widestModules(_ adapter: LoRAAdapter) -> [LoRAModule] {
        var widest: [LoRATarget: LoRAModule] = [:]
        for m in adapter.modules where m.rank > (widest[m.target]?.rank ?? 0) { widest[m.target] = m }
        return widest.values.sorted { $0.target < $1.target }
    }

    func block(_ layer: Int) -> BlockBuffers { blocks[recompute ? 0 : layer] }

    /// Bytes a workspace would hold, to choose between keeping and recomputing activations.
    public static func estimatedBytes(
        model c: LlamaConfig, adapter: LoRAAdapter, batch: Int, length: Int, recompute: Bool
    ) -> Int {
        let N = batch * length
        let perBlock = N * (2 + 2 * c.qDim + 2 * c.kvDim + c.dim + 2 * c.ffnDim) + batch * c.heads * length
        let loraPerLayer = N * adapter.modules.map(\.rank).reduce(0, +) / max(1, c.layers)
        let blocks = (recompute ? 1 : c.layers) * (perBlock + loraPerLayer)
        let scratch =
            N * (c.layers + 1) * c.dim + N * (4 * c.dim + 4 * c.qDim + 2 * c.kvDim + 2 * c.ffnDim)
            + min(defaultLogitChunk, N) * c.vocabSize
        return 4 * (blocks + scratch)
    }
}
