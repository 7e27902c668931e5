// BPETokenizer+GGUF: the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata (Docs/FORMATS.md §8).

import ModelFormats

extension PreTokenizer {
    /// The pre-tokenizer llama.cpp selects for a `tokenizer.ggml.pre` name, or nil if Cairn lacks it.
    public init?(ggufName: String) {
        switch ggufName {
        case "gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais": self = .gpt2
        case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b": self = .smollm
        case "llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3", "dbrx": self = .llama3
        case "qwen2", "deepseek-r1-qwen", "stablelm2", "megrez": self = .qwen2
        case "deepseek-llm": self = .deepseekLLM
        case "deepseek-coder": self = .deepseekCoder
        case "deepseek-v3": self = .deepseekV3
        case "falcon": self = .falcon
        case "gpt-4o", "llama4": self = .gpt4o
        case "tekken": self = .tekken
        case "default": self = .default
        default: return nil
        }
    }

    /// The `tokenizer.ggml.pre` names Cairn reads.
    public static let ggufNames = [
        "gpt-2", "smollm", "starcoder", "refact", "command-r", "llama-bpe", "qwen2", "deepseek-r1-qwen",
        "deepseek-llm", "deepseek-coder", "deepseek-v3", "falcon", "mpt", "gpt-4o", "tekken", "default",
    ]
}

extension BPETokenizer {
    /// Token types of `tokenizer.ggml.token_type` (llama.cpp's llama_token_type).
    enum GGUFTokenType: Int {
        case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    /// Texts llama.cpp treats as end of generation when they are control tokens.
    static let endOfTurnTexts: Set<String> = [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "<|end_of_text|>",
        "<｜end▁of▁sentence｜>",
    ]

    /// Loads the tokenizer of a GGUF model.
    ///
    /// - Throws: `FormatError` for a missing or malformed vocabulary, or one Cairn does not support
    ///   (SentencePiece `llama` vocabularies, unknown pre-tokenizers).
    public convenience init(gguf metadata: GGUFMetadata) throws(FormatError) {
        let path = metadata.path
        let model = try metadata.require("tokenizer.ggml.model", metadata.string)
        switch model {
        case "gpt2": try self.init(byteLevelGGUF: metadata)
        case "llama": try self.init(sentencePieceGGUF: metadata)
        default:
            throw FormatError(
                .unsupported, path: path, field: "tokenizer.ggml.model",
                "is \"\(model)\"; Cairn supports byte-level BPE (\"gpt2\") and SentencePiece (\"llama\") vocabularies")
        }
    }

    /// Control, unknown and user-defined tokens of `tokenizer.ggml.token_type`: the added ones (matched whole in
    /// text) and, of those, the control ones (hidden when decoding).
    private static func specialTokens(_ metadata: GGUFMetadata, count: Int) throws(FormatError) -> (
        added: Set<Int32>, control: Set<Int32>
    ) {
        let types = try metadata.ints("tokenizer.ggml.token_type") ?? []
        guard types.isEmpty || types.count == count else {
            throw FormatError(
                .invalidValue, path: metadata.path, field: "tokenizer.ggml.token_type",
                "has \(types.count) entries for \(count) tokens")
        }
        var added: Set<Int32> = []
        var control: Set<Int32> = []
        for (i, t) in types.enumerated() {
            switch GGUFTokenType(rawValue: t) {
            case .control, .unknown:
                added.insert(Int32(i))
                control.insert(Int32(i))
            case .userDefined: added.insert(Int32(i))
            default: break
            }
        }
        return (added, control)
    }

    /// A GGUF special-token id key, checked against the vocabulary.
    private static func tokenId(_ metadata: GGUFMetadata, _ key: String, count: Int) throws(FormatError) -> Int32? {
        guard let v = try metadata.int(key) else { return nil }
        guard v >= 0, v < count else {
            throw FormatError(
                .outOfBounds, path: metadata.path, field: key, "token id \(v) is outside the vocabulary (\(count))")
        }
        return Int32(v)
    }

