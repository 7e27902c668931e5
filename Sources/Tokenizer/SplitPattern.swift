// SplitPattern: the regular expressions pre-tokenizers split text with, matched over Unicode scalars by a small
// backtracking matcher (ECMAScript semantics: alternatives in order, greedy or lazy quantifiers, lookahead).
//
// The subset: literals and escapes (\r \n \t \s \S \d \\ and escaped punctuation), `.`, classes with ranges and
// negation, \p{L} \p{Lu} \p{Ll} \p{Lt} \p{Lm} \p{Lo} \p{N} \p{P} \p{S} \p{M} (and \P{…}), groups `( )`, `(?: )`,
// lookahead `(?= )` `(?! )`, alternation, `* + ? {m} {m,} {m,n}` (lazy with a trailing `?`), and `$`.
//
// Two flavours of character classes. `.unicode` is the Unicode general categories, as the tokenizers library's
// regexes see them. `.llamaCpp` reproduces how llama.cpp runs a pre-tokenizer regex: it replaces every
// non-ASCII code point by one byte standing for its category (so \p{Lu} and \p{Ll} both mean "a letter"), and
// non-ASCII whitespace by \v; its ASCII \p{P} is !-#%-*,-/:-;?-@[-]_{} and its ASCII \p{S} is $+<->^`| (no `~`).
// Splitting keeps both the matches and the text between them, as llama.cpp's unicode_regex_split does.

/// A compiled pre-tokenizer regular expression.
public struct SplitPattern: Sendable {
    /// Which meaning character classes have.
    public enum Flavour: Sendable { case unicode, llamaCpp }

    /// Why a pattern could not be compiled.
    public struct CompileError: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    indirect enum Node: Sendable {
        case set(CharacterSet)
        case sequence([Node])
        case alternation([Node])
        case repeated(Node, min: Int, max: Int, greedy: Bool)
        case lookahead(Node, negative: Bool)
        case end
    }

    enum Property: String, Sendable {
        case L, Lu, Ll, Lt, Lm, Lo, N, P, S, M
    }

    struct CharacterSet: Sendable {
        enum Item: Sendable {
            case range(UInt32, UInt32)
            case property(Property, negated: Bool)
            case space(negated: Bool)
            case digit
            case any
        }
        var items: [Item]
        var negated: Bool
    }

    /// The source text.
    public let source: String
    let root: Node
    let flavour: Flavour

    /// Compiles a pattern.
    ///
    /// - Throws: `CompileError` naming the construct and its position.
    public init(_ source: String, flavour: Flavour) throws(CompileError) {
        self.source = source
        self.flavour = flavour
        var parser = Parser(scalars: Array(source.unicodeScalars))
        root = try parser.parseAlternation()
        if parser.i < parser.scalars.count {
            throw CompileError(message: "unexpected \"\(parser.scalars[parser.i])\" at \(parser.i) in \(source)")
        }
    }

    /// Splits each piece of `pieces` (ranges of `text`) into matches and the stretches between them.
    func split(_ text: [Unicode.Scalar], pieces: [Range<Int>]) -> [Range<Int>] {
        let subject = flavour == .llamaCpp ? text.map(Self.llamaCppStandIn) : text
        var out: [Range<Int>] = []
        for piece in pieces {
            var last = piece.lowerBound
            var start = piece.lowerBound
            while start < piece.upperBound {
                var end = -1
                _ = match(root, subject, start, piece.upperBound) { e in
                    end = e
                    return true
                }
                if end > start {
                    if start > last { out.append(last..<start) }
                    out.append(start..<end)
                    last = end
                    start = end
                } else {
                    start += 1
                }
            }
            if last < piece.upperBound { out.append(last..<piece.upperBound) }
        }
        return out
    }

    /// llama.cpp matches non-ASCII whitespace as \v.
    static func llamaCppStandIn(_ s: Unicode.Scalar) -> Unicode.Scalar {
        s.value >= 128 && s.properties.isWhitespace ? "\u{0B}" : s
    }

    private func match(
        _ node: Node, _ s: [Unicode.Scalar], _ i: Int, _ end: Int, _ k: (Int) -> Bool
    ) -> Bool {
        switch node {
        case .set(let set):
            return i < end && set.contains(s[i], flavour) && k(i + 1)
        case .sequence(let nodes):
            return matchSequence(nodes[...], s, i, end, k)
        case .alternation(let options):
            for option in options where match(option, s, i, end, k) { return true }
            return false
        case .lookahead(let inner, let negative):
            let found = match(inner, s, i, end) { _ in true }
            return found != negative && k(i)
        case .end:
            return i == end && k(i)
        case .repeated(let inner, let min, let max, let greedy):
            if let width1 = singleScalar(inner) {
                var n = 0
                while n < max, i + n < end, width1(s, i + n, end) { n += 1 }
                guard n >= min else { return false }
                if greedy {
                    for c in stride(from: n, through: min, by: -1) where k(i + c) { return true }
                } else {
                    for c in min...n where k(i + c) { return true }
                }
                return false
            }
            return matchRepeat(inner, min: min, max: max, greedy: greedy, count: 0, s, i, end, k)
        }
    }

