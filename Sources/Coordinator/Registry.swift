// Registry: what the coordinator does with `publish`, `adapters` and `resolve`, apart from the socket.
//
// Publishing checks an adapter before anything is stored: its name, its files (a PEFT pair or one GGUF LoRA file),
// its base (the base it records must be the one named, and the coordinator must hold it), that its tensors fit
// that base, and that its bytes give the content hash it records. The files are kept as published (blobs named by
// their SHA-256), and the entry is written with its version in one transaction. Resolving a name checks the
// stored bytes against their hashes again before the entry is handed out, so a damaged file is never served.

import Foundation
import Llama
import ModelFormats
import Support
import Training
import Wire

/// Why a registry request was refused: a code for the `error` reply and a message saying what to do.
public struct RegistryError: Error, Sendable, CustomStringConvertible {
    public var code: String
    public var message: String
    public init(_ code: String, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}

/// The adapter registry over the coordinator's store and blobs.
public struct Registry: Sendable {
    let store: Store
    let blobs: BlobStore
    /// Where adapters are unpacked to be checked (inside the state directory).
    let scratch: String

    public init(store: Store, blobs: BlobStore, scratch: String) {
        self.store = store
        self.blobs = blobs
        self.scratch = scratch
    }

    /// Most entries listed in one reply's metadata (the rest are counted as omitted).
    public static let listBytes = 192 << 10

    // MARK: Publish

    /// Checks and stores a published adapter.
    ///
    /// - Parameters:
    ///   - publisher: the publishing key's name and key prefix, as the entry shows it.
    ///   - now: seconds since 1970.
    public func publish(_ p: Publish, publisher: String, now: Double) throws(RegistryError) -> Published {
        if let why = RegistryName.problem(p.name) { throw RegistryError("bad_name", "name \"\(p.name)\" \(why)") }
        var score: AdapterScore?
        var job: String?
        let files: [PullReply.File]
        if let id = p.job {
            guard p.files.isEmpty else {
                throw RegistryError("bad_publish", "publish a job's adapter or files, not both")
            }
            (files, score) = try jobFiles(id, now: now)
            job = id
        } else {
            files = try store(p.files)
        }
        let format = files.contains { $0.name == Publish.ggufFile } ? "gguf" : "peft"
        let dir = try unpack(files)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapterPath = format == "gguf" ? path(dir, Publish.ggufFile) : dir
        let recorded =
            (format == "gguf"
                ? AdapterProvenance.recorded(inGGUFFile: adapterPath)
                : AdapterProvenance.recorded(inPEFTFile: path(dir, "adapter_model.safetensors")))
            ?? AdapterProvenance()
        var base = try resolveBase(named: p.base ?? job.flatMap { try? store.job($0)?.modelBlob }, recorded: recorded)
        if let job, p.base == nil { base.name = jobBase(job) }
        let model: LlamaConfig
        do { model = try ModelSource.gguf(base.path).config() } catch {
            throw RegistryError("bad_base", "the base \(base.name) cannot be read: \(error)")
        }
        let adapter: LoRAAdapter
        do { adapter = try LoRAAdapter.load(path: adapterPath, model: model).0 } catch {
            throw RegistryError(
                "bad_adapter",
                "the adapter does not fit the base \(base.name): \(error.description.replacingOccurrences(of: dir + "/", with: ""))"
            )
        }
        let hash = adapter.contentHash
        if let claimed = recorded.adapterHash, claimed != hash {
            throw RegistryError(
                "bad_adapter",
                "the adapter's tensors give content hash \(hash.prefix(12))…, but its metadata records "
                    + "\(claimed.prefix(12))…: the file was changed after it was written; export it again")
        }
        var entry = RegistryEntry(
            name: p.name, version: 0, sha256: hash, baseHash: base.hash, baseName: base.name,
            description: p.description, publisher: publisher, created: now, format: format, files: files)
        entry.dataHash = recorded.dataHash
        entry.steps = recorded.steps
        entry.lineage = recorded.lineage
        entry.job = job
        let version: (version: Int, created: Bool)
        do {
            version = try store.publish(entry)
            if let score { try store.addScore(sha256: hash, score) }
        } catch { throw RegistryError("internal", "\(error)") }
        return Published(name: p.name, version: version.version, sha256: hash, created: version.created)
    }

    /// The blobs of the files a client sent.
    private func store(_ files: [(name: String, bytes: [UInt8])]) throws(RegistryError) -> [PullReply.File] {
        let names = files.map(\.name)
        guard names == Publish.peftFiles || names == [Publish.ggufFile] else {
            throw RegistryError(
                "bad_publish",
                "send a PEFT directory (adapter_config.json and adapter_model.safetensors) or one GGUF LoRA file")
        }
        do {
            return try files.map { f throws(FormatError) in
                PullReply.File(name: f.name, blob: try blobs.add(f.bytes), bytes: f.bytes.count)
            }
        } catch { throw RegistryError("internal", "cannot store the adapter: \(error)") }
    }

