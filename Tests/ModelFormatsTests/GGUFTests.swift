import Foundation
import Testing
import TensorKernels
import TestSupport
import ModelFormats

/// Writes raw, possibly invalid, GGUF bytes field by field.
struct RawGGUF {
    var bytes: [UInt8] = []
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func string(_ s: String) {
        u64(UInt64(s.utf8.count))
        bytes += Array(s.utf8)
    }
    mutating func header(version: UInt32 = 3, tensors: UInt64, kvs: UInt64) {
        bytes += Array("GGUF".utf8)
        u32(version)
        u64(tensors)
        u64(kvs)
    }
    mutating func tensorInfo(_ name: String, ne: [UInt64], type: UInt32, offset: UInt64) {
        string(name)
        u32(UInt32(ne.count))
        for d in ne { u64(d) }
        u32(type)
        u64(offset)
    }
    mutating func pad(to alignment: Int = 32) {
        bytes += [UInt8](repeating: 0, count: (alignment - bytes.count % alignment) % alignment)
    }
}

/// One scratch directory for this test process; each file gets a unique name.
let scratchDirectory = Fixtures.temporaryDirectory("cairn-formats")

func writeTemporary(_ bytes: [UInt8], _ name: String = "t.gguf") -> String {
    let path = scratchDirectory.appendingPathComponent(UUID().uuidString + "-" + name).path
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
    return path
}

func ggufError(_ bytes: [UInt8]) -> FormatError? {
    let path = writeTemporary(bytes)
    defer { try? FileManager.default.removeItem(atPath: path) }
    do {
        _ = try GGUFFile(path: path)
        return nil
    } catch {
        return error
    }
}

@Suite struct GGUFTests {
    static func sampleWriter() -> GGUFWriter {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("llama.block_count", .uint32(2))
        w.set("llama.rope.freq_base", .float32(10000))
        w.set("tokenizer.ggml.tokens", .array(.string, ["a", "b", "<|im_end|>"].map(GGUFValue.string)))
        w.set("flags", .array(.int32, [.int32(-1), .int32(2)]))
        w.set("ok", .bool(true))
        w.addTensor(name: "w", ne: [3, 2], floats: [1, 2, 3, 4, 5, 6])
        w.addTensor(
            name: "half", ne: [5], type: .f16,
            bytes: (0..<5).flatMap { i in withUnsafeBytes(of: floatToHalf(Float(i)).littleEndian) { Array($0) } })
        w.addTensor(name: "last", ne: [1], floats: [7])
        return w
    }

    @Test func writerOutputReadsBack() throws {
        let path = writeTemporary(Self.sampleWriter().serialized())
        let f = try GGUFFile(path: path)
        #expect(f.version == 3 && f.alignment == 32)
        #expect(try f.metadata.string("general.architecture") == "llama")
        #expect(try f.metadata.int("llama.block_count") == 2)
        #expect(try f.metadata.double("llama.rope.freq_base") == 10000)
        #expect(try f.metadata.strings("tokenizer.ggml.tokens") == ["a", "b", "<|im_end|>"])
        #expect(try f.metadata.ints("flags") == [-1, 2])
        #expect(try f.metadata.bool("ok") == true)
        #expect(f.tensors.map(\.name) == ["w", "half", "last"])
        #expect(try #require(f.storedTensor(named: "w")).shape == [2, 3])
        #expect(try #require(f.storedTensor(named: "w")).floats() == [1, 2, 3, 4, 5, 6])
        #expect(try #require(f.storedTensor(named: "half")).floats() == [0, 1, 2, 3, 4])
        #expect(f.dataOffset % 32 == 0)
        #expect(f.tensor(named: "half")!.offset == 32)
        #expect(f.fileSize == f.dataOffset + 64 + 4, "the last tensor is not padded")
        #expect(throws: FormatError.self) { try f.metadata.string("llama.block_count") }
    }

    /// A file written by gguf-py (llama.cpp's Python writer) reads with the expected metadata and tensors.
    @Test func readsAFileWrittenByGGUFPy() throws {
        let f = try GGUFFile(path: Fixtures.path("tiny-llama/a-q8_0.gguf"))
        #expect(try f.metadata.string("general.architecture") == "llama")
        #expect(try f.metadata.int("llama.attention.head_count_kv") == 2)
        let q = try #require(f.tensor(named: "blk.0.attn_q.weight"))
        #expect(q.type == .q8_0 && q.ne == [32, 32])
        #expect(try #require(f.tensor(named: "blk.1.ffn_down.weight")).ne == [64, 32])
        #expect(f.tensor(named: "output.weight") == nil, "tied embeddings")
    }

    @Test func everyTruncationIsAnErrorNotACrash() {
        let bytes = Self.sampleWriter().serialized()
        for length in 0..<bytes.count {
            #expect(ggufError(Array(bytes[0..<length])) != nil, "truncated to \(length) bytes")
        }
    }

    /// Random single-byte corruptions: each one either still parses or is rejected; none crashes.
    @Test func randomCorruptionsNeverCrash() {
        let bytes = Self.sampleWriter().serialized()
        var rng = SeededGenerator(seed: 99)
        var rejected = 0
        for _ in 0..<400 {
            var b = bytes
            for _ in 0..<1 + Int(rng.next() % 3) {
                b[Int(rng.next() % UInt64(b.count))] = UInt8(truncatingIfNeeded: rng.next())
            }
            if ggufError(b) != nil { rejected += 1 }
        }
        #expect(rejected > 0)
    }

