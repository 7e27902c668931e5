// TrainingWorkspace: the activations a training step keeps for its backward pass, and the gradient scratch.
//
// Per layer l (N = B·T rows): the block input x_l (always kept), and for the layers that keep their
// activations: rstd of both norms, q and k after RoPE, v, the attention's log-sum-exp, the residual after
// attention x2, the gate and up projections, and each LoRA module's A·x. The attention output is not kept: the
// attention backward needs only its log-sum-exp, and recomputes the output for the o projection's LoRA gradient
// when there is one.
//
// Layers 0..<keptLayers keep theirs; the others share one set of those buffers, and the backward re-runs each
// such block's forward from x_l before its backward (without the down projection's product, whose output the
// backward does not need). The last layer is never re-run: the shared set still holds it when the backward
// starts. Memory falls by one set per recomputed layer, for about 3/4 of a block's forward each. Normalised
// inputs and silu(gate)⊙up are recomputed in either case (cheap, elementwise).

import TensorKernels

/// A region of a workspace's arena: a pointer and a length, zeroable like a FloatBuffer.
struct Region {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int

    func zero() { pointer.update(repeating: 0, count: count) }
}

/// Saved activations of one block.
struct BlockBuffers {
    let rstd1: FloatBuffer  // (N)
    let q: FloatBuffer  // (N, qDim) after RoPE
    let k: FloatBuffer  // (N, kvDim) after RoPE
    let v: FloatBuffer  // (N, kvDim)
    let lse: FloatBuffer  // (B, heads, T)
    let x2: FloatBuffer  // (N, dim)
    let rstd2: FloatBuffer  // (N)
    let gate: FloatBuffer  // (N, ffnDim)
    let up: FloatBuffer  // (N, ffnDim)
    let lora: FloatBuffer  // A·x of each module of the layer, (N, rank) each, at loraOffsets
    let loraOffsets: [LoRATarget: Int]
    /// Each target's row stride in `lora`: the widest rank of the adapters the workspace serves.
    let loraRanks: [LoRATarget: Int]
    // q/k norms (Qwen3, Gemma 3): the projections before the norm and each head's rstd.
    let qRaw: FloatBuffer  // (N, qDim)
    let kRaw: FloatBuffer  // (N, kvDim)
    let qRstd: FloatBuffer  // (N·heads)
    let kRstd: FloatBuffer  // (N·kvHeads)
    // Post-norms (Gemma): the attention and feed-forward outputs before their norms, and the norms' rstd.
    let attentionProjection: FloatBuffer  // (N, dim)
    let rstdPostAttention: FloatBuffer  // (N)
    let ffnOutput: FloatBuffer  // (N, dim)
    let rstdPostFFN: FloatBuffer  // (N)

    /// Buffers for `modules`: at most one per target (the widest, when several adapters share the workspace).
    init(config c: LlamaConfig, rows N: Int, batch B: Int, length T: Int, modules: [LoRAModule]) {
        rstd1 = FloatBuffer(count: N)
        q = FloatBuffer(count: N * c.qDim)
        k = FloatBuffer(count: N * c.kvDim)
        v = FloatBuffer(count: N * c.kvDim)
        lse = FloatBuffer(count: B * c.heads * T)
        x2 = FloatBuffer(count: N * c.dim)
        rstd2 = FloatBuffer(count: N)
        gate = FloatBuffer(count: N * c.ffnDim)
        up = FloatBuffer(count: N * c.ffnDim)
        var offsets: [LoRATarget: Int] = [:]
        var ranks: [LoRATarget: Int] = [:]
        var total = 0
        for m in modules {
            offsets[m.target] = total
            ranks[m.target] = m.rank
            total += N * m.rank
        }
        loraOffsets = offsets
        loraRanks = ranks
        lora = FloatBuffer(count: total)
        let (qk, post) = (c.qkNorm ? 1 : 0, c.postNorms ? 1 : 0)
        qRaw = FloatBuffer(count: qk * N * c.qDim)
        kRaw = FloatBuffer(count: qk * N * c.kvDim)
        qRstd = FloatBuffer(count: qk * N * c.heads)
        kRstd = FloatBuffer(count: qk * N * c.kvHeads)
        attentionProjection = FloatBuffer(count: post * N * c.dim)
        rstdPostAttention = FloatBuffer(count: post * N)
        ffnOutput = FloatBuffer(count: post * N * c.dim)
        rstdPostFFN = FloatBuffer(count: post * N)
    }

