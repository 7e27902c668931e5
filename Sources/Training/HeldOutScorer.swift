// HeldOutScorer: the held-out loss of adapters on one base, as training scores data (the loss on assistant turns
// and completions, or everything with loss_on: all), forward only. Examples are packed into rows as training packs
// them (an example never attends to another in its row), and rows go through the model four at a time, so the
// products are large enough to run near the machine's ceiling. The adapter is applied as LoRA (never merged into
// the weights), so scoring many candidates of one layout costs one forward pass each over the held-out rows.

import Llama
import ModelFormats
import Tokenizer

/// Scores adapters on a held-out dataset.
public final class HeldOutScorer {
    public let model: LlamaModel
    /// The held-out examples, packed into rows.
    public let plan: RowPlan
    /// Rows per forward pass.
    public static let batch = 4
    private let batches: [TrainingBatch]
    /// SHA-256 of the held-out file.
    public let dataHash: String
    /// Workspaces by adapter layout.
    private var workspaces: [String: TrainingWorkspace] = [:]

    /// Reads and tokenizes a JSONL file for a model.
    ///
    /// - Throws: `InputError` naming the file and line of a record that cannot be scored.
    public init(
        model lm: LanguageModel, path: String, lossOn: LossOn = .auto, chatTemplate: String? = nil,
        maxLength: Int = 1024
    ) throws(InputError) {
        model = lm.model
        let tokenizer: BPETokenizer
        do { tokenizer = try lm.requireTokenizer() } catch { throw InputError(path: path, "\(error)") }
        let dataset = try Dataset(path: path)
        let builder = ExampleBuilder(
            tokenizer: tokenizer, template: try? lm.chatTemplate(override: chatTemplate), lossOn: lossOn)
        var examples: [Example] = []
        for (line, record) in dataset.records {
            do { examples.append(try builder.example(record)) } catch {
                throw InputError(path: path, line: line, "\(error)")
            }
        }
        // Rows as long as the longest example (so none is cut), and at least 256 tokens to pack short ones.
        let longest = examples.map(\.tokens.count).max() ?? 2
        let length = min(maxLength, lm.model.maxPositions, max(longest, 256))
        let padId = tokenizer.eosId ?? 0
        plan = RowPlan(examples: examples, length: max(2, length), mode: .pack, padId: padId, seed: nil)
        guard plan.exampleCount > 0 else { throw InputError(path: path, "no example has a token to score") }
        let packed = plan
        let rows = (0..<packed.rowCount(epoch: 0)).map { packed.row(at: $0).row }
        let size = Self.batch
        batches = stride(from: 0, to: rows.count, by: size).map { start in
            TrainingBatch(concatenating: Array(rows[start..<min(rows.count, start + size)]), length: packed.length)
                .padded(toRows: size, padId: padId)
        }
        do { dataHash = try FileHash.sha256(file: path) } catch { throw InputError(path: path, "\(error)") }
    }

    /// Examples scored.
    public var rows: Int { plan.exampleCount }

    /// The summed loss and the tokens scored, with `adapter` applied (`progress`: examples done).
    public func loss(_ adapter: LoRAAdapter, progress: ((Int) -> Void)? = nil) -> StepLoss {
        let key = adapter.modules.map { "\($0.layer).\($0.target.rawValue).\($0.rank)" }.joined(separator: ",")
        let workspace =
            workspaces[key]
            ?? TrainingWorkspace(
                model: model.config, adapter: adapter, batch: Self.batch, length: plan.length, recompute: false)
        workspaces[key] = workspace
        var total = StepLoss()
        for (i, batch) in batches.enumerated() {
            total += model.trainingStep(batch: batch, adapter: adapter, gradients: nil, workspace: workspace)
            progress?(min(rows, (i + 1) * rows / max(1, batches.count)))
        }
        return total
    }
}
