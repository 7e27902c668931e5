// LlamaModel+Training: the forward and backward pass of LoRA training over the frozen base.
//
// Forward per block (N = B·T rows, LoRA on any projection: y = W·x (+b) + s·B·(A·drop(x))):
//   h1 = RMSNorm(x)·w1;  q, k, v = proj(h1);  RoPE(q, k);  a = attention(q, k, v, document starts)
//   x2 = x + proj_o(a);  h2 = RMSNorm(x2)·w2;  g, u = proj(h2);  m = silu(g) ⊙ u;  x' = x2 + proj_down(m)
// Head: h = RMSNorm(x_L)·w;  per chunk of rows: logits = h·Eᵀ, cross-entropy, and at once dh = dlogits·E, so
// the (N, vocabulary) logits never exist in full.
// Backward walks the blocks in reverse, mirroring the forward call by call. Frozen weights get no gradient;
// every projection propagates dx = dy·W to its input, and each LoRA module accumulates
//   dB += s·dyᵀ·(A·x)      dA += s·(dy·B)ᵀ·x      dx += s·(dy·B)·A
// (with dropout, x is the dropped input and the last term is masked and rescaled the same way).
// The residual stream's gradient lives in one (N, dim) buffer that each block turns from the gradient of its
// output into the gradient of its input.
//
// Several adapters of one base can share a pass (`trainingStep(batch:adapters:workspace:)`): each owns a range of
// the batch's rows, the frozen products run once over all the rows, and each LoRA module's products run over its
// adapter's rows only. Every row's arithmetic is the same as in a pass of its adapter alone.

import Foundation
import TensorKernels

/// LoRA dropout for one step: which inputs are dropped is a pure function of (seed, layer, module, element), so
/// the backward regenerates the same mask instead of storing it. An element is named by its sequence, position and
/// feature, not by its offset in the batch: a sequence padded to a longer length (in a pass shared with another
/// adapter's longer rows) keeps the mask it has alone.
public struct DropoutPlan: Sendable, Equatable {
    /// Probability of dropping an input.
    public var probability: Float
    /// Seed of this step's masks.
    public var seed: UInt64

    /// A plan; probability 0 disables dropout.
    public init(probability: Float, seed: UInt64) {
        self.probability = probability
        self.seed = seed
    }

    @inline(__always)
    func keeps(_ stream: UInt64, _ element: UInt64) -> Bool {
        var z = seed &+ stream &* 0x9E37_79B9_7F4A_7C15 &+ element &* 0xD1B5_4A32_D192_ED03
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Float(z >> 40) * 0x1p-24 >= probability
    }
}

/// The loss of one step.
public struct StepLoss: Sendable, Equatable {
    /// Σ cross-entropy over target positions, in nats.
    public var sum: Double
    /// Target positions.
    public var tokens: Int
    /// Mean loss per target.
    public var mean: Double { tokens > 0 ? sum / Double(tokens) : .nan }

    /// A total.
    public init(sum: Double = 0, tokens: Int = 0) {
        self.sum = sum
        self.tokens = tokens
    }

    /// Adds another total.
    public static func += (a: inout StepLoss, b: StepLoss) {
        a.sum += b.sum
        a.tokens += b.tokens
    }
}

/// One adapter's share of a training pass over several adapters: its rows of the batch, the buffer its gradients
/// are added to, the scale of its loss, and its dropout.
public struct AdapterRows {
    public var adapter: LoRAAdapter
    /// Rows (sequences) of the batch.
    public var rows: Range<Int>
    /// Shaped like `adapter.parameters`, accumulated into; nil for a forward-only pass.
    public var gradients: FloatBuffer?
    public var lossScale: Float
    public var dropout: DropoutPlan?

    public init(
        adapter: LoRAAdapter, rows: Range<Int>, gradients: FloatBuffer?, lossScale: Float = 1,
        dropout: DropoutPlan? = nil
    ) {
        self.adapter = adapter
        self.rows = rows
        self.gradients = gradients
        self.lossScale = lossScale
        self.dropout = dropout
    }
}

/// An adapter's token rows in a pass (rows × length of the batch).
struct LoRASegment {
    let adapter: LoRAAdapter
    let rows: Range<Int>
    let gradients: FloatBuffer?
    let lossScale: Float
    let dropout: DropoutPlan?
}