    /// A finished job's PEFT files, and its last evaluation on held-out data sent with it.
    private func jobFiles(_ id: String, now: Double) throws(RegistryError) -> ([PullReply.File], AdapterScore?) {
        guard let record = try? store.job(id) else { throw RegistryError("no_job", "no job \(id)") }
        guard record.candidates == nil else {
            throw RegistryError("no_adapter", "\(id) is an evaluation job: it scored adapters and made none")
        }
        guard record.state == .done else {
            throw RegistryError("not_done", "\(id) is \(record.state.rawValue); publish it when it is done")
        }
        var files: [PullReply.File] = []
        for name in Publish.peftFiles {
            guard let blob = record.outputs[name], let size = blobs.size(blob) else {
                throw RegistryError("no_blob", "the coordinator no longer holds \(id)'s \(name)")
            }
            files.append(PullReply.File(name: name, blob: blob, bytes: size))
        }
        var score: AdapterScore?
        if let data = record.validationBlob, let eval = try? store.lastEval(job: id), eval.tokens > 0 {
            score = AdapterScore(
                dataHash: data, dataName: record.validationName ?? "validation_data", loss: eval.loss,
                tokens: eval.tokens, job: id, created: now)
        }
        return (files, score)
    }

    /// The model a job was submitted with, as its job file names it.
    private func jobBase(_ id: String) -> String {
        guard let record = try? store.job(id) else { return id }
        var config = TrainingConfig()
        try? config.apply(yaml: record.spec, source: id)
        return config.model.isEmpty ? String(record.modelBlob.prefix(12)) : (config.model as NSString).lastPathComponent
    }

    /// The files as a directory the adapter loaders read (links to the blobs).
    private func unpack(_ files: [PullReply.File]) throws(RegistryError) -> String {
        do { return try linkAdapterFiles(files, blobs: blobs, under: scratch, label: "publish") } catch {
            throw RegistryError("internal", "cannot unpack the adapter in \(scratch): \(error)")
        }
    }

    /// The base's file, identity and readable name: the model `named` on the coordinator (checked against the
    /// base the adapter records), or else the recorded base when the coordinator holds it.
    private func resolveBase(named: String?, recorded: AdapterProvenance) throws(RegistryError) -> (
        path: String, hash: String, name: String
    ) {
        let recordedName = recorded.baseModelName ?? recorded.baseModelHash.map { String($0.prefix(12)) + "…" } ?? "?"
        if let named {
            let path: String
            let hash: String
            if BlobStore.isHash(named), blobs.contains(named) {
                (path, hash) = (blobs.path(named), named)
            } else {
                let source: ModelSource
                do { source = try ModelSource.resolve(named) } catch {
                    throw RegistryError("bad_base", "base \(named) on the coordinator: \(error)")
                }
                guard case .gguf(let p) = source else {
                    throw RegistryError(
                        "bad_base", "the registry takes adapters of GGUF bases; \(named) is a directory")
                }
                do { hash = try FileHash.modelIdentity(path: p) } catch {
                    throw RegistryError("bad_base", "base \(named): \(error)")
                }
                path = p
            }
            if let r = recorded.baseModelHash, r != hash {
                throw RegistryError(
                    "base_mismatch",
                    "the adapter was trained on base \(recordedName) (sha256 \(r.prefix(12))…), not on \(named) "
                        + "(sha256 \(hash.prefix(12))…); publish it with the base it was trained on")
            }
            return (path, hash, BlobStore.isHash(named) ? recordedName : (named as NSString).lastPathComponent)
        }
        guard let r = recorded.baseModelHash else {
            throw RegistryError(
                "no_base",
                "the adapter does not record its base model; name it with --base MODEL (as the coordinator knows it)")
        }
        guard blobs.contains(r) else {
            throw RegistryError(
                "no_base",
                "the adapter records base \(recordedName) (sha256 \(r.prefix(12))…), which this coordinator does not "
                    + "hold; name the base with --base MODEL (a model name or path on the coordinator)")
        }
        return (blobs.path(r), r, recorded.baseModelName ?? String(r.prefix(12)))
    }

    // MARK: List and resolve

    /// Entries (newest first) of a base (a model on the coordinator, a prefix of its SHA-256 of at least 8 hex
    /// digits, or its name as entries show it) or of a name, within the reply's size; and how many were left out.
    ///
    /// - Parameters:
    ///   - lineage: keep each entry's lineage tree (the HTTP API); the wire's list leaves it out (its metadata is
    ///     bounded), and `resolve` carries it.
    ///   - bytes: the most bytes of entries' JSON to return.
    public func list(_ request: AdapterListRequest, lineage: Bool = false, bytes budget: Int = listBytes)
        throws(RegistryError) -> (entries: [RegistryEntry], omitted: Int)
    {
        var all: [RegistryEntry]
        do { all = try store.registryEntries(name: request.name) } catch { throw RegistryError("internal", "\(error)") }
        if let base = request.base {
            let hex = base.count >= 8 && base.allSatisfy(\.isHexDigit)
            var identity: String?
            if !hex, case .gguf(let p)? = try? ModelSource.resolve(base) {
                identity = try? FileHash.modelIdentity(path: p)
            }
            all = all.filter { e in
                (hex && e.baseHash.hasPrefix(base.lowercased())) || e.baseHash == identity || e.baseName == base
            }
        }
        var out: [RegistryEntry] = []
        var bytes = 0
        for var e in all.reversed() {
            if !lineage { e.lineage = nil }
            let size = e.json.serialized().utf8.count
            guard bytes + size <= budget else { break }
            bytes += size
            out.append(e)
        }
        return (out, all.count - out.count)
    }

