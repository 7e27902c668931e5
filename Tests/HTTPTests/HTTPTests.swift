// HTTP: the request parser on well-formed and hostile heads, and the server on loopback: routing to the handler,
// HEAD, refusals with the right status, a silent client that does not hold up others, and stop().

#if canImport(Glibc)
    import Glibc
#endif
import Foundation
import HTTP
import TensorKernels
import TestSupport
import Testing

private func parse(_ text: String) throws(HTTPError) -> HTTPRequest {
    try HTTPRequest.parse(ArraySlice(Array(text.utf8)))
}

private func status(of text: String) -> Int {
    do {
        _ = try parse(text)
        return 200
    } catch { return error.status }
}

@Suite struct HTTPRequestTests {
    @Test func parsesARequestHead() throws {
        let r = try parse(
            "GET /api/jobs/job%2D1?after=5&name=a+b%21&flag HTTP/1.1\r\nHost: x\r\nAuthorization:  Bearer  s3cret \r\n"
                + "Accept: a\r\naccept: b\r\n\r\n")
        #expect(r.method == "GET")
        #expect(r.path == "/api/jobs/job-1")
        #expect(r.query == ["after": "5", "name": "a b!", "flag": ""])
        #expect(r.headers["host"] == "x")
        #expect(r.headers["accept"] == "a, b")
        #expect(r.bearerToken == "s3cret")
        #expect(try parse("HEAD / HTTP/1.0\n\n").method == "HEAD")
        #expect(try parse("\r\nGET / HTTP/1.1\r\n\r\n").path == "/")
        #expect(try parse("GET / HTTP/1.1\r\nAuthorization: Basic abc\r\n\r\n").bearerToken == nil)
        // "/" then a combining mark (U+07AF) is one Character, and still a path starting with "/".
        #expect(Array(try parse("GET /%de%af HTTP/1.1\n").path.utf8) == [0x2F, 0xDE, 0xAF])
    }

    @Test func refusesWhatItDoesNotServe() {
        #expect(status(of: "POST /api HTTP/1.1\r\n\r\n") == 405)
        #expect(status(of: "GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n") == 413)
        #expect(status(of: "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") == 413)
        #expect(status(of: "GET / HTTP/2.0\r\n\r\n") == 505)
        #expect(status(of: "GET / FTP/1.0\r\n\r\n") == 400)
        #expect(status(of: "GET /\r\n\r\n") == 400)
        #expect(status(of: "GET  / HTTP/1.1\r\n\r\n") == 400)
        #expect(status(of: "GET http://x/ HTTP/1.1\r\n\r\n") == 400)
        #expect(status(of: "GET /a/../b HTTP/1.1\r\n\r\n") == 400)
        #expect(status(of: "GET /%2e%2e/etc HTTP/1.1\r\n\r\n") == 400)
        #expect(status(of: "GET /%zz HTTP/1.1\r\n\r\n") == 400)
        #expect(status(of: "GET /%ff HTTP/1.1\r\n\r\n") == 400, "not UTF-8")
        #expect(status(of: "GET /%2e%2e/%cc%81 HTTP/1.1\r\n\r\n") == 400, "a combining mark after .. hides nothing")
        #expect(status(of: "GET / HTTP/1.1\r\nNo colon\r\n\r\n") == 400)
        #expect(status(of: "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n") == 400)
        #expect(status(of: "GET / HTTP/1.1\r\nX: a\u{01}b\r\n\r\n") == 400)
        #expect(status(of: "GET /" + String(repeating: "a", count: 5000) + " HTTP/1.1\r\n\r\n") == 414)
        let many = (0..<70).map { "X-\($0): v\r\n" }.joined()
        #expect(status(of: "GET / HTTP/1.1\r\n" + many + "\r\n") == 431)
        #expect(status(of: "") == 400)
    }

    @Test func findsTheEndOfTheHead() {
        #expect(HTTPRequest.headLength(Array("GET / HTTP/1.1\r\nHost: x\r\n".utf8)) == nil)
        #expect(HTTPRequest.headLength(Array("GET / HTTP/1.1\r\n\r\nextra".utf8)) == 18)
        #expect(HTTPRequest.headLength([]) == nil)
    }

