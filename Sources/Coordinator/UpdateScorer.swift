// UpdateScorer: `score_updates` of a diloco or federated job. Before a round's participants are combined, the
// coordinator measures on the job's held-out data the loss of the global adapter and of each participant's adapter
// (the global one with that participant's update alone), and leaves out the participants whose update makes it
// worse. The base model is loaded on the coordinator the first time it is needed; the held-out rows are those of
// the job's evaluations. This runs on the coordinator's thread, so held-out data for it should be small (tens of
// rows): every round costs participants + 1 forward passes over it.

import Llama
import ModelFormats
import Training

/// Held-out loss of adapters of one job, on the coordinator.
final class UpdateScorer {
    private let session: TrainingSession
    private let batches: [TrainingBatch]

    /// Loads the job's base and builds the held-out batches.
    init(prepared: PreparedJob, modelPath: String, layout adapter: LoRAAdapter) throws(JobError) {
        guard let plan = prepared.validationPlan else {
            throw JobError("score_updates: needs held-out data (validation_data) to score the updates on")
        }
        let c = prepared.config
        do {
            let source = ModelSource.gguf(modelPath)
            let lm = try LanguageModel.load(source, precision: c.resolvedBasePrecision(model: try source.config()))
            let scratch = LoRAAdapter(
                model: lm.model.config, modules: adapter.modules.map { ($0.layer, $0.target, $0.rank, $0.scale) })
            let activations = c.activationPlan(
                model: lm.model.config, adapter: scratch, baseBytes: lm.model.weights.residentBytes)
            session = TrainingSession(
                model: lm.model, adapter: scratch, config: c, totalSteps: 1, keptLayers: activations.keptLayers)
        } catch { throw JobError("score_updates: cannot load the base on the coordinator: \(error)") }
        let rows = (0..<plan.rowCount(epoch: 0)).map { plan.row(at: $0).row }
        let size = c.batchSize
        batches = stride(from: 0, to: rows.count, by: size).map { start in
            TrainingBatch(concatenating: Array(rows[start..<min(rows.count, start + size)]), length: c.sequenceLength)
                .padded(toRows: size, padId: 0)
        }
    }

    /// Mean held-out loss per token of an adapter with these parameters.
    func loss(_ parameters: [Float]) -> Double {
        session.adapter.parameters.pointer.update(from: parameters, count: parameters.count)
        let total = session.evaluate(batches)
        return total.tokens > 0 ? total.sum / Double(total.tokens) : 0
    }
}