    /// Where `target`'s saved A·x of token row `row` starts.
    func saved(_ target: LoRATarget, row: Int) -> UnsafeMutablePointer<Float> {
        lora.pointer + loraOffsets[target]! + row * loraRanks[target]!
    }
}

/// Activations and scratch for training steps of a fixed batch shape.
public final class TrainingWorkspace: @unchecked Sendable {
    /// Rows per step.
    public let batch: Int
    /// Tokens per row.
    public let length: Int
    /// Layers 0..<keptLayers keep their activations; the rest share one set and are recomputed (all but the last).
    public let keptLayers: Int
    /// The model's layers.
    public let layers: Int
    /// Whether some block is re-run in the backward.
    public var recompute: Bool { keptLayers < layers - 1 }
    /// Rows of the vocabulary projection computed at once (bounds the logits buffer).
    public let logitChunk: Int

    /// The logits chunk fills the arena that the blocks' scratch needs anyway, within 64...256 rows. Each chunk
    /// streams the whole output matrix through sgemm's packing, so fewer rows cost throughput: 128 rows
    /// measured about 1 % slower per step than 256, and 64 rows 4 % slower. For SmolLM2-135M at 4 × 256 the
    /// scratch holds 132 rows of its 49k vocabulary, which saves 23 MiB against 256 rows.
    static func defaultLogitChunk(scratch: Int, vocabulary: Int, rows: Int) -> Int {
        min(rows, max(64, min(256, scratch / max(1, vocabulary) / 16 * 16)))
    }

    let rows: Int
    let residuals: FloatBuffer  // (layers + 1, N, dim): x_0 ... x_L
    let blocks: [BlockBuffers]  // one per kept layer, then one shared by the others
    let rstdFinal: FloatBuffer
    let normedFinal: FloatBuffer  // (logitChunk, dim): the final norm's output, one chunk of rows at a time
    let losses: FloatBuffer
    let dNormed: FloatBuffer  // (N, max(dim, qDim)): the final norm's output gradient, then each block's
    /// One allocation for two uses that are never live together: the logits chunk while the head runs, and the
    /// blocks' scratch (the regions below) before it, in the forward, and after it, in the backward.
    let arena: FloatBuffer
    let logits: Region  // (logitChunk, vocab), the arena's start
    let dx: Region  // (N, dim): the residual stream's gradient, block by block
    let normedScratch: Region  // (N, max(dim, qDim)): norm outputs
    let dq: Region
    let dk: Region
    let dv: Region
    let dAttention: Region
    let attentionOut: Region  // (N, qDim): the attention output, every layer's in turn (not kept)
    let hidden: Region  // (N, ffnDim): silu(gate) ⊙ up
    let dHidden: Region
    let loraScratch: Region  // (N, max rank)
    /// The row stride of `loraScratch`: the largest rank of any module.
    let loraScratchRank: Int
    let dropped: Region  // (N, max in) the dropped-out LoRA input, when dropout is on
    let blockOutput: Region  // (N, dim) where recomputed blocks write their unused output
    let dPost: Region  // (N, dim) the gradient before a post-norm (Gemma)
    let dqRaw: Region  // (N, qDim) the gradient before the q norm (Qwen3, Gemma 3)
    let dkRaw: Region  // (N, kvDim)
    /// (logitChunk, vocab) 1 − tanh² of the capped logits, when the model soft-caps them (Gemma 2).
    let logitCapDerivative: FloatBuffer

    /// Allocates everything a step of `batch × length` needs for `adapter` on `model`, keeping every layer's
    /// activations or (`recompute`) none.
    public convenience init(
        model c: LlamaConfig, adapter: LoRAAdapter, batch: Int, length: Int, recompute: Bool, dropout: Bool = false,
        logitChunk: Int? = nil
    ) {
        self.init(
            model: c, adapter: adapter, batch: batch, length: length, keptLayers: recompute ? 0 : c.layers,
            dropout: dropout, logitChunk: logitChunk)
    }

