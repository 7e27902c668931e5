// LineLogHandler: how the long-running commands (coordinator, worker, cluster up) print their swift-log records:
// one line on stderr each, "HH:mm:ss [who] message key=value …", with the level named when it is a warning or
// worse. CAIRN_LOG_LEVEL (trace, debug, info, notice, warning, error, critical; default info) sets how much.

import Foundation
import Logging

struct LineLogHandler: LogHandler {
    var prefix: String
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// The level CAIRN_LOG_LEVEL names, else info.
    static var configuredLevel: Logger.Level {
        ProcessInfo.processInfo.environment["CAIRN_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0.lowercased()) }
            ?? .info
    }

    func log(event: LogEvent) {
        let f = DateFormatter()
        f.dateFormat = "HH:mm:ss"
        var text = "\(f.string(from: Date())) \(prefix)"
        if event.level >= .warning { text += "\(event.level): " }
        text += event.message.description
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        for key in all.keys.sorted() { text += " \(key)=\(all[key]!)" }
        Terminal.note(text)
    }
}

/// A logger for one role of this process (`who` is printed in brackets; empty: nothing).
func lineLogger(_ label: String, who: String = "") -> Logger {
    var logger = Logger(label: label) { _ in
        LineLogHandler(prefix: who.isEmpty ? "" : "[\(who)] ", logLevel: LineLogHandler.configuredLevel)
    }
    logger.logLevel = LineLogHandler.configuredLevel
    return logger
}
