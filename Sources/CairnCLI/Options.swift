// Options shared by the commands that run a model.

import ArgumentParser
import Llama
import ModelFormats
import TensorKernels

struct ModelOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "A GGUF file, a Hugging Face model directory, or a cached model name.")
    var model = "smollm2-135m"

    @Option(help: "Threads for the kernels (default: all cores).")
    var threads: Int?

    func validate() throws {
        if let threads, threads < 1 || threads > 1024 { throw ValidationError("--threads must be between 1 and 1024") }
    }

    /// Applies the thread count and loads the model with adapters merged, mapping load errors to a clean
    /// exit and showing adapter warnings on stderr.
    func load(adapters: [String] = []) throws -> LanguageModel {
        if let threads { Parallel.threadCount = threads }
        do {
            let lm = try LanguageModel.load(model, adapters: adapters)
            for warning in lm.adapterWarnings { Terminal.note("warning: \(warning)") }
            return lm
        } catch {
            throw CLIError(error.description)
        }
    }
}

/// Adapters to apply on top of the model.
struct AdapterOptions: ParsableArguments {
    @Option(
        name: .customLong("adapter"),
        help: "A LoRA adapter (PEFT directory, cairn run directory or GGUF LoRA); repeatable.")
    var adapters: [String] = []
}

/// An error the CLI reports as one line on stderr, exiting with status 1.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

/// A text given inline (`--text`) or as a file (`--text-file`, `-` for standard input).
struct TextInput: ParsableArguments {
    @Option(help: "The text.")
    var text: String?

    @Option(help: "A file with the text (- for standard input).")
    var textFile: String?

    func validate() throws {
        if text != nil, textFile != nil { throw ValidationError("give either --text or --text-file, not both") }
    }

    /// The text; `what` names it in the error when neither option is given.
    func read(what: String) throws -> String {
        if let text { return text }
        guard let textFile else { throw ValidationError("give the \(what) with --text or --text-file") }
        if textFile == "-" { return String(decoding: Terminal.readStandardInput(), as: UTF8.self) }
        do {
            return try MappedFile(path: textFile).withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        } catch {
            throw CLIError(error.description)
        }
    }
}
