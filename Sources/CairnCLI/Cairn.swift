// The `cairn` executable: the only place that parses arguments, prints and exits.

import ArgumentParser

@main
struct Cairn: ParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "cairn",
        abstract: "Fine-tune, run and merge LoRA adapters for llama-family models, on one machine or many.",
        discussion: """
            Models: --model takes a GGUF file, a Hugging Face model directory (config.json + safetensors), or the \
            name of a model in the cache ($CAIRN_HOME/models, default ~/.cache/cairn/models). Scripts/setup \
            fetches the default model, smollm2-135m (SmolLM2-135M-Instruct, Q4_1 GGUF).

            Examples:
              cairn generate --prompt "What is the capital of France?"
              cairn eval --text-file notes.txt --json
              cairn tokenize --text "Hello world" --json
              cairn inspect ~/.cache/cairn/models/smollm2-135m.gguf

            A cluster (see `cairn coordinator --help`):
              cairn cluster up --workers 2 --state /tmp/cairn     # coordinator + 2 local workers
              cairn submit --state /tmp/cairn Cluster/examples/capitals.yaml
              cairn status --state /tmp/cairn --watch      # or the dashboard: http://127.0.0.1:7071/
              cairn report --state /tmp/cairn job-1 -o job-1.html
              cairn publish --state /tmp/cairn job-1 --name capitals   # then `cairn adapters`, `cairn fetch`
            """,
        version: version,
        subcommands: [
            Generate.self, Eval.self, Tokenize.self, Train.self, Export.self, Merge.self, Diff.self, Lineage.self,
            Fuse.self,
            Inspect.self,
            CoordinatorCommand.self,
            WorkerCommand.self, ClientCommand.self, Submit.self, Status.self, Workers.self, Cancel.self, Pull.self,
            PublishCommand.self, AdaptersCommand.self, FetchCommand.self, Report.self, ClusterCommand.self,
        ]
    )
}
