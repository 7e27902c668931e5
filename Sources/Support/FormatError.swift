// FormatError: what went wrong reading or writing a model, adapter or tokenizer file, said so a user can
// act on it: the file, the field, what was found, what was expected.

/// An error reading or writing a model-related file.
public struct FormatError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure, for callers that branch on it.
    public enum Code: String, Sendable {
        /// The file or directory does not exist.
        case notFound
        /// The OS refused to open, map or write it.
        case io
        /// Not the expected format at all (wrong magic, not JSON, ...).
        case badMagic
        /// A format version this reader does not handle.
        case unsupportedVersion
        /// The file ends before a structure it declares.
        case truncated
        /// A size, count or offset outside what the file or the format allows.
        case outOfBounds
        /// A field holds a value of the wrong type or an impossible value.
        case invalidValue
        /// Two entries that must be unique share a name, or two tensors overlap.
        case conflict
        /// Valid, but something Cairn does not implement (a quant type, a tokenizer model, ...).
        case unsupported
        /// A required entry is absent.
        case missing
    }

    /// The kind of failure.
    public var code: Code
    /// The file (or directory) concerned.
    public var path: String
    /// The field, key or tensor concerned, if any (e.g. `tensor 'blk.0.attn_q.weight': offset`).
    public var field: String?
    /// What is wrong and what was expected, ending with how to fix it where there is a fix.
    public var message: String

    /// Creates an error; `message` should say what was expected.
    public init(_ code: Code, path: String, field: String? = nil, _ message: String) {
        self.code = code
        self.path = path
        self.field = field
        self.message = message
    }

    /// One line: `path: field: message`.
    public var description: String {
        if let field { return "\(path): \(field): \(message)" }
        return "\(path): \(message)"
    }
}
