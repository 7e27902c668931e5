import Foundation
import Testing
import ModelFormats
import TensorKernels
import TestSupport
import Llama

/// transformers' outputs for the tiny models (Scripts/fixtures/tiny_llama.py).
struct TinyReference {
    let tokens: [Int32]  // (2, 12)
    let logits: [Float]  // (2, 12, 64)
    let loss: Double
    static let batch = 2
    static let length = 12

    init(_ name: String) throws {
        let f = try SafetensorsFile(path: Fixtures.path("tiny-llama/\(name)/reference.safetensors"))
        let raw = f.data(for: try #require(f.tensor(named: "tokens")))
        tokens = (0..<raw.count / 4).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self) }
        logits = try #require(f.storedTensor(named: "logits")).floats()
        loss = try #require(Double(f.metadata["loss"] ?? ""))
    }
}

func runFull(_ model: LlamaModel, _ tokens: [Int32], batch: Int, length: Int) -> [Float] {
    let state = InferenceState(config: model.config, batch: batch, capacity: length, maxChunk: length)
    let hidden = tokens.withUnsafeBufferPointer { model.forward(tokens: $0.baseAddress!, count: length, state: state) }
    let logits = FloatBuffer(count: batch * length * model.config.vocabSize)
    model.logits(hidden: hidden, rows: batch * length, into: logits.pointer)
    return logits.array
}

@Suite struct LlamaForwardTests {
    /// Every way of storing the tiny models gives transformers' logits: HF safetensors (single and sharded),
    /// GGUF F32 with llama.cpp's Q/K permutation, GGUF Q8_0, and a model with biases and an untied head.
    @Test(arguments: [
        ("a-hf", "a"), ("a-hf-sharded", "a"), ("a.gguf", "a"), ("a-q8_0.gguf", "a-q8_0"), ("b-hf", "b"),
        ("b.gguf", "b"),
    ])
    func logitsMatchTransformers(file: String, reference: String) throws {
        let lm = try LanguageModel.load(Fixtures.path("tiny-llama/\(file)"))
        let ref = try TinyReference(reference)
        let logits = runFull(lm.model, ref.tokens, batch: TinyReference.batch, length: TinyReference.length)
        expectClose(logits, ref.logits, tolerance: Tolerance.reference, file)
    }

    @Test func configurationsAreReadFromBothFormats() throws {
        let hf = try LanguageModel.load(Fixtures.path("tiny-llama/b-hf")).model.config
        let gguf = try LanguageModel.load(Fixtures.path("tiny-llama/b.gguf")).model.config
        #expect(
            hf.dim == 32 && hf.layers == 2 && hf.heads == 4 && hf.kvHeads == 2 && hf.headDim == 8 && hf.ffnDim == 64)
        #expect(!hf.tiedEmbeddings && hf.qkvBias && hf.outputBias)
        #expect(
            gguf.dim == hf.dim && gguf.kvHeads == hf.kvHeads && gguf.tiedEmbeddings == hf.tiedEmbeddings && gguf.qkvBias
        )
        let a = try LanguageModel.load(Fixtures.path("tiny-llama/a.gguf")).model
        #expect(a.config.tiedEmbeddings && a.weights.output == a.weights.embedding)
        // Exact parameter count of model a: embeddings 64·32, per layer q 32·32, k,v 16·32, o 32·32,
        // ffn 3·64·32, two norms of 32; final norm 32.
        #expect(a.config.parameterCount == 64 * 32 + 2 * (1024 + 512 + 512 + 1024 + 3 * 2048 + 64) + 32)
        #expect(a.weights.storage.count == a.config.parameterCount)
    }

    @Test func lossMatchesTransformers() throws {
        let model = try LanguageModel.load(Fixtures.path("tiny-llama/a.gguf")).model
        let ref = try TinyReference("a")
        var total = LossTotal()
        for b in 0..<2 {
            let sequence = Array(ref.tokens[b * 12..<(b + 1) * 12])
            let part = model.loss(tokens: sequence, window: 64, chunk: 5)
            total.sum += part.sum
            total.count += part.count
        }
        #expect(total.count == 22)
        #expect(abs(total.mean - ref.loss) <= 1e-4 * ref.loss, "loss \(total.mean) vs transformers \(ref.loss)")
    }

    /// Feeding tokens one at a time through the KV cache, or in uneven chunks, gives the full pass's logits.
    @Test func cachedAndChunkedForwardEqualTheFullPass() throws {
        let model = try LanguageModel.load(Fixtures.path("tiny-llama/b.gguf")).model
        let ref = try TinyReference("b")
        let sequence = Array(ref.tokens[0..<12])
        let full = runFull(model, sequence, batch: 1, length: 12)
        for chunk in [1, 5] {
            let state = InferenceState(config: model.config, batch: 1, capacity: 12, maxChunk: chunk)
            var logits: [Float] = []
            var position = 0
            while position < 12 {
                let n = min(chunk, 12 - position)
                let hidden = sequence.withUnsafeBufferPointer {
                    model.forward(tokens: $0.baseAddress! + position, count: n, state: state)
                }
                let out = FloatBuffer(count: n * 64)
                model.logits(hidden: hidden, rows: n, into: out.pointer)
                logits += out.array
                position += n
            }
            expectClose(logits, full, tolerance: Tolerance.reordered * 10, "chunk \(chunk)")
        }
    }

    @Test func windowsSplitLongTexts() throws {
        let model = try LanguageModel.load(Fixtures.path("tiny-llama/a.gguf")).model
        let tokens = (0..<50).map { Int32(($0 * 7) % 64) }
        let whole = model.loss(tokens: tokens, window: 50)
        let windowed = model.loss(tokens: tokens, window: 20)
        #expect(whole.count == 49)
        #expect(windowed.count == 19 + 19 + 9, "the first token of each window has no prediction")
    }
}

