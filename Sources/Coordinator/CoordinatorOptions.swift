// CoordinatorOptions: a coordinator's settings, the files of its state directory, and the errors that stop it from
// starting.

import Foundation
import Transport
import Wire

/// Why the coordinator cannot start.
public struct CoordinatorError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Settings of a coordinator.
public struct CoordinatorOptions: Sendable {
    public var stateDirectory: String
    /// ZeroMQ endpoint to bind, e.g. tcp://0.0.0.0:7070 (tcp://127.0.0.1:* picks a free port).
    public var listen: String
    /// No CURVE, no keys (loopback only).
    public var insecure = false
    public var heartbeatMilliseconds = Wire.heartbeatMilliseconds
    public var liveness = Wire.heartbeatLiveness
    /// Deadlines: an assignment is given up on after 3 × its expected time + this, and never sooner than this
    /// (seconds); before a worker's speed is measured, after `firstDeadline`.
    public var deadlineFloor = 10.0
    public var firstDeadline = 600.0
    /// Called at each point of journaling a step: `checkpoint` (its checkpoint blob stored, the database not yet
    /// told), `transaction` (inside the database transaction, half written), `cleanup` (committed, the previous
    /// checkpoint not yet removed), with the step. The chaos tests kill the process there; nil in normal use.
    public var journalProbe: (@Sendable (_ point: String, _ step: Int) -> Void)?
    /// Messages a second one connection may send (a burst of twice that), far above what workers and clients
    /// need (heartbeats, blob chunk requests, results); beyond it messages are dropped before decoding, so a
    /// flooding peer costs little and the others are served.
    public var messagesPerSecond = 500.0
    /// Jobs that run at once, sharing the workers (the rest wait in the queue). Workers load every running job's
    /// model; jobs on one base share one copy of it.
    public var maxRunningJobs = 4
    /// Where to serve the dashboard, JSON API and /metrics (HOST:PORT; port 0 picks one); nil: nowhere. Bound beyond
    /// loopback, the data routes need the bearer token in STATE/http-token.
    public var http: String?
    /// Whether failing to bind `http` stops the coordinator (an address the user asked for) or is only logged (the
    /// default address, which another coordinator on this machine may hold).
    public var httpRequired = true

    public init(stateDirectory: String, listen: String) {
        self.stateDirectory = stateDirectory
        self.listen = listen
    }
}

/// Files of a state directory.
public enum StateFiles {
    public static func server(_ dir: String) -> String { (dir as NSString).appendingPathComponent("server.json") }
    public static func client(_ dir: String) -> String { (dir as NSString).appendingPathComponent("client.json") }
    public static func blobs(_ dir: String) -> String { (dir as NSString).appendingPathComponent("blobs") }

    /// Whether an endpoint is on this machine only (loopback TCP, IPC, inproc).
    public static func isLoopback(_ endpoint: String) -> Bool {
        endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") || endpoint.hasPrefix("tcp://127.")
            || endpoint.hasPrefix("tcp://localhost:") || endpoint.hasPrefix("tcp://[::1]:")
    }

    /// The coordinator's CURVE key pair, created the first time by whichever comes first: the coordinator or a
    /// token issued before it ever started (both may run at once; the file is created once).
    static func serverKeys(_ dir: String, listen: String) throws(CoordinatorError) -> CurveKeyPair {
        for _ in 0..<2 {
            if let existing = try? Credentials.load(from: server(dir)), let keys = existing.keys { return keys }
            do {
                let keys = try CurveKeyPair.generate()
                if try Credentials(endpoint: listen, serverKey: keys.publicKey, keys: keys).saveIfAbsent(
                    to: server(dir))
                {
                    return keys
                }
            } catch { throw CoordinatorError("cannot create the coordinator's keys in \(dir): \(error)") }
        }
        throw CoordinatorError("\(server(dir)) holds no key pair; remove it to have a new one made")
    }

    /// Issues a join token (beside a live coordinator, or before its first start: the store is shared through
    /// SQLite, and the key pair is made by whichever comes first).
    public static func issueToken(stateDirectory dir: String, role: String, validFor seconds: Double)
        throws(CoordinatorError) -> JoinToken
    {
        if let existing = try? Credentials.load(from: server(dir)), existing.keys == nil {
            throw CoordinatorError("the coordinator in \(dir) runs without keys (--insecure); it needs no tokens")
        }
        let key = try serverKeys(dir, listen: "").publicKey
        let token = JoinToken.generate(serverKey: key)
        do {
            let store = try Store(directory: dir)
            try store.addToken(
                id: token.id, enrolKey: try token.enrolmentKeys().publicKey, role: role,
                expires: Date().timeIntervalSince1970 + seconds)
        } catch { throw CoordinatorError("cannot record the token: \(error)") }
        return token
    }
}
