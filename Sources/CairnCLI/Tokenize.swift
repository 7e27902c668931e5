// cairn tokenize: text to token ids with the model's tokenizer.

import ArgumentParser
import Llama
import ModelFormats
import Tokenizer

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn text into the model's token ids.",
        discussion: """
            Special-token text such as <|im_start|> becomes its id unless --no-special. The model's BOS token is \
            added only with --add-bos (and only if the tokenizer has one).

            Example: cairn tokenize --text "Hello world" --json   →  {"ids":[19556,905]}
            """)

    @OptionGroup var modelOptions: ModelOptions

    @OptionGroup var input: TextInput

    @Flag(help: "Tokenize special-token text as plain text.")
    var noSpecial = false

    @Flag(help: "Prepend the BOS token when the tokenizer uses one.")
    var addBos = false

    @Flag(help: "Print {\"ids\": [...]} as JSON.")
    var json = false

    @Flag(help: "Print each token's id and text, one per line.")
    var verbose = false

    func run() throws {
        let text = try input.read(what: "text to tokenize")
        // The vocabulary only: a vocabulary-only GGUF file (llama.cpp's tokenizer tests) works too.
        let tokenizer: BPETokenizer
        do { tokenizer = try ModelSource.resolve(modelOptions.model).tokenizer().tokenizer } catch {
            throw CLIError(error.description)
        }
        let ids = tokenizer.encode(text, parseSpecial: !noSpecial, addSpecialTokens: addBos)
        if json {
            Terminal.printJSON(["ids": .array(ids.map { .integer(Int64($0)) })])
        } else if verbose {
            for id in ids {
                Terminal.write("\(id)\t\(JSONValue.string(tokenizer.decode([id], renderSpecial: true)).serialized())\n")
            }
        } else {
            Terminal.write(ids.map(String.init).joined(separator: " ") + "\n")
        }
    }
}
