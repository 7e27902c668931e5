// Checks on the real model, SmolLM2-135M-Instruct (Q4_1 GGUF), against Hugging Face tokenizers and
// transformers (Scripts/fixtures/tokenizer.py, real_model.py). Scripts/test runs them in release with
// CAIRN_REAL_MODEL set to the cached model; without it they are skipped.

import Foundation
import Testing
import ModelFormats
import TensorKernels
import TestSupport
import Tokenizer
import Training
import Llama

let realModelPath = ProcessInfo.processInfo.environment["CAIRN_REAL_MODEL"]

@Suite(.enabled(if: realModelPath != nil, "set CAIRN_REAL_MODEL to the SmolLM2-135M GGUF (Scripts/test does)"))
struct RealModelTests {
    static let lm = try! LanguageModel.load(.gguf(realModelPath!))
    static let reference = try! HFModelDirectory.readJSON(Fixtures.path("smollm2/reference.json")).objectValue!

    static func ids(_ v: JSONValue?) -> [Int32] { v!.arrayValue!.map { Int32($0.intValue!) } }

    /// Token ids equal those of HF `tokenizers` (a BPE built from the same vocabulary and merges with the
    /// SmolLM2 pre-tokenizer) on the 389-string corpus, and decoding gives the text back.
    @Test func tokenizerMatchesHuggingFaceOnTheCorpus() throws {
        let tokenizer = try #require(Self.lm.tokenizer)
        let corpus = try HFModelDirectory.readJSON(Fixtures.path("tokenizer/corpus.json")).arrayValue!.map {
            $0.stringValue!
        }
        let fixture = try HFModelDirectory.readJSON(Fixtures.path("tokenizer/smollm2-ids.json")).objectValue!
        let expected = fixture["ids"]!.arrayValue!.map { Self.ids($0) }
        let decoded = fixture["decoded"]!.arrayValue!.map { $0.stringValue! }
        #expect(corpus.count >= 300)
        var mismatches: [String] = []
        for (i, text) in corpus.enumerated() {
            let ours = tokenizer.encode(text)
            if ours != expected[i] { mismatches.append("\(text.debugDescription): \(ours) vs \(expected[i])") }
            #expect(tokenizer.decode(ours, renderSpecial: true) == decoded[i])
        }
        #expect(mismatches.isEmpty, "\(mismatches.count) of \(corpus.count) differ; first: \(mismatches.prefix(3))")
        #expect(tokenizer.encode("Hello world") == [19556, 905])
    }

    /// `cairn eval`'s loss on a fixed text equals transformers' within 1e-4 relative.
    @Test func lossMatchesTransformers() throws {
        let eval = Self.reference["eval"]!.objectValue!
        let tokens = Self.ids(eval["ids"])
        let expected = eval["loss"]!.doubleValue!
        let text = try String(contentsOfFile: Fixtures.path("smollm2/eval-text.txt"), encoding: .utf8)
        #expect(Self.lm.tokenizer!.encode(text) == tokens)
        let total = Self.lm.model.loss(tokens: tokens, window: 1024)
        #expect(total.count == tokens.count - 1)
        let relative = abs(total.mean - expected) / expected
        #expect(relative <= 1e-4, "loss \(total.mean) vs transformers \(expected): relative difference \(relative)")
    }

    /// The chat-templated France prompt: the same ids as transformers' tokenizer, the same top logits, and the
    /// same greedy answer, "The capital of France is Paris."
    @Test func greedyAnswerAndLogitsMatchTransformers() throws {
        let france = Self.reference["france"]!.objectValue!
        let tokenizer = try #require(Self.lm.tokenizer)
        let template = try Self.lm.chatTemplate()
        let prompt = try template.render(
            [ChatMessage(role: "user", content: "What is the capital of France?")], addGenerationPrompt: true)
        #expect(prompt == france["prompt"]!.stringValue!)
        let promptIds = tokenizer.encode(prompt)
        #expect(promptIds == Self.ids(france["prompt_ids"]))

        let model = Self.lm.model
        let state = InferenceState(config: model.config, batch: 1, capacity: promptIds.count, maxChunk: promptIds.count)
        let hidden = promptIds.withUnsafeBufferPointer {
            model.forward(tokens: $0.baseAddress!, count: promptIds.count, state: state)
        }
        let logits = FloatBuffer(count: model.config.vocabSize)
        model.logits(hidden: hidden + (promptIds.count - 1) * model.config.dim, rows: 1, into: logits.pointer)
        let topIds = Self.ids(france["top_ids"])
        let topLogits = france["top_logits"]!.arrayValue!.map { Float($0.doubleValue!) }
        expectClose(topIds.map { logits[Int($0)] }, topLogits, tolerance: Tolerance.reference, "top-50 logits")

        let result = model.generate(prompt: promptIds, maxTokens: 24, stopIds: tokenizer.endOfGenerationIds)
        #expect(result.tokens == Self.ids(france["greedy_ids"]))
        #expect(tokenizer.decode(result.tokens) == "The capital of France is Paris.")
        #expect(result.stopReason == .endOfGeneration)
    }

