// LoRAAdapter+Files: adapters in the formats people share (Docs/FORMATS.md §5, §6).
//
// PEFT directory: adapter_config.json + adapter_model.safetensors, tensors
//   base_model.model.model.layers.{l}.{self_attn|mlp}.{name}.lora_A.weight  (r, in)
//   base_model.model.model.layers.{l}.{self_attn|mlp}.{name}.lora_B.weight  (out, r)
// scale alpha/r (alpha/√r with use_rslora), per module through rank_pattern and alpha_pattern. Rows are in
// Hugging Face order, as Cairn keeps them.
// GGUF LoRA (llama.cpp): general.type "adapter", adapter.type "lora", adapter.lora.alpha FLOAT32, tensors
//   blk.{l}.{attn_q|...}.weight.lora_a  ne [in, r]      blk.{l}.{...}.weight.lora_b  ne [r, out]
// with scale alpha/r per tensor; for a llama base the rows of q/k lora_b are permuted into GGUF order.
// Cairn's own provenance (base model hash, recipe, data) travels as JSON in the safetensors metadata key
// "cairn" and the GGUF key "cairn.metadata".

import Foundation
import ModelFormats
import TensorKernels

/// Where an adapter came from: the base it was trained on, how, and on what.
public struct AdapterProvenance: Sendable, Equatable {
    /// SHA-256 identity of the base model (`FileHash.modelIdentity`).
    public var baseModelHash: String?
    /// A readable name of the base (file name or repository).
    public var baseModelName: String?
    /// The training recipe, as JSON.
    public var recipe: JSONValue?
    /// SHA-256 of the training data.
    public var dataHash: String?
    /// Optimizer steps taken.
    public var steps: Int?
    /// Parents and how they were combined (merges).
    public var lineage: JSONValue?
    /// The content hash recorded when the file was written (`LoRAAdapter.contentHash`); set by loading.
    public var adapterHash: String?
    /// The base's architecture (`LlamaConfig.architecture`) recorded when the file was written; set by loading.
    public var architecture: String?

    /// Empty provenance.
    public init() {}

    /// The provenance with the adapter's own content hash (`adapter_sha256`) and, for PEFT files, which hold no
    /// architecture of their own, the base's architecture (GGUF LoRA files have `general.architecture`).
    func json(adapter: LoRAAdapter, recordArchitecture: Bool = false) -> JSONValue {
        guard case .object(var o) = json else { return json }
        o["adapter_sha256"] = .string(adapter.contentHash)
        if recordArchitecture { o["architecture"] = .string(adapter.modelConfig.architecture) }
        return .object(o)
    }

    var json: JSONValue {
        var o = JSONObject()
        o["base_model_sha256"] = baseModelHash.map(JSONValue.string)
        o["base_model"] = baseModelName.map(JSONValue.string)
        o["recipe"] = recipe
        o["data_sha256"] = dataHash.map(JSONValue.string)
        o["steps"] = steps.map { .integer(Int64($0)) }
        o["lineage"] = lineage
        o["format"] = "cairn-adapter/1"
        return .object(o)
    }

    init(json: JSONValue?) {
        guard let o = json?.objectValue else { return }
        baseModelHash = o["base_model_sha256"]?.stringValue
        baseModelName = o["base_model"]?.stringValue
        recipe = o["recipe"]
        dataHash = o["data_sha256"]?.stringValue
        steps = o["steps"]?.intValue
        lineage = o["lineage"]
        adapterHash = o["adapter_sha256"]?.stringValue
        architecture = o["architecture"]?.stringValue
    }
}

extension AdapterProvenance {
    /// One adapter in a lineage tree, in the shape `cairn lineage --json` prints: its name, content hash, base,
    /// data, steps, and how it was made (`lineage`: method and parents, each a node of this shape).
    public func lineageNode(name: String, hash: String?) -> JSONObject {
        var node: JSONObject = ["name": .string(name)]
        if let hash { node["sha256"] = .string(hash) }
        if let h = baseModelHash { node["base_model_sha256"] = .string(h) }
        if let d = dataHash { node["data_sha256"] = .string(d) }
        if let s = steps { node["steps"] = .integer(Int64(s)) }
        if let l = lineage { node["lineage"] = l }
        return node
    }

