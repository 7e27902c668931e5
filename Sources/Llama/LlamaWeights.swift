// LlamaWeights: all weights of the frozen base model in one Float buffer with named regions (llm.c's
// malloc_and_point_parameters), and the table of tensors a config implies, with their names in Hugging Face
// checkpoints and in GGUF files (Docs/FORMATS.md §3). With `BasePrecision.q` the matrices (projections, embedding,
// output) stay in the block types their file stores, copied into one byte buffer; only norms and biases are
// fp32. Every product goes through `FrozenMatrix`, which handles both.
//
// Layout convention: Hugging Face's. Projection weights are row-major (out, in); Q and K rows are in HF's
// half-split order, so RoPE is applied with RoPEStyle.halfSplit. GGUF llama files store Q/K rows
// interleaved; the loader un-permutes them (Docs/FORMATS.md §4), which is exact: only rows move.

import ModelFormats
import TensorKernels

/// Pointers to one transformer block's weights inside `LlamaWeights.storage`.
public struct LayerWeights: @unchecked Sendable {
    /// (dim) input RMSNorm weight.
    public var attentionNorm: UnsafeMutablePointer<Float>
    /// (qDim, dim); with fused projections, rows of `qkv`.
    public var q: FrozenMatrix
    /// (kvDim, dim)
    public var k: FrozenMatrix
    /// (kvDim, dim)
    public var v: FrozenMatrix
    /// (dim, qDim)
    public var o: FrozenMatrix
    /// (qDim), (kvDim), (kvDim) when the model has q/k/v biases.
    public var qBias, kBias, vBias: UnsafeMutablePointer<Float>?
    /// (dim) when the model has an attention output bias.
    public var oBias: UnsafeMutablePointer<Float>?
    /// (headDim) RMSNorm weights of each query and key head (Qwen3, Gemma 3).
    public var qNorm, kNorm: UnsafeMutablePointer<Float>?
    /// (dim) norms of the attention output and the feed-forward output (Gemma 2/3).
    public var postAttentionNorm, postFFNNorm: UnsafeMutablePointer<Float>?
    /// (dim) the feed-forward's input RMSNorm weight.
    public var ffnNorm: UnsafeMutablePointer<Float>
    /// (ffnDim, dim)
    public var gate: FrozenMatrix
    /// (ffnDim, dim)
    public var up: FrozenMatrix
    /// (dim, ffnDim)
    public var down: FrozenMatrix
    /// (qDim + 2·kvDim, dim) and (2·ffnDim, dim), the fused matrices `q`, `k`, `v` and `gate`, `up` are rows of
    /// (Phi-3).
    public var qkv, gateUp: FrozenMatrix?

    /// The matrix a LoRA target adapts.
    public subscript(target: LoRATarget) -> FrozenMatrix {
        switch target {
        case .q: q
        case .k: k
        case .v: v
        case .o: o
        case .gate: gate
        case .up: up
        case .down: down
        case .qkv: qkv!
        case .gateUp: gateUp!
        }
    }
}

/// How the frozen base's matrices are held in memory.
public enum BasePrecision: String, Sendable, Codable, CaseIterable {
    /// Every weight dequantised to fp32 when the model loads: the fastest products, 4 bytes per weight.
    case f32
    /// Matrices kept in the file's own types (Q4_1, Q8_0, Q6_K, F16, …) and dequantised panel by panel inside
    /// each product: 0.5–2 bytes per weight, for bases that do not fit in memory as fp32.
    case q
}

/// One tensor the model needs: its names in each format and its row-major shape.
public struct LlamaTensorSpec: Sendable, Equatable {
    /// Name in Hugging Face checkpoints (and the region name in the flat buffer).
    public var name: String
    /// Name in GGUF files.
    public var ggufName: String
    /// Row-major shape.
    public var shape: [Int]
    /// For Q and K weights and biases: the head count for the GGUF row permutation.
    public var permutationHeads: Int?
    /// Added to the values Hugging Face stores to get those the model uses: 1 for Gemma's (1 + w) norms, which
    /// GGUF files store with the 1 already added.
    public var huggingFaceOffset: Float = 0
}

