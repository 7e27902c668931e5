// LoRA: low-rank adapters on the projections of a llama block (Docs/FORMATS.md §6).
//
// A module adapts one projection W (out, in) of one layer: y = W·x + s·B·(A·x), A (r, in), B (out, r),
// s = alpha/r (or alpha/√r with rsLoRA). The model declares its targets (LoRATarget); an adapter holds any
// subset of (layer, target) modules, each with its own rank and scale, so adapters trained elsewhere (several
// ranks, rsLoRA, per-module alphas) load as they are. All A and B matrices live in one flat buffer with a
// layout; gradients and optimizer moments reuse the same layout.

import Foundation
import ModelFormats
import TensorKernels

/// A projection of a llama block that LoRA can adapt, named as Hugging Face and PEFT name it.
public enum LoRATarget: String, CaseIterable, Sendable, Codable, Comparable {
    case q = "q_proj", k = "k_proj", v = "v_proj", o = "o_proj", gate = "gate_proj", up = "up_proj", down = "down_proj"
    /// Phi-3's fused projections: q, k and v in one matrix, gate and up in another.
    case qkv = "qkv_proj", gateUp = "gate_up_proj"

    /// The module path inside a Hugging Face layer (`self_attn.q_proj`).
    public var huggingFacePath: String {
        switch self {
        case .q, .k, .v, .o, .qkv: "self_attn.\(rawValue)"
        case .gate, .up, .down, .gateUp: "mlp.\(rawValue)"
        }
    }

    /// The tensor name stem inside a GGUF block (`attn_q`).
    public var ggufName: String {
        switch self {
        case .q: "attn_q"
        case .k: "attn_k"
        case .v: "attn_v"
        case .o: "attn_output"
        case .gate: "ffn_gate"
        case .up: "ffn_up"
        case .down: "ffn_down"
        case .qkv: "attn_qkv"
        case .gateUp: "ffn_up"
        }
    }

    /// (in, out) features of the projection in a model.
    public func shape(_ c: LlamaConfig) -> (inFeatures: Int, outFeatures: Int) {
        switch self {
        case .q: (c.dim, c.qDim)
        case .k, .v: (c.dim, c.kvDim)
        case .o: (c.qDim, c.dim)
        case .gate, .up: (c.dim, c.ffnDim)
        case .down: (c.ffnDim, c.dim)
        case .qkv: (c.dim, c.qDim + 2 * c.kvDim)
        case .gateUp: (c.dim, 2 * c.ffnDim)
        }
    }

    /// The targets a model has: the split projections, or Phi-3's fused ones in place of q, k, v and gate, up.
    public static func available(in c: LlamaConfig) -> [LoRATarget] {
        c.fusedProjections ? [.qkv, .o, .gateUp, .down] : [.q, .k, .v, .o, .gate, .up, .down]
    }

    /// The projection as a model names it: on a fused model, q, k and v are `qkv` and gate and up `gateUp` (the
    /// group names `all-linear`, `attention` and `mlp` expand to the split names first).
    public func resolved(for c: LlamaConfig) -> LoRATarget {
        guard c.fusedProjections else { return self }
        switch self {
        case .q, .k, .v: return .qkv
        case .gate, .up: return .gateUp
        default: return self
        }
    }

    /// Order of the projections in a block (q, k, v, o, gate, up, down).
    public static func < (a: LoRATarget, b: LoRATarget) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }

    /// Parses target names: HF names (`q_proj`), short names (`q`), `all-linear`, `attention`, `mlp`.
    ///
    /// - Returns: The targets in block order, or nil with the unknown name.
    public static func parse(_ names: [String]) -> Result<[LoRATarget], LoRAConfigError> {
        var set = Set<LoRATarget>()
        for raw in names {
            let name = raw.trimmingCharacters(in: .whitespaces).lowercased()
            switch name {
            case "all-linear", "all_linear", "all": set.formUnion([.q, .k, .v, .o, .gate, .up, .down])
            case "attention", "attn": set.formUnion([.q, .k, .v, .o])
            case "mlp", "ffn": set.formUnion([.gate, .up, .down])
            default:
                if let t = LoRATarget(rawValue: name) ?? allCases.first(where: { $0.rawValue.hasPrefix(name + "_") }) {
                    set.insert(t)
                } else {
                    return .failure(.unknownTarget(raw))
                }
            }
        }
        guard !set.isEmpty else { return .failure(.noTargets) }
        return .success(set.sorted())
    }
}

