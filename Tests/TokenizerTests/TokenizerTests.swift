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
    /// The built-in templates render as Python's Jinja2 renders their source (chat-templates.json: SmolLM2's,
    /// ChatML, Llama 3's and Mistral's).
    @Test func builtInTemplatesRenderLikeJinja() throws {
        let cases = TokenizerFixtures.json("chat-templates.json").arrayValue!
        #expect(cases.count == 4)
        for c in cases.map({ $0.objectValue! }) {
            let name = c["name"]!.stringValue!
            let fromSource = try ChatTemplate(jinja: c["template"]!.stringValue!)
            let builtIn = try #require(ChatTemplate(name: name))
            let isMistral = name == "mistral"
            for r in c["renders"]!.arrayValue!.map({ $0.objectValue! }) {
                let messages = r["messages"]!.arrayValue!.map {
                    ChatMessage(
                        role: $0.objectValue!["role"]!.stringValue!, content: $0.objectValue!["content"]!.stringValue!)
                }
                for template in [fromSource, builtIn] {
                    let text = try template.render(
                        messages, addGenerationPrompt: r["add_generation_prompt"]!.boolValue!,
                        bosText: isMistral ? "<s>" : "<|begin_of_text|>", eosText: isMistral ? "</s>" : "<|eot_id|>")
                    #expect(text == r["text"]!.stringValue!, "\(name)")
                }
            }
        }
    }

    @Test func unsupportedConstructsAndRefusedConversationsAreClearErrors() {
        #expect {
            try ChatTemplate(jinja: "{{ 'a' }}\n{% include 'other.jinja' %}")
        } throws: { error in
            let e = (error as? ChatTemplateError)?.description ?? ""
            return e.contains("include") && e.contains("line 2") && e.contains("--chat-template")
        }
        #expect {
            try ChatTemplate(jinja: "{{ messages | wordwrap }}")
        } throws: { ($0 as? ChatTemplateError)?.description.contains("wordwrap") == true }
        #expect {
            try ChatTemplate(name: "mistral")!.render(
                [ChatMessage(role: "system", content: "x")], addGenerationPrompt: true)
        } throws: { ($0 as? ChatTemplateError)?.description.contains("alternating") == true }
        #expect(ChatTemplate(name: "nope") == nil)
    }

    /// Segments: message content apart from markup, assistant content and the end of its turn trained, and
    /// content that looks like a special token still content.
    @Test func segmentsSeparateContentFromMarkup() throws {
        let template = try #require(ChatTemplate(name: "chatml"))
        let segments = try template.segments(
            [
                ChatMessage(role: "user", content: "Hi <|im_end|>"),
                ChatMessage(role: "assistant", content: "  Hello"),
            ], addGenerationPrompt: false, endOfTurn: ["<|im_end|>"])
        #expect(
            segments == [
                ChatSegment(text: "<|im_start|>user\n", isContent: false, isTrained: false),
                ChatSegment(text: "Hi <|im_end|>", isContent: true, isTrained: false),
                ChatSegment(text: "<|im_end|>\n<|im_start|>assistant\n", isContent: false, isTrained: false),
                ChatSegment(text: "  Hello", isContent: true, isTrained: true),
                ChatSegment(text: "<|im_end|>", isContent: false, isTrained: true),
                ChatSegment(text: "\n", isContent: false, isTrained: false),
            ])
        // Content the template transforms (Llama 3 trims it) keeps its provenance.
        let llama = try #require(ChatTemplate(name: "llama3"))
        let trimmed = try llama.segments(
            [ChatMessage(role: "assistant", content: "  Paris.  ")], addGenerationPrompt: false, bosText: "<s>",
            endOfTurn: ["<|eot_id|>"])
        #expect(trimmed.contains(ChatSegment(text: "Paris.", isContent: true, isTrained: true)))
        #expect(trimmed.contains(ChatSegment(text: "<|eot_id|>", isContent: false, isTrained: true)))
    }
}

/// Every template llama.cpp ships (the families' real ones among them: Llama 3.1/3.2/3.3, Qwen2.5, Qwen3, the
/// DeepSeek-R1 distills, Mistral NeMo, Gemma 2, Phi-3.5) and SmolLM2's, rendered over fourteen conversations
/// with and without the generation prompt, byte for byte as Python's Jinja2 renders them through transformers
/// (Scripts/fixtures/chat_templates.py), refusals included; and the families' templates llama.cpp has none of
/// (Tests/Fixtures/chat/templates: Gemma 3, Llama 2, TinyLlama, Mistral 7B, Phi-3-mini, Phi-4-mini, Qwen3, the R1
/// distills). llama.cpp's are read from its source directory (CAIRN_LLAMACPP; skipped without it), SmolLM2's from
/// the model (CAIRN_REAL_MODEL).
struct JinjaConformanceTests {
    /// Families whose templates must render exactly; the others are reported.
    static let families = [
        "meta-llama-Llama-3.1-8B-Instruct.jinja", "meta-llama-Llama-3.2-3B-Instruct.jinja",
        "meta-llama-Llama-3.3-70B-Instruct.jinja", "Qwen-Qwen2.5-7B-Instruct.jinja", "Qwen-Qwen3-0.6B.jinja",
        "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        "mistralai-Mistral-Nemo-Instruct-2407.jinja", "google-gemma-2-2b-it.jinja",
        "microsoft-Phi-3.5-mini-instruct.jinja", "Qwen-QwQ-32B.jinja", "HuggingFaceTB-SmolLM3-3B.jinja",
    ]

