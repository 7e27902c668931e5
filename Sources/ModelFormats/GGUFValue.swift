// GGUFValue: the typed values of GGUF metadata (Docs/FORMATS.md §1.2).

import TensorKernels

/// The value types of GGUF metadata, numbered as in the file.
public enum GGUFValueType: UInt32, Sendable, CaseIterable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7, string = 8
    case array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// Bytes of one value of a fixed-size type; strings take at least 8 (their length).
    var minimumSize: Int {
        switch self {
        case .uint8, .int8, .bool: 1
        case .uint16, .int16: 2
        case .uint32, .int32, .float32: 4
        case .uint64, .int64, .float64, .string: 8
        case .array: 12
        }
    }
}

/// A GGUF metadata value.
public enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    /// An array of one element type (nested arrays are rejected, as by llama.cpp's reader).
    case array(GGUFValueType, [GGUFValue])

    /// The value's type as stored.
    public var type: GGUFValueType {
        switch self {
        case .uint8: .uint8
        case .int8: .int8
        case .uint16: .uint16
        case .int16: .int16
        case .uint32: .uint32
        case .int32: .int32
        case .uint64: .uint64
        case .int64: .int64
        case .float32: .float32
        case .float64: .float64
        case .bool: .bool
        case .string: .string
        case .array: .array
        }
    }

    /// Any integer type as Int (counts may be u32 or u64 by convention, Docs/FORMATS.md §1.2), or nil.
    public var intValue: Int? {
        switch self {
        case .uint8(let v): Int(v)
        case .int8(let v): Int(v)
        case .uint16(let v): Int(v)
        case .int16(let v): Int(v)
        case .uint32(let v): Int(v)
        case .int32(let v): Int(v)
        case .uint64(let v): Int(exactly: v)
        case .int64(let v): Int(v)
        default: nil
        }
    }

    /// A float of either width, or nil.
    public var doubleValue: Double? {
        switch self {
        case .float32(let v): Double(v)
        case .float64(let v): v
        default: nil
        }
    }

    /// The string, or nil.
    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }

    /// The Bool, or nil.
    public var boolValue: Bool? { if case .bool(let b) = self { b } else { nil } }

    /// The elements of an array, or nil.
    public var arrayValue: [GGUFValue]? { if case .array(_, let items) = self { items } else { nil } }

    /// A short rendering for `cairn inspect`: arrays as their type and length plus the first items.
    public var summary: String {
        switch self {
        case .string(let s):
            return s.count > 80 ? "\"\(s.prefix(77))...\" (\(s.utf8.count) bytes)" : "\"\(s)\""
        case .array(let t, let items):
            let head = items.prefix(4).map(\.summary).joined(separator: ", ")
            return "[\(t)] × \(items.count)" + (items.isEmpty ? "" : ": \(head)\(items.count > 4 ? ", ..." : "")")
        case .float32(let v): return "\(v)"
        case .float64(let v): return "\(v)"
        case .bool(let b): return b ? "true" : "false"
        default: return intValue.map(String.init) ?? "?"
        }
    }
}

/// Ordered GGUF metadata with typed lookups whose errors name the file and key.
public struct GGUFMetadata: Sendable {
    /// Entries in file order.
    public private(set) var entries: [(key: String, value: GGUFValue)] = []
    private var index: [String: Int] = [:]
    /// The file the metadata came from, for error messages.
    public var path: String

    /// Empty metadata attributed to `path`.
    public init(path: String) { self.path = path }

    /// Adds an entry; returns false when the key exists already.
    @discardableResult
    mutating func append(_ key: String, _ value: GGUFValue) -> Bool {
        guard index[key] == nil else { return false }
        index[key] = entries.count
        entries.append((key, value))
        return true
    }

    /// The value of `key`, or nil.
    public subscript(key: String) -> GGUFValue? { index[key].map { entries[$0].value } }

    /// The integer at `key`, nil when absent.
    /// - Throws: `FormatError` `.invalidValue` when present but not an integer.
    public func int(_ key: String) throws(FormatError) -> Int? {
        guard let v = self[key] else { return nil }
        guard let i = v.intValue else { throw wrongType(key, v, "an integer") }
        return i
    }

    /// The float at `key` (f32 or f64), nil when absent.
    public func double(_ key: String) throws(FormatError) -> Double? {
        guard let v = self[key] else { return nil }
        guard let d = v.doubleValue else { throw wrongType(key, v, "a float") }
        return d
    }

    /// The string at `key`, nil when absent.
    public func string(_ key: String) throws(FormatError) -> String? {
        guard let v = self[key] else { return nil }
        guard let s = v.stringValue else { throw wrongType(key, v, "a string") }
        return s
    }

    /// The Bool at `key`, nil when absent.
    public func bool(_ key: String) throws(FormatError) -> Bool? {
        guard let v = self[key] else { return nil }
        guard let b = v.boolValue else { throw wrongType(key, v, "a boolean") }
        return b
    }

    /// The array of strings at `key`, nil when absent.
    public func strings(_ key: String) throws(FormatError) -> [String]? {
        guard let v = self[key] else { return nil }
        guard case .array(.string, let items) = v else { throw wrongType(key, v, "an array of strings") }
        return items.map { $0.stringValue! }
    }

    /// The array of integers at `key`, nil when absent.
    public func ints(_ key: String) throws(FormatError) -> [Int]? {
        guard let v = self[key] else { return nil }
        guard case .array(_, let items) = v else { throw wrongType(key, v, "an array of integers") }
        var out: [Int] = []
        out.reserveCapacity(items.count)
        for item in items {
            guard let i = item.intValue else { throw wrongType(key, v, "an array of integers") }
            out.append(i)
        }
        return out
    }

    /// The array of numbers at `key` (float or integer elements), nil when absent.
    public func floats(_ key: String) throws(FormatError) -> [Float]? {
        guard let v = self[key] else { return nil }
        guard case .array(_, let items) = v else { throw wrongType(key, v, "an array of numbers") }
        var out: [Float] = []
        out.reserveCapacity(items.count)
        for item in items {
            guard let x = item.doubleValue ?? item.intValue.map(Double.init) else {
                throw wrongType(key, v, "an array of numbers")
            }
            out.append(Float(x))
        }
        return out
    }

    /// A required value: the lookup's result, or a `.missing` error naming the key.
    public func require<T>(_ key: String, _ lookup: (String) throws(FormatError) -> T?) throws(FormatError) -> T {
        guard let value = try lookup(key) else {
            throw FormatError(.missing, path: path, field: key, "required metadata key is absent")
        }
        return value
    }

    private func wrongType(_ key: String, _ value: GGUFValue, _ expected: String) -> FormatError {
        FormatError(.invalidValue, path: path, field: key, "expected \(expected), found a \(value.type) value")
    }
}
