// HTTPRequest: the head of an HTTP/1.x request, parsed from untrusted bytes with bounded sizes. The server this
// module provides is read-only (GET and HEAD, no bodies), so a request is its head: the request line, the header
// fields and the blank line after them (RFC 9112 §2–3, §5). Anything else is a typed error that maps to the
// status code a client should see.

import Foundation

/// Why a request was refused, with the status code to answer.
public struct HTTPError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The status code to answer with (400, 405, 413, 414, 431, 505), or 0 for a server-side failure (bind, listen).
    public var status: Int
    public var message: String

    public init(status: Int, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { status == 0 ? message : "\(status): \(message)" }
}

/// A parsed request head.
public struct HTTPRequest: Sendable, Equatable {
    /// Bounds on what a client may send.
    public static let maxHeadBytes = 16 << 10
    public static let maxTargetBytes = 4 << 10
    public static let maxHeaderFields = 64

    /// `GET` or `HEAD`.
    public var method: String
    /// The decoded path: its first byte is "/", percent-escapes are resolved, and no segment is "..".
    public var path: String
    /// Query parameters, decoded ("+" is a space); a repeated name keeps its last value.
    public var query: [String: String]
    /// Header fields by lower-cased name; a repeated name keeps its values joined by ", " (RFC 9110 §5.3).
    public var headers: [String: String]

