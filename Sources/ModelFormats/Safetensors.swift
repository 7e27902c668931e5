// Safetensors: reader and writer for Hugging Face's safetensors format (Docs/FORMATS.md §7), validated like the
// reference implementation: u64 header length ≤ 100 MB and inside the file, a JSON object header, known
// dtypes, string-valued `__metadata__`, byte sizes equal to shape × dtype size, tensors that tile the data
// buffer exactly from offset 0 (no holes, no overlaps) and end exactly at the end of the file.

import TensorKernels

/// Element types of safetensors files.
public enum SafetensorsDType: String, Sendable, CaseIterable {
    case BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64
    case F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, C64, F4, F6_E2M3, F6_E3M2

    /// Bits per element.
    public var bits: Int {
        switch self {
        case .BOOL, .U8, .I8, .F8_E5M2, .F8_E4M3, .F8_E8M0, .F8_E4M3FNUZ, .F8_E5M2FNUZ: 8
        case .I16, .U16, .F16, .BF16: 16
        case .I32, .U32, .F32: 32
        case .F64, .I64, .U64, .C64: 64
        case .F4: 4
        case .F6_E2M3, .F6_E3M2: 6
        }
    }

    /// The ggml type with the same bytes, for the float types Cairn loads.
    public var ggmlType: GGMLType? {
        switch self {
        case .F32: .f32
        case .F16: .f16
        case .BF16: .bf16
        default: nil
        }
    }

    /// Alignment rank used by the reference writer to order tensors (larger first).
    var writeOrder: Int { bits >= 8 ? bits / 8 : 0 }
}

/// One tensor's entry in a safetensors header.
public struct SafetensorsTensorInfo: Sendable, Equatable {
    /// Tensor name.
    public var name: String
    /// Element type.
    public var dtype: SafetensorsDType
    /// Shape, outermost first.
    public var shape: [Int]
    /// Start of the data, relative to the data buffer.
    public var begin: Int
    /// One past the end.
    public var end: Int
    /// Element count.
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A safetensors file, mapped and validated.
public final class SafetensorsFile: Sendable {
    /// Largest header accepted (the reference MAX_HEADER_SIZE).
    public static let maxHeaderBytes = 100_000_000

    /// The file's path.
    public let path: String
    /// Tensors sorted by data offset.
    public let tensors: [SafetensorsTensorInfo]
    /// The `__metadata__` string map.
    public let metadata: [String: String]
    private let index: [String: Int]
    private let dataStart: Int
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
        let n = try r.read(UInt64.self, "header length")
        guard n <= UInt64(Self.maxHeaderBytes) else {
            throw FormatError(
                .outOfBounds, path: path, field: "header length",
                "\(n) bytes exceeds the 100 MB limit; not a safetensors file?")
        }
        guard n <= UInt64(r.remaining) else {
            throw FormatError(
                .truncated, path: path, field: "header length",
                "declares \(n) header bytes but the file has \(r.remaining) after the length; truncated")
        }
        let headerBytes = try r.readBytes(Int(n), "header")
        dataStart = 8 + Int(n)
        let header: JSONValue
        do {
            header = try JSONValue.parse(headerBytes, maxDepth: 8)
        } catch {
            throw FormatError(.badMagic, path: path, field: "header", "is not valid JSON (\(error))")
        }
        guard let object = header.objectValue else {
            throw FormatError(
                .badMagic, path: path, field: "header", "must be a JSON object, found \(header.kindDescription)")
        }
        var metadata: [String: String] = [:]
        var tensors: [SafetensorsTensorInfo] = []
        for (name, entry) in object.members {
            if name == "__metadata__" {
                guard let m = entry.objectValue else {
                    throw FormatError(.invalidValue, path: path, field: "__metadata__", "must be an object of strings")
                }
                for (k, v) in m.members {
                    guard let s = v.stringValue else {
                        throw FormatError(
                            .invalidValue, path: path, field: "__metadata__.\(k)",
                            "must be a string, found \(v.kindDescription)")
                    }
                    metadata[k] = s
                }
                continue
            }
            tensors.append(try Self.parseEntry(name, entry, path: path))
        }
        tensors.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var expected = 0
        for t in tensors {
            guard t.begin == expected else {
                throw FormatError(
                    .conflict, path: path, field: "tensor '\(t.name)'",
                    t.begin < expected
                        ? "data [\(t.begin), \(t.end)) overlaps the previous tensor"
                        : "data starts at \(t.begin) leaving a hole after \(expected); tensors must tile the buffer")
            }
            expected = t.end
        }
        guard dataStart + expected == file.count else {
            throw FormatError(
                dataStart + expected > file.count ? .truncated : .invalidValue, path: path,
                "tensor data should end at byte \(dataStart + expected) but the file has \(file.count) bytes"
                    + (dataStart + expected > file.count ? " (truncated)" : " (trailing bytes are not allowed)"))
        }
        self.tensors = tensors
        self.metadata = metadata
        var index: [String: Int] = [:]
        for (i, t) in tensors.enumerated() { index[t.name] = i }
        self.index = index
    }

