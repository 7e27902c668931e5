// BPETokenizer: the two BPE tokenizers of the llama family.
//
// Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM; Docs/FORMATS.md §8): (1) with special-token parsing on, the text is
// first partitioned on the special tokens, longest match first; (2) each remaining stretch is split by the
// pre-tokenizer; (3) each piece's UTF-8 bytes are mapped to the byte-level alphabet, one symbol per byte; (4)
// adjacent symbols are merged, always the pair with the lowest merge rank, ties to the leftmost, until no pair has
// a rank; (5) symbols become ids. Decoding maps ids back to token strings and the alphabet back to bytes.
//
// SentencePiece BPE (Llama 2, TinyLlama, Mistral v0.1–v0.3, Phi-3, Gemma): after the same partition, each
// stretch gets a leading space where the vocabulary asks for one (SentencePiece's dummy prefix), spaces become
// "▁", and the characters are merged: by score (GGUF `tokenizer.ggml.scores`, llama.cpp's algorithm: the
// adjacent pair whose concatenation is the best-scoring token, ties to the leftmost) or by rank (tokenizer.json
// merges). A character no token covers falls back to its UTF-8 bytes as `<0xXX>` tokens. See
// BPETokenizer+SentencePiece.swift.

import ModelFormats
import Synchronization

/// A byte-level BPE tokenizer.
public final class BPETokenizer: Sendable {
    /// Token strings by id (byte-level alphabet for normal tokens, plain text for special tokens).
    public let tokens: [String]
    /// The pre-tokenizer.
    public let preTokenizer: PreTokenizer
    /// Tokens matched as a whole in text before pre-tokenization, decoded as their plain text: GGUF control
    /// and user-defined tokens, HF added tokens.
    public let addedIds: Set<Int32>
    /// The added tokens that are control tokens (`<|im_start|>`): left out of decoded text unless asked for.
    public let controlIds: Set<Int32>
    /// Beginning-of-sequence id, if the vocabulary has one.
    public let bosId: Int32?
    /// End-of-sequence id, if the vocabulary has one.
    public let eosId: Int32?
    /// Whether encoding with special tokens prepends `bosId`.
    public let addsBOS: Bool
    /// Ids that end generation (eos, and end-of-turn tokens such as `<|im_end|>`).
    public let endOfGenerationIds: Set<Int32>
    /// Whether a whole piece found in the vocabulary skips merging (Llama 3's `ignore_merges`).
    public let ignoresMerges: Bool
    /// Whether text is NFC-normalized first (Qwen2's tokenizer.json).
    public let normalizesNFC: Bool
    /// Byte-level or SentencePiece.
    public let encoding: TokenizerEncoding
    /// SentencePiece's byte tokens: `byteTokens[b]` is the id of `<0xXX>`, or −1.
    let byteTokens: [Int32]
    /// The byte each byte token stands for, by id.
    let byteOfToken: [Int32: UInt8]
    /// The unknown token (SentencePiece).
    let unknownId: Int32?

    private let ids: [ExactString: Int32]
    private let merges: [UInt64: (rank: Int32, merged: Int32)]
    private let specialsByFirstScalar: [UInt32: [(text: [Unicode.Scalar], id: Int32)]]
    private let cache = PieceCache()

    /// Number of tokens.
    public var vocabularySize: Int { tokens.count }

