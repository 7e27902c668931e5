// Browser: headless Chromium (Debian's `chromium`, installed by `Scripts/setup --test`) for the tests of the pages
// Cairn serves and writes: the DOM after the page's script has run, and screenshots. Each call uses a profile
// directory of its own and is killed if it runs past a minute.

import Foundation

/// Headless Chromium.
public struct Browser: Sendable {
    public let executable: String

    /// Whether the web tests run: `CAIRN_WEB_TESTS=1` (set by Scripts/test, which installs Chromium and
    /// python3-prometheus-client).
    public static var enabled: Bool { ProcessInfo.processInfo.environment["CAIRN_WEB_TESTS"] == "1" }

    /// Chromium on PATH (or `CAIRN_BROWSER`).
    public static func find() -> Browser? {
        if let path = ProcessInfo.processInfo.environment["CAIRN_BROWSER"], !path.isEmpty {
            return Browser(executable: path)
        }
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":")
        for dir in path {
            for name in ["chromium", "chromium-browser", "google-chrome"] {
                let candidate = "\(dir)/\(name)"
                if FileManager.default.isExecutableFile(atPath: candidate) { return Browser(executable: candidate) }
            }
        }
        return nil
    }

    /// Where tests leave what a person may want to look at (screenshots): `CAIRN_TEST_OUTPUT`, or
    /// .build/test-output in the package.
    public static var outputDirectory: URL {
        let dir =
            ProcessInfo.processInfo.environment["CAIRN_TEST_OUTPUT"].map { URL(fileURLWithPath: $0) }
            ?? Fixtures.directory.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".build/test-output")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    private func run(_ url: String, _ extra: [String], budgetMilliseconds: Int) throws -> CommandResult {
        let profile = Fixtures.temporaryDirectory("cairn-chromium")
        defer { try? FileManager.default.removeItem(at: profile) }
        return try runCommand(
            executable,
            [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                "--no-first-run", "--user-data-dir=\(profile.path)", "--window-size=1280,1600",
                "--virtual-time-budget=\(budgetMilliseconds)",
            ] + extra + [url], timeout: 60)
    }

    /// The document as serialised after its scripts ran for `budgetMilliseconds` of virtual time (fetches finish
    /// within it: Chromium's virtual time waits for the network).
    public func dom(_ url: String, budgetMilliseconds: Int = 5000) throws -> String {
        let r = try run(url, ["--dump-dom"], budgetMilliseconds: budgetMilliseconds)
        guard r.status == 0, r.stdout.contains("</html>") else {
            throw HTTPGetError(description: "chromium --dump-dom \(url): status \(r.status)\n\(r.stderr.suffix(2000))")
        }
        return r.stdout
    }

    /// A PNG of the page after its scripts ran.
    public func screenshot(_ url: String, to file: URL, budgetMilliseconds: Int = 5000) throws {
        try? FileManager.default.removeItem(at: file)
        let r = try run(url, ["--screenshot=\(file.path)"], budgetMilliseconds: budgetMilliseconds)
        guard r.status == 0, FileManager.default.fileExists(atPath: file.path) else {
            throw HTTPGetError(
                description: "chromium --screenshot \(url): status \(r.status)\n\(r.stderr.suffix(2000))")
        }
    }
}

/// A start tag in serialised HTML, with its attributes.
public struct HTMLTag: Sendable {
    public var name: String
    public var attributes: [String: String]

    /// Every start tag named `name` (e.g. "path") whose attributes include all of `matching`.
    public static func all(_ name: String, in html: String, matching: [String: String] = [:]) -> [HTMLTag] {
        var out: [HTMLTag] = []
        var rest = html[...]
        while let open = rest.range(of: "<\(name) ") ?? rest.range(of: "<\(name)>") {
            guard let close = rest[open.upperBound...].firstIndex(of: ">") else { break }
            let body = rest[open.upperBound..<close]
            var attributes: [String: String] = [:]
            var scan = body[...]
            while let eq = scan.range(of: "=\"") {
                let key = scan[..<eq.lowerBound].split(separator: " ").last.map(String.init) ?? ""
                guard let end = scan[eq.upperBound...].firstIndex(of: "\"") else { break }
                attributes[key] = unescape(String(scan[eq.upperBound..<end]))
                scan = scan[scan.index(after: end)...]
            }
            if matching.allSatisfy({ attributes[$0.key] == $0.value }) {
                out.append(HTMLTag(name: name, attributes: attributes))
            }
            rest = rest[close...]
        }
        return out
    }

    private static func unescape(_ s: String) -> String {
        s.replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&lt;", with: "<")
            .replacingOccurrences(of: "&gt;", with: ">").replacingOccurrences(of: "&amp;", with: "&")
    }

    /// The points of an SVG path's `d` (M and L commands).
    public var pathPoints: Int {
        (attributes["d"] ?? "").filter { $0 == "M" || $0 == "L" }.count
    }
}
