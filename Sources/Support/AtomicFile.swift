// AtomicFile: every file Cairn writes appears whole or not at all: the bytes go to a temporary file in the
// same directory, which is flushed to disk (fsync) and renamed over the target; the directory is flushed
// too, so the rename survives a power loss.

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Writes a file in pieces, then publishes it atomically with `commit()`; dropped without commit, the
/// temporary file is removed and the target is untouched.
public final class AtomicFileWriter {
    /// The final path.
    public let path: String
    private let temporaryPath: String
    private var fd: Int32
    /// Whether the temporary file is gone (renamed or linked into place, or removed after losing a race).
    private var settled = false
    /// Bytes written so far.
    public private(set) var bytesWritten = 0

    /// Creates the temporary file next to `path`.
    ///
    /// - Parameter mode: Permissions of the final file (0o644 by default; 0o600 for secrets).
    /// - Throws: `FormatError` `.io`.
    public init(path: String, mode: mode_t = 0o644) throws(FormatError) {
        self.path = path
        temporaryPath = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        fd = open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else {
            throw FormatError(.io, path: path, "cannot create \(temporaryPath): \(String(cString: strerror(errno)))")
        }
    }

    deinit {
        if !settled {
            if fd >= 0 { close(fd) }
            unlink(temporaryPath)
        }
    }

    /// Appends bytes.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(FormatError) {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw FormatError(.io, path: path, "write failed: \(String(cString: strerror(errno)))")
            }
            done += n
        }
        bytesWritten += bytes.count
    }

    /// Appends the bytes of an array.
    public func write(_ bytes: [UInt8]) throws(FormatError) {
        let failure: FormatError? = bytes.withUnsafeBytes { raw in
            do throws(FormatError) { try write(raw) } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }

    /// Appends `count` zero bytes.
    public func writeZeros(_ count: Int) throws(FormatError) {
        if count > 0 { try write([UInt8](repeating: 0, count: count)) }
    }

    /// Flushes the data to disk and renames the file into place.
    public func commit() throws(FormatError) {
        _ = try publish(replacing: true)
    }

    /// Like `commit()`, but only when no file is at the path yet (several processes may race to create it: one
    /// wins, whole); false when another file was there, which is left as it is.
    public func commitIfAbsent() throws(FormatError) -> Bool {
        try publish(replacing: false)
    }

    private func publish(replacing: Bool) throws(FormatError) -> Bool {
        guard fsync(fd) == 0 else {
            throw FormatError(.io, path: path, "fsync failed: \(String(cString: strerror(errno)))")
        }
        close(fd)
        fd = -1
        if replacing {
            guard rename(temporaryPath, path) == 0 else {
                throw FormatError(.io, path: path, "cannot rename into place: \(String(cString: strerror(errno)))")
            }
        } else {
            // link(2) fails with EEXIST instead of replacing.
            guard link(temporaryPath, path) == 0 else {
                let e = errno
                guard e == EEXIST else {
                    throw FormatError(.io, path: path, "cannot link into place: \(String(cString: strerror(e)))")
                }
                unlink(temporaryPath)
                settled = true
                return false
            }
            unlink(temporaryPath)
        }
        settled = true
        let directory = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        let dfd = open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            fsync(dfd)
            close(dfd)
        }
        return true
    }
}

/// Writes `bytes` to `path` atomically.
///
/// - Throws: `FormatError` `.io`.
public func writeFileAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws(FormatError) {
    let writer = try AtomicFileWriter(path: path, mode: mode)
    try writer.write(bytes)
    try writer.commit()
}
