// BPETokenizer+HF: Hugging Face `tokenizer.json` (the `tokenizers` library's format), for the byte-level
// BPE vocabularies of the llama family. The pre-tokenizer is recognised from its structure and regex.

import ModelFormats

extension PreTokenizer {
    /// Llama 3's split pattern as tokenizer.json spells it.
    static let llama3Pattern =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    /// Qwen2's split pattern.
    static let qwen2Pattern =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
}

extension BPETokenizer {
    /// Largest tokenizer.json read.
    public static let maxTokenizerJSONBytes = 64 << 20

    /// Loads `tokenizer.json`, with `tokenizer_config.json` and `generation_config.json` when given.
    ///
    /// - Parameters:
    ///   - path: The tokenizer.json file.
    ///   - tokenizerConfig: tokenizer_config.json (BOS/EOS names, `add_bos_token`).
    ///   - generationConfig: generation_config.json (`eos_token_id`, possibly a list).
    /// - Throws: `FormatError` naming the field that is missing, malformed or unsupported.
    public convenience init(
        tokenizerJSON path: String, tokenizerConfig: JSONObject? = nil, generationConfig: JSONObject? = nil
    ) throws(FormatError) {
        let json = try HFModelDirectory.readJSON(path, maxBytes: Self.maxTokenizerJSONBytes)
        guard let root = json.objectValue, let model = root["model"]?.objectValue else {
            throw FormatError(.missing, path: path, field: "model", "missing; not a tokenizers tokenizer.json")
        }
        let type = model["type"]?.stringValue ?? "BPE"
        guard type == "BPE" else {
            throw FormatError(
                .unsupported, path: path, field: "model.type", "\"\(type)\" is not supported (only byte-level BPE)")
        }
        let sentencePiece = model["byte_fallback"]?.boolValue == true
        guard let vocab = model["vocab"]?.objectValue else {
            throw FormatError(.missing, path: path, field: "model.vocab", "missing or not an object")
        }
        var byId: [Int: String] = [:]
        for (token, value) in vocab.members {
            guard let id = value.intValue, id >= 0, id < 10_000_000 else {
                throw FormatError(
                    .invalidValue, path: path, field: "model.vocab[\"\(token)\"]", "id must be a non-negative integer")
            }
            guard byId[id] == nil else {
                throw FormatError(.conflict, path: path, field: "model.vocab", "id \(id) is used by two tokens")
            }
            byId[id] = token
        }
        var added: Set<Int32> = []
        var control: Set<Int32> = []
        for (i, entry) in (root["added_tokens"]?.arrayValue ?? []).enumerated() {
            guard let o = entry.objectValue, let id = o["id"]?.intValue, id >= 0, id < 10_000_000,
                let content = o["content"]?.stringValue
            else {
                throw FormatError(
                    .invalidValue, path: path, field: "added_tokens[\(i)]", "needs an integer id and a string content")
            }
            if let existing = byId[id], ExactString(existing) != ExactString(content) {
                throw FormatError(
                    .conflict, path: path, field: "added_tokens[\(i)]", "id \(id) is \"\(existing)\" in the vocabulary")
            }
            byId[id] = content
            added.insert(Int32(id))
            if o["special"]?.boolValue == true { control.insert(Int32(id)) }
        }
        let count = (byId.keys.max() ?? -1) + 1
        guard byId.count == count else {
            throw FormatError(
                .invalidValue, path: path, field: "model.vocab",
                "ids are not contiguous: \(byId.count) tokens for ids up to \(count - 1)")
        }
        let tokens = (0..<count).map { byId[$0]! }

        var merges: [(String, String)] = []
        for (i, m) in (model["merges"]?.arrayValue ?? []).enumerated() {
            if let s = m.stringValue {
                let chars = Array(s)
                guard chars.count >= 3, let space = chars.dropFirst().firstIndex(of: " ") else {
                    throw FormatError(
                        .invalidValue, path: path, field: "model.merges[\(i)]", "\"\(s)\" is not \"left right\"")
                }
                merges.append((String(chars[..<space]), String(chars[(space + 1)...])))
            } else if let pair = m.arrayValue, pair.count == 2, let a = pair[0].stringValue, let b = pair[1].stringValue
            {
                merges.append((a, b))
            } else {
                throw FormatError(
                    .invalidValue, path: path, field: "model.merges[\(i)]", "must be \"left right\" or [left, right]")
            }
        }

        var pre = PreTokenizer.gpt2
        var nfc = false
        var encoding = TokenizerEncoding.byteLevel
        if sentencePiece {
            let prefix = try Self.recogniseSentencePiece(root, path: path)
            encoding = .sentencePiece(SentencePieceOptions(prefix: prefix, scores: nil))
        } else {
            pre = try Self.recognisePreTokenizer(root["pre_tokenizer"] ?? .null, path: path)
            switch root["normalizer"] ?? .null {
            case .null: break
            case .object(let n) where n["type"]?.stringValue == "NFC": nfc = true
            case let other:
                throw FormatError(
                    .unsupported, path: path, field: "normalizer",
                    "\(other.objectValue?["type"]?.stringValue ?? other.kindDescription) is not supported (only none or NFC)"
                )
            }
            if let decoder = root["decoder"]?.objectValue, decoder["type"]?.stringValue != "ByteLevel" {
                throw FormatError(
                    .unsupported, path: path, field: "decoder",
                    "\(decoder["type"]?.stringValue ?? "?") is not supported for byte-level BPE (only ByteLevel)")
            }
        }

        let ids = Dictionary(
            tokens.enumerated().map { (ExactString($0.element), Int32($0.offset)) }, uniquingKeysWith: { a, _ in a })
        func tokenId(_ value: JSONValue?) -> Int32? {
            switch value {
            case .string(let s): ids[ExactString(s)]
            case .object(let o): o["content"]?.stringValue.flatMap { ids[ExactString($0)] }
            default: nil
            }
        }
        // BOS: what the post-processor puts in front of a single sequence, else tokenizer_config's bos_token.
        var bos: Int32? = tokenId(tokenizerConfig?["bos_token"])
        var addsBOS = tokenizerConfig?["add_bos_token"]?.boolValue ?? false
        if let post = root["post_processor"]?.objectValue {
            let processors =
                post["type"]?.stringValue == "Sequence"
                ? (post["processors"]?.arrayValue ?? []).compactMap(\.objectValue) : [post]
            for p in processors where p["type"]?.stringValue == "TemplateProcessing" {
                if let first = p["single"]?.arrayValue?.first?.objectValue?["SpecialToken"]?.objectValue,
                    let id = first["id"]?.stringValue.flatMap({ ids[ExactString($0)] })
                {
                    bos = id
                    addsBOS = true
                }
            }
        }
        let eos = tokenId(tokenizerConfig?["eos_token"])
        var endOfGeneration = Set([eos].compactMap { $0 })
        switch generationConfig?["eos_token_id"] {
        case .integer(let i): endOfGeneration.insert(Int32(truncatingIfNeeded: i))
        case .array(let items):
            for item in items { if let i = item.intValue { endOfGeneration.insert(Int32(truncatingIfNeeded: i)) } }
        default: break
        }
        for i in control where Self.endOfTurnTexts.contains(tokens[Int(i)]) { endOfGeneration.insert(i) }
        try self.init(
            tokens: tokens, merges: merges, preTokenizer: pre, addedIds: added, controlIds: control, bosId: bos,
            eosId: eos, addsBOS: addsBOS, endOfGenerationIds: endOfGeneration,
            ignoresMerges: model["ignore_merges"]?.boolValue ?? false, normalizesNFC: nfc, encoding: encoding,
            unknownId: model["unk_token"]?.stringValue.flatMap { ids[ExactString($0)] }, source: path)
    }