@Suite struct ModelLoadingErrorTests {
    func directory(config: (inout JSONObject) -> Void) throws -> String {
        let dir = Fixtures.temporaryDirectory()
        try Fixtures.copy(["tiny-llama/a-hf/model.safetensors"], to: dir)
        var object = try HFModelDirectory.readJSON(Fixtures.path("tiny-llama/a-hf/config.json")).objectValue!
        config(&object)
        try Data(JSONValue.object(object).serialized().utf8).write(to: dir.appendingPathComponent("config.json"))
        return dir.path
    }

    func loadError(_ path: String) -> FormatError? {
        do {
            _ = try LanguageModel.load(path)
            return nil
        } catch {
            return error
        }
    }

    @Test func reportsEveryMissingTensorAtOnce() throws {
        let path = try directory { $0["num_hidden_layers"] = 4 }
        let error = try #require(loadError(path))
        #expect(error.message.contains("model.layers.2.input_layernorm.weight: missing"))
        #expect(error.message.contains("and 10 more"), "\(error.message)")
    }

    @Test func refusesWhatItWouldComputeWrongly() throws {
        let cases: [(String, (inout JSONObject) -> Void)] = [
            ("model_type", { $0["model_type"] = "gpt2" }),
            (
                "rope_parameters",
                { $0["rope_parameters"] = ["rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0] }
            ),
            ("hidden_act", { $0["hidden_act"] = "gelu" }),
            ("mlp_bias", { $0["mlp_bias"] = true }),
        ]
        for (field, edit) in cases {
            #expect(loadError(try directory(config: edit))?.field == field)
        }
        let wrongShape = try directory { $0["intermediate_size"] = 48 }
        #expect(loadError(wrongShape)?.message.contains("expected [48, 32]") == true)
    }

    @Test func resolvesCacheNamesAndExplainsMisses() throws {
        let home = Fixtures.temporaryDirectory()
        try FileManager.default.createDirectory(
            at: home.appendingPathComponent("models"), withIntermediateDirectories: true)
        try Fixtures.copy(["tiny-llama/a.gguf"], to: home.appendingPathComponent("models"), as: "tiny.gguf")
        setenv("CAIRN_HOME", home.path, 1)
        defer { unsetenv("CAIRN_HOME") }
        #expect(try ModelSource.resolve("tiny") == .gguf(home.appendingPathComponent("models/tiny.gguf").path))
        #expect(
            try ModelSource.resolve(Fixtures.path("tiny-llama/a-hf")) == .huggingFace(Fixtures.path("tiny-llama/a-hf")))
        #expect { try ModelSource.resolve("nonexistent") } throws: {
            ($0 as? FormatError)?.code == .notFound && ($0 as? FormatError)?.message.contains("cached: tiny") == true
        }
    }
}

@Suite struct GenerationTests {
    static let model = try! LanguageModel.load(Fixtures.path("tiny-llama/a.gguf")).model

    @Test func greedyPicksTheArgmaxOfTheFullPassAndStops() throws {
        let prompt: [Int32] = [1, 5, 9, 33]
        let result = Self.model.generate(prompt: prompt, maxTokens: 6, stopIds: [])
        #expect(result.tokens.count == 6 && result.stopReason == .maxTokens)
        // Each greedy token is the argmax of a from-scratch forward over everything before it.
        var sequence = prompt
        for token in result.tokens {
            let logits = runFull(Self.model, sequence, batch: 1, length: sequence.count)
            let last = Array(logits[(sequence.count - 1) * 64..<sequence.count * 64])
            #expect(Int32(last.indices.max { last[$0] < last[$1] }!) == token)
            sequence.append(token)
        }
        let stopped = Self.model.generate(prompt: prompt, maxTokens: 6, stopIds: [result.tokens[2]])
        #expect(stopped.tokens == Array(result.tokens[0..<2]) && stopped.stopReason == .endOfGeneration)
        var seen = 0
        let early = Self.model.generate(prompt: prompt, maxTokens: 6, stopIds: []) { _ in
            seen += 1
            return seen < 3
        }
        #expect(early.tokens.count == 3 && early.stopReason == .stopped)
    }

