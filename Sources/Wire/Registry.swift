// Registry: the coordinator's catalogue of published adapters, as the wire, the HTTP API and the CLI see it.
//
// An entry is one version of a name: the adapter's content hash (`LoRAAdapter.contentHash`, the same whichever
// file format carried it), the base it belongs to, who published it and when, its files as blobs (the bytes as
// published), what its own metadata says of how it was made (data, steps, lineage), and its scores on held-out
// data. Names are versioned: publishing a name again adds a version and the old ones stay fetchable as NAME@V.
//
// Messages: `publish` (files as tensors, or a finished job's id) → `published`; `adapters` → `adapters_reply`;
// `resolve` (NAME or NAME@V) → `resolved` (the entry, whose files the client then fetches by blob).

import Support

/// Registry names: what `cairn publish --name` accepts.
public enum RegistryName {
    /// Longest name accepted.
    public static let maxBytes = 100

    /// Why `name` is not a registry name (nil when it is one): letters, digits and `._-/`, starting with a letter
    /// or digit, no empty path parts, at most 100 bytes.
    public static func problem(_ name: String) -> String? {
        guard !name.isEmpty else { return "a name is required" }
        guard name.utf8.count <= maxBytes else { return "is longer than \(maxBytes) bytes" }
        guard let first = name.unicodeScalars.first, first.properties.isASCIIHexDigit || isLetter(first) else {
            return "must start with a letter or a digit"
        }
        for c in name.unicodeScalars
        where !(isLetter(c) || ("0"..."9").contains(c) || "._-/".unicodeScalars.contains(c)) {
            return "may hold only letters, digits and . _ - / (found \"\(c)\")"
        }
        if name.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0.isEmpty || $0 == ".." }) {
            return "has an empty or \"..\" part between slashes"
        }
        return nil
    }

    private static func isLetter(_ c: Unicode.Scalar) -> Bool { ("a"..."z").contains(c) || ("A"..."Z").contains(c) }

    /// "NAME" → (NAME, nil); "NAME@3" → (NAME, 3); nil when malformed.
    public static func parse(_ text: String) -> (name: String, version: Int?)? {
        if let at = text.lastIndex(of: "@") {
            let name = String(text[..<at])
            guard let v = Int(text[text.index(after: at)...]), v >= 1, problem(name) == nil else { return nil }
            return (name, v)
        }
        return problem(text) == nil ? (text, nil) : nil
    }
}

/// A score of an adapter on held-out data.
public struct AdapterScore: Sendable, Equatable {
    /// SHA-256 of the held-out file.
    public var dataHash: String
    /// Its name, as the client or job gave it.
    public var dataName: String
    /// Mean loss per held-out token.
    public var loss: Double
    public var tokens: Int
    /// The job that measured it.
    public var job: String?
    public var created: Double

    public init(dataHash: String, dataName: String, loss: Double, tokens: Int, job: String?, created: Double) {
        self.dataHash = dataHash
        self.dataName = dataName
        self.loss = loss
        self.tokens = tokens
        self.job = job
        self.created = created
    }

    public var json: JSONValue {
        var o: JSONObject = [
            "data_sha256": .string(dataHash), "data": .string(dataName), "loss": .number(loss),
            "tokens": .integer(Int64(tokens)), "created": .number(created),
        ]
        o["job"] = job.map(JSONValue.string)
        return .object(o)
    }

    public init(json v: JSONValue) throws(StatusError) {
        let o = try StatusError.object(v, "score")
        self.init(
            dataHash: try o.string("data_sha256"), dataName: o.optionalString("data") ?? "", loss: try o.double("loss"),
            tokens: o.optionalInt("tokens") ?? 0, job: o.optionalString("job"),
            created: o.optionalDouble("created") ?? 0)
    }
}

/// One version of a published adapter.
public struct RegistryEntry: Sendable, Equatable {
    public var name: String
    public var version: Int
    /// The adapter's content hash.
    public var sha256: String
    /// The base model's identity (SHA-256 of its GGUF file) and a readable name of it.
    public var baseHash: String
    public var baseName: String
    public var description: String
    /// Who published it: the enrolled key's name and the key's first characters.
    public var publisher: String
    public var created: Double
    /// peft or gguf.
    public var format: String
    /// The files as published: name → (blob, bytes).
    public var files: [PullReply.File]
    /// What the adapter's metadata records: the training data's hash, optimizer steps, and how it was made
    /// (`lineage`: method and parents, in the shape `cairn lineage --json` prints).
    public var dataHash: String?
    public var steps: Int?
    public var lineage: JSONValue?
    /// The job that trained it, when published from a job.
    public var job: String?
    /// Parents in the registry (NAME@V), resolved by content hash from `lineage`; other parents by their own name.
    public var parents: [String]
    public var scores: [AdapterScore]

    public init(
        name: String, version: Int, sha256: String, baseHash: String, baseName: String, description: String,
        publisher: String, created: Double, format: String, files: [PullReply.File]
    ) {
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.baseHash = baseHash
        self.baseName = baseName
        self.description = description
        self.publisher = publisher
        self.created = created
        self.format = format
        self.files = files
        parents = []
        scores = []
    }

    /// NAME@V.
    public var reference: String { "\(name)@\(version)" }

    /// The SHA-256 of each parent node that `lineage` names (the direct parents).
    public var parentHashes: [String] {
        (lineage?.objectValue?["parents"]?.arrayValue ?? []).compactMap { $0.objectValue?["sha256"]?.stringValue }
    }

