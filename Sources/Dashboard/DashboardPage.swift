// DashboardPage: the one HTML page behind the coordinator's dashboard and `cairn report`. The page (page.html,
// embedded in the binary at build time) draws everything itself from JSON: live, it polls the coordinator's API;
// as a report, it reads the data embedded in it, so the file is self-contained and works offline.

import Foundation
import Support

/// The dashboard page, live or as a report.
public enum DashboardPage {
    private static let template = String(decoding: PackageResources.page_html, as: UTF8.self)
    private static let dataMarker = "<!--CAIRN-DATA-->"

    /// The live page: it polls `api/status` and `api/jobs/ID` every 2 seconds.
    public static var live: String { template }

    /// A self-contained report: the page with `data` embedded (`{"generated", "job", "workers"}`, the shapes of
    /// the JSON API).
    public static func report(data: JSONValue) -> String {
        // In a script element only "</" could end it early; JSON allows "\u003c" for "<" anywhere in a string,
        // and "<" appears nowhere else in JSON text.
        let json = data.serialized().replacingOccurrences(of: "<", with: "\\u003c")
        let script = "<script id=\"cairn-data\" type=\"application/json\">\(json)</script>"
        return template.replacingOccurrences(of: "<body data-mode=\"live\">", with: "<body data-mode=\"report\">")
            .replacingOccurrences(of: dataMarker, with: script)
    }
}
