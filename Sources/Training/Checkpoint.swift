// Checkpoint: everything needed to continue a run exactly: adapter parameters, AdamW moments, the step, the
// data cursor, and identities of the data and base model. One safetensors file, written atomically, so a
// power loss leaves either the previous checkpoint or the new one. Shuffling and dropout masks are pure
// functions of (seed, epoch, step), so no generator state needs saving.

import Llama
import ModelFormats
import TensorKernels

/// A saved training state.
public struct Checkpoint: Sendable {
    /// Optimizer steps done.
    public var step: Int
    /// Rows of the training stream consumed.
    public var cursor: Int
    /// SHA-256 of the tokenized training data.
    public var dataHash: String
    /// Identity of the base model.
    public var baseModelHash: String
    /// (layer, target, rank, scale) of each module, in adapter order.
    public var modules: [(layer: Int, target: LoRATarget, rank: Int, scale: Float)]
    /// Adapter parameters, first and second moments.
    public var parameters: [Float]
    public var firstMoment: [Float]
    public var secondMoment: [Float]
    /// Further named state (the outer optimizer of a cluster round job, say).
    public var extra: [String: [Float]] = [:]

    static let metadataKey = "cairn.checkpoint"

    /// A checkpoint of the given state.
    public init(
        step: Int, cursor: Int, dataHash: String, baseModelHash: String,
        modules: [(layer: Int, target: LoRATarget, rank: Int, scale: Float)], parameters: [Float], firstMoment: [Float],
        secondMoment: [Float]
    ) {
        self.step = step
        self.cursor = cursor
        self.dataHash = dataHash
        self.baseModelHash = baseModelHash
        self.modules = modules
        self.parameters = parameters
        self.firstMoment = firstMoment
        self.secondMoment = secondMoment
    }

    /// Writes the checkpoint atomically.
    public func write(to path: String) throws(FormatError) {
        var w = SafetensorsWriter()
        w.add("parameters", shape: [parameters.count], floats: parameters)
        w.add("adam.m", shape: [firstMoment.count], floats: firstMoment)
        w.add("adam.v", shape: [secondMoment.count], floats: secondMoment)
        for (name, values) in extra.sorted(by: { $0.key < $1.key }) {
            w.add("extra.\(name)", shape: [values.count], floats: values)
        }
        let meta: JSONValue = [
            "version": 1, "step": .integer(Int64(step)), "cursor": .integer(Int64(cursor)),
            "data_sha256": .string(dataHash),
            "base_model_sha256": .string(baseModelHash),
            "modules": .array(
                modules.map {
                    [
                        .integer(Int64($0.layer)), .string($0.target.rawValue), .integer(Int64($0.rank)),
                        .number(Double($0.scale)),
                    ]
                }),
        ]
        w.metadata = [Self.metadataKey: meta.serialized()]
        try w.write(to: path)
    }

    /// Reads and validates a checkpoint.
    public static func read(from path: String) throws(FormatError) -> Checkpoint {
        let file = try SafetensorsFile(path: path)
        func fail(_ why: String) -> FormatError { FormatError(.invalidValue, path: path, why) }
        guard let text = file.metadata[metadataKey], let meta = try? JSONValue.parse(text).objectValue,
            meta["version"]?.intValue == 1, let step = meta["step"]?.intValue, let cursor = meta["cursor"]?.intValue,
            step >= 0, cursor >= 0, let dataHash = meta["data_sha256"]?.stringValue,
            let baseHash = meta["base_model_sha256"]?.stringValue, let list = meta["modules"]?.arrayValue
        else { throw fail("not a Cairn checkpoint (its metadata is missing or malformed)") }
        var modules: [(Int, LoRATarget, Int, Float)] = []
        for entry in list {
            guard let e = entry.arrayValue, e.count == 4, let l = e[0].intValue,
                let t = e[1].stringValue.flatMap(LoRATarget.init),
                let r = e[2].intValue, let s = e[3].doubleValue, l >= 0, r > 0
            else { throw fail("a module entry is malformed") }
            modules.append((l, t, r, Float(s)))
        }
        guard let p = file.storedTensor(named: "parameters"), let m = file.storedTensor(named: "adam.m"),
            let v = file.storedTensor(named: "adam.v"), m.elementCount == v.elementCount,
            m.elementCount == p.elementCount || m.elementCount == 0
        else { throw fail("the parameter and moment tensors are missing or of different sizes") }
        var c = Checkpoint(
            step: step, cursor: cursor, dataHash: dataHash, baseModelHash: baseHash, modules: modules,
            parameters: p.floats(),
            firstMoment: m.floats(), secondMoment: v.floats())
        for t in file.tensors where t.name.hasPrefix("extra.") {
            c.extra[String(t.name.dropFirst(6))] = file.storedTensor(named: t.name)?.floats()
        }
        return c
    }
}
