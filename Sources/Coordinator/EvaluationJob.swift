// EvaluationJob: a job that trains nothing and scores adapters (`mode: evaluate`). Its data is the held-out set;
// unit k is the evaluation of its k-th adapter over every row, split across the workers like a sync step's rows.
//
// At submit time the coordinator resolves the job's adapters (registry names, and merges of registry adapters
// described inline, which it computes) and writes them all in one layout that holds each exactly: every module any
// of them adapts, at the largest rank, with scale 1. A module's A goes into the first rows, s·B into the first
// columns, zeros elsewhere, so ΔW is unchanged. The workers see an ordinary adapter of that layout, and each unit's
// assignment carries that adapter's parameters. Each score is journaled with the job's progress, and recorded
// against the adapter's content hash, so `cairn adapters` shows it beside a published adapter.

import Adapters
import Foundation
import Llama
import ModelFormats
import Support
import Training
import Wire

/// An evaluation job's adapters as the coordinator prepared them.
public struct CandidateSet: Sendable, Equatable {
    public struct Candidate: Sendable, Equatable {
        /// How the job names it (a registry reference, or `method(a×w, …)`).
        public var label: String
        /// The adapter's own content hash (before it was written in the common layout).
        public var sha256: String
    }

    public var candidates: [Candidate]
    /// The common layout.
    public var lora: LoRAConfig
    /// The candidates' parameters in that layout, one after another (f32, little-endian).
    public var parametersBlob: String

    public var json: JSONValue {
        var layout: JSONObject = [
            "rank": .integer(Int64(lora.rank)), "alpha": .number(lora.alpha),
            "targets": .array(lora.targets.map { .string($0.rawValue) }),
        ]
        layout["layers"] = lora.layers.map { .array($0.map { .integer(Int64($0)) }) }
        return [
            "candidates": .array(candidates.map { ["label": .string($0.label), "sha256": .string($0.sha256)] }),
            "layout": .object(layout), "parameters_blob": .string(parametersBlob),
        ]
    }

    public init(candidates: [Candidate], lora: LoRAConfig, parametersBlob: String) {
        self.candidates = candidates
        self.lora = lora
        self.parametersBlob = parametersBlob
    }

    public init?(json: JSONValue) {
        guard let o = json.objectValue, let layout = o["layout"]?.objectValue, let rank = layout["rank"]?.intValue,
            let alpha = layout["alpha"]?.doubleValue, let blob = o["parameters_blob"]?.stringValue
        else { return nil }
        let targets = (layout["targets"]?.arrayValue ?? []).compactMap { $0.stringValue.flatMap(LoRATarget.init) }
        lora = LoRAConfig(
            rank: rank, alpha: alpha, targets: targets,
            layers: layout["layers"]?.arrayValue.map { $0.compactMap(\.intValue) })
        candidates = (o["candidates"]?.arrayValue ?? []).compactMap { v in
            guard let c = v.objectValue, let label = c["label"]?.stringValue, let sha = c["sha256"]?.stringValue
            else { return nil }
            return Candidate(label: label, sha256: sha)
        }
        parametersBlob = blob
    }

    /// Most adapters one evaluation job scores.
    public static let maxCandidates = 256

    /// Most adapters a client sends with an evaluation job, and most bytes of them.
    public static let maxUploads = 64

