// Dequantize: GGUF tensor bytes to Float, for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K.
//
// Block layouts and formulas: Docs/FORMATS.md §2 (ggml-common.h structs, ggml-quants.c dequantize_row_*).
// Blocks are packed back to back along a row; 4-bit types store element j in the low nibble of qs[j] and
// element j+16 in the high nibble (not adjacent pairs). The fast path works block by block across cores;
// `dequantizeNaive` computes each element independently from its index, straight from the spec, and the
// two are tested against each other and against gguf-py's decoder (Tests/Fixtures/quant).

import CKernels

#if _endian(big)
    #error("Cairn reads little-endian tensor data in place; big-endian hosts are not supported")
#endif

/// Converts `count` elements of `type` at `source` to Float.
///
/// - Parameters:
///   - type: A type with `isDequantizable`.
///   - source: `type.byteCount(elements: count)` bytes; any alignment.
///   - destination: `count` floats.
///   - count: A multiple of `type.blockSize`.
public func dequantize(
    _ type: GGMLType, from source: UnsafeRawPointer, to destination: UnsafeMutablePointer<Float>, count: Int
) {
    precondition(type.isDequantizable, "dequantize: \(type) is not supported")
    precondition(count % type.blockSize == 0, "dequantize: \(count) elements is not a whole number of \(type) blocks")
    if type == .f32 {
        // Stored little-endian, as this host is: a copy.
        UnsafeMutableRawPointer(destination).copyMemory(from: source, byteCount: count * 4)
        return
    }
    let blocks = count / type.blockSize
    let bs = type.blockSize
    let bb = type.blockBytes
    Parallel.forRanges(blocks, grain: max(1, 16384 / bs)) { range in
        let from = source + range.lowerBound * bb
        let to = destination + range.lowerBound * bs
        switch type {
        // The types of common quantised bases, vectorised in CKernels.
        case .q8_0: cairn_dequantize_q8_0(from, to, range.count)
        case .q4_0: cairn_dequantize_q4_0(from, to, range.count)
        case .q4_1: cairn_dequantize_q4_1(from, to, range.count)
        case .q5_0: cairn_dequantize_q5_0(from, to, range.count)
        case .q5_1: cairn_dequantize_q5_1(from, to, range.count)
        case .q4_K: cairn_dequantize_q4_k(from, to, range.count)
        case .q5_K: cairn_dequantize_q5_k(from, to, range.count)
        case .q6_K: cairn_dequantize_q6_k(from, to, range.count)
        default:
            for i in range {
                dequantizeBlock(type, source + i * bb, destination + i * bs)
            }
        }
    }
}

@inline(__always)
private func f16(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
    halfToFloat(p.loadUnaligned(fromByteOffset: offset, as: UInt16.self).littleEndian)
}

