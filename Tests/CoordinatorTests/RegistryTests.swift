// The adapter registry apart from the socket: what publishing checks, versions, listing, resolving (with near
// matches and a damaged blob), and that it all survives reopening the state directory.

import Coordinator
import Foundation
import Llama
import ModelFormats
import Support
import TestSupport
import Testing
import Wire

@Suite struct RegistryTests {
    let modelPath = Fixtures.path("tiny-llama/a.gguf")

    /// A state directory with the tiny base in its blobs (as a cluster job leaves it), and a registry over it.
    func registry() throws -> (Registry, Store, BlobStore, URL) {
        let dir = Fixtures.temporaryDirectory("cairn-registry")
        let store = try Store(directory: dir.path)
        let blobs = try BlobStore(root: dir.appendingPathComponent("blobs").path)
        _ = try blobs.add(file: modelPath)
        return (Registry(store: store, blobs: blobs, scratch: dir.path), store, blobs, dir)
    }

    /// An adapter of the tiny base with non-zero B (seeded), as PEFT files, recording `base` (nil: no base).
    func adapterFiles(seed: UInt64, base: String?, extraLayers: Int = 0, gguf: Bool = false) throws -> [(
        name: String, bytes: [UInt8]
    )] {
        var config = try ModelSource.gguf(modelPath).config()
        config.layers += extraLayers
        let adapter = LoRAAdapter(model: config, config: LoRAConfig(rank: 2, alpha: 4, targets: [.q, .v]), seed: seed)
        for i in 0..<adapter.parameters.count { adapter.parameters.pointer[i] += Float(i % 7) * 1e-3 }
        var provenance = AdapterProvenance()
        provenance.baseModelHash = base
        provenance.baseModelName = base == nil ? nil : "a.gguf"
        provenance.steps = 5
        let dir = Fixtures.temporaryDirectory("cairn-registry-adapter")
        defer { try? FileManager.default.removeItem(at: dir) }
        if gguf {
            let path = dir.appendingPathComponent("adapter.gguf").path
            try adapter.saveGGUF(path: path, provenance: provenance)
            return [(Publish.ggufFile, Array(try Data(contentsOf: URL(fileURLWithPath: path))))]
        }
        try adapter.savePEFT(directory: dir.path, provenance: provenance)
        return try Publish.peftFiles.map { ($0, Array(try Data(contentsOf: dir.appendingPathComponent($0)))) }
    }

    /// The registry's refusal of `body` (nil when it succeeded or failed otherwise).
    func refusal(_ body: () throws -> Void) -> RegistryError? {
        do { try body() } catch { return error as? RegistryError }
        return nil
    }

