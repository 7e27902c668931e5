import Foundation
import Support
import Testing
import Wire

@Suite struct MessageCodecTests {
    static let assign = Message(
        .assign, ["job": "job-1", "assignment": 7, "step": 3, "rows": 2],
        tensors: [
            Tensor(name: "parameters", floats: [1.5, -2, 0.25]), Tensor(name: "tokens", ints: [1, 2, 3, 4]),
            Tensor(name: "targets", ints: [2, 3, 4, -1]), Tensor(name: "positions", ints: [0, 1, 0, 1]),
            Tensor(name: "starts", ints: [0, 0, 2, 2]),
        ])

    @Test func roundTripsEveryFieldAndTensor() throws {
        let frames = Self.assign.encode()
        #expect(frames[0] == [0x43, 0x52, Wire.version, MessageType.assign.rawValue])
        #expect(frames.count == 7)
        let back = try Message.decode(frames)
        #expect(back == Self.assign)
        #expect(back.tensor("parameters")?.floats() == [1.5, -2, 0.25])
        #expect(back.tensor("targets")?.ints() == [2, 3, 4, -1])
        #expect(back.int("assignment") == 7 && back.string("job") == "job-1")
    }

    /// Evaluations (forward only) and a submission with held-out data round-trip; an evaluation result carries no
    /// tensor, and a submission may not carry held-out data under another name.
    @Test func evaluationsAndHeldOutDataRoundTrip() throws {
        let evaluate = Message(
            .evaluate, ["job": "job-1", "assignment": 9, "step": 10, "rows": 2], tensors: Self.assign.tensors)
        #expect(try Message.decode(evaluate.encode()) == evaluate)
        let result = Message(
            .evalResult, ["job": "job-1", "assignment": 9, "step": 10, "loss": 12.5, "tokens": 40, "seconds": 0.2])
        #expect(try Message.decode(result.encode()) == result)
        var withGradient = result
        withGradient.tensors = [Tensor(name: "gradient", floats: [1])]
        #expect(throws: WireError.self) { try Message.decode(withGradient.encode()) }
        let data = Tensor(name: "data", dtype: .u8, shape: [2], bytes: [123, 125])
        let submit = Message(
            .submit, ["spec": "steps: 1", "data_name": "d.jsonl", "validation_name": "held.jsonl"],
            tensors: [data, Tensor(name: "validation", dtype: .u8, shape: [2], bytes: [123, 125])])
        #expect(try Message.decode(submit.encode()) == submit)
        var renamed = submit
        renamed.tensors[1].name = "extra"
        #expect(throws: WireError.self) { try Message.decode(renamed.encode()) }
    }

    @Test func bf16TensorsDecodeToFloats() {
        let t = Tensor(name: "x", dtype: .bf16, shape: [2], bytes: [0x80, 0x3F, 0x00, 0xC0])  // 1.0, -2.0
        #expect(t.floats() == [1, -2])
    }

    @Test func everyMessageTypeHasADistinctNameAndRoundTripsItsSchema() throws {
        #expect(Set(MessageType.allCases.map(\.name)).count == MessageType.allCases.count)
        #expect(Set(MessageType.allCases.map(\.rawValue)).count == MessageType.allCases.count)
    }

    private func expectRefused(_ frames: [[UInt8]], _ kind: WireError.Kind, _ comment: Comment? = nil) {
        do {
            _ = try Message.decode(frames)
            Issue.record("decoded a bad message: \(comment?.rawValue ?? "")")
        } catch {
            #expect(error.kind == kind, "\(error)")
        }
    }

    @Test func refusesBadHeaders() {
        let good = Self.assign.encode()
        expectRefused([], .header)
        expectRefused([[0x43, 0x52, 1]] + good.dropFirst(), .header, "short header")
        expectRefused([[0x47, 0x45, 0x54, 0x20]] + good.dropFirst(), .header, "HTTP GET")
        expectRefused([[0x43, 0x52, 99, 5]] + good.dropFirst(), .version)
        expectRefused([[0x43, 0x52, Wire.version, 200]] + good.dropFirst(), .unknownType)
        expectRefused([good[0]], .metadata, "no metadata frame")
    }