    /// The adapters a client sent with an evaluation job (`JobSubmission.adapters`), by the path the job file
    /// names, stored as blobs: each a PEFT pair or one GGUF file, as entries that load like registry ones.
    static func uploads(_ bundle: [UInt8], blobs: BlobStore) throws(JobError) -> [String: RegistryEntry] {
        let file: SafetensorsFile
        do { file = try SafetensorsFile(file: MappedFile(copying: bundle, path: "adapters sent with the job")) } catch {
            throw JobError("the adapters sent with the job cannot be read: \(error)")
        }
        guard let text = file.metadata["uploads"], let map = (try? JSONValue.parse(Array(text.utf8)))?.objectValue,
            map.members.count <= maxUploads
        else { throw JobError("the adapters sent with the job have no valid `uploads` map (at most \(maxUploads))") }
        var out: [String: RegistryEntry] = [:]
        for (name, v) in map.members {
            guard let index = v.intValue, index >= 0, index < maxUploads, name.utf8.count <= 4096 else {
                throw JobError("the adapters sent with the job: a bad entry for \(name)")
            }
            var files: [PullReply.File] = []
            for f in Publish.peftFiles + [Publish.ggufFile] {
                guard let info = file.tensor(named: "\(index)/\(f)") else { continue }
                guard info.dtype == .U8 else {
                    throw JobError("the adapters sent with the job: \(info.name) is not bytes")
                }
                let bytes = Array(file.data(for: info))
                do { files.append(PullReply.File(name: f, blob: try blobs.add(bytes), bytes: bytes.count)) } catch {
                    throw JobError("cannot store the adapters sent with the job: \(error)")
                }
            }
            let names = files.map(\.name)
            guard names == Publish.peftFiles || names == [Publish.ggufFile] else {
                throw JobError(
                    "\(name): send a PEFT directory (adapter_config.json and adapter_model.safetensors) or one GGUF LoRA file"
                )
            }
            out[name] = RegistryEntry(
                name: name, version: 0, sha256: "", baseHash: "", baseName: "", description: "", publisher: "",
                created: 0, format: names == [Publish.ggufFile] ? "gguf" : "peft", files: files)
        }
        return out
    }

    /// Resolves and builds the job's adapters for a base: registry adapters are loaded (each checked to belong to
    /// the base), adapters sent with the job (`uploads`, by path) checked against the base they record, merges
    /// computed, and all written in the common layout into a blob.
    static func prepare(
        _ specs: [EvaluationCandidate], model: LlamaConfig, modelBlob: String, registry: Registry, blobs: BlobStore,
        uploads: [String: RegistryEntry] = [:]
    ) throws(JobError) -> CandidateSet {
        guard !specs.isEmpty else { throw JobError("job file: adapters: an evaluation job needs adapters to score") }
        guard specs.count <= maxCandidates else {
            throw JobError("job file: adapters: at most \(maxCandidates) adapters per evaluation job")
        }
        var loaded: [String: (adapter: LoRAAdapter, provenance: AdapterProvenance)] = [:]
        func adapter(_ reference: String) throws(JobError) -> (adapter: LoRAAdapter, provenance: AdapterProvenance) {
            if let a = loaded[reference] { return a }
            if let upload = uploads[reference] {
                let a: (LoRAAdapter, AdapterProvenance)
                do { a = try upload.loadAdapter(model: model, blobs: blobs) } catch {
                    throw JobError("job file: adapters: \(reference) does not fit the job's model: \(error)")
                }
                if let recorded = a.1.baseModelHash, recorded != modelBlob {
                    throw JobError(
                        "job file: adapters: \(reference) was trained on base \(recorded.prefix(12))…, not on the "
                            + "job's model (\(modelBlob.prefix(12))…)")
                }
                loaded[reference] = a
                return a
            }
            let entry: RegistryEntry
            do { entry = try registry.resolve(reference) } catch {
                throw JobError("job file: adapters: \(error.message)")
            }
            guard entry.baseHash == modelBlob else {
                throw JobError(
                    "job file: adapters: \(entry.reference) is an adapter of base \(entry.baseName), not of the job's model"
                )
            }
            do {
                let a = try entry.loadAdapter(model: model, blobs: blobs)
                loaded[reference] = a
                return a
            } catch { throw JobError("job file: adapters: \(entry.reference) cannot be loaded: \(error)") }
        }
        var built: [(label: String, adapter: LoRAAdapter)] = []
        for spec in specs {
            if let reference = spec.reference {
                built.append((spec.label, try adapter(reference).adapter))
                continue
            }
            guard let method = spec.method.flatMap(MergeMethod.init) else {
                throw JobError(
                    "job file: adapters: merge \(spec.method ?? "?") is not a method; use one of "
                        + MergeMethod.allCases.map(\.rawValue).joined(separator: ", "))
            }
            var inputs: [MergeInput] = []
            for (name, _) in spec.inputs {
                let a = try adapter(name)
                inputs.append(MergeInput(name: name, adapter: a.adapter, provenance: a.provenance))
            }
            var options = MergeOptions(method: method)
            options.weights = spec.inputs.map(\.weight)
            if let d = spec.density { options.density = d }
            options.rank = spec.rank
            do { built.append((spec.label, try AdapterMerge.merge(inputs, options: options).0)) } catch {
                throw JobError("job file: adapters: \(spec.label): \(error)")
            }
        }
        // The layout that holds them all: every adapted layer × projection, at the largest rank, scale 1.
        let rank = built.flatMap { $0.adapter.modules.map(\.rank) }.max() ?? 1
        var targets: [LoRATarget] = []
        var layers = Set<Int>()
        for (_, a) in built {
            for m in a.modules {
                if !targets.contains(m.target) { targets.append(m.target) }
                layers.insert(m.layer)
            }
        }
        guard !targets.isEmpty else { throw JobError("job file: adapters: every adapter is empty") }
        let lora = LoRAConfig(
            rank: rank, alpha: Double(rank), targets: targets,
            layers: layers.count == model.layers ? nil : layers.sorted())
        let common = LoRAAdapter(model: model, config: lora, seed: 0)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(built.count * common.parameters.count * 4)
        for (_, a) in built {
            var p = [Float](repeating: 0, count: common.parameters.count)
            for m in a.modules {
                guard let t = common.module(layer: m.layer, target: m.target) else { continue }
                for r in 0..<m.rank {
                    for i in 0..<m.inFeatures {
                        p[t.aOffset + r * t.inFeatures + i] = a.parameters.pointer[m.aOffset + r * m.inFeatures + i]
                    }
                }
                for o in 0..<m.outFeatures {
                    for r in 0..<m.rank {
                        p[t.bOffset + o * t.rank + r] = m.scale * a.parameters.pointer[m.bOffset + o * m.rank + r]
                    }
                }
            }
            p.withUnsafeBytes { bytes += $0 }
        }
        let blob: String
        do { blob = try blobs.add(bytes) } catch { throw JobError("cannot store the adapters: \(error)") }
        return CandidateSet(
            candidates: built.map { Candidate(label: $0.label, sha256: $0.adapter.contentHash) }, lora: lora,
            parametersBlob: blob)
    }
}

