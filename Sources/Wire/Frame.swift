// Wire: the cluster protocol, as bytes. Pure: no sockets, no clocks.
//
// A message is a list of frames (ZeroMQ multipart):
//   frame 0   header, 4 bytes: 0x43 0x52 ("CR"), protocol version, message type
//   frame 1   metadata: one compact JSON object, at most `Wire.maxMetadataBytes`
//   frame 2…  raw tensors, little-endian; metadata["tensors"] declares each one's name, dtype and shape, in
//             frame order, and a frame's length must equal what its declaration implies
// Decoding validates all of it and the message type's required fields (`MessageType.schema`), so a handler
// only ever sees well-formed messages. Docs/PROTOCOL.md describes the message table and state machines.

import Support

/// Protocol constants.
public enum Wire {
    /// The protocol version this build speaks.
    public static let version: UInt8 = 1
    /// The first two header bytes.
    public static let magic: (UInt8, UInt8) = (0x43, 0x52)
    /// Header frame size.
    public static let headerBytes = 4
    /// Largest metadata frame.
    public static let maxMetadataBytes = 256 << 10
    /// Largest tensor frame (a SmolLM2-135M adapter at rank 64 over every projection is ~80 MB in fp32).
    public static let maxTensorBytes = 1 << 30
    /// Most tensor frames in one message.
    public static let maxTensors = 16
    /// Largest dimension count of a tensor.
    public static let maxRank = 4
    /// Heartbeat interval, both ways.
    public static let heartbeatMilliseconds = 1000
    /// A peer silent for this many intervals is gone.
    public static let heartbeatLiveness = 5
    /// Blob chunk size, and how many chunks a fetcher may have outstanding (its credit).
    public static let chunkBytes = 1 << 20
    public static let chunkCredit = 8
    /// Version of the job spec a `job` message carries (its settings YAML and how a worker runs them). A worker that
    /// gets a newer one says so (`error`, code `version`) instead of guessing; raise it whenever a spec would run
    /// differently on an older worker.
    public static let jobSpecVersion = 1
}

/// Element types of tensor frames.
public enum DType: String, Sendable, CaseIterable {
    case f32, bf16, i32, i8, u8

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f32, .i32: 4
        case .bf16: 2
        case .i8, .u8: 1
        }
    }
}

/// One raw tensor of a message.
public struct Tensor: Sendable, Equatable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    /// Little-endian elements, `shape.product × dtype.size` bytes.
    public var bytes: [UInt8]

    public init(name: String, dtype: DType, shape: [Int], bytes: [UInt8]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    /// An fp32 vector.
    public init(name: String, floats: UnsafeBufferPointer<Float>) {
        self.init(
            name: name, dtype: .f32, shape: [floats.count], bytes: Array(UnsafeRawBufferPointer(floats)))
    }

    /// An fp32 vector.
    public init(name: String, floats: [Float]) {
        self = floats.withUnsafeBufferPointer { Tensor(name: name, floats: $0) }
    }

    /// An int32 vector.
    public init(name: String, ints: [Int32]) {
        self.init(
            name: name, dtype: .i32, shape: [ints.count], bytes: ints.withUnsafeBytes { Array($0) })
    }

    /// Elements.
    public var count: Int { shape.reduce(1, *) }

    /// The elements as fp32 (f32 and bf16 tensors).
    public func floats() -> [Float] {
        switch dtype {
        case .f32:
            return [Float](unsafeUninitializedCapacity: count) { out, n in
                bytes.withUnsafeBytes { UnsafeMutableRawBufferPointer(out).copyMemory(from: $0) }
                n = count
            }
        case .bf16:
            return bytes.withUnsafeBytes { raw in
                (0..<count).map {
                    Float(bitPattern: UInt32(raw.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self)) << 16)
                }
            }
        default:
            return []
        }
    }

    /// The elements as int32 (i32 tensors).
    public func ints() -> [Int32] {
        guard dtype == .i32 else { return [] }
        return bytes.withUnsafeBytes { raw in
            (0..<count).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self) }
        }
    }
}

/// Why a message was refused. The receiver drops the message, logs this, and counts it against the peer.
public struct WireError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case header, version, unknownType, metadata, tensor, oversize, schema
    }
    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { "\(kind.rawValue): \(message)" }
}

/// A decoded, validated message.
public struct Message: Sendable, Equatable {
    public var type: MessageType
    public var metadata: JSONObject
    public var tensors: [Tensor]

    public init(_ type: MessageType, _ metadata: JSONObject = JSONObject(), tensors: [Tensor] = []) {
        self.type = type
        self.metadata = metadata
        self.tensors = tensors
    }

    /// The frames of this message.
    public func encode() -> [[UInt8]] {
        var meta = metadata
        meta["tensors"] = nil
        if !tensors.isEmpty {
            meta["tensors"] = .array(
                tensors.map {
                    [
                        "name": .string($0.name), "dtype": .string($0.dtype.rawValue),
                        "shape": .array($0.shape.map { .integer(Int64($0)) }),
                    ]
                })
        }
        var frames: [[UInt8]] = [[Wire.magic.0, Wire.magic.1, Wire.version, type.rawValue]]
        frames.append(Array(JSONValue.object(meta).serialized().utf8))
        for t in tensors { frames.append(t.bytes) }
        return frames
    }

