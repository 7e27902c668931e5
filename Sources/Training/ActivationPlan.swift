// ActivationPlan: which layers keep their activations for the backward and which are recomputed, chosen per
// layer from the memory a step may use.
//
// A step holds the base's weights, the adapter's state (parameters, gradients and AdamW's two moments), a
// runtime allowance, and the workspace: every layer's input, the scratch, and one set of activations per kept
// layer (plus one set that the recomputed layers share). `recompute: auto` keeps as many layers as fit in the
// limit: `memory_limit` when the job sets one, else the base plus 80 % of the memory available once the base is
// loaded. A recomputed layer costs about 3/4 of a block's forward pass again; the last layer never is.

import Foundation
import Llama

/// How a training step's activations are held.
public struct ActivationPlan: Sendable, Equatable {
    /// Layers 0..<keptLayers keep their activations (all of them when it equals `layers`).
    public var keptLayers: Int
    /// The model's layers.
    public var layers: Int
    /// Bytes of the workspace (activations and scratch).
    public var workspaceBytes: Int
    /// Estimated bytes of the whole step: base, adapter state, runtime and workspace.
    public var stepBytes: Int
    /// The bytes the plan was fitted into, when `recompute` is auto and a limit is known.
    public var limitBytes: Int?

    /// Layers whose forward the backward runs again.
    public var recomputedLayers: Int { keptLayers >= layers ? 0 : max(0, layers - keptLayers - 1) }

    /// Whether some layer is recomputed.
    public var recomputes: Bool { recomputedLayers > 0 }

    /// "kept for all 30 layers", "kept for 12 of 30 layers, 17 recomputed", "recomputed for 29 of 30 layers".
    public var summary: String {
        if recomputedLayers == 0 { return "kept for all \(layers) layers" }
        if keptLayers == 0 { return "recomputed for \(recomputedLayers) of \(layers) layers" }
        return "kept for \(keptLayers) of \(layers) layers, \(recomputedLayers) recomputed"
    }
}

extension TrainingConfig {
    /// Bytes outside the model, the adapter and the workspace that a training process holds at its peak: the
    /// Swift runtime, OpenBLAS's per-thread buffers, the dequantisation panels, the batch and the data (measured
    /// at 30–60 MiB on SmolLM2; rounded up).
    public static let runtimeBytes = 96 << 20

    /// The activation plan for training `adapter` on `model` whose weights take `baseBytes`.
    ///
    /// - Parameter availableBytes: Memory available with the base loaded (default: MemAvailable now); only used
    ///   without `memory_limit`.
    public func activationPlan(
        model c: LlamaConfig, adapter: LoRAAdapter, baseBytes: Int, availableBytes: Int? = nil
    ) -> ActivationPlan {
        let fixed = baseBytes + 16 * adapter.parameters.count + Self.runtimeBytes
        func plan(_ kept: Int, limit: Int?) -> ActivationPlan {
            let workspace = TrainingWorkspace.estimatedBytes(
                model: c, adapter: adapter, batch: batchSize, length: sequenceLength, keptLayers: kept)
            return ActivationPlan(
                keptLayers: TrainingWorkspace.normalised(keptLayers: kept, layers: c.layers), layers: c.layers,
                workspaceBytes: workspace, stepBytes: fixed + workspace,
                limitBytes: limit)
        }
        switch recompute {
        case .never: return plan(c.layers, limit: nil)
        case .always: return plan(0, limit: nil)
        case .auto:
            let available = memoryLimit == nil ? (availableBytes ?? Self.availableMemory()) : nil
            guard let limit = memoryLimit ?? available.map({ baseBytes + Int(0.8 * Double($0)) }) else {
                return plan(c.layers, limit: nil)
            }
            // The workspace grows by one set of activations per kept layer: the most that fit.
            let all = plan(c.layers, limit: limit)
            if all.stepBytes <= limit { return all }
            let none = plan(0, limit: limit)
            let perLayer = TrainingWorkspace.bytesPerKeptLayer(
                model: c, adapter: adapter, batch: batchSize, length: sequenceLength)
            let kept = max(0, min(c.layers - 2, (limit - none.stepBytes) / max(1, perLayer)))
            return plan(kept, limit: limit)
        }
    }
}

/// A size in bytes written as a number with an optional unit: 7GiB, 7G, 512MiB, 512M, 64KiB, 1000000.
/// K, M, G and T are powers of 1024, as memory sizes usually are (KB, MB, GB too).
public func parseByteSize(_ text: String) -> Int? {
    let t = text.trimmingCharacters(in: .whitespaces)
    let digits = t.prefix { $0.isNumber || $0 == "." }
    guard let value = Double(digits), value >= 0 else { return nil }
    let unit = t.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased()
    let shifts: [String: Int] = [
        "": 0, "b": 0, "k": 10, "kb": 10, "kib": 10, "m": 20, "mb": 20, "mib": 20, "g": 30, "gb": 30, "gib": 30,
        "t": 40, "tb": 40, "tib": 40,
    ]
    guard let shift = shifts[unit] else { return nil }
    let bytes = value * Double(1 << shift)
    guard bytes < 0x1p62 else { return nil }
    return Int(bytes)
}