    @Test func rejectsWrongMagicAndVersions() {
        #expect(ggufError(Array("GGML".utf8) + [UInt8](repeating: 0, count: 20))?.code == .badMagic)
        for (version, code) in [
            (UInt32(1), FormatError.Code.unsupportedVersion), (4, .unsupportedVersion),
            (0x0300_0000, .unsupportedVersion),
        ] {
            var r = RawGGUF()
            r.header(version: version, tensors: 0, kvs: 0)
            let e = ggufError(r.bytes)
            #expect(e?.code == code, "version \(version)")
            if version == 0x0300_0000 { #expect(e?.message.contains("big-endian") == true) }
        }
    }

    @Test func rejectsAbsurdCountsAndLengthsBeforeAllocating() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: UInt64.max / 2)
        #expect(ggufError(r.bytes)?.code == .outOfBounds)

        r = RawGGUF()
        r.header(tensors: 1 << 40, kvs: 0)
        #expect(ggufError(r.bytes)?.code == .outOfBounds)

        r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.u64(1 << 40)  // key length
        r.bytes += [UInt8](repeating: 0x61, count: 16)
        #expect(ggufError(r.bytes)?.code == .outOfBounds)

        r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.string("big.array")
        r.u32(GGUFValueType.array.rawValue)
        r.u32(GGUFValueType.uint64.rawValue)
        r.u64(1 << 33)
        #expect(ggufError(r.bytes)?.field == "big.array")
    }

    @Test func rejectsBadMetadata() {
        func file(_ build: (inout RawGGUF) -> Void) -> FormatError? {
            var r = RawGGUF()
            build(&r)
            return ggufError(r.bytes)
        }
        let nested = file { r in
            r.header(tensors: 0, kvs: 1)
            r.string("nested")
            r.u32(9)
            r.u32(9)
            r.u64(1)
        }
        #expect(nested?.message.contains("nested arrays") == true)
        let unknownType = file { r in
            r.header(tensors: 0, kvs: 1)
            r.string("k")
            r.u32(13)
        }
        #expect(unknownType?.field == "k")
        let duplicate = file { r in
            r.header(tensors: 0, kvs: 2)
            for _ in 0..<2 {
                r.string("k")
                r.u32(4)
                r.u32(1)
            }
        }
        #expect(duplicate?.code == .conflict)
        let emptyKey = file { r in
            r.header(tensors: 0, kvs: 1)
            r.string("")
            r.u32(4)
            r.u32(1)
        }
        #expect(emptyKey?.message == "empty key")
        for (type, value) in [(UInt32(4), UInt32(48)), (4, 0), (5, 32)] {
            let badAlignment = file { r in
                r.header(tensors: 0, kvs: 1)
                r.string("general.alignment")
                r.u32(type)
                r.u32(value)
            }
            #expect(badAlignment?.field == "general.alignment", "type \(type) value \(value)")
        }
    }

    @Test func rejectsBadTensorInfos() {
        func oneTensor(
            name: String = "t", ne: [UInt64] = [32], type: UInt32 = 0, offset: UInt64 = 0, dataBytes: Int = 128
        ) -> FormatError? {
            var r = RawGGUF()
            r.header(tensors: 1, kvs: 0)
            r.tensorInfo(name, ne: ne, type: type, offset: offset)
            r.pad()
            r.bytes += [UInt8](repeating: 0, count: dataBytes)
            return ggufError(r.bytes)
        }
        #expect(oneTensor() == nil, "the baseline is valid")
        #expect(oneTensor(name: String(repeating: "n", count: 64))?.message.contains("limit is 63") == true)
        #expect(oneTensor(ne: [1, 1, 1, 1, 1])?.message.contains("dimensions") == true)
        #expect(oneTensor(type: 4)?.code == .unsupported, "removed type id")
        #expect(oneTensor(type: 99)?.code == .unsupported)
        #expect(oneTensor(ne: [31], type: GGMLType.q8_0.rawValue)?.message.contains("block size") == true)
        #expect(oneTensor(offset: 16)?.message.contains("multiple of 32") == true)
        #expect(oneTensor(offset: 32, dataBytes: 256)?.code == .conflict, "a gap before the first tensor")
        #expect(oneTensor(dataBytes: 100)?.code == .truncated)
        #expect(oneTensor(ne: [UInt64(1) << 62])?.code == .outOfBounds)
        #expect(oneTensor(type: GGMLType.q8_1.rawValue)?.code == .invalidValue)

        var r = RawGGUF()
        r.header(tensors: 2, kvs: 0)
        r.tensorInfo("a", ne: [8], type: 0, offset: 0)
        r.tensorInfo("a", ne: [8], type: 0, offset: 32)
        r.pad()
        r.bytes += [UInt8](repeating: 0, count: 64)
        #expect(ggufError(r.bytes)?.code == .conflict, "duplicate name")

        r = RawGGUF()
        r.header(tensors: 2, kvs: 0)
        r.tensorInfo("a", ne: [16], type: 0, offset: 0)
        r.tensorInfo("b", ne: [8], type: 0, offset: 32)  // overlaps a, which takes 64 bytes
        r.pad()
        r.bytes += [UInt8](repeating: 0, count: 128)
        #expect(ggufError(r.bytes)?.message.contains("contiguous") == true)
    }

    @Test func errorsNameTheFileAndField() {
        var r = RawGGUF()
        r.header(tensors: 1, kvs: 0)
        r.tensorInfo("blk.0.attn_q.weight", ne: [32], type: 0, offset: 0)
        let path = writeTemporary(r.bytes, "model.gguf")
        do {
            _ = try GGUFFile(path: path)
            Issue.record("expected an error")
        } catch {
            #expect(error.description.hasPrefix(path + ": tensor 'blk.0.attn_q.weight'"))
        }
    }
}