    @Test func publishingVersionsNamesAndResolvesThem() throws {
        let (registry, _, _, dir) = try registry()
        defer { try? FileManager.default.removeItem(at: dir) }
        let base = try FileHash.sha256(file: modelPath)
        let first = try adapterFiles(seed: 1, base: base)
        let p1 = try registry.publish(
            Publish(name: "capitals", description: "v1", files: first), publisher: "me", now: 1)
        #expect(p1.version == 1 && p1.created)
        // The same adapter again: the same version, nothing new.
        let again = try registry.publish(
            Publish(name: "capitals", description: "again", files: first), publisher: "me", now: 2)
        #expect(again.version == 1 && !again.created && again.sha256 == p1.sha256)
        let second = try adapterFiles(seed: 2, base: base)
        let p2 = try registry.publish(
            Publish(name: "capitals", description: "v2", files: second), publisher: "me", now: 3)
        #expect(p2.version == 2 && p2.created && p2.sha256 != p1.sha256)

        // The latest by name, an old one by NAME@V; the files are the bytes published.
        let latest = try registry.resolve("capitals")
        #expect(latest.version == 2 && latest.sha256 == p2.sha256 && latest.baseHash == base)
        #expect(latest.steps == 5 && latest.description == "v2" && latest.publisher == "me")
        let old = try registry.resolve("capitals@1")
        #expect(old.files.map(\.blob) == first.map { FileHash.sha256($0.bytes) })
        #expect(old.files.map(\.bytes) == first.map(\.bytes.count))

        // The same adapter as a GGUF LoRA file has the same content hash.
        let gguf = try adapterFiles(seed: 1, base: base, gguf: true)
        let p3 = try registry.publish(
            Publish(name: "capitals-gguf", description: "", files: gguf), publisher: "me", now: 4)
        #expect(p3.sha256 == p1.sha256)
        #expect(try registry.resolve("capitals-gguf").format == "gguf")

        // Listing: newest first; by base hash prefix, by base file, by name.
        #expect(
            try registry.list(AdapterListRequest()).entries.map(\.reference) == [
                "capitals-gguf@1", "capitals@2", "capitals@1",
            ])
        #expect(try registry.list(AdapterListRequest(base: String(base.prefix(10)))).entries.count == 3)
        #expect(try registry.list(AdapterListRequest(base: modelPath)).entries.count == 3)
        #expect(try registry.list(AdapterListRequest(base: "00000000")).entries.isEmpty)
        #expect(try registry.list(AdapterListRequest(name: "capitals")).entries.map(\.version) == [2, 1])
    }

    @Test func publishingRefusesWhatDoesNotBelong() throws {
        let (registry, store, _, dir) = try registry()
        defer { try? FileManager.default.removeItem(at: dir) }
        let base = try FileHash.sha256(file: modelPath)
        let files = try adapterFiles(seed: 1, base: base)

        #expect(
            refusal {
                _ = try registry.publish(Publish(name: "../x", description: "", files: files), publisher: "", now: 1)
            }?.code == "bad_name")
        #expect(
            refusal {
                _ = try registry.publish(Publish(name: "a b", description: "", files: files), publisher: "", now: 1)
            }?.code == "bad_name")
        // A base other than the one it records.
        let other = String(repeating: "f", count: 64)
        let mismatch = refusal {
            _ = try registry.publish(
                Publish(name: "x", description: "", base: modelPath, files: try adapterFiles(seed: 1, base: other)),
                publisher: "", now: 1)
        }
        #expect(mismatch?.code == "base_mismatch")
        #expect(mismatch?.message.contains("trained on base") == true)
        // A recorded base the coordinator does not hold, and no base at all.
        #expect(
            refusal {
                _ = try registry.publish(
                    Publish(name: "x", description: "", files: try adapterFiles(seed: 1, base: other)), publisher: "",
                    now: 1)
            }?.code == "no_base")
        #expect(
            refusal {
                _ = try registry.publish(
                    Publish(name: "x", description: "", files: try adapterFiles(seed: 1, base: nil)), publisher: "",
                    now: 1)
            }?.code == "no_base")
        // Named explicitly, an adapter that records no base is accepted.
        #expect(
            try registry.publish(
                Publish(name: "x", description: "", base: modelPath, files: try adapterFiles(seed: 1, base: nil)),
                publisher: "", now: 1
            ).version == 1)
        // Tensors that do not fit: an adapter of a deeper model of the same shape.
        let foreign = try adapterFiles(seed: 1, base: nil, extraLayers: 2)
        let misfit = refusal {
            _ = try registry.publish(
                Publish(name: "y", description: "", base: modelPath, files: foreign), publisher: "", now: 1)
        }
        #expect(misfit?.code == "bad_adapter", "\(String(describing: misfit))")
        // Bytes changed after the file was written: the content hash it records no longer matches.
        var tampered = files
        var model = tampered[1].bytes
        model[model.count - 1] ^= 0x40
        tampered[1].bytes = model
        #expect(
            refusal {
                _ = try registry.publish(Publish(name: "z", description: "", files: tampered), publisher: "", now: 1)
            }?.code == "bad_adapter")
        // Files other than a PEFT pair or a GGUF file.
        #expect(
            refusal {
                _ = try registry.publish(Publish(name: "z", description: "", files: [files[1]]), publisher: "", now: 1)
            }?.code == "bad_publish")
        // A job that does not exist.
        #expect(
            refusal {
                _ = try registry.publish(Publish(name: "z", description: "", job: "job-9"), publisher: "", now: 1)
            }?.code == "no_job")
        // Nothing refused was stored.
        #expect(try store.registryNames() == ["x"])
    }

    @Test func resolvingNamesNearMatchesAndNeverServesDamagedBytes() throws {
        let (registry, _, blobs, dir) = try registry()
        defer { try? FileManager.default.removeItem(at: dir) }
        let base = try FileHash.sha256(file: modelPath)
        _ = try registry.publish(
            Publish(name: "capitals", description: "", files: try adapterFiles(seed: 1, base: base)), publisher: "",
            now: 1)
        _ = try registry.publish(
            Publish(name: "alice/poems", description: "", files: try adapterFiles(seed: 2, base: base)), publisher: "",
            now: 2)
        let near = refusal { _ = try registry.resolve("capitols") }
        #expect(near?.code == "no_adapter" && near?.message.contains("did you mean capitals") == true)
        #expect(refusal { _ = try registry.resolve("poems") }?.message.contains("alice/poems") == true)
        #expect(refusal { _ = try registry.resolve("capitals@4") }?.message.contains("versions are 1") == true)
        #expect(refusal { _ = try registry.resolve("bad name") }?.code == "bad_name")

        // One flipped byte in a stored file: never served.
        let entry = try registry.resolve("capitals")
        let path = blobs.path(entry.files[1].blob)
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count / 2] ^= 1
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let damaged = refusal { _ = try registry.resolve("capitals") }
        #expect(damaged?.code == "corrupt")
        #expect(try registry.resolve("alice/poems").name == "alice/poems")
    }

    @Test func entriesAndScoresSurviveReopeningTheStateDirectory() throws {
        let (registry, store, _, dir) = try registry()
        defer { try? FileManager.default.removeItem(at: dir) }
        let base = try FileHash.sha256(file: modelPath)
        let p = try registry.publish(
            Publish(name: "capitals", description: "d", files: try adapterFiles(seed: 1, base: base)), publisher: "me",
            now: 1)
        try store.addScore(
            sha256: p.sha256,
            AdapterScore(dataHash: "d1", dataName: "held.jsonl", loss: 1.5, tokens: 10, job: nil, created: 2))
        let reopened = try Store(directory: dir.path)
        let entry = try #require(try reopened.registryEntry(name: "capitals"))
        #expect(entry.sha256 == p.sha256 && entry.scores.map(\.loss) == [1.5])
        // The JSON the wire and the API carry reads back the same.
        #expect(try RegistryEntry(json: entry.json) == entry)
    }

    @Test func registryNamesAreChecked() {
        #expect(RegistryName.problem("capitals") == nil)
        #expect(RegistryName.problem("alice/capitals-v2.1_x") == nil)
        for bad in ["", "-x", "/x", "x/", "a//b", "a/../b", "a b", "é", String(repeating: "a", count: 101)] {
            #expect(RegistryName.problem(bad) != nil, "\(bad)")
        }
        #expect(RegistryName.parse("a@3")! == ("a", 3))
        #expect(RegistryName.parse("a")! == ("a", nil))
        #expect(RegistryName.parse("a@0") == nil && RegistryName.parse("a@x") == nil)
    }
}