    /// Where a SentencePiece-style tokenizer.json (BPE with byte fallback) puts its "▁" prefix, from its
    /// normalizer and pre-tokenizer: Llama 2's Prepend + Replace, Mistral's Metaspace, Gemma's bare Replace.
    static func recogniseSentencePiece(_ root: JSONObject, path: String) throws(FormatError)
        -> SentencePieceOptions.Prefix
    {
        func type(_ o: JSONObject?) -> String? { o?["type"]?.stringValue }
        func unsupported(_ field: String, _ why: String) -> FormatError {
            FormatError(
                .unsupported, path: path, field: field,
                "\(why); supported SentencePiece layouts: Prepend(▁)+Replace( →▁) (Llama 2), Metaspace without split "
                    + "(Mistral), Replace( →▁) (Gemma)")
        }
        func isSpaceReplace(_ o: JSONObject) -> Bool {
            type(o) == "Replace" && o["pattern"]?.objectValue?["String"]?.stringValue == " "
                && o["content"]?.stringValue == "\u{2581}"
        }
        var prefix: SentencePieceOptions.Prefix?
        switch root["normalizer"] ?? .null {
        case .null: break
        case .object(let n):
            let steps = type(n) == "Sequence" ? (n["normalizers"]?.arrayValue ?? []).compactMap(\.objectValue) : [n]
            if steps.count == 2, type(steps[0]) == "Prepend", steps[0]["prepend"]?.stringValue == "\u{2581}",
                isSpaceReplace(steps[1])
            {
                prefix = .everyStretch
            } else if steps.count == 1, isSpaceReplace(steps[0]) {
                prefix = SentencePieceOptions.Prefix.none
            } else {
                throw unsupported("normalizer", "\(steps.compactMap { type($0) }) is not recognised")
            }
        default: throw unsupported("normalizer", "not an object")
        }
        switch root["pre_tokenizer"] ?? .null {
        case .null: break
        case .object(let p) where type(p) == "Metaspace":
            guard prefix == nil else { throw unsupported("pre_tokenizer", "Metaspace after a normalizer") }
            guard p["replacement"]?.stringValue ?? "\u{2581}" == "\u{2581}" else {
                throw unsupported("pre_tokenizer", "a Metaspace replacement other than ▁")
            }
            guard p["split"]?.boolValue == false else {
                throw unsupported("pre_tokenizer", "Metaspace with split (pieces split at every ▁)")
            }
            switch p["prepend_scheme"]?.stringValue ?? "always" {
            case "first": prefix = .firstUnlessSpace
            case "never": prefix = SentencePieceOptions.Prefix.none
            default: prefix = .everyStretchUnlessSpace
            }
        case .object(let p)
        where type(p) == "Split" && p["pattern"]?.objectValue?["String"]?.stringValue == " "
            && prefix == SentencePieceOptions.Prefix.none:
            break  // Gemma: splitting at spaces after they became ▁ changes nothing
        case let other:
            throw unsupported("pre_tokenizer", "\(type(other.objectValue) ?? other.kindDescription) is not recognised")
        }
        guard let prefix else {
            throw unsupported("normalizer", "neither a normalizer nor Metaspace turns spaces into ▁")
        }
        return prefix
    }

