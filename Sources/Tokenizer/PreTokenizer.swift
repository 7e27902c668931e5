// PreTokenizer: splits text into the pieces BPE works on, as the regular expressions of the llama family
// do, written as hand matchers (as llama.cpp's unicode.cpp does) so no regex engine is needed and the
// behaviour is exact. Character classes: \p{L} letters, \p{N} numbers (Unicode general categories), \s the
// Unicode White_Space property.
//
//   gpt2    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   smollm  every \p{N} scalar becomes its own piece first, then gpt2 on the rest (HF: Digits(individual)
//           then ByteLevel; llama.cpp: "\p{N}" before the gpt2 pattern)
//   llama3  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//           \s*[\r\n]+|\s+(?!\S)|\s+
//   qwen2   llama3 with \p{N} (one digit) in place of \p{N}{1,3}
// Pieces are the matches; with these patterns every scalar belongs to exactly one match.
//
// The other pre-tokenizers llama.cpp knows (DeepSeek's, Falcon's, GPT-4o's for Phi-4, Tekken for Mistral NeMo,
// and the default of an unnamed BPE vocabulary) are lists of regular expressions applied one after the other,
// each splitting the pieces the previous one left, with llama.cpp's meaning of the character classes
// (SplitPattern's `.llamaCpp` flavour). Their patterns are llama.cpp's (src/llama-vocab.cpp), which define the
// split these vocabularies were tested with.

/// The pre-tokenizer of a byte-level BPE vocabulary.
public enum PreTokenizer: String, Sendable, CaseIterable {
    /// GPT-2's pattern.
    case gpt2
    /// SmolLM / StarCoder: single digits, then GPT-2's pattern.
    case smollm
    /// Llama 3's pattern.
    case llama3
    /// Qwen2's pattern (Llama 3's with single digits).
    case qwen2
    /// DeepSeek LLM's (and the R1 Llama distills' earlier base's) list.
    case deepseekLLM = "deepseek-llm"
    /// DeepSeek Coder's list.
    case deepseekCoder = "deepseek-coder"
    /// DeepSeek V3's list.
    case deepseekV3 = "deepseek-v3"
    /// Falcon's list.
    case falcon
    /// GPT-4o's pattern (Phi-4, Phi-4-mini), with llama.cpp's rewrite of its case classes.
    case gpt4o = "gpt-4o"
    /// Tekken (Mistral NeMo and later), likewise rewritten.
    case tekken
    /// llama.cpp's default for a byte-level vocabulary that names no pre-tokenizer.
    case `default`

    /// The regular expressions of the list-based pre-tokenizers, in order; the GPT-2 pattern stands for the
    /// hand-written matcher.
    static let patternLists: [PreTokenizer: [String]] = [
        .deepseekLLM: [
            "[\r\n]",
            "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
            "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
            "\\s+$",
            "[一-龥ࠀ-一가-퟿]+",
            "\\p{N}+",
        ],
        .deepseekCoder: ["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"],
        .deepseekV3: [
            "\\p{N}{1,3}",
            "[一-龥぀-ゟ゠-ヿ]+",
            "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
        ],
        .falcon: ["[\\p{P}\\$\\+<=>\\^~\\|`]+", gpt2Pattern, "[0-9][0-9][0-9]"],
        .gpt4o: [
            "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
        ],
        .tekken: [
            "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
        ],
        .default: ["[\\p{P}\\$\\+<=>\\^~\\|]+", gpt2Pattern, "\\p{N}+", "[0-9][0-9][0-9]"],
    ]

    /// GPT-2's pattern as llama.cpp spells it (run by the hand-written matcher).
    static let gpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"

    /// The compiled list of a list-based pre-tokenizer (nil for the GPT-2 pattern's place). Compiled on each
    /// call, which costs microseconds: a compiled pattern's tree is an indirect enum, whose tagged pointers a
    /// process-wide cache would hide from leak checkers (the fuzzers run under LeakSanitizer).
    func compiledList() -> [SplitPattern?] {
        (Self.patternLists[self] ?? []).map { $0 == Self.gpt2Pattern ? nil : try! SplitPattern($0, flavour: .llamaCpp) }
    }

    /// The pieces of `text`, in order; their concatenation is `text`.
    public func split(_ text: String) -> [String] {
        let scalars = Array(text.unicodeScalars)
        var pieces: [String] = []
        switch self {
        case .gpt2:
            Self.gpt2(scalars[...], into: &pieces)
        case .smollm:
            var start = 0
            for (i, s) in scalars.enumerated() where s.isNumber {
                if i > start { Self.gpt2(scalars[start..<i], into: &pieces) }
                pieces.append(String(String.UnicodeScalarView([s])))
                start = i + 1
            }
            if start < scalars.count { Self.gpt2(scalars[start...], into: &pieces) }
        case .llama3:
            Self.llama3(scalars[...], maxDigits: 3, into: &pieces)
        case .qwen2:
            Self.llama3(scalars[...], maxDigits: 1, into: &pieces)
        default:
            var ranges = scalars.isEmpty ? [] : [0..<scalars.count]
            for pattern in compiledList() {
                if let pattern {
                    ranges = pattern.split(scalars, pieces: ranges)
                } else {
                    var next: [Range<Int>] = []
                    for r in ranges {
                        var local: [String] = []
                        Self.gpt2(scalars[r], into: &local)
                        var at = r.lowerBound
                        for piece in local {
                            let n = piece.unicodeScalars.count
                            next.append(at..<at + n)
                            at += n
                        }
                    }
                    ranges = next
                }
            }
            for r in ranges { Self.emit(scalars[...], r.lowerBound, r.upperBound, into: &pieces) }
        }
        return pieces
    }

