// GGUFWriter: writes GGUF v3 files that llama.cpp's reader accepts: metadata in insertion order, tensor
// infos, zero padding to the alignment, then tensor data contiguous in info order, each padded to the
// alignment (Docs/FORMATS.md §1.4). The file is written atomically.

import TensorKernels

/// Builds a GGUF v3 file in memory order and writes it atomically.
public struct GGUFWriter {
    /// A tensor to write.
    public struct Tensor {
        /// Name, under 64 bytes.
        public var name: String
        /// Dimensions in ggml order (row length first).
        public var ne: [Int]
        /// Element type.
        public var type: GGMLType
        /// Exactly `type.byteCount(elements:)` bytes.
        public var bytes: [UInt8]
    }

    /// Data alignment; written as `general.alignment` when not 32.
    public var alignment = 32
    /// Metadata in write order.
    public private(set) var metadata: [(key: String, value: GGUFValue)] = []
    /// Tensors in write order.
    public private(set) var tensors: [Tensor] = []

    /// An empty file.
    public init() {}

    /// Sets a metadata value, replacing an earlier one with the same key in place.
    public mutating func set(_ key: String, _ value: GGUFValue) {
        if let i = metadata.firstIndex(where: { $0.key == key }) {
            metadata[i].value = value
        } else {
            metadata.append((key, value))
        }
    }

    /// Adds a tensor from raw bytes.
    ///
    /// - Parameters:
    ///   - name: Unique, under 64 bytes.
    ///   - ne: ggml dimension order (for a row-major (out, in) matrix: `[in, out]`).
    ///   - type: The element type of `bytes`.
    public mutating func addTensor(name: String, ne: [Int], type: GGMLType, bytes: [UInt8]) {
        precondition(name.utf8.count < GGUFFile.maxNameBytes, "GGUF tensor name too long: \(name)")
        precondition(!tensors.contains { $0.name == name }, "duplicate GGUF tensor \(name)")
        precondition(ne.count >= 1 && ne.count <= 4, "GGUF tensors have 1 to 4 dimensions")
        precondition(
            type.byteCount(elements: ne.reduce(1, *)) == bytes.count, "GGUF tensor \(name): byte count mismatch")
        tensors.append(Tensor(name: name, ne: ne, type: type, bytes: bytes))
    }

    /// Adds an F32 tensor.
    public mutating func addTensor(name: String, ne: [Int], floats: [Float]) {
        var bytes = [UInt8](repeating: 0, count: floats.count * 4)
        bytes.withUnsafeMutableBytes { raw in
            for (i, f) in floats.enumerated() {
                raw.storeBytes(of: f.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self)
            }
        }
        addTensor(name: name, ne: ne, type: .f32, bytes: bytes)
    }

    /// The complete file contents.
    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func string(_ s: String) {
            u64(UInt64(s.utf8.count))
            out.append(contentsOf: s.utf8)
        }
        func value(_ v: GGUFValue) {
            switch v {
            case .uint8(let x): out.append(x)
            case .int8(let x): out.append(UInt8(bitPattern: x))
            case .uint16(let x): withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) }
            case .int16(let x): withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) }
            case .uint32(let x): u32(x)
            case .int32(let x): u32(UInt32(bitPattern: x))
            case .uint64(let x): u64(x)
            case .int64(let x): u64(UInt64(bitPattern: x))
            case .float32(let x): u32(x.bitPattern)
            case .float64(let x): u64(x.bitPattern)
            case .bool(let x): out.append(x ? 1 : 0)
            case .string(let s): string(s)
            case .array(let t, let items):
                u32(t.rawValue)
                u64(UInt64(items.count))
                for item in items { value(item) }
            }
        }
        var entries = metadata
        if alignment != 32, !entries.contains(where: { $0.key == "general.alignment" }) {
            entries.insert(("general.alignment", .uint32(UInt32(alignment))), at: 0)
        }
        out.append(contentsOf: Array("GGUF".utf8))
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(entries.count))
        for (k, v) in entries {
            string(k)
            u32(v.type.rawValue)
            value(v)
        }
        var offset = 0
        for t in tensors {
            string(t.name)
            u32(UInt32(t.ne.count))
            for d in t.ne { u64(UInt64(d)) }
            u32(t.type.rawValue)
            u64(UInt64(offset))
            offset += (t.bytes.count + alignment - 1) / alignment * alignment
        }
        out.append(contentsOf: [UInt8](repeating: 0, count: (alignment - out.count % alignment) % alignment))
        for (i, t) in tensors.enumerated() {
            out.append(contentsOf: t.bytes)
            if i < tensors.count - 1 {
                out.append(
                    contentsOf: [UInt8](repeating: 0, count: (alignment - t.bytes.count % alignment) % alignment))
            }
        }
        return out
    }

    /// Writes the file atomically.
    ///
    /// - Throws: `FormatError` `.io`.
    public func write(to path: String) throws(FormatError) {
        try writeFileAtomically(path, serialized())
    }
}
