// BlobDownload: the receiving side of a blob transfer, as a pure state machine. The receiver asks for chunks
// (`fetch`, at most `Wire.chunkCredit` outstanding: credit-based flow control, the sender never pushes more than
// was asked for), appends them in order to a partial file, and resumes from the partial file's size after a
// restart or a lost connection. The caller verifies the SHA-256 of the whole file before using it.

import Support

/// Progress of one blob transfer.
public struct BlobDownload: Sendable {
    /// The blob's SHA-256 (hex).
    public let hash: String
    /// Its size in bytes.
    public let total: Int
    /// Bytes already written, in order, to the partial file.
    public private(set) var received: Int
    /// Offsets requested and not yet received.
    public private(set) var outstanding: Set<Int> = []
    /// Chunks that arrived ahead of `received`, waiting for the ones before them.
    private var early: [Int: [UInt8]] = [:]
    private var nextOffset: Int
    private let credit: Int
    private let chunkBytes: Int

    /// A transfer that resumes after `received` bytes (the partial file's size; 0 for a new one).
    public init(
        hash: String, total: Int, received: Int = 0, credit: Int = Wire.chunkCredit, chunkBytes: Int = Wire.chunkBytes
    ) {
        self.hash = hash
        self.total = total
        self.received = min(max(0, received), total)
        nextOffset = self.received
        self.credit = credit
        self.chunkBytes = chunkBytes
    }

    public var isComplete: Bool { received == total }

    /// `fetch` messages to send now, filling the credit window.
    public mutating func requests() -> [Message] {
        var out: [Message] = []
        while outstanding.count + early.count < credit, nextOffset < total {
            let length = min(chunkBytes, total - nextOffset)
            out.append(Fetch(blob: hash, offset: nextOffset, length: length).message)
            outstanding.insert(nextOffset)
            nextOffset += length
        }
        return out
    }

    /// Forgets outstanding requests (the connection was lost), so `requests()` asks again from `received`.
    public mutating func reset() {
        outstanding = []
        early = [:]
        nextOffset = received
    }

    /// Takes a `chunk` message; returns the bytes to append to the partial file now, in order (possibly several
    /// chunks, possibly none).
    ///
    /// - Throws: `WireError` for a chunk of another blob, of the wrong size, or never asked for.
    public mutating func accept(_ m: Message) throws(WireError) -> [UInt8] {
        let chunk = try m.decode(as: Chunk.self)
        let offset = chunk.offset
        let data = chunk.data
        guard chunk.blob == hash, chunk.total == total else {
            throw WireError(.schema, "chunk of another blob or size")
        }
        guard outstanding.contains(offset), data.count == min(chunkBytes, total - offset) else {
            throw WireError(.schema, "chunk at \(offset) of \(data.count) bytes was not asked for")
        }
        outstanding.remove(offset)
        early[offset] = data
        var ready: [UInt8] = []
        while let next = early.removeValue(forKey: received) {
            ready += next
            received += next.count
        }
        return ready
    }
}