    private static func emit(_ s: ArraySlice<Unicode.Scalar>, _ lo: Int, _ hi: Int, into pieces: inout [String]) {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: s[lo..<hi])
        pieces.append(String(view))
    }

    /// The length of a contraction ('s 't 'm 'd 're 've 'll) at `i`, or 0.
    private static func contraction(_ s: ArraySlice<Unicode.Scalar>, _ i: Int, caseInsensitive: Bool) -> Int {
        guard s[i] == "'", i + 1 < s.endIndex else { return 0 }
        func lower(_ c: Unicode.Scalar) -> Unicode.Scalar {
            caseInsensitive && c.value >= 0x41 && c.value <= 0x5A ? Unicode.Scalar(c.value + 32)! : c
        }
        let a = lower(s[i + 1])
        if i + 2 < s.endIndex {
            let b = lower(s[i + 2])
            if (a == "r" && b == "e") || (a == "v" && b == "e") || (a == "l" && b == "l") { return 3 }
        }
        return a == "s" || a == "t" || a == "m" || a == "d" ? 2 : 0
    }

    /// End of the whitespace alternatives `\s+(?!\S)|\s+` starting at whitespace `i`.
    private static func whitespaceRun(_ s: ArraySlice<Unicode.Scalar>, _ i: Int) -> Int {
        var j = i
        while j < s.endIndex, s[j].isSpace { j += 1 }
        // \s+(?!\S): leave the last space for the next token when a non-space follows, if one remains.
        if j < s.endIndex, j - i > 1 { return j - 1 }
        return j
    }

    private static func gpt2(_ s: ArraySlice<Unicode.Scalar>, into pieces: inout [String]) {
        var i = s.startIndex
        while i < s.endIndex {
            let c = s[i]
            var j = i
            let hasSpacePrefix = c == " " && i + 1 < s.endIndex
            let next = hasSpacePrefix ? s[i + 1] : c
            let start = hasSpacePrefix ? i + 1 : i
            let contractionLength = contraction(s, i, caseInsensitive: false)
            if contractionLength > 0 {
                j = i + contractionLength
            } else if next.isLetter && (hasSpacePrefix || c.isLetter) {
                j = start
                while j < s.endIndex, s[j].isLetter { j += 1 }
            } else if next.isNumber && (hasSpacePrefix || c.isNumber) {
                j = start
                while j < s.endIndex, s[j].isNumber { j += 1 }
            } else if next.isOther && (hasSpacePrefix || c.isOther) {
                j = start
                while j < s.endIndex, s[j].isOther { j += 1 }
            } else {
                j = whitespaceRun(s, i)
            }
            emit(s, i, j, into: &pieces)
            i = j
        }
    }

    private static func llama3(_ s: ArraySlice<Unicode.Scalar>, maxDigits: Int, into pieces: inout [String]) {
        var i = s.startIndex
        while i < s.endIndex {
            let c = s[i]
            var j = i
            let contractionLength = contraction(s, i, caseInsensitive: true)
            if contractionLength > 0 {
                j = i + contractionLength
            } else if c.isLetter || (!c.isNewline && !c.isNumber && i + 1 < s.endIndex && s[i + 1].isLetter) {
                // [^\r\n\p{L}\p{N}]?\p{L}+
                j = c.isLetter ? i : i + 1
                while j < s.endIndex, s[j].isLetter { j += 1 }
            } else if c.isNumber {
                j = i
                while j < s.endIndex, j - i < maxDigits, s[j].isNumber { j += 1 }
            } else if c.isOther || (c == " " && i + 1 < s.endIndex && s[i + 1].isOther) {
                // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
                j = c == " " ? i + 1 : i
                while j < s.endIndex, s[j].isOther { j += 1 }
                while j < s.endIndex, s[j].isNewline { j += 1 }
            } else {
                // c is whitespace. \s*[\r\n]+ : through the last newline of the whitespace run, if any.
                var end = i
                var lastNewline = -1
                while end < s.endIndex, s[end].isSpace {
                    if s[end].isNewline { lastNewline = end }
                    end += 1
                }
                j = lastNewline >= 0 ? lastNewline + 1 : whitespaceRun(s, i)
            }
            emit(s, i, j, into: &pieces)
            i = j
        }
    }
}

extension Unicode.Scalar {
    /// \p{L}
    var isLetter: Bool {
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: true
        default: false
        }
    }

    /// \p{N}
    var isNumber: Bool {
        switch properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: true
        default: false
        }
    }

    /// \s: the White_Space property.
    var isSpace: Bool { properties.isWhitespace }

    /// [\r\n]
    var isNewline: Bool { self == "\r" || self == "\n" }

    /// [^\s\p{L}\p{N}]
    var isOther: Bool { !isSpace && !isLetter && !isNumber }
}
