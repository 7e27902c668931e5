// MappedFile: a whole file mapped read-only into memory. Model files are hundreds of megabytes to many
// gigabytes; mapping lets the OS page in only what is read and share pages between processes.

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A read-only memory map of a whole file, unmapped when released.
public final class MappedFile: @unchecked Sendable {
    /// The path it was opened from.
    public let path: String
    /// The file's bytes, valid while this object lives. Package-only: the readers that store their `MappedFile`
    /// may hand out views of it; everyone else goes through `withUnsafeBytes`, which keeps the mapping alive.
    package let bytes: UnsafeRawBufferPointer
    /// Whether `bytes` is a heap copy (`init(copying:)`) rather than a mapping.
    private let copied: Bool

    /// A copy of bytes held in memory, read like a file at `path` (for fuzzing and tests).
    public init(copying data: [UInt8], path: String = "<memory>") {
        self.path = path
        copied = true
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, data.count), alignment: 64)
        buffer.copyBytes(from: data)
        bytes = UnsafeRawBufferPointer(start: buffer.baseAddress, count: data.count)
    }

    /// Maps `path` read-only.
    ///
    /// - Throws: `FormatError` `.notFound` or `.io`.
    public init(path: String) throws(FormatError) {
        self.path = path
        copied = false
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            throw FormatError(e == ENOENT ? .notFound : .io, path: path, "cannot open: \(String(cString: strerror(e)))")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw FormatError(.io, path: path, "cannot stat: \(String(cString: strerror(errno)))")
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw FormatError(.io, path: path, "not a regular file")
        }
        let size = Int(info.st_size)
        if size == 0 {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != MAP_FAILED else {
            throw FormatError(.io, path: path, "cannot map \(size) bytes: \(String(cString: strerror(errno)))")
        }
        bytes = UnsafeRawBufferPointer(start: base, count: size)
    }

    deinit {
        guard let base = bytes.baseAddress else { return }
        if copied {
            UnsafeMutableRawPointer(mutating: base).deallocate()
        } else {
            munmap(UnsafeMutableRawPointer(mutating: base), bytes.count)
        }
    }

    /// The file size in bytes.
    public var count: Int { bytes.count }

    /// Calls `body` with the file's bytes, keeping the mapping alive until it returns.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        defer { withExtendedLifetime(self) {} }
        return try body(bytes)
    }
}
