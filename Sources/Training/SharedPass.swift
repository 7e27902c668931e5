// SharedPass: several adapters' training on one base, their rows computed in one pass over the frozen weights
// (the idea of mLoRA and LoRAFusion). The rows of each session's micro-batch follow one another in one batch;
// the base's products run once over all of them and each adapter's LoRA products over its own rows. Each
// session's gradients and loss are those its own `computeGradients` gives for the same micro-batch.
//
// What it saves: the base weights are read (and, quantised, dequantised) once per product instead of once per
// adapter, and the products run on more rows, where sgemm is more efficient. The arithmetic is the same.

import Llama
import TensorKernels

/// Training sessions on one model whose steps are computed together.
public final class SharedPass: @unchecked Sendable {
    /// The sessions, in the order their rows take in the shared batch.
    public let sessions: [TrainingSession]
    private var workspaces: [String: TrainingWorkspace] = [:]

    /// Sessions that share a model: the same `LlamaModel` instance, hence one copy of its weights.
    public init(_ sessions: [TrainingSession]) {
        precondition(!sessions.isEmpty, "SharedPass: no sessions")
        precondition(sessions.allSatisfy { $0.model === sessions[0].model }, "SharedPass: sessions on different models")
        self.sessions = sessions
    }

    /// The workspace of a shared batch's shape: for every session's adapter, keeping the layers that the most
    /// frugal session keeps.
    private func workspace(batch: Int, length: Int) -> TrainingWorkspace {
        let key = "\(batch)x\(length)"
        if let ws = workspaces[key] { return ws }
        let ws = TrainingWorkspace(
            model: sessions[0].model.config, adapters: sessions.map(\.adapter), batch: batch, length: length,
            keptLayers: sessions.map(\.keptLayers).min()!, dropout: sessions.contains { $0.dropout > 0 })
        workspaces[key] = ws
        return ws
    }

    /// Sets each session's `gradients` from its own micro-batch, as its `computeGradients([batch], normalize:)`
    /// would (dropout masks included), in one pass. Batches of different lengths are padded to the longest with
    /// positions that train nothing.
    ///
    /// - Returns: Each session's summed loss and trained tokens.
    @discardableResult
    public func computeGradients(_ batches: [TrainingBatch], normalize: Bool = true) -> [StepLoss] {
        computeGradients(microBatches: batches.map { [$0] }, normalize: normalize)
    }

    /// Sets each session's `gradients` from its own micro-batches, as its `computeGradients(microBatches,
    /// normalize:)` would: pass k computes the k-th micro-batch of every session that has one, and a session's
    /// gradients sum over its micro-batches, each with its own dropout masks, scaled by its own step's tokens.
    ///
    /// - Returns: Each session's summed loss and trained tokens (zero for a session given no micro-batch).
    @discardableResult
    public func computeGradients(microBatches: [[TrainingBatch]], normalize: Bool = true) -> [StepLoss] {
        precondition(microBatches.count == sessions.count, "SharedPass: micro-batches for each session")
        let scales = microBatches.map {
            TrainingSession.lossScale(targets: $0.reduce(0) { $0 + $1.targetCount }, normalize: normalize)
        }
        for session in sessions { session.gradients.zero() }
        var totals = sessions.map { _ in StepLoss(sum: 0, tokens: 0) }
        let passes = microBatches.map(\.count).max() ?? 0
        for k in 0..<passes {
            let taking = sessions.indices.filter { k < microBatches[$0].count }
            let length = taking.map { microBatches[$0][k].length }.max()!
            var batches: [TrainingBatch] = []
            var rows: [AdapterRows] = []
            var first = 0
            for i in taking {
                let session = sessions[i]
                let batch = microBatches[i][k].padded(toLength: length)
                rows.append(
                    AdapterRows(
                        adapter: session.adapter, rows: first..<first + batch.batch, gradients: session.gradients,
                        lossScale: scales[i], dropout: session.dropoutPlan(microBatch: k)))
                batches.append(batch)
                first += batch.batch
            }
            let losses = sessions[0].model.trainingStep(
                batch: TrainingBatch(concatenating: batches, length: length), adapters: rows,
                workspace: workspace(batch: first, length: length))
            for (i, loss) in zip(taking, losses) { totals[i] += loss }
        }
        return totals
    }

    /// One optimizer step of every session, each on its own micro-batch, computed in one pass.
    @discardableResult
    public func step(_ batches: [TrainingBatch]) -> [StepResult] {
        let losses = computeGradients(batches)
        return zip(sessions, losses).map { session, loss in session.optimizer.step(session.gradients, loss: loss) }
    }
}