    @Test func refusesBadMetadata() {
        let h = Self.assign.encode()[0]
        expectRefused([h, Array("not json".utf8)], .metadata)
        expectRefused([h, Array("[1,2]".utf8)], .metadata)
        expectRefused([h, Array("{\"a\":1,\"a\":2}".utf8)], .metadata, "duplicate key")
        expectRefused([h, [UInt8](repeating: 0x20, count: Wire.maxMetadataBytes + 1)], .oversize)
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        expectRefused([h, Array("{\"x\":\(deep)}".utf8)], .metadata, "nesting")
    }

    @Test func refusesSchemaViolations() {
        func frames(_ m: JSONObject, _ type: MessageType = .hello) -> [[UInt8]] { Message(type, m).encode() }
        let hello: JSONObject = ["name": "w", "cores": 2, "memory": 1024, "gflops": 10.5, "threads": 2]
        #expect(throws: Never.self) { try Message.decode(frames(hello)) }
        var missing = hello
        missing["cores"] = nil
        expectRefused(frames(missing), .schema)
        var wrongKind = hello
        wrongKind["cores"] = "two"
        expectRefused(frames(wrongKind), .schema)
        var outOfRange = hello
        outOfRange["cores"] = 0
        expectRefused(frames(outOfRange), .schema)
        var huge = hello
        huge["gflops"] = 1e30
        expectRefused(frames(huge), .schema)
        var long = hello
        long["name"] = .string(String(repeating: "x", count: 300))
        expectRefused(frames(long), .schema)
        // The wrong tensors for the type.
        var assign = Self.assign
        assign.tensors.removeLast()
        expectRefused(assign.encode(), .schema)
    }

    @Test func refusesTensorFramesThatDisagreeWithTheirDeclaration() {
        var frames = Self.assign.encode()
        frames[2].removeLast()
        expectRefused(frames, .tensor, "a frame one byte short")
        frames = Self.assign.encode()
        frames.append([1, 2, 3])
        expectRefused(frames, .tensor, "an undeclared frame")
        // A declared shape whose byte count overflows or exceeds the limit.
        let h = Self.assign.encode()[0]
        let huge: JSONValue = [
            "tensors": [["name": "parameters", "dtype": "f32", "shape": [.integer(1 << 40), .integer(1 << 40)]]]
        ]
        expectRefused([h, Array(huge.serialized().utf8), []], .oversize)
        let badType: JSONValue = ["tensors": [["name": "p", "dtype": "f64", "shape": [1]]]]
        expectRefused([h, Array(badType.serialized().utf8), [0, 0, 0, 0, 0, 0, 0, 0]], .tensor)
        let negative: JSONValue = ["tensors": [["name": "p", "dtype": "f32", "shape": [-1]]]]
        expectRefused([h, Array(negative.serialized().utf8), []], .tensor)
        expectRefused([h, Array("{}".utf8)] + [[UInt8]](repeating: [], count: Wire.maxTensors + 1), .oversize)
    }

