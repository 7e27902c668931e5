import Foundation
import Testing
import ModelFormats
import TestSupport
import Tokenizer

enum TokenizerFixtures {
    static func json(_ path: String) -> JSONValue { try! HFModelDirectory.readJSON(Fixtures.path("tokenizer/" + path)) }
    static let corpus: [String] = json("corpus.json").arrayValue!.map { $0.stringValue! }
    static func ids(_ value: JSONValue) -> [[Int32]] {
        value.arrayValue!.map { $0.arrayValue!.map { Int32($0.intValue!) } }
    }
}

@Suite struct PreTokenizerTests {
    /// HF `tokenizers`' pre-tokenizers on the whole corpus (pieces in the byte-level alphabet).
    @Test(arguments: [PreTokenizer.gpt2, .smollm, .llama3, .qwen2])
    func matchesHuggingFaceOnTheCorpus(pre: PreTokenizer) throws {
        let expected = try #require(TokenizerFixtures.json("pretokenized.json").objectValue?[pre.rawValue]?.arrayValue)
        #expect(expected.count == TokenizerFixtures.corpus.count)
        var mismatches: [String] = []
        for (text, pieces) in zip(TokenizerFixtures.corpus, expected) {
            let ours = pre.split(text).map { ByteLevel.encode($0) }
            let theirs = pieces.arrayValue!.map { $0.stringValue! }
            if ours != theirs { mismatches.append("\(text.debugDescription): \(ours) vs \(theirs)") }
            #expect(pre.split(text).joined() == text)
        }
        #expect(mismatches.isEmpty, "\(mismatches.count) mismatches, first: \(mismatches.prefix(3))")
    }

    @Test func splitsDigitsOneByOneForSmolLM() {
        #expect(PreTokenizer.smollm.split(" 12345 apples") == [" ", "1", "2", "3", "4", "5", " apples"])
        #expect(PreTokenizer.llama3.split("12345") == ["123", "45"])
    }
}

@Suite struct HFTokenizerJSONTests {
    @Test(arguments: ["tiny-llama3", "tiny-qwen2"])
    func encodesAndDecodesLikeHuggingFace(name: String) throws {
        let tokenizer = try BPETokenizer(tokenizerJSON: Fixtures.path("tokenizer/\(name)/tokenizer.json"))
        let fixture = TokenizerFixtures.json("\(name)/ids.json").objectValue!
        let expected = TokenizerFixtures.ids(fixture["ids"]!)
        let decoded = fixture["decoded"]!.arrayValue!.map { $0.stringValue! }
        var mismatches: [String] = []
        for (i, text) in TokenizerFixtures.corpus.enumerated() {
            let ids = tokenizer.encode(text, addSpecialTokens: true)
            if ids != expected[i] { mismatches.append("\(text.debugDescription): \(ids) vs \(expected[i])") }
            #expect(tokenizer.decode(ids, renderSpecial: true) == decoded[i], "decode \(text.debugDescription)")
        }
        #expect(mismatches.isEmpty, "\(mismatches.count) mismatches, first: \(mismatches.prefix(3))")
        #expect(tokenizer.preTokenizer == (name == "tiny-llama3" ? .llama3 : .qwen2))
        #expect(tokenizer.addsBOS == (name == "tiny-llama3"))
        #expect(tokenizer.normalizesNFC == (name == "tiny-qwen2"))
    }

    /// The same vocabulary written into GGUF metadata (as llama.cpp's converter does) tokenizes the same.
    @Test func ggufMetadataGivesTheSameIdsAsTokenizerJSON() throws {
        let hf = try BPETokenizer(tokenizerJSON: Fixtures.path("tokenizer/tiny-llama3/tokenizer.json"))
        let json = TokenizerFixtures.json("tiny-llama3/tokenizer.json").objectValue!
        let merges = json["model"]!.objectValue!["merges"]!.arrayValue!.map { m -> GGUFValue in
            if let s = m.stringValue { return .string(s) }
            return .string(m.arrayValue!.map { $0.stringValue! }.joined(separator: " "))
        }
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("tokenizer.ggml.model", .string("gpt2"))
        w.set("tokenizer.ggml.pre", .string("llama-bpe"))
        w.set("tokenizer.ggml.tokens", .array(.string, hf.tokens.map(GGUFValue.string)))
        w.set(
            "tokenizer.ggml.token_type",
            .array(.int32, hf.tokens.indices.map { .int32(hf.controlIds.contains(Int32($0)) ? 3 : 1) }))
        w.set("tokenizer.ggml.merges", .array(.string, merges))
        w.set("tokenizer.ggml.bos_token_id", .uint32(UInt32(hf.bosId!)))
        let path = Fixtures.temporaryDirectory().appendingPathComponent("tok.gguf").path
        try w.write(to: path)
        let gguf = try BPETokenizer(gguf: try GGUFFile(path: path).metadata)
        #expect(gguf.ignoresMerges && gguf.addsBOS)
        for text in TokenizerFixtures.corpus {
            #expect(
                gguf.encode(text, addSpecialTokens: true) == hf.encode(text, addSpecialTokens: true),
                "\(text.debugDescription)")
        }
    }

    @Test func rejectsUnsupportedTokenizersWithTheFieldNamed() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let cases: [(String, String)] = [
            (#"{"model": {"type": "Unigram", "vocab": []}}"#, "model.type"),
            (
                #"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "byte_fallback": true}}"#,
                "normalizer"
            ),
            (
                #"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 2}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"}}"#,
                "model.vocab"
            ),
            (
                #"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}, "pre_tokenizer": {"type": "ByteLevel"}}"#,
                "merges[0]"
            ),
            (
                #"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Metaspace"}}"#,
                "pre_tokenizer"
            ),
            (
                #"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "byte_fallback": true}, "pre_tokenizer": {"type": "Metaspace", "split": true}}"#,
                "pre_tokenizer"
            ),
            (
                #"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"}, "normalizer": {"type": "NFKC"}}"#,
                "normalizer"
            ),
        ]
        for (i, (text, field)) in cases.enumerated() {
            let path = dir.appendingPathComponent("\(i).json").path
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            #expect { try BPETokenizer(tokenizerJSON: path) } throws: { ($0 as? FormatError)?.field == field }
        }
    }
}

