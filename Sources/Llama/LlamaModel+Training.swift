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

import Foundation
import TensorKernels

/// LoRA dropout for one step: which inputs are dropped is a pure function of (seed, layer, module, element),
/// so the backward regenerates the same mask instead of storing it.
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
    func keeps(_ stream: UInt64, _ i: Int) -> Bool {
        var z = seed &+ stream &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(i) &* 0xD1B5_4A32_D192_ED03
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
        let c = config
        let N = batch.batch * batch.length
        precondition(
            batch.batch == ws.batch && batch.length == ws.length, "trainingStep: batch shape differs from the workspace"
        )
        precondition(gradients == nil || gradients!.count == adapter.parameters.count, "trainingStep: gradient size")
        precondition(batch.length <= maxPositions, "trainingStep: rows longer than the usable context")
        for i in 0..<N {
            precondition(
                batch.tokens[i] >= 0 && Int(batch.tokens[i]) < c.vocabSize, "trainingStep: token id out of range")
            precondition(Int(batch.targets[i]) < c.vocabSize, "trainingStep: target id out of range")
        }
        let dropout = dropout.flatMap { $0.probability > 0 ? $0 : nil }
        let x0 = ws.residuals.pointer
        embeddingForward(out: x0, tokens: batch.tokens, table: weights.embedding, count: N)
        for l in 0..<c.layers {
            blockForward(
                l, input: x0 + l * N * c.dim, output: x0 + (l + 1) * N * c.dim, buffers: ws.block(l), batch: batch,
                adapter: adapter, dropout: dropout, ws: ws)
        }
        let xL = x0 + c.layers * N * c.dim
        var loss = StepLoss(sum: 0, tokens: 0)
        batch.targets.withUnsafeBufferPointer { targets in
            var r0 = 0
            while r0 < N {
                let rows = min(ws.logitChunk, N - r0)
                // The final norm, a chunk at a time (its rstd is kept for the backward).
                rmsNormForward(
                    out: ws.normedFinal.pointer, rstd: ws.rstdFinal.pointer + r0, input: xL + r0 * c.dim,
                    weight: weights.outputNorm, rows: rows, dim: c.dim, eps: c.rmsEps)
                logits(hidden: ws.normedFinal.pointer, rows: rows, into: ws.logits.pointer)
                if gradients != nil {
                    // Losses, and the logits turned into their gradients in place.
                    crossEntropyForwardBackward(
                        losses: ws.losses.pointer, logits: ws.logits.pointer, targets: targets.baseAddress! + r0,
                        dLoss: lossScale, rows: rows, vocabSize: c.vocabSize)
                    // dh = dlogits · E (the output projection (vocab, dim)), written over this chunk's rows.
                    weights.output.multiply(ws.dNormed.pointer + r0 * c.dim, ws.logits.pointer, n: rows)
                } else {
                    crossEntropyForward(
                        losses: ws.losses.pointer, logSumExp: nil, logits: ws.logits.pointer,
                        targets: targets.baseAddress! + r0, rows: rows, vocabSize: c.vocabSize)
                }
                for i in 0..<rows where targets[r0 + i] >= 0 {
                    loss.sum += Double(ws.losses[i])
                    loss.tokens += 1
                }
                r0 += rows
            }
        }
        guard let gradients else { return loss }

        ws.dx.zero()
        rmsNormBackward(
            dInput: ws.dx.pointer, dWeight: nil, dOut: ws.dNormed.pointer, input: xL, weight: weights.outputNorm,
            rstd: ws.rstdFinal.pointer, rows: N, dim: c.dim)
        for l in stride(from: c.layers - 1, through: 0, by: -1) {
            let input = x0 + l * N * c.dim
            if ws.recompute {
                blockForward(
                    l, input: input, output: ws.blockOutput.pointer, buffers: ws.block(l), batch: batch,
                    adapter: adapter,
                    dropout: dropout, ws: ws)
            }
            blockBackward(
                l, input: input, buffers: ws.block(l), batch: batch, adapter: adapter, gradients: gradients,
                dropout: dropout, ws: ws)
        }
        return loss
    }

    private func attentionShape(_ batch: TrainingBatch) -> AttentionShape {
        AttentionShape(
            batch: batch.batch, queries: batch.length, keyCapacity: batch.length, start: 0, heads: config.heads,
            kvHeads: config.kvHeads, headDim: config.headDim)
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

    /// y (N, out) += s·B·(A·drop(x)); saves A·drop(x) into `saved` (N, r).
    private func loraForward(
        _ m: LoRAModule, adapter: LoRAAdapter, input x: UnsafePointer<Float>, output y: UnsafeMutablePointer<Float>,
        saved: UnsafeMutablePointer<Float>, rows N: Int, dropout: DropoutPlan?, ws: TrainingWorkspace
    ) {
        let a = adapter.parameters.pointer + m.aOffset
        let b = adapter.parameters.pointer + m.bOffset
        let source = droppedInput(m, x, rows: N, dropout: dropout, ws: ws)
        matmul(saved, source, a, M: N, N: m.rank, K: m.inFeatures, transB: true)
        matmul(y, saved, b, M: N, N: m.outFeatures, K: m.rank, transB: true, alpha: m.scale, beta: 1)
    }

    /// x, or x with this module's dropout mask applied and rescaled by 1/(1−p) (into scratch).
    private func droppedInput(
        _ m: LoRAModule, _ x: UnsafePointer<Float>, rows N: Int, dropout: DropoutPlan?, ws: TrainingWorkspace
    ) -> UnsafePointer<Float> {
        guard let dropout else { return x }
        let out = ws.dropped.pointer
        let count = N * m.inFeatures
        let stream = UInt64(m.layer) << 8 | UInt64(LoRATarget.allCases.firstIndex(of: m.target)!)
        let keepScale = 1 / (1 - dropout.probability)
        Parallel.forRanges(count, grain: 1 << 14) { range in
            for i in range { out[i] = dropout.keeps(stream, i) ? x[i] * keepScale : 0 }
        }
        return UnsafePointer(out)
    }

    /// Backward of one LoRA module: accumulates dA, dB and the gradient of its input.
    private func loraBackward(
        _ m: LoRAModule, adapter: LoRAAdapter, gradients: FloatBuffer, input x: UnsafePointer<Float>,
        saved: UnsafePointer<Float>, dOut dy: UnsafePointer<Float>, dInput dx: UnsafeMutablePointer<Float>, rows N: Int,
        dropout: DropoutPlan?, ws: TrainingWorkspace
    ) {
        loraBackwardWithoutDA(
            m, adapter: adapter, gradients: gradients, saved: saved, dOut: dy, dInput: dx, rows: N, dropout: dropout,
            ws: ws)
        loraBackwardDA(m, gradients: gradients, input: x, rows: N, dropout: dropout, ws: ws)
    }

    /// The part of a LoRA module's backward that does not read its input: dB += s·dyᵀ·(A·x) from the saved A·x,
    /// t = dy·B (left in `ws.loraScratch` for `loraBackwardDA`), and dx += s·t·A, masked like the input when
    /// dropout is on.
    private func loraBackwardWithoutDA(
        _ m: LoRAModule, adapter: LoRAAdapter, gradients: FloatBuffer, saved: UnsafePointer<Float>,
        dOut dy: UnsafePointer<Float>, dInput dx: UnsafeMutablePointer<Float>, rows N: Int, dropout: DropoutPlan?,
        ws: TrainingWorkspace
    ) {
        let a = adapter.parameters.pointer + m.aOffset
        let b = adapter.parameters.pointer + m.bOffset
        let dB = gradients.pointer + m.bOffset
        let t = ws.loraScratch.pointer  // (N, r) = dy·B
        matmul(dB, dy, saved, M: m.outFeatures, N: m.rank, K: N, transA: true, alpha: m.scale, beta: 1)
        matmul(t, dy, b, M: N, N: m.rank, K: m.outFeatures)
        guard let dropout else {
            matmul(dx, t, a, M: N, N: m.inFeatures, K: m.rank, alpha: m.scale, beta: 1)
            return
        }
        let scratch = ws.dropped.pointer
        matmul(scratch, t, a, M: N, N: m.inFeatures, K: m.rank, alpha: m.scale)
        let count = N * m.inFeatures
        let stream = UInt64(m.layer) << 8 | UInt64(LoRATarget.allCases.firstIndex(of: m.target)!)
        let keepScale = 1 / (1 - dropout.probability)
        Parallel.forRanges(count, grain: 1 << 14) { range in
            for i in range where dropout.keeps(stream, i) { dx[i] += scratch[i] * keepScale }
        }
    }

    /// dA += s · tᵀ · drop(x), with t = dy·B as `loraBackwardWithoutDA` left it.
    private func loraBackwardDA(
        _ m: LoRAModule, gradients: FloatBuffer, input x: UnsafePointer<Float>, rows N: Int, dropout: DropoutPlan?,
        ws: TrainingWorkspace
    ) {
        let source = droppedInput(m, x, rows: N, dropout: dropout, ws: ws)
        matmul(
            gradients.pointer + m.aOffset, ws.loraScratch.pointer, source, M: m.rank, N: m.inFeatures, K: N,
            transA: true, alpha: m.scale, beta: 1)
    }

    /// y = x·Wᵀ (+ bias) + LoRA, for one projection.
    private func project(
        _ target: LoRATarget, layer: Int, weight: FrozenMatrix, bias: UnsafePointer<Float>?,
        input x: UnsafePointer<Float>, output y: UnsafeMutablePointer<Float>, buffers: BlockBuffers, rows N: Int,
        adapter: LoRAAdapter, dropout: DropoutPlan?, ws: TrainingWorkspace
    ) {
        linearForward(out: y, input: x, weight: weight, bias: bias, rows: N)
        if let m = adapter.module(layer: layer, target: target) {
            loraForward(
                m, adapter: adapter, input: x, output: y, saved: buffers.lora.pointer + buffers.loraOffsets[target]!,
                rows: N,
                dropout: dropout, ws: ws)
        }
    }

    /// dx (+)= dy·W and the LoRA module's part, for one projection. `accumulate` false overwrites dx first.
    private func projectBackward(
        _ target: LoRATarget, layer: Int, weight: FrozenMatrix, input x: UnsafePointer<Float>,
        dOut dy: UnsafePointer<Float>, dInput dx: UnsafeMutablePointer<Float>, accumulate: Bool, buffers: BlockBuffers,
        rows N: Int, adapter: LoRAAdapter, gradients: FloatBuffer, dropout: DropoutPlan?, ws: TrainingWorkspace
    ) {
        weight.multiply(dx, dy, n: N, beta: accumulate ? 1 : 0)
        if let m = adapter.module(layer: layer, target: target) {
            loraBackward(
                m, adapter: adapter, gradients: gradients, input: x,
                saved: buffers.lora.pointer + buffers.loraOffsets[target]!,
                dOut: dy, dInput: dx, rows: N, dropout: dropout, ws: ws)
        }
    }

    private func blockForward(
        _ l: Int, input x: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, buffers s: BlockBuffers,
        batch: TrainingBatch, adapter: LoRAAdapter, dropout: DropoutPlan?, ws: TrainingWorkspace
    ) {
        let c = config
        let w = weights.layers[l]
        let N = ws.rows
        let h = ws.normedScratch.pointer
        rmsNormForward(
            out: h, rstd: s.rstd1.pointer, input: x, weight: w.attentionNorm, rows: N, dim: c.dim, eps: c.rmsEps)
        project(
            .q, layer: l, weight: w.q, bias: w.qBias, input: h, output: s.q.pointer, buffers: s, rows: N,
            adapter: adapter, dropout: dropout, ws: ws)
        project(
            .k, layer: l, weight: w.k, bias: w.kBias, input: h, output: s.k.pointer, buffers: s, rows: N,
            adapter: adapter, dropout: dropout, ws: ws)
        project(
            .v, layer: l, weight: w.v, bias: w.vBias, input: h, output: s.v.pointer, buffers: s, rows: N,
            adapter: adapter, dropout: dropout, ws: ws)
        ropeForward(s.q.pointer, positions: batch.positions, rows: N, heads: c.heads, table: rope, style: .halfSplit)
        ropeForward(s.k.pointer, positions: batch.positions, rows: N, heads: c.kvHeads, table: rope, style: .halfSplit)
        attentionForward(
            out: ws.attentionOut.pointer, lse: s.lse.pointer, q: s.q.pointer, k: s.k.pointer, v: s.v.pointer,
            shape: attentionShape(batch), keyStarts: batch.documentStarts)
        // x2 = x + o(attention)
        project(
            .o, layer: l, weight: w.o, bias: w.oBias, input: ws.attentionOut.pointer, output: s.x2.pointer, buffers: s,
            rows: N, adapter: adapter, dropout: dropout, ws: ws)
        addInPlace(s.x2.pointer, x, count: N * c.dim)
        rmsNormForward(
            out: h, rstd: s.rstd2.pointer, input: s.x2.pointer, weight: w.ffnNorm, rows: N, dim: c.dim, eps: c.rmsEps)
        project(
            .gate, layer: l, weight: w.gate, bias: nil, input: h, output: s.gate.pointer, buffers: s, rows: N,
            adapter: adapter, dropout: dropout, ws: ws)
        project(
            .up, layer: l, weight: w.up, bias: nil, input: h, output: s.up.pointer, buffers: s, rows: N,
            adapter: adapter, dropout: dropout, ws: ws)
        let m = ws.hidden.pointer
        swigluForward(out: m, gate: s.gate.pointer, up: s.up.pointer, count: N * c.ffnDim)
        // x' = x2 + down(m)
        project(
            .down, layer: l, weight: w.down, bias: nil, input: m, output: output, buffers: s, rows: N, adapter: adapter,
            dropout: dropout, ws: ws)
        addInPlace(output, s.x2.pointer, count: N * c.dim)
    }

    private func blockBackward(
        _ l: Int, input x: UnsafePointer<Float>, buffers s: BlockBuffers, batch: TrainingBatch, adapter: LoRAAdapter,
        gradients: FloatBuffer, dropout: DropoutPlan?, ws: TrainingWorkspace
    ) {
        let c = config
        let w = weights.layers[l]
        let N = ws.rows
        let dx = ws.dx.pointer  // in: gradient of the block output; out: gradient of its input
        let h = ws.normedScratch.pointer
        let dh = ws.dNormed.pointer
        // Feed-forward: x' = x2 + down(silu(gate(h2)) ⊙ up(h2)).
        normalized(h, s.x2.pointer, s.rstd2.pointer, w.ffnNorm, rows: N)
        swigluForward(out: ws.hidden.pointer, gate: s.gate.pointer, up: s.up.pointer, count: N * c.ffnDim)
        projectBackward(
            .down, layer: l, weight: w.down, input: ws.hidden.pointer, dOut: dx, dInput: ws.dHidden.pointer,
            accumulate: false, buffers: s, rows: N, adapter: adapter, gradients: gradients, dropout: dropout, ws: ws)
        // The saved gate and up activations become their gradients in place (this layer needs them no more).
        let dGate = s.gate.pointer
        let dUp = s.up.pointer
        swigluBackward(
            dGate: dGate, dUp: dUp, dOut: ws.dHidden.pointer, gate: s.gate.pointer, up: s.up.pointer,
            count: N * c.ffnDim, accumulate: false)
        projectBackward(
            .gate, layer: l, weight: w.gate, input: h, dOut: dGate, dInput: dh, accumulate: false,
            buffers: s, rows: N, adapter: adapter, gradients: gradients, dropout: dropout, ws: ws)
        projectBackward(
            .up, layer: l, weight: w.up, input: h, dOut: dUp, dInput: dh, accumulate: true, buffers: s,
            rows: N, adapter: adapter, gradients: gradients, dropout: dropout, ws: ws)
        rmsNormBackward(
            dInput: dx, dWeight: nil, dOut: dh, input: s.x2.pointer, weight: w.ffnNorm, rstd: s.rstd2.pointer, rows: N,
            dim: c.dim)
        // Attention: x2 = x + o(attention(rope(q(h1)), rope(k(h1)), v(h1))). The attention output is not kept:
        // o's backward runs without its input, the attention backward recomputes the output when o's LoRA A
        // needs it, and dA follows.
        let dAtt = ws.dAttention.pointer
        w.o.multiply(dAtt, dx, n: N)
        let oModule = adapter.module(layer: l, target: .o)
        if let m = oModule {
            loraBackwardWithoutDA(
                m, adapter: adapter, gradients: gradients, saved: s.lora.pointer + s.loraOffsets[.o]!, dOut: dx,
                dInput: dAtt, rows: N, dropout: dropout, ws: ws)
        }
        ws.dq.zero()
        ws.dk.zero()
        ws.dv.zero()
        attentionBackward(
            dQ: ws.dq.pointer, dK: ws.dk.pointer, dV: ws.dv.pointer, dOut: dAtt, q: s.q.pointer, k: s.k.pointer,
            v: s.v.pointer, lse: s.lse.pointer, recomputedOut: oModule == nil ? nil : ws.attentionOut.pointer,
            shape: attentionShape(batch), keyStarts: batch.documentStarts)
        if let m = oModule {
            loraBackwardDA(m, gradients: gradients, input: ws.attentionOut.pointer, rows: N, dropout: dropout, ws: ws)
        }
        ropeBackward(ws.dq.pointer, positions: batch.positions, rows: N, heads: c.heads, table: rope, style: .halfSplit)
        ropeBackward(
            ws.dk.pointer, positions: batch.positions, rows: N, heads: c.kvHeads, table: rope, style: .halfSplit)
        normalized(h, x, s.rstd1.pointer, w.attentionNorm, rows: N)
        projectBackward(
            .q, layer: l, weight: w.q, input: h, dOut: ws.dq.pointer, dInput: dh, accumulate: false, buffers: s,
            rows: N, adapter: adapter, gradients: gradients, dropout: dropout, ws: ws)
        projectBackward(
            .k, layer: l, weight: w.k, input: h, dOut: ws.dk.pointer, dInput: dh, accumulate: true, buffers: s, rows: N,
            adapter: adapter, gradients: gradients, dropout: dropout, ws: ws)
        projectBackward(
            .v, layer: l, weight: w.v, input: h, dOut: ws.dv.pointer, dInput: dh, accumulate: true, buffers: s, rows: N,
            adapter: adapter, gradients: gradients, dropout: dropout, ws: ws)
        rmsNormBackward(
            dInput: dx, dWeight: nil, dOut: dh, input: x, weight: w.attentionNorm, rstd: s.rstd1.pointer, rows: N,
            dim: c.dim)
    }

    private func addInPlace(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count: Int) {
        Parallel.forRanges(count, grain: 1 << 14) { range in
            for i in range { y[i] += x[i] }
        }
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
