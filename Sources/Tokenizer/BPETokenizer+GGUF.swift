// BPETokenizer+GGUF: the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata (formats.md §8).

import ModelFormats

extension PreTokenizer {
    /// The pre-tokenizer llama.cpp selects for a `tokenizer.ggml.pre` name, or nil if Cairn lacks it.
    public init?(ggufName: String) {
        switch ggufName {
        case "gpt-2", "gpt2": self = .gpt2
        case "smollm", "starcoder", "refact", "command-r": self = .smollm
        case "llama-bpe", "llama3", "smaug-bpe", "falcon3": self = .llama3
        case "qwen2", "deepseek-r1-qwen": self = .qwen2
        default: return nil
        }
    }
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
        guard model == "gpt2" else {
            throw FormatError(
                .unsupported, path: path, field: "tokenizer.ggml.model",
                "is \"\(model)\"; Cairn supports byte-level BPE vocabularies (\"gpt2\") only")
        }
        let preName = try metadata.string("tokenizer.ggml.pre") ?? "gpt-2"
        guard let pre = PreTokenizer(ggufName: preName) else {
            throw FormatError(
                .unsupported, path: path, field: "tokenizer.ggml.pre",
                "pre-tokenizer \"\(preName)\" is not supported (supported: gpt-2, smollm, llama-bpe, qwen2)")
        }
        let tokens = try metadata.require("tokenizer.ggml.tokens", metadata.strings)
        let mergeStrings = try metadata.strings("tokenizer.ggml.merges") ?? []
        var merges: [(String, String)] = []
        merges.reserveCapacity(mergeStrings.count)
        for (i, m) in mergeStrings.enumerated() {
            // Split at the first space after the first character (formats.md §8).
            let chars = Array(m)
            guard chars.count >= 3, let space = chars.dropFirst().firstIndex(of: " ") else {
                throw FormatError(
                    .invalidValue, path: path, field: "tokenizer.ggml.merges[\(i)]", "\"\(m)\" is not \"left right\"")
            }
            merges.append((String(chars[..<space]), String(chars[(space + 1)...])))
        }
        let types = try metadata.ints("tokenizer.ggml.token_type") ?? []
        guard types.isEmpty || types.count == tokens.count else {
            throw FormatError(
                .invalidValue, path: path, field: "tokenizer.ggml.token_type",
                "has \(types.count) entries for \(tokens.count) tokens")
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
        let isLlama3 = pre == .llama3
        try self.init(
            tokens: tokens, merges: merges, preTokenizer: pre, addedIds: added, controlIds: control, bosId: bos,
            eosId: eos,
            addsBOS: try metadata.bool("tokenizer.ggml.add_bos_token") ?? isLlama3, endOfGenerationIds: endOfGeneration,
            ignoresMerges: isLlama3, source: path)
    }
}