/// A running evaluation job.
final class EvaluationJob: RunningJob {
    let id: String
    let record: JobRecord
    let prepared: PreparedJob
    let adapter: LoRAAdapter
    let candidates: CandidateSet
    private let parameters: MappedFile
    /// Adapters scored (journaled).
    private(set) var step: Int
    var units: Int { candidates.candidates.count }
    var isFinished: Bool { step >= units }
    var evaluation: Evaluation?

    init(record: JobRecord, blobs: BlobStore) throws(JobError) {
        id = record.id
        self.record = record
        guard let set = record.candidates else { throw JobError("the evaluation job's adapters are not recorded") }
        self.candidates = set
        prepared = try PreparedJob.prepare(record: record, blobs: blobs)
        adapter = LoRAAdapter(model: prepared.modelConfig, config: prepared.config.lora, seed: 0)
        guard blobs.contains(set.parametersBlob) else {
            throw JobError("the evaluation job's adapters are missing from the state directory's blobs")
        }
        do { parameters = try MappedFile(path: blobs.path(set.parametersBlob)) } catch {
            throw JobError("the evaluation job's adapters cannot be read: \(error)")
        }
        guard parameters.count == candidates.candidates.count * adapter.parameters.count * 4 else {
            throw JobError("the evaluation job's adapters do not fit their layout")
        }
        step = record.step
    }

    /// Puts adapter `k` (1-based) into `adapter`, for the assignments of its evaluation.
    func select(_ k: Int) {
        let n = adapter.parameters.count
        parameters.withUnsafeBytes { raw in
            let floats = raw.bindMemory(to: Float.self)
            adapter.parameters.pointer.update(from: floats.baseAddress! + (k - 1) * n, count: n)
        }
    }

    /// Records that adapter `k` is scored.
    func scored(_ k: Int) { step = max(step, k) }

    func countBytes(_ n: Int) {}

    func provenance() -> AdapterProvenance { AdapterProvenance() }
}
