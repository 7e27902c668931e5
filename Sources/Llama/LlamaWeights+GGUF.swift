// Writing a model back to GGUF: the weights (with any adapters already merged into them) in GGUF naming and
// order, Q/K rows permuted back to llama.cpp's interleaved layout for llama bases (Docs/FORMATS.md §4), metadata copied
// from the source file (tokenizer, chat template, hyperparameters) with the file type updated. Matrices are
// written as F32, F16 or Q8_0 (ggml's reference rounding: d = amax/127, q = round(x/d), d stored as f16); norms
// stay F32, as llama.cpp's converter writes them.

import ModelFormats
import TensorKernels

/// Element types a fused model can be written in (q8_0 in GGUF only).
public enum FusedType: String, Sendable, CaseIterable {
    case f32, f16, bf16, q8_0

    var ggml: GGMLType {
        switch self {
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        case .q8_0: .q8_0
        }
    }

    /// `general.file_type` (llama_ftype): all F32 = 0, mostly F16 = 1, mostly Q8_0 = 7, mostly BF16 = 32.
    var fileType: UInt32 {
        switch self {
        case .f32: 0
        case .f16: 1
        case .bf16: 32
        case .q8_0: 7
        }
    }
}

extension LlamaWeights {
    /// The weights as a GGUF file, with `metadata` copied over (`general.file_type` set for `type`).
    public func gguf(metadata: GGUFMetadata, type: FusedType) -> GGUFWriter {
        var w = GGUFWriter()
        for (key, value) in metadata.entries where key != "general.alignment" { w.set(key, value) }
        w.set("general.file_type", .uint32(type.fileType))
        let permuted = LlamaConfig.permutedArchitectures.contains(config.architecture)
        Self.forEachTensor(config) { spec in
            var values = self.values(spec.name)!
            if permuted, let heads = spec.permutationHeads {
                values = LoRAAdapter.permuteRows(
                    values, heads: heads, rows: spec.shape[0], columns: spec.shape.count == 2 ? spec.shape[1] : 1)
            }
            let ne = Array(spec.shape.reversed())
            let matrix = spec.shape.count == 2
            let chosen: FusedType = !matrix ? .f32 : (type == .q8_0 && spec.shape[1] % 32 != 0 ? .f16 : type)
            w.addTensor(name: spec.ggufName, ne: ne, type: chosen.ggml, bytes: Self.encode(values, as: chosen))
            return true
        }
        // RoPE frequency factors live in tensors: LongRoPE's pair, or llama3's divisors.
        func factors(_ name: String, _ values: [Double]) {
            let floats = values.map(Float.init)
            w.addTensor(name: name, ne: [floats.count], type: .f32, bytes: Self.encode(floats, as: .f32))
        }
        if let long = config.ropeLongFactors, let short = config.ropeFactors {
            factors("rope_factors_long.weight", long)
            factors("rope_factors_short.weight", short)
        } else if let divisors = config.ropeFactors {
            factors("rope_freqs.weight", divisors)
        }
        return w
    }

    /// Little-endian bytes of `values` in a type.
    static func encode(_ values: [Float], as type: FusedType) -> [UInt8] {
        switch type {
        case .f32:
            return values.withUnsafeBytes { Array($0) }
        case .f16, .bf16:
            var out = [UInt8](repeating: 0, count: 2 * values.count)
            for (i, x) in values.enumerated() {
                let h = type == .f16 ? floatToHalf(x) : floatToBFloat16(x)
                out[2 * i] = UInt8(h & 0xFF)
                out[2 * i + 1] = UInt8(h >> 8)
            }
            return out
        case .q8_0:
            // Blocks of 32: f16 scale, then 32 int8.
            let blocks = values.count / 32
            var out = [UInt8](repeating: 0, count: blocks * 34)
            for b in 0..<blocks {
                var amax: Float = 0
                for j in 0..<32 { amax = max(amax, abs(values[32 * b + j])) }
                let d = amax / 127
                let id: Float = d != 0 ? 1 / d : 0
                let h = floatToHalf(d)
                out[34 * b] = UInt8(h & 0xFF)
                out[34 * b + 1] = UInt8(h >> 8)
                for j in 0..<32 {
                    out[34 * b + 2 + j] = UInt8(bitPattern: Int8((values[32 * b + j] * id).rounded()))
                }
            }
            return out
        }
    }
}
