// BlobStore: content-addressed files under `<root>/sha256/<hex>` (base models, datasets, checkpoints, adapters),
// shared by the coordinator's state directory and a worker's cache. A blob is written to a partial file and
// renamed into place only after its SHA-256 is checked, so a present blob is always whole and correct.

import Crypto
import Foundation

/// Content-addressed storage.
public final class BlobStore: @unchecked Sendable {
    public let root: String

    /// A store rooted at `root` (created when missing).
    public init(root: String) throws(FormatError) {
        self.root = root
        do {
            try FileManager.default.createDirectory(
                atPath: (root as NSString).appendingPathComponent("sha256"), withIntermediateDirectories: true)
        } catch {
            throw FormatError(.io, path: root, "cannot create the blob directory: \(error.localizedDescription)")
        }
    }

    /// Whether text is a SHA-256 in lowercase hex (and so safe as a file name).
    public static func isHash(_ text: String) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    /// Where a blob lives (whether or not it is present). `hash` must satisfy `isHash`.
    public func path(_ hash: String) -> String {
        precondition(Self.isHash(hash), "BlobStore: not a SHA-256: \(hash)")
        return (root as NSString).appendingPathComponent("sha256/\(hash)")
    }

    /// Where a blob being received is kept until it is whole.
    public func partialPath(_ hash: String) -> String { path(hash) + ".partial" }

    public func contains(_ hash: String) -> Bool {
        Self.isHash(hash) && FileManager.default.fileExists(atPath: path(hash))
    }

    /// A blob's size, when present.
    public func size(_ hash: String) -> Int? {
        guard contains(hash) else { return nil }
        return (try? FileManager.default.attributesOfItem(atPath: path(hash))[.size] as? Int) ?? nil
    }

    /// Stores bytes; returns their hash.
    @discardableResult
    public func add(_ bytes: [UInt8]) throws(FormatError) -> String {
        let hash = FileHash.sha256(bytes)
        if !contains(hash) { try writeFileAtomically(path(hash), bytes) }
        return hash
    }

    /// Stores a copy of a file; returns its hash. A file already stored is not copied again.
    @discardableResult
    public func add(file: String) throws(FormatError) -> String {
        let hash = try FileHash.sha256(file: file)
        if contains(hash) { return hash }
        let source = try MappedFile(path: file)
        let writer = try AtomicFileWriter(path: path(hash))
        try source.withUnsafeBytes { raw throws(FormatError) in try writer.write(raw) }
        try writer.commit()
        return hash
    }

    /// Moves a file (written and synced by the caller, on the same file system) into the store; returns its hash.
    @discardableResult
    public func adopt(file: String) throws(FormatError) -> String {
        let hash = try FileHash.sha256(file: file)
        if contains(hash) {
            try? FileManager.default.removeItem(atPath: file)
            return hash
        }
        guard rename(file, path(hash)) == 0 else {
            throw FormatError(.io, path: file, "cannot move into the blob store: \(String(cString: strerror(errno)))")
        }
        return hash
    }

    /// Bytes `[offset, offset+length)` of a blob.
    public func read(_ hash: String, offset: Int, length: Int) throws(FormatError) -> [UInt8] {
        guard let handle = FileHandle(forReadingAtPath: path(hash)) else {
            throw FormatError(.notFound, path: path(hash), "no such blob")
        }
        defer { try? handle.close() }
        do {
            try handle.seek(toOffset: UInt64(offset))
            let data = try handle.read(upToCount: length) ?? Data()
            return Array(data)
        } catch {
            throw FormatError(.io, path: path(hash), "cannot read: \(error.localizedDescription)")
        }
    }

    /// Bytes of a partial blob received so far.
    public func partialSize(_ hash: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: partialPath(hash))[.size] as? Int) ?? nil) ?? 0
    }

    /// Bytes free to an unprivileged writer on the file system holding `path`, or nil if it cannot be asked.
    public static func freeBytes(atPath path: String) -> Int? {
        var s = statvfs()
        guard statvfs(path, &s) == 0 else { return nil }
        return Int(s.f_bavail) * Int(s.f_frsize)
    }

    /// Appends bytes to a partial blob.
    public func appendPartial(_ hash: String, _ bytes: [UInt8]) throws(FormatError) {
        let p = partialPath(hash)
        if !FileManager.default.fileExists(atPath: p) { _ = FileManager.default.createFile(atPath: p, contents: nil) }
        guard let handle = FileHandle(forWritingAtPath: p) else {
            throw FormatError(.io, path: p, "cannot open for writing")
        }
        defer { try? handle.close() }
        do {
            try handle.seekToEnd()
            try handle.write(contentsOf: bytes)
        } catch {
            throw FormatError(.io, path: p, "cannot write: \(error.localizedDescription)")
        }
    }

    /// Verifies a whole partial blob and moves it into place; a mismatch deletes it.
    public func completePartial(_ hash: String) throws(FormatError) {
        let p = partialPath(hash)
        let actual = try FileHash.sha256(file: p)
        guard actual == hash else {
            try? FileManager.default.removeItem(atPath: p)
            throw FormatError(
                .invalidValue, path: p, "received blob has SHA-256 \(actual), expected \(hash); discarded")
        }
        let fd = open(p, O_RDONLY)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
        guard rename(p, path(hash)) == 0 else {
            throw FormatError(.io, path: p, "cannot move into place: \(String(cString: strerror(errno)))")
        }
    }

    /// An exclusive claim on receiving a blob, so processes sharing a store (workers on one machine) fetch it
    /// once: the holder writes the partial file, the others wait for the blob to appear. The claim ends with
    /// `release()` or the holder's death (an advisory `flock`), and the next claimant resumes the partial file.
    public final class Claim: @unchecked Sendable {
        private var fd: Int32
        init(fd: Int32) { self.fd = fd }
        public func release() {
            guard fd >= 0 else { return }
            flock(fd, LOCK_UN)
            close(fd)
            fd = -1
        }
        deinit { release() }
    }

    /// Claims the right to receive a blob; nil while another process holds it.
    public func claim(_ hash: String) -> Claim? {
        let fd = open(path(hash) + ".lock", O_CREAT | O_RDWR, 0o644)
        guard fd >= 0 else { return nil }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            return nil
        }
        return Claim(fd: fd)
    }

    /// Deletes a blob (and any partial copy).
    public func remove(_ hash: String) {
        guard Self.isHash(hash) else { return }
        try? FileManager.default.removeItem(atPath: path(hash))
        try? FileManager.default.removeItem(atPath: partialPath(hash))
    }
}
