// GGUFFile: a memory-mapped GGUF v2/v3 file, validated by the rules of llama.cpp's reference reader
// (Docs/FORMATS.md §1, ggml gguf.cpp): magic, version, bounded string and array lengths, no duplicate keys or
// tensor names, no nested arrays, `general.alignment` a u32 power of two, tensor names under 64 bytes,
// at most 4 dimensions, a known type whose block size divides ne[0], aligned offsets that are contiguous in
// tensor-info order, and every tensor inside the file. Counts are checked against the bytes left before
// anything is allocated, so a hostile header cannot make the reader allocate more than the file's size.

import TensorKernels

/// One tensor's description in a GGUF file.
public struct GGUFTensorInfo: Sendable, Equatable {
    /// The tensor name, e.g. `blk.0.attn_q.weight`.
    public var name: String
    /// Dimensions in ggml order: `ne[0]` is the row length (fastest varying).
    public var ne: [Int]
    /// The element type.
    public var type: GGMLType
    /// Offset of the data from the start of the data section.
    public var offset: Int

    /// Total elements.
    public var elementCount: Int { ne.reduce(1, *) }
    /// Bytes of data.
    public var byteCount: Int { type.byteCount(elements: elementCount)! }
    /// Dimensions outermost first, as numpy/PyTorch print them (`ne` reversed).
    public var rowMajorShape: [Int] { ne.reversed() }
}

/// A GGUF file, mapped and validated.
public final class GGUFFile: Sendable {
    /// Largest string or array length accepted (llama.cpp's GGUF_MAX_STRING_LENGTH / _ARRAY_ELEMENTS).
    public static let maxLength = 1 << 30
    /// Longest tensor name, exclusive (GGML_MAX_NAME).
    public static let maxNameBytes = 64

    /// The file's path.
    public let path: String
    /// Format version (2 or 3).
    public let version: UInt32
    /// Metadata in file order.
    public let metadata: GGUFMetadata
    /// Tensor descriptions in file order.
    public let tensors: [GGUFTensorInfo]
    /// Data alignment in bytes (`general.alignment`, default 32).
    public let alignment: Int
    /// Absolute offset of the data section.
    public let dataOffset: Int
    private let tensorIndex: [String: Int]
    private let file: MappedFile

    /// Opens and validates `path`.
    ///
    /// - Throws: `FormatError` naming the field at fault.
    public convenience init(path: String) throws(FormatError) {
        try self.init(file: try MappedFile(path: path))
    }

    /// Validates an already mapped file.
    public init(file: MappedFile) throws(FormatError) {
        self.file = file
        path = file.path
        var r = ByteReader(file.bytes, path: path)
        let magic = try r.read(UInt32.self, "magic")
        guard magic == 0x4655_4747 else {
            throw FormatError(.badMagic, path: path, "not a GGUF file (the first four bytes are not \"GGUF\")")
        }
        let version = try r.read(UInt32.self, "version")
        if version & 0xFFFF == 0, version != 0 {
            throw FormatError(
                .unsupportedVersion, path: path, field: "version",
                "the file is big-endian; Cairn reads little-endian GGUF (convert it with llama.cpp's gguf tools)")
        }
        guard version == 2 || version == 3 else {
            throw FormatError(
                .unsupportedVersion, path: path, field: "version",
                "GGUF version \(version) is not supported (expected 2 or 3); re-convert the model with a current llama.cpp"
            )
        }
        self.version = version
        let tensorCount = try Self.count(try r.read(UInt64.self, "tensor_count"), "tensor_count", minimumBytes: 28, r)
        let kvCount = try Self.count(
            try r.read(UInt64.self, "metadata_kv_count"), "metadata_kv_count", minimumBytes: 13, r)

        var metadata = GGUFMetadata(path: path)
        for i in 0..<kvCount {
            let key = try Self.readString(&r, "metadata key #\(i)")
            guard !key.isEmpty else {
                throw FormatError(.invalidValue, path: path, field: "metadata key #\(i)", "empty key")
            }
            let rawType = try r.read(UInt32.self, key)
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw FormatError(
                    .invalidValue, path: path, field: key, "unknown value type \(rawType) (expected 0...12)")
            }
            let value = try Self.readValue(&r, type, key, nested: false)
            guard metadata.append(key, value) else {
                throw FormatError(.conflict, path: path, field: key, "duplicate metadata key")
            }
        }
        var alignment = 32
        if let a = metadata["general.alignment"] {
            guard case .uint32(let v) = a, v > 0, v & (v - 1) == 0 else {
                throw FormatError(
                    .invalidValue, path: path, field: "general.alignment",
                    "must be a u32 power of two, found \(a.summary)")
            }
            alignment = Int(v)
        }
        self.alignment = alignment
        self.metadata = metadata

