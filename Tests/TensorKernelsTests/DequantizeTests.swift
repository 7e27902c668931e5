import Testing
import ModelFormats
import TensorKernels
import TestSupport

@Suite struct DequantizeTests {
    static let fixture = try! SafetensorsFile(path: Fixtures.path("quant/blocks.safetensors"))
    static let types: [GGMLType] = [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q4_K, .q5_K, .q6_K]

    /// Random blocks decoded by gguf-py (llama.cpp's Python reference): our fast and naive decoders must
    /// produce the same floats, bit for bit.
    @Test(arguments: types)
    func fastAndNaiveMatchGGUFPyExactly(type: GGMLType) throws {
        let bytes = try #require(Self.fixture.tensor(named: "\(type).bytes"))
        let values = try #require(Self.fixture.storedTensor(named: "\(type).values")).floats()
        let raw = Self.fixture.data(for: bytes)
        let fast = FloatBuffer(count: values.count)
        let naive = FloatBuffer(count: values.count)
        dequantize(type, from: raw.baseAddress!, to: fast.pointer, count: values.count)
        dequantizeNaive(type, from: raw.baseAddress!, to: naive.pointer, count: values.count)
        #expect(fast.array.map(\.bitPattern) == values.map(\.bitPattern), "fast \(type)")
        #expect(naive.array.map(\.bitPattern) == values.map(\.bitPattern), "naive \(type)")
    }

    @Test func halfPrecisionDecodersAgreeOnAllBitPatterns() {
        for bits in 0...UInt16.max {
            let a = halfToFloat(bits)
            let b = halfToFloatNaive(bits)
            if a.isNaN {
                #expect(b.isNaN)
            } else {
                #expect(a.bitPattern == b.bitPattern, "bits \(bits)")
            }
        }
    }

    @Test func bfloat16RoundsToNearestEven() {
        #expect(floatToBFloat16(1) == 0x3F80)
        #expect(floatToBFloat16(Float(bitPattern: 0x3F80_8000)) == 0x3F80, "a tie rounds to even")
        #expect(floatToBFloat16(Float(bitPattern: 0x3F81_8000)) == 0x3F82, "a tie rounds to even")
        #expect(floatToBFloat16(Float(bitPattern: 0x3F80_8001)) == 0x3F81)
        #expect(bfloat16ToFloat(floatToBFloat16(.nan)).isNaN)
    }

    @Test func typeTableIsConsistent() {
        #expect(GGMLType.q4_K.byteCount(elements: 512) == 288)
        #expect(GGMLType.q8_0.byteCount(elements: 33) == nil)
        #expect(GGMLType(name: "q6_k") == .q6_K)
        #expect(GGMLType.allCases.allSatisfy { GGMLType(name: $0.description) == $0 })
    }
}

@Suite struct AdamWReferenceTests {
    /// Three steps of torch.optim.AdamW (lr 1e-2, wd 0.1) from the same start and gradients.
    @Test func matchesTorchAdamW() throws {
        let f = try SafetensorsFile(path: Fixtures.path("adamw.safetensors"))
        func tensor(_ name: String) throws -> [Float] { try #require(f.storedTensor(named: name)).floats() }
        let p = FloatBuffer(try tensor("initial"))
        let m = FloatBuffer(count: p.count)
        let v = FloatBuffer(count: p.count)
        let settings = AdamWSettings(learningRate: 1e-2, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0.1)
        for step in 1...3 {
            let g = FloatBuffer(try tensor("grad\(step)"))
            adamWUpdate(
                parameters: p.pointer, gradients: g.pointer, m: m.pointer, v: v.pointer, count: p.count, step: step,
                settings: settings)
            expectClose(p.array, try tensor("after\(step)"), tolerance: 1e-6, "step \(step)")
        }
    }
}