extension LlamaModel {
    /// Runs a training batch through the model with an adapter; with `gradients`, also backpropagates and adds
    /// the gradient of `lossScale · Σ loss` to them.
    ///
    /// - Parameters:
    ///   - batch: Tokens, targets, positions and document starts, (B, T) with B·T = the workspace's rows.
    ///   - adapter: The LoRA modules (read only).
    ///   - gradients: A buffer shaped like `adapter.parameters`, accumulated into; nil for a forward-only pass.
    ///   - lossScale: The gradient of the objective with respect to each target's loss (1 / targets in the
    ///     optimizer step, for a mean).
    ///   - dropout: LoRA dropout for this step, or nil.
    ///   - workspace: Activations and scratch for this batch shape.
    /// - Returns: The summed loss and the number of targets.
    @discardableResult
    public func trainingStep(
        batch: TrainingBatch, adapter: LoRAAdapter, gradients: FloatBuffer?, lossScale: Float = 1,
        dropout: DropoutPlan? = nil, workspace ws: TrainingWorkspace
    ) -> StepLoss {
        let whole = AdapterRows(
            adapter: adapter, rows: 0..<batch.batch, gradients: gradients, lossScale: lossScale, dropout: dropout)
        return trainingStep(batch: batch, adapters: [whole], workspace: ws)[0]
    }

    /// Runs a training batch through the model, each adapter on its own rows, in one pass over the frozen
    /// weights; with gradients, also backpropagates, adding to each adapter's buffer the gradient of its
    /// `lossScale · Σ loss` over its rows. Each adapter's loss and gradients are those of a pass of its rows alone.
    ///
    /// - Parameters:
    ///   - adapters: Consecutive row ranges that cover the batch, either all with gradients or all without.
    ///   - workspace: Made for these adapters (`TrainingWorkspace(model:adapters:…)`) and this batch shape.
    /// - Returns: Each adapter's summed loss and number of targets, in order.
    @discardableResult
    public func trainingStep(batch: TrainingBatch, adapters: [AdapterRows], workspace ws: TrainingWorkspace)
        -> [StepLoss]
    {
        let c = config
        let N = batch.batch * batch.length
        precondition(
            batch.batch == ws.batch && batch.length == ws.length, "trainingStep: batch shape differs from the workspace"
        )
        precondition(batch.length <= maxPositions, "trainingStep: rows longer than the usable context")
        var next = 0
        for a in adapters {
            precondition(a.rows.lowerBound == next && !a.rows.isEmpty, "trainingStep: adapters' rows must follow on")
            next = a.rows.upperBound
            precondition(
                a.gradients == nil || a.gradients!.count == a.adapter.parameters.count, "trainingStep: gradient size")
            precondition((a.gradients == nil) == (adapters[0].gradients == nil), "trainingStep: gradients for some")
            precondition(
                (a.dropout?.probability ?? 0) <= 0 || ws.dropped.count > 0,
                "trainingStep: workspace without dropout scratch")
            for m in a.adapter.modules {
                precondition(
                    (ws.block(m.layer).loraRanks[m.target] ?? 0) >= m.rank,
                    "trainingStep: the workspace was made for other adapters")
            }
        }
        precondition(next == batch.batch, "trainingStep: adapters' rows must cover the batch")
        let segments = adapters.map {
            LoRASegment(
                adapter: $0.adapter, rows: $0.rows.lowerBound * batch.length..<$0.rows.upperBound * batch.length,
                gradients: $0.gradients, lossScale: $0.lossScale,
                dropout: $0.dropout.flatMap { $0.probability > 0 ? $0 : nil })
        }
        let training = segments[0].gradients != nil
        for i in 0..<N {
            precondition(
                batch.tokens[i] >= 0 && Int(batch.tokens[i]) < c.vocabSize, "trainingStep: token id out of range")
            precondition(Int(batch.targets[i]) < c.vocabSize, "trainingStep: target id out of range")
        }
        let x0 = ws.residuals.pointer
        embeddingForward(out: x0, tokens: batch.tokens, table: weights.embedding, count: N)
        if let scale = c.embeddingScale { scaleInPlace(x0, N * c.dim, by: scale) }
        for l in 0..<c.layers {
            blockForward(
                l, input: x0 + l * N * c.dim, output: x0 + (l + 1) * N * c.dim, buffers: ws.block(l), batch: batch,
                segments: segments, ws: ws)
        }
        let xL = x0 + c.layers * N * c.dim
        var losses = [StepLoss](repeating: StepLoss(sum: 0, tokens: 0), count: segments.count)
        batch.targets.withUnsafeBufferPointer { targets in
            // Chunks of rows within one adapter's rows, for its loss scale and its total.
            var r0 = 0
            var k = 0
            while r0 < N {
                if r0 == segments[k].rows.upperBound { k += 1 }
                let rows = min(ws.logitChunk, segments[k].rows.upperBound - r0)
                // The final norm, a chunk at a time (its rstd is kept for the backward).
                rmsNormForward(
                    out: ws.normedFinal.pointer, rstd: ws.rstdFinal.pointer + r0, input: xL + r0 * c.dim,
                    weight: weights.outputNorm, rows: rows, dim: c.dim, eps: c.rmsEps)
                weights.output.multiplyTransposed(ws.logits.pointer, ws.normedFinal.pointer, n: rows)
                if let cap = c.finalSoftCap {
                    softCap(
                        ws.logits.pointer, count: rows * c.vocabSize, cap: cap,
                        derivative: training ? ws.logitCapDerivative.pointer : nil)
                }
                if training {
                    // Losses, and the logits turned into their gradients in place.
                    crossEntropyForwardBackward(
                        losses: ws.losses.pointer, logits: ws.logits.pointer, targets: targets.baseAddress! + r0,
                        dLoss: segments[k].lossScale, rows: rows, vocabSize: c.vocabSize)
                    if c.finalSoftCap != nil {
                        // Through the cap: d(raw logit) = d(capped logit) · (1 − tanh²).
                        let (g, d) = (ws.logits.pointer, ws.logitCapDerivative.pointer)
                        Parallel.forRanges(rows * c.vocabSize, grain: 1 << 14) { range in
                            for i in range { g[i] *= d[i] }
                        }
                    }
                    // dh = dlogits · E (the output projection (vocab, dim)), written over this chunk's rows.
                    weights.output.multiply(ws.dNormed.pointer + r0 * c.dim, ws.logits.pointer, n: rows)
                } else {
                    crossEntropyForward(
                        losses: ws.losses.pointer, logSumExp: nil, logits: ws.logits.pointer,
                        targets: targets.baseAddress! + r0, rows: rows, vocabSize: c.vocabSize)
                }
                for i in 0..<rows where targets[r0 + i] >= 0 {
                    losses[k].sum += Double(ws.losses[i])
                    losses[k].tokens += 1
                }
                r0 += rows
            }
        }
        guard training else { return losses }

        ws.dx.zero()
        rmsNormBackward(
            dInput: ws.dx.pointer, dWeight: nil, dOut: ws.dNormed.pointer, input: xL, weight: weights.outputNorm,
            rstd: ws.rstdFinal.pointer, rows: N, dim: c.dim)
        for l in stride(from: c.layers - 1, through: 0, by: -1) {
            let input = x0 + l * N * c.dim
            if ws.recomputes(layer: l) {
                blockForward(
                    l, input: input, output: ws.blockOutput.pointer, buffers: ws.block(l), batch: batch,
                    segments: segments, ws: ws, forBackward: true)
            }
            blockBackward(l, input: input, buffers: ws.block(l), batch: batch, segments: segments, ws: ws)
        }
        return losses
    }

