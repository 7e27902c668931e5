// JinjaInterpreter: renders a parsed chat template with Jinja2's semantics as Hugging Face runs it: Python
// values and operators, Jinja2's default Undefined (printing it gives "", using it in arithmetic or taking an
// attribute of it is an error), `a.b` trying the attribute (a dict's methods) before the key, a new scope for
// every iteration of a for loop (only namespace() objects carry state out), loop.index/first/last/… counted over
// the items a loop's `if` keeps, and transformers' tojson (json.dumps: ", " and ": ", insertion order, no HTML
// escaping).

import Foundation

/// Renders templates.
struct JinjaInterpreter {
    /// Variables, innermost scope last.
    var scopes: [[String: JinjaValue]]
    var output = JinjaText("")
    /// The current line, for runtime errors.
    var line = 0
    /// The bounds a template from an untrusted file runs within, shared with the macros it calls.
    let limits: JinjaLimits

    init(globals: [String: JinjaValue], date: Date = Date(), limits: JinjaLimits = JinjaLimits()) {
        self.limits = limits
        var builtins = Self.builtins
        builtins["strftime_now"] = Self.strftime(date)
        builtins["namespace"] = .function(
            JinjaFunction(name: "namespace") { [limits] args, kwargs throws(JinjaError) in
                var attributes = JinjaDict()
                if case .dict(let d)? = args.first { attributes = d }
                for (k, v) in kwargs.pairs { attributes[k] = v }
                let namespace = JinjaNamespace(attributes)
                limits.namespaces.append(namespace)
                return .namespace(namespace)
            })
        scopes = [builtins, globals]
    }

