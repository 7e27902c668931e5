// JinjaParser: chat-template source → a tree of statements and expressions.
//
// Lexing follows Jinja2 as Hugging Face configures it (trim_blocks and lstrip_blocks on, keep_trailing_newline
// off): line ends normalised to \n; one trailing newline of the source dropped; `{%-`/`-%}` (and `{{-`, `-}}`,
// `{#-`, `-#}`) strip all whitespace on that side; otherwise a block or comment tag alone on its line takes the
// line's leading spaces and tabs with it (lstrip_blocks) and the newline right after it (trim_blocks); `{%+`
// and `+%}` turn those off. String literals inside tags may hold `}}` and `%}`.
//
// Expressions, loosest first: `a if c else b`; or; and; not; comparisons (chained, with in / not in); + -; ~;
// * / // %; ** (left-associative); unary - +; then postfix .name [i] [a:b:c] (args), filters `| f(args)` and
// tests `is [not] t`, which apply to the whole unary expression.

indirect enum JinjaExpr {
    case literal(JinjaValue)
    case name(String)
    case list([JinjaExpr])
    case tuple([JinjaExpr])
    case dict([(JinjaExpr, JinjaExpr)])
    case attribute(JinjaExpr, String)
    case item(JinjaExpr, JinjaExpr)
    case slice(JinjaExpr, JinjaExpr?, JinjaExpr?, JinjaExpr?)
    case call(JinjaExpr, [JinjaExpr], [(String, JinjaExpr)])
    case filter(JinjaExpr, String, [JinjaExpr], [(String, JinjaExpr)], line: Int)
    case test(JinjaExpr, String, [JinjaExpr], negated: Bool, line: Int)
    case unary(String, JinjaExpr)
    case binary(String, JinjaExpr, JinjaExpr, line: Int)
    case compare(JinjaExpr, [(String, JinjaExpr)], line: Int)
    case and(JinjaExpr, JinjaExpr)
    case or(JinjaExpr, JinjaExpr)
    case not(JinjaExpr)
    case conditional(JinjaExpr, JinjaExpr, JinjaExpr?)
}

indirect enum JinjaNode {
    case text(JinjaText)
    case output(JinjaExpr, line: Int)
    case ifBlock([(JinjaExpr, [JinjaNode])], else: [JinjaNode])
    case forLoop(
        targets: [String], iterable: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode], else: [JinjaNode], line: Int)
    case set(targets: [String], attribute: String?, JinjaExpr, line: Int)
    case setBlock(String, [JinjaNode])
    case macro(name: String, parameters: [(String, JinjaExpr?)], body: [JinjaNode])
    case breakLoop, continueLoop
}

/// One token of a tag.
struct JinjaToken: Equatable {
    enum Kind: Equatable { case name, string, integer, float, op }
    var kind: Kind
    var text: String
    var line: Int
}

/// A parsed template.
struct JinjaTemplate {
    let body: [JinjaNode]

    init(_ source: String) throws(JinjaError) {
        var lexer = JinjaLexer(source)
        let items = try lexer.lex()
        var parser = JinjaStatementParser(items: items)
        body = try parser.parseBody(until: [])
    }
}

/// Lexed template: text, `{{ … }}` and `{% … %}`.
enum JinjaItem {
    case text(String)
    case expression([JinjaToken], line: Int)
    case statement([JinjaToken], line: Int)
}

struct JinjaLexer {
    let s: [Unicode.Scalar]
    var i = 0
    var line = 1

    init(_ source: String) {
        var normalised = String.UnicodeScalarView()
        var scalars = Array(source.unicodeScalars)
        if scalars.last == "\n" { scalars.removeLast() }  // keep_trailing_newline off
        var k = 0
        while k < scalars.count {
            if scalars[k] == "\r" {
                normalised.append("\n")
                if k + 1 < scalars.count, scalars[k + 1] == "\n" { k += 1 }
            } else {
                normalised.append(scalars[k])
            }
            k += 1
        }
        s = Array(normalised)
    }

    func at(_ k: Int) -> Unicode.Scalar? { k < s.count ? s[k] : nil }