    /// Allocates everything a step of `batch × length` needs for `adapter` on `model`.
    ///
    /// - Parameters:
    ///   - keptLayers: Layers (from the first) whose activations are kept; the others are recomputed in the
    ///     backward. Clamped to 0...layers; layers − 1 is the same as all.
    ///   - dropout: Whether LoRA dropout will be used (allocates its scratch).
    public convenience init(
        model c: LlamaConfig, adapter: LoRAAdapter, batch: Int, length: Int, keptLayers: Int, dropout: Bool = false,
        logitChunk: Int? = nil
    ) {
        self.init(
            model: c, modules: adapter.modules, batch: batch, length: length, keptLayers: keptLayers, dropout: dropout,
            logitChunk: logitChunk)
    }

    /// Allocates a step of `batch × length` rows shared by several adapters (`LlamaModel.trainingStep(batch:
    /// adapters:workspace:)`): each layer's buffers hold, per target, the widest rank any of them uses there.
    public convenience init(
        model c: LlamaConfig, adapters: [LoRAAdapter], batch: Int, length: Int, keptLayers: Int,
        dropout: Bool = false, logitChunk: Int? = nil
    ) {
        self.init(
            model: c, modules: adapters.flatMap(\.modules), batch: batch, length: length, keptLayers: keptLayers,
            dropout: dropout, logitChunk: logitChunk)
    }

    init(
        model c: LlamaConfig, modules: [LoRAModule], batch: Int, length: Int, keptLayers: Int, dropout: Bool,
        logitChunk: Int?
    ) {
        precondition(batch > 0 && length > 0, "TrainingWorkspace: empty batch")
        self.batch = batch
        self.length = length
        let kept = Self.normalised(keptLayers: keptLayers, layers: c.layers)
        self.keptLayers = kept
        layers = c.layers
        let recompute = kept < c.layers
        let N = batch * length
        rows = N
        let sizes = Self.scratchSizes(model: c, modules: modules, rows: N, recompute: recompute, dropout: dropout)
        let chunk =
            logitChunk.map { min($0, N) }
            ?? Self.defaultLogitChunk(scratch: sizes.reduce(0, +), vocabulary: c.vocabSize, rows: N)
        self.logitChunk = chunk
        residuals = FloatBuffer(count: (c.layers + 1) * N * c.dim)
        let shared = modules.filter { $0.layer >= kept }
        blocks =
            (0..<kept).map { l in
                BlockBuffers(
                    config: c, rows: N, batch: batch, length: length,
                    modules: Self.widestModules(modules.filter { $0.layer == l }))
            }
            + (recompute
                ? [BlockBuffers(config: c, rows: N, batch: batch, length: length, modules: Self.widestModules(shared))]
                : [])
        rstdFinal = FloatBuffer(count: N)
        normedFinal = FloatBuffer(count: chunk * c.dim)
        losses = FloatBuffer(count: chunk)
        dNormed = FloatBuffer(count: N * max(c.dim, c.qDim))
        var offsets: [Int] = []
        var total = 0
        for size in sizes {
            offsets.append(total)
            total += (size + 15) & ~15  // 64-byte aligned regions
        }
        arena = FloatBuffer(count: max(total, chunk * c.vocabSize))
        let base = arena.pointer
        func region(_ i: Int) -> Region { Region(pointer: base + offsets[i], count: sizes[i]) }
        logits = Region(pointer: base, count: chunk * c.vocabSize)
        dx = region(0)
        normedScratch = region(1)
        dq = region(2)
        dk = region(3)
        dv = region(4)
        dAttention = region(5)
        attentionOut = region(6)
        hidden = region(7)
        dHidden = region(8)
        loraScratch = region(9)
        loraScratchRank = Self.largestRank(modules)
        dropped = region(10)
        blockOutput = region(11)
        dPost = region(12)
        dqRaw = region(13)
        dkRaw = region(14)
        logitCapDerivative = FloatBuffer(count: c.finalSoftCap == nil ? 0 : chunk * c.vocabSize)
    }