    /// The entry a reference (NAME or NAME@V) names, with its files checked against their hashes.
    public func resolve(_ reference: String) throws(RegistryError) -> RegistryEntry {
        guard let (name, version) = RegistryName.parse(reference) else {
            throw RegistryError("bad_name", "\"\(reference)\" is not a registry name (NAME or NAME@VERSION)")
        }
        let entry: RegistryEntry?
        do { entry = try store.registryEntry(name: name, version: version) } catch {
            throw RegistryError("internal", "\(error)")
        }
        guard let entry else {
            let versions = (try? store.registryEntries(name: name))?.map(\.version) ?? []
            if let version, !versions.isEmpty {
                throw RegistryError(
                    "no_adapter",
                    "\(name) has no version \(version); its versions are \(versions.map(String.init).joined(separator: ", "))"
                )
            }
            let near = Self.nearMatches(name, in: (try? store.registryNames()) ?? [])
            throw RegistryError(
                "no_adapter",
                "no adapter named \(name) in the registry"
                    + (near.isEmpty
                        ? "; `cairn adapters` lists what there is" : "; did you mean \(near.joined(separator: ", "))?"))
        }
        for f in entry.files {
            let actual = try? FileHash.sha256(file: blobs.path(f.blob))
            guard actual == f.blob else {
                throw RegistryError(
                    "corrupt",
                    "the coordinator's copy of \(entry.reference)'s \(f.name) "
                        + (actual == nil ? "is missing" : "does not match its SHA-256")
                        + "; it is not served. Publish the adapter again, or restore the state directory's blobs")
            }
        }
        return entry
    }

    /// Up to five names close to `name`: containing it, contained in it, or within a small edit distance.
    static func nearMatches(_ name: String, in names: [String]) -> [String] {
        let target = Array(name.lowercased())
        let scored = names.compactMap { candidate -> (String, Int)? in
            let c = Array(candidate.lowercased())
            if c.count >= 3, target.count >= 3,
                candidate.lowercased().contains(name.lowercased())
                    || name.lowercased().contains(candidate.lowercased())
            {
                return (candidate, 0)
            }
            let d = editDistance(target, c)
            return d <= max(2, target.count / 3) ? (candidate, d) : nil
        }
        return scored.sorted { ($0.1, $0.0) < ($1.1, $1.0) }.prefix(5).map(\.0)
    }

    static func editDistance(_ a: [Character], _ b: [Character]) -> Int {
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }

    private func path(_ dir: String, _ name: String) -> String { (dir as NSString).appendingPathComponent(name) }
}

extension RegistryEntry {
    /// This entry as a parent in a lineage tree (the shape `cairn lineage --json` prints), named NAME@V.
    public var lineageNode: JSONObject {
        var node: JSONObject = ["name": .string(reference), "sha256": .string(sha256)]
        node["base_model_sha256"] = .string(baseHash)
        node["data_sha256"] = dataHash.map(JSONValue.string)
        node["steps"] = steps.map { .integer(Int64($0)) }
        node["lineage"] = lineage
        return node
    }

    /// Loads the adapter from the coordinator's blobs, for a base of the given shape.
    func loadAdapter(model: LlamaConfig, blobs: BlobStore) throws(FormatError) -> (LoRAAdapter, AdapterProvenance) {
        if format == "gguf", let f = files.first(where: { $0.name == Publish.ggufFile }) {
            return try LoRAAdapter.loadGGUF(path: blobs.path(f.blob), model: model)
        }
        let dir: String
        do {
            dir = try linkAdapterFiles(files, blobs: blobs, under: NSTemporaryDirectory(), label: "cairn-adapter")
        } catch {
            throw FormatError(.notFound, path: NSTemporaryDirectory(), "cannot unpack \(reference): \(error)")
        }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        return try LoRAAdapter.loadPEFT(directory: dir, model: model)
    }
}

/// A fresh directory under `parent` with a link to each file's blob, named as the file: what the adapter loaders
/// read (a PEFT directory). Files with a bad blob name or a path in their name are left out.
func linkAdapterFiles(_ files: [PullReply.File], blobs: BlobStore, under parent: String, label: String) throws
    -> String
{
    let dir = (parent as NSString).appendingPathComponent("\(label)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for f in files where BlobStore.isHash(f.blob) && !f.name.contains("/") {
        try FileManager.default.createSymbolicLink(
            atPath: (dir as NSString).appendingPathComponent(f.name), withDestinationPath: blobs.path(f.blob))
    }
    return dir
}