    mutating func lex() throws(JinjaError) -> [JinjaItem] {
        var items: [JinjaItem] = []
        var text: [Unicode.Scalar] = []
        var stripNextLeading = false
        var trimNextNewline = false
        // Whether the pending text starts a line: at the start, and after a tag whose newline trim_blocks took.
        var pendingStartsLine = true
        func flushText() {
            if !text.isEmpty {
                var view = String.UnicodeScalarView()
                view.append(contentsOf: text)
                items.append(.text(String(view)))
            }
            text = []
        }
        while i < s.count {
            let c = s[i]
            let next = at(i + 1)
            guard c == "{", next == "{" || next == "%" || next == "#" else {
                if stripNextLeading {
                    if c.properties.isWhitespace {
                        if c == "\n" { line += 1 }
                        i += 1
                        continue
                    }
                    stripNextLeading = false
                }
                if trimNextNewline {
                    trimNextNewline = false
                    if c == "\n" {
                        line += 1
                        i += 1
                        if text.isEmpty { pendingStartsLine = true }
                        continue
                    }
                }
                if c == "\n" { line += 1 }
                text.append(c)
                i += 1
                continue
            }
            stripNextLeading = false
            trimNextNewline = false
            let kind = next!
            let modifier = at(i + 2)
            let isBlock = kind == "%" || kind == "#"
            if modifier == "-" {
                while let last = text.last, last.properties.isWhitespace { text.removeLast() }
            } else if isBlock && modifier != "+" {
                // lstrip_blocks: spaces and tabs between the line start and the tag.
                var k = text.count
                while k > 0, text[k - 1] == " " || text[k - 1] == "\t" { k -= 1 }
                if k > 0 ? text[k - 1] == "\n" : pendingStartsLine { text.removeSubrange(k...) }
            }
            let tagLine = line
            i += 2
            if modifier == "-" || modifier == "+" { i += 1 }
            if kind == "#" {
                // A comment: up to #}, optionally -#}.
                var closed = false
                while i + 1 < s.count {
                    if s[i] == "#" && s[i + 1] == "}" {
                        let strip = i > 0 && s[i - 1] == "-"
                        i += 2
                        closed = true
                        if strip { stripNextLeading = true } else { trimNextNewline = true }
                        break
                    }
                    if s[i] == "\n" { line += 1 }
                    i += 1
                }
                if !closed { throw JinjaError(.syntax, "a comment {# is never closed", line: tagLine) }
                continue
            }
            flushText()
            pendingStartsLine = false
            let (tokens, closer) = try lexTag(closer: kind == "{" ? "}" : "%", line: tagLine)
            if closer == "-" {
                stripNextLeading = true
            } else if kind == "%" && closer != "+" {
                trimNextNewline = true
            }
            if kind == "{" {
                items.append(.expression(tokens, line: tagLine))
            } else {
                items.append(.statement(tokens, line: tagLine))
                if tokens.first?.text == "raw", tokens.count == 1 {
                    try lexRaw(into: &items, stripLeading: closer == "-")
                    stripNextLeading = false
                    trimNextNewline = false
                }
            }
        }
        flushText()
        return items
    }

