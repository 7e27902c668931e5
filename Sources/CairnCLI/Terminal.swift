// Terminal: output for humans and for scripts. Progress goes to stderr: a line rewritten in place on a
// terminal, plain lines every few seconds otherwise.

#if canImport(Glibc)
    import Glibc
#endif
import Foundation
import ModelFormats

enum Terminal {
    static let stdoutIsTTY = isatty(STDOUT_FILENO) != 0
    static let stderrIsTTY = isatty(STDERR_FILENO) != 0

    /// Writes to stdout without a newline and flushes (streamed tokens).
    static func write(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }

    /// Writes a line to stderr.
    static func note(_ text: String) {
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }

    /// Prints a JSON value on one line of stdout.
    static func printJSON(_ value: JSONValue, pretty: Bool = false) {
        write(value.serialized(pretty: pretty) + "\n")
    }

    /// Columns of the terminal on stderr ($COLUMNS when it cannot be asked, else 80).
    static var columns: Int {
        var size = winsize()
        if ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return Int(size.ws_col) }
        if let c = ProcessInfo.processInfo.environment["COLUMNS"].flatMap(Int.init), c > 0 { return c }
        return 80
    }

    /// `text` cut to one line of the terminal (an ellipsis marks the cut), so rewriting it in place never wraps.
    static func fit(_ text: String) -> String {
        let width = max(10, columns - 1)
        guard text.count > width else { return text }
        return String(text.prefix(width - 1)) + "…"
    }

    static func readStandardInput() -> [UInt8] {
        Array(FileHandle.standardInput.readDataToEndOfFile())
    }
}

/// A progress display on stderr that fits the terminal and does not flood logs. On a terminal one line is
/// rewritten in place (cut to the terminal's width), at most 10 times a second; otherwise (a log file, a pipe)
/// plain lines are written every `CAIRN_PROGRESS_SECONDS` (default 10) and once more at the end. Work that ends
/// within a second shows nothing.
final class ProgressLine {
    private let label: String
    private let total: Int?
    private let start = Date()
    private var lastDraw = Date.distantPast
    private var drewInPlace = false
    /// The latest text, and whether a log has seen it.
    private var latest: String?
    private var latestShown = true

    /// Seconds between lines when stderr is not a terminal.
    static let logInterval: Double = {
        if let s = ProcessInfo.processInfo.environment["CAIRN_PROGRESS_SECONDS"], let v = Double(s), v >= 0 {
            return v
        }
        return 10
    }()

    init(_ label: String, total: Int?) {
        self.label = label
        self.total = total
    }

    /// Reports `done` units (of `total`, when given here or at init): count, percentage, rate and time left.
    func update(_ done: Int, total: Int? = nil, unit: String = "tokens") {
        guard Date().timeIntervalSince(start) >= 1 || Self.logInterval == 0 else { return }
        let elapsed = Date().timeIntervalSince(start)
        let rate = elapsed > 0 ? Double(done) / elapsed : 0
        var text = "\(label): \(done)"
        if let total = total ?? self.total, total > 0 {
            text += "/\(total) \(unit) (\(Int(100 * Double(done) / Double(total)))%)"
            if rate > 0 {
                text +=
                    " · \(String(format: "%.0f", rate)) \(unit)/s · eta \(formatDuration(Double(total - done) / rate))"
            }
        } else {
            text += " \(unit) · \(String(format: "%.0f", rate)) \(unit)/s"
        }
        show(text)
    }

    /// Shows a line of text: rewritten in place on a terminal; on a log, every few seconds and at the end.
    func show(_ text: String, final: Bool = false) {
        let now = Date()
        latest = text
        latestShown = false
        if Terminal.stderrIsTTY {
            guard final || now.timeIntervalSince(lastDraw) >= 0.1 else { return }
            lastDraw = now
            FileHandle.standardError.write(Data(("\r\u{1B}[K" + Terminal.fit(text)).utf8))
            drewInPlace = true
        } else {
            guard final || now.timeIntervalSince(lastDraw) >= Self.logInterval else { return }
            lastDraw = now
            Terminal.note(text)
        }
        latestShown = true
    }

    /// Ends the display: the in-place line is kept; a log gets the last state if it has not seen it.
    func finish() {
        if drewInPlace {
            if !latestShown, let latest {
                FileHandle.standardError.write(Data(("\r\u{1B}[K" + Terminal.fit(latest)).utf8))
            }
            FileHandle.standardError.write(Data("\n".utf8))
        } else if !latestShown, let latest, !Terminal.stderrIsTTY {
            Terminal.note(latest)
        }
        drewInPlace = false
        latestShown = true
    }
}

func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0 else { return "?" }
    let s = Int(seconds.rounded())
    if s < 60 { return "\(s)s" }
    if s < 3600 { return "\(s / 60)m\(String(format: "%02d", s % 60))s" }
    return "\(s / 3600)h\(String(format: "%02d", (s % 3600) / 60))m"
}