    public var json: JSONValue {
        var o: JSONObject = [
            "name": .string(name), "version": .integer(Int64(version)), "sha256": .string(sha256),
            "base_model_sha256": .string(baseHash), "base_model": .string(baseName),
            "description": .string(description), "publisher": .string(publisher), "created": .number(created),
            "format": .string(format),
            "files": .array(
                files.map { ["name": .string($0.name), "blob": .string($0.blob), "bytes": .integer(Int64($0.bytes))] }),
            "parents": .array(parents.map(JSONValue.string)), "scores": .array(scores.map(\.json)),
        ]
        o["data_sha256"] = dataHash.map(JSONValue.string)
        o["steps"] = steps.map { .integer(Int64($0)) }
        o["lineage"] = lineage
        o["job"] = job.map(JSONValue.string)
        return .object(o)
    }

    public init(json v: JSONValue) throws(StatusError) {
        let o = try StatusError.object(v, "adapter")
        var files: [PullReply.File] = []
        for f in o["files"]?.arrayValue ?? [] {
            let fo = try StatusError.object(f, "file")
            files.append(
                PullReply.File(name: try fo.string("name"), blob: try fo.string("blob"), bytes: try fo.int("bytes")))
        }
        self.init(
            name: try o.string("name"), version: try o.int("version"), sha256: try o.string("sha256"),
            baseHash: try o.string("base_model_sha256"), baseName: o.optionalString("base_model") ?? "",
            description: o.optionalString("description") ?? "", publisher: o.optionalString("publisher") ?? "",
            created: o.optionalDouble("created") ?? 0, format: o.optionalString("format") ?? "peft", files: files)
        dataHash = o.optionalString("data_sha256")
        steps = o.optionalInt("steps")
        lineage = o["lineage"]
        job = o.optionalString("job")
        parents = (o["parents"]?.arrayValue ?? []).compactMap(\.stringValue)
        var scores: [AdapterScore] = []
        for s in o["scores"]?.arrayValue ?? [] { scores.append(try AdapterScore(json: s)) }
        self.scores = scores
    }
}

// MARK: Messages

/// An adapter to publish: its files (a PEFT pair, or one GGUF LoRA file) or a finished job whose adapter to
/// publish, under a name.
public struct Publish: WireMessage, Equatable {
    public static let type = MessageType.publish
    /// The tensor names of the files: a PEFT directory's two files, or one GGUF LoRA file.
    public static let peftFiles = ["adapter_config.json", "adapter_model.safetensors"]
    public static let ggufFile = "adapter.gguf"

    public var name: String
    public var description: String
    /// The base on the coordinator (a cached model name or a path there); nil: the base the adapter records.
    public var base: String?
    /// A finished job whose adapter to publish (then no files).
    public var job: String?
    /// File name → bytes.
    public var files: [(name: String, bytes: [UInt8])]

    public init(
        name: String, description: String, base: String? = nil, job: String? = nil,
        files: [(name: String, bytes: [UInt8])] = []
    ) {
        self.name = name
        self.description = description
        self.base = base
        self.job = job
        self.files = files
    }

    public init(validated m: Message) {
        self.init(
            name: m.string("name"), description: m.string("description"), base: m.optionalString("base"),
            job: m.optionalString("job"), files: m.tensors.map { ($0.name, $0.bytes) })
    }

    public var message: Message {
        var o: JSONObject = ["name": .string(name), "description": .string(description)]
        o["base"] = base.map(JSONValue.string)
        o["job"] = job.map(JSONValue.string)
        return Message(
            .publish, o,
            tensors: files.map { Tensor(name: $0.name, dtype: .u8, shape: [$0.bytes.count], bytes: $0.bytes) })
    }

    public static func == (a: Publish, b: Publish) -> Bool {
        a.name == b.name && a.description == b.description && a.base == b.base && a.job == b.job
            && a.files.map(\.name) == b.files.map(\.name) && a.files.map(\.bytes) == b.files.map(\.bytes)
    }
}

/// The version a `publish` made (or found: the same adapter published again under the same name).
public struct Published: WireMessage, Equatable {
    public static let type = MessageType.published
    public var name: String
    public var version: Int
    public var sha256: String
    /// False when the name's latest version already was this adapter.
    public var created: Bool

    public init(name: String, version: Int, sha256: String, created: Bool) {
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.created = created
    }

    public init(validated m: Message) {
        self.init(
            name: m.string("name"), version: m.int("version"), sha256: m.string("sha256"),
            created: m.metadata["created"]?.boolValue ?? true)
    }

    public var message: Message {
        Message(
            .published,
            [
                "name": .string(name), "version": .integer(Int64(version)), "sha256": .string(sha256),
                "created": .bool(created),
            ])
    }
}

/// A listing of the registry: every entry, or those of one base (a model name on the coordinator, or a prefix of
/// the base's SHA-256), or the versions of one name.
public struct AdapterListRequest: WireMessage, Equatable {
    public static let type = MessageType.adapters
    public var base: String?
    public var name: String?

    public init(base: String? = nil, name: String? = nil) {
        self.base = base
        self.name = name
    }

    public init(validated m: Message) { self.init(base: m.optionalString("base"), name: m.optionalString("name")) }

    public var message: Message {
        var o = JSONObject()
        o["base"] = base.map(JSONValue.string)
        o["name"] = name.map(JSONValue.string)
        return Message(.adapters, o)
    }
}

/// A name (NAME or NAME@V) to look up; the reply is `resolved` with the entry.
public struct Resolve: WireMessage, Equatable {
    public static let type = MessageType.resolve
    public var reference: String
    public init(_ reference: String) { self.reference = reference }
    public init(validated m: Message) { reference = m.string("name") }
    public var message: Message { Message(.resolve, ["name": .string(reference)]) }
}