    /// Tokens of a tag up to its closer (`}}` or `%}`); returns the modifier before the closer (`-`, `+` or nil).
    mutating func lexTag(closer: Unicode.Scalar, line tagLine: Int) throws(JinjaError) -> (
        [JinjaToken], Unicode.Scalar?
    ) {
        var tokens: [JinjaToken] = []
        while i < s.count {
            let c = s[i]
            if c == "\n" { line += 1 }
            if c.properties.isWhitespace {
                i += 1
                continue
            }
            // The closer, possibly after - or +.
            if (c == "-" || c == "+"), at(i + 1) == closer, at(i + 2) == "}" {
                i += 3
                return (tokens, c)
            }
            if c == closer, at(i + 1) == "}" {
                i += 2
                return (tokens, nil)
            }
            if c == "'" || c == "\"" {
                tokens.append(JinjaToken(kind: .string, text: try lexString(quote: c), line: line))
                continue
            }
            if c.isDigit {
                var j = i
                var isFloat = false
                while let d = at(j), d.isDigit || d == "_" { j += 1 }
                if at(j) == ".", let d = at(j + 1), d.isDigit {
                    isFloat = true
                    j += 1
                    while let d = at(j), d.isDigit || d == "_" { j += 1 }
                }
                if let e = at(j), e == "e" || e == "E" {
                    var k = j + 1
                    if let sign = at(k), sign == "+" || sign == "-" { k += 1 }
                    if let d = at(k), d.isDigit {
                        isFloat = true
                        j = k
                        while let d = at(j), d.isDigit { j += 1 }
                    }
                }
                tokens.append(
                    JinjaToken(
                        kind: isFloat ? .float : .integer, text: String(String.UnicodeScalarView(s[i..<j])), line: line)
                )
                i = j
                continue
            }
            if c.isNameStart {
                var j = i
                while let d = at(j), d.isNameStart || d.isDigit { j += 1 }
                tokens.append(JinjaToken(kind: .name, text: String(String.UnicodeScalarView(s[i..<j])), line: line))
                i = j
                continue
            }
            let two = at(i + 1).map { String(c) + String($0) } ?? ""
            if ["==", "!=", "<=", ">=", "//", "**"].contains(two) {
                tokens.append(JinjaToken(kind: .op, text: two, line: line))
                i += 2
                continue
            }
            if "+-*/%~|.,:()[]{}<>=".unicodeScalars.contains(c) {
                tokens.append(JinjaToken(kind: .op, text: String(c), line: line))
                i += 1
                continue
            }
            throw JinjaError(.syntax, "unexpected character \"\(c)\" in a tag", line: line)
        }
        throw JinjaError(.syntax, "a tag is never closed", line: tagLine)
    }

    /// A string literal with Python's escapes (unknown escapes kept as written).
    mutating func lexString(quote: Unicode.Scalar) throws(JinjaError) -> String {
        let start = line
        i += 1
        var out = String.UnicodeScalarView()
        while i < s.count {
            let c = s[i]
            if c == quote {
                i += 1
                return String(out)
            }
            if c == "\n" { line += 1 }
            if c == "\\", let e = at(i + 1) {
                i += 2
                switch e {
                case "n": out.append("\n")
                case "t": out.append("\t")
                case "r": out.append("\r")
                case "\\": out.append("\\")
                case "'": out.append("'")
                case "\"": out.append("\"")
                case "0": out.append("\0")
                case "\n": break
                case "x", "u", "U":
                    let width = e == "x" ? 2 : e == "u" ? 4 : 8
                    let hex = String(String.UnicodeScalarView(s[i..<min(s.count, i + width)]))
                    if hex.count == width, let v = UInt32(hex, radix: 16), let u = Unicode.Scalar(v) {
                        out.append(u)
                        i += width
                    } else {
                        out.append("\\")
                        out.append(e)
                    }
                default:
                    out.append("\\")
                    out.append(e)
                }
                continue
            }
            out.append(c)
            i += 1
        }
        throw JinjaError(.syntax, "a string literal is never closed", line: start)
    }

    /// The body of `{% raw %}` up to `{% endraw %}`, as text.
    mutating func lexRaw(into items: inout [JinjaItem], stripLeading: Bool) throws(JinjaError) {
        let start = i
        while i + 1 < s.count {
            if s[i] == "{", s[i + 1] == "%" {
                var k = i + 2
                if let m = at(k), m == "-" || m == "+" { k += 1 }
                while let c = at(k), c == " " { k += 1 }
                let word = "endraw".unicodeScalars
                if Array(s[k..<min(s.count, k + word.count)]) == Array(word) {
                    var body = Array(s[start..<i])
                    if stripLeading { while let f = body.first, f.properties.isWhitespace { body.removeFirst() } }
                    items.append(.text(String(String.UnicodeScalarView(body))))
                    _ = try lexTag(closer: "%", line: line)
                    return
                }
            }
            if s[i] == "\n" { line += 1 }
            i += 1
        }
        throw JinjaError(.syntax, "{% raw %} is never closed with {% endraw %}")
    }
}

extension Unicode.Scalar {
    fileprivate var isDigit: Bool { value >= 0x30 && value <= 0x39 }
    fileprivate var isNameStart: Bool {
        (value >= 0x41 && value <= 0x5A) || (value >= 0x61 && value <= 0x7A) || value == 0x5F
    }
}

/// Statements and their bodies.
struct JinjaStatementParser {
    let items: [JinjaItem]
    var k = 0
    /// Blocks nested inside each other, bounded like expressions.
    var depth = 0

    init(items: [JinjaItem]) { self.items = items }

