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

    static func readStandardInput() -> [UInt8] {
        Array(FileHandle.standardInput.readDataToEndOfFile())
    }
}

/// A progress display on stderr that does not flood logs.
final class ProgressLine {
    private let label: String
    private let total: Int?
    private let start = Date()
    private var lastDraw = Date.distantPast
    private var drewInPlace = false

    init(_ label: String, total: Int?) {
        self.label = label
        self.total = total
    }

    /// Reports `done` units. Nothing shows for work under a second; then it redraws at most 10 times a
    /// second on a terminal, every 10 s otherwise.
    func update(_ done: Int, unit: String = "tokens") {
        let now = Date()
        let interval = Terminal.stderrIsTTY ? 0.1 : 10
        guard now.timeIntervalSince(start) >= 1, now.timeIntervalSince(lastDraw) >= interval else { return }
        lastDraw = now
        let elapsed = now.timeIntervalSince(start)
        let rate = elapsed > 0 ? Double(done) / elapsed : 0
        var text = "\(label): \(done)"
        if let total, total > 0 {
            text += "/\(total) \(unit) (\(Int(100 * Double(done) / Double(total)))%)"
            if rate > 0 {
                text +=
                    " · \(String(format: "%.0f", rate)) \(unit)/s · eta \(formatDuration(Double(total - done) / rate))"
            }
        } else {
            text += " \(unit) · \(String(format: "%.0f", rate)) \(unit)/s"
        }
        if Terminal.stderrIsTTY {
            FileHandle.standardError.write(Data(("\r\u{1B}[K" + text).utf8))
            drewInPlace = true
        } else {
            Terminal.note(text)
        }
    }

    /// Shows a line of text: rewritten in place on a terminal; on a log, every 10 s and at the end.
    func show(_ text: String, final: Bool = false) {
        let now = Date()
        if Terminal.stderrIsTTY {
            guard final || now.timeIntervalSince(lastDraw) >= 0.1 else { return }
            lastDraw = now
            FileHandle.standardError.write(Data(("\r\u{1B}[K" + text).utf8))
            drewInPlace = true
        } else {
            guard final || now.timeIntervalSince(lastDraw) >= 10 else { return }
            lastDraw = now
            Terminal.note(text)
        }
    }

    /// Ends the in-place line, keeping its last text.
    func finish() {
        if drewInPlace { FileHandle.standardError.write(Data("\n".utf8)) }
        drewInPlace = false
    }
}

func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0 else { return "?" }
    let s = Int(seconds.rounded())
    if s < 60 { return "\(s)s" }
    if s < 3600 { return "\(s / 60)m\(String(format: "%02d", s % 60))s" }
    return "\(s / 3600)h\(String(format: "%02d", (s % 3600) / 60))m"
}
