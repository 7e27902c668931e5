// Fixtures: where the committed reference data lives (Tests/Fixtures, made by Scripts/fixtures/).

import Foundation

/// Paths of committed test fixtures.
public enum Fixtures {
    /// `Tests/Fixtures`, found from this source file so tests run from any working directory.
    public static let directory: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

    /// The path of a fixture file, e.g. `Fixtures.path("quant/blocks.safetensors")`.
    public static func path(_ relative: String) -> String { directory.appendingPathComponent(relative).path }

    /// Copies fixture files into `directory`, keeping their names unless `as` renames the single file.
    public static func copy(_ relatives: [String], to directory: URL, as name: String? = nil) throws {
        for relative in relatives {
            let source = Self.directory.appendingPathComponent(relative)
            try FileManager.default.copyItem(
                at: source, to: directory.appendingPathComponent(name ?? source.lastPathComponent))
        }
    }

    /// A fresh, empty temporary directory for one test; the caller removes it.
    public static func temporaryDirectory(_ label: String = "cairn-test") -> URL {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("\(label)-\(UUID().uuidString)", isDirectory: true)
        try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}