    /// `strftime_now(format)`: the render's date through the C library's strftime (POSIX locale, UTC).
    static func strftime(_ date: Date) -> JinjaValue {
        .function(
            JinjaFunction(name: "strftime_now") { args, _ throws(JinjaError) in
                let format = args.first?.text.string ?? "%Y-%m-%d"
                var t = time_t(date.timeIntervalSince1970)
                var parts = tm()
                gmtime_r(&t, &parts)
                var buffer = [CChar](repeating: 0, count: 256)
                let n = Glibc.strftime(&buffer, buffer.count, format, &parts)
                return .text(String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
            })
    }

    enum Flow { case normal, breakLoop, continueLoop }

    static let builtins: [String: JinjaValue] = [
        "raise_exception": .function(
            JinjaFunction(name: "raise_exception") { args, _ throws(JinjaError) in
                throw JinjaError(.raised, args.first.map { $0.text.string } ?? "raise_exception was called")
            }),
        "range": .function(
            JinjaFunction(name: "range") { args, _ throws(JinjaError) in
                let ints = args.compactMap(\.integer)
                guard ints.count == args.count, (1...3).contains(ints.count) else {
                    throw JinjaError(.runtime, "range takes one to three integers")
                }
                let (start, stop, step) =
                    ints.count == 1 ? (0, ints[0], 1) : (ints[0], ints[1], ints.count == 3 ? ints[2] : 1)
                guard step != 0 else { throw JinjaError(.runtime, "range's step must not be zero") }
                guard (stop - start) / step < 100_000 else { throw JinjaError(.runtime, "range is too long") }
                return .list(Array(stride(from: start, to: stop, by: step)).map { .int($0) })
            }),
        "dict": .function(JinjaFunction(name: "dict") { _, kwargs throws(JinjaError) in .dict(kwargs) }),
    ]

    // MARK: Statements

    mutating func render(_ nodes: [JinjaNode]) throws(JinjaError) -> Flow {
        for node in nodes {
            try limits.step(line: line)
            if output.count > JinjaLimits.maxOutput {
                throw JinjaError(
                    .runtime, "the template's output passed \(JinjaLimits.maxOutput) characters", line: line)
            }
            switch node {
            case .text(let t): output.append(t)
            case .output(let e, let l):
                line = l
                output.append(try evaluate(e).text)
            case .ifBlock(let branches, let otherwise):
                var taken = false
                for (condition, body) in branches where try evaluate(condition).truthy {
                    taken = true
                    let flow = try render(body)
                    if flow != .normal { return flow }
                    break
                }
                if !taken {
                    let flow = try render(otherwise)
                    if flow != .normal { return flow }
                }
            case .forLoop(let targets, let iterable, let filter, let body, let otherwise, let l):
                line = l
                try renderLoop(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise)
            case .set(let targets, let attribute, let e, let l):
                line = l
                let value = try evaluate(e)
                if let attribute {
                    guard case .namespace(let ns) = lookup(targets[0]) else {
                        throw JinjaError(
                            .runtime, "can only set attributes of a namespace, not of \(targets[0])", line: l)
                    }
                    ns.attributes[attribute] = value
                } else if targets.count == 1 {
                    scopes[scopes.count - 1][targets[0]] = value
                } else {
                    let items = try iterate(value)
                    guard items.count == targets.count else {
                        throw JinjaError(.runtime, "cannot unpack \(items.count) values into \(targets.count)", line: l)
                    }
                    for (t, v) in zip(targets, items) { scopes[scopes.count - 1][t] = v }
                }
            case .setBlock(let name, let body):
                let saved = output
                output = JinjaText("")
                _ = try render(body)
                let captured = output
                output = saved
                scopes[scopes.count - 1][name] = .string(captured)
            case .macro(let name, let parameters, let body):
                scopes[scopes.count - 1][name] = makeMacro(name: name, parameters: parameters, body: body)
            case .breakLoop: return .breakLoop
            case .continueLoop: return .continueLoop
            }
        }
        return .normal
    }

    mutating func renderLoop(
        targets: [String], iterable: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode]
    ) throws(JinjaError) {
        let all = try iterate(try evaluate(iterable))
        func bind(_ item: JinjaValue, into scope: inout [String: JinjaValue]) throws(JinjaError) {
            if targets.count == 1 {
                scope[targets[0]] = item
            } else {
                let parts = try iterate(item)
                guard parts.count == targets.count else {
                    throw JinjaError(.runtime, "cannot unpack \(parts.count) values into \(targets.count)", line: line)
                }
                for (t, v) in zip(targets, parts) { scope[t] = v }
            }
        }
        var items: [JinjaValue] = []
        if let filter {
            for item in all {
                var scope: [String: JinjaValue] = [:]
                try bind(item, into: &scope)
                scopes.append(scope)
                defer { scopes.removeLast() }
                if try evaluate(filter).truthy { items.append(item) }
            }
        } else {
            items = all
        }
        if items.isEmpty {
            _ = try render(otherwise)
            return
        }
        let n = items.count
        for (index, item) in items.enumerated() {
            var scope: [String: JinjaValue] = [:]
            var loop = JinjaDict()
            loop["index"] = .int(index + 1)
            loop["index0"] = .int(index)
            loop["revindex"] = .int(n - index)
            loop["revindex0"] = .int(n - index - 1)
            loop["first"] = .bool(index == 0)
            loop["last"] = .bool(index == n - 1)
            loop["length"] = .int(n)
            loop["depth"] = .int(1)
            loop["depth0"] = .int(0)
            loop["previtem"] = index > 0 ? items[index - 1] : .undefined("loop.previtem")
            loop["nextitem"] = index + 1 < n ? items[index + 1] : .undefined("loop.nextitem")
            loop["cycle"] = .function(
                JinjaFunction(name: "loop.cycle") { args, _ throws(JinjaError) in
                    args.isEmpty ? .undefined("loop.cycle") : args[index % args.count]
                })
            scope["loop"] = .dict(loop)
            try bind(item, into: &scope)
            scopes.append(scope)
            let flow = try render(nodesOf: body)
            scopes.removeLast()
            if flow == .breakLoop { break }
        }
    }

    mutating func render(nodesOf body: [JinjaNode]) throws(JinjaError) -> Flow { try render(body) }

    func makeMacro(name: String, parameters: [(String, JinjaExpr?)], body: [JinjaNode]) -> JinjaValue {
        let globalsAtDefinition = scopes
        return .function(
            JinjaFunction(name: name) { args, kwargs throws(JinjaError) in
                guard limits.depth < JinjaLimits.maxDepth else {
                    throw JinjaError(.runtime, "macros nested more than \(JinjaLimits.maxDepth) deep (\(name))")
                }
                limits.depth += 1
                defer { limits.depth -= 1 }
                var inner = JinjaInterpreter(globals: [:], limits: limits)
                inner.scopes = globalsAtDefinition
                var scope: [String: JinjaValue] = [:]
                for (k, (parameter, defaultValue)) in parameters.enumerated() {
                    if k < args.count {
                        scope[parameter] = args[k]
                    } else if let v = kwargs[parameter] {
                        scope[parameter] = v
                    } else if let defaultValue {
                        scope[parameter] = try inner.evaluate(defaultValue)
                    } else {
                        scope[parameter] = .undefined(parameter)
                    }
                }
                inner.scopes.append(scope)
                _ = try inner.render(body)
                return .string(inner.output)
            })
    }

    // MARK: Expressions

    func lookup(_ name: String) -> JinjaValue {
        for scope in scopes.reversed() { if let v = scope[name] { return v } }
        return .undefined(name)
    }