    /// Parses nodes until a statement whose first word is in `ends`; leaves k at that statement.
    mutating func parseBody(until ends: Set<String>) throws(JinjaError) -> [JinjaNode] {
        depth += 1
        defer { depth -= 1 }
        guard depth <= JinjaExpressionParser.maxDepth else {
            throw JinjaError(.unsupported, "blocks nest more than \(JinjaExpressionParser.maxDepth) deep")
        }
        var nodes: [JinjaNode] = []
        while k < items.count {
            switch items[k] {
            case .text(let t):
                nodes.append(.text(JinjaText(t)))
                k += 1
            case .expression(let tokens, let line):
                var p = JinjaExpressionParser(tokens: tokens, line: line)
                let e = try p.parseExpression()
                try p.expectEnd()
                nodes.append(.output(e, line: line))
                k += 1
            case .statement(let tokens, let line):
                guard let word = tokens.first?.text, tokens.first?.kind == .name else {
                    throw JinjaError(.syntax, "an empty {% %} tag", line: line)
                }
                if ends.contains(word) { return nodes }
                k += 1
                nodes += try parseStatement(word, tokens, line: line)
            }
        }
        if !ends.isEmpty {
            throw JinjaError(
                .syntax, "the template ends inside a block; expected {% \(ends.sorted().joined(separator: " or ")) %}")
        }
        return nodes
    }

    /// The statement at k (after parseBody stopped there): its word and tokens.
    mutating func take() -> (String, [JinjaToken], Int) {
        guard case .statement(let tokens, let line) = items[k] else { preconditionFailure() }
        k += 1
        return (tokens[0].text, tokens, line)
    }

    mutating func parseStatement(_ word: String, _ tokens: [JinjaToken], line: Int) throws(JinjaError) -> [JinjaNode] {
        var p = JinjaExpressionParser(tokens: Array(tokens.dropFirst()), line: line)
        switch word {
        case "if":
            var branches: [(JinjaExpr, [JinjaNode])] = []
            var condition = try p.parseExpression()
            try p.expectEnd()
            var elseBody: [JinjaNode] = []
            while true {
                let body = try parseBody(until: ["elif", "else", "endif"])
                branches.append((condition, body))
                let (w, t, l) = take()
                if w == "elif" {
                    var q = JinjaExpressionParser(tokens: Array(t.dropFirst()), line: l)
                    condition = try q.parseExpression()
                    try q.expectEnd()
                    continue
                }
                if w == "else" {
                    elseBody = try parseBody(until: ["endif"])
                    _ = take()
                }
                break
            }
            return [.ifBlock(branches, else: elseBody)]
        case "for":
            var targets = [try p.expectName()]
            while p.peek(",") {
                p.advance()
                targets.append(try p.expectName())
            }
            try p.expectWord("in")
            let iterable = try p.parseExpression(allowConditional: false)
            var filter: JinjaExpr?
            if p.peekWord("if") {
                p.advance()
                filter = try p.parseExpression(allowConditional: false)
            }
            if p.peekWord("recursive") {
                throw JinjaError(.unsupported, "recursive loops are not supported", line: line)
            }
            try p.expectEnd()
            let body = try parseBody(until: ["else", "endfor"])
            var elseBody: [JinjaNode] = []
            if take().0 == "else" {
                elseBody = try parseBody(until: ["endfor"])
                _ = take()
            }
            return [
                .forLoop(targets: targets, iterable: iterable, filter: filter, body: body, else: elseBody, line: line)
            ]
        case "set":
            let first = try p.expectName()
            if p.peek(".") {
                p.advance()
                let attribute = try p.expectName()
                try p.expectOp("=")
                let value = try p.parseExpression()
                try p.expectEnd()
                return [.set(targets: [first], attribute: attribute, value, line: line)]
            }
            var targets = [first]
            while p.peek(",") {
                p.advance()
                targets.append(try p.expectName())
            }
            if p.atEnd {
                guard targets.count == 1 else { throw JinjaError(.syntax, "a block set takes one name", line: line) }
                let body = try parseBody(until: ["endset"])
                _ = take()
                return [.setBlock(first, body)]
            }
            try p.expectOp("=")
            let value = try p.parseExpression()
            try p.expectEnd()
            return [.set(targets: targets, attribute: nil, value, line: line)]
        case "macro":
            let name = try p.expectName()
            try p.expectOp("(")
            var parameters: [(String, JinjaExpr?)] = []
            while !p.peek(")") {
                let parameter = try p.expectName()
                var value: JinjaExpr?
                if p.peek("=") {
                    p.advance()
                    value = try p.parseExpression()
                }
                parameters.append((parameter, value))
                if p.peek(",") { p.advance() } else { break }
            }
            try p.expectOp(")")
            try p.expectEnd()
            let body = try parseBody(until: ["endmacro"])
            _ = take()
            return [.macro(name: name, parameters: parameters, body: body)]
        case "break":
            try p.expectEnd()
            return [.breakLoop]
        case "continue":
            try p.expectEnd()
            return [.continueLoop]
        case "generation":
            // transformers' {% generation %} marks assistant text; it renders its body unchanged.
            try p.expectEnd()
            let body = try parseBody(until: ["endgeneration"])
            _ = take()
            return body
        case "raw":
            // The lexer put the raw text right after; the endraw tag follows it.
            return []
        default:
            throw JinjaError(
                .unsupported,
                "the {% \(word) %} statement is not supported (Cairn's Jinja subset: if, for, set, macro, break, "
                    + "continue, raw, generation)", line: line)
        }
    }
}