    /// Decodes and validates frames.
    ///
    /// - Throws: `WireError` naming what is wrong; nothing is trusted before this returns.
    public static func decode(_ frames: [[UInt8]]) throws(WireError) -> Message {
        guard let header = frames.first, header.count == Wire.headerBytes, header[0] == Wire.magic.0,
            header[1] == Wire.magic.1
        else { throw WireError(.header, "frame 0 is not a Cairn header (expected 4 bytes starting with \"CR\")") }
        guard header[2] == Wire.version else {
            throw WireError(.version, "protocol version \(header[2]); this build speaks version \(Wire.version)")
        }
        guard let type = MessageType(rawValue: header[3]) else {
            throw WireError(.unknownType, "message type \(header[3]) is not known to protocol version \(Wire.version)")
        }
        guard frames.count >= 2 else { throw WireError(.metadata, "\(type): no metadata frame") }
        guard frames[1].count <= Wire.maxMetadataBytes else {
            throw WireError(
                .oversize, "\(type): metadata frame of \(frames[1].count) bytes (limit \(Wire.maxMetadataBytes))")
        }
        guard frames.count - 2 <= Wire.maxTensors else {
            throw WireError(.oversize, "\(type): \(frames.count - 2) tensor frames (limit \(Wire.maxTensors))")
        }
        let metadata: JSONObject
        do {
            guard let object = try JSONValue.parse(frames[1], maxDepth: 16).objectValue else {
                throw WireError(.metadata, "\(type): metadata is not a JSON object")
            }
            metadata = object
        } catch let e as WireError {
            throw e
        } catch {
            throw WireError(.metadata, "\(type): metadata is not valid JSON (\(error))")
        }
        let tensors = try decodeTensors(type: type, metadata: metadata, frames: frames.dropFirst(2))
        var message = Message(type, metadata, tensors: tensors)
        message.metadata["tensors"] = nil
        try type.schema.validate(message)
        return message
    }

    private static func decodeTensors(type: MessageType, metadata: JSONObject, frames: ArraySlice<[UInt8]>)
        throws(WireError) -> [Tensor]
    {
        let declared = metadata["tensors"]?.arrayValue ?? []
        if metadata["tensors"] != nil, metadata["tensors"]?.arrayValue == nil {
            throw WireError(.tensor, "\(type): \"tensors\" must be an array")
        }
        guard declared.count == frames.count else {
            throw WireError(.tensor, "\(type): \(declared.count) tensors declared, \(frames.count) frames sent")
        }
        var out: [Tensor] = []
        for (i, (d, bytes)) in zip(declared, frames).enumerated() {
            guard let o = d.objectValue, let name = o["name"]?.stringValue, name.utf8.count <= 128,
                let dtype = o["dtype"]?.stringValue.flatMap(DType.init(rawValue:)),
                let dims = o["shape"]?.arrayValue, dims.count <= Wire.maxRank
            else {
                throw WireError(
                    .tensor,
                    "\(type): tensor \(i) needs name (≤128 bytes), dtype (\(DType.allCases.map(\.rawValue))) "
                        + "and shape (≤\(Wire.maxRank) dims)")
            }
            var shape: [Int] = []
            var elements = 1
            for dim in dims {
                guard let n = dim.intValue, n >= 0 else {
                    throw WireError(.tensor, "\(type): tensor \(name) has a bad dimension \(dim)")
                }
                guard n <= Wire.maxTensorBytes else {
                    throw WireError(.oversize, "\(type): tensor \(name) is larger than \(Wire.maxTensorBytes) bytes")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: n)
                guard !overflow, product <= Wire.maxTensorBytes else {
                    throw WireError(.oversize, "\(type): tensor \(name) is larger than \(Wire.maxTensorBytes) bytes")
                }
                elements = product
                shape.append(n)
            }
            let expected = elements * dtype.size
            guard expected <= Wire.maxTensorBytes else {
                throw WireError(.oversize, "\(type): tensor \(name) is larger than \(Wire.maxTensorBytes) bytes")
            }
            guard bytes.count == expected else {
                throw WireError(
                    .tensor,
                    "\(type): tensor \(name) \(dtype.rawValue)\(shape) needs \(expected) bytes, frame has \(bytes.count)"
                )
            }
            out.append(Tensor(name: name, dtype: dtype, shape: shape, bytes: bytes))
        }
        return out
    }

    // MARK: Field access (after validation, required fields are present with the right kind)

    public func string(_ key: String) -> String { metadata[key]?.stringValue ?? "" }
    public func optionalString(_ key: String) -> String? { metadata[key]?.stringValue }
    public func int(_ key: String) -> Int { metadata[key]?.intValue ?? 0 }
    public func optionalInt(_ key: String) -> Int? { metadata[key]?.intValue }
    public func double(_ key: String) -> Double { metadata[key]?.doubleValue ?? 0 }
    public func bool(_ key: String) -> Bool { metadata[key]?.boolValue ?? false }
    public func tensor(_ name: String) -> Tensor? { tensors.first { $0.name == name } }
}