    @Test func samplingIsSeededAndTopKOneIsGreedy() {
        let prompt: [Int32] = [3, 4, 5]
        let a = Self.model.generate(
            prompt: prompt, maxTokens: 8, stopIds: [], sampling: SamplingSettings(temperature: 1.5, seed: 9))
        let b = Self.model.generate(
            prompt: prompt, maxTokens: 8, stopIds: [], sampling: SamplingSettings(temperature: 1.5, seed: 9))
        let c = Self.model.generate(
            prompt: prompt, maxTokens: 8, stopIds: [], sampling: SamplingSettings(temperature: 1.5, seed: 10))
        #expect(a.tokens == b.tokens && a.tokens != c.tokens)
        let greedy = Self.model.generate(prompt: prompt, maxTokens: 8, stopIds: [])
        let topOne = Self.model.generate(
            prompt: prompt, maxTokens: 8, stopIds: [], sampling: SamplingSettings(temperature: 0.7, topK: 1, seed: 1))
        #expect(greedy.tokens == topOne.tokens)
    }

    @Test func samplerFollowsTheDistribution() {
        // logits for p = (0.5, 0.25, 0.25): top-p 0.5 keeps only the first; plain sampling roughly halves.
        let logits: [Float] = [log(0.5), log(0.25), log(0.25)]
        var nucleus = Sampler(SamplingSettings(temperature: 1, topP: 0.5, seed: 3))
        #expect((0..<50).allSatisfy { _ in logits.withUnsafeBufferPointer { nucleus.sample($0) } == 0 })
        var plain = Sampler(SamplingSettings(temperature: 1, seed: 4))
        let zeros = (0..<4000).filter { _ in logits.withUnsafeBufferPointer { plain.sample($0) } == 0 }.count
        #expect(abs(Double(zeros) / 4000 - 0.5) < 0.04, "\(zeros) of 4000")
    }
}

@Suite struct HostileModelTests {
    /// Metadata claiming a huge model over a small file is refused before any allocation the file cannot back.
    @Test func metadataCannotForceAHugeAllocation() throws {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("llama.embedding_length", .uint32(1 << 20))
        w.set("llama.block_count", .uint32(1 << 20))
        w.set("llama.feed_forward_length", .uint32(1 << 22))
        w.set("llama.attention.head_count", .uint32(1 << 10))
        w.set("llama.context_length", .uint32(1 << 24))
        w.set("llama.vocab_size", .uint32(1 << 22))
        w.addTensor(name: "token_embd.weight", ne: [4, 2], floats: [Float](repeating: 0, count: 8))
        let path = Fixtures.temporaryDirectory().appendingPathComponent("huge.gguf").path
        try w.write(to: path)
        let file = try GGUFFile(path: path)
        let config = try LlamaConfig(gguf: file)
        #expect(config.parameterCount > 1 << 50, "counted without overflow")
        #expect {
            try LlamaWeights.load(from: file, config: config, naming: .gguf(permutedQK: true))
        } throws: { error in
            (error as? FormatError)?.message.contains("token_embd.weight: shape [2, 4], expected") == true
        }
    }

    /// A tokenizer with more tokens than the embedding has rows would index past it; it is refused.
    @Test func tokenizerLargerThanTheEmbeddingIsRefused() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try Fixtures.copy(["tiny-llama/a-hf/config.json", "tiny-llama/a-hf/model.safetensors"], to: dir)
        try Fixtures.copy(["tokenizer/tiny-llama3/tokenizer.json"], to: dir)
        let lm = try LanguageModel.load(dir.path)
        #expect(lm.tokenizer == nil)
        #expect(lm.tokenizerProblem?.message.contains("belongs to another model") == true)
        #expect(lm.model.maxPositions == 128)
    }
}

@Suite struct HFDirectoryExtrasTests {
    /// tokenizer_config.json's chat_template may be a string or a list with a "default" entry.
    @Test(arguments: [false, true])
    func chatTemplateIsReadInEitherForm(asList: Bool) throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try Fixtures.copy(["tiny-llama/a-hf/config.json", "tiny-llama/a-hf/model.safetensors"], to: dir)
        let chatml = "{% for message in messages %}<|im_start|>{{ message['role'] }}{% endfor %}"
        let value: JSONValue =
            asList
            ? [["name": "tool_use", "template": "x"], ["name": "default", "template": .string(chatml)]]
            : .string(chatml)
        let config: JSONValue = ["chat_template": value]
        try Data(config.serialized().utf8).write(to: dir.appendingPathComponent("tokenizer_config.json"))
        let lm = try LanguageModel.load(dir.path)
        #expect(lm.chatTemplateSource == chatml)
        #expect(try lm.chatTemplate().source == chatml)
    }
}