    /// A SentencePiece vocabulary (`tokenizer.ggml.model` "llama": Llama 2, Mistral, Phi-3, Gemma), merged by
    /// score as llama.cpp does; a dummy-prefix space unless `add_space_prefix` is false (Gemma).
    convenience init(sentencePieceGGUF metadata: GGUFMetadata) throws(FormatError) {
        let path = metadata.path
        let tokens = try metadata.require("tokenizer.ggml.tokens", metadata.strings)
        let scores = try metadata.floats("tokenizer.ggml.scores") ?? [Float](repeating: 0, count: tokens.count)
        let (added, control) = try Self.specialTokens(metadata, count: tokens.count)
        func id(_ key: String, default fallback: Int32?) throws(FormatError) -> Int32? {
            if let v = try Self.tokenId(metadata, key, count: tokens.count) { return v }
            return fallback.flatMap { Int($0) < tokens.count ? $0 : nil }
        }
        let bos = try id("tokenizer.ggml.bos_token_id", default: 1)
        let eos = try id("tokenizer.ggml.eos_token_id", default: 2)
        let unknown = try id("tokenizer.ggml.unknown_token_id", default: 0)
        var endOfGeneration = Set(
            [
                eos, try id("tokenizer.ggml.eot_token_id", default: nil),
                try id("tokenizer.ggml.eom_token_id", default: nil),
            ]
            .compactMap { $0 })
        for i in control where Self.endOfTurnTexts.contains(tokens[Int(i)]) { endOfGeneration.insert(i) }
        let prefix = try metadata.bool("tokenizer.ggml.add_space_prefix") ?? true
        try self.init(
            tokens: tokens, merges: [], preTokenizer: .gpt2, addedIds: added, controlIds: control, bosId: bos,
            eosId: eos, addsBOS: try metadata.bool("tokenizer.ggml.add_bos_token") ?? true,
            endOfGenerationIds: endOfGeneration,
            encoding: .sentencePiece(SentencePieceOptions(prefix: prefix ? .everyStretch : .none, scores: scores)),
            unknownId: unknown, source: path)
    }

    /// A byte-level BPE vocabulary (`tokenizer.ggml.model` "gpt2").
    convenience init(byteLevelGGUF metadata: GGUFMetadata) throws(FormatError) {
        let path = metadata.path
        let preName = try metadata.string("tokenizer.ggml.pre") ?? "default"
        guard let pre = PreTokenizer(ggufName: preName) else {
            throw FormatError(
                .unsupported, path: path, field: "tokenizer.ggml.pre",
                "pre-tokenizer \"\(preName)\" is not supported (supported: \(PreTokenizer.ggufNames.joined(separator: ", ")))"
            )
        }
        let tokens = try metadata.require("tokenizer.ggml.tokens", metadata.strings)
        let mergeStrings = try metadata.strings("tokenizer.ggml.merges") ?? []
        var merges: [(String, String)] = []
        merges.reserveCapacity(mergeStrings.count)
        for (i, m) in mergeStrings.enumerated() {
            // Split at the first space after the first character (Docs/FORMATS.md §8).
            let chars = Array(m)
            guard chars.count >= 3, let space = chars.dropFirst().firstIndex(of: " ") else {
                throw FormatError(
                    .invalidValue, path: path, field: "tokenizer.ggml.merges[\(i)]", "\"\(m)\" is not \"left right\"")
            }
            merges.append((String(chars[..<space]), String(chars[(space + 1)...])))
        }
        let (added, control) = try Self.specialTokens(metadata, count: tokens.count)
        func id(_ key: String) throws(FormatError) -> Int32? {
            guard let v = try metadata.int(key) else { return nil }
            guard v >= 0, v < tokens.count else {
                throw FormatError(
                    .outOfBounds, path: path, field: key, "token id \(v) is outside the vocabulary (\(tokens.count))")
            }
            return Int32(v)
        }
        let bos = try id("tokenizer.ggml.bos_token_id")
        let eos = try id("tokenizer.ggml.eos_token_id")
        var endOfGeneration = Set(
            [eos, try id("tokenizer.ggml.eot_token_id"), try id("tokenizer.ggml.eom_token_id")].compactMap { $0 })
        for i in control where Self.endOfTurnTexts.contains(tokens[Int(i)]) { endOfGeneration.insert(i) }
        // llama.cpp's defaults for Llama 3 vocabularies: whole-word lookup before merging, and a BOS token
        // (metadata may override the latter).
        let isLlama3 = pre == .llama3 || pre == .tekken
        try self.init(
            tokens: tokens, merges: merges, preTokenizer: pre, addedIds: added, controlIds: control, bosId: bos,
            eosId: eos,
            addsBOS: try metadata.bool("tokenizer.ggml.add_bos_token") ?? isLlama3, endOfGenerationIds: endOfGeneration,
            ignoresMerges: isLlama3, source: path)
    }
}
