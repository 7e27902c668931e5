// `cairn publish`, `cairn adapters` and `cairn fetch`: the coordinator's adapter registry from a client.

import ArgumentParser
import Foundation
import Llama
import ModelFormats
import Support
import Wire

struct PublishCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Publish an adapter to the coordinator's registry under a name.",
        discussion: """
            ADAPTER is a PEFT directory, a GGUF LoRA file, or the id of a finished job (job-3). The coordinator \
            checks it against its base before storing it: the base it records must be the one named with --base \
            (a model name or path on the coordinator), or, without --base, a base the coordinator holds. \
            Publishing a name again adds a version; the old versions stay fetchable as NAME@VERSION. The same \
            adapter published again under its name is not stored twice.

            Publishing needs a publisher key: `cairn coordinator token --role publisher`, then `cairn client \
            join`. The coordinator's own machine (--state) may publish.

            Examples:
              cairn publish runs/capitals --name capitals --description "capital cities, 200 steps"
              cairn publish job-3 --name capitals
              cairn publish other.gguf --name other --base smollm2-135m
            """)
    @OptionGroup var client: ClientOptions
    @Argument(help: "A PEFT directory, a GGUF LoRA file, or a finished job's id.")
    var adapter: String
    @Option(help: "The name to publish under (letters, digits and . _ - /).")
    var name: String
    @Option(help: "What it is for and how it was made.")
    var description = ""
    @Option(help: "The base model on the coordinator (default: the base the adapter records).")
    var base: String?

    func validate() throws {
        if let why = RegistryName.problem(name) { throw ValidationError("--name \"\(name)\" \(why)") }
    }

    func run() throws {
        var request = Publish(name: name, description: description, base: base)
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: adapter, isDirectory: &isDirectory) {
            let names = isDirectory.boolValue ? Publish.peftFiles : [Publish.ggufFile]
            for file in names {
                let path = isDirectory.boolValue ? (adapter as NSString).appendingPathComponent(file) : adapter
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw CLIError(
                        isDirectory.boolValue
                            ? "\(adapter) has no readable \(file); a PEFT directory holds adapter_config.json and adapter_model.safetensors"
                            : "cannot read \(adapter)")
                }
                guard data.count <= Wire.maxTensorBytes else {
                    throw CLIError("\(path) is \(data.count >> 20) MiB; at most \(Wire.maxTensorBytes >> 20) MiB")
                }
                request.files.append((file, Array(data)))
            }
        } else if adapter.hasPrefix("job-") {
            request.job = adapter
        } else {
            throw CLIError("\(adapter): no such PEFT directory or GGUF file (or a job id such as job-3)")
        }
        let reply = try client.connect().request(request.message, expect: .published, timeout: 300)
            .decode(as: Published.self)
        Terminal.write("\(reply.name)@\(reply.version)\n")
        Terminal.note(
            reply.created
                ? "published \(reply.name)@\(reply.version) (adapter \(reply.sha256.prefix(12))…)"
                : "\(reply.name)@\(reply.version) is already this adapter; nothing new was stored")
    }
}

struct AdaptersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "adapters",
        abstract: "List the adapters published to the coordinator's registry.",
        discussion: """
            One line per version, newest first: NAME@VERSION, its base, parents (registry names where the parent \
            is published), the training data's fingerprint, steps, and its best score on held-out data. --json \
            prints the entries as the API serves them (/api/adapters).

            Examples:
              cairn adapters --base smollm2-135m
              cairn adapters --name capitals --json
            """)
    @OptionGroup var client: ClientOptions
    @Option(help: "Only adapters of this base: a model on the coordinator, or 8+ hex digits of its SHA-256.")
    var base: String?
    @Option(help: "Only the versions of this name.")
    var name: String?
    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let reply = try client.connect().request(
            AdapterListRequest(base: base, name: name).message, expect: .adaptersReply)
        let body = reply.metadata["body"]?.arrayValue ?? []
        let omitted = reply.metadata["omitted"]?.intValue ?? 0
        if json {
            var o: JSONObject = ["adapters": .array(body)]
            if omitted > 0 { o["omitted"] = .integer(Int64(omitted)) }
            Terminal.printJSON(.object(o), pretty: true)
            return
        }
        var entries: [RegistryEntry] = []
        for v in body {
            do { entries.append(try RegistryEntry(json: v)) } catch {
                throw CLIError("bad registry entry from the coordinator: \(error)")
            }
        }
        Terminal.write(Self.render(entries))
        if omitted > 0 { Terminal.note("\(omitted) older entries left out; narrow with --base or --name") }
    }

    static func render(_ entries: [RegistryEntry]) -> String {
        if entries.isEmpty { return "no adapters published\n" }
        var rows = [["ADAPTER", "BASE", "PARENTS", "DATA", "STEPS", "HELD-OUT LOSS", "PUBLISHED BY"]]
        for e in entries {
            let best = e.scores.min { $0.loss < $1.loss }
            rows.append([
                e.reference, e.baseName, e.parents.isEmpty ? "-" : e.parents.joined(separator: " + "),
                e.dataHash.map { String($0.prefix(12)) } ?? "-", e.steps.map(String.init) ?? "-",
                best.map { String(format: "%.4f on %@", $0.loss, $0.dataName) } ?? "-", e.publisher,
            ])
        }
        let widths = rows[0].indices.map { i in rows.map { $0[i].count }.max() ?? 0 }
        return rows.map { row in
            zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n") + "\n"
    }
}