/// Expressions within one tag.
struct JinjaExpressionParser {
    let tokens: [JinjaToken]
    var i = 0
    let line: Int

    init(tokens: [JinjaToken], line: Int) {
        self.tokens = tokens
        self.line = line
    }

    static let filters: Set<String> = [
        "trim", "length", "count", "tojson", "items", "selectattr", "rejectattr", "select", "reject", "list", "join",
        "string", "map", "first", "last", "upper", "lower", "capitalize", "title", "default", "d", "replace", "int",
        "float", "abs", "round", "unique", "sort", "dictsort", "indent", "safe", "reverse", "sum", "min", "max",
        "batch", "format", "e", "escape", "wordcount",
    ]
    static let tests: Set<String> = [
        "defined", "undefined", "none", "string", "mapping", "iterable", "sequence", "number", "integer", "float",
        "boolean", "true", "false", "equalto", "eq", "==", "ne", "!=", "gt", ">", "ge", ">=", "lt", "<", "le", "<=",
        "in", "sameas", "odd", "even", "divisibleby", "lower", "upper", "callable",
    ]

    var atEnd: Bool { i >= tokens.count }
    var current: JinjaToken? { i < tokens.count ? tokens[i] : nil }
    var currentLine: Int { current?.line ?? line }

    func peek(_ op: String) -> Bool { current.map { $0.kind == .op && $0.text == op } ?? false }
    func peekWord(_ word: String) -> Bool { current.map { $0.kind == .name && $0.text == word } ?? false }
    mutating func advance() { i += 1 }

    func error(_ what: String) -> JinjaError { JinjaError(.syntax, what, line: currentLine) }

    mutating func expectEnd() throws(JinjaError) {
        if let t = current { throw error("unexpected \"\(t.text)\"") }
    }

    mutating func expectOp(_ op: String) throws(JinjaError) {
        guard peek(op) else { throw error("expected \"\(op)\", found \"\(current?.text ?? "the end of the tag")\"") }
        i += 1
    }

    mutating func expectWord(_ word: String) throws(JinjaError) {
        guard peekWord(word) else { throw error("expected \"\(word)\"") }
        i += 1
    }

    mutating func expectName() throws(JinjaError) -> String {
        guard let t = current, t.kind == .name else { throw error("expected a name") }
        i += 1
        return t.text
    }

    /// How deep expressions nest (parentheses, brackets, operands): a bound, so hostile templates cannot overflow
    /// the stack.
    static let maxDepth = 100
    var depth = 0

    mutating func parseExpression(allowConditional: Bool = true) throws(JinjaError) -> JinjaExpr {
        depth += 1
        defer { depth -= 1 }
        guard depth <= Self.maxDepth else { throw error("expressions nest more than \(Self.maxDepth) deep") }
        let e = try parseOr()
        if allowConditional, peekWord("if") {
            advance()
            let condition = try parseOr()
            var otherwise: JinjaExpr?
            if peekWord("else") {
                advance()
                otherwise = try parseExpression()
            }
            return .conditional(e, condition, otherwise)
        }
        return e
    }