@inline(__always)
private func dequantizeBlock(_ type: GGMLType, _ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
    switch type {
    case .f32:
        y[0] = Float(bitPattern: p.loadUnaligned(as: UInt32.self).littleEndian)
    case .f16:
        y[0] = f16(p, 0)
    case .bf16:
        y[0] = bfloat16ToFloat(p.loadUnaligned(as: UInt16.self).littleEndian)
    case .q8_0:
        let d = f16(p, 0)
        let qs = p.advanced(by: 2).assumingMemoryBound(to: Int8.self)
        for j in 0..<32 { y[j] = Float(qs[j]) * d }
    case .q4_0:
        let d = f16(p, 0)
        let qs = p.advanced(by: 2).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            y[j] = Float(Int(qs[j] & 0xF) - 8) * d
            y[j + 16] = Float(Int(qs[j] >> 4) - 8) * d
        }
    case .q4_1:
        let d = f16(p, 0)
        let m = f16(p, 2)
        let qs = p.advanced(by: 4).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            y[j] = Float(qs[j] & 0xF) * d + m
            y[j + 16] = Float(qs[j] >> 4) * d + m
        }
    case .q5_0:
        let d = f16(p, 0)
        let qh = p.loadUnaligned(fromByteOffset: 2, as: UInt32.self).littleEndian
        let qs = p.advanced(by: 6).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            let h0 = UInt8((qh >> UInt32(j)) & 1) << 4
            let h1 = UInt8((qh >> UInt32(j + 16)) & 1) << 4
            y[j] = Float(Int((qs[j] & 0xF) | h0) - 16) * d
            y[j + 16] = Float(Int((qs[j] >> 4) | h1) - 16) * d
        }
    case .q5_1:
        let d = f16(p, 0)
        let m = f16(p, 2)
        let qh = p.loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian
        let qs = p.advanced(by: 8).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            let h0 = UInt8((qh >> UInt32(j)) & 1) << 4
            let h1 = UInt8((qh >> UInt32(j + 16)) & 1) << 4
            y[j] = Float((qs[j] & 0xF) | h0) * d + m
            y[j + 16] = Float((qs[j] >> 4) | h1) * d + m
        }
    case .q4_K:
        let d = f16(p, 0)
        let dmin = f16(p, 2)
        let scales = p.advanced(by: 4).assumingMemoryBound(to: UInt8.self)
        let qs = p.advanced(by: 16).assumingMemoryBound(to: UInt8.self)
        for chunk in 0..<4 {
            let (sc1, m1) = scaleMinK4(2 * chunk, scales)
            let (sc2, m2) = scaleMinK4(2 * chunk + 1, scales)
            let d1 = d * Float(sc1), o1 = dmin * Float(m1)
            let d2 = d * Float(sc2), o2 = dmin * Float(m2)
            let q = qs + 32 * chunk
            let out = y + 64 * chunk
            for l in 0..<32 {
                out[l] = d1 * Float(q[l] & 0xF) - o1
                out[l + 32] = d2 * Float(q[l] >> 4) - o2
            }
        }
    case .q5_K:
        let d = f16(p, 0)
        let dmin = f16(p, 2)
        let scales = p.advanced(by: 4).assumingMemoryBound(to: UInt8.self)
        let qh = p.advanced(by: 16).assumingMemoryBound(to: UInt8.self)
        let qs = p.advanced(by: 48).assumingMemoryBound(to: UInt8.self)
        for chunk in 0..<4 {
            let (sc1, m1) = scaleMinK4(2 * chunk, scales)
            let (sc2, m2) = scaleMinK4(2 * chunk + 1, scales)
            let d1 = d * Float(sc1), o1 = dmin * Float(m1)
            let d2 = d * Float(sc2), o2 = dmin * Float(m2)
            let bitLow = UInt8(1) << UInt8(2 * chunk)
            let bitHigh = UInt8(2) << UInt8(2 * chunk)
            let q = qs + 32 * chunk
            let out = y + 64 * chunk
            for l in 0..<32 {
                let hiLow: UInt8 = qh[l] & bitLow != 0 ? 16 : 0
                let hiHigh: UInt8 = qh[l] & bitHigh != 0 ? 16 : 0
                out[l] = d1 * Float((q[l] & 0xF) + hiLow) - o1
                out[l + 32] = d2 * Float((q[l] >> 4) + hiHigh) - o2
            }
        }
    case .q6_K:
        let ql = p.assumingMemoryBound(to: UInt8.self)
        let qh = p.advanced(by: 128).assumingMemoryBound(to: UInt8.self)
        let sc = p.advanced(by: 192).assumingMemoryBound(to: Int8.self)
        let d = f16(p, 208)
        for half in 0..<2 {
            let L = ql + 64 * half
            let H = qh + 32 * half
            let S = sc + 8 * half
            let out = y + 128 * half
            for l in 0..<32 {
                let s = l / 16
                let q1 = Int(L[l] & 0xF | ((H[l] >> 0) & 3) << 4) - 32
                let q2 = Int(L[l + 32] & 0xF | ((H[l] >> 2) & 3) << 4) - 32
                let q3 = Int(L[l] >> 4 | ((H[l] >> 4) & 3) << 4) - 32
                let q4 = Int(L[l + 32] >> 4 | ((H[l] >> 6) & 3) << 4) - 32
                out[l] = d * Float(S[s]) * Float(q1)
                out[l + 32] = d * Float(S[s + 2]) * Float(q2)
                out[l + 64] = d * Float(S[s + 4]) * Float(q3)
                out[l + 96] = d * Float(S[s + 6]) * Float(q4)
            }
        }
    default:
        preconditionFailure("dequantize: \(type) is not supported")
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` packed into 12 bytes.
@inline(__always)
private func scaleMinK4(_ j: Int, _ q: UnsafePointer<UInt8>) -> (UInt8, UInt8) {
    if j < 4 { return (q[j] & 63, q[j + 4] & 63) }
    return ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
}

/// The reference for `dequantize`: each element decoded on its own from its index. Same arguments.
public func dequantizeNaive(
    _ type: GGMLType, from source: UnsafeRawPointer, to destination: UnsafeMutablePointer<Float>, count: Int
) {
    let bytes = source.assumingMemoryBound(to: UInt8.self)
    func u8(_ i: Int) -> Int { Int(bytes[i]) }
    func u16(_ i: Int) -> UInt16 { UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8 }
    func half(_ i: Int) -> Float { halfToFloatNaive(u16(i)) }
    func nibble(_ base: Int, _ j: Int) -> Int { j < 16 ? u8(base + j) & 0xF : u8(base + j - 16) >> 4 }
    func bit(_ base: Int, _ n: Int) -> Int { (u8(base + n / 8) >> (n % 8)) & 1 }
    func scaleMin(_ base: Int, _ j: Int) -> (Float, Float) {
        if j < 4 { return (Float(u8(base + j) & 63), Float(u8(base + j + 4) & 63)) }
        let sc = (u8(base + j + 4) & 0xF) | ((u8(base + j - 4) >> 6) << 4)
        let m = (u8(base + j + 4) >> 4) | ((u8(base + j) >> 6) << 4)
        return (Float(sc), Float(m))
    }
    for e in 0..<count {
        let block = e / type.blockSize
        let j = e % type.blockSize
        let b = block * type.blockBytes
        let value: Float
        switch type {
        case .f32:
            value = Float(bitPattern: UInt32(u16(b)) | UInt32(u16(b + 2)) << 16)
        case .f16:
            value = half(b)
        case .bf16:
            value = Float(bitPattern: UInt32(u16(b)) << 16)
        case .q8_0:
            value = Float(Int8(bitPattern: bytes[b + 2 + j])) * half(b)
        case .q4_0:
            value = Float(nibble(b + 2, j) - 8) * half(b)
        case .q4_1:
            value = Float(nibble(b + 4, j)) * half(b) + half(b + 2)
        case .q5_0:
            value = Float((nibble(b + 6, j) | bit(b + 2, j) << 4) - 16) * half(b)
        case .q5_1:
            value = Float(nibble(b + 8, j) | bit(b + 4, j) << 4) * half(b) + half(b + 2)
        case .q4_K, .q5_K:
            // 8 sub-blocks of 32; sub-block s uses byte group s/2 of qs, low nibble for even s.
            let s = j / 32
            let l = j % 32
            let qsBase = b + (type == .q4_K ? 16 : 48)
            let byte = u8(qsBase + 32 * (s / 2) + l)
            var q = s % 2 == 0 ? byte & 0xF : byte >> 4
            if type == .q5_K { q += ((u8(b + 16 + l) >> s) & 1) * 16 }
            let (sc, m) = scaleMin(b + 4, s)
            value = half(b) * sc * Float(q) - half(b + 2) * m
        case .q6_K:
            // Element j: half n = j/128, then quarter q = (j%128)/32 and l = j%32.
            let n = j / 128
            let quarter = (j % 128) / 32
            let l = j % 32
            let lowByte = u8(b + 64 * n + l + (quarter % 2) * 32)
            let low = quarter < 2 ? lowByte & 0xF : lowByte >> 4
            let high = (u8(b + 128 + 32 * n + l) >> (2 * quarter)) & 3
            let scale = Float(Int8(bitPattern: bytes[b + 192 + 8 * n + l / 16 + 2 * quarter]))
            value = half(b + 208) * scale * Float((low | high << 4) - 32)
        default:
            preconditionFailure("dequantizeNaive: \(type) is not supported")
        }
        destination[e] = value
    }
}
