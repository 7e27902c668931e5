// cairn eval: the loss and perplexity of a model on a text.

import ArgumentParser
import Llama
import ModelFormats
import Tokenizer

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Score a text: mean loss per token (nats) and perplexity.",
        discussion: """
            The text is tokenized as is (no chat template, no BOS unless the tokenizer adds one) and cut into \
            non-overlapping windows of --window tokens; each token after the first of its window is predicted \
            from the ones before it, as transformers computes the loss with labels = input_ids.

            Example: cairn eval --text-file notes.txt --json
            """)

    @OptionGroup var modelOptions: ModelOptions

    @OptionGroup var input: TextInput

    @Option(help: "Tokens per window (at most the model's context length).")
    var window = 1024

    @Flag(help: "Print {\"loss\", \"tokens\", \"perplexity\"} as JSON.")
    var json = false

    func validate() throws {
        guard window >= 2 else { throw ValidationError("--window must be at least 2") }
    }

    func run() throws {
        let text = try input.read(what: "text to score")
        let lm = try modelOptions.load()
        let tokenizer: BPETokenizer
        do { tokenizer = try lm.requireTokenizer() } catch { throw CLIError(error.description) }
        let tokens = tokenizer.encode(text, parseSpecial: true, addSpecialTokens: true)
        guard tokens.count >= 2 else {
            throw CLIError("the text has \(tokens.count) token(s); scoring needs at least 2")
        }
        let progress = ProgressLine("scoring", total: tokens.count)
        let total = lm.model.loss(tokens: tokens, window: window) { progress.update($0) }
        progress.finish()
        if json {
            Terminal.printJSON([
                "loss": .number(total.mean), "tokens": .integer(Int64(total.count)),
                "perplexity": .number(total.perplexity),
            ])
        } else {
            Terminal.write(
                "loss \(String(format: "%.4f", total.mean)) nats/token · perplexity \(String(format: "%.3f", total.perplexity)) · \(total.count) tokens predicted\n"
            )
        }
    }
}
