// FloatBuffer: one owned, 64-byte-aligned allocation of Float, the storage under every tensor in Cairn.
// Tensors are plain metadata (offset, shape) over such a buffer; views are offsets, never copies.

/// An owned, fixed-size, 64-byte-aligned buffer of `Float`, zero-initialised.
///
/// Kernels take raw pointers; a `FloatBuffer` only owns memory and hands out pointers to it. The caller keeps
/// the buffer alive while a pointer is in use (`withExtendedLifetime` where the compiler cannot see it).
public final class FloatBuffer: @unchecked Sendable {
    /// Number of `Float` elements.
    public let count: Int
    /// Start of the storage; valid for `count` elements while the buffer lives.
    public let pointer: UnsafeMutablePointer<Float>

    /// Allocates `count` zeroed floats.
    ///
    /// - Parameter count: The number of elements; must not be negative.
    public init(count: Int) {
        precondition(count >= 0, "FloatBuffer: negative count \(count)")
        self.count = count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(1, count) * MemoryLayout<Float>.stride, alignment: 64)
        pointer = raw.bindMemory(to: Float.self, capacity: max(1, count))
        pointer.initialize(repeating: 0, count: count)
    }

    /// Allocates a buffer holding a copy of `values`.
    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit { UnsafeMutableRawPointer(pointer).deallocate() }

    /// The whole storage as a buffer pointer.
    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: pointer, count: count) }

    /// Element access, bounds-checked in debug builds.
    public subscript(index: Int) -> Float {
        get {
            assert(index >= 0 && index < count, "FloatBuffer index \(index) out of 0..<\(count)")
            return pointer[index]
        }
        set {
            assert(index >= 0 && index < count, "FloatBuffer index \(index) out of 0..<\(count)")
            pointer[index] = newValue
        }
    }

    /// Sets every element to zero.
    public func zero() { pointer.update(repeating: 0, count: count) }

    /// A copy of the contents as an array.
    public var array: [Float] { Array(buffer) }
}
