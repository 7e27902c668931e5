// FileHash: SHA-256 of files and directories, the identity of base models and datasets in adapter lineage.

import Crypto
import Foundation

/// SHA-256 digests, hex encoded.
public enum FileHash {
    /// The SHA-256 of a file's bytes.
    ///
    /// - Throws: `FormatError` when the file cannot be read.
    public static func sha256(file path: String) throws(FormatError) -> String {
        let file = try MappedFile(path: path)
        return file.withUnsafeBytes { hex(SHA256.hash(data: $0)) }
    }

    /// The SHA-256 of bytes.
    public static func sha256(_ bytes: some DataProtocol) -> String { hex(SHA256.hash(data: bytes)) }

    /// The SHA-256 of raw memory.
    public static func sha256(_ bytes: UnsafeRawBufferPointer) -> String { hex(SHA256.hash(data: bytes)) }

    /// A model's identity: the SHA-256 of its GGUF file, or for a directory the SHA-256 of the sorted
    /// "name digest" lines of its config.json and safetensors files.
    public static func modelIdentity(path: String) throws(FormatError) -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw FormatError(.notFound, path: path, "no such file or directory")
        }
        guard isDirectory.boolValue else { return try sha256(file: path) }
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [])
            .filter { $0 == "config.json" || $0.hasSuffix(".safetensors") }.sorted()
        var lines = ""
        for name in names { lines += "\(name) \(try sha256(file: (path as NSString).appendingPathComponent(name)))\n" }
        return sha256(Array(lines.utf8))
    }

    private static func hex(_ digest: SHA256.Digest) -> String {
        digest.map { String(format: "%02x", $0) }.joined()
    }
}
