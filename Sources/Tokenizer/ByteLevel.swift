// ByteLevel: GPT-2's reversible map from bytes to printable Unicode scalars (Docs/FORMATS.md §8). Bytes
// 0x21–0x7E, 0xA1–0xAC and 0xAE–0xFF map to themselves; the other 68 map, in byte order, to U+0100 upward
// (space → U+0120 'Ġ', newline → U+010A 'Ċ'). BPE runs on the mapped text, so every byte is a symbol.

/// The byte ↔ scalar tables of byte-level BPE.
public enum ByteLevel {
    /// `scalarForByte[b]` is the scalar that stands for byte `b`.
    static let scalarForByte: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable {
                table[b] = Unicode.Scalar(UInt32(b))!
            } else {
                table[b] = Unicode.Scalar(next)!
                next += 1
            }
        }
        return table
    }()

    /// The byte a scalar stands for, or nil for scalars outside the table.
    static let byteForScalar: [UInt32: UInt8] = {
        var map: [UInt32: UInt8] = [:]
        for (b, s) in scalarForByte.enumerated() { map[s.value] = UInt8(b) }
        return map
    }()

    /// The scalar that stands for one byte.
    public static func symbol(for byte: UInt8) -> Unicode.Scalar { scalarForByte[Int(byte)] }

    /// Maps the UTF-8 bytes of `text` to the byte-level alphabet (how token strings of normal tokens look).
    public static func encode<S: StringProtocol>(_ text: S) -> String {
        var out = String.UnicodeScalarView()
        for b in text.utf8 { out.append(scalarForByte[Int(b)]) }
        return String(out)
    }

    /// Appends the bytes a byte-level token string stands for; scalars outside the table keep their UTF-8.
    public static func decode(_ token: String, into bytes: inout [UInt8]) {
        for s in token.unicodeScalars {
            if let b = byteForScalar[s.value] {
                bytes.append(b)
            } else {
                bytes.append(contentsOf: String(s).utf8)
            }
        }
    }
}