    private func matchSequence(
        _ nodes: ArraySlice<Node>, _ s: [Unicode.Scalar], _ i: Int, _ end: Int, _ k: (Int) -> Bool
    ) -> Bool {
        guard let first = nodes.first else { return k(i) }
        return match(first, s, i, end) { j in matchSequence(nodes.dropFirst(), s, j, end, k) }
    }

    private func matchRepeat(
        _ inner: Node, min: Int, max: Int, greedy: Bool, count: Int, _ s: [Unicode.Scalar], _ i: Int, _ end: Int,
        _ k: (Int) -> Bool
    ) -> Bool {
        func more() -> Bool {
            count < max
                && match(inner, s, i, end) { j in
                    j > i && matchRepeat(inner, min: min, max: max, greedy: greedy, count: count + 1, s, j, end, k)
                }
        }
        if greedy { return more() || (count >= min && k(i)) }
        return (count >= min && k(i)) || more()
    }

    /// A predicate for a node that always consumes exactly one scalar (a class, possibly behind lookaheads), so
    /// repeating it needs no recursion.
    private func singleScalar(_ node: Node) -> ((_ s: [Unicode.Scalar], _ i: Int, _ end: Int) -> Bool)? {
        switch node {
        case .set(let set): return { s, i, _ in set.contains(s[i], flavour) }
        case .sequence(let nodes):
            guard let last = nodes.last, case .set(let set) = last else { return nil }
            var checks: [(Node, Bool)] = []
            for n in nodes.dropLast() {
                guard case .lookahead(let inner, let negative) = n else { return nil }
                checks.append((inner, negative))
            }
            return { s, i, end in
                for (inner, negative) in checks where match(inner, s, i, end, { _ in true }) == negative {
                    return false
                }
                return set.contains(s[i], flavour)
            }
        default: return nil
        }
    }
}

extension SplitPattern.CharacterSet {
    func contains(_ c: Unicode.Scalar, _ flavour: SplitPattern.Flavour) -> Bool {
        var hit = false
        for item in items {
            switch item {
            case .range(let lo, let hi): hit = c.value >= lo && c.value <= hi
            case .property(let p, let negated): hit = SplitPattern.has(c, p, flavour) != negated
            case .space(let negated): hit = c.properties.isWhitespace != negated
            case .digit: hit = c.value >= 0x30 && c.value <= 0x39
            case .any: hit = c != "\n" && c != "\r"
            }
            if hit { break }
        }
        return hit != negated
    }
}

extension SplitPattern {
    /// Whether `c` has a property, in a flavour.
    static func has(_ c: Unicode.Scalar, _ p: Property, _ flavour: Flavour) -> Bool {
        let category = c.properties.generalCategory
        if flavour == .llamaCpp {
            if c.value < 128 {
                switch p {
                case .L, .Lu, .Ll, .Lt, .Lm, .Lo: return c.isLetter
                case .N: return c.isNumber
                case .P: return "!\"#%&'()*,-./:;?@[\\]_{}".unicodeScalars.contains(c)
                case .S: return "$+<=>^`|".unicodeScalars.contains(c)
                case .M: return false
                }
            }
            if c.properties.isWhitespace { return false }
            switch p {
            case .L, .Lu, .Ll, .Lt, .Lm, .Lo: return c.isLetter
            default: break
            }
        }
        switch p {
        case .L: return c.isLetter
        case .Lu: return category == .uppercaseLetter
        case .Ll: return category == .lowercaseLetter
        case .Lt: return category == .titlecaseLetter
        case .Lm: return category == .modifierLetter
        case .Lo: return category == .otherLetter
        case .N: return c.isNumber
        case .P:
            switch category {
            case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
                .initialPunctuation, .finalPunctuation, .otherPunctuation:
                return true
            default: return false
            }
        case .S:
            switch category {
            case .mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol: return true
            default: return false
            }
        case .M:
            switch category {
            case .nonspacingMark, .spacingMark, .enclosingMark: return true
            default: return false
            }
        }
    }

    /// A recursive-descent parser of the subset.
    struct Parser {
        let scalars: [Unicode.Scalar]
        var i = 0

        init(scalars: [Unicode.Scalar]) { self.scalars = scalars }

        func error(_ what: String) -> CompileError {
            CompileError(
                message: "\(what) at \(i) in \(String(String.UnicodeScalarView(scalars))) (not in Cairn's regex subset)"
            )
        }

        var peek: Unicode.Scalar? { i < scalars.count ? scalars[i] : nil }

        mutating func parseAlternation() throws(CompileError) -> Node {
            var options = [try parseSequence()]
            while peek == "|" {
                i += 1
                options.append(try parseSequence())
            }
            return options.count == 1 ? options[0] : .alternation(options)
        }

        mutating func parseSequence() throws(CompileError) -> Node {
            var nodes: [Node] = []
            while let c = peek, c != "|", c != ")" {
                var atom = try parseAtom()
                atom = try parseQuantifier(atom)
                nodes.append(atom)
            }
            return nodes.count == 1 ? nodes[0] : .sequence(nodes)
        }

