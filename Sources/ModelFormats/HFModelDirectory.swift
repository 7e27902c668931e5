// HFModelDirectory: a Hugging Face model directory as `save_pretrained` writes it: config.json, weights in
// model.safetensors or in shards listed by model.safetensors.index.json, and optionally tokenizer.json,
// tokenizer_config.json (which carries the chat template) and generation_config.json.

import Foundation

/// A Hugging Face model directory with safetensors weights.
public final class HFModelDirectory: TensorStore {
    /// Largest JSON side file read (config, index, tokenizer config); tokenizer.json is read by the tokenizer.
    public static let maxJSONBytes = 64 << 20

    /// The directory.
    public let path: String
    /// config.json.
    public let config: JSONObject
    /// tokenizer_config.json, if present.
    public let tokenizerConfig: JSONObject?
    /// generation_config.json, if present.
    public let generationConfig: JSONObject?
    /// The weight files.
    public let files: [SafetensorsFile]
    private let location: [String: Int]
    /// All tensor names, shard by shard.
    public let tensorNames: [String]

    /// Opens the directory and every weight shard.
    ///
    /// - Throws: `FormatError` when config.json or the weights are missing or invalid.
    public init(path: String) throws(FormatError) {
        self.path = path
        let fm = FileManager.default
        func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }
        guard fm.fileExists(atPath: file("config.json")) else {
            throw FormatError(.missing, path: path, "not a Hugging Face model directory: config.json is missing")
        }
        guard let config = try Self.readJSON(file("config.json")).objectValue else {
            throw FormatError(.invalidValue, path: file("config.json"), "must be a JSON object")
        }
        self.config = config
        tokenizerConfig =
            fm.fileExists(atPath: file("tokenizer_config.json"))
            ? try Self.readJSON(file("tokenizer_config.json")).objectValue : nil
        generationConfig =
            fm.fileExists(atPath: file("generation_config.json"))
            ? try Self.readJSON(file("generation_config.json")).objectValue : nil

        var shardNames: [String] = []
        var declared: [String: String] = [:]
        let indexPath = file("model.safetensors.index.json")
        if fm.fileExists(atPath: indexPath) {
            guard let map = try Self.readJSON(indexPath).objectValue?["weight_map"]?.objectValue else {
                throw FormatError(
                    .missing, path: indexPath, field: "weight_map", "missing or not an object of tensor → file")
            }
            for (tensor, value) in map.members {
                guard let shard = value.stringValue, !shard.isEmpty, !shard.contains("/"), shard != "..", shard != "."
                else {
                    throw FormatError(
                        .invalidValue, path: indexPath, field: "weight_map.\(tensor)",
                        "must name a file inside the model directory")
                }
                declared[tensor] = shard
                if !shardNames.contains(shard) { shardNames.append(shard) }
            }
        } else if fm.fileExists(atPath: file("model.safetensors")) {
            shardNames = ["model.safetensors"]
        } else {
            let contents = (try? fm.contentsOfDirectory(atPath: path)) ?? []
            if contents.contains(where: { $0.hasSuffix(".bin") || $0.hasSuffix(".pt") }) {
                throw FormatError(
                    .unsupported, path: path,
                    "has PyTorch pickle weights (*.bin) only; Cairn reads safetensors. Convert with transformers: "
                        + "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)")
            }
            throw FormatError(.missing, path: path, "no model.safetensors or model.safetensors.index.json")
        }
        var files: [SafetensorsFile] = []
        var location: [String: Int] = [:]
        var names: [String] = []
        for shard in shardNames {
            let f = try SafetensorsFile(path: file(shard))
            for t in f.tensors {
                guard location[t.name] == nil else {
                    throw FormatError(
                        .conflict, path: f.path, field: "tensor '\(t.name)'", "also present in another shard")
                }
                location[t.name] = files.count
                names.append(t.name)
            }
            files.append(f)
        }
        for (tensor, shard) in declared.sorted(by: { $0.key < $1.key }) {
            guard let i = location[tensor], files[i].path == file(shard) else {
                throw FormatError(
                    .missing, path: indexPath, field: "weight_map.\(tensor)", "tensor not found in \(shard)")
            }
        }
        self.files = files
        self.location = location
        tensorNames = names
    }

    /// Reads and parses a bounded JSON file.
    ///
    /// - Throws: `FormatError` with the JSON error's line and column.
    public static func readJSON(_ path: String, maxBytes: Int = maxJSONBytes) throws(FormatError) -> JSONValue {
        let file = try MappedFile(path: path)
        guard file.count <= maxBytes else {
            throw FormatError(
                .outOfBounds, path: path, "is \(file.count) bytes; the limit for this file is \(maxBytes)")
        }
        do {
            return try file.withUnsafeBytes { (bytes) throws(JSONError) in try JSONValue.parse(bytes) }
        } catch {
            throw FormatError(.invalidValue, path: path, "invalid JSON at \(error)")
        }
    }

    /// The path of a side file, if it exists (e.g. `tokenizer.json`).
    public func sideFile(_ name: String) -> String? {
        let p = (path as NSString).appendingPathComponent(name)
        return FileManager.default.fileExists(atPath: p) ? p : nil
    }

    public var sourceDescription: String { path }

    public func storedTensor(named name: String) -> StoredTensor? {
        location[name].flatMap { files[$0].storedTensor(named: name) }
    }

    /// The safetensors entry of a tensor (including dtypes Cairn does not load), or nil.
    public func tensorInfo(named name: String) -> SafetensorsTensorInfo? {
        location[name].flatMap { files[$0].tensor(named: name) }
    }
}