    /// Random bytes and random mutations of valid messages never crash the decoder.
    @Test func survivesFuzzedFrames() {
        var rng = SystemRandomNumberGenerator()
        let base = Self.assign.encode()
        for _ in 0..<2000 {
            var frames = base
            let f = Int.random(in: 0..<frames.count, using: &rng)
            if !frames[f].isEmpty {
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    frames[f][Int.random(in: 0..<frames[f].count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
            }
            if Bool.random(using: &rng) { frames[f] = Array(frames[f].prefix(Int.random(in: 0...frames[f].count))) }
            _ = try? Message.decode(frames)
        }
    }
}

@Suite struct BlobDownloadTests {
    func chunk(_ hash: String, _ offset: Int, total: Int, _ bytes: [UInt8]) -> Message {
        Message(
            .chunk, ["blob": .string(hash), "offset": .integer(Int64(offset)), "total": .integer(Int64(total))],
            tensors: [Tensor(name: "data", dtype: .u8, shape: [bytes.count], bytes: bytes)])
    }

    @Test func requestsWithinItsCreditAndReassemblesOutOfOrderChunks() throws {
        let blob = (0..<10).map { UInt8($0) }
        var d = BlobDownload(hash: "h", total: 10, credit: 2, chunkBytes: 3)
        var r = d.requests()
        #expect(r.map { $0.int("offset") } == [0, 3], "no more than the credit outstanding")
        #expect(d.requests().isEmpty)
        // The second chunk first: held back until the first arrives.
        #expect(try d.accept(chunk("h", 3, total: 10, Array(blob[3..<6]))).isEmpty)
        #expect(d.requests().isEmpty, "an early chunk still occupies credit")
        #expect(try d.accept(chunk("h", 0, total: 10, Array(blob[0..<3]))) == Array(blob[0..<6]))
        r = d.requests()
        #expect(r.map { $0.int("offset") } == [6, 9] && r.map { $0.int("length") } == [3, 1])
        #expect(try d.accept(chunk("h", 6, total: 10, Array(blob[6..<9]))) == Array(blob[6..<9]))
        #expect(try d.accept(chunk("h", 9, total: 10, [9])) == [9])
        #expect(d.isComplete && d.received == 10)
    }

    @Test func refusesChunksNeverAskedForAndResumesFromThePartialSize() throws {
        var d = BlobDownload(hash: "h", total: 10, received: 6, credit: 4, chunkBytes: 3)
        #expect(d.requests().map { $0.int("offset") } == [6, 9], "resumes after the bytes already kept")
        #expect(throws: WireError.self) { try d.accept(chunk("h", 0, total: 10, [0, 1, 2])) }
        #expect(throws: WireError.self) { try d.accept(chunk("other", 6, total: 10, [6, 7, 8])) }
        #expect(throws: WireError.self) { try d.accept(chunk("h", 6, total: 10, [6, 7])) }
        d.reset()
        #expect(d.requests().map { $0.int("offset") } == [6, 9], "after a lost connection it asks again")
    }
}

@Suite struct CompressionTests {
    @Test func eachEncodingRoundTripsWithinItsPrecisionAndErrorFeedbackCarriesTheRest() {
        let values = (0..<1000).map { Float(sin(Double($0) * 0.37)) * (1 + Float($0 % 7)) }
        for kind in Compression.allCases {
            let tensors = values.withUnsafeBufferPointer { kind.encode($0, name: "d") }
            #expect(tensors.map(\.name) == kind.tensorNames("d"))
            let back = kind.decode(tensors, name: "d", count: values.count)!
            let worst = zip(values, back).map { abs($0 - $1) / max(abs($0), 1e-3) }.max()!
            switch kind {
            case .none: #expect(back == values)
            case .bf16: #expect(worst <= 1.0 / 256)
            case .int8:
                // Per block, the error is at most half a step of absmax/127.
                for b in 0..<(values.count + 63) / 64 {
                    let block = b * 64..<min(values.count, b * 64 + 64)
                    let step = block.map { abs(values[$0]) }.max()! / 127
                    #expect(block.allSatisfy { abs(values[$0] - back[$0]) <= step / 2 + 1e-6 })
                }
            }
            // Error feedback: sending (x + e) and keeping the new error, the sum of what arrived over many rounds
            // approaches the sum of what was meant (the error never exceeds one round's).
            var error = [Float](repeating: 0, count: values.count)
            var sent = [Float](repeating: 0, count: values.count)
            for _ in 0..<20 {
                let corrected = zip(values, error).map { $0 + $1 }
                let got = kind.decode(
                    corrected.withUnsafeBufferPointer { kind.encode($0, name: "d") }, name: "d", count: values.count)!
                for i in 0..<values.count {
                    error[i] = corrected[i] - got[i]
                    sent[i] += got[i]
                }
            }
            for i in 0..<values.count { #expect(abs(sent[i] - 20 * values[i]) <= abs(error[i]) + 1e-3) }
        }
    }

    @Test func refusesMismatchedTensors() {
        let t = [Float](repeating: 1, count: 100).withUnsafeBufferPointer { Compression.int8.encode($0, name: "d") }
        #expect(Compression.int8.decode(t, name: "d", count: 99) == nil)
        #expect(Compression.int8.decode([t[0]], name: "d", count: 100) == nil)
        #expect(Compression.bf16.decode(t, name: "d", count: 100) == nil)
        let bad = [t[0], Tensor(name: "d.scale", floats: [Float.nan, 1])]
        #expect(Compression.int8.decode(bad, name: "d", count: 100) == nil)
    }
}