    /// The provenance a PEFT adapter file (`adapter_model.safetensors`) records, read from its metadata without
    /// loading its tensors; nil when the file cannot be read or records none.
    public static func recorded(inPEFTFile path: String) -> AdapterProvenance? {
        guard let file = try? SafetensorsFile(path: path), let text = file.metadata["cairn"],
            let json = try? JSONValue.parse(Array(text.utf8))
        else { return nil }
        return AdapterProvenance(json: json)
    }

    /// The provenance a GGUF LoRA file records (`cairn.metadata`), read without its tensors; nil when the file
    /// cannot be read or records none.
    public static func recorded(inGGUFFile path: String) -> AdapterProvenance? {
        guard let file = try? GGUFFile(path: path), let text = try? file.metadata.string("cairn.metadata"),
            let json = try? JSONValue.parse(Array(text.utf8))
        else { return nil }
        return AdapterProvenance(json: json)
    }
}

/// The adapter file formats.
public enum AdapterFormat: String, Sendable, CaseIterable {
    case peft, gguf
}

extension LoRAAdapter {
    /// SHA-256 of the adapter's canonical bytes: for each module in (layer, target) order, its layer, target, rank
    /// and scale, then A and B as little-endian fp32 in Hugging Face row order. The same adapter has the same id
    /// whichever file format carried it, and the same merge of the same inputs gives the same id.
    public var contentHash: String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(parameters.count * 4 + modules.count * 32)
        for m in modules {
            withUnsafeBytes(of: UInt32(m.layer).littleEndian) { bytes += $0 }
            bytes += Array(m.target.rawValue.utf8) + [0]
            withUnsafeBytes(of: UInt32(m.rank).littleEndian) { bytes += $0 }
            withUnsafeBytes(of: m.scale.bitPattern.littleEndian) { bytes += $0 }
            let count = m.rank * (m.inFeatures + m.outFeatures)
            UnsafeRawBufferPointer(start: parameters.pointer + m.aOffset, count: count * 4).withMemoryRebound(
                to: UInt8.self
            ) {
                bytes += $0
            }
        }
        return FileHash.sha256(bytes)
    }

    /// Loads a PEFT directory or a GGUF LoRA file for a model.
    ///
    /// - Throws: `FormatError` listing every key, shape or setting that does not fit.
    public static func load(path: String, model: LlamaConfig) throws(FormatError) -> (LoRAAdapter, AdapterProvenance) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw FormatError(.notFound, path: path, "no such adapter (expected a PEFT directory or a GGUF LoRA file)")
        }
        return isDirectory.boolValue
            ? try loadPEFT(directory: path, model: model) : try loadGGUF(path: path, model: model)
    }

    // MARK: PEFT

    /// Loads a PEFT LoRA directory.
    public static func loadPEFT(directory: String, model: LlamaConfig) throws(FormatError) -> (
        LoRAAdapter, AdapterProvenance
    ) {
        let configPath = (directory as NSString).appendingPathComponent("adapter_config.json")
        let weightsPath = (directory as NSString).appendingPathComponent("adapter_model.safetensors")
        guard FileManager.default.fileExists(atPath: configPath) else {
            throw FormatError(.missing, path: directory, "no adapter_config.json; not a PEFT adapter directory")
        }
        guard let config = try HFModelDirectory.readJSON(configPath).objectValue else {
            throw FormatError(.invalidValue, path: configPath, "must be a JSON object")
        }
        func refuse(_ key: String, _ why: String) -> FormatError {
            FormatError(.unsupported, path: configPath, field: key, why)
        }
        if let t = config["peft_type"]?.stringValue, t != "LORA" {
            throw refuse("peft_type", "\"\(t)\" adapters are not supported (only LORA)")
        }
        if config["use_dora"]?.boolValue == true { throw refuse("use_dora", "DoRA adapters are not supported") }
        if config["fan_in_fan_out"]?.boolValue == true {
            throw refuse("fan_in_fan_out", "transposed (Conv1D) adapters are not supported")
        }
        if let b = config["bias"]?.stringValue, b != "none" {
            throw refuse("bias", "adapters with trained biases are not supported")
        }
        if config["lora_bias"]?.boolValue == true {
            throw refuse("lora_bias", "adapters with trained biases are not supported")
        }
        if let m = config["modules_to_save"]?.arrayValue, !m.isEmpty {
            throw refuse(
                "modules_to_save",
                "fully trained extra modules (\(m.compactMap(\.stringValue).joined(separator: ", "))) are not supported"
            )
        }
        guard FileManager.default.fileExists(atPath: weightsPath) else {
            let legacy = (directory as NSString).appendingPathComponent("adapter_model.bin")
            throw FormatError(
                .missing, path: directory,
                FileManager.default.fileExists(atPath: legacy)
                    ? "has adapter_model.bin (PyTorch pickle) only; save it with safe_serialization=True"
                    : "no adapter_model.safetensors")
        }
        let defaultAlpha = config["lora_alpha"]?.doubleValue ?? 8
        let rsLoRA = config["use_rslora"]?.boolValue ?? false
        let rankPattern = config["rank_pattern"]?.objectValue ?? JSONObject()
        let alphaPattern = config["alpha_pattern"]?.objectValue ?? JSONObject()
        let file = try SafetensorsFile(path: weightsPath)
        var problems: [String] = []
        var pairs: [String: (a: StoredTensor?, b: StoredTensor?, layer: Int, target: LoRATarget)] = [:]
        for info in file.tensors {
            guard let parsed = parsePEFTName(info.name) else {
                problems.append("\(info.name): not a LoRA weight of a llama projection")
                continue
            }
            guard LoRATarget.available(in: model).contains(parsed.target) else {
                let fused = parsed.target == .qkv || parsed.target == .gateUp
                problems.append(
                    "\(info.name): \(model.architecture) models have no \(parsed.target.rawValue)"
                        + (fused
                            ? " (the adapter is for a model with fused projections, such as phi3)"
                            : " (the adapter is for a model with separate q/k/v and gate/up projections)"))
                continue
            }
            guard parsed.layer < model.layers else {
                problems.append("\(info.name): layer \(parsed.layer) does not exist (the model has \(model.layers))")
                continue
            }
            guard let tensor = file.storedTensor(named: info.name), tensor.shape.count == 2 else {
                problems.append("\(info.name): dtype \(info.dtype.rawValue) or shape \(info.shape) not supported")
                continue
            }
            let key = "model.layers.\(parsed.layer).\(parsed.target.huggingFacePath)"
            var entry = pairs[key] ?? (nil, nil, parsed.layer, parsed.target)
            if parsed.isA { entry.a = tensor } else { entry.b = tensor }
            pairs[key] = entry
        }
        var specs: [(layer: Int, target: LoRATarget, rank: Int, scale: Float)] = []
        var tensors: [(StoredTensor, StoredTensor)] = []
        for (key, entry) in pairs.sorted(by: { $0.key < $1.key }) {
            guard let a = entry.a, let b = entry.b else {
                problems.append(
                    "\(key): has lora_\(entry.a == nil ? "B" : "A") but no lora_\(entry.a == nil ? "A" : "B")")
                continue
            }
            let (inF, outF) = entry.target.shape(model)
            let rank = a.shape[0]
            guard a.shape == [rank, inF], b.shape == [outF, rank], rank > 0 else {
                problems.append(
                    "\(key): lora_A \(a.shape) and lora_B \(b.shape), expected [r, \(inF)] and [\(outF), r]")
                continue
            }
            let alpha = patternValue(alphaPattern, key)?.doubleValue ?? defaultAlpha
            let r = Double(patternValue(rankPattern, key)?.intValue ?? rank)
            let scale = rsLoRA ? alpha / r.squareRoot() : alpha / r
            specs.append((entry.layer, entry.target, rank, Float(scale)))
            tensors.append((a, b))
        }
        if !problems.isEmpty || specs.isEmpty {
            throw FormatError(
                .invalidValue, path: weightsPath,
                specs.isEmpty && problems.isEmpty
                    ? "has no LoRA weights"
                    : "does not fit this model: " + problems.prefix(8).joined(separator: "; ")
                        + (problems.count > 8 ? "; and \(problems.count - 8) more" : ""))
        }
        let adapter = LoRAAdapter(model: model, modules: specs)
        for (spec, (a, b)) in zip(specs, tensors) {
            let m = adapter.module(layer: spec.layer, target: spec.target)!
            a.dequantize(into: adapter.parameters.pointer + m.aOffset)
            b.dequantize(into: adapter.parameters.pointer + m.bOffset)
        }
        var provenance = AdapterProvenance(json: file.metadata["cairn"].flatMap { try? JSONValue.parse($0) })
        if let arch = provenance.architecture, arch != model.architecture {
            throw FormatError(
                .invalidValue, path: weightsPath, field: "__metadata__.cairn.architecture",
                "the adapter was trained on a \(arch) model; this model is \(model.architecture)")
        }
        if provenance.baseModelName == nil { provenance.baseModelName = config["base_model_name_or_path"]?.stringValue }
        return (adapter, provenance)
    }

    /// `[base_model.model.]model.layers.N.(self_attn|mlp).X.lora_(A|B).weight`
    static func parsePEFTName(_ name: String) -> (layer: Int, target: LoRATarget, isA: Bool)? {
        var parts = name.split(separator: ".").map(String.init)
        if parts.starts(with: ["base_model", "model"]) { parts.removeFirst(2) }
        guard parts.count == 7, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]), layer >= 0,
            let target = LoRATarget(rawValue: parts[4]),
            parts[3] == (target.huggingFacePath.split(separator: ".").first.map(String.init) ?? ""),
            parts[5] == "lora_A" || parts[5] == "lora_B", parts[6] == "weight"
        else { return nil }
        return (layer, target, parts[5] == "lora_A")
    }

    /// PEFT's pattern lookup: a key matches a module when the module's name is the key or ends in ".key"
    /// (keys are regular expressions, as in PEFT's get_pattern_key).
    static func patternValue(_ patterns: JSONObject, _ module: String) -> JSONValue? {
        for (key, value) in patterns.members {
            if module == key || module.hasSuffix("." + key) { return value }
            if let regex = try? NSRegularExpression(pattern: "(^|.*\\.)(\(key))$"),
                regex.firstMatch(in: module, range: NSRange(module.startIndex..., in: module)) != nil
            {
                return value
            }
        }
        return nil
    }

    /// Writes a PEFT directory (created if missing) that PEFT's `PeftModel.from_pretrained` loads.
    ///
    /// - Parameters:
    ///   - recipe: The LoRA settings the adapter was made with; used for r, lora_alpha and use_rslora when they
    ///     describe every module, so the config reads as the user wrote it.
    public func savePEFT(directory: String, provenance: AdapterProvenance, recipe: LoRAConfig? = nil)
        throws(FormatError)
    {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw FormatError(.io, path: directory, "cannot create the directory: \(error.localizedDescription)")
        }
        // The most common (rank, scale) sets r and lora_alpha; other modules go into the patterns.
        let counts = Dictionary(grouping: modules, by: { "\($0.rank) \($0.scale)" })
        let common = counts.max {
            $0.value.count < $1.value.count || ($0.value.count == $1.value.count && $0.key > $1.key)
        }!.value[0]
        var rsLoRA = false
        var r = common.rank
        var alpha = Double(common.scale) * Double(common.rank)
        if let recipe, modules.allSatisfy({ $0.rank == recipe.rank && $0.scale == recipe.scale }) {
            rsLoRA = recipe.useRSLoRA
            r = recipe.rank
            alpha = recipe.alpha
        }
        func moduleAlpha(_ m: LoRAModule) -> Double {
            rsLoRA ? Double(m.scale) * Double(m.rank).squareRoot() : Double(m.scale) * Double(m.rank)
        }
        var rankPattern = JSONObject()
        var alphaPattern = JSONObject()
        for m in modules {
            let key = "model.layers.\(m.layer).\(m.target.huggingFacePath)"
            if m.rank != r { rankPattern[key] = .integer(Int64(m.rank)) }
            let a = moduleAlpha(m)
            if abs(a - alpha) > 1e-6 * max(1, abs(alpha)) { alphaPattern[key] = .number(a) }
        }
        let targets = Set(modules.map(\.target)).sorted()
        let layers = Set(modules.map(\.layer)).sorted()
        let config: JSONValue = [
            "alpha_pattern": .object(alphaPattern), "auto_mapping": nil,
            "base_model_name_or_path": provenance.baseModelName.map(JSONValue.string) ?? nil, "bias": "none",
            "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true, "layers_pattern": nil,
            "layers_to_transform": layers.count == modelConfig.layers
                ? nil : .array(layers.map { .integer(Int64($0)) }),
            "lora_alpha": alpha.rounded() == alpha ? .integer(Int64(alpha)) : .number(alpha),
            "lora_dropout": .number(recipe?.dropout ?? 0), "modules_to_save": nil, "peft_type": "LORA",
            "r": .integer(Int64(r)), "rank_pattern": .object(rankPattern), "revision": nil,
            "target_modules": .array(targets.map { .string($0.rawValue) }), "task_type": "CAUSAL_LM", "use_dora": false,
            "use_rslora": .bool(rsLoRA),
        ]
        var writer = SafetensorsWriter()
        writer.metadata = [
            "format": "pt",
            "cairn": provenance.json(adapter: self, recordArchitecture: true).serialized(sortedKeys: true),
        ]
        for m in modules {
            writer.add(
                m.peftName + ".lora_A.weight", shape: [m.rank, m.inFeatures],
                floats: floats(m.aOffset, m.rank * m.inFeatures))
            writer.add(
                m.peftName + ".lora_B.weight", shape: [m.outFeatures, m.rank],
                floats: floats(m.bOffset, m.outFeatures * m.rank))
        }
        try writer.write(to: (directory as NSString).appendingPathComponent("adapter_model.safetensors"))
        try writeFileAtomically(
            (directory as NSString).appendingPathComponent("adapter_config.json"),
            Array((config.serialized(pretty: true, sortedKeys: true) + "\n").utf8))
    }

    private func floats(_ offset: Int, _ count: Int) -> [Float] {
        Array(UnsafeBufferPointer(start: parameters.pointer + offset, count: count))
    }

    // MARK: GGUF

    /// Loads a GGUF LoRA adapter as llama.cpp writes and reads it.
    public static func loadGGUF(path: String, model: LlamaConfig) throws(FormatError) -> (
        LoRAAdapter, AdapterProvenance
    ) {
        let file = try GGUFFile(path: path)
        let m = file.metadata
        guard try m.string("general.type") == "adapter", try m.string("adapter.type") == "lora" else {
            throw FormatError(
                .invalidValue, path: path, field: "general.type",
                "not a LoRA adapter (expected general.type \"adapter\", adapter.type \"lora\")")
        }
        let arch = try m.string("general.architecture") ?? "?"
        guard arch == model.architecture else {
            throw FormatError(
                .invalidValue, path: path, field: "general.architecture",
                "the adapter is for \"\(arch)\", the model is \"\(model.architecture)\"")
        }
        let alpha = try m.double("adapter.lora.alpha") ?? 0
        var problems: [String] = []
        var found: [(layer: Int, target: LoRATarget, a: StoredTensor, b: StoredTensor)] = []
        for t in file.tensors where t.name.hasSuffix(".lora_a") {
            let base = String(t.name.dropLast(".lora_a".count))
            if base.hasSuffix("_norm.weight") { continue }  // llama.cpp ignores norm adapters too
            let parts = base.split(separator: ".")
            guard parts.count == 4, parts[0] == "blk", let layer = Int(parts[1]), layer >= 0, layer < model.layers,
                parts[3] == "weight",
                let target = LoRATarget.available(in: model).first(where: { $0.ggufName == parts[2] })
            else {
                problems.append("\(t.name): not a LoRA weight of a llama projection this model has")
                continue
            }
            guard let b = file.storedTensor(named: base + ".lora_b"), let a = file.storedTensor(named: t.name),
                a.type.isDequantizable, b.type.isDequantizable
            else {
                problems.append("\(t.name): no matching \(base).lora_b, or an unsupported type")
                continue
            }
            found.append((layer, target, a, b))
        }
        for t in file.tensors
        where t.name.hasSuffix(".lora_b") && file.tensor(named: String(t.name.dropLast(2)) + "_a") == nil {
            problems.append("\(t.name): no matching lora_a")
        }
        var specs: [(layer: Int, target: LoRATarget, rank: Int, scale: Float)] = []
        for f in found {
            let (inF, outF) = f.target.shape(model)
            let rank = f.b.shape.count == 2 ? f.b.shape[1] : 0
            guard rank > 0, f.a.shape == [rank, inF], f.b.shape == [outF, rank] else {
                problems.append(
                    "blk.\(f.layer).\(f.target.ggufName).weight: lora_a \(f.a.shape.reversed()) / lora_b \(f.b.shape.reversed()) do not fit [\(inF), r] / [r, \(outF)]"
                )
                continue
            }
            specs.append((f.layer, f.target, rank, Float(alpha != 0 ? alpha / Double(rank) : 1)))
        }
        if !problems.isEmpty || specs.isEmpty {
            throw FormatError(
                .invalidValue, path: path,
                specs.isEmpty && problems.isEmpty
                    ? "has no LoRA tensors" : "does not fit this model: " + problems.prefix(8).joined(separator: "; "))
        }
        let adapter = LoRAAdapter(model: model, modules: specs)
        let permuted = LlamaConfig.permutedArchitectures.contains(model.architecture)
        for f in found {
            guard let module = adapter.module(layer: f.layer, target: f.target) else { continue }
            f.a.dequantize(into: adapter.parameters.pointer + module.aOffset)
            let b = adapter.parameters.pointer + module.bOffset
            f.b.dequantize(into: b)
            if permuted, f.target == .q || f.target == .k {
                LlamaWeights.unpermuteRows(
                    b, heads: f.target == .q ? model.heads : model.kvHeads, rows: module.outFeatures,
                    columns: module.rank)
            }
        }
        let provenance = AdapterProvenance(json: try m.string("cairn.metadata").flatMap { try? JSONValue.parse($0) })
        return (adapter, provenance)
    }

    /// Writes a GGUF LoRA file that llama.cpp loads with `--lora`. llama.cpp scales every module by
    /// alpha / r with one alpha; when the modules' scales cannot be written that way, each module's scale is
    /// folded into its B so the product is unchanged.
    public func saveGGUF(path: String, provenance: AdapterProvenance, name: String? = nil) throws(FormatError) {
        let first = modules[0]
        let uniform = modules.allSatisfy {
            Double($0.scale) * Double($0.rank) == Double(first.scale) * Double(first.rank)
        }
        let alpha = uniform ? Double(first.scale) * Double(first.rank) : 1
        var w = GGUFWriter()
        w.set("general.architecture", .string(modelConfig.architecture))
        w.set("general.type", .string("adapter"))
        if let name { w.set("general.name", .string(name)) }
        w.set("adapter.type", .string("lora"))
        w.set("adapter.lora.alpha", .float32(Float(alpha)))
        w.set("cairn.metadata", .string(provenance.json(adapter: self).serialized(sortedKeys: true)))
        let permuted = LlamaConfig.permutedArchitectures.contains(modelConfig.architecture)
        for m in modules {
            let stem = "blk.\(m.layer).\(m.target.ggufName).weight"
            w.addTensor(
                name: stem + ".lora_a", ne: [m.inFeatures, m.rank], floats: floats(m.aOffset, m.rank * m.inFeatures))
            var b = floats(m.bOffset, m.outFeatures * m.rank)
            if !uniform {
                let fold = m.scale * Float(m.rank) / Float(alpha)
                for i in b.indices { b[i] *= fold }
            }
            if permuted, m.target == .q || m.target == .k {
                b = Self.permuteRows(
                    b, heads: m.target == .q ? modelConfig.heads : modelConfig.kvHeads, rows: m.outFeatures,
                    columns: m.rank)
            }
            w.addTensor(name: stem + ".lora_b", ne: [m.rank, m.outFeatures], floats: b)
        }
        try w.write(to: path)
    }

    /// HF → GGUF row order inside each head: `gguf[h·hd + 2i + t] = hf[h·hd + t·hd/2 + i]`.
    static func permuteRows(_ w: [Float], heads: Int, rows: Int, columns: Int) -> [Float] {
        let headDim = rows / heads
        let half = headDim / 2
        var out = w
        for h in 0..<heads {
            for i in 0..<half {
                for t in 0..<2 {
                    let src = (h * headDim + t * half + i) * columns
                    let dst = (h * headDim + 2 * i + t) * columns
                    for c in 0..<columns { out[dst + c] = w[src + c] }
                }
            }
        }
        return out
    }

    // MARK: Merging

    /// Adds every module's update to the base weights: W += multiplier · s · B·A.
    public func merge(into weights: LlamaWeights, multiplier: Float = 1) {
        precondition(weights.config == modelConfig, "merge: the adapter is for another architecture")
        for m in modules {
            let w = weights.layers[m.layer]
            guard let target = w[m.target].floats else {
                preconditionFailure(
                    "merge: \(m.target) of layer \(m.layer) is kept quantised; load fp32 weights to merge")
            }
            matmul(
                target, parameters.pointer + m.bOffset, parameters.pointer + m.aOffset, M: m.outFeatures,
                N: m.inFeatures,
                K: m.rank, alpha: m.scale * multiplier, beta: 1)
        }
    }
}