    private func attentionShape(_ batch: TrainingBatch, layer l: Int) -> AttentionShape {
        config.attentionShape(
            layer: l, batch: batch.batch, queries: batch.length, keyCapacity: batch.length, start: 0)
    }

    /// Recomputes RMSNorm's output from its input and saved rstd: out = x · rstd · w.
    private func normalized(
        _ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ rstd: UnsafePointer<Float>,
        _ w: UnsafePointer<Float>, rows N: Int
    ) {
        let C = config.dim
        Parallel.forRanges(N, grain: 64) { range in
            for r in range {
                let s = rstd[r]
                for i in 0..<C { out[r * C + i] = x[r * C + i] * s * w[i] }
            }
        }
    }

    /// y (N, out) += s·B·(A·drop(x)); saves A·drop(x) into `saved` (N, r). The output may come in parts: rows
    /// `parts[i].rows` of B write into `parts[i].y` (a fused projection's q, k and v).
    private func loraForward(
        _ m: LoRAModule, adapter: LoRAAdapter, input x: UnsafePointer<Float>, parts: [LoRAPart],
        saved: UnsafeMutablePointer<Float>, rows N: Int, dropout: DropoutPlan?, ws: TrainingWorkspace
    ) {
        let a = adapter.parameters.pointer + m.aOffset
        let b = adapter.parameters.pointer + m.bOffset
        let source = droppedInput(m, x, rows: N, dropout: dropout, ws: ws)
        matmul(saved, source, a, M: N, N: m.rank, K: m.inFeatures, transB: true)
        for part in parts {
            matmul(
                part.y, saved, b + part.rows.lowerBound * m.rank, M: N, N: part.rows.count, K: m.rank, transB: true,
                alpha: m.scale, beta: 1)
        }
    }

    /// x, or x with this module's dropout mask applied and rescaled by 1/(1−p) (into scratch).
    private func droppedInput(
        _ m: LoRAModule, _ x: UnsafePointer<Float>, rows N: Int, dropout: DropoutPlan?, ws: TrainingWorkspace
    ) -> UnsafePointer<Float> {
        guard let dropout else { return x }
        let out = ws.dropped.pointer
        let keepScale = 1 / (1 - dropout.probability)
        Self.forEachMaskElement(m, rows: N, length: ws.length, dropout: dropout) { i, keep in
            out[i] = keep ? x[i] * keepScale : 0
        }
        return UnsafePointer(out)
    }

