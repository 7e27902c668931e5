// JinjaValue: the values a chat template computes with, with Python's semantics as Jinja2 gives them (str(),
// truthiness, equality, JSON), since Hugging Face renders templates with Python's Jinja2.
//
// Strings are JinjaText: Unicode scalars (Python's code points: length, slicing and indexing count scalars, not
// Swift's grapheme clusters) each carrying a tag: −1 for text the template wrote, i ≥ 0 for text that came
// from message i's content. Tags survive concatenation, slicing, stripping and splitting, so a rendered
// conversation says which of its characters are a message's own text (tokenized as plain text) and which are
// template markup (where special tokens are parsed).

/// Text with, for each scalar, where it came from.
public struct JinjaText: Sendable, Equatable, Hashable {
    /// The scalars.
    public var scalars: [Unicode.Scalar]
    /// −1 for template text, else the index of the message whose content the scalar came from.
    public var tags: [Int32]

    /// Template text.
    public init(_ s: String) {
        scalars = Array(s.unicodeScalars)
        tags = [Int32](repeating: -1, count: scalars.count)
    }

    /// Text tagged as coming from message `tag`.
    public init(_ s: String, tag: Int32) {
        scalars = Array(s.unicodeScalars)
        tags = [Int32](repeating: tag, count: scalars.count)
    }

    init(scalars: [Unicode.Scalar], tags: [Int32]) {
        self.scalars = scalars
        self.tags = tags
    }

    /// The text.
    public var string: String {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        return String(view)
    }

    var isEmpty: Bool { scalars.isEmpty }
    var count: Int { scalars.count }

    mutating func append(_ other: JinjaText) {
        scalars += other.scalars
        tags += other.tags
    }

    static func + (a: JinjaText, b: JinjaText) -> JinjaText {
        var c = a
        c.append(b)
        return c
    }

    subscript(_ r: Range<Int>) -> JinjaText { JinjaText(scalars: Array(scalars[r]), tags: Array(tags[r])) }

    public static func == (a: JinjaText, b: JinjaText) -> Bool { a.scalars == b.scalars }
    public func hash(into h: inout Hasher) { h.combine(string) }
}

/// An insertion-ordered dictionary with string keys (JSON objects, keyword arguments, namespaces).
struct JinjaDict: Sendable, Equatable {
    private(set) var keys: [String] = []
    private var values: [String: JinjaValue] = [:]

    init() {}

    init(_ pairs: [(String, JinjaValue)]) {
        for (k, v) in pairs { self[k] = v }
    }

    subscript(_ key: String) -> JinjaValue? {
        get { values[key] }
        set {
            if values[key] == nil, newValue != nil { keys.append(key) }
            if newValue == nil { keys.removeAll { $0 == key } }
            values[key] = newValue
        }
    }

    var count: Int { keys.count }
    var pairs: [(String, JinjaValue)] { keys.map { ($0, values[$0]!) } }

    /// Python's dict equality: the same keys with equal values, in any order.
    static func == (a: JinjaDict, b: JinjaDict) -> Bool {
        a.count == b.count && a.keys.allSatisfy { k in b.values[k].map { $0 == a.values[k]! } ?? false }
    }
}

/// A `namespace()` object: the one mutable value templates have.
final class JinjaNamespace: @unchecked Sendable {
    var attributes = JinjaDict()
    init(_ attributes: JinjaDict) { self.attributes = attributes }
}

/// A callable: a global function, a macro, or a method bound to its value.
struct JinjaFunction: @unchecked Sendable {
    let name: String
    let call: ([JinjaValue], JinjaDict) throws(JinjaError) -> JinjaValue
}

/// A value in a template.
enum JinjaValue: Sendable, Equatable {
    /// An undefined name or missing key; `what` names it for error messages.
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(JinjaText)
    case list([JinjaValue])
    case tuple([JinjaValue])
    case dict(JinjaDict)
    case namespace(JinjaNamespace)
    case function(JinjaFunction)

    static func text(_ s: String) -> JinjaValue { .string(JinjaText(s)) }

    var isUndefined: Bool { if case .undefined = self { true } else { false } }