    /// Training tokenizes a conversation segment by segment (to know which tokens carry the loss); that must
    /// give exactly the ids of tokenizing the whole rendered text, which is what generation sees.
    @Test func segmentTokenizationEqualsWholeTextTokenization() throws {
        let tokenizer = try #require(Self.lm.tokenizer)
        let template = try Self.lm.chatTemplate()
        let builder = ExampleBuilder(tokenizer: tokenizer, template: template, lossOn: .auto)
        let dataset = try Dataset(path: Fixtures.path("smollm2/capitals-train.jsonl"))
        let extra: [Record] = [
            .chat([
                ChatMessage(role: "system", content: "Be brief."),
                ChatMessage(role: "user", content: "Hi!  \n\nHow are   you?"),
                ChatMessage(role: "assistant", content: " Fine, 123 ok.\n"),
            ]),
            .chat([
                ChatMessage(role: "user", content: "日本語 😀"), ChatMessage(role: "assistant", content: "ok"),
                ChatMessage(role: "user", content: "x"), ChatMessage(role: "assistant", content: "y"),
            ]),
        ]
        for record in dataset.records.map(\.record) + extra {
            guard case .chat(let messages) = record else { continue }
            let whole = tokenizer.encode(try template.render(messages, addGenerationPrompt: false))
            #expect(try builder.example(record).tokens == whole)
        }
    }

    /// The base kept in its Q4_1 blocks (--base-precision q, activations recomputed) trains with the loss curve
    /// of the fp32 base it dequantises to (activations kept): 4 steps of 2 × 128 tokens (two batches, each seen twice) within 1e-3, while its
    /// weights take under a fifth of the memory.
    @Test func quantisedBaseLossCurveEqualsFP32() throws {
        let q = try LanguageModel.load(.gguf(realModelPath!), precision: .q).model
        let f32 = Self.lm.model
        #expect(q.weights.residentBytes * 5 < f32.weights.residentBytes)
        var rng = SeededGenerator(seed: 11)
        let two = (0..<2).map { _ in
            TrainingBatch(rows: (0..<2).map { _ in (0..<128).map { _ in Int32(rng.next() % 49152) } })
        }
        let batches = two + two
        func curve(_ model: LlamaModel, recompute: Bool) -> [Double] {
            let adapter = LoRAAdapter(model: model.config, config: LoRAConfig(rank: 8, alpha: 16), seed: 1)
            let session = TrainingSession(
                model: model, adapter: adapter,
                schedule: LearningRateSchedule(peak: 1e-3, warmupSteps: 0, totalSteps: 4, kind: .constant),
                keptLayers: recompute ? 0 : .max)
            return batches.map { session.step([$0]).loss.mean }
        }
        let a = curve(f32, recompute: false)
        let b = curve(q, recompute: true)
        #expect(zip(a, b).allSatisfy { abs($0 - $1) <= 1e-3 }, "f32 \(a) vs q \(b)")
        #expect(a[2] < a[0] && a[3] < a[1], "the adapter learns the batches it sees twice: \(a)")
    }

    @Test func configurationIsSmolLM2() {
        let c = Self.lm.model.config
        #expect(
            c.dim == 576 && c.layers == 30 && c.heads == 9 && c.kvHeads == 3 && c.ffnDim == 1536 && c.vocabSize == 49152
        )
        #expect(c.tiedEmbeddings && c.ropeTheta == 100000 && c.contextLength == 8192)
    }
}