/// Why a LoRA configuration is invalid.
public enum LoRAConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    case unknownTarget(String)
    case noTargets
    case invalid(String)

    public var description: String {
        switch self {
        case .unknownTarget(let name):
            "unknown LoRA target \"\(name)\"; use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, all-linear, attention or mlp"
        case .noTargets: "no LoRA targets given"
        case .invalid(let why): why
        }
    }
}

/// How to build a new adapter: rank, scaling, targets, layers, dropout.
public struct LoRAConfig: Sendable, Equatable, Codable {
    /// r, the rank of every module.
    public var rank: Int
    /// alpha; the scale is alpha/r, or alpha/√r with rsLoRA.
    public var alpha: Double
    /// Scale by alpha/√r (rank-stabilised LoRA) instead of alpha/r.
    public var useRSLoRA: Bool
    /// Dropout on the LoRA input during training.
    public var dropout: Double
    /// Projections adapted in each chosen layer.
    public var targets: [LoRATarget]
    /// Layers adapted (nil: all).
    public var layers: [Int]?

    /// A configuration; `validate(for:)` checks it against a model.
    public init(
        rank: Int = 8, alpha: Double = 16, useRSLoRA: Bool = false, dropout: Double = 0,
        targets: [LoRATarget] = [.q, .k, .v, .o, .gate, .up, .down], layers: [Int]? = nil
    ) {
        self.rank = rank
        self.alpha = alpha
        self.useRSLoRA = useRSLoRA
        self.dropout = dropout
        self.targets = targets
        self.layers = layers
    }

    /// The scale s of every module.
    public var scale: Float { Float(useRSLoRA ? alpha / Double(rank).squareRoot() : alpha / Double(rank)) }

    /// Checks the configuration against a model.
    public func validate(for model: LlamaConfig) throws(LoRAConfigError) {
        guard rank >= 1, rank <= 4096 else { throw .invalid("rank \(rank) must be between 1 and 4096") }
        guard alpha.isFinite, alpha > 0 else { throw .invalid("alpha \(alpha) must be positive") }
        guard dropout >= 0, dropout < 1 else { throw .invalid("dropout \(dropout) must be in [0, 1)") }
        guard !targets.isEmpty else { throw .noTargets }
        let available = LoRATarget.available(in: model)
        for t in targets where !available.contains(t.resolved(for: model)) {
            throw .invalid(
                "\(model.architecture) models have no \(t.rawValue); their projections are "
                    + available.map(\.rawValue).joined(separator: ", "))
        }
        if let layers {
            guard !layers.isEmpty else { throw .invalid("the layer list is empty") }
            for l in layers where l < 0 || l >= model.layers {
                throw .invalid("layer \(l) does not exist; the model has layers 0...\(model.layers - 1)")
            }
        }
    }
}

/// One adapted projection: where its A and B live in the adapter's buffers.
public struct LoRAModule: Sendable, Equatable {
    /// The layer.
    public var layer: Int
    /// The projection.
    public var target: LoRATarget
    /// r of this module.
    public var rank: Int
    /// s of this module (alpha/r or alpha/√r, as it was trained).
    public var scale: Float
    /// In and out features of the projection.
    public var inFeatures: Int
    public var outFeatures: Int
    /// Offset of A (rank, inFeatures), row-major, in the flat buffers.
    public var aOffset: Int
    /// Offset of B (outFeatures, rank).
    public var bOffset: Int

    /// Name of the module in PEFT files (`base_model.model.model.layers.3.self_attn.q_proj`).
    public var peftName: String { "base_model.model.model.layers.\(layer).\(target.huggingFacePath)" }
}

/// The trainable state of an adapter: all A and B matrices in one buffer.
public final class LoRAAdapter: @unchecked Sendable {
    /// The base model's architecture.
    public let modelConfig: LlamaConfig
    /// The adapted modules, ordered by layer, then target.
    public let modules: [LoRAModule]
    /// The A and B matrices.
    public let parameters: FloatBuffer
    private let index: [Int: Int]  // layer * 16 + target → module