    /// Random bytes and mutations of a valid head: the parser returns or throws, never crashes, and what it
    /// accepts has a path starting with "/".
    @Test func survivesMutatedHeads() {
        var rng = SeededGenerator(seed: 7)
        let valid = Array("GET /api/jobs/job-1?after=3 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\r\n".utf8)
        for _ in 0..<3000 {
            var bytes = valid
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: bytes[i] = UInt8.random(in: 0...255, using: &rng)
                case 1: bytes.remove(at: i)
                default: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: i)
                }
                if bytes.isEmpty { bytes = [0] }
            }
            if let r = try? HTTPRequest.parse(bytes[...]) { #expect(r.path.utf8.first == UInt8(ascii: "/")) }
        }
    }
}

@Suite struct HTTPServerTests {
    private func server(_ address: String = "127.0.0.1:0") throws -> HTTPServer {
        let s = try HTTPServer(address: address) { request in
            if request.path == "/hello" {
                return .text("hello \(request.query["name"] ?? "there")")
            }
            return .error(404, "nothing at \(request.path)")
        }
        s.start()
        return s
    }

    @Test func servesTheHandlersResponses() throws {
        let s = try server()
        defer { s.stop() }
        #expect(s.isLoopback && s.port > 0 && s.address == "127.0.0.1:\(s.port)")
        let ok = try httpGet(port: s.port, "/hello?name=cairn")
        #expect(ok.status == 200 && ok.text == "hello cairn")
        #expect(ok.headers["content-length"] == "11" && ok.headers["connection"] == "close")
        #expect(ok.headers["content-type"] == "text/plain; charset=utf-8")
        let head = try httpGet(port: s.port, "/hello", method: "HEAD")
        #expect(head.status == 200 && head.body.isEmpty && head.headers["content-length"] == "11")
        #expect(try httpGet(port: s.port, "/nope").status == 404)
        let post = try httpGet(port: s.port, "/hello", method: "POST")
        #expect(post.status == 405 && post.headers["allow"] == "GET, HEAD")
        let huge = try parseHTTPReply(
            httpExchange(
                port: s.port, request: Array(("GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 20000)).utf8)))
        #expect(huge.status == 431)
        let garbage = try parseHTTPReply(httpExchange(port: s.port, request: Array("\u{16}\u{03}\u{01}\r\n\r\n".utf8)))
        #expect(garbage.status == 400)
    }

    /// A client that connects and says nothing holds a slot, not the loop: others are served meanwhile.
    @Test func aSilentClientDoesNotHoldUpOthers() throws {
        let s = try server()
        defer { s.stop() }
        let silent = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(silent) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(s.port).bigEndian
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(silent, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        #expect(connected == 0)
        for _ in 0..<5 { #expect(try httpGet(port: s.port, "/hello").status == 200) }
    }

    @Test func stopClosesTheListener() throws {
        let s = try server()
        let port = s.port
        #expect(try httpGet(port: port, "/hello").status == 200)
        s.stop()
        #expect(throws: (any Error).self) { try httpGet(port: port, "/hello") }
    }

    @Test func namesAddressesItCannotUse() throws {
        for bad in ["nonsense", "127.0.0.1:99999", "[::1", "a:b:c"] {
            #expect(throws: HTTPError.self) { try HTTPServer(address: bad) { _ in .text("") } }
        }
        let first = try server()
        defer { first.stop() }
        do {
            _ = try HTTPServer(address: first.address) { _ in .text("") }
            Issue.record("a second server bound \(first.address)")
        } catch {
            #expect(error.message.contains("in use") && error.message.contains("--http"), "\(error)")
        }
        let any = try HTTPServer(address: "0.0.0.0:0") { _ in .text("") }
        #expect(!any.isLoopback)
        let bare = try HTTPServer(address: "0") { _ in .text("") }
        #expect(bare.isLoopback)
    }
}
