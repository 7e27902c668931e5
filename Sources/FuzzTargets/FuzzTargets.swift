// FuzzTargets: the entry points the fuzzers feed with arbitrary bytes: the wire decoder, the JSON parser under
// it, the GGUF and safetensors readers, the tokenizer, the job file parser, the dashboard's HTTP request parser, the
// chat-template interpreter and the pre-tokenizers. Each may only return or throw its typed error; a crash, a hang
// or an unbounded allocation is a bug. The tokenizer target also checks a property: byte-level BPE gives back
// exactly the text it was given; the pre-tokenizer target another: every pre-tokenizer's pieces are the text.
//
// Run by `cairn-fuzz` (libFuzzer, or a seeded mutation loop; see Scripts/fuzz); crashes it finds are kept in
// Tests/Fixtures/fuzz and replayed by FuzzRegressionTests.

import HTTP
import Llama
import ModelFormats
import Tokenizer
import Training
import Wire

/// A parser the fuzzers exercise.
public enum FuzzTarget: String, CaseIterable, Sendable {
    case wire, json, gguf, safetensors, tokenizer, job, http, template, pretokenizer

    /// Feeds `data` to the target.
    public func run(_ data: [UInt8]) {
        switch self {
        case .wire:
            _ = try? Message.decode(Self.frames(data))
        case .json:
            _ = try? JSONValue.parse(data)
        case .gguf:
            guard let file = try? GGUFFile(file: MappedFile(copying: data, path: "fuzz.gguf")) else { return }
            if let config = try? LlamaConfig(gguf: file) {
                _ = try? LlamaWeights.load(from: file, config: config, naming: .gguf(permutedQK: true))
            }
            _ = try? BPETokenizer(gguf: file.metadata)
        case .safetensors:
            guard let file = try? SafetensorsFile(file: MappedFile(copying: data, path: "fuzz.safetensors")) else {
                return
            }
            for t in file.tensors { _ = file.data(for: t).reduce(0) { $0 &+ Int($1) } }
        case .tokenizer:
            let text = String(decoding: data, as: UTF8.self)
            let ids = Self.vocabulary.encode(text, parseSpecial: false)
            let back = Self.vocabulary.decode(ids, renderSpecial: true)
            precondition(back == text, "byte-level BPE lost text: \(Array(text.utf8)) → \(ids) → \(Array(back.utf8))")
            _ = Self.vocabulary.encode(text, parseSpecial: true)
        case .job:
            var config = TrainingConfig()
            _ = try? config.apply(yaml: String(decoding: data, as: UTF8.self), source: "fuzz.yaml")
        case .template:
            // A model's chat template is untrusted: parse it, render a conversation; errors only.
            let source = String(decoding: data, as: UTF8.self)
            if let template = try? ChatTemplate(jinja: source) {
                _ = try? template.render(
                    [ChatMessage(role: "system", content: "s"), ChatMessage(role: "user", content: "hi {{ x }}")],
                    addGenerationPrompt: true, bosText: "<s>", eosText: "</s>")
            }
        case .pretokenizer:
            let text = String(decoding: data, as: UTF8.self)
            for pre in PreTokenizer.allCases {
                let pieces = pre.split(text)
                precondition(pieces.joined() == text, "\(pre) lost text: \(Array(text.utf8)) → \(pieces)")
            }
        case .http:
            // What the dashboard's server does with a connection's bytes: find the head, parse it.
            let head = HTTPRequest.headLength(data).map { data[0..<$0] } ?? data[...]
            if let request = try? HTTPRequest.parse(head) {
                // Bytes, not Characters: "/" then a combining mark is one Character but still a path that starts
                // with "/" (a crash this target once found in its own check).
                let bytes = Array(request.path.utf8)
                precondition(bytes.first == UInt8(ascii: "/"))
                precondition(!bytes.split(separator: UInt8(ascii: "/")).contains { $0.elementsEqual("..".utf8) })
                _ = request.bearerToken
            }
        }
    }

    /// Splits bytes into frames: the first byte gives the count (at most 16), then each frame has a 2-byte
    /// little-endian length, clipped to what is left; the last frame takes the rest.
    public static func frames(_ data: [UInt8]) -> [[UInt8]] {
        guard let first = data.first else { return [] }
        let count = Int(first % 17)
        var frames: [[UInt8]] = []
        var i = 1
        for k in 0..<count {
            if k == count - 1 {
                frames.append(Array(data[min(i, data.count)...]))
                break
            }
            guard i + 2 <= data.count else { break }
            let length = min(Int(data[i]) | Int(data[i + 1]) << 8, data.count - i - 2)
            frames.append(Array(data[(i + 2)..<(i + 2 + length)]))
            i += 2 + length
        }
        return frames
    }

    /// The inverse of `frames`, for building seed inputs from real messages.
    public static func join(_ frames: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = [UInt8(frames.count)]
        for (k, f) in frames.enumerated() {
            if k < frames.count - 1 { out += [UInt8(f.count & 0xFF), UInt8(f.count >> 8)] }
            out += f
        }
        return out
    }

    /// A small byte-level vocabulary: the 256 byte symbols, a few merges, two added tokens.
    static let vocabulary: BPETokenizer = {
        var tokens = (0...255).map { String(Character(ByteLevel.symbol(for: UInt8($0)))) }
        let pairs = [
            ("t", "h"), ("th", "e"), ("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("i", "n"), ("a", "n"), ("e", "r"),
        ]
        var merges: [(String, String)] = []
        for (a, b) in pairs where !tokens.contains(a + b) {
            tokens.append(a + b)
            merges.append((a, b))
        }
        tokens += ["<|im_start|>", "<|im_end|>"]
        let added = Set([Int32(tokens.count - 2), Int32(tokens.count - 1)])
        return try! BPETokenizer(
            tokens: tokens, merges: merges, preTokenizer: .smollm, addedIds: added, controlIds: [], bosId: nil,
            eosId: added.max(), addsBOS: false, endOfGenerationIds: [], source: "fuzz vocabulary")
    }()
}