    func undefinedError(_ v: JinjaValue) -> JinjaError {
        if case .undefined(let what) = v { return JinjaError(.runtime, "'\(what)' is undefined", line: line) }
        return JinjaError(.runtime, "undefined value", line: line)
    }

    mutating func evaluate(_ e: JinjaExpr) throws(JinjaError) -> JinjaValue {
        try limits.step(line: line)
        switch e {
        case .literal(let v): return v
        case .name(let n): return lookup(n)
        case .list(let items):
            var out: [JinjaValue] = []
            for item in items { out.append(try evaluate(item)) }
            return .list(out)
        case .tuple(let items):
            var out: [JinjaValue] = []
            for item in items { out.append(try evaluate(item)) }
            return .tuple(out)
        case .dict(let pairs):
            var d = JinjaDict()
            for (k, v) in pairs {
                let key = try evaluate(k)
                guard case .string(let s) = key else {
                    throw JinjaError(
                        .unsupported, "dictionary keys must be strings (found \(key.typeName))", line: line)
                }
                d[s.string] = try evaluate(v)
            }
            return .dict(d)
        case .attribute(let base, let name):
            return try attribute(try evaluate(base), name)
        case .item(let base, let index):
            return try item(try evaluate(base), try evaluate(index))
        case .slice(let base, let a, let b, let c):
            let value = try evaluate(base)
            func bound(_ x: JinjaExpr?) throws(JinjaError) -> Int? {
                guard let x else { return nil }
                let v = try evaluate(x)
                if case .none = v { return nil }
                guard let i = v.integer else {
                    throw JinjaError(.runtime, "slice indices must be integers", line: line)
                }
                return i
            }
            return try slice(value, try bound(a), try bound(b), try bound(c))
        case .call(let callee, let args, let kwargs):
            let f = try evaluate(callee)
            var values: [JinjaValue] = []
            for a in args { values.append(try evaluate(a)) }
            var named = JinjaDict()
            for (k, v) in kwargs { named[k] = try evaluate(v) }
            guard case .function(let function) = f else {
                if f.isUndefined { throw undefinedError(f) }
                throw JinjaError(.runtime, "'\(f.typeName)' object is not callable", line: line)
            }
            return try function.call(values, named)
        case .filter(let base, let name, let args, let kwargs, let l):
            line = l
            let value = try evaluate(base)
            var values: [JinjaValue] = []
            for a in args { values.append(try evaluate(a)) }
            var named = JinjaDict()
            for (k, v) in kwargs { named[k] = try evaluate(v) }
            return try applyFilter(name, value, values, named)
        case .test(let base, let name, let args, let negated, let l):
            line = l
            let value = try evaluate(base)
            var values: [JinjaValue] = []
            for a in args { values.append(try evaluate(a)) }
            return .bool(try applyTest(name, value, values) != negated)
        case .unary(let op, let operand):
            let v = try evaluate(operand)
            if let i = v.integer, case .bool = v {
                return .int(op == "-" ? -i : i)
            }
            switch v {
            case .int(let i): return .int(op == "-" ? -i : i)
            case .double(let d): return .double(op == "-" ? -d : d)
            case .undefined: throw undefinedError(v)
            default: throw JinjaError(.runtime, "bad operand type for unary \(op): '\(v.typeName)'", line: line)
            }
        case .binary(let op, let a, let b, let l):
            line = l
            return try binary(op, try evaluate(a), try evaluate(b))
        case .compare(let first, let rest, let l):
            line = l
            var left = try evaluate(first)
            for (op, rightExpr) in rest {
                let right = try evaluate(rightExpr)
                guard try compare(op, left, right) else { return .bool(false) }
                left = right
            }
            return .bool(true)
        case .and(let a, let b):
            let left = try evaluate(a)
            return left.truthy ? try evaluate(b) : left
        case .or(let a, let b):
            let left = try evaluate(a)
            return left.truthy ? left : try evaluate(b)
        case .not(let a): return .bool(!(try evaluate(a)).truthy)
        case .conditional(let value, let condition, let otherwise):
            if try evaluate(condition).truthy { return try evaluate(value) }
            return try otherwise.map { (x) throws(JinjaError) in try evaluate(x) } ?? .undefined("the else branch")
        }
    }

    func attribute(_ value: JinjaValue, _ name: String) throws(JinjaError) -> JinjaValue {
        switch value {
        case .undefined: throw undefinedError(value)
        case .dict(let d):
            if let method = dictMethod(d, name) { return method }
            return d[name] ?? .undefined("\(name)")
        case .namespace(let ns): return ns.attributes[name] ?? .undefined(name)
        case .string(let s): return stringMethod(s, name) ?? .undefined(name)
        case .list(let l), .tuple(let l): return listMethod(l, name) ?? .undefined(name)
        default: return .undefined(name)
        }
    }