    /// Calls `body(i, keeps)` for every element i of an (N, inFeatures) input of module `m` whose token rows are
    /// sequences of `length` positions, in parallel: `keeps` is the element's mask, named by (sequence, position,
    /// feature).
    private static func forEachMaskElement(
        _ m: LoRAModule, rows N: Int, length: Int, dropout: DropoutPlan, _ body: (Int, Bool) -> Void
    ) {
        let stream = UInt64(m.layer) << 8 | UInt64(LoRATarget.allCases.firstIndex(of: m.target)!)
        let width = m.inFeatures
        let length = max(1, length)
        withoutActuallyEscaping(body) { body in
            Parallel.forRanges(N, grain: max(1, (1 << 14) / max(1, width))) { rows in
                for j in rows {
                    let token = UInt64(j / length) << 40 | UInt64(j % length) << 20
                    for f in 0..<width { body(j * width + f, dropout.keeps(stream, token | UInt64(f))) }
                }
            }
        }
    }

    /// The part of a LoRA module's backward that does not read its input: dB += s·dyᵀ·(A·x) from the saved A·x,
    /// t = dy·B (left in `t` for `loraBackwardDA`), and dx += s·t·A, masked like the input when dropout is on.
    /// With parts, dy is the parts' gradients side by side: each part's rows of dB, and t sums over the parts.
    private func loraBackwardWithoutDA(
        _ m: LoRAModule, adapter: LoRAAdapter, gradients: FloatBuffer, saved: UnsafePointer<Float>,
        parts: [LoRAPart], dInput dx: UnsafeMutablePointer<Float>, rows N: Int, dropout: DropoutPlan?,
        scratch t: UnsafeMutablePointer<Float>, ws: TrainingWorkspace
    ) {
        let a = adapter.parameters.pointer + m.aOffset
        let b = adapter.parameters.pointer + m.bOffset
        let dB = gradients.pointer + m.bOffset
        // t: (N, r) = dy·B
        for (i, part) in parts.enumerated() {
            let rows = part.rows
            matmul(
                dB + rows.lowerBound * m.rank, part.y, saved, M: rows.count, N: m.rank, K: N, transA: true,
                alpha: m.scale, beta: 1)
            matmul(t, part.y, b + rows.lowerBound * m.rank, M: N, N: m.rank, K: rows.count, beta: i == 0 ? 0 : 1)
        }
        guard let dropout else {
            matmul(dx, t, a, M: N, N: m.inFeatures, K: m.rank, alpha: m.scale, beta: 1)
            return
        }
        let scratch = ws.dropped.pointer
        matmul(scratch, t, a, M: N, N: m.inFeatures, K: m.rank, alpha: m.scale)
        let keepScale = 1 / (1 - dropout.probability)
        Self.forEachMaskElement(m, rows: N, length: ws.length, dropout: dropout) { i, keep in
            if keep { dx[i] += scratch[i] * keepScale }
        }
    }

    /// dA += s · tᵀ · drop(x), with t = dy·B as `loraBackwardWithoutDA` left it.
    private func loraBackwardDA(
        _ m: LoRAModule, gradients: FloatBuffer, input x: UnsafePointer<Float>, rows N: Int, dropout: DropoutPlan?,
        scratch t: UnsafePointer<Float>, ws: TrainingWorkspace
    ) {
        let source = droppedInput(m, x, rows: N, dropout: dropout, ws: ws)
        matmul(
            gradients.pointer + m.aOffset, t, source, M: m.rank, N: m.inFeatures, K: N, transA: true, alpha: m.scale,
            beta: 1)
    }

    // Each adapter's module of (layer, target) over its own rows: the inputs, outputs, saved A·x and t = dy·B
    // of its rows start at its first row.

    /// y += s·B·(A·drop(x)) for each adapter's module; saves A·drop(x) (`parts` empty: only saves it).
    private func loraForward(
        _ target: LoRATarget, layer: Int, segments: [LoRASegment], input x: UnsafePointer<Float>, parts: [LoRAPart],
        buffers s: BlockBuffers, ws: TrainingWorkspace
    ) {
        for seg in segments {
            guard let m = seg.adapter.module(layer: layer, target: target) else { continue }
            let r0 = seg.rows.lowerBound
            loraForward(
                m, adapter: seg.adapter, input: x + r0 * m.inFeatures, parts: parts.map { $0.from(row: r0) },
                saved: s.saved(target, row: r0), rows: seg.rows.count, dropout: seg.dropout, ws: ws)
        }
    }