@Suite struct BPEBehaviourTests {
    static let tokenizer = try! BPETokenizer(tokenizerJSON: Fixtures.path("tokenizer/tiny-qwen2/tokenizer.json"))

    @Test func specialTokensParseOnlyWhenAskedAndHideOnDecode() throws {
        let t = Self.tokenizer
        let imStart = try #require(t.id(of: "<|im_start|>"))
        let parsed = t.encode("<|im_start|>user", parseSpecial: true)
        #expect(parsed.first == imStart)
        #expect(!t.encode("<|im_start|>user", parseSpecial: false).contains(imStart))
        #expect(t.decode(parsed) == "user")
        #expect(t.decode(parsed, renderSpecial: true) == "<|im_start|>user")
    }

    @Test func streamingDecoderHoldsBackIncompleteCharacters() {
        let t = Self.tokenizer
        let text = "héllo 日本 😀👍🏽 done"
        var decoder = StreamingDecoder(tokenizer: t)
        var streamed = ""
        for id in t.encode(text) {
            let piece = decoder.push(id)
            #expect(!piece.contains("\u{FFFD}"))
            streamed += piece
        }
        streamed += decoder.finish()
        #expect(streamed == text)
    }

    @Test func longPiecesMergeInBoundedTime() {
        let text = String(repeating: "ab", count: 20_000) + String(repeating: " ", count: 10_000)
        let ids = Self.tokenizer.encode(text)
        #expect(Self.tokenizer.decode(ids) == text)
    }
}

@Suite struct ChatTemplateTests {
    /// Each template's renderings by jinja2 (as transformers renders them), and recognition from its text.
    @Test func rendersLikeJinja() throws {
        let cases = TokenizerFixtures.json("chat-templates.json").arrayValue!
        #expect(cases.count == 4)
        for c in cases.map({ $0.objectValue! }) {
            let template = try ChatTemplate(jinja: c["template"]!.stringValue!)
            #expect(template.family.rawValue == c["family"]!.stringValue!)
            #expect(template.defaultSystemPrompt == c["default_system"]!.stringValue)
            let isMistral = template.family == .mistral
            for r in c["renders"]!.arrayValue!.map({ $0.objectValue! }) {
                let messages = r["messages"]!.arrayValue!.map {
                    ChatMessage(
                        role: $0.objectValue!["role"]!.stringValue!, content: $0.objectValue!["content"]!.stringValue!)
                }
                let text = try template.render(
                    messages, addGenerationPrompt: r["add_generation_prompt"]!.boolValue!,
                    bosText: isMistral ? "<s>" : "<|begin_of_text|>", eosText: isMistral ? "</s>" : "<|eot_id|>")
                #expect(text == r["text"]!.stringValue!, "\(c["name"]!.stringValue!)")
            }
        }
    }

    @Test func unknownTemplatesAndImpossibleConversationsAreClearErrors() {
        #expect(throws: ChatTemplateError.self) { try ChatTemplate(jinja: "{{ messages[0].content }}") }
        do {
            _ = try ChatTemplate(jinja: "<|start_header_id|> Cutting Knowledge Date <|eot_id|>")
        } catch {
            #expect(error.description.contains("--chat-template"))
        }
        #expect(throws: ChatTemplateError.self) {
            try ChatTemplate(family: .mistral).render(
                [ChatMessage(role: "system", content: "x")], addGenerationPrompt: true)
        }
        #expect(ChatTemplate(name: "smollm2")?.defaultSystemPrompt?.hasPrefix("You are a helpful AI assistant") == true)
    }
}

