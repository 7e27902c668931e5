import Foundation
import Testing
import TensorKernels
import TestSupport
import ModelFormats

func rawSafetensors(_ header: String, data: Int, paddingTo: Int = 1) -> [UInt8] {
    var h = Array(header.utf8)
    h += [UInt8](repeating: 0x20, count: (paddingTo - h.count % paddingTo) % paddingTo)
    var out: [UInt8] = []
    withUnsafeBytes(of: UInt64(h.count).littleEndian) { out += $0 }
    return out + h + [UInt8](repeating: 0, count: data)
}

func safetensorsError(_ bytes: [UInt8]) -> FormatError? {
    let path = writeTemporary(bytes, "t.safetensors")
    defer { try? FileManager.default.removeItem(atPath: path) }
    do {
        _ = try SafetensorsFile(path: path)
        return nil
    } catch {
        return error
    }
}

@Suite struct SafetensorsTests {
    static func floats(_ raw: UnsafeRawBufferPointer) -> [Float] {
        (0..<raw.count / 4).map { Float(bitPattern: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) }
    }

    @Test func readsTheReferenceWritersFile() throws {
        let f = try SafetensorsFile(path: Fixtures.path("safetensors/reference.safetensors"))
        #expect(f.metadata == ["format": "pt", "note": "made by safetensors 0.8.0"])
        let a = try #require(f.tensor(named: "q_proj.lora_A"))
        #expect(a.dtype == .F32 && a.shape == [2, 3])
        #expect(Self.floats(f.data(for: a)) == [0, 0.25, 0.5, 0.75, 1, 1.25])
        #expect(try #require(f.storedTensor(named: "bias")).floats() == [1, -1])
        #expect(f.tensor(named: "step")?.dtype == .I64)
        #expect(f.storedTensor(named: "step") == nil, "integer tensors are not float weights")
        #expect(f.tensor(named: "empty")?.shape == [0, 5])
    }

    /// Our writer lays the file out exactly as the reference writer does (order, header, padding).
    @Test func writerMatchesTheReferenceByteForByte() throws {
        var w = SafetensorsWriter()
        w.metadata = ["note": "made by safetensors 0.8.0", "format": "pt"]
        w.add("q_proj.lora_B", shape: [4, 1], floats: [-1.5, -0.5, 0.5, 1.5])
        w.add(
            "bias", dtype: .F16, shape: [2],
            bytes: [floatToHalf(1), floatToHalf(-1)].flatMap { h in withUnsafeBytes(of: h.littleEndian) { Array($0) } })
        w.add("q_proj.lora_A", shape: [2, 3], floats: [0, 0.25, 0.5, 0.75, 1, 1.25])
        w.add("empty", shape: [0, 5], floats: [])
        w.add("step", dtype: .I64, shape: [1], bytes: withUnsafeBytes(of: Int64(3).littleEndian) { Array($0) })
        let reference = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("safetensors/reference.safetensors")))
        #expect(w.serialized() == Array(reference))
    }

    @Test func acceptsWhatTheReferenceAccepts() {
        #expect(
            safetensorsError(
                rawSafetensors(
                    #"{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                    data: 8)) == nil, "any key order")
        #expect(
            safetensorsError(
                rawSafetensors(#"  {"s":{"dtype":"F32","shape":[],"data_offsets":[0,4],"extra":1}}"#, data: 4)) == nil,
            "leading space, scalar, extra field")
        #expect(safetensorsError(rawSafetensors(#"{}"#, data: 0)) == nil, "no tensors")
    }

    @Test(arguments: [
        (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8, FormatError.Code.conflict, "hole at the start"),
        (
            #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8, .conflict, "overlap"
        ),
        (
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            12, .conflict, "hole"
        ),
        (#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8, .invalidValue, "size mismatch"),
        (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 6, .invalidValue, "trailing bytes"),
        (#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8, .truncated, "short buffer"),
        (#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#, 1, .unsupported, "unknown dtype"),
        (#"{"__metadata__":{"n":1}}"#, 0, .invalidValue, "non-string metadata"),
        (#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, 4, .invalidValue, "negative dimension"),
        (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, 4, .invalidValue, "end before begin"),
        (#"[1,2]"#, 0, .badMagic, "not an object"),
        (#"{"a":1,"a":2}"#, 0, .badMagic, "duplicate key"),
        (
            #"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#, 4, .outOfBounds,
            "overflowing shape"
        ),
    ])
    func rejectsWhatTheReferenceRejects(header: String, data: Int, code: FormatError.Code, label: String) {
        #expect(safetensorsError(rawSafetensors(header, data: data))?.code == code, "\(label)")
    }

    @Test func rejectsOversizedAndTruncatedHeaders() {
        var huge: [UInt8] = []
        withUnsafeBytes(of: UInt64(100_000_001).littleEndian) { huge += $0 }
        #expect(safetensorsError(huge + [0x7B])?.code == .outOfBounds)
        var short: [UInt8] = []
        withUnsafeBytes(of: UInt64(50).littleEndian) { short += $0 }
        #expect(safetensorsError(short + Array("{}".utf8))?.code == .truncated)
        #expect(safetensorsError([1, 2, 3])?.code == .truncated)
        let valid = rawSafetensors(#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#, data: 4, paddingTo: 8)
        for length in 0..<valid.count {
            #expect(safetensorsError(Array(valid[0..<length])) != nil, "truncated to \(length)")
        }
    }
}

@Suite struct HFModelDirectoryTests {
    @Test func readsSingleAndShardedDirectoriesWithTheSameTensors() throws {
        let single = try HFModelDirectory(path: Fixtures.path("tiny-llama/a-hf"))
        let sharded = try HFModelDirectory(path: Fixtures.path("tiny-llama/a-hf-sharded"))
        #expect(sharded.files.count == 3)
        #expect(Set(single.tensorNames) == Set(sharded.tensorNames))
        #expect(single.config["hidden_size"]?.intValue == 32)
        for name in single.tensorNames {
            let a = try #require(single.storedTensor(named: name))
            let b = try #require(sharded.storedTensor(named: name))
            #expect(a.shape == b.shape && a.floats() == b.floats(), "\(name)")
        }
    }

    @Test func rejectsMissingConfigPickleWeightsAndEscapingShardNames() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(throws: FormatError.self) { try HFModelDirectory(path: dir.path) }
        try Data("{}".utf8).write(to: dir.appendingPathComponent("config.json"))
        try Data().write(to: dir.appendingPathComponent("pytorch_model.bin"))
        do {
            _ = try HFModelDirectory(path: dir.path)
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .unsupported && error.message.contains("safe_serialization"))
        }
        try Data(#"{"weight_map": {"x": "../../etc/passwd"}}"#.utf8).write(
            to: dir.appendingPathComponent("model.safetensors.index.json"))
        #expect { try HFModelDirectory(path: dir.path) } throws: { ($0 as? FormatError)?.field == "weight_map.x" }
    }

    @Test func rejectsAnIndexThatNamesATensorItsShardLacks() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try Fixtures.copy(["tiny-llama/a-hf/config.json", "tiny-llama/a-hf/model.safetensors"], to: dir)
        try Data(#"{"weight_map": {"model.norm.weight": "model.safetensors", "ghost": "model.safetensors"}}"#.utf8)
            .write(to: dir.appendingPathComponent("model.safetensors.index.json"))
        #expect { try HFModelDirectory(path: dir.path) } throws: { ($0 as? FormatError)?.field == "weight_map.ghost" }
    }
}