    /// The backward of each adapter's module, without dA (left for `loraBackwardDA`).
    private func loraBackwardWithoutDA(
        _ target: LoRATarget, layer: Int, segments: [LoRASegment], parts: [LoRAPart],
        dInput dx: UnsafeMutablePointer<Float>, buffers s: BlockBuffers, ws: TrainingWorkspace
    ) {
        for seg in segments {
            guard let m = seg.adapter.module(layer: layer, target: target), let g = seg.gradients else { continue }
            let r0 = seg.rows.lowerBound
            loraBackwardWithoutDA(
                m, adapter: seg.adapter, gradients: g, saved: s.saved(target, row: r0),
                parts: parts.map { $0.from(row: r0) }, dInput: dx + r0 * m.inFeatures, rows: seg.rows.count,
                dropout: seg.dropout, scratch: ws.loraScratch.pointer + r0 * ws.loraScratchRank, ws: ws)
        }
    }

    /// dA of each adapter's module, from the t its `loraBackwardWithoutDA` left.
    private func loraBackwardDA(
        _ target: LoRATarget, layer: Int, segments: [LoRASegment], input x: UnsafePointer<Float>,
        ws: TrainingWorkspace
    ) {
        for seg in segments {
            guard let m = seg.adapter.module(layer: layer, target: target), let g = seg.gradients else { continue }
            let r0 = seg.rows.lowerBound
            loraBackwardDA(
                m, gradients: g, input: x + r0 * m.inFeatures, rows: seg.rows.count, dropout: seg.dropout,
                scratch: ws.loraScratch.pointer + r0 * ws.loraScratchRank, ws: ws)
        }
    }

    /// The whole backward of each adapter's module: dB, dA and its input's gradient.
    private func loraBackward(
        _ target: LoRATarget, layer: Int, segments: [LoRASegment], input x: UnsafePointer<Float>, parts: [LoRAPart],
        dInput dx: UnsafeMutablePointer<Float>, buffers s: BlockBuffers, ws: TrainingWorkspace
    ) {
        loraBackwardWithoutDA(target, layer: layer, segments: segments, parts: parts, dInput: dx, buffers: s, ws: ws)
        loraBackwardDA(target, layer: layer, segments: segments, input: x, ws: ws)
    }

    /// y = x·Wᵀ (+ bias) + LoRA, for one projection.
    private func project(
        _ target: LoRATarget, layer: Int, weight: FrozenMatrix, bias: UnsafePointer<Float>?,
        input x: UnsafePointer<Float>, output y: UnsafeMutablePointer<Float>, buffers: BlockBuffers, rows N: Int,
        segments: [LoRASegment], ws: TrainingWorkspace
    ) {
        linearForward(out: y, input: x, weight: weight, bias: bias, rows: N)
        loraForward(
            target, layer: layer, segments: segments, input: x, parts: [LoRAPart(y: y, rows: 0..<weight.rows)],
            buffers: buffers, ws: ws)
    }

    /// Several projections of one input whose LoRA may be one fused module (Phi-3's qkv and gate_up): each
    /// output gets its base product, then the fused module's parts, or each its own module.
    private func projectGroup(
        _ group: [(
            target: LoRATarget, weight: FrozenMatrix, bias: UnsafeMutablePointer<Float>?, y: UnsafeMutablePointer<Float>
        )],
        fused: LoRATarget?, layer: Int, input x: UnsafePointer<Float>, buffers: BlockBuffers, rows N: Int,
        segments: [LoRASegment], ws: TrainingWorkspace
    ) {
        guard let fused else {
            for p in group {
                project(
                    p.target, layer: layer, weight: p.weight, bias: p.bias, input: x, output: p.y, buffers: buffers,
                    rows: N, segments: segments, ws: ws)
            }
            return
        }
        for p in group { linearForward(out: p.y, input: x, weight: p.weight, bias: p.bias, rows: N) }
        loraForward(
            fused, layer: layer, segments: segments, input: x,
            parts: LoRAPart.split(group.map { ($0.y, $0.weight.rows) }),
            buffers: buffers, ws: ws)
    }

    /// dx (+)= dy·W and the LoRA module's part, for one projection. `accumulate` false overwrites dx first.
    private func projectBackward(
        _ target: LoRATarget, layer: Int, weight: FrozenMatrix, input x: UnsafePointer<Float>,
        dOut dy: UnsafePointer<Float>, dInput dx: UnsafeMutablePointer<Float>, accumulate: Bool, buffers: BlockBuffers,
        rows N: Int, segments: [LoRASegment], ws: TrainingWorkspace
    ) {
        weight.multiply(dx, dy, n: N, beta: accumulate ? 1 : 0)
        loraBackward(
            target, layer: layer, segments: segments, input: x,
            parts: [LoRAPart(y: UnsafeMutablePointer(mutating: dy), rows: 0..<weight.rows)], dInput: dx,
            buffers: buffers, ws: ws)
    }