    /// Builds a tokenizer.
    ///
    /// - Parameters:
    ///   - tokens: Token strings by id.
    ///   - merges: Merge rules in rank order, each a pair of token strings whose concatenation is a token.
    ///   - addedIds: Tokens matched as a whole in text before pre-tokenization.
    ///   - controlIds: The added tokens hidden when decoding (a subset of `addedIds`).
    ///   - source: Where the vocabulary came from, for errors.
    /// - Throws: `FormatError` when a merge names a token the vocabulary lacks, or tokens repeat.
    public init(
        tokens: [String], merges: [(String, String)], preTokenizer: PreTokenizer, addedIds: Set<Int32>,
        controlIds: Set<Int32>,
        bosId: Int32?, eosId: Int32?, addsBOS: Bool, endOfGenerationIds: Set<Int32>, ignoresMerges: Bool = false,
        normalizesNFC: Bool = false, encoding: TokenizerEncoding = .byteLevel, unknownId: Int32? = nil,
        source: String
    ) throws(FormatError) {
        guard !tokens.isEmpty, tokens.count < Int(Int32.max) else {
            throw FormatError(.invalidValue, path: source, field: "tokens", "the vocabulary is empty or too large")
        }
        var ids: [ExactString: Int32] = [:]
        ids.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where ids[ExactString(t)] == nil { ids[ExactString(t)] = Int32(i) }
        var table: [UInt64: (rank: Int32, merged: Int32)] = [:]
        table.reserveCapacity(merges.count)
        for (rank, (a, b)) in merges.enumerated() {
            guard let left = ids[ExactString(a)], let right = ids[ExactString(b)], let merged = ids[ExactString(a + b)]
            else {
                throw FormatError(
                    .invalidValue, path: source, field: "merges[\(rank)]",
                    "merge \"\(a) \(b)\" uses a token that is not in the vocabulary")
            }
            let key = UInt64(UInt32(left)) << 32 | UInt64(UInt32(right))
            if table[key] == nil { table[key] = (Int32(rank), merged) }
        }
        for id in addedIds.union(controlIds) + [bosId, eosId].compactMap({ $0 }) + Array(endOfGenerationIds) {
            guard id >= 0, Int(id) < tokens.count else {
                throw FormatError(
                    .outOfBounds, path: source, field: "special tokens",
                    "id \(id) is outside the vocabulary (\(tokens.count) tokens)")
            }
        }
        var specials: [UInt32: [(text: [Unicode.Scalar], id: Int32)]] = [:]
        for id in addedIds.union(controlIds) {
            let text = Array(tokens[Int(id)].unicodeScalars)
            guard let first = text.first else { continue }
            specials[first.value, default: []].append((text, id))
        }
        for key in specials.keys { specials[key]!.sort { $0.text.count > $1.text.count } }
        self.tokens = tokens
        self.ids = ids
        self.merges = table
        self.preTokenizer = preTokenizer
        self.addedIds = addedIds.union(controlIds)
        self.controlIds = controlIds
        self.bosId = bosId
        self.eosId = eosId
        self.addsBOS = addsBOS
        self.endOfGenerationIds = endOfGenerationIds
        self.ignoresMerges = ignoresMerges
        self.normalizesNFC = normalizesNFC
        self.encoding = encoding
        self.unknownId = unknownId
        specialsByFirstScalar = specials
        var byteTokens = [Int32](repeating: -1, count: 256)
        var byteOfToken: [Int32: UInt8] = [:]
        if case .sentencePiece = encoding {
            for b in 0..<256 {
                if let id = ids[ExactString(Self.byteTokenText(UInt8(b)))] {
                    byteTokens[b] = id
                    byteOfToken[id] = UInt8(b)
                }
            }
            if let scores = encoding.scores, scores.count != tokens.count {
                throw FormatError(
                    .invalidValue, path: source, field: "scores",
                    "has \(scores.count) entries for \(tokens.count) tokens")
            }
        }
        self.byteTokens = byteTokens
        self.byteOfToken = byteOfToken
    }

    /// The id of a token string, or nil.
    public func id(of token: String) -> Int32? { ids[ExactString(token)] }