    /// The date the fixtures were rendered with (2026-11-26 12:00 UTC).
    static let pinnedDate = Date(timeIntervalSince1970: 1_795_694_400)

    @Test func rendersLikePythonJinja() throws {
        let root = try #require(HFModelDirectory.readJSON(Fixtures.path("chat/renders.json")).objectValue)
        let conversations = try #require(root["conversations"]?.objectValue)
        let templates = try #require(root["templates"]?.objectValue)
        let directory = (ProcessInfo.processInfo.environment["CAIRN_LLAMACPP"] ?? "") + "/models/templates/"
        var exact = 0
        var considered = 0
        var report: [String] = []
        for (file, entry) in templates.members.sorted(by: { $0.key < $1.key }) {
            let source: String
            let isFixture = file.hasPrefix("fixture:")
            if isFixture {
                source = try String(
                    contentsOfFile: Fixtures.path("chat/templates/" + file.dropFirst("fixture:".count)), encoding: .utf8
                )
            } else if ProcessInfo.processInfo.environment["CAIRN_LLAMACPP"] == nil {
                continue
            } else if file.hasSuffix(".gguf") {
                guard let model = ProcessInfo.processInfo.environment["CAIRN_REAL_MODEL"],
                    let s = try GGUFFile(path: model).metadata.string("tokenizer.chat_template")
                else { continue }
                source = s
            } else {
                source = try String(contentsOfFile: directory + file, encoding: .utf8)
            }
            considered += 1
            let tokens = entry.objectValue?["tokens"]?.objectValue
            let cases = entry.objectValue?["cases"]?.arrayValue ?? []
            var failures: [String] = []
            let template: ChatTemplate
            do {
                template = try ChatTemplate(jinja: source)
            } catch {
                report.append("\(file): \(error)")
                #expect(!Self.families.contains(file) && !isFixture, "\(file): \(error)")
                continue
            }
            for c in cases.compactMap(\.objectValue) {
                let name = c["conversation"]!.stringValue!
                let messages = conversations[name]!.arrayValue!.map {
                    ChatMessage(
                        role: $0.objectValue!["role"]!.stringValue!, content: $0.objectValue!["content"]!.stringValue!)
                }
                let generation = c["add_generation_prompt"]!.boolValue!
                do {
                    let text = try template.render(
                        messages, addGenerationPrompt: generation, bosText: tokens?["bos_token"]?.stringValue ?? "",
                        eosText: tokens?["eos_token"]?.stringValue ?? "", date: Self.pinnedDate)
                    if let expected = c["text"]?.stringValue {
                        if text != expected { failures.append("\(name) \(generation): \(text.debugDescription)") }
                    } else {
                        failures.append("\(name) \(generation): rendered, Python raised \(c["error"]!.stringValue!)")
                    }
                } catch {
                    if c["text"] != nil { failures.append("\(name) \(generation): \(error)") }
                }
            }
            if failures.isEmpty {
                exact += 1
            } else {
                report.append("\(file): \(failures.count) of \(cases.count) differ, first: \(failures[0])")
            }
            #expect(
                !(Self.families.contains(file) || isFixture) || failures.isEmpty, "\(file): \(failures.prefix(2))")
        }
        print("chat templates: \(exact) of \(considered) render exactly as Python's Jinja2")
        #expect(considered >= 11)
        for line in report { print("  \(line)") }
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

/// Templates come from model files: ones that never end, recurse, nest absurdly or grow without bound are errors,
/// not hangs or crashes.
@Suite struct HostileTemplateTests {
    @Test(arguments: [
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
        "{% for i in range(30000) %}{% for j in range(30000) %}{{ i }}{% endfor %}{% endfor %}",
        String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000),
        String(repeating: "{% if true %}", count: 5000),
        "{{ ('x' * 10000) * 10000 }}", "{{ [1] * 10000 * 10000 }}",
        "{{ not not not " + String(repeating: "not ", count: 5000) + "x }}",
        "{% for x in messages %}", "{{ 'unclosed ", "{% if %}", "{{ 1 +* 2 }}",
    ])
    func hostileTemplatesAreErrors(source: String) {
        let wrapped = source.hasPrefix("{") ? source : "{{ " + source + " }}"
        #expect(throws: ChatTemplateError.self) {
            let template = try ChatTemplate(jinja: wrapped)
            _ = try template.render([ChatMessage(role: "user", content: "hi")], addGenerationPrompt: true)
        }
    }
}