/// The frozen base weights: fp32 tensors in one buffer, block-quantised matrices in another.
public final class LlamaWeights: @unchecked Sendable {
    /// The configuration the layout follows.
    public let config: LlamaConfig
    /// How the matrices are held.
    public let precision: BasePrecision
    /// The named fp32 regions: every tensor in f32 precision; norms, biases and fp32-stored matrices in q.
    public let layout: BufferLayout
    /// The fp32 storage.
    public let storage: FloatBuffer
    /// The block-quantised matrices' bytes (empty in f32 precision).
    let blocks: UnsafeMutableRawBufferPointer
    /// The matrices kept in `blocks`, by Hugging Face name.
    let quantized: [String: FrozenMatrix]
    /// (vocabSize, dim) token embeddings.
    public let embedding: FrozenMatrix
    /// (dim) final RMSNorm weight.
    public let outputNorm: UnsafeMutablePointer<Float>
    /// (vocabSize, dim) output projection; the embedding table when tied.
    public let output: FrozenMatrix
    /// Per-block weights.
    public let layers: [LayerWeights]

    /// The tensors a configuration needs, in storage order.
    public static func tensorTable(_ c: LlamaConfig) -> [LlamaTensorSpec] {
        var table: [LlamaTensorSpec] = []
        forEachTensor(c) {
            table.append($0)
            return true
        }
        return table
    }

    /// Visits the tensors a configuration needs, in storage order, until `visit` returns false; a loader
    /// checking a file with absurd metadata stops early instead of listing millions of layers.
    public static func forEachTensor(_ c: LlamaConfig, _ visit: (LlamaTensorSpec) -> Bool) {
        let gemma = c.family == .gemma2 || c.family == .gemma3
        let normOffset: Float = gemma ? 1 : 0
        func norm(_ hf: String, _ gguf: String, _ size: Int) -> LlamaTensorSpec {
            LlamaTensorSpec(name: hf, ggufName: gguf, shape: [size], huggingFaceOffset: normOffset)
        }
        guard
            visit(
                LlamaTensorSpec(
                    name: "model.embed_tokens.weight", ggufName: "token_embd.weight", shape: [c.vocabSize, c.dim]))
        else { return }
        for l in 0..<c.layers {
            let hf = "model.layers.\(l)."
            let gg = "blk.\(l)."
            var layer = [norm(hf + "input_layernorm.weight", gg + "attn_norm.weight", c.dim)]
            if c.fusedProjections {
                layer.append(
                    LlamaTensorSpec(
                        name: hf + "self_attn.qkv_proj.weight", ggufName: gg + "attn_qkv.weight",
                        shape: [c.qDim + 2 * c.kvDim, c.dim]))
            } else {
                layer += [
                    LlamaTensorSpec(
                        name: hf + "self_attn.q_proj.weight", ggufName: gg + "attn_q.weight", shape: [c.qDim, c.dim],
                        permutationHeads: c.heads),
                    LlamaTensorSpec(
                        name: hf + "self_attn.k_proj.weight", ggufName: gg + "attn_k.weight", shape: [c.kvDim, c.dim],
                        permutationHeads: c.kvHeads),
                    LlamaTensorSpec(
                        name: hf + "self_attn.v_proj.weight", ggufName: gg + "attn_v.weight", shape: [c.kvDim, c.dim]),
                ]
            }
            layer.append(
                LlamaTensorSpec(
                    name: hf + "self_attn.o_proj.weight", ggufName: gg + "attn_output.weight", shape: [c.dim, c.qDim]))
            if c.qkvBias {
                layer += [
                    LlamaTensorSpec(
                        name: hf + "self_attn.q_proj.bias", ggufName: gg + "attn_q.bias", shape: [c.qDim],
                        permutationHeads: c.heads),
                    LlamaTensorSpec(
                        name: hf + "self_attn.k_proj.bias", ggufName: gg + "attn_k.bias", shape: [c.kvDim],
                        permutationHeads: c.kvHeads),
                    LlamaTensorSpec(name: hf + "self_attn.v_proj.bias", ggufName: gg + "attn_v.bias", shape: [c.kvDim]),
                ]
            }
            if c.outputBias {
                layer.append(
                    LlamaTensorSpec(
                        name: hf + "self_attn.o_proj.bias", ggufName: gg + "attn_output.bias", shape: [c.dim]))
            }
            if c.qkNorm {
                layer += [
                    norm(hf + "self_attn.q_norm.weight", gg + "attn_q_norm.weight", c.headDim),
                    norm(hf + "self_attn.k_norm.weight", gg + "attn_k_norm.weight", c.headDim),
                ]
            }
            if c.postNorms {
                // Gemma's names: post_attention_layernorm is the attention output's norm, and the feed-forward's
                // input norm is pre_feedforward_layernorm.
                layer += [
                    norm(hf + "post_attention_layernorm.weight", gg + "post_attention_norm.weight", c.dim),
                    norm(hf + "pre_feedforward_layernorm.weight", gg + "ffn_norm.weight", c.dim),
                    norm(hf + "post_feedforward_layernorm.weight", gg + "post_ffw_norm.weight", c.dim),
                ]
            } else {
                layer.append(norm(hf + "post_attention_layernorm.weight", gg + "ffn_norm.weight", c.dim))
            }
            if c.fusedProjections {
                layer.append(
                    LlamaTensorSpec(
                        name: hf + "mlp.gate_up_proj.weight", ggufName: gg + "ffn_up.weight",
                        shape: [2 * c.ffnDim, c.dim]))
            } else {
                layer += [
                    LlamaTensorSpec(
                        name: hf + "mlp.gate_proj.weight", ggufName: gg + "ffn_gate.weight", shape: [c.ffnDim, c.dim]),
                    LlamaTensorSpec(
                        name: hf + "mlp.up_proj.weight", ggufName: gg + "ffn_up.weight", shape: [c.ffnDim, c.dim]),
                ]
            }
            layer.append(
                LlamaTensorSpec(
                    name: hf + "mlp.down_proj.weight", ggufName: gg + "ffn_down.weight", shape: [c.dim, c.ffnDim]))
            for spec in layer where !visit(spec) { return }
        }
        guard visit(norm("model.norm.weight", "output_norm.weight", c.dim)) else { return }
        if !c.tiedEmbeddings {
            _ = visit(LlamaTensorSpec(name: "lm_head.weight", ggufName: "output.weight", shape: [c.vocabSize, c.dim]))
        }
    }