    /// Encodes text to token ids.
    ///
    /// - Parameters:
    ///   - text: Any string.
    ///   - parseSpecial: Turn special-token text (`<|im_start|>`) into its id; off, it is tokenized as text.
    ///   - addSpecialTokens: Prepend BOS when the vocabulary asks for it (`addsBOS`).
    /// - Returns: Token ids.
    public func encode(_ text: String, parseSpecial: Bool = true, addSpecialTokens: Bool = false) -> [Int32] {
        var out: [Int32] = []
        if addSpecialTokens, addsBOS, let bos = bosId { out.append(bos) }
        let normalized = normalizesNFC ? text.nfc : text
        // User-defined added tokens (MPT's runs of spaces, say) are matched whole even when special tokens are
        // not parsed, as llama.cpp and the tokenizers library do; control tokens only when they are.
        if addedIds.isEmpty || (!parseSpecial && addedIds.count == controlIds.count) {
            encodeOrdinary(normalized, first: true, afterSpecial: true, into: &out)
            return out
        }
        let scalars = Array(normalized.unicodeScalars)
        var segmentStart = 0
        var afterSpecial = true
        var i = 0
        while i < scalars.count {
            if let candidates = specialsByFirstScalar[scalars[i].value],
                let match = candidates.first(where: { c in
                    (parseSpecial || !controlIds.contains(c.id)) && i + c.text.count <= scalars.count
                        && scalars[i..<i + c.text.count].elementsEqual(c.text)
                })
            {
                if i > segmentStart {
                    encodeOrdinary(
                        String(String.UnicodeScalarView(scalars[segmentStart..<i])), first: segmentStart == 0,
                        afterSpecial: afterSpecial, into: &out)
                }
                out.append(match.id)
                afterSpecial = true
                i += match.text.count
                segmentStart = i
            } else {
                i += 1
            }
        }
        if segmentStart < scalars.count {
            encodeOrdinary(
                String(String.UnicodeScalarView(scalars[segmentStart...])), first: segmentStart == 0,
                afterSpecial: afterSpecial, into: &out)
        }
        return out
    }

    /// Encodes a stretch of text without special tokens: the start of the text (`first`) or one that follows a
    /// special token (`afterSpecial`) may get SentencePiece's dummy prefix.
    private func encodeOrdinary(_ text: String, first: Bool, afterSpecial: Bool, into out: inout [Int32]) {
        guard case .sentencePiece(let options) = encoding else {
            encodeByteLevel(text, into: &out)
            return
        }
        guard !text.isEmpty else { return }
        // Scalar by scalar: a space followed by a combining mark is one Character, which String's own
        // replacement would skip.
        var view = String.UnicodeScalarView()
        for c in text.unicodeScalars { view.append(c == " " ? "\u{2581}" : c) }
        var escaped = String(view)
        let startsWithSpace = escaped.unicodeScalars.first == "\u{2581}"
        switch options.prefix {
        case .none: break
        case .everyStretch: if afterSpecial { escaped = "\u{2581}" + escaped }
        case .firstUnlessSpace: if first && !startsWithSpace { escaped = "\u{2581}" + escaped }
        case .everyStretchUnlessSpace: if !startsWithSpace { escaped = "\u{2581}" + escaped }
        }
        if let cached = cache.get(escaped) {
            out.append(contentsOf: cached)
            return
        }
        let ids = options.scores != nil ? sentencePieceByScore(escaped) : sentencePieceByRank(escaped)
        cache.put(escaped, ids)
        out.append(contentsOf: ids)
    }

    private func encodeByteLevel(_ text: String, into out: inout [Int32]) {
        for piece in preTokenizer.split(text) {
            if let cached = cache.get(piece) {
                out.append(contentsOf: cached)
                continue
            }
            let ids = bpe(piece)
            cache.put(piece, ids)
            out.append(contentsOf: ids)
        }
    }

    /// Byte-level BPE of one pre-tokenized piece.
    func bpe(_ piece: String) -> [Int32] {
        let mapped = ByteLevel.encode(piece)
        if ignoresMerges, let whole = ids[ExactString(mapped)] { return [whole] }
        var symbols: [Int32] = []
        symbols.reserveCapacity(mapped.unicodeScalars.count)
        for s in mapped.unicodeScalars { symbols.append(ids[ExactString(String(s))] ?? -1) }
        if symbols.count > 1 { mergeSymbols(&symbols) }
        return symbols.filter { $0 >= 0 }  // a byte with no token of its own is dropped, as llama.cpp does
    }

