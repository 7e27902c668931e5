// `cairn train`, `export` and adapters from the command line, on the tiny model.

import Foundation
import Testing
import ModelFormats
import TestSupport

enum TrainData {
    static let lines = [
        "the cat sat on the mat", "a dog ran in the park", "bread and butter", "one two three", "hello world",
        "pebbles in a pile", "north south east west", "red green blue", "stones on stones", "the river runs",
    ]

    static func write(_ dir: URL, _ extra: [String] = []) throws -> String {
        let path = dir.appendingPathComponent("data.jsonl").path
        let text =
            (lines.map { JSONValue.object(["text": .string($0)]).serialized() } + extra).joined(separator: "\n") + "\n"
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }
}

@Suite struct TrainCLITests {
    @Test func trainsFromAJobFileWithFlagsOverridingThenGeneratesAndExports() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try TrainData.write(dir)
        let job = dir.appendingPathComponent("job.yaml").path
        try Data(
            "model: \(tinyModel)\ndata: data.jsonl\noutput: run\nrank: 4\nsteps: 50\nseq_len: 24\nbatch_size: 2\nlearning_rate: 0.01\n"
                .utf8
        )
        .write(to: URL(fileURLWithPath: job))
        let r = try cairn("train", "--config", job, "--steps", "4", "--json")
        #expect(r.status == 0, "\(r.stderr)")
        let events = r.stdout.split(separator: "\n").compactMap { try? JSONValue.parse(String($0)).objectValue }
        #expect(events.filter { $0["event"] == "step" }.count == 4, "--steps overrides the job file")
        #expect(events.first?["event"] == "planned" && events.last?["event"] == "finished")
        let run = dir.appendingPathComponent("run").path
        let saved = try String(contentsOfFile: run + "/job.yaml", encoding: .utf8)
        #expect(saved.contains("steps: 4") && saved.contains("rank: 4"))
        let config = try HFModelDirectory.readJSON(run + "/adapter_config.json").objectValue!
        #expect(config["r"] == 4 && config["lora_alpha"] == 16 && config["peft_type"] == "LORA")