    mutating func parseOr() throws(JinjaError) -> JinjaExpr {
        var e = try parseAnd()
        while peekWord("or") {
            advance()
            e = .or(e, try parseAnd())
        }
        return e
    }

    mutating func parseAnd() throws(JinjaError) -> JinjaExpr {
        var e = try parseNot()
        while peekWord("and") {
            advance()
            e = .and(e, try parseNot())
        }
        return e
    }

    mutating func parseNot() throws(JinjaError) -> JinjaExpr {
        if peekWord("not") {
            advance()
            depth += 1
            defer { depth -= 1 }
            guard depth <= Self.maxDepth else { throw error("expressions nest more than \(Self.maxDepth) deep") }
            return .not(try parseNot())
        }
        return try parseCompare()
    }

    mutating func parseCompare() throws(JinjaError) -> JinjaExpr {
        let line = currentLine
        let first = try parseAdd()
        var rest: [(String, JinjaExpr)] = []
        while let t = current {
            if t.kind == .op, ["==", "!=", "<", "<=", ">", ">="].contains(t.text) {
                advance()
                rest.append((t.text, try parseAdd()))
            } else if peekWord("in") {
                advance()
                rest.append(("in", try parseAdd()))
            } else if peekWord("not"), i + 1 < tokens.count, tokens[i + 1].kind == .name, tokens[i + 1].text == "in" {
                i += 2
                rest.append(("not in", try parseAdd()))
            } else {
                break
            }
        }
        return rest.isEmpty ? first : .compare(first, rest, line: line)
    }

    mutating func parseBinary(
        _ ops: [String], _ next: (inout JinjaExpressionParser) throws(JinjaError) -> JinjaExpr
    ) throws(JinjaError) -> JinjaExpr {
        var e = try next(&self)
        while let t = current, t.kind == .op, ops.contains(t.text) {
            advance()
            e = .binary(t.text, e, try next(&self), line: t.line)
        }
        return e
    }

    mutating func parseAdd() throws(JinjaError) -> JinjaExpr {
        try parseBinary(["+", "-"]) { (p: inout JinjaExpressionParser) throws(JinjaError) in try p.parseConcat() }
    }

    mutating func parseConcat() throws(JinjaError) -> JinjaExpr {
        try parseBinary(["~"]) { (p: inout JinjaExpressionParser) throws(JinjaError) in try p.parseMul() }
    }

    mutating func parseMul() throws(JinjaError) -> JinjaExpr {
        try parseBinary(["*", "/", "//", "%"]) { (p: inout JinjaExpressionParser) throws(JinjaError) in
            try p.parsePow()
        }
    }

    mutating func parsePow() throws(JinjaError) -> JinjaExpr {
        try parseBinary(["**"]) { (p: inout JinjaExpressionParser) throws(JinjaError) in try p.parseUnary() }
    }

    mutating func parseUnary(withFilters: Bool = true) throws(JinjaError) -> JinjaExpr {
        var e: JinjaExpr
        if peek("-") || peek("+") {
            let op = current!.text
            advance()
            depth += 1
            defer { depth -= 1 }
            guard depth <= Self.maxDepth else { throw error("expressions nest more than \(Self.maxDepth) deep") }
            e = .unary(op, try parseUnary(withFilters: false))
        } else {
            e = try parsePostfix(try parsePrimary())
        }
        return withFilters ? try parseFiltersAndTests(e) : e
    }

    mutating func parseFiltersAndTests(_ start: JinjaExpr) throws(JinjaError) -> JinjaExpr {
        var e = start
        while true {
            if peek("|") {
                advance()
                let line = currentLine
                let name = try expectName()
                guard Self.filters.contains(name) else {
                    throw JinjaError(.unsupported, "the filter \"\(name)\" is not supported", line: line)
                }
                var (args, kwargs): ([JinjaExpr], [(String, JinjaExpr)]) = ([], [])
                if peek("(") { (args, kwargs) = try parseArguments() }
                e = .filter(e, name, args, kwargs, line: line)
            } else if peekWord("is") {
                advance()
                let line = currentLine
                var negated = false
                if peekWord("not") {
                    advance()
                    negated = true
                }
                guard let t = current, t.kind == .name || t.kind == .op else { throw error("expected a test name") }
                advance()
                let name = t.text
                guard Self.tests.contains(name) else {
                    throw JinjaError(.unsupported, "the test \"\(name)\" is not supported", line: line)
                }
                var args: [JinjaExpr] = []
                if peek("(") {
                    args = try parseArguments().0
                } else if let n = current, n.kind != .op || ["(", "[", "{", "-"].contains(n.text),
                    !(n.kind == .name && ["and", "or", "else", "if", "is", "not", "in"].contains(n.text))
                {
                    args = [try parsePostfix(try parsePrimary())]
                }
                e = .test(e, name, args, negated: negated, line: line)
            } else {
                return e
            }
        }
    }

