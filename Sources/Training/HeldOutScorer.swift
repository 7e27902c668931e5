// HeldOutScorer: the held-out loss of adapters on one base, as training scores data (the loss on assistant turns
// and completions, or everything with loss_on: all), forward only, each example in a row of its own. The adapter
// is applied as LoRA (never merged into the weights), so scoring many candidates of one layout costs one forward
// pass each over the held-out rows and nothing else.

import Llama
import ModelFormats
import Tokenizer

/// Scores adapters on a held-out dataset.
public final class HeldOutScorer {
    public let model: LlamaModel
    /// The held-out rows, one example each.
    public let plan: RowPlan
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
        let length = min(maxLength, lm.model.maxPositions, examples.map(\.tokens.count).max() ?? 2)
        plan = RowPlan(
            examples: examples, length: max(2, length), mode: .pad, padId: tokenizer.eosId ?? 0, seed: nil)
        guard plan.exampleCount > 0 else { throw InputError(path: path, "no example has a token to score") }
        do { dataHash = try FileHash.sha256(file: path) } catch { throw InputError(path: path, "\(error)") }
    }

    /// Rows scored.
    public var rows: Int { plan.rowCount(epoch: 0) }

    /// The summed loss and the tokens scored, with `adapter` applied (`progress`: rows done).
    public func loss(_ adapter: LoRAAdapter, progress: ((Int) -> Void)? = nil) -> StepLoss {
        let key = adapter.modules.map { "\($0.layer).\($0.target.rawValue).\($0.rank)" }.joined(separator: ",")
        let workspace =
            workspaces[key]
            ?? TrainingWorkspace(model: model.config, adapter: adapter, batch: 1, length: plan.length, recompute: false)
        workspaces[key] = workspace
        var total = StepLoss()
        for i in 0..<rows {
            total += model.trainingStep(
                batch: plan.row(at: i).row, adapter: adapter, gradients: nil, workspace: workspace)
            progress?(i + 1)
        }
        return total
    }
}