        let g = try cairn(
            "generate", "--model", tinyModel, "--adapter", run, "--prompt", "hello", "--max-tokens", "4", "--json")
        #expect(g.status == 0, "\(g.stderr)")
        let e = try cairn("export", run, "--format", "gguf", "-o", dir.appendingPathComponent("run.gguf").path)
        #expect(e.status == 0 && e.stderr.contains("wrote 14 LoRA modules"), "\(e.stderr)")
        let withGGUF = try cairn(
            "generate", "--model", tinyModel, "--adapter", dir.appendingPathComponent("run.gguf").path, "--prompt",
            "hello", "--max-tokens", "4", "--json")
        #expect(
            try JSONValue.parse(withGGUF.stdout).objectValue?["tokens"]
                == JSONValue.parse(g.stdout).objectValue?["tokens"], "GGUF and PEFT forms act alike")
        let evalWith = try cairn(
            "eval", "--model", tinyModel, "--adapter", run, "--data", dir.appendingPathComponent("data.jsonl").path,
            "--json")
        let evalWithout = try cairn(
            "eval", "--model", tinyModel, "--data", dir.appendingPathComponent("data.jsonl").path, "--json")
        let tuned = try #require(try JSONValue.parse(evalWith.stdout).objectValue?["loss"]?.doubleValue)
        let base = try #require(try JSONValue.parse(evalWithout.stdout).objectValue?["loss"]?.doubleValue)
        #expect(tuned < base, "training lowered the loss on its data: \(tuned) vs \(base)")
    }

    /// --memory-limit decides which layers keep their activations, and the plan is printed: all of them under a
    /// generous limit, none (with a warning that says how to get under it) under one the step cannot meet; a
    /// limit that is not a size is refused.
    @Test func theMemoryLimitChoosesWhichLayersKeepTheirActivations() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let data = try TrainData.write(dir)
        func plan(_ limit: String, _ name: String) throws -> (text: String, json: JSONObject?) {
            let common = ["train", "--model", tinyModel, "--data", data, "--steps", "1", "--seq-len", "24"]
            let text = try cairn(common + ["--output", dir.appendingPathComponent(name).path, "--memory-limit", limit])
            #expect(text.status == 0, "\(text.stderr)")
            let json = try cairn(
                common + [
                    "--output", dir.appendingPathComponent(name + "-json").path, "--memory-limit", limit, "--json",
                ])
            let planned = json.stdout.split(separator: "\n").compactMap { try? JSONValue.parse(String($0)).objectValue }
                .first { $0["event"] == "planned" }
            return (text.stderr, planned)
        }
        let roomy = try plan("8GiB", "roomy")
        #expect(roomy.text.contains("activations kept for all 2 layers"), "\(roomy.text)")
        #expect(roomy.json?["kept_layers"] == 2 && roomy.json?["recompute"] == false)
        let tight = try plan("1MiB", "tight")
        #expect(tight.text.contains("activations recomputed for 1 of 2 layers"), "\(tight.text)")
        #expect(tight.text.contains("more than the limit even with every layer recomputed"), "\(tight.text)")
        #expect(tight.json?["kept_layers"] == 0 && tight.json?["recomputed_layers"] == 1)
        let bad = try cairn(
            "train", "--model", tinyModel, "--data", data, "--output", dir.appendingPathComponent("bad").path,
            "--memory-limit", "lots")
        #expect(bad.status == 64 && bad.stderr.contains("--memory-limit: expected a size"), "\(bad.stderr)")
    }

    /// SIGTERM mid-run: the step finishes, a checkpoint is written, the exit is clean; --resume completes it.
    @Test func stopsCleanlyOnSIGTERMAndResumes() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let data = try TrainData.write(dir)
        let run = dir.appendingPathComponent("run").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: cairnExecutable)
        process.arguments = [
            "train", "--model", tinyModel, "--data", data, "--output", run, "--steps", "100000", "--seq-len", "24",
            "--batch", "2", "--save-every", "0",
        ]
        let err = Pipe()
        process.standardError = err
        process.standardOutput = Pipe()
        try process.run()
        // Wait (bounded) until training is under way: the first step is in the metrics.
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if let text = try? String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8),
                text.contains("\"step\"")
            {
                break
            }
            usleep(20_000)
        }
        process.terminate()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(stderr)")
        #expect(stderr.contains("stopped at step") && stderr.contains("--resume"), "\(stderr)")
        #expect(FileManager.default.fileExists(atPath: run + "/checkpoint.safetensors"))
        // Shorten the run and finish it.
        var job = try String(contentsOfFile: run + "/job.yaml", encoding: .utf8)
        let stopped = Int(stderr.split(separator: "stopped at step ")[1].prefix { $0.isNumber })!
        job = job.replacingOccurrences(of: "steps: 100000", with: "steps: \(stopped + 2)")
        try Data(job.utf8).write(to: URL(fileURLWithPath: run + "/job.yaml"))
        let resumed = try cairn("train", "--resume", run, "--json")
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let steps = resumed.stdout.split(separator: "\n").compactMap { try? JSONValue.parse(String($0)).objectValue }
            .filter { $0["event"] == "step" }
        #expect(steps.map { $0["step"]!.intValue! } == [stopped + 1, stopped + 2])
    }

    /// Relative paths given at the start still point to the same files when resuming from elsewhere.
    @Test func resumesFromAnotherDirectoryWithRelativePaths() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try TrainData.write(dir)
        let first = Process()
        first.executableURL = URL(fileURLWithPath: cairnExecutable)
        first.currentDirectoryURL = dir
        first.arguments = [
            "train", "--model", tinyModel, "--data", "data.jsonl", "--output", "runs/x", "--steps", "2", "--seq-len",
            "32",
        ]
        first.standardError = Pipe()
        try first.run()
        first.waitUntilExit()
        #expect(first.terminationStatus == 0)
        let run = dir.appendingPathComponent("runs/x").path
        var job = try String(contentsOfFile: run + "/job.yaml", encoding: .utf8)
        #expect(job.contains("data: \"\(dir.path)/data.jsonl\""), "\(job)")
        job = job.replacingOccurrences(of: "steps: 2", with: "steps: 3")
        try Data(job.utf8).write(to: URL(fileURLWithPath: run + "/job.yaml"))
        let resumed = try cairn("train", "--resume", run, "--json")
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stdout.contains("\"step\":3"))
    }

    @Test func badDataAndSettingsAreOneLineErrors() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let data = try TrainData.write(dir, [#"{"messages": [{"role": "robot", "content": "x"}]}"#])
        let output = dir.appendingPathComponent("run").path
        let bad = try cairn(
            "train", "--model", tinyModel, "--data", data, "--output", output, "--steps", "1", "--seq-len", "64")
        #expect(bad.status == 1 && bad.stderr.contains("data.jsonl:11: messages[0].role: expected"), "\(bad.stderr)")
        let skipped = try cairn(
            "train", "--model", tinyModel, "--data", data, "--output", output, "--steps", "1", "--skip-bad-records",
            "--seq-len", "64")
        #expect(skipped.status == 0 && skipped.stderr.contains("1 bad records skipped"), "\(skipped.stderr)")
        let job = dir.appendingPathComponent("job.yaml").path
        try Data("data: data.jsonl\nrank: 8\nlearnig_rate: 0.1\n".utf8).write(to: URL(fileURLWithPath: job))
        let yaml = try cairn("train", "--config", job, "--output", output + "2")
        #expect(yaml.status == 1 && yaml.stderr.contains("job.yaml:3: learnig_rate: unknown key"), "\(yaml.stderr)")
        let long = try cairn(
            "train", "--model", tinyModel, "--data", data, "--output", output + "4", "--seq-len", "4096")
        #expect(
            long.status == 1 && long.stderr.contains("seq_len: 4096 is longer than the model's context (128 tokens)"),
            "\(long.stderr)")
        #expect(!FileManager.default.fileExists(atPath: output + "4"), "a run that cannot start leaves no directory")
        let flags = try cairn("train", "--data", data, "--output", output + "3", "--lr", "7")
        #expect(flags.status == 64 && flags.stderr.contains("learning_rate: must be in (0, 1)"), "\(flags.stderr)")
        #expect(try cairn("train", "--list-keys").stdout.contains("grad_accum"))
    }
}