    /// The backward of `projectGroup`: dx = Σ dy_i·W_i plus the LoRA parts (overwriting dx first).
    private func projectGroupBackward(
        _ group: [(target: LoRATarget, weight: FrozenMatrix, dy: UnsafeMutablePointer<Float>)], fused: LoRATarget?,
        layer: Int, input x: UnsafePointer<Float>, dInput dx: UnsafeMutablePointer<Float>, buffers: BlockBuffers,
        rows N: Int, segments: [LoRASegment], ws: TrainingWorkspace
    ) {
        guard let fused else {
            for (i, p) in group.enumerated() {
                projectBackward(
                    p.target, layer: layer, weight: p.weight, input: x, dOut: p.dy, dInput: dx, accumulate: i > 0,
                    buffers: buffers, rows: N, segments: segments, ws: ws)
            }
            return
        }
        for (i, p) in group.enumerated() { p.weight.multiply(dx, p.dy, n: N, beta: i > 0 ? 1 : 0) }
        loraBackward(
            fused, layer: layer, segments: segments, input: x,
            parts: LoRAPart.split(group.map { ($0.dy, $0.weight.rows) }), dInput: dx, buffers: buffers, ws: ws)
    }

    private func blockForward(
        _ l: Int, input x: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, buffers s: BlockBuffers,
        batch: TrainingBatch, segments: [LoRASegment], ws: TrainingWorkspace, forBackward: Bool = false
    ) {
        let c = config
        let w = weights.layers[l]
        let N = ws.rows
        let h = ws.normedScratch.pointer
        // LongRoPE picks its factors by the furthest position in the batch, as transformers does.
        let table = rope(layer: l, positions: Int(batch.positions.max() ?? 0) + 1)
        rmsNormForward(
            out: h, rstd: s.rstd1.pointer, input: x, weight: w.attentionNorm, rows: N, dim: c.dim, eps: c.rmsEps)
        // With q/k norms the projections land in qRaw/kRaw and the norms write q/k.
        let qOut = c.qkNorm ? s.qRaw.pointer : s.q.pointer
        let kOut = c.qkNorm ? s.kRaw.pointer : s.k.pointer
        projectGroup(
            [(.q, w.q, w.qBias, qOut), (.k, w.k, w.kBias, kOut), (.v, w.v, w.vBias, s.v.pointer)],
            fused: c.fusedProjections ? .qkv : nil, layer: l, input: h, buffers: s, rows: N, segments: segments,
            ws: ws)
        if let qNorm = w.qNorm, let kNorm = w.kNorm {
            rmsNormForward(
                out: s.q.pointer, rstd: s.qRstd.pointer, input: qOut, weight: qNorm, rows: N * c.heads,
                dim: c.headDim, eps: c.rmsEps)
            rmsNormForward(
                out: s.k.pointer, rstd: s.kRstd.pointer, input: kOut, weight: kNorm, rows: N * c.kvHeads,
                dim: c.headDim, eps: c.rmsEps)
        }
        ropeForward(s.q.pointer, positions: batch.positions, rows: N, heads: c.heads, table: table, style: .halfSplit)
        ropeForward(s.k.pointer, positions: batch.positions, rows: N, heads: c.kvHeads, table: table, style: .halfSplit)
        attentionForward(
            out: ws.attentionOut.pointer, lse: s.lse.pointer, q: s.q.pointer, k: s.k.pointer, v: s.v.pointer,
            shape: attentionShape(batch, layer: l), keyStarts: batch.documentStarts)
        // x2 = x + o(attention), or x + PostNorm(o(attention))
        if let post = w.postAttentionNorm {
            project(
                .o, layer: l, weight: w.o, bias: w.oBias, input: ws.attentionOut.pointer,
                output: s.attentionProjection.pointer, buffers: s, rows: N, segments: segments, ws: ws)
            rmsNormForward(
                out: s.x2.pointer, rstd: s.rstdPostAttention.pointer, input: s.attentionProjection.pointer,
                weight: post, rows: N, dim: c.dim, eps: c.rmsEps)
        } else {
            project(
                .o, layer: l, weight: w.o, bias: w.oBias, input: ws.attentionOut.pointer, output: s.x2.pointer,
                buffers: s, rows: N, segments: segments, ws: ws)
        }
        addInPlace(s.x2.pointer, x, count: N * c.dim)
        rmsNormForward(
            out: h, rstd: s.rstd2.pointer, input: s.x2.pointer, weight: w.ffnNorm, rows: N, dim: c.dim, eps: c.rmsEps)
        projectGroup(
            [(.gate, w.gate, nil, s.gate.pointer), (.up, w.up, nil, s.up.pointer)],
            fused: c.fusedProjections ? .gateUp : nil, layer: l, input: h, buffers: s, rows: N, segments: segments,
            ws: ws)
        let m = ws.hidden.pointer
        // Re-run for the backward, the block's output is not needed: without a post-norm (whose input the backward
        // reads), down's product is skipped, and only its LoRA module's A·drop(m) is saved.
        if forBackward && w.postFFNNorm == nil {
            if segments.contains(where: { $0.adapter.module(layer: l, target: .down) != nil }) {
                gatedForward(c.activation, out: m, gate: s.gate.pointer, up: s.up.pointer, count: N * c.ffnDim)
                loraForward(.down, layer: l, segments: segments, input: m, parts: [], buffers: s, ws: ws)
            }
            return
        }
        gatedForward(c.activation, out: m, gate: s.gate.pointer, up: s.up.pointer, count: N * c.ffnDim)
        // x' = x2 + down(m), or x2 + PostNorm(down(m))
        if let post = w.postFFNNorm {
            project(
                .down, layer: l, weight: w.down, bias: nil, input: m, output: s.ffnOutput.pointer, buffers: s,
                rows: N, segments: segments, ws: ws)
            rmsNormForward(
                out: output, rstd: s.rstdPostFFN.pointer, input: s.ffnOutput.pointer, weight: post, rows: N,
                dim: c.dim, eps: c.rmsEps)
        } else {
            project(
                .down, layer: l, weight: w.down, bias: nil, input: m, output: output, buffers: s, rows: N,
                segments: segments, ws: ws)
        }
        addInPlace(output, s.x2.pointer, count: N * c.dim)
    }

