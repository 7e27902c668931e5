// A small wrapper over libzmq: one context, sockets that close deterministically (linger 0, closed by `close()`
// or deinit), multipart send/receive of byte frames, polling, CURVE keys and the ZAP handshake. errno values
// become typed errors. Sockets are not thread-safe (libzmq's rule): each is used by one thread.

import CZeroMQ
import Crypto
import Foundation

/// The text of a NUL-terminated C string that libzmq wrote into a buffer of ours.
private func text(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// A libzmq failure, with the operation and the library's message.
public struct TransportError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The peer is not connected (ROUTER with mandatory routing).
        case unreachable
        /// The endpoint is malformed or uses an unsupported transport.
        case badEndpoint
        /// The address is in use or cannot be assigned.
        case addressInUse
        /// The socket or context is closed.
        case closed
        /// The operation would block.
        case wouldBlock
        /// Interrupted by a signal.
        case interrupted
        case other(Int32)
    }
    public var kind: Kind
    public var operation: String
    public var message: String

    init(_ operation: String, errno code: Int32 = zmq_errno()) {
        self.operation = operation
        message = String(cString: zmq_strerror(code))
        switch code {
        case EHOSTUNREACH: kind = .unreachable
        case EINVAL, EPROTONOSUPPORT, ENOCOMPATPROTO: kind = .badEndpoint
        case EADDRINUSE, EADDRNOTAVAIL: kind = .addressInUse
        case ETERM, ENOTSOCK: kind = .closed
        case EAGAIN: kind = .wouldBlock
        case EINTR: kind = .interrupted
        default: kind = .other(code)
        }
    }

    public var description: String { "\(operation): \(message)" }
}

/// A libzmq context: owns the I/O threads; every socket belongs to one.
public final class Context: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer
    private let lock = NSLock()
    private var sockets: [ObjectIdentifier: Weak] = [:]

    private struct Weak { weak var socket: Socket? }

    public init() {
        handle = zmq_ctx_new()
    }

    func register(_ s: Socket) {
        lock.withLock { sockets[ObjectIdentifier(s)] = Weak(socket: s) }
    }

    func unregister(_ s: Socket) {
        _ = lock.withLock { sockets.removeValue(forKey: ObjectIdentifier(s)) }
    }

    deinit {
        let open = lock.withLock { sockets.values.compactMap(\.socket) }
        for s in open { s.close() }
        zmq_ctx_term(handle)
    }
}

/// A received multipart message.
public struct Received: Sendable {
    /// The frames (for a ROUTER socket, frame 0 is the sender's routing id).
    public var frames: [[UInt8]]
    /// The ZAP user id the coordinator's handler assigned to the sender (CURVE only).
    public var userId: String?
    /// Total bytes of all frames.
    public var byteCount: Int { frames.reduce(0) { $0 + $1.count } }
}

/// A ZeroMQ socket.
public final class Socket: @unchecked Sendable {
    public enum Kind: Int32, Sendable {
        case router, dealer, rep, pair
        var value: Int32 {
            switch self {
            case .router: ZMQ_ROUTER
            case .dealer: ZMQ_DEALER
            case .rep: ZMQ_REP
            case .pair: ZMQ_PAIR
            }
        }
    }

    private var handle: UnsafeMutableRawPointer?
    private let context: Context
    public let kind: Kind

    public init(_ context: Context, _ kind: Kind) throws(TransportError) {
        guard let h = zmq_socket(context.handle, kind.value) else { throw TransportError("zmq_socket") }
        handle = h
        self.context = context
        self.kind = kind
        context.register(self)
        try set(ZMQ_LINGER, 0)
    }

    deinit { close() }

    /// Closes the socket now; pending outgoing messages are discarded. Safe to call twice.
    public func close() {
        guard let h = handle else { return }
        handle = nil
        zmq_close(h)
        context.unregister(self)
    }

    public var isClosed: Bool { handle == nil }

    private func live(_ op: String) throws(TransportError) -> UnsafeMutableRawPointer {
        guard let h = handle else { throw TransportError(op, errno: ENOTSOCK) }
        return h
    }

    /// Sets an integer option.
    public func set(_ option: Int32, _ value: Int32) throws(TransportError) {
        var v = value
        guard zmq_setsockopt(try live("setsockopt"), option, &v, MemoryLayout<Int32>.size) == 0 else {
            throw TransportError("setsockopt \(option)")
        }
    }

    /// Sets a 64-bit integer option.
    public func set(_ option: Int32, int64 value: Int64) throws(TransportError) {
        var v = value
        guard zmq_setsockopt(try live("setsockopt"), option, &v, MemoryLayout<Int64>.size) == 0 else {
            throw TransportError("setsockopt \(option)")
        }
    }

    /// Sets a string option.
    public func set(_ option: Int32, _ value: String) throws(TransportError) {
        let h = try live("setsockopt")
        let rc = value.withCString { zmq_setsockopt(h, option, $0, strlen($0)) }
        guard rc == 0 else { throw TransportError("setsockopt \(option)") }
    }