    private static func parseEntry(_ name: String, _ entry: JSONValue, path: String) throws(FormatError)
        -> SafetensorsTensorInfo
    {
        let field = "tensor '\(name)'"
        guard let o = entry.objectValue else {
            throw FormatError(
                .invalidValue, path: path, field: field, "must be an object with dtype, shape and data_offsets")
        }
        guard let dtypeName = o["dtype"]?.stringValue else {
            throw FormatError(.missing, path: path, field: "\(field).dtype", "missing or not a string")
        }
        guard let dtype = SafetensorsDType(rawValue: dtypeName) else {
            throw FormatError(.unsupported, path: path, field: "\(field).dtype", "unknown dtype \"\(dtypeName)\"")
        }
        guard let shapeValues = o["shape"]?.arrayValue else {
            throw FormatError(.missing, path: path, field: "\(field).shape", "missing or not an array")
        }
        var shape: [Int] = []
        var elements = 1
        for v in shapeValues {
            guard case .integer(let d) = v, d >= 0, d < Int64(1) << 48 else {
                throw FormatError(
                    .invalidValue, path: path, field: "\(field).shape", "dimensions must be non-negative integers")
            }
            shape.append(Int(d))
            let (p, overflow) = elements.multipliedReportingOverflow(by: Int(d))
            guard !overflow, p < Int(1) << 52 else {
                throw FormatError(.outOfBounds, path: path, field: "\(field).shape", "element count overflows")
            }
            elements = p
        }
        guard let offsets = o["data_offsets"]?.arrayValue, offsets.count == 2,
            case .integer(let begin) = offsets[0], case .integer(let end) = offsets[1], begin >= 0, end >= begin
        else {
            throw FormatError(
                .invalidValue, path: path, field: "\(field).data_offsets", "must be [begin, end] with 0 ≤ begin ≤ end")
        }
        let bits = elements * dtype.bits
        guard bits % 8 == 0 else {
            throw FormatError(
                .invalidValue, path: path, field: field,
                "\(elements) × \(dtype.bits) bits is not a whole number of bytes")
        }
        guard Int64(bits / 8) == end - begin else {
            throw FormatError(
                .invalidValue, path: path, field: field,
                "shape \(shape) of \(dtypeName) needs \(bits / 8) bytes but data_offsets span \(end - begin)")
        }
        return SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, begin: Int(begin), end: Int(end))
    }

    /// The tensor called `name`, or nil.
    public func tensor(named name: String) -> SafetensorsTensorInfo? { index[name].map { tensors[$0] } }

    /// The raw bytes of a tensor of this file, valid while this object lives (`storedTensor(named:)` gives a
    /// view that keeps it alive).
    public func data(for tensor: SafetensorsTensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: file.bytes[dataStart + tensor.begin..<dataStart + tensor.end])
    }

    /// The file size in bytes.
    public var fileSize: Int { file.count }
}

/// Builds a safetensors file the way the reference writer lays it out.
public struct SafetensorsWriter {
    private var entries: [(info: SafetensorsTensorInfo, bytes: [UInt8])] = []
    /// The `__metadata__` map.
    public var metadata: [String: String] = [:]

    /// An empty file.
    public init() {}

    /// Adds a tensor from raw little-endian bytes.
    public mutating func add(_ name: String, dtype: SafetensorsDType, shape: [Int], bytes: [UInt8]) {
        precondition(
            !entries.contains { $0.info.name == name } && name != "__metadata__", "duplicate safetensors tensor \(name)"
        )
        precondition(
            shape.reduce(1, *) * dtype.bits == bytes.count * 8, "safetensors tensor \(name): byte count mismatch")
        entries.append((SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, begin: 0, end: 0), bytes))
    }

    /// Adds an F32 tensor.
    public mutating func add(_ name: String, shape: [Int], floats: [Float]) {
        var bytes = [UInt8](repeating: 0, count: floats.count * 4)
        bytes.withUnsafeMutableBytes { raw in
            for (i, f) in floats.enumerated() {
                raw.storeBytes(of: f.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self)
            }
        }
        add(name, dtype: .F32, shape: shape, bytes: bytes)
    }

    /// The complete file: tensors ordered by dtype size (largest first) then name, header padded with spaces
    /// to a multiple of 8 so the data buffer is aligned.
    public func serialized() -> [UInt8] {
        let ordered = entries.sorted {
            $0.info.dtype.writeOrder != $1.info.dtype.writeOrder
                ? $0.info.dtype.writeOrder > $1.info.dtype.writeOrder : $0.info.name < $1.info.name
        }
        var header = JSONObject()
        if !metadata.isEmpty {
            header["__metadata__"] = .object(
                JSONObject(metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }))
        }
        var offset = 0
        for e in ordered {
            let end = offset + e.bytes.count
            header[e.info.name] = [
                "dtype": .string(e.info.dtype.rawValue), "shape": .array(e.info.shape.map { .integer(Int64($0)) }),
                "data_offsets": [.integer(Int64(offset)), .integer(Int64(end))],
            ]
            offset = end
        }
        var headerBytes = Array(JSONValue.object(header).serialized().utf8)
        headerBytes.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - headerBytes.count % 8) % 8))
        var out: [UInt8] = []
        out.reserveCapacity(8 + headerBytes.count + offset)
        withUnsafeBytes(of: UInt64(headerBytes.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: headerBytes)
        for e in ordered { out.append(contentsOf: e.bytes) }
        return out
    }

    /// Writes the file atomically.
    public func write(to path: String) throws(FormatError) {
        try writeFileAtomically(path, serialized())
    }
}
