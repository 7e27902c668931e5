// ClusterClient: the CLI's connection to a coordinator: one DEALER socket, request → reply with a deadline,
// enrolment with a join token, and blob downloads (pull).

import Foundation
import ModelFormats
import Transport
import Wire

/// Where client credentials are looked up, in order: --credentials, --state DIR/client.json,
/// ~/.config/cairn/client.json, then the default state directory's client.json.
enum CredentialPaths {
    static var home: String { UserHome.path }

    static var defaultState: String {
        if let s = ProcessInfo.processInfo.environment["CAIRN_STATE"], !s.isEmpty { return s }
        return (home as NSString).appendingPathComponent(".local/state/cairn")
    }

    static var configDirectory: String {
        if let s = ProcessInfo.processInfo.environment["XDG_CONFIG_HOME"], !s.isEmpty {
            return (s as NSString).appendingPathComponent("cairn")
        }
        return (home as NSString).appendingPathComponent(".config/cairn")
    }

    static var userClient: String { (configDirectory as NSString).appendingPathComponent("client.json") }
    static var userWorker: String { (configDirectory as NSString).appendingPathComponent("worker.json") }

    static func clientCredentials(explicit: String?, state: String?) throws -> Credentials {
        var candidates: [String] = []
        if let explicit {
            candidates = [explicit]
        } else if let state {
            candidates = [(state as NSString).appendingPathComponent("client.json")]
        } else {
            candidates = [userClient, (defaultState as NSString).appendingPathComponent("client.json")]
        }
        for path in candidates where FileManager.default.fileExists(atPath: path) {
            return try Credentials.load(from: path)
        }
        throw CLIError(
            "no client credentials (looked for \(candidates.joined(separator: ", "))); on the coordinator's machine pass "
                + "--state DIR, elsewhere run `cairn client join ENDPOINT --token TOKEN` with a token from "
                + "`cairn coordinator token --role client`")
    }
}

/// A request/reply connection to the coordinator.
final class ClusterClient {
    let context = Context()
    let socket: ZMQDealer
    let endpoint: String

    init(_ credentials: Credentials) throws {
        endpoint = credentials.endpoint
        socket = try ZMQDealer(context: context, credentials: credentials)
    }

    deinit { socket.close() }

    func send(_ m: Message) throws { try socket.send(m.encode()) }

    /// The next message, or an error naming why none came.
    func receive(timeout: Double, waitingFor what: String) throws -> Message {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if socket.refused() {
                throw CLIError("the coordinator at \(endpoint) refused this key: it is not enrolled, or was revoked")
            }
            guard let r = try socket.receive(timeoutMilliseconds: 100) else { continue }
            let m: Message
            do { m = try Message.decode(r.frames) } catch { throw CLIError("bad reply from the coordinator: \(error)") }
            if m.type == .heartbeat { continue }
            if m.type == .error {
                throw CLIError("coordinator: \((try? m.decode(as: ErrorReport.self))?.text ?? "an error")")
            }
            return m
        }
        throw CLIError(
            "no answer from \(endpoint) within \(Int(timeout)) s while waiting for \(what); is the coordinator running there?"
        )
    }

    /// Sends a request and returns the reply of the expected type.
    func request(_ m: Message, expect: MessageType, timeout: Double = 30) throws -> Message {
        try send(m)
        while true {
            let reply = try receive(timeout: timeout, waitingFor: expect.name)
            if reply.type == expect { return reply }
        }
    }

    /// Downloads a blob to `path` (verified by SHA-256), reporting bytes as they arrive.
    func download(blob: String, bytes total: Int, to path: String, progress: (Int) -> Void) throws {
        let partial = path + ".partial"
        try? FileManager.default.removeItem(atPath: partial)
        _ = FileManager.default.createFile(atPath: partial, contents: nil)
        guard let handle = FileHandle(forWritingAtPath: partial) else { throw CLIError("cannot write \(partial)") }
        defer { try? handle.close() }
        var d = BlobDownload(hash: blob, total: total)
        while !d.isComplete {
            for r in d.requests() { try send(r) }
            let m = try receive(timeout: 60, waitingFor: "a chunk of \(blob.prefix(12))")
            guard m.type == .chunk else { continue }
            let bytes = try d.accept(m)
            if !bytes.isEmpty { try handle.write(contentsOf: bytes) }
            progress(d.received)
        }
        try handle.synchronize()
        let actual = try FileHash.sha256(file: partial)
        guard actual == blob else {
            try? FileManager.default.removeItem(atPath: partial)
            throw CLIError("downloaded \(path) has SHA-256 \(actual), expected \(blob); nothing was written")
        }
        guard rename(partial, path) == 0 else { throw CLIError("cannot move \(partial) to \(path)") }
    }

    /// Enrols a fresh key pair with a join token; returns credentials to save.
    static func enrol(endpoint: String, token: JoinToken, role: String, name: String) throws -> Credentials {
        let keys = try CurveKeyPair.generate()
        let enrolment = try token.enrolmentKeys()
        let client = try ClusterClient(Credentials(endpoint: endpoint, serverKey: token.serverKey, keys: enrolment))
        do {
            _ = try client.request(
                Enrol(publicKey: keys.publicKey, role: role, name: name).message,
                expect: .enrolled, timeout: 20)
        } catch let e as CLIError where e.description.contains("refused this key") {
            throw CLIError(
                "the coordinator at \(endpoint) refused this token: it was used, revoked or has expired; ask for a "
                    + "new one (cairn coordinator token)")
        }
        return Credentials(endpoint: endpoint, serverKey: token.serverKey, keys: keys)
    }
}
