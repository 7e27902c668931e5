// HTTPGet: a minimal HTTP/1.1 client over a blocking socket, for tests of the coordinator's dashboard and API
// (Foundation's URLSession would need libcurl at run time). Sends raw bytes, reads until the server closes.

#if canImport(Glibc)
    import Glibc
#endif
import Foundation

/// A response as read off the socket.
public struct HTTPReply: Sendable {
    public var status: Int
    /// Header fields by lower-cased name.
    public var headers: [String: String]
    public var body: [UInt8]
    public var text: String { String(decoding: body, as: UTF8.self) }
}

public struct HTTPGetError: Error, CustomStringConvertible {
    public var description: String
}

/// Sends `request` (raw bytes) to 127.0.0.1:`port` and reads the whole response (the server closes the
/// connection after it); gives up after `timeout` seconds.
public func httpExchange(port: Int, host: String = "127.0.0.1", request: [UInt8], timeout: Double = 10) throws
    -> [UInt8]
{
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw HTTPGetError(description: "socket: \(errno)") }
    defer { close(fd) }
    var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = UInt16(port).bigEndian
    inet_pton(AF_INET, host, &addr.sin_addr)
    let connected = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard connected == 0 else { throw HTTPGetError(description: "connect to \(host):\(port): errno \(errno)") }
    var offset = 0
    while offset < request.count {
        let n = request[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard n > 0 else { break }
        offset += n
    }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n > 0 {
            out += buffer[0..<n]
        } else if n == 0 {
            break
        } else {
            throw HTTPGetError(description: "recv from \(host):\(port): errno \(errno) after \(out.count) bytes")
        }
    }
    return out
}

/// GET (or HEAD) `path` with optional header fields; parses the response.
public func httpGet(port: Int, _ path: String, method: String = "GET", headers: [String: String] = [:]) throws
    -> HTTPReply
{
    var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\n"
    for (k, v) in headers.sorted(by: { $0.key < $1.key }) { head += "\(k): \(v)\r\n" }
    head += "\r\n"
    return try parseHTTPReply(httpExchange(port: port, request: Array(head.utf8)))
}

/// Splits a raw response into status, header fields and body (checking Content-Length when present).
public func parseHTTPReply(_ raw: [UInt8]) throws -> HTTPReply {
    let separator: [UInt8] = [13, 10, 13, 10]
    guard let end = (0..<max(0, raw.count - 3)).first(where: { Array(raw[$0..<$0 + 4]) == separator }) else {
        throw HTTPGetError(
            description: "no response head in \(raw.count) bytes: \(String(decoding: raw, as: UTF8.self))")
    }
    let lines = String(decoding: raw[0..<end], as: UTF8.self).components(separatedBy: "\r\n")
    let statusParts = lines[0].split(separator: " ")
    guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."), let status = Int(statusParts[1]) else {
        throw HTTPGetError(description: "bad status line \(lines[0])")
    }
    var headers: [String: String] = [:]
    for line in lines.dropFirst() {
        guard let colon = line.firstIndex(of: ":") else { continue }
        headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
    let body = Array(raw[(end + 4)...])
    return HTTPReply(status: status, headers: headers, body: body)
}
