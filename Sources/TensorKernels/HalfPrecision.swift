// HalfPrecision: IEEE binary16 and bfloat16 conversions, bit-exact with ggml (Docs/FORMATS.md §2).

/// Decodes an IEEE-754 binary16 value given as its bits.
@inline(__always)
public func halfToFloat(_ bits: UInt16) -> Float { Float(Float16(bitPattern: bits)) }

/// Encodes a Float as IEEE-754 binary16 bits, rounding to nearest even.
@inline(__always)
public func floatToHalf(_ value: Float) -> UInt16 { Float16(value).bitPattern }

/// Decodes bfloat16 bits: the high half of a Float.
@inline(__always)
public func bfloat16ToFloat(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

/// Encodes a Float as bfloat16, rounding to nearest even; NaN stays a quiet NaN (ggml's rule).
@inline(__always)
public func floatToBFloat16(_ value: Float) -> UInt16 {
    let u = value.bitPattern
    if value.isNaN { return UInt16(truncatingIfNeeded: (u >> 16) | 64) }
    return UInt16(truncatingIfNeeded: (u &+ 0x7fff &+ ((u >> 16) & 1)) >> 16)
}

/// The reference decoder for binary16: sign, exponent and mantissa taken apart by hand.
public func halfToFloatNaive(_ bits: UInt16) -> Float {
    let sign: Float = bits & 0x8000 != 0 ? -1 : 1
    let exponent = Int((bits >> 10) & 0x1f)
    let mantissa = Float(bits & 0x3ff)
    switch exponent {
    case 0: return sign * mantissa * Float(sign: .plus, exponent: -24, significand: 1)
    case 31: return mantissa == 0 ? sign * .infinity : .nan
    default: return sign * (1 + mantissa / 1024) * Float(sign: .plus, exponent: exponent - 15, significand: 1)
    }
}
