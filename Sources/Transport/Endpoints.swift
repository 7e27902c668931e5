// Endpoints: what the coordinator and the workers need of a transport, so their loops run over ZeroMQ in
// production and over an in-memory network in tests (which can drop, delay and cut messages on purpose).

import Foundation

/// The coordinator's side: one socket all peers talk to; received frame 0 is the sender's routing id.
public protocol RouterEndpoint: AnyObject {
    /// Waits up to `timeoutMilliseconds` for something to do (a message, or a ZAP request it then answers).
    func wait(timeoutMilliseconds: Int) throws(TransportError)
    /// A waiting message, or nil.
    func receiveNow() throws(TransportError) -> Received?
    /// Sends frames to the peer named by frame 0.
    func send(_ frames: [[UInt8]]) throws(TransportError)
    func close()
}

/// A worker's or client's side: one connection to the coordinator.
public protocol DealerEndpoint: AnyObject {
    func receive(timeoutMilliseconds: Int) throws(TransportError) -> Received?
    func receiveNow() throws(TransportError) -> Received?
    func send(_ frames: [[UInt8]]) throws(TransportError)
    /// Whether the coordinator refused this peer's key since the last call.
    func refused() -> Bool
    func close()
}

/// The coordinator's ROUTER socket with its ZAP handler.
public final class ZMQRouter: RouterEndpoint {
    public let socket: Socket
    private let zap: ZAPHandler?
    private let authorize: (String) -> String?

    /// A ROUTER bound to `endpoint`; with `keys`, a CURVE server whose ZAP handler asks `authorize` (public key →
    /// user id, or nil to refuse) about every connecting key.
    public init(
        context: Context, endpoint: String, keys: CurveKeyPair?, maxMessageBytes: Int,
        authorize: @escaping (String) -> String?
    ) throws(TransportError) {
        zap = keys == nil ? nil : try ZAPHandler(context)
        socket = try Socket(context, .router)
        try socket.setRouterMandatory()
        try socket.setMaxMessageSize(maxMessageBytes)
        if let keys { try socket.makeCurveServer(keys) }
        try socket.bind(endpoint)
        self.authorize = authorize
    }

    public var endpoint: String { socket.lastEndpoint }

    public func wait(timeoutMilliseconds: Int) throws(TransportError) {
        let sockets = zap.map { [socket, $0.socket] } ?? [socket]
        let ready = try Socket.poll(sockets, timeoutMilliseconds: timeoutMilliseconds)
        if ready.count > 1, ready[1] { try zap?.serve(authorize: authorize) }
    }

    public func receiveNow() throws(TransportError) -> Received? {
        try zap?.serve(authorize: authorize)
        return try socket.receiveNow()
    }

    public func send(_ frames: [[UInt8]]) throws(TransportError) { try socket.send(frames) }

    public func close() {
        socket.close()
        zap?.close()
    }
}

/// A DEALER connection, CURVE when given keys, with a handshake monitor.
public final class ZMQDealer: DealerEndpoint {
    public let socket: Socket
    private let monitor: HandshakeMonitor?

    public init(context: Context, credentials: Credentials) throws(TransportError) {
        socket = try Socket(context, .dealer)
        if let server = credentials.serverKey, let keys = credentials.keys {
            try socket.makeCurveClient(keys, serverKey: server)
            monitor = try HandshakeMonitor(context, watching: socket)
        } else {
            monitor = nil
        }
        try socket.connect(credentials.endpoint)
    }

    public func receive(timeoutMilliseconds: Int) throws(TransportError) -> Received? {
        try socket.receive(timeoutMilliseconds: timeoutMilliseconds)
    }

    public func receiveNow() throws(TransportError) -> Received? { try socket.receiveNow() }

    public func send(_ frames: [[UInt8]]) throws(TransportError) { try socket.send(frames) }

    public func refused() -> Bool { monitor?.events().contains(.refused) ?? false }

    public func close() {
        monitor?.close()
        socket.close()
    }
}

/// A network in memory: one router, any number of dealers, and per-dealer links that can drop (with a seeded
/// generator, so a test is repeatable), delay, or be cut both ways.
public final class InMemoryNetwork: @unchecked Sendable {
    private let lock = NSCondition()
    private var routerInbox: [(due: Double, message: Received)] = []
    private var dealerInboxes: [Int: [(due: Double, frames: [[UInt8]])]] = [:]
    private var links: [Int: Link] = [:]
    private var nextId = 1
    private var rng: UInt64
    /// Messages dropped so far (by drop rate or a cut link).
    public private(set) var dropped = 0

