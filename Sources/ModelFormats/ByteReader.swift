// ByteReader: a cursor over untrusted bytes. Every read checks the remaining length first, so a hostile
// count or length produces an error naming the field, never a crash or an unbounded allocation.

/// A bounds-checked little-endian reader over a byte buffer.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    let path: String
    private(set) var offset: Int

    init(_ bytes: UnsafeRawBufferPointer, path: String, offset: Int = 0) {
        self.bytes = bytes
        self.path = path
        self.offset = offset
    }

    var remaining: Int { bytes.count - offset }

    func truncated(_ field: String, _ need: Int) -> FormatError {
        FormatError(
            .truncated, path: path, field: field,
            "needs \(need) bytes at offset \(offset) but the file has only \(remaining) left; the file is truncated or corrupt"
        )
    }

    mutating func require(_ count: Int, _ field: String) throws(FormatError) {
        guard count >= 0, count <= remaining else { throw truncated(field, count) }
    }

    mutating func read<T: FixedWidthInteger>(_ type: T.Type, _ field: String) throws(FormatError) -> T {
        try require(MemoryLayout<T>.size, field)
        let value = T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return value
    }

    mutating func readFloat(_ field: String) throws(FormatError) -> Float {
        Float(bitPattern: try read(UInt32.self, field))
    }

    mutating func readDouble(_ field: String) throws(FormatError) -> Double {
        Double(bitPattern: try read(UInt64.self, field))
    }

    /// Reads `count` raw bytes.
    mutating func readBytes(_ count: Int, _ field: String) throws(FormatError) -> UnsafeRawBufferPointer {
        try require(count, field)
        let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])
        offset += count
        return slice
    }

    mutating func skip(_ count: Int, _ field: String) throws(FormatError) {
        try require(count, field)
        offset += count
    }

    mutating func seek(to newOffset: Int, _ field: String) throws(FormatError) {
        guard newOffset >= 0, newOffset <= bytes.count else { throw truncated(field, newOffset - offset) }
        offset = newOffset
    }
}