    static func recognisePreTokenizer(_ value: JSONValue, path: String) throws(FormatError) -> PreTokenizer {
        func type(_ o: JSONObject?) -> String? { o?["type"]?.stringValue }
        func unsupported(_ why: String) -> FormatError {
            FormatError(
                .unsupported, path: path, field: "pre_tokenizer",
                "\(why); supported: ByteLevel (gpt2), Digits+ByteLevel (smollm), Split(llama3 or qwen2 regex)+ByteLevel"
            )
        }
        guard let o = value.objectValue else { throw unsupported("missing") }
        if type(o) == "ByteLevel" {
            guard o["add_prefix_space"]?.boolValue != true else { throw unsupported("ByteLevel with add_prefix_space") }
            return .gpt2
        }
        guard type(o) == "Sequence", let steps = o["pretokenizers"]?.arrayValue?.compactMap(\.objectValue),
            steps.count == 2
        else {
            throw unsupported("\(type(o) ?? "unknown") is not recognised")
        }
        guard type(steps[1]) == "ByteLevel", steps[1]["add_prefix_space"]?.boolValue != true else {
            throw unsupported("the second step is not ByteLevel without a prefix space")
        }
        if type(steps[0]) == "Digits", steps[0]["individual_digits"]?.boolValue == true { return .smollm }
        if type(steps[0]) == "Split", steps[0]["invert"]?.boolValue != true,
            let pattern = steps[0]["pattern"]?.objectValue?["Regex"]?.stringValue
        {
            if pattern == PreTokenizer.llama3Pattern { return .llama3 }
            if pattern == PreTokenizer.qwen2Pattern { return .qwen2 }
            throw unsupported("split regex \(pattern) is not recognised")
        }
        throw unsupported("\(type(steps[0]) ?? "unknown") before ByteLevel is not recognised")
    }
}