    /// The gradient before a post-norm (Gemma), in `ws.dPost`; without one, `dOut` itself.
    private func postNormBackward(
        _ weight: UnsafeMutablePointer<Float>?, dOut: UnsafePointer<Float>, input: UnsafePointer<Float>,
        rstd: UnsafePointer<Float>, ws: TrainingWorkspace
    ) -> UnsafePointer<Float> {
        guard let weight else { return dOut }
        ws.dPost.zero()
        rmsNormBackward(
            dInput: ws.dPost.pointer, dWeight: nil, dOut: dOut, input: input, weight: weight, rstd: rstd, rows: ws.rows,
            dim: config.dim)
        return UnsafePointer(ws.dPost.pointer)
    }

    private func blockBackward(
        _ l: Int, input x: UnsafePointer<Float>, buffers s: BlockBuffers, batch: TrainingBatch,
        segments: [LoRASegment], ws: TrainingWorkspace
    ) {
        let c = config
        let w = weights.layers[l]
        let N = ws.rows
        let dx = ws.dx.pointer  // in: gradient of the block output; out: gradient of its input
        let h = ws.normedScratch.pointer
        let dh = ws.dNormed.pointer
        // LongRoPE picks its factors by the furthest position in the batch, as transformers does.
        let table = rope(layer: l, positions: Int(batch.positions.max() ?? 0) + 1)
        // Feed-forward: x' = x2 + [PostNorm](down(act(gate(h2)) ⊙ up(h2))).
        normalized(h, s.x2.pointer, s.rstd2.pointer, w.ffnNorm, rows: N)
        gatedForward(c.activation, out: ws.hidden.pointer, gate: s.gate.pointer, up: s.up.pointer, count: N * c.ffnDim)
        let dDown = postNormBackward(
            w.postFFNNorm, dOut: dx, input: s.ffnOutput.pointer, rstd: s.rstdPostFFN.pointer, ws: ws)
        projectBackward(
            .down, layer: l, weight: w.down, input: ws.hidden.pointer, dOut: dDown, dInput: ws.dHidden.pointer,
            accumulate: false, buffers: s, rows: N, segments: segments, ws: ws)
        // The saved gate and up activations become their gradients in place (this layer needs them no more).
        let dGate = s.gate.pointer
        let dUp = s.up.pointer
        gatedBackward(
            c.activation, dGate: dGate, dUp: dUp, dOut: ws.dHidden.pointer, gate: s.gate.pointer, up: s.up.pointer,
            count: N * c.ffnDim, accumulate: false)
        projectGroupBackward(
            [(.gate, w.gate, dGate), (.up, w.up, dUp)], fused: c.fusedProjections ? .gateUp : nil, layer: l, input: h,
            dInput: dh, buffers: s, rows: N, segments: segments, ws: ws)
        rmsNormBackward(
            dInput: dx, dWeight: nil, dOut: dh, input: s.x2.pointer, weight: w.ffnNorm, rstd: s.rstd2.pointer, rows: N,
            dim: c.dim)
        // Attention: x2 = x + [PostNorm](o(attention(rope(q(h1)), rope(k(h1)), v(h1)))). The attention output is
        // not kept: o's backward runs without its input, the attention backward recomputes the output when o's
        // LoRA A needs it, and dA follows.
        let dO = postNormBackward(
            w.postAttentionNorm, dOut: dx, input: s.attentionProjection.pointer, rstd: s.rstdPostAttention.pointer,
            ws: ws)
        let dAtt = ws.dAttention.pointer
        w.o.multiply(dAtt, dO, n: N)
        let hasO = segments.contains { $0.adapter.module(layer: l, target: .o) != nil }
        loraBackwardWithoutDA(
            .o, layer: l, segments: segments,
            parts: [LoRAPart(y: UnsafeMutablePointer(mutating: dO), rows: 0..<w.o.rows)],
            dInput: dAtt, buffers: s, ws: ws)
        ws.dq.zero()
        ws.dk.zero()
        ws.dv.zero()
        attentionBackward(
            dQ: ws.dq.pointer, dK: ws.dk.pointer, dV: ws.dv.pointer, dOut: dAtt, q: s.q.pointer, k: s.k.pointer,
            v: s.v.pointer, lse: s.lse.pointer, recomputedOut: hasO ? ws.attentionOut.pointer : nil,
            shape: attentionShape(batch, layer: l), keyStarts: batch.documentStarts)
        loraBackwardDA(.o, layer: l, segments: segments, input: ws.attentionOut.pointer, ws: ws)
        ropeBackward(
            ws.dq.pointer, positions: batch.positions, rows: N, heads: c.heads, table: table, style: .halfSplit)
        ropeBackward(
            ws.dk.pointer, positions: batch.positions, rows: N, heads: c.kvHeads, table: table, style: .halfSplit)
        var dQ = ws.dq.pointer
        var dK = ws.dk.pointer
        if let qNorm = w.qNorm, let kNorm = w.kNorm {
            ws.dqRaw.zero()
            ws.dkRaw.zero()
            rmsNormBackward(
                dInput: ws.dqRaw.pointer, dWeight: nil, dOut: ws.dq.pointer, input: s.qRaw.pointer, weight: qNorm,
                rstd: s.qRstd.pointer, rows: N * c.heads, dim: c.headDim)
            rmsNormBackward(
                dInput: ws.dkRaw.pointer, dWeight: nil, dOut: ws.dk.pointer, input: s.kRaw.pointer, weight: kNorm,
                rstd: s.kRstd.pointer, rows: N * c.kvHeads, dim: c.headDim)
            dQ = ws.dqRaw.pointer
            dK = ws.dkRaw.pointer
        }
        normalized(h, x, s.rstd1.pointer, w.attentionNorm, rows: N)
        projectGroupBackward(
            [(.q, w.q, dQ), (.k, w.k, dK), (.v, w.v, ws.dv.pointer)],
            fused: c.fusedProjections ? .qkv : nil, layer: l, input: h, dInput: dh, buffers: s, rows: N,
            segments: segments, ws: ws)
        rmsNormBackward(
            dInput: dx, dWeight: nil, dOut: dh, input: x, weight: w.attentionNorm, rstd: s.rstd1.pointer, rows: N,
            dim: c.dim)
    }

}

