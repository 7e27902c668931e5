// Compression of fp32 vectors for the wire: bf16 (round to nearest even), or int8 in blocks of 64 with one fp32
// scale per block (absmax/127). Lossy; senders keep the error and add it to the next vector they send (error
// feedback), so nothing is lost over rounds, only delayed.

/// How a vector travels.
public enum Compression: String, Sendable, CaseIterable {
    case none, bf16, int8

    /// Elements per int8 scale.
    public static let blockSize = 64

    /// The tensors that carry `values` under `name`.
    public func encode(_ values: UnsafeBufferPointer<Float>, name: String) -> [Tensor] {
        let n = values.count
        switch self {
        case .none:
            return [Tensor(name: name, floats: values)]
        case .bf16:
            var bytes = [UInt8](repeating: 0, count: 2 * n)
            for i in 0..<n {
                let h = Self.bfloat16(values[i])
                bytes[2 * i] = UInt8(h & 0xFF)
                bytes[2 * i + 1] = UInt8(h >> 8)
            }
            return [Tensor(name: name, dtype: .bf16, shape: [n], bytes: bytes)]
        case .int8:
            let blocks = (n + Self.blockSize - 1) / Self.blockSize
            var q = [UInt8](repeating: 0, count: n)
            var scales = [Float](repeating: 0, count: blocks)
            for b in 0..<blocks {
                let range = b * Self.blockSize..<min(n, (b + 1) * Self.blockSize)
                var maxAbs: Float = 0
                for i in range where values[i].isFinite { maxAbs = max(maxAbs, abs(values[i])) }
                let scale = maxAbs / 127
                scales[b] = scale
                guard scale > 0 else { continue }
                for i in range {
                    let v = values[i].isFinite ? (values[i] / scale).rounded() : 0
                    q[i] = UInt8(bitPattern: Int8(max(-127, min(127, v))))
                }
            }
            return [
                Tensor(name: name, dtype: .i8, shape: [n], bytes: q),
                Tensor(name: name + ".scale", floats: scales),
            ]
        }
    }

    /// Tensor names `encode` produces, in order.
    public func tensorNames(_ name: String) -> [String] { self == .int8 ? [name, name + ".scale"] : [name] }

    /// The values back, or nil when the tensors do not fit this encoding of `count` elements.
    public func decode(_ tensors: [Tensor], name: String, count n: Int) -> [Float]? {
        guard let t = tensors.first(where: { $0.name == name }), t.count == n else { return nil }
        switch self {
        case .none:
            return t.dtype == .f32 ? t.floats() : nil
        case .bf16:
            return t.dtype == .bf16 ? t.floats() : nil
        case .int8:
            let blocks = (n + Self.blockSize - 1) / Self.blockSize
            guard t.dtype == .i8, let s = tensors.first(where: { $0.name == name + ".scale" }), s.dtype == .f32,
                s.count == blocks
            else { return nil }
            let scales = s.floats()
            guard scales.allSatisfy({ $0.isFinite && $0 >= 0 }) else { return nil }
            return (0..<n).map { Float(Int8(bitPattern: t.bytes[$0])) * scales[$0 / Self.blockSize] }
        }
    }

    /// Round to nearest even bf16.
    static func bfloat16(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if x.isNaN { return 0x7FC0 }
        let rounding = UInt32(0x7FFF) + ((bits >> 16) & 1)
        return UInt16((bits &+ rounding) >> 16)
    }
}