    /// Zeroed fp32 weights for a configuration (tests fill them; loaders overwrite them).
    public convenience init(config c: LlamaConfig) {
        self.init(config: c, blockTypes: [:])
    }

    /// Weights with the matrices named in `blockTypes` (Hugging Face names) kept in those types, uninitialised,
    /// and every other tensor in zeroed fp32.
    init(config c: LlamaConfig, blockTypes: [String: GGMLType]) {
        config = c
        precision = blockTypes.isEmpty ? .f32 : .q
        var layout = BufferLayout()
        var shapes: [String: [Int]] = [:]
        var offsets: [String: (offset: Int, type: GGMLType)] = [:]
        var blockBytes = 0
        for spec in Self.tensorTable(c) {
            shapes[spec.name] = spec.shape
            if let type = blockTypes[spec.name] {
                precondition(spec.shape.count == 2, "LlamaWeights: only matrices are kept in blocks")
                offsets[spec.name] = (blockBytes, type)
                // Each matrix starts on a cache line.
                blockBytes += (type.byteCount(elements: spec.shape[0] * spec.shape[1])! + 63) & ~63
            } else {
                layout.add(spec.name, spec.shape)
            }
        }
        self.layout = layout
        storage = FloatBuffer(count: layout.totalCount)
        blocks = .allocate(byteCount: blockBytes, alignment: 64)
        let base = storage.pointer
        let blockBase = blocks.baseAddress
        func at(_ name: String) -> UnsafeMutablePointer<Float> { base + layout[name]!.offset }
        func maybe(_ name: String) -> UnsafeMutablePointer<Float>? { layout[name].map { base + $0.offset } }
        let quantized = Dictionary(
            uniqueKeysWithValues: offsets.map { name, entry in
                let shape = shapes[name]!
                return (
                    name,
                    FrozenMatrix(type: entry.type, bytes: blockBase! + entry.offset, rows: shape[0], columns: shape[1])
                )
            })
        self.quantized = quantized
        func matrix(_ name: String) -> FrozenMatrix {
            let shape = shapes[name]!
            return quantized[name] ?? FrozenMatrix(at(name), rows: shape[0], columns: shape[1])
        }
        embedding = matrix("model.embed_tokens.weight")
        outputNorm = at("model.norm.weight")
        output = c.tiedEmbeddings ? embedding : matrix("lm_head.weight")
        layers = (0..<c.layers).map { l in
            let p = "model.layers.\(l)."
            var q, k, v, gate, up: FrozenMatrix
            var qkv, gateUp: FrozenMatrix?
            if c.fusedProjections {
                let fused = matrix(p + "self_attn.qkv_proj.weight")
                q = fused.rowRange(0..<c.qDim)
                k = fused.rowRange(c.qDim..<c.qDim + c.kvDim)
                v = fused.rowRange(c.qDim + c.kvDim..<c.qDim + 2 * c.kvDim)
                let fusedFFN = matrix(p + "mlp.gate_up_proj.weight")
                gate = fusedFFN.rowRange(0..<c.ffnDim)
                up = fusedFFN.rowRange(c.ffnDim..<2 * c.ffnDim)
                (qkv, gateUp) = (fused, fusedFFN)
            } else {
                q = matrix(p + "self_attn.q_proj.weight")
                k = matrix(p + "self_attn.k_proj.weight")
                v = matrix(p + "self_attn.v_proj.weight")
                gate = matrix(p + "mlp.gate_proj.weight")
                up = matrix(p + "mlp.up_proj.weight")
            }
            return LayerWeights(
                attentionNorm: at(p + "input_layernorm.weight"), q: q, k: k, v: v,
                o: matrix(p + "self_attn.o_proj.weight"), qBias: maybe(p + "self_attn.q_proj.bias"),
                kBias: maybe(p + "self_attn.k_proj.bias"), vBias: maybe(p + "self_attn.v_proj.bias"),
                oBias: maybe(p + "self_attn.o_proj.bias"), qNorm: maybe(p + "self_attn.q_norm.weight"),
                kNorm: maybe(p + "self_attn.k_norm.weight"),
                postAttentionNorm: c.postNorms ? at(p + "post_attention_layernorm.weight") : nil,
                postFFNNorm: maybe(p + "post_feedforward_layernorm.weight"),
                ffnNorm: at(p + (c.postNorms ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight")),
                gate: gate, up: up, down: matrix(p + "mlp.down_proj.weight"), qkv: qkv, gateUp: gateUp)
        }
    }

    deinit { blocks.deallocate() }

    /// A named fp32 region as a pointer, or nil (also for a matrix kept in blocks).
    public func pointer(_ name: String) -> UnsafeMutablePointer<Float>? {
        layout[name].map { storage.pointer + $0.offset }
    }

    /// A named tensor's values as fp32, dequantised if it is kept in blocks; nil for an unknown name.
    public func values(_ name: String) -> [Float]? {
        if let region = layout[name] {
            return Array(UnsafeBufferPointer(start: storage.pointer + region.offset, count: region.count))
        }
        return quantized[name]?.dequantized()
    }

    /// Where a matrix kept in `blocks` starts, for filling it.
    func writableBytes(_ matrix: FrozenMatrix) -> UnsafeMutableRawPointer {
        guard case .blocks(_, let bytes) = matrix.storage else { preconditionFailure("not a block matrix") }
        return UnsafeMutableRawPointer(mutating: bytes)
    }

    /// Bytes the weights occupy in memory (fp32 storage plus blocks).
    public var residentBytes: Int { storage.count * 4 + blocks.count }
}

/// The tensor naming of a checkpoint.
public enum TensorNaming: Sendable {
    /// `model.layers.N.self_attn.q_proj.weight`: HF layout, half-split Q/K rows.
    case huggingFace
    /// `blk.N.attn_q.weight`; `permutedQK` when Q/K rows are interleaved (GGUF llama).
    case gguf(permutedQK: Bool)
}

extension LlamaWeights {
    /// Loads every weight the configuration needs from a tensor store: all dequantised to fp32, or (precision
    /// `q`) the matrices the file stores in another type copied as they are, Q/K rows un-permuted block row by
    /// block row.
    ///
    /// - Throws: `FormatError` listing every missing tensor, wrong shape and unsupported type at once.
    public static func load(
        from store: TensorStore, config: LlamaConfig, naming: TensorNaming, precision: BasePrecision = .f32
    ) throws(FormatError) -> LlamaWeights {
        // Check every tensor against the file before allocating anything: the allocation is then bounded by
        // what the file really holds, whatever its metadata claims.
        var problems: [String] = []
        var work: [(LlamaTensorSpec, StoredTensor)] = []
        forEachTensor(config) { spec in
            let name: String
            switch naming {
            case .huggingFace: name = spec.name
            case .gguf: name = spec.ggufName
            }
            guard let stored = store.storedTensor(named: name) else {
                if let hf = store as? HFModelDirectory, let info = hf.tensorInfo(named: name) {
                    problems.append("\(name): dtype \(info.dtype.rawValue) is not supported (F32, F16, BF16)")
                } else {
                    problems.append("\(name): missing")
                }
                return problems.count <= 64
            }
            guard
                stored.shape == spec.shape
                    || (stored.shape.count == 2 && spec.shape.count == 1 && stored.shape == [1, spec.shape[0]])
            else {
                problems.append("\(name): shape \(stored.shape), expected \(spec.shape)")
                return problems.count <= 64
            }
            guard stored.type.isDequantizable else {
                problems.append(
                    "\(name): type \(stored.type) is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)"
                )
                return problems.count <= 64
            }
            work.append((spec, stored))
            return true
        }
        if !problems.isEmpty {
            let shown = problems.prefix(8).joined(separator: "; ")
            let more =
                problems.count > 64 ? "; and many more" : problems.count > 8 ? "; and \(problems.count - 8) more" : ""
            throw FormatError(
                .invalidValue, path: store.sourceDescription,
                "does not match a \(config.layers)-layer \(config.architecture) model of width \(config.dim): \(shown)\(more)"
            )
        }
        var blockTypes: [String: GGMLType] = [:]
        if precision == .q {
            for (spec, stored) in work where spec.shape.count == 2 && stored.type != .f32 {
                blockTypes[spec.name] = stored.type
            }
        }
        let weights = LlamaWeights(config: config, blockTypes: blockTypes)
        for (spec, stored) in work {
            let permutationHeads: Int? =
                if case .gguf(permutedQK: true) = naming { spec.permutationHeads } else { nil }
            if let matrix = weights.quantized[spec.name] {
                let rowBytes = matrix.rowBytes
                let destination = weights.writableBytes(matrix)
                withExtendedLifetime(stored) {
                    let source = stored.bytes.baseAddress!
                    guard let heads = permutationHeads else {
                        destination.copyMemory(from: source, byteCount: spec.shape[0] * rowBytes)
                        return
                    }
                    let rows = spec.shape[0]
                    for row in 0..<rows {
                        let from = ggufRow(ofHuggingFaceRow: row, heads: heads, rows: rows)
                        (destination + row * rowBytes).copyMemory(from: source + from * rowBytes, byteCount: rowBytes)
                    }
                }
                continue
            }
            let destination = weights.pointer(spec.name)!
            stored.dequantize(into: destination)
            if case .huggingFace = naming, spec.huggingFaceOffset != 0 {
                let count = spec.shape.reduce(1, *)
                for i in 0..<count { destination[i] += spec.huggingFaceOffset }
            }
            if let heads = permutationHeads {
                unpermuteRows(
                    destination, heads: heads, rows: spec.shape[0], columns: spec.shape.count == 2 ? spec.shape[1] : 1)
            }
        }
        return weights
    }

    /// The GGUF row that holds Hugging Face row `row` of a Q or K matrix with `heads` heads (Docs/FORMATS.md §4).
    static func ggufRow(ofHuggingFaceRow row: Int, heads: Int, rows: Int) -> Int {
        let headDim = rows / heads
        let half = headDim / 2
        let head = row / headDim
        let within = row % headDim
        return head * headDim + 2 * (within % half) + within / half
    }

    /// GGUF → HF row order inside each head: `hf[h*hd + t*(hd/2) + i] = gguf[h*hd + 2*i + t]` (Docs/FORMATS.md §4).
    static func unpermuteRows(_ w: UnsafeMutablePointer<Float>, heads: Int, rows: Int, columns: Int) {
        let headDim = rows / heads
        let half = headDim / 2
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: headDim * columns)
        defer { scratch.deallocate() }
        for h in 0..<heads {
            let head = w + h * headDim * columns
            scratch.update(from: head, count: headDim * columns)
            for i in 0..<half {
                for t in 0..<2 {
                    (head + (t * half + i) * columns).update(from: scratch + (2 * i + t) * columns, count: columns)
                }
            }
        }
    }
}
