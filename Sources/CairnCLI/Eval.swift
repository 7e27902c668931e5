// cairn eval: the loss and perplexity of a model on a text.

import ArgumentParser
import Foundation
import Llama
import ModelFormats
import Tokenizer
import Training

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Score a text or a dataset: mean loss per token (nats) and perplexity.",
        discussion: """
            A text (--text, --text-file) is tokenized as is (no chat template, no BOS unless the tokenizer adds \
            one) and cut into non-overlapping windows of --window tokens; each token after the first of its \
            window is predicted from the ones before it, as transformers computes the loss with labels = input_ids.

            A dataset (--data, JSONL as for cairn train) is scored as training scores it: chat and instruction \
            records on their assistant turns, prompt/completion records on the completion (--loss-on all: \
            everything), each example on its own.

            Examples:
              cairn eval --text-file notes.txt --json
              cairn eval --adapter runs/capitals --data held-out.jsonl --json
            """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var adapterOptions: AdapterOptions

    @Option(help: "A JSONL dataset to score instead of a text.")
    var data: String?

    @Option(help: "With --data: auto (assistant turns and completions) or all.")
    var lossOn = "auto"

    @Option(help: "With --data: chatml, smollm2, llama3, mistral, gemma or phi3 instead of the model's template.")
    var chatTemplate: String?

    @OptionGroup var input: TextInput

    @Option(help: "Tokens per window (at most the model's context length).")
    var window = 1024

    @Flag(help: "Print {\"loss\", \"tokens\", \"perplexity\"} as JSON.")
    var json = false

    func validate() throws {
        guard window >= 2 else { throw ValidationError("--window must be at least 2") }
        if data != nil, input.text != nil || input.textFile != nil {
            throw ValidationError("give --data or a text (--text, --text-file), not both")
        }
        guard LossOn(rawValue: lossOn) != nil else { throw ValidationError("--loss-on must be auto or all") }
    }

    func run() throws {
        if let data {
            try scoreDataset(data)
            return
        }
        let text = try input.read(what: "text to score")
        let lm = try modelOptions.load(adapters: adapterOptions.adapters)
        let tokenizer: BPETokenizer
        do { tokenizer = try lm.requireTokenizer() } catch { throw CLIError(error.description) }
        let tokens = tokenizer.encode(text, parseSpecial: true, addSpecialTokens: true)
        guard tokens.count >= 2 else {
            throw CLIError("the text has \(tokens.count) token(s); scoring needs at least 2")
        }
        let progress = ProgressLine("scoring", total: tokens.count)
        let total = lm.model.loss(tokens: tokens, window: window) { progress.update($0) }
        progress.finish()
        report(total.mean, total.count)
    }

    func report(_ loss: Double, _ tokens: Int) {
        if json {
            Terminal.printJSON([
                "loss": .number(loss), "tokens": .integer(Int64(tokens)), "perplexity": .number(exp(loss)),
            ])
        } else {
            Terminal.write(
                "loss \(String(format: "%.4f", loss)) nats/token · perplexity \(String(format: "%.3f", exp(loss))) · \(tokens) tokens predicted\n"
            )
        }
    }

    func scoreDataset(_ path: String) throws {
        let lm = try modelOptions.load(adapters: adapterOptions.adapters)
        let scorer: HeldOutScorer
        do {
            scorer = try HeldOutScorer(
                model: lm, path: path, lossOn: LossOn(rawValue: lossOn)!, chatTemplate: chatTemplate, maxLength: window)
        } catch { throw CLIError(error.description) }
        let progress = ProgressLine("scoring", total: scorer.rows)
        let total = scorer.loss(LoRAAdapter(model: lm.model.config, modules: [])) {
            progress.update($0, unit: "examples")
        }
        progress.finish()
        if scorer.plan.truncatedCount > 0 {
            Terminal.note(
                "note: \(scorer.plan.truncatedCount) examples longer than \(scorer.plan.length) tokens were truncated")
        }
        report(total.mean, total.tokens)
    }
}
