// HTTPResponse: a status, header fields and a body, serialised for HTTP/1.1 with `Connection: close`.

/// A response to send.
public struct HTTPResponse: Sendable {
    public var status: Int
    /// Header fields in order (Content-Length, Connection and Date are added when serialised).
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A body of the given media type; not cached by browsers or proxies (the data changes every step).
    public static func body(_ bytes: [UInt8], type: String, status: Int = 200) -> HTTPResponse {
        HTTPResponse(
            status: status, headers: [("Content-Type", type), ("Cache-Control", "no-store")], body: bytes)
    }

    public static func text(_ text: String, status: Int = 200) -> HTTPResponse {
        body(Array(text.utf8), type: "text/plain; charset=utf-8", status: status)
    }

    public static func html(_ text: String) -> HTTPResponse {
        var r = body(Array(text.utf8), type: "text/html; charset=utf-8")
        // The page's own script and styles only: nothing is loaded from elsewhere.
        r.headers.append(
            ("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"))
        return r
    }

    public static func json(_ text: String, status: Int = 200) -> HTTPResponse {
        body(Array(text.utf8), type: "application/json", status: status)
    }

    /// A plain-text error whose body says what to do.
    public static func error(_ status: Int, _ message: String) -> HTTPResponse {
        text(message + "\n", status: status)
    }

    /// The bytes on the wire; a HEAD response keeps the Content-Length of the body it leaves out.
    public func serialized(headOnly: Bool = false) -> [UInt8] {
        var head = "HTTP/1.1 \(status) \(Self.reason(status))\r\n"
        for (name, value) in headers {
            head += "\(name): \(value)\r\n"
        }
        head += "Content-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        return Array(head.utf8) + (headOnly ? [] : body)
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 413: "Content Too Large"
        case 414: "URI Too Long"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 503: "Service Unavailable"
        case 505: "HTTP Version Not Supported"
        default: "Status"
        }
    }
}
