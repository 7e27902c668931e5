// Mutation: the byte-level mutations of cairn-fuzz's fallback loop (no coverage feedback): bit flips, special
// integers, insertions, deletions, repeats and splices of corpus inputs, a few at a time.

/// A small seeded generator (SplitMix64).
public struct MutationRandom: Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { n <= 0 ? 0 : Int(next() % UInt64(n)) }
}

/// One to four mutations of `input`; the result is at most 1 MiB.
public func mutate(_ input: [UInt8], corpus: [[UInt8]], rng: inout MutationRandom) -> [UInt8] {
    var d = input
    let interesting: [UInt64] = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, UInt64.max, 1 << 40]
    for _ in 0...rng.below(4) {
        switch rng.below(7) {
        case 0 where !d.isEmpty:
            d[rng.below(d.count)] ^= UInt8(1 << rng.below(8))
        case 1 where !d.isEmpty:
            d[rng.below(d.count)] = UInt8(truncatingIfNeeded: rng.next())
        case 2 where d.count >= 8:
            // A special integer, little-endian, over 1, 2, 4 or 8 bytes.
            let width = [1, 2, 4, 8][rng.below(4)]
            let at = rng.below(d.count - width + 1)
            let v = interesting[rng.below(interesting.count)]
            for k in 0..<width { d[at + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) }
        case 3:
            let at = rng.below(d.count + 1)
            d.insert(contentsOf: (0..<(1 + rng.below(16))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: at)
        case 4 where !d.isEmpty:
            let at = rng.below(d.count)
            d.removeSubrange(at..<min(d.count, at + 1 + rng.below(32)))
        case 5 where !d.isEmpty:
            let at = rng.below(d.count)
            let chunk = Array(d[at..<min(d.count, at + 1 + rng.below(64))])
            d.insert(contentsOf: chunk, at: rng.below(d.count + 1))
        default:
            let other = corpus[rng.below(corpus.count)]
            guard !other.isEmpty else { continue }
            let from = rng.below(other.count)
            let piece = other[from..<min(other.count, from + 1 + rng.below(256))]
            d.insert(contentsOf: piece, at: rng.below(d.count + 1))
        }
    }
    return d.count > 1 << 20 ? Array(d.prefix(1 << 20)) : d
}