    public init(method: String, path: String, query: [String: String] = [:], headers: [String: String] = [:]) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
    }

    /// The token of an `Authorization: Bearer TOKEN` header, if there is one.
    public var bearerToken: String? {
        guard let value = headers["authorization"] else { return nil }
        let parts = value.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        return parts[1].trimmingCharacters(in: [" ", "\t"])
    }

    /// The length of a complete head at the start of `bytes` (through the blank line), or nil when more bytes
    /// are needed.
    public static func headLength(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        var i = 0
        while i + 3 < bytes.count {
            if bytes[i] == 13, bytes[i + 1] == 10, bytes[i + 2] == 13, bytes[i + 3] == 10 { return i + 4 }
            i += 1
        }
        return nil
    }

    /// Parses a complete request head (as `headLength` delimits it).
    ///
    /// - Throws: `HTTPError` with the status to answer: 400 for malformed syntax, 405 for a method other than
    ///   GET or HEAD, 413 for a request with a body, 414 for a long target, 431 for too many or too long header
    ///   fields, 505 for a version other than HTTP/1.x.
    public static func parse(_ head: ArraySlice<UInt8>) throws(HTTPError) -> HTTPRequest {
        guard head.count <= maxHeadBytes else { throw HTTPError(status: 431, "the request head is too long") }
        var lines: [ArraySlice<UInt8>] = []
        var start = head.startIndex
        var i = head.startIndex
        while i < head.endIndex {
            if head[i] == 10 {
                var end = i
                if end > start, head[end - 1] == 13 { end -= 1 }
                lines.append(head[start..<end])
                start = i + 1
            }
            i += 1
        }
        if start < head.endIndex { lines.append(head[start...]) }
        // A blank line or two before the request line is tolerated (RFC 9112 §2.2).
        while let first = lines.first, first.isEmpty { lines.removeFirst() }
        guard let requestLine = lines.first else { throw HTTPError(status: 400, "empty request") }
        let parts = requestLine.split(separator: 32, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw HTTPError(status: 400, "malformed request line")
        }
        guard parts[0].allSatisfy(isTokenByte) else { throw HTTPError(status: 400, "malformed method") }
        let method = String(decoding: parts[0], as: UTF8.self)
        let version = String(decoding: parts[2], as: UTF8.self)
        guard version.hasPrefix("HTTP/") else { throw HTTPError(status: 400, "malformed HTTP version") }
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else {
            throw HTTPError(status: 505, "only HTTP/1.0 and HTTP/1.1 are served")
        }
        let target = parts[1]
        guard target.count <= maxTargetBytes else { throw HTTPError(status: 414, "the request target is too long") }
        guard target.allSatisfy({ $0 > 32 && $0 < 127 }) else {
            throw HTTPError(status: 400, "the request target has bytes outside visible ASCII")
        }

        var headers: [String: String] = [:]
        var fields = 0
        for line in lines.dropFirst() where !line.isEmpty {
            fields += 1
            guard fields <= maxHeaderFields else { throw HTTPError(status: 431, "too many header fields") }
            guard let colon = line.firstIndex(of: 58), colon > line.startIndex,
                line[line.startIndex..<colon].allSatisfy(isTokenByte)
            else { throw HTTPError(status: 400, "malformed header field") }
            let name = String(decoding: line[line.startIndex..<colon], as: UTF8.self).lowercased()
            let rawValue = line[(colon + 1)...]
            guard rawValue.allSatisfy({ $0 == 9 || ($0 >= 32 && $0 != 127) }) else {
                throw HTTPError(status: 400, "header field \(name) has control characters")
            }
            let value = String(decoding: rawValue, as: UTF8.self).trimmingCharacters(in: [" ", "\t"])
            headers[name] = headers[name].map { $0 + ", " + value } ?? value
        }
        if let length = headers["content-length"], length != "0" {
            throw HTTPError(status: 413, "requests with a body are not accepted here")
        }
        if headers["transfer-encoding"] != nil {
            throw HTTPError(status: 413, "requests with a body are not accepted here")
        }
        guard method == "GET" || method == "HEAD" else {
            throw HTTPError(status: 405, "\(method) is not served here; use GET")
        }

        // origin-form only: "/path?query" (absolute-form is for proxies).
        guard target.first == 47 else { throw HTTPError(status: 400, "the request target must start with /") }
        let questionMark = target.firstIndex(of: 63)
        let rawPath = target[target.startIndex..<(questionMark ?? target.endIndex)]
        guard let path = percentDecode(rawPath, plusIsSpace: false) else {
            throw HTTPError(status: 400, "malformed percent-escape in the path")
        }
        // On bytes, not Characters: a combining mark after "/" or "." must not hide a segment from the check.
        guard !path.utf8.split(separator: UInt8(ascii: "/")).contains(where: { $0.elementsEqual("..".utf8) }) else {
            throw HTTPError(status: 400, "the path may not contain ..")
        }
        var query: [String: String] = [:]
        if let q = questionMark {
            for pair in target[(q + 1)...].split(separator: 38) {
                let eq = pair.firstIndex(of: 61)
                guard let name = percentDecode(pair[pair.startIndex..<(eq ?? pair.endIndex)], plusIsSpace: true),
                    let value = eq.map({ percentDecode(pair[($0 + 1)...], plusIsSpace: true) }) ?? ""
                else { throw HTTPError(status: 400, "malformed percent-escape in the query") }
                query[name] = value
            }
        }
        return HTTPRequest(method: method, path: path, query: query, headers: headers)
    }

    /// tchar of RFC 9110 §5.6.2.
    static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case 48...57, 65...90, 97...122: return true
        case 33, 35, 36, 37, 38, 39, 42, 43, 45, 46, 94, 95, 96, 124, 126: return true
        default: return false
        }
    }

    /// Resolves %XX escapes (and "+" when asked); nil for a malformed escape or bytes that are not UTF-8.
    static func percentDecode(_ bytes: ArraySlice<UInt8>, plusIsSpace: Bool) -> String? {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = bytes.startIndex
        while i < bytes.endIndex {
            let b = bytes[i]
            if b == 37 {
                guard i + 2 < bytes.endIndex, let hi = hexValue(bytes[i + 1]), let lo = hexValue(bytes[i + 2]) else {
                    return nil
                }
                out.append(hi << 4 | lo)
                i += 3
            } else {
                out.append(plusIsSpace && b == 43 ? 32 : b)
                i += 1
            }
        }
        return String(validating: out, as: UTF8.self)
    }

    private static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case 48...57: return b - 48
        case 65...70: return b - 55
        case 97...102: return b - 87
        default: return nil
        }
    }
}
