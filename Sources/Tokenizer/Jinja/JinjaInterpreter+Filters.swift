// JinjaInterpreter+Filters: the filters, tests and methods chat templates call, with Python's results (strip
// and split on code points, str() of non-strings, json.dumps as transformers configures it).

import Foundation

extension JinjaInterpreter {
    // MARK: Filters

    func applyFilter(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], _ kwargs: JinjaDict) throws(JinjaError)
        -> JinjaValue
    {
        func arg(_ i: Int, _ key: String) -> JinjaValue? { i < args.count ? args[i] : kwargs[key] }
        switch name {
        case "trim":
            return .string(strip(v.text, arg(0, "chars").map { Set($0.text.scalars) }, left: true, right: true))
        case "length", "count":
            switch v {
            case .string(let s): return .int(s.count)
            case .list(let l), .tuple(let l): return .int(l.count)
            case .dict(let d): return .int(d.count)
            case .undefined: return .int(0)
            default: throw JinjaError(.runtime, "object of type '\(v.typeName)' has no len()", line: line)
            }
        case "tojson":
            let indent = arg(1, "indent")?.integer
            let ensureASCII = (args.first ?? kwargs["ensure_ascii"])?.truthy ?? false
            let sortKeys = kwargs["sort_keys"]?.truthy ?? false
            var out = ""
            try writeJSON(v, indent: indent, level: 0, ensureASCII: ensureASCII, sortKeys: sortKeys, into: &out)
            return .text(out)
        case "items":
            switch v {
            case .dict(let d): return .list(d.pairs.map { .tuple([.text($0.0), $0.1]) })
            case .undefined: return .list([])
            default: throw JinjaError(.runtime, "items needs a mapping, not \(v.typeName)", line: line)
            }
        case "list": return .list(try iterate(v))
        case "string": return .string(v.text)
        case "join":
            let separator = arg(0, "d")?.text ?? JinjaText("")
            var out = JinjaText("")
            for (i, item) in try iterate(v).enumerated() {
                if i > 0 { out.append(separator) }
                let value = try kwargs["attribute"].map { (a) throws(JinjaError) in try attribute(item, a.text.string) }
                out.append((value ?? item).text)
            }
            return .string(out)
        case "selectattr", "rejectattr", "select", "reject":
            let byAttribute = name.hasSuffix("attr")
            let offset = byAttribute ? 1 : 0
            let testName = args.count > offset ? args[offset].text.string : nil
            let testArgs = Array(args.dropFirst(offset + 1))
            var kept: [JinjaValue] = []
            // Jinja2 filters nothing out of a falsy sequence (None included) and returns it empty.
            for item in v.truthy ? try iterate(v) : [] {
                let subject = byAttribute ? try attribute(item, args.first?.text.string ?? "") : item
                var pass: Bool
                if let testName {
                    guard JinjaExpressionParser.tests.contains(testName) else {
                        throw JinjaError(.unsupported, "the test \"\(testName)\" is not supported", line: line)
                    }
                    pass = try applyTest(testName, subject, testArgs)
                } else {
                    pass = subject.truthy
                }
                if name.hasPrefix("reject") { pass.toggle() }
                if pass { kept.append(item) }
            }
            return .list(kept)
        case "map":
            if let attributeName = kwargs["attribute"]?.text.string {
                var out: [JinjaValue] = []
                for item in try iterate(v) {
                    var value = try attribute(item, attributeName)
                    if value.isUndefined, let d = kwargs["default"] { value = d }
                    out.append(value)
                }
                return .list(out)
            }
            guard let filter = args.first?.text.string, JinjaExpressionParser.filters.contains(filter) else {
                throw JinjaError(.unsupported, "map needs attribute= or a filter name", line: line)
            }
            var out: [JinjaValue] = []
            for item in try iterate(v) {
                out.append(try applyFilter(filter, item, Array(args.dropFirst()), JinjaDict()))
            }
            return .list(out)
        case "first":
            if case .string(let s) = v { return s.isEmpty ? .undefined("first") : .string(s[0..<1]) }
            return try iterate(v).first ?? .undefined("first")
        case "last":
            if case .string(let s) = v { return s.isEmpty ? .undefined("last") : .string(s[s.count - 1..<s.count]) }
            return try iterate(v).last ?? .undefined("last")
        case "upper": return .string(mapCase(v.text) { $0.uppercased() })
        case "lower": return .string(mapCase(v.text) { $0.lowercased() })
        case "capitalize":
            let s = v.text.string
            return .text(s.prefix(1).uppercased() + s.dropFirst().lowercased())
        case "title": return .text(titleCase(v.text.string))
        case "default", "d":
            let fallback = arg(0, "default_value") ?? .text("")
            let boolean = arg(1, "boolean")?.truthy ?? false
            return v.isUndefined || (boolean && !v.truthy) ? fallback : v
        case "replace":
            guard args.count >= 2 else { throw JinjaError(.runtime, "replace needs two arguments", line: line) }
            return .string(replace(v.text, args[0].text, args[1].text, count: args.count > 2 ? args[2].integer : nil))
        case "int":
            switch v {
            case .int(let i): return .int(i)
            case .bool(let b): return .int(b ? 1 : 0)
            case .double(let d): return .int(d.isFinite ? Int(d) : 0)
            case .string(let s):
                let t = s.string.trimmingCharacters(in: .whitespaces)
                return .int(Int(t) ?? Double(t).map { $0.isFinite ? Int($0) : 0 } ?? (arg(0, "default")?.integer ?? 0))
            default: return arg(0, "default") ?? .int(0)
            }
        case "float":
            if let n = v.number { return .double(n) }
            if case .string(let s) = v, let d = Double(s.string.trimmingCharacters(in: .whitespaces)) {
                return .double(d)
            }
            return arg(0, "default") ?? .double(0)
        case "abs":
            switch v {
            case .int(let i): return .int(abs(i))
            case .double(let d): return .double(abs(d))
            case .bool(let b): return .int(b ? 1 : 0)
            default: throw JinjaError(.runtime, "bad operand type for abs(): '\(v.typeName)'", line: line)
            }
        case "round":
            guard let n = v.number else { throw JinjaError(.runtime, "round needs a number", line: line) }
            let digits = arg(0, "precision")?.integer ?? 0
            let scale = Foundation.pow(10, Double(digits))
            let method = arg(1, "method")?.text.string ?? "common"
            let x = n * scale
            let r = method == "floor" ? x.rounded(.down) : method == "ceil" ? x.rounded(.up) : x.rounded()
            return .double(r / scale)
        case "unique":
            var seen: [JinjaValue] = []
            for item in try iterate(v) where !seen.contains(item) { seen.append(item) }
            return .list(seen)
        case "reverse":
            if case .string(let s) = v {
                return .string(JinjaText(scalars: s.scalars.reversed(), tags: s.tags.reversed()))
            }
            return .list(try iterate(v).reversed())
        case "sort":
            // Insertion sort: the comparison may throw (mixed types), which a sort's closure cannot.
            var sorted: [JinjaValue] = []
            let descending = arg(0, "reverse")?.truthy ?? false
            for item in try iterate(v) {
                var k = sorted.count
                while k > 0, try compare(descending ? ">" : "<", item, sorted[k - 1]) { k -= 1 }
                sorted.insert(item, at: k)
            }
            return .list(sorted)
        case "dictsort":
            guard case .dict(let d) = v else { throw JinjaError(.runtime, "dictsort needs a mapping", line: line) }
            return .list(d.pairs.sorted { $0.0 < $1.0 }.map { .tuple([.text($0.0), $0.1]) })
        case "indent":
            let width = arg(0, "width")?.integer ?? 4
            let first = arg(1, "first")?.truthy ?? false
            let pad = String(repeating: " ", count: max(0, width))
            let lines = v.text.string.components(separatedBy: "\n")
            return .text(
                lines.enumerated().map { i, l in (i == 0 && !first) || l.isEmpty ? l : pad + l }.joined(separator: "\n")
            )
        case "safe", "e", "escape": return v
        case "sum":
            var total: JinjaValue = .int(0)
            for item in try iterate(v) { total = try binary("+", total, item) }
            return total
        case "min", "max":
            let items = try iterate(v)
            guard var best = items.first else { return .undefined(name) }
            for item in items.dropFirst() where try compare(name == "min" ? "<" : ">", item, best) { best = item }
            return best
        case "batch":
            guard let n = args.first?.integer, n > 0 else {
                throw JinjaError(.runtime, "batch needs a size", line: line)
            }
            let items = try iterate(v)
            return .list(
                stride(from: 0, to: items.count, by: n).map { .list(Array(items[$0..<min($0 + n, items.count)])) })
        case "wordcount":
            return .int(v.text.string.split(whereSeparator: { $0.isWhitespace }).count)
        case "format":
            var out = ""
            var k = 0
            let chars = Array(v.text.string)
            var i = 0
            while i < chars.count {
                if chars[i] == "%", i + 1 < chars.count {
                    let spec = chars[i + 1]
                    if spec == "%" {
                        out.append("%")
                    } else {
                        let value = k < args.count ? args[k] : .undefined("format argument")
                        k += 1
                        out += spec == "r" ? value.pythonRepr() : value.text.string
                    }
                    i += 2
                } else {
                    out.append(chars[i])
                    i += 1
                }
            }
            return .text(out)
        default:
            throw JinjaError(.unsupported, "the filter \"\(name)\" is not supported", line: line)
        }
    }

    // MARK: Tests

    func applyTest(_ name: String, _ v: JinjaValue, _ args: [JinjaValue]) throws(JinjaError) -> Bool {
        let other = args.first ?? .undefined("test argument")
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": if case .none = v { return true } else { return false }
        case "string": if case .string = v { return true } else { return false }
        case "mapping": if case .dict = v { return true } else { return false }
        case "iterable":
            switch v {
            case .string, .list, .tuple, .dict, .undefined: return true
            default: return false
            }
        case "sequence":
            switch v {
            case .string, .list, .tuple, .dict, .undefined: return true
            default: return false
            }
        case "number":
            switch v {
            case .int, .double, .bool: return true
            default: return false
            }
        case "integer": if case .int = v { return true } else { return false }
        case "float": if case .double = v { return true } else { return false }
        case "boolean": if case .bool = v { return true } else { return false }
        case "true": if case .bool(true) = v { return true } else { return false }
        case "false": if case .bool(false) = v { return true } else { return false }
        case "equalto", "eq", "==": return v == other
        case "ne", "!=": return v != other
        case "gt", ">": return try compare(">", v, other)
        case "ge", ">=": return try compare(">=", v, other)
        case "lt", "<": return try compare("<", v, other)
        case "le", "<=": return try compare("<=", v, other)
        case "in": return try compare("in", v, other)
        case "sameas":
            switch (v, other) {
            case (.none, .none), (.undefined, .undefined): return true
            case (.bool(let a), .bool(let b)): return a == b
            case (.namespace(let a), .namespace(let b)): return a === b
            default: return false
            }
        case "odd", "even":
            guard let i = v.integer else { throw JinjaError(.runtime, "\(name) needs an integer", line: line) }
            return (i % 2 != 0) == (name == "odd")
        case "divisibleby":
            guard let i = v.integer, let d = other.integer, d != 0 else {
                throw JinjaError(.runtime, "divisibleby needs integers", line: line)
            }
            return i % d == 0
        case "lower": return v.text.string == v.text.string.lowercased()
        case "upper": return v.text.string == v.text.string.uppercased()
        case "callable": if case .function = v { return true } else { return false }
        default: throw JinjaError(.unsupported, "the test \"\(name)\" is not supported", line: line)
        }
    }

    // MARK: Methods

    func dictMethod(_ d: JinjaDict, _ name: String) -> JinjaValue? {
        switch name {
        case "items":
            return .function(JinjaFunction(name: name) { _, _ in .list(d.pairs.map { .tuple([.text($0.0), $0.1]) }) })
        case "keys": return .function(JinjaFunction(name: name) { _, _ in .list(d.keys.map { .text($0) }) })
        case "values": return .function(JinjaFunction(name: name) { _, _ in .list(d.pairs.map { $0.1 }) })
        case "get":
            return .function(
                JinjaFunction(name: name) { args, _ in
                    guard case .string(let k)? = args.first else { return args.count > 1 ? args[1] : .none }
                    return d[k.string] ?? (args.count > 1 ? args[1] : .none)
                })
        case "copy": return .function(JinjaFunction(name: name) { _, _ in .dict(d) })
        default: return nil
        }
    }

    func listMethod(_ l: [JinjaValue], _ name: String) -> JinjaValue? {
        switch name {
        case "index":
            return .function(
                JinjaFunction(name: name) { args, _ throws(JinjaError) in
                    guard let x = args.first, let i = l.firstIndex(of: x) else {
                        throw JinjaError(.runtime, "value is not in list")
                    }
                    return .int(i)
                })
        case "count":
            return .function(JinjaFunction(name: name) { args, _ in .int(l.filter { $0 == args.first }.count) })
        default: return nil
        }
    }

    func stringMethod(_ s: JinjaText, _ name: String) -> JinjaValue? {
        func method(_ body: @escaping ([JinjaValue]) throws(JinjaError) -> JinjaValue) -> JinjaValue {
            .function(JinjaFunction(name: name) { (args, _) throws(JinjaError) -> JinjaValue in try body(args) })
        }
        func chars(_ args: [JinjaValue]) -> Set<Unicode.Scalar>? {
            guard case .string(let c)? = args.first else { return nil }
            return Set(c.scalars)
        }
        switch name {
        case "strip": return method { .string(self.strip(s, chars($0), left: true, right: true)) }
        case "lstrip": return method { .string(self.strip(s, chars($0), left: true, right: false)) }
        case "rstrip": return method { .string(self.strip(s, chars($0), left: false, right: true)) }
        case "split", "rsplit":
            return method { (args) throws(JinjaError) -> JinjaValue in
                let limit = args.count > 1 ? args[1].integer ?? -1 : -1
                guard case .string(let sep)? = args.first else { return .list(self.splitWhitespace(s, limit: limit)) }
                guard !sep.isEmpty else { throw JinjaError(.runtime, "empty separator") }
                return .list(self.split(s, sep, limit: limit, fromRight: name == "rsplit").map { .string($0) })
            }
        case "startswith", "endswith":
            return method { (args) throws(JinjaError) -> JinjaValue in
                let candidates: [JinjaValue]
                switch args.first {
                case .tuple(let l)?, .list(let l)?: candidates = l
                case let x?: candidates = [x]
                case nil: throw JinjaError(.runtime, "\(name) needs an argument")
                }
                for c in candidates {
                    let p = c.text.scalars
                    let hit =
                        name == "startswith"
                        ? s.scalars.starts(with: p) : s.scalars.reversed().starts(with: p.reversed())
                    if hit { return .bool(true) }
                }
                return .bool(false)
            }
        case "replace":
            return method { (args) throws(JinjaError) -> JinjaValue in
                guard args.count >= 2 else { throw JinjaError(.runtime, "replace needs two arguments") }
                return .string(
                    self.replace(s, args[0].text, args[1].text, count: args.count > 2 ? args[2].integer : nil))
            }
        case "upper": return method { _ in .string(self.mapCase(s) { $0.uppercased() }) }
        case "lower": return method { _ in .string(self.mapCase(s) { $0.lowercased() }) }
        case "title": return method { _ in .text(self.titleCase(s.string)) }
        case "capitalize":
            return method { _ in .text(s.string.prefix(1).uppercased() + s.string.dropFirst().lowercased()) }
        case "find", "index", "count":
            return method { (args) throws(JinjaError) -> JinjaValue in
                let needle = args.first?.text.scalars ?? []
                var positions: [Int] = []
                if !needle.isEmpty, needle.count <= s.count {
                    var k = 0
                    while k + needle.count <= s.count {
                        if Array(s.scalars[k..<k + needle.count]) == needle {
                            positions.append(k)
                            k += needle.count
                        } else {
                            k += 1
                        }
                    }
                }
                if name == "count" { return .int(positions.count) }
                if let first = positions.first { return .int(first) }
                if name == "index" { throw JinjaError(.runtime, "substring not found") }
                return .int(-1)
            }
        case "join":
            return method { (args) throws(JinjaError) -> JinjaValue in
                var out = JinjaText("")
                for (i, item) in try self.iterate(args.first ?? .list([])).enumerated() {
                    if i > 0 { out.append(s) }
                    out.append(item.text)
                }
                return .string(out)
            }
        case "splitlines":
            return method { _ in .list(self.split(s, JinjaText("\n"), limit: -1, fromRight: false).map { .string($0) })
            }
        case "isdigit":
            return method { _ in .bool(!s.isEmpty && s.scalars.allSatisfy { $0.properties.numericType == .decimal }) }
        case "isspace": return method { _ in .bool(!s.isEmpty && s.scalars.allSatisfy { $0.isPythonSpace }) }
        case "isalpha": return method { _ in .bool(!s.isEmpty && s.scalars.allSatisfy { $0.properties.isAlphabetic }) }
        default: return nil
        }
    }

    // MARK: Text helpers (tags kept)

    func strip(_ s: JinjaText, _ chars: Set<Unicode.Scalar>?, left: Bool, right: Bool) -> JinjaText {
        func strippable(_ c: Unicode.Scalar) -> Bool { chars.map { $0.contains(c) } ?? c.isPythonSpace }
        var lo = 0
        var hi = s.count
        if left { while lo < hi, strippable(s.scalars[lo]) { lo += 1 } }
        if right { while hi > lo, strippable(s.scalars[hi - 1]) { hi -= 1 } }
        return s[lo..<hi]
    }

    func split(_ s: JinjaText, _ sep: JinjaText, limit: Int, fromRight: Bool) -> [JinjaText] {
        let n = sep.count
        var cuts: [Int] = []
        var k = 0
        while k + n <= s.count {
            if Array(s.scalars[k..<k + n]) == sep.scalars {
                cuts.append(k)
                k += n
            } else {
                k += 1
            }
        }
        if limit >= 0, cuts.count > limit { cuts = fromRight ? Array(cuts.suffix(limit)) : Array(cuts.prefix(limit)) }
        var parts: [JinjaText] = []
        var start = 0
        for c in cuts {
            parts.append(s[start..<c])
            start = c + n
        }
        parts.append(s[start..<s.count])
        return parts
    }

    func splitWhitespace(_ s: JinjaText, limit: Int) -> [JinjaValue] {
        var parts: [JinjaValue] = []
        var k = 0
        while k < s.count {
            while k < s.count, s.scalars[k].isPythonSpace { k += 1 }
            guard k < s.count else { break }
            if limit >= 0, parts.count == limit {
                var end = s.count
                while end > k, s.scalars[end - 1].isPythonSpace { end -= 1 }
                parts.append(.string(s[k..<end]))
                break
            }
            let start = k
            while k < s.count, !s.scalars[k].isPythonSpace { k += 1 }
            parts.append(.string(s[start..<k]))
        }
        return parts
    }

    func replace(_ s: JinjaText, _ old: JinjaText, _ new: JinjaText, count: Int?) -> JinjaText {
        guard !old.isEmpty else { return s }
        var out = JinjaText("")
        var k = 0
        var replaced = 0
        while k < s.count {
            if count.map({ replaced < $0 }) ?? true, k + old.count <= s.count,
                Array(s.scalars[k..<k + old.count]) == old.scalars
            {
                out.append(new)
                k += old.count
                replaced += 1
            } else {
                out.append(s[k..<k + 1])
                k += 1
            }
        }
        return out
    }

    /// Case mapping that keeps tags when the length does not change.
    func mapCase(_ s: JinjaText, _ f: (String) -> String) -> JinjaText {
        let mapped = JinjaText(f(s.string))
        guard mapped.count == s.count else { return mapped }
        return JinjaText(scalars: mapped.scalars, tags: s.tags)
    }

    /// Python's str.title(): each run of letters starts upper case, the rest lower.
    func titleCase(_ s: String) -> String {
        var out = ""
        var previousIsLetter = false
        for c in s {
            let isLetter = c.isLetter
            out += isLetter ? (previousIsLetter ? c.lowercased() : c.uppercased()) : String(c)
            previousIsLetter = isLetter
        }
        return out
    }

    // MARK: JSON

    /// json.dumps(v, ensure_ascii, indent, separators=None, sort_keys) as transformers' tojson calls it.
    func writeJSON(
        _ v: JinjaValue, indent: Int?, level: Int, ensureASCII: Bool, sortKeys: Bool, into out: inout String
    ) throws(JinjaError) {
        let newline = indent.map { "\n" + String(repeating: " ", count: $0 * (level + 1)) }
        let closeLine = indent.map { "\n" + String(repeating: " ", count: $0 * level) } ?? ""
        let separator = indent == nil ? ", " : ","
        switch v {
        case .none: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d): out += d.isNaN ? "NaN" : d.isInfinite ? (d < 0 ? "-Infinity" : "Infinity") : d.description
        case .string(let s): out += jsonString(s.string, ensureASCII: ensureASCII)
        case .list(let l), .tuple(let l):
            guard !l.isEmpty else {
                out += "[]"
                return
            }
            out += "["
            for (i, item) in l.enumerated() {
                if i > 0 { out += separator }
                out += newline ?? ""
                try writeJSON(
                    item, indent: indent, level: level + 1, ensureASCII: ensureASCII, sortKeys: sortKeys, into: &out)
            }
            out += closeLine + "]"
        case .dict(let d):
            guard d.count > 0 else {
                out += "{}"
                return
            }
            out += "{"
            let pairs = sortKeys ? d.pairs.sorted { $0.0 < $1.0 } : d.pairs
            for (i, (k, item)) in pairs.enumerated() {
                if i > 0 { out += separator }
                out += (newline ?? "") + jsonString(k, ensureASCII: ensureASCII) + ": "
                try writeJSON(
                    item, indent: indent, level: level + 1, ensureASCII: ensureASCII, sortKeys: sortKeys, into: &out)
            }
            out += closeLine + "}"
        case .undefined, .namespace, .function:
            throw JinjaError(.runtime, "Object of type \(v.typeName) is not JSON serializable", line: line)
        }
    }

    /// A JSON string as Python's json.dumps writes it: short escapes for \b and \f (ModelFormats' JSON writer
    /// uses \u escapes there) and, with `ensureASCII`, \u escapes with surrogate pairs for everything past ASCII.
    func jsonString(_ s: String, ensureASCII: Bool) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if c.value < 0x20 {
                    out += String(format: "\\u%04x", c.value)
                } else if ensureASCII && c.value > 0x7E {
                    if c.value > 0xFFFF {
                        let v = c.value - 0x10000
                        out += String(format: "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF))
                    } else {
                        out += String(format: "\\u%04x", c.value)
                    }
                } else {
                    out.unicodeScalars.append(c)
                }
            }
        }
        return out + "\""
    }
}

extension Unicode.Scalar {
    /// Python's str.isspace.
    var isPythonSpace: Bool {
        switch value {
        case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
            true
        default: false
        }
    }
}
