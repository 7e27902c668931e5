// HTTPServer: a small, read-only HTTP/1.1 server (the coordinator's dashboard, JSON API and /metrics). One thread
// polls the listening socket and every connection, non-blocking: a slow or silent client costs a slot, never the
// loop. Each connection carries one request (GET or HEAD, no body) and is closed after the response. Bounds: a
// head of at most 16 KiB, 64 connections at once (more are answered 503), 10 s to send a request and 30 s to
// take the response. The handler runs on the server thread, one request at a time.

#if canImport(Glibc)
    import Glibc
#endif
import Foundation

/// A listening HTTP server; `start()` serves on a thread of its own until `stop()`.
public final class HTTPServer: @unchecked Sendable {
    public typealias Handler = @Sendable (HTTPRequest) -> HTTPResponse

    public static let maxConnections = 64
    /// Seconds a client has to send its request head, and then to take the response.
    public static let requestSeconds = 10.0
    public static let responseSeconds = 30.0

    /// The address bound, as `HOST:PORT` (the port resolved when 0 was asked for).
    public let address: String
    public let port: Int
    /// Whether only this machine can connect (bound to 127.0.0.0/8 or ::1).
    public let isLoopback: Bool

    private let listener: Int32
    private let handler: Handler
    private let lock = NSLock()
    private var stopRequested = false
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)

    /// Binds `address`: `HOST:PORT`, `[IPv6]:PORT`, `:PORT` (every interface) or `PORT` (loopback); port 0 picks a
    /// free port.
    ///
    /// - Throws: `HTTPError` (status 0) when the address is malformed, in use or cannot be bound.
    public init(address text: String, handler: @escaping Handler) throws(HTTPError) {
        self.handler = handler
        let (host, service) = try Self.split(text)
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, service, &hints, &list)
        guard status == 0, let info = list else {
            throw HTTPError(status: 0, "cannot resolve \(text): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(list) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HTTPError(status: 0, "socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            let e = errno
            close(fd)
            throw HTTPError(
                status: 0,
                "cannot listen on \(text): \(String(cString: strerror(e)))"
                    + (e == EADDRINUSE ? "; choose another port (e.g. --http 127.0.0.1:7072)" : ""))
        }
        guard listen(fd, 64) == 0, Self.setNonBlocking(fd) else {
            let e = errno
            close(fd)
            throw HTTPError(status: 0, "cannot listen on \(text): \(String(cString: strerror(e)))")
        }
        listener = fd
        let bound = Self.boundAddress(fd)
        port = bound.port
        isLoopback = bound.loopback
        address = bound.host.contains(":") ? "[\(bound.host)]:\(bound.port)" : "\(bound.host):\(bound.port)"
    }

    deinit {
        stop()
    }

    /// Serves on a new thread.
    public func start() {
        lock.withLock {
            guard thread == nil, !stopRequested else { return }
            let t = Thread { [self] in
                serve()
                finished.signal()
            }
            t.name = "cairn-http"
            thread = t
            t.start()
        }
    }

    /// Stops serving and returns once the thread has closed every connection and the listening socket.
    public func stop() {
        let (running, first) = lock.withLock {
            let state = (thread != nil && !stopRequested, !stopRequested)
            stopRequested = true
            return state
        }
        if running { finished.wait() }
        if first { close(listener) }
    }

    private var shouldStop: Bool { lock.withLock { stopRequested } }

    // MARK: The loop

    private struct Connection {
        let fd: Int32
        var input: [UInt8] = []
        var output: [UInt8] = []
        var written = 0
        var responding = false
        var deadline: Double
    }

    private static var now: Double { Date().timeIntervalSince1970 }

    private func serve() {
        var connections: [Connection] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !shouldStop {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            for c in connections {
                fds.append(pollfd(fd: c.fd, events: Int16(c.responding ? POLLOUT : POLLIN), revents: 0))
            }
            let n = poll(&fds, nfds_t(fds.count), 100)
            if n < 0, errno != EINTR { break }
            let now = Self.now
            var closing: Set<Int32> = []
            for (k, var c) in connections.enumerated() {
                let events = Int32(fds[k + 1].revents)
                if events & Int32(POLLNVAL) != 0 {
                    closing.insert(c.fd)
                    continue
                }
                if !c.responding, events & Int32(POLLIN | POLLHUP | POLLERR) != 0 {
                    let got = buffer.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
                    if got > 0 {
                        c.input += buffer[0..<got]
                        respondIfComplete(&c, now: now)
                    } else if got == 0 || (errno != EAGAIN && errno != EINTR) {
                        closing.insert(c.fd)
                    }
                } else if c.responding, events & Int32(POLLOUT | POLLHUP | POLLERR) != 0 {
                    let sent = c.output[c.written...].withUnsafeBytes {
                        send(c.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
                    }
                    if sent > 0 {
                        c.written += sent
                        if c.written == c.output.count {
                            shutdown(c.fd, Int32(SHUT_WR))
                            closing.insert(c.fd)
                        }
                    } else if sent < 0, errno != EAGAIN, errno != EINTR {
                        closing.insert(c.fd)
                    }
                }
                if now > c.deadline { closing.insert(c.fd) }
                connections[k] = c
            }
            if !closing.isEmpty {
                for fd in closing { close(fd) }
                connections.removeAll { closing.contains($0.fd) }
            }
            if fds[0].revents & Int16(POLLIN) != 0 { accept(into: &connections, now: now) }
        }
        for c in connections { close(c.fd) }
    }

    private func accept(into connections: inout [Connection], now: Double) {
        while true {
            let fd = Glibc.accept(listener, nil, nil)
            guard fd >= 0 else { return }
            guard Self.setNonBlocking(fd), fcntl(fd, F_SETFD, FD_CLOEXEC) == 0 else {
                close(fd)
                continue
            }
            guard connections.count < Self.maxConnections else {
                let busy = HTTPResponse.error(503, "too many connections; try again").serialized()
                _ = busy.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                close(fd)
                continue
            }
            connections.append(Connection(fd: fd, deadline: now + Self.requestSeconds))
        }
    }

    /// Once the head is in: parses it, asks the handler, and switches the connection to writing.
    private func respondIfComplete(_ c: inout Connection, now: Double) {
        let response: HTTPResponse
        var headOnly = false
        if let length = HTTPRequest.headLength(c.input) {
            do {
                let request = try HTTPRequest.parse(c.input[0..<length])
                headOnly = request.method == "HEAD"
                response = handler(request)
            } catch {
                var r = HTTPResponse.error(error.status, error.message)
                if error.status == 405 { r.headers.append(("Allow", "GET, HEAD")) }
                response = r
            }
        } else if c.input.count > HTTPRequest.maxHeadBytes {
            response = .error(431, "the request head is longer than \(HTTPRequest.maxHeadBytes) bytes")
        } else {
            return
        }
        c.output = response.serialized(headOnly: headOnly)
        c.input = []
        c.responding = true
        c.deadline = now + Self.responseSeconds
    }

    // MARK: Addresses

    /// "HOST:PORT" → (host, port); "[::1]:PORT" → ("::1", port); ":PORT" → (nil: every interface); "PORT" →
    /// loopback.
    static func split(_ text: String) throws(HTTPError) -> (host: String?, port: String) {
        let bad = HTTPError(
            status: 0, "\(text) is not an address; expected HOST:PORT, e.g. 127.0.0.1:7071 or 0.0.0.0:7071")
        var host: Substring
        var port: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw bad
            }
            host = text[text.index(after: text.startIndex)..<close]
            port = text[text.index(close, offsetBy: 2)...]
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            port = text[text.index(after: colon)...]
            guard !host.contains(":") else { throw bad }
        } else {
            host = "127.0.0.1"
            port = Substring(text)
        }
        guard let p = Int(port), (0...65535).contains(p) else { throw bad }
        return (host.isEmpty ? nil : String(host), String(p))
    }

    private static func string(_ cString: [CChar]) -> String {
        String(decoding: cString.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func setNonBlocking(_ fd: Int32) -> Bool {
        let flags = fcntl(fd, F_GETFL)
        return flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0
    }

    private static func boundAddress(_ fd: Int32) -> (host: String, port: Int, loopback: Bool) {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        if Int32(storage.ss_family) == AF_INET6 {
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a in
                    var addr = a.pointee.sin6_addr
                    inet_ntop(AF_INET6, &addr, &text, socklen_t(text.count))
                    let host = Self.string(text)
                    return (host, Int(UInt16(bigEndian: a.pointee.sin6_port)), host == "::1")
                }
            }
        }
        return withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { a in
                var addr = a.pointee.sin_addr
                inet_ntop(AF_INET, &addr, &text, socklen_t(text.count))
                let host = UInt32(bigEndian: a.pointee.sin_addr.s_addr)
                return (Self.string(text), Int(UInt16(bigEndian: a.pointee.sin_port)), host >> 24 == 127)
            }
        }
    }
}