    /// Applies merges in rank order (ties: leftmost first) over a linked list, with a heap of candidate pairs.
    func mergeSymbols(_ symbols: inout [Int32]) {
        let n = symbols.count
        var next = Array(1...n)
        var prev = Array(-1..<n - 1)
        var alive = [Bool](repeating: true, count: n)
        var heap = PairHeap()
        func push(_ left: Int) {
            let right = next[left]
            guard right < n, symbols[left] >= 0, symbols[right] >= 0 else { return }
            let key = UInt64(UInt32(symbols[left])) << 32 | UInt64(UInt32(symbols[right]))
            if let m = merges[key] {
                heap.push(
                    PairCandidate(rank: m.rank, left: Int32(left), leftId: symbols[left], rightId: symbols[right]))
            }
        }
        for i in 0..<n - 1 { push(i) }
        while let e = heap.pop() {
            let left = Int(e.left)
            guard alive[left], symbols[left] == e.leftId else { continue }
            let right = next[left]
            guard right < n, symbols[right] == e.rightId else { continue }
            let key = UInt64(UInt32(e.leftId)) << 32 | UInt64(UInt32(e.rightId))
            symbols[left] = merges[key]!.merged
            alive[right] = false
            next[left] = next[right]
            if next[right] < n { prev[next[right]] = left }
            if prev[left] >= 0 { push(prev[left]) }
            push(left)
        }
        var out: [Int32] = []
        var i = 0
        while i < n {
            out.append(symbols[i])
            i = next[i]
        }
        symbols = out
    }

    /// Decodes ids to text. Invalid UTF-8 (a token sequence cut inside a character) becomes U+FFFD.
    ///
    /// - Parameter renderSpecial: Include the text of control tokens; off, they are skipped.
    public func decode(_ ids: [Int32], renderSpecial: Bool = false) -> String {
        var bytes: [UInt8] = []
        for id in ids { appendBytes(of: id, renderSpecial: renderSpecial, to: &bytes) }
        if removesDecodedPrefix, bytes.first == 0x20 { bytes.removeFirst() }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Whether decoding drops the dummy prefix's space at the start (SentencePiece vocabularies that add one).
    var removesDecodedPrefix: Bool {
        if case .sentencePiece(let o) = encoding { return o.prefix != .none }
        return false
    }

    /// Appends the bytes of one token.
    public func appendBytes(of id: Int32, renderSpecial: Bool, to bytes: inout [UInt8]) {
        guard id >= 0, Int(id) < tokens.count else { return }
        if addedIds.contains(id) {
            if renderSpecial || !controlIds.contains(id) { bytes.append(contentsOf: tokens[Int(id)].utf8) }
            return
        }
        guard case .sentencePiece = encoding else {
            ByteLevel.decode(tokens[Int(id)], into: &bytes)
            return
        }
        if let byte = byteOfToken[id] {
            bytes.append(byte)
            return
        }
        for b in tokens[Int(id)].utf8 {
            bytes.append(b)
        }
        // "▁" (E2 96 81) is a space.
        var i = bytes.count - tokens[Int(id)].utf8.count
        var out = i
        while i < bytes.count {
            if i + 2 < bytes.count, bytes[i] == 0xE2, bytes[i + 1] == 0x96, bytes[i + 2] == 0x81 {
                bytes[out] = 0x20
                i += 3
            } else {
                bytes[out] = bytes[i]
                i += 1
            }
            out += 1
        }
        bytes.removeLast(bytes.count - out)
    }
}

/// Turns a stream of token ids into text as they arrive, holding back an incomplete UTF-8 sequence until
/// the token that completes it.
public struct StreamingDecoder {
    private let tokenizer: BPETokenizer
    private var pending: [UInt8] = []
    private let renderSpecial: Bool
    private var started = false