    /// ROUTER: sending to a peer that is not connected fails with `.unreachable` instead of vanishing.
    public func setRouterMandatory() throws(TransportError) { try set(ZMQ_ROUTER_MANDATORY, 1) }

    /// Frames larger than this are refused by libzmq, which drops the sender's connection.
    public func setMaxMessageSize(_ bytes: Int) throws(TransportError) { try set(ZMQ_MAXMSGSIZE, int64: Int64(bytes)) }

    /// Makes this socket a CURVE server with the given key pair.
    public func makeCurveServer(_ keys: CurveKeyPair) throws(TransportError) {
        try set(ZMQ_CURVE_SERVER, 1)
        try set(ZMQ_CURVE_SECRETKEY, keys.secretKey)
        try set(ZMQ_ZAP_DOMAIN, "cairn")
    }

    /// Makes this socket a CURVE client of `serverKey` with its own key pair.
    public func makeCurveClient(_ keys: CurveKeyPair, serverKey: String) throws(TransportError) {
        try set(ZMQ_CURVE_SERVERKEY, serverKey)
        try set(ZMQ_CURVE_PUBLICKEY, keys.publicKey)
        try set(ZMQ_CURVE_SECRETKEY, keys.secretKey)
    }

    public func bind(_ endpoint: String) throws(TransportError) {
        guard zmq_bind(try live("bind"), endpoint) == 0 else { throw TransportError("bind \(endpoint)") }
    }

    public func connect(_ endpoint: String) throws(TransportError) {
        guard zmq_connect(try live("connect"), endpoint) == 0 else { throw TransportError("connect \(endpoint)") }
    }

    /// The endpoint actually bound (resolves a `*` port).
    public var lastEndpoint: String {
        guard let h = handle else { return "" }
        var buffer = [CChar](repeating: 0, count: 256)
        var size = buffer.count
        guard zmq_getsockopt(h, ZMQ_LAST_ENDPOINT, &buffer, &size) == 0 else { return "" }
        return text(buffer)
    }

    /// Sends frames as one multipart message without blocking.
    ///
    /// - Throws: `.unreachable` for an unknown ROUTER peer, `.wouldBlock` when the peer's queue is full.
    public func send(_ frames: [[UInt8]]) throws(TransportError) {
        let h = try live("send")
        for (i, frame) in frames.enumerated() {
            let flags = ZMQ_DONTWAIT | (i + 1 < frames.count ? ZMQ_SNDMORE : 0)
            let rc = frame.withUnsafeBytes { zmq_send(h, $0.baseAddress, $0.count, flags) }
            if rc < 0 { throw TransportError("send") }
        }
    }

    /// Waits up to `timeoutMilliseconds` (−1: forever) for a message and receives it.
    public func receive(timeoutMilliseconds: Int) throws(TransportError) -> Received? {
        guard try Socket.poll([self], timeoutMilliseconds: timeoutMilliseconds)[0] else { return nil }
        return try receiveNow()
    }

    /// Receives a waiting message, or nil when none is waiting.
    public func receiveNow() throws(TransportError) -> Received? {
        let h = try live("receive")
        var frames: [[UInt8]] = []
        var userId: String?
        while true {
            var msg = zmq_msg_t()
            zmq_msg_init(&msg)
            defer { zmq_msg_close(&msg) }
            let n = zmq_msg_recv(&msg, h, frames.isEmpty ? ZMQ_DONTWAIT : 0)
            if n < 0 {
                let e = TransportError("receive")
                if e.kind == .wouldBlock, frames.isEmpty { return nil }
                throw e
            }
            // ROUTER's routing-id frame is made locally and carries no metadata; the peer's frames do.
            if userId == nil, let p = zmq_msg_gets(&msg, "User-Id") { userId = String(cString: p) }
            let data = zmq_msg_data(&msg)!
            frames.append(Array(UnsafeRawBufferPointer(start: data, count: Int(n))))
            if zmq_msg_more(&msg) == 0 { break }
        }
        return Received(frames: frames, userId: userId)
    }

    /// Which sockets have a message waiting, after waiting up to `timeoutMilliseconds` for any.
    public static func poll(_ sockets: [Socket], timeoutMilliseconds: Int) throws(TransportError) -> [Bool] {
        var items: [zmq_pollitem_t] = []
        for s in sockets {
            items.append(zmq_pollitem_t(socket: try s.live("poll"), fd: 0, events: Int16(ZMQ_POLLIN), revents: 0))
        }
        let rc = zmq_poll(&items, Int32(items.count), timeoutMilliseconds)
        if rc < 0 {
            let e = TransportError("poll")
            if e.kind == .interrupted { return sockets.map { _ in false } }
            throw e
        }
        return items.map { $0.revents & Int16(ZMQ_POLLIN) != 0 }
    }
}

/// A CURVE key pair, Z85-encoded (40 characters each).
public struct CurveKeyPair: Sendable, Equatable {
    public var publicKey: String
    public var secretKey: String