struct FetchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fetch",
        abstract: "Download a published adapter, byte for byte as it was published.",
        discussion: """
            NAME is the latest version; NAME@VERSION an older one. A PEFT adapter is written as a directory \
            (adapter_config.json, adapter_model.safetensors), a GGUF LoRA as one file. Every file is checked \
            against its SHA-256 before it is put in place.

            Example:
              cairn fetch capitals -o adapters/capitals
            """)
    @OptionGroup var client: ClientOptions
    @Argument(help: "NAME or NAME@VERSION.")
    var reference: String
    @Option(name: .shortAndLong, help: "Output directory (PEFT) or file (GGUF).")
    var output: String

    func run() throws {
        let entry = try Self.fetch(reference, to: output, client: client.connect())
        Terminal.note("\(entry.reference) (\(entry.format), adapter \(entry.sha256.prefix(12))…) written to \(output)")
    }

    /// Resolves and downloads an entry; returns it.
    static func fetch(_ reference: String, to output: String, client c: ClusterClient) throws -> RegistryEntry {
        let entry = try resolve(reference, client: c)
        try download(entry, to: output, client: c)
        return entry
    }

    /// The entry a reference names.
    static func resolve(_ reference: String, client c: ClusterClient) throws -> RegistryEntry {
        let reply = try c.request(Resolve(reference).message, expect: .resolved)
        do { return try RegistryEntry(json: reply.metadata["body"] ?? .null) } catch {
            throw CLIError("bad registry entry from the coordinator: \(error)")
        }
    }

    /// Downloads an entry's files to a directory (PEFT) or a file (GGUF), each checked against its SHA-256.
    static func download(_ entry: RegistryEntry, to output: String, client c: ClusterClient) throws {
        let directory = entry.format != "gguf"
        if directory {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: output, isDirectory: &isDirectory), !isDirectory.boolValue {
                throw CLIError("\(output) is a file; \(entry.reference) is a PEFT adapter, written as a directory")
            }
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        }
        for f in entry.files {
            guard BlobStore.isHash(f.blob), !f.name.contains("/") else {
                throw CLIError("the coordinator sent a bad file entry for \(entry.reference)")
            }
            let path = directory ? (output as NSString).appendingPathComponent(f.name) : output
            let progress = ProgressLine("fetch \(f.name)", total: f.bytes)
            try c.download(blob: f.blob, bytes: f.bytes, to: path) { progress.update($0, unit: "bytes") }
            progress.finish()
        }
    }

    /// A registry entry in this machine's adapter cache ($CAIRN_HOME/adapters/NAME@V, fetched once and checked
    /// against the entry's hashes on every use); returns its path. For `--init-adapter NAME`.
    static func cached(_ reference: String, client options: ClientOptions) throws -> String {
        guard RegistryName.parse(reference) != nil else {
            throw CLIError(
                "init_adapter \(reference): no such PEFT directory or GGUF LoRA file (nor a registry name)")
        }
        let c: ClusterClient
        do { c = try options.connect() } catch {
            throw CLIError(
                "init_adapter \(reference) is not a file here, so it was taken as a registry name, but: \(error)")
        }
        let entry = try resolve(reference, client: c)
        var path = (ModelSource.home as NSString).appendingPathComponent("adapters/\(entry.reference)")
        if entry.format == "gguf" { path += ".gguf" }
        let intact = entry.files.allSatisfy { f in
            let file = entry.format == "gguf" ? path : (path as NSString).appendingPathComponent(f.name)
            return (try? FileHash.sha256(file: file)) == f.blob
        }
        if !intact {
            try FileManager.default.createDirectory(
                atPath: entry.format == "gguf" ? (path as NSString).deletingLastPathComponent : path,
                withIntermediateDirectories: true)
            try download(entry, to: path, client: c)
        }
        Terminal.note(
            "registry adapter \(entry.reference) (adapter \(entry.sha256.prefix(12))…) from \(c.endpoint), at \(path)")
        return path
    }
}