    func item(_ value: JinjaValue, _ index: JinjaValue) throws(JinjaError) -> JinjaValue {
        switch (value, index) {
        case (.undefined, _): throw undefinedError(value)
        case (.dict(let d), .string(let k)): return d[k.string] ?? dictMethod(d, k.string) ?? .undefined(k.string)
        case (.namespace(let ns), .string(let k)): return ns.attributes[k.string] ?? .undefined(k.string)
        case (.list(let l), _), (.tuple(let l), _):
            guard let i = index.integer else { return .undefined("item") }
            let j = i < 0 ? l.count + i : i
            return j >= 0 && j < l.count ? l[j] : .undefined("item \(i)")
        case (.string(let s), _):
            guard let i = index.integer else { return .undefined("item") }
            let j = i < 0 ? s.count + i : i
            return j >= 0 && j < s.count ? .string(s[j..<j + 1]) : .undefined("item \(i)")
        default:
            if case .string(let k) = index { return try attribute(value, k.string) }
            return .undefined("item")
        }
    }

    func slice(_ value: JinjaValue, _ a: Int?, _ b: Int?, _ c: Int?) throws(JinjaError) -> JinjaValue {
        let step = c ?? 1
        guard step != 0 else { throw JinjaError(.runtime, "slice step cannot be zero", line: line) }
        func indices(_ n: Int) -> [Int] {
            func clamp(_ x: Int?, _ dflt: Int) -> Int {
                guard var x else { return dflt }
                if x < 0 { x += n }
                return step > 0 ? min(max(x, 0), n) : min(max(x, -1), n - 1)
            }
            let start = clamp(a, step > 0 ? 0 : n - 1)
            let stop = clamp(b, step > 0 ? n : -1)
            return Array(stride(from: start, to: stop, by: step))
        }
        switch value {
        case .list(let l): return .list(indices(l.count).map { l[$0] })
        case .tuple(let l): return .tuple(indices(l.count).map { l[$0] })
        case .string(let s):
            let idx = indices(s.count)
            return .string(JinjaText(scalars: idx.map { s.scalars[$0] }, tags: idx.map { s.tags[$0] }))
        case .undefined: throw undefinedError(value)
        default: return .undefined("slice")
        }
    }

    func iterate(_ value: JinjaValue) throws(JinjaError) -> [JinjaValue] {
        switch value {
        case .undefined: return []
        case .list(let l), .tuple(let l): return l
        case .dict(let d): return d.keys.map { .text($0) }
        case .string(let s): return (0..<s.count).map { .string(s[$0..<$0 + 1]) }
        case .namespace(let ns): return ns.attributes.keys.map { .text($0) }
        default: throw JinjaError(.runtime, "'\(value.typeName)' object is not iterable", line: line)
        }
    }

