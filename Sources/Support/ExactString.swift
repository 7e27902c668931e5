// ExactString: a String compared and hashed by its UTF-8 bytes. Swift's String equality is canonical
// equivalence ("\u{2000}" == "\u{2002}", "é" == "e\u{301}"), which is right for user-facing text and wrong
// for vocabularies, JSON keys and caches of raw text, where distinct byte sequences are distinct entries.

/// A string whose equality and hash are those of its UTF-8 bytes.
public struct ExactString: Hashable, Sendable, CustomStringConvertible {
    /// The string.
    public let string: String

    /// Wraps `string`.
    public init(_ string: String) { self.string = string }

    public static func == (a: ExactString, b: ExactString) -> Bool { a.string.utf8.elementsEqual(b.string.utf8) }

    public func hash(into hasher: inout Hasher) {
        for b in string.utf8 { hasher.combine(b) }
        hasher.combine(string.utf8.count)
    }

    public var description: String { string }
}