        mutating func parseQuantifier(_ atom: Node) throws(CompileError) -> Node {
            guard let c = peek else { return atom }
            var (lo, hi) = (0, Int.max)
            switch c {
            case "*": i += 1
            case "+":
                i += 1
                lo = 1
            case "?":
                i += 1
                hi = 1
            case "{":
                let save = i
                i += 1
                guard let m = parseNumber() else {
                    i = save
                    return atom
                }
                lo = m
                hi = m
                if peek == "," {
                    i += 1
                    hi = parseNumber() ?? Int.max
                }
                guard peek == "}" else { throw error("an unfinished {m,n}") }
                i += 1
            default: return atom
            }
            var greedy = true
            if peek == "?" {
                i += 1
                greedy = false
            }
            return .repeated(atom, min: lo, max: hi, greedy: greedy)
        }

        mutating func parseNumber() -> Int? {
            var n = 0
            var digits = 0
            while let c = peek, c.value >= 0x30, c.value <= 0x39, digits < 6 {
                n = n * 10 + Int(c.value - 0x30)
                digits += 1
                i += 1
            }
            return digits > 0 ? n : nil
        }

        mutating func parseAtom() throws(CompileError) -> Node {
            guard let c = peek else { throw error("an unexpected end") }
            i += 1
            switch c {
            case "(":
                var lookahead: Bool? = nil
                if peek == "?" {
                    guard i + 1 < scalars.count else { throw error("an unfinished group") }
                    switch scalars[i + 1] {
                    case ":": break
                    case "=": lookahead = false
                    case "!": lookahead = true
                    default: throw error("the group (?\(scalars[i + 1])")
                    }
                    i += 2
                }
                let inner = try parseAlternation()
                guard peek == ")" else { throw error("an unclosed group") }
                i += 1
                if let negative = lookahead { return .lookahead(inner, negative: negative) }
                return inner
            case "[": return .set(try parseClass())
            case ".": return .set(CharacterSet(items: [.any], negated: false))
            case "$": return .end
            case "\\": return .set(try parseEscape(inClass: false))
            case "^", "*", "+", "?", "{", ")": throw error("\"\(c)\" where an atom was expected")
            default: return .set(CharacterSet(items: [.range(c.value, c.value)], negated: false))
            }
        }

        mutating func parseClass() throws(CompileError) -> CharacterSet {
            var negated = false
            if peek == "^" {
                negated = true
                i += 1
            }
            var items: [CharacterSet.Item] = []
            var first = true
            while let c = peek, c != "]" || first {
                first = false
                i += 1
                var low: UInt32
                if c == "\\" {
                    let escaped = try parseEscape(inClass: true)
                    guard escaped.items.count == 1, case .range(let lo, let hi) = escaped.items[0], lo == hi,
                        !escaped.negated
                    else {
                        items.append(contentsOf: escaped.negated ? [] : escaped.items)
                        if escaped.negated { throw error("a negated escape inside a class") }
                        continue
                    }
                    low = lo
                } else {
                    low = c.value
                }
                if peek == "-", i + 1 < scalars.count, scalars[i + 1] != "]" {
                    i += 1
                    guard let h = peek else { throw error("an unfinished range") }
                    i += 1
                    var high = h.value
                    if h == "\\" {
                        let escaped = try parseEscape(inClass: true)
                        guard case .range(let lo, _) = escaped.items.first else { throw error("a range to a class") }
                        high = lo
                    }
                    items.append(.range(low, high))
                } else {
                    items.append(.range(low, low))
                }
            }
            guard peek == "]" else { throw error("an unclosed class") }
            i += 1
            return CharacterSet(items: items, negated: negated)
        }

        mutating func parseEscape(inClass: Bool) throws(CompileError) -> CharacterSet {
            guard let c = peek else { throw error("a trailing backslash") }
            i += 1
            func one(_ v: UInt32) -> CharacterSet { CharacterSet(items: [.range(v, v)], negated: false) }
            switch c {
            case "r": return one(13)
            case "n": return one(10)
            case "t": return one(9)
            case "v": return one(11)
            case "f": return one(12)
            case "s": return CharacterSet(items: [.space(negated: false)], negated: false)
            case "S": return CharacterSet(items: [.space(negated: true)], negated: false)
            case "d": return CharacterSet(items: [.digit], negated: false)
            case "p", "P":
                guard peek == "{", let close = scalars[i...].firstIndex(of: "}") else { throw error("\\p without {…}") }
                let name = String(String.UnicodeScalarView(scalars[(i + 1)..<close]))
                guard let p = Property(rawValue: name) else { throw error("the property \\p{\(name)}") }
                i = close + 1
                return CharacterSet(items: [.property(p, negated: c == "P")], negated: false)
            default:
                if c.properties.isAlphabetic || (c.value >= 0x30 && c.value <= 0x39) {
                    throw error("the escape \\\(c)")
                }
                return one(c.value)
            }
        }
    }
}
