// cairn inspect: what a model or adapter file holds: architecture, metadata, tensors, types and sizes.

import ArgumentParser
import Foundation
import Llama
import ModelFormats
import TensorKernels

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe a model or adapter: architecture, metadata, tensors, dtypes, sizes.",
        discussion: """
            Reads GGUF files (models and LoRA adapters), safetensors files, Hugging Face model directories and \
            PEFT adapter directories. Long metadata arrays (the vocabulary) are summarised unless --full.

            Example: cairn inspect ~/.cache/cairn/models/smollm2-135m.gguf
            """)

    @Argument(
        help:
            "A GGUF or safetensors file, a Hugging Face model directory, a PEFT adapter directory, or a cached model name."
    )
    var path: String

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    @Flag(help: "Print metadata arrays in full.")
    var full = false

    @Flag(help: "Leave out the tensor list.")
    var noTensors = false

    struct TensorRow {
        var name: String
        var type: String
        var shape: [Int]
        var bytes: Int
    }

    struct Report {
        var format: String
        var size: Int
        var summary: [(String, JSONValue)] = []
        var metadata: [(String, JSONValue)] = []
        var tensors: [TensorRow] = []
        var notes: [String] = []
    }

    func run() throws {
        let target = try locate()
        var report: Report
        do {
            report = try describe(target)
        } catch let error as FormatError {
            throw CLIError(error.description)
        }
        if json {
            var object: JSONObject = [
                "path": .string(target), "format": .string(report.format), "bytes": .integer(Int64(report.size)),
            ]
            object["summary"] = .object(JSONObject(report.summary))
            object["metadata"] = .object(JSONObject(report.metadata))
            if !noTensors {
                object["tensors"] = .array(
                    report.tensors.map {
                        [
                            "name": .string($0.name), "type": .string($0.type),
                            "shape": .array($0.shape.map { .integer(Int64($0)) }), "bytes": .integer(Int64($0.bytes)),
                        ]
                    })
            }
            if !report.notes.isEmpty { object["notes"] = .array(report.notes.map(JSONValue.string)) }
            Terminal.printJSON(.object(object), pretty: true)
            return
        }
        var out = "\(target)\n  format: \(report.format), \(formatBytes(report.size))\n"
        for (k, v) in report.summary { out += "  \(k): \(render(v))\n" }
        let byType = Dictionary(grouping: report.tensors, by: \.type).map {
            ($0.key, $0.value.count, $0.value.reduce(0) { $0 + $1.bytes })
        }
        if !byType.isEmpty {
            out +=
                "  tensors: \(report.tensors.count) · "
                + byType.sorted { $0.2 > $1.2 }.map { "\($0.0) ×\($0.1) (\(formatBytes($0.2)))" }.joined(
                    separator: ", ") + "\n"
        }
        for note in report.notes { out += "  note: \(note)\n" }
        if !report.metadata.isEmpty {
            out += "metadata:\n"
            for (k, v) in report.metadata { out += "  \(k) = \(render(v))\n" }
        }
        if !noTensors, !report.tensors.isEmpty {
            out += "tensors:\n"
            let width = min(48, report.tensors.map(\.name.count).max() ?? 0)
            for t in report.tensors {
                let name = t.name.padding(toLength: max(width, t.name.count), withPad: " ", startingAt: 0)
                let shape = "[" + t.shape.map(String.init).joined(separator: ", ") + "]"
                out +=
                    "  \(name)  \(t.type.padding(toLength: 5, withPad: " ", startingAt: 0))  \(shape.padding(toLength: 14, withPad: " ", startingAt: 0))  \(formatBytes(t.bytes))\n"
            }
        }
        Terminal.write(out)
    }

    /// A path, or a cached model's path.
    func locate() throws -> String {
        if FileManager.default.fileExists(atPath: path) { return path }
        do {
            return try ModelSource.resolve(path).path
        } catch {
            throw CLIError(error.description)
        }
    }

    func describe(_ target: String) throws -> Report {
        var isDirectory: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: target, isDirectory: &isDirectory)
        if isDirectory.boolValue {
            let adapterConfig = (target as NSString).appendingPathComponent("adapter_config.json")
            if FileManager.default.fileExists(atPath: adapterConfig) { return try describePEFT(target, adapterConfig) }
            return try describeHF(target)
        }
        let file = try MappedFile(path: target)
        if file.withUnsafeBytes({ $0.count >= 4 && $0.loadUnaligned(as: UInt32.self) == 0x4655_4747 }) {
            return try describeGGUF(GGUFFile(file: file))
        }
        return describeSafetensors(try SafetensorsFile(file: file), format: "safetensors")
    }

    func describeGGUF(_ f: GGUFFile) throws -> Report {
        var r = Report(format: "GGUF v\(f.version) (alignment \(f.alignment))", size: f.fileSize)
        r.metadata = f.metadata.entries.map { ($0.key, json($0.value)) }
        r.tensors = f.tensors.map {
            TensorRow(name: $0.name, type: $0.type.description, shape: $0.rowMajorShape, bytes: $0.byteCount)
        }
        let kind = (try? f.metadata.string("general.type")) ?? nil
        if kind == "adapter" {
            r.summary.append(("adapter", .string((try? f.metadata.string("adapter.type")) ?? nil ?? "?")))
            r.summary.append(
                ("base architecture", .string((try? f.metadata.string("general.architecture")) ?? nil ?? "?")))
            if let alpha = try? f.metadata.double("adapter.lora.alpha") {
                r.summary.append(("lora alpha", .number(alpha)))
            }
            let ranks = Set(f.tensors.filter { $0.name.hasSuffix(".lora_b") }.map { $0.ne[0] })
            r.summary.append(("ranks", .array(ranks.sorted().map { .integer(Int64($0)) })))
        } else {
            do {
                let config = try LlamaConfig(gguf: f)
                r.summary += summary(config)
            } catch {
                r.notes.append("not runnable by Cairn: \(error.message)")
            }
        }
        return r
    }

    func describeSafetensors(_ f: SafetensorsFile, format: String) -> Report {
        var r = Report(format: format, size: f.fileSize)
        r.metadata = f.metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }
        r.tensors = f.tensors.map {
            TensorRow(name: $0.name, type: $0.dtype.rawValue, shape: $0.shape, bytes: $0.end - $0.begin)
        }
        return r
    }

    func describeHF(_ path: String) throws -> Report {
        let d = try HFModelDirectory(path: path)
        var r = Report(
            format: "Hugging Face model directory (\(d.files.count) safetensors file\(d.files.count == 1 ? "" : "s"))",
            size: d.files.reduce(0) { $0 + $1.fileSize })
        r.metadata = d.config.members.map { ($0.key, $0.value) }
        for f in d.files {
            r.tensors += f.tensors.map {
                TensorRow(name: $0.name, type: $0.dtype.rawValue, shape: $0.shape, bytes: $0.end - $0.begin)
            }
        }
        do {
            r.summary += summary(
                try LlamaConfig(huggingFace: d.config, path: (path as NSString).appendingPathComponent("config.json")))
        } catch {
            r.notes.append("not runnable by Cairn: \(error.message)")
        }
        r.summary.append(("tokenizer", .string(d.sideFile("tokenizer.json") == nil ? "none" : "tokenizer.json")))
        return r
    }

    func describePEFT(_ path: String, _ configPath: String) throws -> Report {
        let config = try HFModelDirectory.readJSON(configPath).objectValue ?? JSONObject()
        let weights = (path as NSString).appendingPathComponent("adapter_model.safetensors")
        var r = describeSafetensors(try SafetensorsFile(path: weights), format: "PEFT adapter directory")
        for key in [
            "peft_type", "base_model_name_or_path", "r", "lora_alpha", "use_rslora", "target_modules", "lora_dropout",
        ] {
            if let v = config[key] { r.summary.append((key, v)) }
        }
        r.metadata = config.members.map { ($0.key, $0.value) } + r.metadata.map { ("safetensors.\($0.0)", $0.1) }
        return r
    }

    func summary(_ c: LlamaConfig) -> [(String, JSONValue)] {
        [
            ("architecture", .string(c.architecture)), ("layers", .integer(Int64(c.layers))),
            ("dim", .integer(Int64(c.dim))),
            ("heads", .integer(Int64(c.heads))), ("kv heads", .integer(Int64(c.kvHeads))),
            ("head dim", .integer(Int64(c.headDim))),
            ("ffn dim", .integer(Int64(c.ffnDim))), ("vocabulary", .integer(Int64(c.vocabSize))),
            ("context", .integer(Int64(c.contextLength))), ("rope theta", .number(c.ropeTheta)),
            ("tied embeddings", .bool(c.tiedEmbeddings)), ("parameters", .integer(Int64(c.parameterCount))),
        ] + (Self.features(c).isEmpty ? [] : [("features", .string(Self.features(c).joined(separator: "; ")))])
    }

    /// What the model adds to the plain llama block, in words.
    static func features(_ c: LlamaConfig) -> [String] {
        var out: [String] = []
        if c.qkvBias { out.append("q/k/v biases") }
        if c.qkNorm { out.append("q/k norms") }
        if c.fusedProjections { out.append("fused qkv and gate_up") }
        if c.activation == .geluTanh { out.append("GeGLU (tanh)") }
        if c.postNorms { out.append("post-norms") }
        if let s = c.embeddingScale { out.append(String(format: "embeddings × %.3g", s)) }
        if let s = c.attentionScale { out.append(String(format: "attention scale %.4g", s)) }
        if let cap = c.attentionSoftCap { out.append("attention soft cap \(cap)") }
        if let cap = c.finalSoftCap { out.append("final soft cap \(cap)") }
        if let w = c.slidingWindow {
            out.append("sliding window \(w) on \(c.slidingLayers.filter { $0 }.count) of \(c.layers) layers")
        }
        if let local = c.localRopeTheta { out.append("local rope theta \(local)") }
        if c.ropeDim != c.headDim { out.append("rotary \(c.ropeDim) of \(c.headDim) dims") }
        if c.ropeLongFactors != nil {
            out.append(
                String(
                    format: "LongRoPE (original context %d, attention factor %.4f)", c.ropeOriginalContext ?? 0,
                    c.ropeAttentionFactor))
        } else if c.ropeFactors != nil {
            out.append("rope frequency factors (llama3)")
        }
        if c.ropeLinearScale != 1 { out.append("rope linear scaling × \(c.ropeLinearScale)") }
        return out
    }

    func json(_ v: GGUFValue) -> JSONValue {
        switch v {
        case .string(let s): return .string(s)
        case .bool(let b): return .bool(b)
        case .float32(let f): return .number(Double(f))
        case .float64(let d): return .number(d)
        case .uint64(let u): return Int64(exactly: u).map(JSONValue.integer) ?? .number(Double(u))
        case .array(let t, let items):
            if !full, items.count > 16 {
                return [
                    "type": .string("\(t)"), "count": .integer(Int64(items.count)),
                    "first": .array(items.prefix(8).map(json)),
                ]
            }
            return .array(items.map(json))
        default: return .integer(Int64(v.intValue ?? 0))
        }
    }

    func render(_ v: JSONValue) -> String {
        if let o = v.objectValue, let count = o["count"]?.intValue, let first = o["first"]?.arrayValue {
            return "[\(o["type"]?.stringValue ?? "")] × \(count): "
                + first.map { $0.serialized() }.joined(separator: ", ") + ", ..."
        }
        let s = v.serialized()
        return s.count > 200 ? String(s.prefix(197)) + "..." : s
    }
}

func formatBytes(_ n: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(n)
    var unit = 0
    while value >= 1024, unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(n) B" : String(format: "%.1f %@", value, units[unit])
}
