// Dataset: training records from JSONL files, one JSON object per line, in the shapes people already have:
//   {"text": "..."}                                      plain text; loss on every token
//   {"prompt": "...", "completion": "..."}               loss on the completion
//   {"messages": [{"role": "user", "content": "..."}]}   rendered with the chat template; loss on assistant turns
//   {"instruction": "...", "input": "...", "output": "..."}   alpaca; a user turn and an assistant turn
// Every malformed record is an error naming the file, line and field, or with `skipBadRecords` is skipped and
// counted. Lines are bounded in size; the file is read through a memory map, not loaded whole.

import Foundation
import ModelFormats
import Tokenizer

/// One training record.
public enum Record: Sendable, Equatable {
    case text(String)
    case promptCompletion(prompt: String, completion: String)
    case chat([ChatMessage])
}

/// A problem in a data file or a job file: the file, the line, the field, and what was expected.
public struct InputError: Error, Sendable, CustomStringConvertible {
    /// The file ("flags" for command-line settings).
    public var path: String
    /// 1-based line, when the problem is one record.
    public var line: Int?
    /// The field or key (`messages[2].role`, `learning_rate`).
    public var field: String?
    /// What is wrong.
    public var message: String

    public init(path: String, line: Int? = nil, field: String? = nil, _ message: String) {
        self.path = path
        self.line = line
        self.field = field
        self.message = message
    }

    public var description: String {
        var s = path
        if let line { s += ":\(line)" }
        if let field { s += ": \(field)" }
        return s + ": " + message
    }
}

/// Records read from a JSONL file.
public struct Dataset: Sendable {
    /// Longest line accepted.
    public static let maxLineBytes = 16 << 20

    /// The file.
    public let path: String
    /// The records, with the line each came from.
    public private(set) var records: [(line: Int, record: Record)] = []
    /// Malformed records skipped (with `skipBadRecords`), with their errors.
    public private(set) var skipped: [InputError] = []

    /// Reads a JSONL file.
    ///
    /// - Parameter skipBadRecords: Skip and count malformed records instead of failing on the first.
    /// - Throws: `InputError` for an unreadable file, a malformed record (unless skipped) or no records at all.
    public init(path: String, skipBadRecords: Bool = false) throws(InputError) {
        self.path = path
        let file: MappedFile
        do {
            file = try MappedFile(path: path)
        } catch {
            throw InputError(path: path, error.code == .notFound ? "no such file" : error.message)
        }
        var records: [(Int, Record)] = []
        var skipped: [InputError] = []
        try file.withUnsafeBytes { (bytes) throws(InputError) in
            var lineStart = 0
            var lineNumber = 0
            while lineStart < bytes.count {
                lineNumber += 1
                var end = lineStart
                while end < bytes.count, bytes[end] != 0x0A { end += 1 }
                defer { lineStart = end + 1 }
                var content = UnsafeRawBufferPointer(rebasing: bytes[lineStart..<end])
                if content.last == 0x0D { content = UnsafeRawBufferPointer(rebasing: content.dropLast()) }
                if content.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
                do throws(InputError) {
                    guard content.count <= Self.maxLineBytes else {
                        throw InputError(
                            path: path, line: lineNumber,
                            "the line is \(content.count) bytes; the limit is \(Self.maxLineBytes)")
                    }
                    records.append((lineNumber, try Self.parse(content, path: path, line: lineNumber)))
                } catch {
                    if !skipBadRecords { throw error }
                    skipped.append(error)
                }
            }
        }
        guard !records.isEmpty else {
            throw InputError(
                path: path,
                skipped.isEmpty
                    ? "has no records (expected one JSON object per line)"
                    : "has no valid records; the first error: \(skipped[0])")
        }
        self.records = records
        self.skipped = skipped
    }

    /// Records given directly (tests, generated data).
    public init(records: [Record], path: String = "<memory>") {
        self.path = path
        self.records = records.enumerated().map { ($0.offset + 1, $0.element) }
    }

    /// Parses one JSONL line.
    static func parse(_ bytes: UnsafeRawBufferPointer, path: String, line: Int) throws(InputError) -> Record {
        let value: JSONValue
        do {
            value = try JSONValue.parse(bytes, maxDepth: 16)
        } catch {
            throw InputError(path: path, line: line, "invalid JSON (column \(error.column)): \(error.message)")
        }
        guard let o = value.objectValue else {
            throw InputError(path: path, line: line, "expected a JSON object, found \(value.kindDescription)")
        }
        func string(_ key: String) throws(InputError) -> String {
            guard let v = o[key] else { throw InputError(path: path, line: line, field: key, "missing") }
            guard let s = v.stringValue else {
                throw InputError(path: path, line: line, field: key, "expected a string, found \(v.kindDescription)")
            }
            return s
        }
        if let messages = o["messages"] {
            guard let items = messages.arrayValue, !items.isEmpty else {
                throw InputError(
                    path: path, line: line, field: "messages", "expected a non-empty array of {role, content}")
            }
            var chat: [ChatMessage] = []
            for (i, item) in items.enumerated() {
                let field = "messages[\(i)]"
                guard let m = item.objectValue else {
                    throw InputError(path: path, line: line, field: field, "expected an object with role and content")
                }
                guard let role = m["role"]?.stringValue, ["system", "user", "assistant"].contains(role) else {
                    throw InputError(
                        path: path, line: line, field: field + ".role",
                        "expected \"system\", \"user\" or \"assistant\", found \(m["role"]?.serialized() ?? "nothing")")
                }
                guard let content = m["content"]?.stringValue else {
                    throw InputError(path: path, line: line, field: field + ".content", "expected a string")
                }
                if role == "system", i != 0 {
                    throw InputError(path: path, line: line, field: field + ".role", "a system message must come first")
                }
                chat.append(ChatMessage(role: role, content: content))
            }
            guard chat.contains(where: { $0.role == "assistant" }) else {
                throw InputError(
                    path: path, line: line, field: "messages", "has no assistant message, so nothing to learn")
            }
            return .chat(chat)
        }
        if o["text"] != nil { return .text(try string("text")) }
        if o["prompt"] != nil || o["completion"] != nil {
            return .promptCompletion(prompt: try string("prompt"), completion: try string("completion"))
        }
        if o["instruction"] != nil || o["output"] != nil {
            let instruction = try string("instruction")
            let input = o["input"] == nil || o["input"]!.isNull ? "" : try string("input")
            let output = try string("output")
            return .chat([
                ChatMessage(role: "user", content: input.isEmpty ? instruction : instruction + "\n\n" + input),
                ChatMessage(role: "assistant", content: output),
            ])
        }
        throw InputError(
            path: path, line: line,
            "unrecognised record with keys \(o.keys.sorted().joined(separator: ", ")); expected text, prompt+completion, messages, or instruction+output"
        )
    }
}