@Suite struct HostileTokenizerTests {
    /// tokenizer.json cut short anywhere is a FormatError, never a crash.
    @Test func truncatedTokenizerJSONIsAnError() throws {
        let full = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("tokenizer/tiny-llama3/tokenizer.json")))
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        for cut in stride(from: 0, to: full.count, by: max(1, full.count / 97)) {
            let path = dir.appendingPathComponent("t\(cut).json").path
            try full.prefix(cut).write(to: URL(fileURLWithPath: path))
            #expect(throws: FormatError.self, "cut at \(cut)") { try BPETokenizer(tokenizerJSON: path) }
        }
    }

    /// GGUF tokenizer metadata that lies about its own vocabulary is refused, naming the key.
    @Test func inconsistentGGUFMetadataNamesTheKey() throws {
        func load(_ edit: (inout GGUFWriter) -> Void) throws -> FormatError? {
            var w = GGUFWriter()
            w.set("tokenizer.ggml.model", .string("gpt2"))
            w.set("tokenizer.ggml.pre", .string("gpt-2"))
            w.set("tokenizer.ggml.tokens", .array(.string, ["a", "b", "ab"].map(GGUFValue.string)))
            w.set("tokenizer.ggml.merges", .array(.string, [.string("a b")]))
            edit(&w)
            let path = Fixtures.temporaryDirectory().appendingPathComponent("t.gguf").path
            try w.write(to: path)
            do {
                let t = try BPETokenizer(gguf: try GGUFFile(path: path).metadata)
                #expect(t.encode("ab") == [2])
                return nil
            } catch {
                return error
            }
        }
        #expect(try load { _ in } == nil, "the baseline is valid")
        #expect(try load { $0.set("tokenizer.ggml.model", .string("t5")) }?.field == "tokenizer.ggml.model")
        #expect(try load { $0.set("tokenizer.ggml.pre", .string("mystery")) }?.field == "tokenizer.ggml.pre")
        #expect(try load { $0.set("tokenizer.ggml.bos_token_id", .uint32(99)) }?.field == "tokenizer.ggml.bos_token_id")
        #expect(
            try load { $0.set("tokenizer.ggml.token_type", .array(.int32, [.int32(1)])) }?.field
                == "tokenizer.ggml.token_type")
        #expect(try load { $0.set("tokenizer.ggml.merges", .array(.string, [.string("a c")])) }?.field == "merges[0]")
        #expect(
            try load { $0.set("tokenizer.ggml.merges", .array(.string, [.string("ab")])) }?.field
                == "tokenizer.ggml.merges[0]")
        #expect(try load { $0.set("tokenizer.ggml.tokens", .array(.string, [])) }?.field == "tokens")
    }
}

/// SentencePiece vocabularies as tokenizer.json (Scripts/fixtures/spm_tokenizers.py): Llama 2's Prepend layout,
/// Mistral's Metaspace, Gemma's bare Replace, against the tokenizers library's ids and decoding on the corpus
/// and on text around special and user-defined tokens.
@Suite struct SentencePieceTokenizerTests {
    @Test(arguments: ["spm-legacy", "spm-first", "spm-gemma"])
    func matchesTheTokenizersLibrary(name: String) throws {
        let directory = Fixtures.path("tokenizer/\(name)")
        let config = try HFModelDirectory.readJSON(directory + "/tokenizer_config.json").objectValue
        let tokenizer = try BPETokenizer(tokenizerJSON: directory + "/tokenizer.json", tokenizerConfig: config)
        guard case .sentencePiece = tokenizer.encoding else {
            Issue.record("\(name) was not read as SentencePiece")
            return
        }
        let reference = try #require(HFModelDirectory.readJSON(directory + "/ids.json").objectValue)
        let texts = try #require(reference["texts"]?.arrayValue).map { $0.stringValue! }
        let ids = TokenizerFixtures.ids(try #require(reference["ids"]))
        let decoded = try #require(reference["decoded"]?.arrayValue).map { $0.stringValue! }
        var wrong: [String] = []
        var wrongDecoding: [String] = []
        for (i, text) in texts.enumerated() {
            let ours = tokenizer.encode(text)
            if ours != ids[i] { wrong.append("\(text.debugDescription): \(ours) vs \(ids[i])") }
            let back = tokenizer.decode(ids[i])
            if back != decoded[i] { wrongDecoding.append("\(text.debugDescription): \(back.debugDescription)") }
        }
        #expect(texts.count > 300)
        #expect(wrong.isEmpty, "\(name): \(wrong.count) of \(texts.count) differ, first: \(wrong.prefix(3))")
        #expect(
            wrongDecoding.isEmpty,
            "\(name): \(wrongDecoding.count) decodings differ, first: \(wrongDecoding.prefix(3))")
        #expect(tokenizer.addsBOS && tokenizer.bosId == 1)
    }
}
