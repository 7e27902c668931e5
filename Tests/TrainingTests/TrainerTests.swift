import Foundation
import Testing
import Llama
import ModelFormats
import TestSupport
import Training

enum TrainerFixtures {
    /// Text the tiny vocabulary covers (lower-case letters, digits, a little punctuation).
    static let lines = [
        "the cat sat on the mat", "a dog ran in the park", "bread and butter", "one two three four",
        "hello world", "pebbles in a pile", "north south east west", "red green blue", "up and down the hill",
        "stones on stones", "the river runs", "sun and rain", "left right left", "cairns mark the path",
        "a b c d e f g", "count 1 2 3 4 5", "sky above", "rock paper", "the end", "walk on",
    ]

    static func dataFile(_ dir: URL, _ name: String = "data.jsonl", lines: [String] = lines) throws -> String {
        let path = dir.appendingPathComponent(name).path
        let text = lines.map { JSONValue.object(["text": .string($0)]).serialized() }.joined(separator: "\n") + "\n"
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func config(_ dir: URL, output: String, steps: Int = 10) throws -> TrainingConfig {
        var c = TrainingConfig()
        c.model = Fixtures.path("tiny-llama/a.gguf")
        c.data = try dataFile(dir)
        c.output = dir.appendingPathComponent(output).path
        c.lora = LoRAConfig(rank: 4, alpha: 8, dropout: 0.1)
        c.learningRate = 1e-2
        c.warmupSteps = 2
        c.batchSize = 2
        c.sequenceLength = 16
        c.steps = steps
        c.saveEvery = 5
        c.seed = 3
        c.validationSplit = 0.2
        c.evalEvery = 5
        return c
    }
}

@Suite struct TrainerTests {
    /// 10 steps straight and 5 steps, a stop, and a resume for 5 more give the same adapter bytes.
    @Test func resumeIsBitExact() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let straight = try TrainerFixtures.config(dir, output: "straight")
        let summary = try Trainer(config: straight).run { _ in .proceed }
        #expect(summary.steps == 10 && !summary.stopped)

        let interrupted = try TrainerFixtures.config(dir, output: "interrupted")
        let first = try Trainer(config: interrupted).run { event in
            if case .step(let r, _, _, _) = event, r.step == 5 { return .stop }
            return .proceed
        }
        #expect(first.stopped && first.steps == 5)
        let resumed = try Trainer(resuming: interrupted.output).run { _ in .proceed }
        #expect(resumed.steps == 10)
        for file in ["adapter_model.safetensors", "checkpoint.safetensors"] {
            let a = try Data(contentsOf: URL(fileURLWithPath: straight.output + "/" + file))
            let b = try Data(contentsOf: URL(fileURLWithPath: interrupted.output + "/" + file))
            #expect(a == b, "\(file) differs after resume")
        }
        let metrics = try String(contentsOfFile: interrupted.output + "/metrics.jsonl", encoding: .utf8)
        #expect(metrics.split(separator: "\n").filter { $0.contains("\"loss\"") }.count == 10)
    }

    @Test func lossFallsAndEventsArrive() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        var c = try TrainerFixtures.config(dir, output: "run", steps: 30)
        c.lora.dropout = 0
        c.learningRate = 3e-2
        var losses: [Double] = []
        var evaluations: [Double] = []
        var plan: TrainingPlan?
        var checkpoints: [Int] = []
        _ = try Trainer(config: c).run { event in
            switch event {
            case .planned(let p): plan = p
            case .step(let r, _, _, _): losses.append(r.loss.mean)
            case .evaluation(_, let l): evaluations.append(l.mean)
            case .checkpoint(let step, _): checkpoints.append(step)
            }
            return .proceed
        }
        #expect(plan?.totalSteps == 30 && plan?.validationExamples == 4 && plan?.examples == 16)
        #expect(losses.count == 30)
        let early = losses.prefix(5).reduce(0, +) / 5
        let late = losses.suffix(5).reduce(0, +) / 5
        #expect(late < 0.8 * early, "training loss falls: \(losses)")
        #expect(evaluations.count == 6 && evaluations.last! < evaluations.first!, "eval loss falls: \(evaluations)")
        #expect(checkpoints == [5, 10, 15, 20, 25, 30])
        // The run directory is a PEFT adapter that loads and changes the model.
        let tuned = try LanguageModel.load(c.model, adapters: [c.output])
        let base = try LanguageModel.load(c.model)
        let tokens = base.tokenizer!.encode("the cat sat on the mat")
        #expect(tuned.model.loss(tokens: tokens, window: 64).mean < base.model.loss(tokens: tokens, window: 64).mean)
    }

    @Test func refusesToOverwriteARunAndToResumeOnChangedData() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let c = try TrainerFixtures.config(dir, output: "run", steps: 2)
        _ = try Trainer(config: c).run { _ in .proceed }
        #expect { try Trainer(config: c).run { _ in .proceed } } throws: { "\($0)".contains("--resume") }
        _ = try TrainerFixtures.dataFile(dir, lines: TrainerFixtures.lines + ["something new"])
        #expect { try Trainer(resuming: c.output).run { _ in .proceed } } throws: { "\($0)".contains("data changed") }
        #expect { try Trainer(resuming: dir.path) } throws: { "\($0)".contains("job.yaml") }
    }
}

@Suite struct ExampleJobFileTests {
    /// The job files in Cluster/examples (the README and the demo submit them) parse, hold no problems, and name
    /// files that exist.
    @Test func theExampleJobFilesAreValid() throws {
        let dir = Fixtures.directory.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Cluster/examples")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".yaml") }
        #expect(files.count >= 3)
        for name in files {
            var config = TrainingConfig()
            try config.apply(yamlFile: dir.appendingPathComponent(name).path)
            #expect(config.problems().isEmpty, "\(name): \(config.problems())")
            for path in [config.data, config.validationData].compactMap({ $0 }) where !path.isEmpty {
                #expect(FileManager.default.fileExists(atPath: path), "\(name) names \(path)")
            }
        }
    }
}
