// cairn export: an adapter (a run directory, a PEFT directory or a GGUF LoRA file) in another format.

import ArgumentParser
import Foundation
import Llama
import ModelFormats
import Training

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write an adapter as a PEFT directory or a GGUF LoRA file (llama.cpp --lora).",
        discussion: """
            The input is a cairn run directory, a PEFT directory or a GGUF LoRA file. The base model (--model, or \
            the run's job.yaml) supplies the architecture: GGUF LoRA files store q/k rows in llama.cpp's order \
            for llama bases. Provenance (base model hash, recipe, data hash) is carried over.

            Examples:
              cairn export runs/capitals --format gguf -o capitals.gguf
              cairn export adapter.gguf --format peft -o capitals-peft/
            """)

    @Argument(help: "The adapter: run directory, PEFT directory or GGUF LoRA file.")
    var adapter: String

    @Option(name: .shortAndLong, help: "The base model (default: the run's model, else smollm2-135m).")
    var model: String?

    @Option(help: "peft or gguf.")
    var format: String

    @Option(name: .shortAndLong, help: "Where to write: a directory for peft, a file for gguf.")
    var output: String

    func validate() throws {
        guard AdapterFormat(rawValue: format) != nil else { throw ValidationError("--format must be peft or gguf") }
    }

    func run() throws {
        var modelSpec = model
        var recipe: LoRAConfig?
        let job = (adapter as NSString).appendingPathComponent("job.yaml")
        if FileManager.default.fileExists(atPath: job) {
            var c = TrainingConfig()
            do { try c.apply(yamlFile: job) } catch { throw CLIError(error.description) }
            if modelSpec == nil { modelSpec = c.model }
            if c.initAdapter == nil { recipe = c.lora }
        }
        do {
            let config = try ModelSource.resolve(modelSpec ?? "smollm2-135m").config()
            let (loaded, provenance) = try LoRAAdapter.load(path: adapter, model: config)
            switch AdapterFormat(rawValue: format)! {
            case .peft: try loaded.savePEFT(directory: output, provenance: provenance, recipe: recipe)
            case .gguf:
                try loaded.saveGGUF(path: output, provenance: provenance, name: (adapter as NSString).lastPathComponent)
            }
            Terminal.note(
                "wrote \(loaded.modules.count) LoRA modules (\(loaded.parameterCount) parameters) to \(output)")
        } catch {
            throw CLIError(error.description)
        }
    }
}