@Suite struct ProgressTests {
    /// On a log (stderr not a terminal) progress comes as plain lines, every CAIRN_PROGRESS_SECONDS, the last one
    /// the final state; on a terminal it is one line rewritten in place, never wider than the terminal.
    @Test func progressIsPlainLinesOnALogAndOneFittedLineOnATerminal() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let data = try TrainData.write(dir)
        let arguments = [
            "train", "--model", tinyModel, "--data", data, "--rank", "4", "--steps", "12", "--seq-len", "24",
            "--batch", "2", "--save-every", "0",
        ]
        let log = try runCommand(
            cairnExecutable, arguments + ["--output", dir.appendingPathComponent("a").path],
            environment: ["CAIRN_PROGRESS_SECONDS": "0"])
        #expect(log.status == 0, "\(log.stderr)")
        #expect(!log.stderr.contains("\r") && !log.stderr.contains("\u{1B}["), "no terminal control on a log")
        let steps = log.stderr.split(separator: "\n").filter { $0.hasPrefix("step ") }
        #expect(steps.count == 12 && steps.last?.hasPrefix("step 12/12 · loss") == true, "\(log.stderr)")

        // A terminal: `script` runs it on a pseudo-terminal whose width is unknown, so COLUMNS decides.
        let command = ([cairnExecutable] + arguments + ["--output", dir.appendingPathComponent("b").path])
            .map { "'\($0)'" }.joined(separator: " ")
        let tty = try runCommand(
            "/usr/bin/script", ["-qec", command, "/dev/null"], environment: ["COLUMNS": "40"], timeout: 120)
        #expect(tty.status == 0, "\(tty.stdout)")
        #expect(tty.stdout.contains("\r\u{1B}[Kstep "), "rewritten in place: \(tty.stdout.debugDescription)")
        for segment in tty.stdout.components(separatedBy: "\u{1B}[K").dropFirst() {
            let line = segment.split(whereSeparator: \.isNewline).first ?? ""
            #expect(line.count <= 39, "fits 40 columns: \(line.debugDescription)")
        }
        #expect(tty.stdout.contains("step 12/12"), "the final state stays")
    }
}

/// Every family from the command line: `cairn train` a few steps (f32 base, and the quantised base where the
/// fixture has Q8_0 matrices), `generate` with the run's PEFT adapter and with its GGUF export alike, `eval`, and
/// `inspect` naming the architecture.
@Suite struct FamilyCLITests {
    @Test(arguments: ["llama3", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3"])
    func trainsGeneratesExportsAndInspects(family: String) throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let data = try TrainData.write(dir)
        let hasQ8 = ["qwen3", "gemma3", "phi3"].contains(family)
        let model = Fixtures.path("families/\(family)/\(hasQ8 ? "model-q8_0.gguf" : "model.gguf")")
        for precision in hasQ8 ? ["f32", "q"] : ["f32"] {
            let run = dir.appendingPathComponent("run-\(precision)").path
            let r = try cairn(
                "train", "--model", model, "--data", data, "--output", run, "--steps", "3", "--rank", "4",
                "--seq-len", "16", "--batch", "2", "--base-precision", precision, "--json")
            #expect(r.status == 0, "\(family) \(precision): \(r.stderr)")
            let steps = r.stdout.split(separator: "\n").filter { $0.contains("\"event\":\"step\"") }
            #expect(steps.count == 3, "\(family) \(precision): \(r.stdout)")
        }
        let run = dir.appendingPathComponent("run-f32").path
        let gguf = dir.appendingPathComponent("run.gguf").path
        #expect(try cairn("export", run, "--format", "gguf", "-o", gguf).status == 0)
        var generated: [JSONValue?] = []
        for adapter in [run, gguf] {
            let g = try cairn(
                "generate", "--model", model, "--adapter", adapter, "--raw", "--prompt", "the cat", "--max-tokens", "5",
                "--json")
            #expect(g.status == 0, "\(family): \(g.stderr)")
            generated.append(try JSONValue.parse(g.stdout).objectValue?["tokens"])
        }
        #expect(generated[0] != nil && generated[0] == generated[1], "\(family): PEFT and GGUF forms act alike")
        let e = try cairn("eval", "--model", model, "--adapter", run, "--data", data, "--json")
        #expect(e.status == 0, "\(family): \(e.stderr)")
        let inspected = try cairn("inspect", model)
        let architecture = family == "llama3" || family == "mistral" ? "llama" : family
        #expect(inspected.status == 0 && inspected.stdout.contains(architecture), "\(inspected.stdout)")
    }
}