    func binary(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws(JinjaError) -> JinjaValue {
        if op == "~" { return .string(a.text + b.text) }
        if a.isUndefined { throw undefinedError(a) }
        if b.isUndefined { throw undefinedError(b) }
        func typeError() -> JinjaError {
            JinjaError(
                .runtime, "unsupported operand types for \(op): '\(a.typeName)' and '\(b.typeName)'", line: line)
        }
        switch (op, a, b) {
        case ("+", .string(let x), .string(let y)): return .string(x + y)
        case ("+", .list(let x), .list(let y)): return .list(x + y)
        case ("+", .tuple(let x), .tuple(let y)): return .tuple(x + y)
        case ("*", .string(let s), _), ("*", _, .string(let s)):
            guard let n = (a.integer ?? b.integer) else { throw typeError() }
            guard s.count * max(0, min(n, 10_000)) <= JinjaLimits.maxOutput else {
                throw JinjaError(.runtime, "a string repeated past \(JinjaLimits.maxOutput) characters", line: line)
            }
            var out = JinjaText("")
            for _ in 0..<max(0, min(n, 10_000)) { out.append(s) }
            return .string(out)
        case ("*", .list(let l), _), ("*", _, .list(let l)):
            guard let n = (a.integer ?? b.integer) else { throw typeError() }
            guard l.count * max(0, min(n, 10_000)) <= JinjaLimits.maxOutput else {
                throw JinjaError(.runtime, "a list repeated past \(JinjaLimits.maxOutput) items", line: line)
            }
            return .list(Array(repeating: l, count: max(0, min(n, 10_000))).flatMap { $0 })
        default: break
        }
        if let x = a.integer, let y = b.integer {
            switch op {
            case "+": return .int(x &+ y)
            case "-": return .int(x &- y)
            case "*": return .int(x &* y)
            case "/":
                guard y != 0 else { throw JinjaError(.runtime, "division by zero", line: line) }
                return .double(Double(x) / Double(y))
            case "//":
                guard y != 0 else { throw JinjaError(.runtime, "integer division by zero", line: line) }
                let q = x / y
                return .int((x % y != 0 && (x < 0) != (y < 0)) ? q - 1 : q)
            case "%":
                guard y != 0 else { throw JinjaError(.runtime, "modulo by zero", line: line) }
                let r = x % y
                return .int(r != 0 && (r < 0) != (y < 0) ? r + y : r)
            case "**":
                if y >= 0 {
                    var r = 1
                    for _ in 0..<min(y, 64) { r = r &* x }
                    return .int(r)
                }
                return .double(Foundation.pow(Double(x), Double(y)))
            default: throw typeError()
            }
        }
        guard let x = a.number, let y = b.number else { throw typeError() }
        switch op {
        case "+": return .double(x + y)
        case "-": return .double(x - y)
        case "*": return .double(x * y)
        case "/":
            guard y != 0 else { throw JinjaError(.runtime, "division by zero", line: line) }
            return .double(x / y)
        case "//":
            guard y != 0 else { throw JinjaError(.runtime, "division by zero", line: line) }
            return .double((x / y).rounded(.down))
        case "%":
            guard y != 0 else { throw JinjaError(.runtime, "modulo by zero", line: line) }
            let r = x.truncatingRemainder(dividingBy: y)
            return .double(r != 0 && (r < 0) != (y < 0) ? r + y : r)
        case "**": return .double(Foundation.pow(x, y))
        default: throw typeError()
        }
    }

    func compare(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws(JinjaError) -> Bool {
        switch op {
        case "==": return a == b
        case "!=": return a != b
        case "in", "not in":
            let found: Bool
            switch b {
            case .string(let s):
                guard case .string(let needle) = a else {
                    if a.isUndefined { throw undefinedError(a) }
                    throw JinjaError(
                        .runtime, "'in <string>' requires a string as left operand, not \(a.typeName)", line: line)
                }
                found = needle.isEmpty || s.string.contains(needle.string)
            case .list(let l), .tuple(let l): found = l.contains(a)
            case .dict(let d):
                if case .string(let k) = a { found = d[k.string] != nil } else { found = false }
            case .undefined: found = false
            case .namespace(let ns):
                if case .string(let k) = a { found = ns.attributes[k.string] != nil } else { found = false }
            default:
                throw JinjaError(.runtime, "argument of type '\(b.typeName)' is not iterable", line: line)
            }
            return op == "in" ? found : !found
        default:
            let order: Int
            switch (a, b) {
            case (.string(let x), .string(let y)):
                order =
                    x.scalars.lexicographicallyPrecedes(y.scalars, by: { $0.value < $1.value }) ? -1 : x == y ? 0 : 1
            default:
                guard let x = a.number, let y = b.number else {
                    throw JinjaError(
                        .runtime, "'\(op)' not supported between '\(a.typeName)' and '\(b.typeName)'", line: line)
                }
                order = x < y ? -1 : x == y ? 0 : 1
            }
            switch op {
            case "<": return order < 0
            case "<=": return order <= 0
            case ">": return order > 0
            default: return order >= 0
            }
        }
    }
}

/// How far a template may go: templates come from model files, which are untrusted, so a loop that never ends or
/// a macro that calls itself is an error, not a hang or a crash.
final class JinjaLimits: @unchecked Sendable {
    /// Statements and expressions evaluated per render.
    static let maxSteps = 1_000_000
    /// Macro calls nested inside each other.
    static let maxDepth = 64
    /// Characters of output (and items or characters of any repeated value).
    static let maxOutput = 16 << 20

    var steps = 0
    var depth = 0
    /// The render's namespace objects: the only references in a template's values, so the only way to a cycle
    /// (`set ns.me = ns`); `releaseNamespaces` breaks them when the render ends.
    var namespaces: [JinjaNamespace] = []

    /// Empties every namespace the render made, so no cycle outlives it.
    func releaseNamespaces() {
        for namespace in namespaces { namespace.attributes = JinjaDict() }
        namespaces = []
    }

    func step(line: Int) throws(JinjaError) {
        steps += 1
        if steps > Self.maxSteps {
            throw JinjaError(.runtime, "the template ran more than \(Self.maxSteps) steps", line: line)
        }
    }
}