    mutating func parseArguments() throws(JinjaError) -> ([JinjaExpr], [(String, JinjaExpr)]) {
        try expectOp("(")
        var args: [JinjaExpr] = []
        var kwargs: [(String, JinjaExpr)] = []
        while !peek(")") {
            if let t = current, t.kind == .name, i + 1 < tokens.count, tokens[i + 1].kind == .op,
                tokens[i + 1].text == "="
            {
                i += 2
                kwargs.append((t.text, try parseExpression()))
            } else {
                args.append(try parseExpression())
            }
            if peek(",") { advance() } else { break }
        }
        try expectOp(")")
        return (args, kwargs)
    }

    mutating func parsePostfix(_ start: JinjaExpr) throws(JinjaError) -> JinjaExpr {
        var e = start
        while true {
            if peek(".") {
                advance()
                guard let t = current, t.kind == .name || t.kind == .integer else {
                    throw error("expected a name after .")
                }
                advance()
                e = t.kind == .integer ? .item(e, .literal(.int(Int(t.text) ?? 0))) : .attribute(e, t.text)
            } else if peek("[") {
                advance()
                var parts: [JinjaExpr?] = [nil]
                var sawColon = false
                while !peek("]") {
                    if peek(":") {
                        advance()
                        sawColon = true
                        parts.append(nil)
                        continue
                    }
                    parts[parts.count - 1] = try parseExpression()
                }
                try expectOp("]")
                if sawColon {
                    guard parts.count <= 3 else { throw error("a slice takes at most two colons") }
                    e = .slice(e, parts[0], parts.count > 1 ? parts[1] : nil, parts.count > 2 ? parts[2] : nil)
                } else {
                    guard let index = parts[0] else { throw error("an empty subscript") }
                    e = .item(e, index)
                }
            } else if peek("(") {
                let (args, kwargs) = try parseArguments()
                e = .call(e, args, kwargs)
            } else {
                return e
            }
        }
    }

    mutating func parsePrimary() throws(JinjaError) -> JinjaExpr {
        guard let t = current else { throw error("an expression is missing") }
        advance()
        switch t.kind {
        case .name:
            switch t.text {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(t.text)
            }
        case .string:
            var text = t.text
            while let n = current, n.kind == .string {
                text += n.text
                advance()
            }
            return .literal(.text(text))
        case .integer:
            guard let v = Int(t.text.replacingOccurrences(of: "_", with: "")) else { throw error("bad integer") }
            return .literal(.int(v))
        case .float:
            guard let v = Double(t.text.replacingOccurrences(of: "_", with: "")) else { throw error("bad number") }
            return .literal(.double(v))
        case .op:
            switch t.text {
            case "(":
                if peek(")") {
                    advance()
                    return .tuple([])
                }
                let first = try parseExpression()
                if peek(",") {
                    var items = [first]
                    while peek(",") {
                        advance()
                        if peek(")") { break }
                        items.append(try parseExpression())
                    }
                    try expectOp(")")
                    return .tuple(items)
                }
                try expectOp(")")
                return first
            case "[":
                var items: [JinjaExpr] = []
                while !peek("]") {
                    items.append(try parseExpression())
                    if peek(",") { advance() } else { break }
                }
                try expectOp("]")
                return .list(items)
            case "{":
                var pairs: [(JinjaExpr, JinjaExpr)] = []
                while !peek("}") {
                    let key = try parseExpression()
                    try expectOp(":")
                    pairs.append((key, try parseExpression()))
                    if peek(",") { advance() } else { break }
                }
                try expectOp("}")
                return .dict(pairs)
            default:
                throw error("unexpected \"\(t.text)\"")
            }
        }
    }
}