    /// A decoder over `tokenizer`.
    public init(tokenizer: BPETokenizer, renderSpecial: Bool = false) {
        self.tokenizer = tokenizer
        self.renderSpecial = renderSpecial
    }

    /// Adds a token and returns the text it completes (possibly empty).
    public mutating func push(_ id: Int32) -> String {
        tokenizer.appendBytes(of: id, renderSpecial: renderSpecial, to: &pending)
        if !started, !pending.isEmpty {
            started = true
            if tokenizer.removesDecodedPrefix, pending.first == 0x20 { pending.removeFirst() }
        }
        let complete = completeLength(pending)
        let text = String(decoding: pending[..<complete], as: UTF8.self)
        pending.removeFirst(complete)
        return text
    }

    /// Returns what is left, with an incomplete sequence as U+FFFD.
    public mutating func finish() -> String {
        defer { pending = [] }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Length of the prefix that does not end inside a UTF-8 sequence.
    private func completeLength(_ b: [UInt8]) -> Int {
        var i = b.count - 1
        var continuation = 0
        while i >= 0, continuation < 4, b[i] & 0xC0 == 0x80 {
            continuation += 1
            i -= 1
        }
        guard i >= 0 else { return b.count }
        let lead = b[i]
        let needed = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : lead >= 0xC0 ? 1 : 0
        return needed > continuation ? i : b.count
    }
}

/// A merge candidate of byte-level BPE, first by rank, then leftmost.
struct PairCandidate: HeapOrdered {
    var rank: Int32
    var left: Int32
    var leftId: Int32
    var rightId: Int32
    func precedes(_ o: PairCandidate) -> Bool { rank != o.rank ? rank < o.rank : left < o.left }
}

/// Merge candidates by rank.
typealias PairHeap = PriorityHeap<PairCandidate>

/// A bounded cache of piece → ids, keyed by exact bytes; cleared when full. Thread-safe.
final class PieceCache: Sendable {
    private let table = Mutex<[ExactString: [Int32]]>([:])
    private let limit = 50_000

    func get(_ key: String) -> [Int32]? { table.withLock { $0[ExactString(key)] } }

    func put(_ key: String, _ value: [Int32]) {
        table.withLock {
            if $0.count >= limit { $0.removeAll(keepingCapacity: true) }
            $0[ExactString(key)] = value
        }
    }
}

/// How a tokenizer turns text into symbols.
public enum TokenizerEncoding: Sendable, Equatable {
    /// GPT-2's byte-level alphabet (Llama 3, Qwen, SmolLM, Phi-4).
    case byteLevel
    /// SentencePiece: spaces as "▁", byte-fallback tokens, a dummy prefix.
    case sentencePiece(SentencePieceOptions)

    /// The per-token scores that drive SentencePiece merging, if any.
    var scores: [Float]? {
        if case .sentencePiece(let o) = self { return o.scores }
        return nil
    }
}

/// SentencePiece's settings.
public struct SentencePieceOptions: Sendable, Equatable {
    /// Where a leading "▁" is added.
    public enum Prefix: Sendable, Equatable {
        /// Never (Gemma).
        case none
        /// To the text and to every stretch after a special token (SentencePiece's dummy prefix as llama.cpp and
        /// the Prepend normalizer of Llama 2's tokenizer.json apply it).
        case everyStretch
        /// To the start of the text unless it already starts with a space (Metaspace, prepend_scheme first).
        case firstUnlessSpace
        /// To every stretch that does not start with a space (Metaspace, prepend_scheme always).
        case everyStretchUnlessSpace
    }

    /// Where a leading "▁" is added.
    public var prefix: Prefix
    /// Per-token scores (GGUF): merge by score as llama.cpp does; nil: merge by the merges' ranks.
    public var scores: [Float]?

    /// Options.
    public init(prefix: Prefix, scores: [Float]?) {
        self.prefix = prefix
        self.scores = scores
    }
}
