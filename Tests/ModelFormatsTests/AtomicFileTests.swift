// AtomicFile: a committed file appears whole, a dropped writer leaves nothing, and commitIfAbsent lets exactly one
// of several writers create a file (the coordinator's key pair, made by it or by a token issued first).

import Foundation
import ModelFormats
import TestSupport
import Testing

@Suite struct AtomicFileTests {
    private func leftovers(_ dir: URL) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.contains(".tmp-") }
    }

    @Test func commitReplacesAndADroppedWriterLeavesNothing() throws {
        let dir = Fixtures.temporaryDirectory("cairn-atomic")
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("f").path
        try writeFileAtomically(path, Array("one".utf8))
        try writeFileAtomically(path, Array("two".utf8))
        #expect(FileManager.default.contents(atPath: path) == Data("two".utf8))
        do {
            let dropped = try AtomicFileWriter(path: path)
            try dropped.write(Array("three".utf8))
        }
        #expect(FileManager.default.contents(atPath: path) == Data("two".utf8), "never committed: untouched")
        #expect(try leftovers(dir).isEmpty)
    }

    @Test func onlyTheFirstOfSeveralWritersCreatesTheFile() throws {
        let dir = Fixtures.temporaryDirectory("cairn-atomic")
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("keys").path
        let writers = try (0..<4).map { i in
            let w = try AtomicFileWriter(path: path, mode: 0o600)
            try w.write(Array("writer \(i)".utf8))
            return w
        }
        let won = try writers.map { try $0.commitIfAbsent() }
        #expect(won == [true, false, false, false])
        #expect(FileManager.default.contents(atPath: path) == Data("writer 0".utf8))
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(try leftovers(dir).isEmpty, "the losers' temporary files are gone")
    }
}