    /// How one dealer's link behaves.
    public struct Link: Sendable {
        public var cut = false
        /// Probability that a message (either way) is lost.
        public var dropRate = 0.0
        /// Seconds added to every message.
        public var delay = 0.0
        var userId: String?
        var open = true
    }

    public init(seed: UInt64 = 1) { rng = seed | 1 }

    static var now: Double { Date().timeIntervalSince1970 }

    private func nextRandom() -> Double {
        rng ^= rng << 13
        rng ^= rng >> 7
        rng ^= rng << 17
        return Double(rng >> 11) / Double(1 << 53)
    }

    /// Changes a dealer's link (by the id `dealer()` returned).
    public func update(_ id: Int, _ change: (inout Link) -> Void) {
        lock.withLock {
            if var l = links[id] {
                change(&l)
                links[id] = l
            }
        }
    }

    public func router() -> RouterEndpoint { Router(network: self) }

    /// A new connection that the router sees with `userId` (as ZAP would assign).
    public func dealer(userId: String?) -> (id: Int, endpoint: DealerEndpoint) {
        lock.withLock {
            let id = nextId
            nextId += 1
            links[id] = Link(userId: userId)
            dealerInboxes[id] = []
            return (id, Dealer(network: self, id: id))
        }
    }

    private static func routingId(_ id: Int) -> [UInt8] { withUnsafeBytes(of: UInt32(id).bigEndian) { Array($0) } }

    private func passes(_ link: Link) -> Bool {
        if link.cut || !link.open { return false }
        return link.dropRate <= 0 || nextRandom() >= link.dropRate
    }

    fileprivate func fromDealer(_ id: Int, _ frames: [[UInt8]]) {
        lock.withLock {
            guard let link = links[id] else { return }
            guard passes(link) else {
                dropped += 1
                return
            }
            routerInbox.append(
                (Self.now + link.delay, Received(frames: [Self.routingId(id)] + frames, userId: link.userId)))
            lock.broadcast()
        }
    }

    fileprivate func fromRouter(_ frames: [[UInt8]]) throws(TransportError) {
        lock.lock()
        defer { lock.unlock() }
        guard frames.count > 1, frames[0].count == 4 else { throw TransportError("send", errno: EHOSTUNREACH) }
        let id = Int(frames[0].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        guard let link = links[id], link.open else { throw TransportError("send", errno: EHOSTUNREACH) }
        guard passes(link) else {
            dropped += 1
            return
        }
        dealerInboxes[id, default: []].append((Self.now + link.delay, Array(frames.dropFirst())))
        lock.broadcast()
    }

    fileprivate func take(dealer id: Int?, timeout: Double) -> Received? {
        let deadline = Self.now + max(0, timeout)
        lock.lock()
        defer { lock.unlock() }
        while true {
            let now = Self.now
            if let id {
                if let i = dealerInboxes[id]?.firstIndex(where: { $0.due <= now }) {
                    return Received(frames: dealerInboxes[id]!.remove(at: i).frames, userId: nil)
                }
            } else if let i = routerInbox.firstIndex(where: { $0.due <= now }) {
                return routerInbox.remove(at: i).message
            }
            if now >= deadline { return nil }
            _ = lock.wait(until: Date(timeIntervalSince1970: min(deadline, now + 0.005)))
        }
    }

    fileprivate func close(dealer id: Int) {
        lock.withLock {
            links[id]?.open = false
            dealerInboxes[id] = []
        }
    }

    private final class Router: RouterEndpoint {
        let network: InMemoryNetwork
        var pending: Received?
        init(network: InMemoryNetwork) { self.network = network }
        func wait(timeoutMilliseconds: Int) throws(TransportError) {
            if pending == nil { pending = network.take(dealer: nil, timeout: Double(timeoutMilliseconds) / 1000) }
        }
        func receiveNow() throws(TransportError) -> Received? {
            if let p = pending {
                pending = nil
                return p
            }
            return network.take(dealer: nil, timeout: 0)
        }
        func send(_ frames: [[UInt8]]) throws(TransportError) { try network.fromRouter(frames) }
        func close() {}
    }

    private final class Dealer: DealerEndpoint {
        let network: InMemoryNetwork
        let id: Int
        init(network: InMemoryNetwork, id: Int) {
            self.network = network
            self.id = id
        }
        func receive(timeoutMilliseconds: Int) throws(TransportError) -> Received? {
            network.take(dealer: id, timeout: Double(timeoutMilliseconds) / 1000)
        }
        func receiveNow() throws(TransportError) -> Received? { network.take(dealer: id, timeout: 0) }
        func send(_ frames: [[UInt8]]) throws(TransportError) { network.fromDealer(id, frames) }
        func refused() -> Bool { false }
        func close() { network.close(dealer: id) }
    }
}