extension LlamaModel {
    /// FLOPs of one training row of `tokens` tokens: the forward's matrix products, the backward's
    /// activation gradients (the same products again), the LoRA products of both passes and the attention
    /// backward's extra products. Frozen-weight gradients are not computed and not counted.
    public func trainingFLOPs(tokens: Int, adapter: LoRAAdapter) -> Double {
        let forward = forwardFLOPs(tokens: tokens, logitRows: tokens)
        // Attention backward: 4 products of the forward's 2 (P recomputed, dP, dV, dQ, dK).
        let c = config
        let keys = Double(tokens) * Double(tokens + 1) / 2
        let attentionForward = 4.0 * Double(c.heads * c.headDim) * keys * Double(c.layers)
        let backward = (forward - attentionForward) + 2.5 * attentionForward
        // LoRA: forward A·x and B·(Ax); backward dB, dy·B, dA, dx: 6 products of rank r per module.
        let lora = adapter.modules.reduce(0.0) {
            $0 + 2.0 * Double(tokens) * Double($1.rank) * Double($1.inFeatures + $1.outFeatures) * 3
        }
        return forward + backward + lora
    }
}

/// Rows `rows` of a LoRA module's output (B's rows) and where they go: the whole output of an ordinary module,
/// or one projection's share of a fused one.
struct LoRAPart {
    /// (N, rows.count) written (forward) or read (backward: the gradient).
    var y: UnsafeMutablePointer<Float>
    /// Rows of B.
    var rows: Range<Int>

    /// The same part from token row `row` on (each row of y holds `rows.count` values).
    func from(row: Int) -> LoRAPart { LoRAPart(y: y + row * rows.count, rows: rows) }

    /// Consecutive parts, one per output of `rows` rows, in order (a fused module's q, k, v).
    static func split(_ outputs: [(UnsafeMutablePointer<Float>, Int)]) -> [LoRAPart] {
        var parts: [LoRAPart] = []
        var row = 0
        for (y, rows) in outputs {
            parts.append(LoRAPart(y: y, rows: row..<row + rows))
            row += rows
        }
        return parts
    }
}