    /// Python truthiness.
    var truthy: Bool {
        switch self {
        case .undefined, .none: false
        case .bool(let b): b
        case .int(let i): i != 0
        case .double(let d): d != 0
        case .string(let s): !s.isEmpty
        case .list(let l), .tuple(let l): !l.isEmpty
        case .dict(let d): d.count > 0
        case .namespace, .function: true
        }
    }

    /// Python's type name, for error messages.
    var typeName: String {
        switch self {
        case .undefined: "Undefined"
        case .none: "NoneType"
        case .bool: "bool"
        case .int: "int"
        case .double: "float"
        case .string: "str"
        case .list: "list"
        case .tuple: "tuple"
        case .dict: "dict"
        case .namespace: "Namespace"
        case .function: "function"
        }
    }

    /// A number as Double (bools count as 0 and 1, as in Python).
    var number: Double? {
        switch self {
        case .bool(let b): b ? 1 : 0
        case .int(let i): Double(i)
        case .double(let d): d
        default: nil
        }
    }

    /// An integer (bools included), or nil.
    var integer: Int? {
        switch self {
        case .bool(let b): b ? 1 : 0
        case .int(let i): i
        default: nil
        }
    }

    /// Python's `==`: numbers across types, deep lists and dicts, no coercion between strings and numbers.
    static func == (a: JinjaValue, b: JinjaValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.string(let x), .string(let y)): return x == y
        case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)): return x == y
        case (.dict(let x), .dict(let y)): return x == y
        case (.namespace(let x), .namespace(let y)): return x === y
        default:
            if let x = a.number, let y = b.number { return x == y }
            return false
        }
    }

    /// Python's `str()` (what `{{ v }}` prints), keeping the tags of strings.
    var text: JinjaText {
        if case .string(let s) = self { return s }
        if case .undefined = self { return JinjaText("") }
        return JinjaText(pythonRepr(top: true))
    }

    /// Python's `repr()` (`top`: `str()`, which differs for strings only).
    func pythonRepr(top: Bool = false) -> String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return Self.pythonFloat(d)
        case .string(let s): return top ? s.string : Self.pythonStringRepr(s.string)
        case .list(let l): return "[" + l.map { $0.pythonRepr() }.joined(separator: ", ") + "]"
        case .tuple(let l):
            return l.count == 1
                ? "(\(l[0].pythonRepr()),)" : "(" + l.map { $0.pythonRepr() }.joined(separator: ", ") + ")"
        case .dict(let d):
            return "{" + d.pairs.map { "\(Self.pythonStringRepr($0.0)): \($0.1.pythonRepr())" }.joined(separator: ", ")
                + "}"
        case .namespace(let n): return "<Namespace \(JinjaValue.dict(n.attributes).pythonRepr())>"
        case .function(let f): return "<function \(f.name)>"
        }
    }

    /// Python's float repr: the shortest round trip, in exponent form below 1e-4 and from 1e16, which is also
    /// how Swift describes a Double.
    static func pythonFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        return d.description
    }

    /// Python's repr of a string: single quotes unless it holds a single quote and no double quote.
    static func pythonStringRepr(_ s: String) -> String {
        let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
        var out = String(quote)
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if Character(c) == quote {
                    out += "\\\(quote)"
                } else if c.value < 0x20 || c.value == 0x7F {
                    out += String(format: "\\x%02x", c.value)
                } else {
                    out.unicodeScalars.append(c)
                }
            }
        }
        out.append(quote)
        return out
    }
}

/// Why a template could not be parsed or rendered.
public struct JinjaError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong.
    public enum Kind: Sendable, Equatable {
        /// The template is not valid Jinja.
        case syntax
        /// A construct outside the subset Cairn implements.
        case unsupported
        /// An error while rendering (a type error, an undefined value used).
        case runtime
        /// The template itself refused the conversation (`raise_exception`).
        case raised
    }

    public var kind: Kind
    public var message: String
    /// The template line, 1-based, when known.
    public var line: Int?

    init(_ kind: Kind, _ message: String, line: Int? = nil) {
        self.kind = kind
        self.message = message
        self.line = line
    }

    public var description: String {
        switch kind {
        case .raised: message
        default: line.map { "line \($0): \(message)" } ?? message
        }
    }
}