        var tensors: [GGUFTensorInfo] = []
        tensors.reserveCapacity(tensorCount)
        var index: [String: Int] = [:]
        for i in 0..<tensorCount {
            let name = try Self.readString(&r, "tensor #\(i) name")
            let field = "tensor '\(name)'"
            guard name.utf8.count < Self.maxNameBytes else {
                throw FormatError(
                    .invalidValue, path: path, field: field, "name is \(name.utf8.count) bytes, the limit is 63")
            }
            guard index[name] == nil else {
                throw FormatError(.conflict, path: path, field: field, "duplicate tensor name")
            }
            let dims = Int(try r.read(UInt32.self, "\(field) n_dims"))
            guard dims >= 1, dims <= 4 else {
                throw FormatError(.invalidValue, path: path, field: field, "has \(dims) dimensions (expected 1 to 4)")
            }
            var ne: [Int] = []
            for d in 0..<dims {
                let v = try r.read(Int64.self, "\(field) ne[\(d)]")
                guard v >= 0, v < Int64(1) << 48 else {
                    throw FormatError(
                        .outOfBounds, path: path, field: field, "dimension ne[\(d)] = \(v) is out of range")
                }
                ne.append(Int(v))
            }
            let rawType = try r.read(UInt32.self, "\(field) type")
            guard let type = GGMLType(rawValue: rawType) else {
                throw FormatError(
                    .unsupported, path: path, field: field,
                    "unknown ggml type \(rawType); the file may need a newer reader")
            }
            guard type != .q8_1, type != .q8_K else {
                throw FormatError(
                    .invalidValue, path: path, field: field, "type \(type) is for activations, not stored weights")
            }
            guard ne[0] % type.blockSize == 0 else {
                throw FormatError(
                    .invalidValue, path: path, field: field,
                    "row length \(ne[0]) is not a multiple of the \(type) block size \(type.blockSize)")
            }
            var elements = 1
            for v in ne {
                let (p, o) = elements.multipliedReportingOverflow(by: v)
                guard !o, p < Int(1) << 52 else {
                    throw FormatError(.outOfBounds, path: path, field: field, "element count overflows")
                }
                elements = p
            }
            guard type.byteCount(elements: elements) != nil else {
                throw FormatError(.outOfBounds, path: path, field: field, "byte size overflows")
            }
            let offset = try r.read(UInt64.self, "\(field) offset")
            guard offset < UInt64(Int.max) else {
                throw FormatError(.outOfBounds, path: path, field: field, "offset \(offset) is out of range")
            }
            index[name] = tensors.count
            tensors.append(GGUFTensorInfo(name: name, ne: ne, type: type, offset: Int(offset)))
        }
        // The data section starts at the next multiple of the alignment.
        let headerEnd = r.offset
        let dataOffset = tensorCount == 0 ? headerEnd : (headerEnd + alignment - 1) / alignment * alignment
        self.dataOffset = dataOffset
        var expected = 0
        for t in tensors {
            let field = "tensor '\(t.name)'"
            guard t.offset % alignment == 0 else {
                throw FormatError(
                    .invalidValue, path: path, field: field, "offset \(t.offset) is not a multiple of \(alignment)")
            }
            guard t.offset == expected else {
                throw FormatError(
                    .conflict, path: path, field: field,
                    "data offset \(t.offset) should be \(expected): tensor data must be contiguous in tensor-info order (overlapping or out-of-order tensors)"
                )
            }
            let end = dataOffset + t.offset + t.byteCount
            guard end <= file.count else {
                throw FormatError(
                    .truncated, path: path, field: field,
                    "data ends at byte \(end) but the file has \(file.count) bytes; the file is truncated (re-download it)"
                )
            }
            expected = t.offset + (t.byteCount + alignment - 1) / alignment * alignment
        }
        self.tensors = tensors
        tensorIndex = index
    }

    /// Bounds a declared count by the bytes left, given the smallest size of one item.
    private static func count(_ value: UInt64, _ field: String, minimumBytes: Int, _ r: ByteReader) throws(FormatError)
        -> Int
    {
        guard value <= UInt64(r.remaining / minimumBytes) else {
            throw FormatError(
                .outOfBounds, path: r.path, field: field,
                "declares \(value) entries but only \(r.remaining) bytes follow; the file is corrupt")
        }
        return Int(value)
    }

    private static func readString(_ r: inout ByteReader, _ field: String) throws(FormatError) -> String {
        let length = try r.read(UInt64.self, "\(field) length")
        guard length <= UInt64(maxLength), length <= UInt64(r.remaining) else {
            throw FormatError(
                .outOfBounds, path: r.path, field: field,
                "string length \(length) exceeds the \(r.remaining) bytes left (limit \(maxLength))")
        }
        let bytes = try r.readBytes(Int(length), field)
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func readValue(
        _ r: inout ByteReader, _ type: GGUFValueType, _ key: String, nested: Bool
    ) throws(FormatError) -> GGUFValue {
        switch type {
        case .uint8: return .uint8(try r.read(UInt8.self, key))
        case .int8: return .int8(try r.read(Int8.self, key))
        case .uint16: return .uint16(try r.read(UInt16.self, key))
        case .int16: return .int16(try r.read(Int16.self, key))
        case .uint32: return .uint32(try r.read(UInt32.self, key))
        case .int32: return .int32(try r.read(Int32.self, key))
        case .uint64: return .uint64(try r.read(UInt64.self, key))
        case .int64: return .int64(try r.read(Int64.self, key))
        case .float32: return .float32(try r.readFloat(key))
        case .float64: return .float64(try r.readDouble(key))
        case .bool: return .bool(try r.read(Int8.self, key) != 0)
        case .string: return .string(try readString(&r, key))
        case .array:
            guard !nested else {
                throw FormatError(
                    .invalidValue, path: r.path, field: key, "nested arrays are not allowed in GGUF metadata")
            }
            let rawType = try r.read(UInt32.self, "\(key) element type")
            guard let elementType = GGUFValueType(rawValue: rawType) else {
                throw FormatError(.invalidValue, path: r.path, field: key, "unknown array element type \(rawType)")
            }
            guard elementType != .array else {
                throw FormatError(
                    .invalidValue, path: r.path, field: key, "nested arrays are not allowed in GGUF metadata")
            }
            let n = try r.read(UInt64.self, "\(key) count")
            guard n <= UInt64(maxLength), n <= UInt64(r.remaining / elementType.minimumSize) else {
                throw FormatError(
                    .outOfBounds, path: r.path, field: key,
                    "array of \(n) elements cannot fit in the \(r.remaining) bytes left")
            }
            var items: [GGUFValue] = []
            items.reserveCapacity(Int(n))
            for _ in 0..<Int(n) { items.append(try readValue(&r, elementType, key, nested: true)) }
            return .array(elementType, items)
        }
    }

    /// The tensor called `name`, or nil.
    public func tensor(named name: String) -> GGUFTensorInfo? { tensorIndex[name].map { tensors[$0] } }

    /// The raw bytes of a tensor of this file, valid while this object lives (`storedTensor(named:)` gives a
    /// view that keeps it alive).
    public func data(for tensor: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        let start = dataOffset + tensor.offset
        return UnsafeRawBufferPointer(rebasing: file.bytes[start..<start + tensor.byteCount])
    }

    /// The file size in bytes.
    public var fileSize: Int { file.count }
}