    /// An adapter with zeroed matrices for the given modules.
    ///
    /// - Parameter specs: (layer, target, rank, scale) of each module; order does not matter.
    public init(model: LlamaConfig, modules specs: [(layer: Int, target: LoRATarget, rank: Int, scale: Float)]) {
        modelConfig = model
        var modules: [LoRAModule] = []
        var offset = 0
        for s in specs.sorted(by: { ($0.layer, $0.target) < ($1.layer, $1.target) }) {
            precondition(s.layer >= 0 && s.layer < model.layers && s.rank > 0, "LoRAAdapter: bad module \(s)")
            let (inF, outF) = s.target.shape(model)
            modules.append(
                LoRAModule(
                    layer: s.layer, target: s.target, rank: s.rank, scale: s.scale, inFeatures: inF, outFeatures: outF,
                    aOffset: offset, bOffset: offset + s.rank * inF))
            offset += s.rank * (inF + outF)
        }
        self.modules = modules
        parameters = FloatBuffer(count: offset)
        var index: [Int: Int] = [:]
        for (i, m) in modules.enumerated() {
            precondition(index[Self.key(m.layer, m.target)] == nil, "LoRAAdapter: module \(m.layer).\(m.target) twice")
            index[Self.key(m.layer, m.target)] = i
        }
        self.index = index
    }

    /// A new adapter as PEFT initialises one: A uniform in ±1/√in (kaiming-uniform with a = √5), B zero, so
    /// the adapted model starts equal to the base.
    public convenience init(model: LlamaConfig, config: LoRAConfig, seed: UInt64) {
        let layers = config.layers ?? Array(0..<model.layers)
        var targets: [LoRATarget] = []
        for t in config.targets.map({ $0.resolved(for: model) }) where !targets.contains(t) { targets.append(t) }
        let specs = layers.flatMap { l in
            targets.map { (layer: l, target: $0, rank: config.rank, scale: config.scale) }
        }
        self.init(model: model, modules: specs)
        var rng = SeededGenerator(seed: seed)
        for m in modules {
            let bound = 1 / Float(m.inFeatures).squareRoot()
            let a = parameters.pointer + m.aOffset
            for i in 0..<m.rank * m.inFeatures { a[i] = (2 * rng.nextUnitFloat() - 1) * bound }
        }
    }

    /// A module's position as one integer, ordered by layer, then target: for sets and sorting of modules.
    public static func key(_ layer: Int, _ target: LoRATarget) -> Int {
        layer * 16 + LoRATarget.allCases.firstIndex(of: target)!
    }

    /// The (layer, target) of a `key(_:_:)`.
    public static func module(ofKey key: Int) -> (layer: Int, target: LoRATarget) {
        (key / 16, LoRATarget.allCases[key % 16])
    }

    /// The module adapting `target` of `layer`, if any.
    public func module(layer: Int, target: LoRATarget) -> LoRAModule? {
        index[Self.key(layer, target)].map { modules[$0] }
    }

    /// Number of trainable parameters.
    public var parameterCount: Int { parameters.count }
}

extension LoRAConfig {
    /// The settings that build an adapter of exactly `adapter`'s layout (the same modules, ranks and scales), so
    /// that its values can be copied into a fresh one: nil when its modules are not one rank and one scale over
    /// every chosen layer × every chosen projection (a per-module rank or scale, or a ragged module set).
    public init?(describing adapter: LoRAAdapter) {
        guard let first = adapter.modules.first else { return nil }
        let layers = Array(Set(adapter.modules.map(\.layer))).sorted()
        var targets: [LoRATarget] = []
        for m in adapter.modules where !targets.contains(m.target) { targets.append(m.target) }
        guard adapter.modules.count == layers.count * targets.count,
            adapter.modules.allSatisfy({ $0.rank == first.rank && $0.scale == first.scale })
        else { return nil }
        self.init(
            rank: first.rank, alpha: Double(first.scale) * Double(first.rank), targets: targets,
            layers: layers.count == adapter.modelConfig.layers ? nil : layers)
        let rebuilt = LoRAAdapter(model: adapter.modelConfig, config: self, seed: 0)
        guard rebuilt.modules == adapter.modules else { return nil }
    }
}