    /// Sizes of the arena's scratch regions, in the order `init` assigns them.
    static func scratchSizes(
        model c: LlamaConfig, modules: [LoRAModule], rows N: Int, recompute: Bool, dropout: Bool
    ) -> [Int] {
        [
            N * c.dim, N * max(c.dim, c.qDim), N * c.qDim, N * c.kvDim, N * c.kvDim, N * c.qDim, N * c.qDim,
            N * c.ffnDim, N * c.ffnDim, N * largestRank(modules),
            dropout ? N * max(c.dim, c.qDim, c.ffnDim) : 0, recompute ? N * c.dim : 0,
            c.postNorms ? N * c.dim : 0, c.qkNorm ? N * c.qDim : 0, c.qkNorm ? N * c.kvDim : 0,
        ]
    }

    static func largestRank(_ modules: [LoRAModule]) -> Int { max(1, modules.map(\.rank).max() ?? 1) }

    /// One module per target with the largest rank used by that target: the buffers the recomputed layers share,
    /// and a layer's buffers when several adapters share the workspace.
    static func widestModules(_ modules: [LoRAModule]) -> [LoRAModule] {
        var widest: [LoRATarget: LoRAModule] = [:]
        for m in modules where m.rank > (widest[m.target]?.rank ?? 0) { widest[m.target] = m }
        return widest.values.sorted { $0.target < $1.target }
    }

    /// `keptLayers` clamped to 0...layers, with layers − 1 made all: the shared set holds the last layer anyway.
    public static func normalised(keptLayers: Int, layers: Int) -> Int {
        let k = min(max(keptLayers, 0), layers)
        return k >= layers - 1 ? layers : k
    }

    /// The buffers of layer `layer`'s activations: its own, or the shared set.
    func block(_ layer: Int) -> BlockBuffers { blocks[min(layer, keptLayers)] }

    /// Sets of activation buffers held: one per kept layer, plus the shared one when some layer is recomputed.
    public var activationSets: Int { blocks.count }

    /// Whether the backward re-runs layer `layer`'s forward first: a layer past the kept ones, except the last,
    /// whose activations the shared set still holds from the forward.
    public func recomputes(layer: Int) -> Bool { layer >= keptLayers && layer < layers - 1 }

    /// Bytes a workspace would hold, keeping every layer's activations or (`recompute`) none.
    public static func estimatedBytes(
        model c: LlamaConfig, adapter: LoRAAdapter, batch: Int, length: Int, recompute: Bool
    ) -> Int {
        estimatedBytes(model: c, adapter: adapter, batch: batch, length: length, keptLayers: recompute ? 0 : c.layers)
    }

    /// Bytes of one layer's kept activations (what each kept layer adds).
    public static func bytesPerKeptLayer(model c: LlamaConfig, adapter: LoRAAdapter, batch: Int, length: Int) -> Int {
        let N = batch * length
        var perBlock = N * (2 + c.qDim + 2 * c.kvDim + c.dim + 2 * c.ffnDim) + batch * c.heads * length
        if c.qkNorm { perBlock += N * (c.qDim + c.kvDim + c.heads + c.kvHeads) }
        if c.postNorms { perBlock += N * (2 * c.dim + 2) }
        let loraPerLayer = N * adapter.modules.map(\.rank).reduce(0, +) / max(1, c.layers)
        return 4 * (perBlock + loraPerLayer)
    }

    /// Bytes a workspace would hold with `keptLayers` layers' activations kept.
    public static func estimatedBytes(
        model c: LlamaConfig, adapter: LoRAAdapter, batch: Int, length: Int, keptLayers: Int
    ) -> Int {
        let N = batch * length
        let kept = normalised(keptLayers: keptLayers, layers: c.layers)
        let recompute = kept < c.layers
        let blocks =
            (kept + (recompute ? 1 : 0)) * bytesPerKeptLayer(model: c, adapter: adapter, batch: batch, length: length)
            / 4
        let scratchTotal = scratchSizes(
            model: c, modules: adapter.modules, rows: N, recompute: recompute, dropout: false
        )
        .reduce(0, +)
        let arena = max(
            scratchTotal, defaultLogitChunk(scratch: scratchTotal, vocabulary: c.vocabSize, rows: N) * c.vocabSize)
        let capDerivative = c.finalSoftCap == nil ? 0 : 256 * c.vocabSize
        let scratch = N * (c.layers + 1) * c.dim + N * max(c.dim, c.qDim) + 256 * c.dim + arena + capDerivative
        return 4 * (blocks + scratch)
    }
}
