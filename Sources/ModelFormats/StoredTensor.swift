// StoredTensor: one tensor as a file stores it (type, shape, bytes), whatever the file format, so model
// loaders look weights up by name without caring whether they came from GGUF or safetensors.

import TensorKernels

/// A tensor's bytes as stored in a mapped file. It keeps the file that owns the bytes alive, so the bytes
/// stay valid as long as the tensor value exists.
public struct StoredTensor: @unchecked Sendable {
    /// The name in its file.
    public var name: String
    /// The element type (safetensors F32/F16/BF16 map to the ggml types of the same bytes).
    public var type: GGMLType
    /// Dimensions, outermost first (row-major). A weight matrix is (out, in).
    public var shape: [Int]
    /// The raw bytes.
    public var bytes: UnsafeRawBufferPointer
    /// The object whose lifetime keeps `bytes` valid (the mapped file).
    let owner: AnyObject

    /// A tensor over bytes owned by `owner`.
    public init(name: String, type: GGMLType, shape: [Int], bytes: UnsafeRawBufferPointer, owner: AnyObject) {
        self.name = name
        self.type = type
        self.shape = shape
        self.bytes = bytes
        self.owner = owner
    }

    /// Elements in the tensor.
    public var elementCount: Int { shape.reduce(1, *) }

    /// Converts the tensor to Float into `destination` (elementCount floats).
    public func dequantize(into destination: UnsafeMutablePointer<Float>) {
        withExtendedLifetime(owner) {
            TensorKernels.dequantize(type, from: bytes.baseAddress!, to: destination, count: elementCount)
        }
    }

    /// The tensor as a Float array.
    public func floats() -> [Float] {
        [Float](unsafeUninitializedCapacity: elementCount) { buffer, count in
            if elementCount > 0 { dequantize(into: buffer.baseAddress!) }
            count = elementCount
        }
    }
}

/// Something that holds named tensors: a GGUF file, a safetensors file, an HF model directory.
public protocol TensorStore: Sendable {
    /// Where the tensors come from, for messages.
    var sourceDescription: String { get }
    /// All tensor names, in storage order.
    var tensorNames: [String] { get }
    /// The tensor called `name`, or nil.
    func storedTensor(named name: String) -> StoredTensor?
}

extension GGUFFile: TensorStore {
    public var sourceDescription: String { path }
    public var tensorNames: [String] { tensors.map(\.name) }
    public func storedTensor(named name: String) -> StoredTensor? {
        guard let t = tensor(named: name) else { return nil }
        return StoredTensor(name: name, type: t.type, shape: t.rowMajorShape, bytes: data(for: t), owner: self)
    }
}

extension SafetensorsFile: TensorStore {
    public var sourceDescription: String { path }
    public var tensorNames: [String] { tensors.map(\.name) }
    /// The tensor, or nil if absent. Dtypes other than F32/F16/BF16 come back as nil from here; check
    /// `tensor(named:)` to tell the two apart.
    public func storedTensor(named name: String) -> StoredTensor? {
        guard let t = tensor(named: name), let type = t.dtype.ggmlType else { return nil }
        return StoredTensor(name: name, type: type, shape: t.shape, bytes: data(for: t), owner: self)
    }
}