    public init(publicKey: String, secretKey: String) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// A fresh random key pair.
    public static func generate() throws(TransportError) -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41)
        var sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else { throw TransportError("curve_keypair") }
        return CurveKeyPair(publicKey: text(pub), secretKey: text(sec))
    }

    /// The key pair derived from an enrolment secret: the coordinator (which issued the secret) and the joining
    /// peer (which holds it in its token) compute the same public key, so the coordinator's ZAP handler can
    /// admit a peer that has no key of its own yet, for the one `enrol` exchange.
    public static func derived(fromSecret secret: [UInt8]) throws(TransportError) -> CurveKeyPair {
        let digest = Array(SHA256.hash(data: Array("cairn enrolment key v1".utf8) + secret))
        guard let sec = z85Encode(digest) else { throw TransportError("z85_encode", errno: EINVAL) }
        var pub = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&pub, sec) == 0 else { throw TransportError("curve_public") }
        return CurveKeyPair(publicKey: text(pub), secretKey: sec)
    }

    /// Z85 text of 32 bytes (a CURVE key).
    public static func z85Encode(_ bytes: [UInt8]) -> String? {
        guard bytes.count % 4 == 0 else { return nil }
        var out = [CChar](repeating: 0, count: bytes.count * 5 / 4 + 1)
        guard zmq_z85_encode(&out, bytes, bytes.count) != nil else { return nil }
        return text(out)
    }

    /// Whether text is a well-formed Z85 CURVE key.
    public static func isValidKey(_ text: String) -> Bool {
        guard text.utf8.count == 40 else { return false }
        var out = [UInt8](repeating: 0, count: 32)
        return zmq_z85_decode(&out, text) != nil
    }
}

/// The coordinator's side of ZAP (RFC 27): libzmq asks, over an inproc REP socket, whether each connecting CURVE
/// client may proceed; `authorize` answers with the user id to attach to its messages, or nil to refuse.
public final class ZAPHandler {
    public let socket: Socket

    /// Binds the ZAP endpoint of `context`. Must exist before the CURVE server socket binds.
    public init(_ context: Context) throws(TransportError) {
        socket = try Socket(context, .rep)
        try socket.bind("inproc://zeromq.zap.01")
    }

    /// Answers every waiting request.
    public func serve(authorize: (_ publicKey: String) -> String?) throws(TransportError) {
        while let request = try socket.receiveNow() {
            let f = request.frames
            guard f.count >= 6 else {
                try socket.send([
                    Array("1.0".utf8), f.count > 1 ? f[1] : [], Array("500".utf8), Array("bad request".utf8), [], [],
                ])
                continue
            }
            var userId: String?
            if String(decoding: f[5], as: UTF8.self) == "CURVE", f.count >= 7, f[6].count == 32,
                let key = CurveKeyPair.z85Encode(f[6])
            {
                userId = authorize(key)
            }
            if let userId {
                try socket.send([Array("1.0".utf8), f[1], Array("200".utf8), Array("OK".utf8), Array(userId.utf8), []])
            } else {
                try socket.send([Array("1.0".utf8), f[1], Array("400".utf8), Array("key not enrolled".utf8), [], []])
            }
        }
    }

    public func close() { socket.close() }
}

/// Watches a client socket's handshake: tells when the server refused our key (ZAP 400) or spoke another protocol.
public final class HandshakeMonitor {
    private let socket: Socket
    private static let counter = Counter()

    private final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var n = 0
        func next() -> Int {
            lock.withLock {
                n += 1; return n
            }
        }
    }

    public enum Event: Sendable, Equatable {
        case succeeded
        case refused
        case failed(String)
    }

    public init(_ context: Context, watching target: Socket) throws(TransportError) {
        let endpoint = "inproc://cairn-monitor-\(Self.counter.next())"
        let events =
            ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
            | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
        guard zmq_socket_monitor(try target.rawHandle(), endpoint, events) == 0 else {
            throw TransportError("socket_monitor")
        }
        socket = try Socket(context, .pair)
        try socket.connect(endpoint)
    }

    /// Handshake events since the last call.
    public func events() -> [Event] {
        var out: [Event] = []
        while let m = try? socket.receiveNow(), let first = m.frames.first, first.count >= 6 {
            let event = UInt16(first[0]) | UInt16(first[1]) << 8
            let value = UInt32(first[2]) | UInt32(first[3]) << 8 | UInt32(first[4]) << 16 | UInt32(first[5]) << 24
            switch Int32(event) {
            case ZMQ_EVENT_HANDSHAKE_SUCCEEDED: out.append(.succeeded)
            case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
                out.append(value == 400 ? .refused : .failed("authentication status \(value)"))
            default:
                out.append(
                    .failed("handshake failed (\(value)); is this a Cairn coordinator, with CURVE on both sides?"))
            }
        }
        return out
    }

    public func close() { socket.close() }
}

extension Socket {
    func rawHandle() throws(TransportError) -> UnsafeMutableRawPointer { try live("handle") }
}
