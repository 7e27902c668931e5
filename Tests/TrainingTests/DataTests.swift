import Foundation
import Testing
import Llama
import ModelFormats
import TestSupport
import Tokenizer
import Training

func jsonl(_ lines: [String]) throws -> String {
    let path = Fixtures.temporaryDirectory().appendingPathComponent("d.jsonl").path
    try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: path))
    return path
}

@Suite struct DatasetTests {
    @Test func readsEveryFormat() throws {
        let path = try jsonl([
            #"{"text": "plain"}"#, "", #"{"prompt": "p", "completion": "c"}"#,
            #"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}"#,
            #"{"instruction": "i", "input": "x", "output": "o"}"#, #"{"instruction": "i", "output": "o"}"#,
        ])
        let d = try Dataset(path: path)
        #expect(d.records.map(\.line) == [1, 3, 4, 5, 6])
        #expect(d.records[0].record == .text("plain"))
        #expect(d.records[1].record == .promptCompletion(prompt: "p", completion: "c"))
        #expect(
            d.records[3].record
                == .chat([ChatMessage(role: "user", content: "i\n\nx"), ChatMessage(role: "assistant", content: "o")]))
        #expect(
            d.records[4].record
                == .chat([ChatMessage(role: "user", content: "i"), ChatMessage(role: "assistant", content: "o")]))
    }

    /// Each malformed record names its line and field; with skipping, they are counted instead.
    @Test(
        arguments: [
            (#"{"text": 5}"#, "text", "expected a string"),
            (#"{"prompt": "p"}"#, "completion", "missing"),
            (#"{"messages": []}"#, "messages", "non-empty"),
            (#"{"messages": [{"role": "bot", "content": "x"}]}"#, "messages[0].role", "expected \"system\""),
            (#"{"messages": [{"role": "user", "content": 3}]}"#, "messages[0].content", "expected a string"),
            (#"{"messages": [{"role": "user", "content": "x"}]}"#, "messages", "no assistant message"),
            (
                #"{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]}"#,
                "messages[1].role", "must come first"
            ),
            (#"{"question": "q"}"#, nil, "unrecognised record with keys question"),
            (#"["text"]"#, nil, "expected a JSON object"),
            (#"{"text": "a"#, nil, "invalid JSON"),
        ] as [(String, String?, String)])
    func badRecordsNameFileLineAndField(line: String, field: String?, message: String) throws {
        let path = try jsonl([#"{"text": "fine"}"#, line])
        do {
            _ = try Dataset(path: path)
            Issue.record("expected an error")
        } catch {
            #expect(error.path == path && error.line == 2 && error.field == field, "\(error)")
            #expect(error.message.contains(message), "\(error)")
        }
        let skipping = try Dataset(path: path, skipBadRecords: true)
        #expect(skipping.records.count == 1 && skipping.skipped.count == 1)
    }

    @Test func emptyMissingAndAllBadFilesAreErrors() throws {
        #expect { try Dataset(path: "/nonexistent/data.jsonl") } throws: { "\($0)".contains("no such file") }
        #expect { try Dataset(path: try jsonl(["", "  "])) } throws: { "\($0)".contains("has no records") }
        #expect { try Dataset(path: try jsonl(["{}"]), skipBadRecords: true) } throws: {
            "\($0)".contains("no valid records")
        }
    }
}

@Suite struct ExampleAndRowTests {
    static let lm = try! LanguageModel.load(Fixtures.path("tiny-llama/a.gguf"))
    static let builder = ExampleBuilder(tokenizer: lm.tokenizer!, template: try! lm.chatTemplate(), lossOn: .auto)

    static func trainedText(_ e: Example) -> String {
        lm.tokenizer!.decode(zip(e.tokens, e.trained).filter(\.1).map(\.0), renderSpecial: true)
    }

    @Test func lossMasksFollowTheFormat() throws {
        let text = try Self.builder.example(.text("ab c"))
        #expect(text.trained.allSatisfy { $0 } && text.tokens.last == 1, "all trained, ending with the end token")
        let pc = try Self.builder.example(.promptCompletion(prompt: "ab", completion: " cd"))
        #expect(Self.trainedText(pc) == " cd<|im_end|>")
        let chat = try Self.builder.example(
            .chat([
                ChatMessage(role: "user", content: "hi"), ChatMessage(role: "assistant", content: "yo"),
                ChatMessage(role: "user", content: "ok?"), ChatMessage(role: "assistant", content: "ok"),
            ]))
        #expect(Self.trainedText(chat) == "yo<|im_end|>ok<|im_end|>")
        // Markup parses special tokens; user content keeps "<|im_end|>" as text.
        let injected = try Self.builder.example(
            .chat([ChatMessage(role: "user", content: "<|im_end|>"), ChatMessage(role: "assistant", content: "a")]))
        #expect(injected.tokens.filter { $0 == 1 }.count == 2, "only the template's two end tokens are special")
        let all = ExampleBuilder(tokenizer: Self.lm.tokenizer!, template: try Self.lm.chatTemplate(), lossOn: .all)
        #expect(try all.example(.promptCompletion(prompt: "ab", completion: "c")).trained.allSatisfy { $0 })
    }

    static func examples(_ lengths: [Int]) -> [Example] {
        lengths.enumerated().map { i, n in
            Example(
                tokens: (0..<n).map { Int32(($0 + i) % 60 + 2) },
                trained: [false] + [Bool](repeating: true, count: n - 1))
        }
    }

    @Test func packingKeepsDocumentsApartAndPaddingFillsRows() {
        let plan = RowPlan(examples: Self.examples([5, 4, 6, 3, 20]), length: 10, mode: .pack, padId: 1, seed: nil)
        #expect(plan.truncatedCount == 1)
        // In order: [5 4] [6 3] [10]: documents never split across rows.
        #expect(plan.rowCount(epoch: 0) == 3)
        let row = plan.row(at: 0).row
        #expect(row.documentStarts == [0, 0, 0, 0, 0, 5, 5, 5, 5, 9])
        #expect(row.positions == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0])
        #expect(
            row.targets[4] == -1 && row.targets[8] == -1 && row.targets[9] == -1,
            "document ends and padding predict nothing")
        #expect(row.targets[0] == row.tokens[1])
        let padded = RowPlan(examples: Self.examples([5, 4]), length: 8, mode: .pad, padId: 1, seed: nil)
        #expect(padded.rowCount(epoch: 0) == 2 && padded.row(at: 1).row.tokens.suffix(4) == [1, 1, 1, 1])
    }

    @Test func shufflingIsSeededPerEpochAndTheStreamCrossesEpochs() {
        let examples = Self.examples(Array(repeating: 4, count: 12))
        let a = RowPlan(examples: examples, length: 4, mode: .pack, padId: 1, seed: 7)
        let b = RowPlan(examples: examples, length: 4, mode: .pack, padId: 1, seed: 7)
        let c = RowPlan(examples: examples, length: 4, mode: .pack, padId: 1, seed: 8)
        let firstEpoch = (0..<12).map { a.row(at: $0).row.tokens }
        #expect(firstEpoch == (0..<12).map { b.row(at: $0).row.tokens })
        #expect(firstEpoch != (0..<12).map { c.row(at: $0).row.tokens })
        let second = (12..<24).map { a.row(at: $0).row.tokens }
        #expect(second != firstEpoch && Set(second.map { $0.description }) == Set(firstEpoch.map { $0.description }))
        #expect(a.row(at: 13).epoch == 1)
        #expect(a.batch(from: 11, count: 2).tokens == firstEpoch[11] + second[0])
    }

    @Test func schedulesMatchTransformersFormulas() {
        let cosine = LearningRateSchedule(peak: 1, warmupSteps: 3, totalSteps: 13, kind: .cosine)
        #expect(cosine.rate(step: 0) == 0 && cosine.rate(step: 1) == 1.0 / 3 && cosine.rate(step: 3) == 1)
        #expect(abs(cosine.rate(step: 8) - 0.5) < 1e-12 && cosine.rate(step: 13) == 0)
        let linear = LearningRateSchedule(peak: 2, warmupSteps: 0, totalSteps: 4, kind: .linear, minRatio: 0.5)
        #expect(linear.rate(step: 2) == 1.5 && linear.rate(step: 4) == 1)
        #expect(LearningRateSchedule(peak: 3, warmupSteps: 0, totalSteps: 9, kind: .constant).rate(step: 7) == 3)
    }
}

@Suite struct JobFileTests {
    @Test func readsEveryKeyAndRoundTrips() throws {
        var c = TrainingConfig()
        try c.apply(
            yaml: """
                model: smollm2-135m
                data: chats.jsonl
                output: runs/x
                rank: 16
                alpha: 32
                rslora: true
                targets: [q_proj, v_proj]
                layers: 0-3,7
                learning_rate: 1e-4
                schedule: linear
                batch_size: 2
                seq_len: 128
                steps: 40
                batch_mode: pad
                loss_on: all
                seed: 9
                base_precision: q
                """, source: "/jobs/job.yaml")
        #expect(c.data == "/jobs/chats.jsonl" && c.output == "/jobs/runs/x", "paths are relative to the job file")
        #expect(c.lora.rank == 16 && c.lora.alpha == 32 && c.lora.useRSLoRA && c.lora.targets == [.q, .v])
        #expect(c.lora.layers == [0, 1, 2, 3, 7] && c.learningRate == 1e-4 && c.schedule == .linear)
        #expect(
            c.batchSize == 2 && c.sequenceLength == 128 && c.steps == 40 && c.batchMode == .pad && c.lossOn == .all
                && c.seed == 9 && c.basePrecision == .q)
        var back = TrainingConfig()
        try back.apply(yaml: c.yaml(), source: "job.yaml")
        #expect(back == c)
        #expect(TrainingConfig.keys.count == Set(TrainingConfig.keys.map(\.key)).count)
    }

    @Test(arguments: [
        ("learning_rat: 1e-4", 2, "learning_rat", "unknown key; did you mean learning_rate"),
        ("rank: eight", 2, "rank", "expected an integer"),
        ("schedule: wavy", 2, "schedule", "is not one of cosine, linear, constant"),
        ("targets: [lm_head]", 2, "targets", "unknown LoRA target"),
        ("layers: 5-2", 2, "layers", "expected a list"),
        ("rslora: maybe", 2, "rslora", "expected true or false"),
        ("base_precision: q4", 2, "base_precision", "is not one of auto, f32, q"),
    ])
    func errorsNameTheLineAndKey(line: String, number: Int, key: String, message: String) {
        var c = TrainingConfig()
        do {
            try c.apply(yaml: "data: d.jsonl\n" + line + "\n", source: "job.yaml")
            Issue.record("expected an error")
        } catch {
            #expect(error.line == number && error.field == key && error.message.contains(message), "\(error)")
            #expect(error.description.hasPrefix("job.yaml:\(number): \(key): "))
        }
    }

    /// auto keeps an fp32 base when it and every layer's activations fit in 80 % of the available memory (or the
    /// memory limit), else the quantised one.
    @Test func basePrecisionAutoFollowsTheMemory() {
        let model = LlamaConfig(
            dim: 576, layers: 30, heads: 9, kvHeads: 3, ffnDim: 1536, vocabSize: 49152, contextLength: 8192)
        var c = TrainingConfig()
        #expect(c.basePrecision == .auto)
        #expect(c.resolvedBasePrecision(model: model, availableBytes: 16 << 30) == .f32)
        #expect(c.resolvedBasePrecision(model: model, availableBytes: 1 << 30) == .q)
        c.basePrecision = .f32
        #expect(c.resolvedBasePrecision(model: model, availableBytes: 1 << 30) == .f32, "an explicit choice stands")
        c.basePrecision = .auto
        c.memoryLimit = 1 << 30
        #expect(c.resolvedBasePrecision(model: model, availableBytes: 16 << 30) == .q, "the limit wins")
        #expect((TrainingConfig.availableMemory() ?? 0) > 0, "MemAvailable is read on Linux")
    }

    /// recompute: auto keeps as many layers' activations as fit in the limit, one layer at a time: the plan's
    /// estimate never passes the limit unless nothing fits, it grows with the limit, and always/never ignore it.
    @Test func activationPlanKeepsAsManyLayersAsFit() {
        let model = LlamaConfig(
            dim: 576, layers: 30, heads: 9, kvHeads: 3, ffnDim: 1536, vocabSize: 49152, contextLength: 8192)
        var c = TrainingConfig()
        let adapter = LoRAAdapter(model: model, config: c.lora, seed: 0)
        let base = 92 << 20
        let perLayer = TrainingWorkspace.bytesPerKeptLayer(
            model: model, adapter: adapter, batch: c.batchSize, length: c.sequenceLength)
        #expect(
            c.activationPlan(model: model, adapter: adapter, baseBytes: base, availableBytes: 16 << 30).keptLayers == 30
        )
        c.recompute = .always
        let none = c.activationPlan(model: model, adapter: adapter, baseBytes: base, availableBytes: 16 << 30)
        #expect(none.keptLayers == 0 && none.recomputedLayers == 29 && none.summary == "recomputed for 29 of 30 layers")
        c.recompute = .never
        let all = c.activationPlan(model: model, adapter: adapter, baseBytes: base, availableBytes: 1 << 20)
        #expect(all.keptLayers == 30 && !all.recomputes && all.summary == "kept for all 30 layers")
        #expect(all.stepBytes > none.stepBytes + 28 * perLayer, "each kept layer adds a set")
        c.recompute = .auto
        var previous = -1
        for limit in stride(from: none.stepBytes - perLayer, through: all.stepBytes + perLayer, by: perLayer / 2) {
            c.memoryLimit = limit
            let plan = c.activationPlan(model: model, adapter: adapter, baseBytes: base, availableBytes: 1 << 20)
            #expect(plan.keptLayers >= previous, "more memory never keeps fewer layers")
            #expect(plan.stepBytes <= limit || plan.keptLayers == 0, "\(plan) over \(limit)")
            #expect(plan.keptLayers != 29, "keeping all but one is keeping all")
            if plan.keptLayers > 0 && plan.keptLayers < 30 {
                #expect(plan.summary == "kept for \(plan.keptLayers) of 30 layers, \(29 - plan.keptLayers) recomputed")
                #expect(plan.stepBytes + perLayer > limit, "one more layer would not fit")
            }
            previous = plan.keptLayers
        }
        #expect(previous == 30)
        // Without a limit, 80 % of what is available once the base is loaded.
        c.memoryLimit = nil
        let half = c.activationPlan(
            model: model, adapter: adapter, baseBytes: base,
            availableBytes: Int((Double(none.stepBytes - base + 10 * perLayer) + 1000) / 0.8))
        #expect(half.keptLayers == 10 && half.limitBytes != nil, "\(half)")
    }

    /// memory_limit takes sizes with units; anything else is refused with the field named.
    @Test func memoryLimitTakesSizes() throws {
        #expect(
            parseByteSize("7GiB") == 7 << 30 && parseByteSize("7G") == 7 << 30 && parseByteSize("512 MiB") == 512 << 20)
        #expect(parseByteSize("1.5g") == 3 << 29 && parseByteSize("1000") == 1000 && parseByteSize("64KB") == 64 << 10)
        #expect(parseByteSize("seven") == nil && parseByteSize("7XB") == nil && parseByteSize("-1G") == nil)
        var c = TrainingConfig()
        try c.apply(yaml: "data: d.jsonl\nmemory_limit: 6GiB\n", source: "job.yaml")
        #expect(c.memoryLimit == 6 << 30)
        #expect(c.yaml().contains("memory_limit: \(6 << 30)"))
        var again = TrainingConfig()
        try again.apply(yaml: c.yaml(), source: "again.yaml")
        #expect(again.memoryLimit == 6 << 30, "the limit travels with a job")
        do {
            try c.apply(yaml: "data: d.jsonl\nmemory_limit: lots\n", source: "job.yaml")
            Issue.record("expected an error")
        } catch {
            #expect(error.field == "memory_limit" && error.line == 2, "\(error)")
        }
    }

    @Test func validationListsEveryProblem() {
        var c = TrainingConfig()
        c.learningRate = 2
        c.batchSize = 0
        c.lora.rank = 0
        let problems = c.problems()
        #expect(problems.contains { $0.hasPrefix("data:") } && problems.contains { $0.hasPrefix("learning_rate:") })
        #expect(problems.contains { $0.hasPrefix("batch_size:") } && problems.contains { $0.hasPrefix("rank:") })
    }
}
