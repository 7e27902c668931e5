// Credentials: what a peer needs to reach a coordinator (endpoint, the server's public key, its own key pair),
// stored as JSON with mode 0600; and join tokens: the coordinator's public key plus a one-time enrolment secret,
// printed by `cairn coordinator token` and given to `cairn worker join` / `cairn client join`.

import CZeroMQ
import Crypto
import Foundation
import Support

/// A peer's connection settings and keys.
public struct Credentials: Sendable, Equatable {
    public var endpoint: String
    /// The coordinator's public key (nil: insecure, loopback demos only).
    public var serverKey: String?
    public var keys: CurveKeyPair?

    public init(endpoint: String, serverKey: String?, keys: CurveKeyPair?) {
        self.endpoint = endpoint
        self.serverKey = serverKey
        self.keys = keys
    }

    /// Writes the file atomically, readable only by its owner.
    public func save(to path: String) throws(FormatError) {
        _ = try write(to: path, replacing: true)
    }

    /// Writes the file only if there is none yet (processes racing to create it: one wins whole); false when
    /// one was there already.
    public func saveIfAbsent(to path: String) throws(FormatError) -> Bool {
        try write(to: path, replacing: false)
    }

    private func write(to path: String, replacing: Bool) throws(FormatError) -> Bool {
        var o: JSONObject = ["endpoint": .string(endpoint)]
        if let serverKey { o["server_key"] = .string(serverKey) }
        if let keys {
            o["public_key"] = .string(keys.publicKey)
            o["secret_key"] = .string(keys.secretKey)
        }
        let directory = (path as NSString).deletingLastPathComponent
        do {
            if !directory.isEmpty {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            }
        } catch {
            throw FormatError(.io, path: directory, "cannot create the directory: \(error.localizedDescription)")
        }
        let writer = try AtomicFileWriter(path: path, mode: 0o600)
        try writer.write(Array((JSONValue.object(o).serialized(pretty: true) + "\n").utf8))
        if replacing {
            try writer.commit()
            return true
        }
        return try writer.commitIfAbsent()
    }

    /// Reads a credentials file.
    ///
    /// - Throws: `FormatError` naming the file and field.
    public static func load(from path: String) throws(FormatError) -> Credentials {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FormatError(.notFound, path: path, "cannot read the credentials file")
        }
        let object: JSONObject
        do {
            guard let o = try JSONValue.parse(Array(data)).objectValue else {
                throw FormatError(.invalidValue, path: path, "must be a JSON object")
            }
            object = o
        } catch let e as FormatError {
            throw e
        } catch {
            throw FormatError(.invalidValue, path: path, "is not valid JSON: \(error)")
        }
        guard let endpoint = object["endpoint"]?.stringValue else {
            throw FormatError(.missing, path: path, field: "endpoint", "is required")
        }
        let server = object["server_key"]?.stringValue
        let pub = object["public_key"]?.stringValue
        let sec = object["secret_key"]?.stringValue
        for (field, key) in [("server_key", server), ("public_key", pub), ("secret_key", sec)] {
            if let key, !CurveKeyPair.isValidKey(key) {
                throw FormatError(.invalidValue, path: path, field: field, "is not a 40-character Z85 CURVE key")
            }
        }
        guard (server == nil) == (pub == nil), (pub == nil) == (sec == nil) else {
            throw FormatError(
                .missing, path: path, "needs server_key, public_key and secret_key together (or none: insecure)")
        }
        return Credentials(
            endpoint: endpoint, serverKey: server,
            keys: pub.map { CurveKeyPair(publicKey: $0, secretKey: sec!) })
    }
}

/// A join token: the coordinator's public key and a one-time enrolment secret.
public struct JoinToken: Sendable, Equatable, CustomStringConvertible {
    public var serverKey: String
    public var secret: [UInt8]

    static let prefix = "cairn1"

    public init(serverKey: String, secret: [UInt8]) {
        self.serverKey = serverKey
        self.secret = secret
    }

    /// A token with a fresh 16-byte secret.
    public static func generate(serverKey: String) -> JoinToken {
        var g = SystemRandomNumberGenerator()
        return JoinToken(serverKey: serverKey, secret: (0..<16).map { _ in UInt8.random(in: 0...255, using: &g) })
    }

    /// A short id for listing and revoking (not secret).
    public var id: String { String(FileHash.sha256(secret).prefix(12)) }

    /// The key pair the secret derives, which the coordinator admits for one enrolment.
    public func enrolmentKeys() throws(TransportError) -> CurveKeyPair { try CurveKeyPair.derived(fromSecret: secret) }

    public var description: String {
        var raw = [UInt8](repeating: 0, count: 32)
        _ = zmq_z85_decode(&raw, serverKey)
        return Self.prefix + (raw + secret).map { String(format: "%02x", $0) }.joined()
    }

    /// Parses a token, or nil when it is not one.
    public init?(parsing text: String) {
        let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard t.hasPrefix(Self.prefix) else { return nil }
        let hex = Array(t.utf8.dropFirst(Self.prefix.count))
        guard hex.count == 96 else { return nil }
        var bytes: [UInt8] = []
        for i in stride(from: 0, to: 96, by: 2) {
            guard let b = UInt8(String(decoding: hex[i..<i + 2], as: UTF8.self), radix: 16) else { return nil }
            bytes.append(b)
        }
        guard let key = CurveKeyPair.z85Encode(Array(bytes[0..<32])) else { return nil }
        self.init(serverKey: key, secret: Array(bytes[32...]))
    }
}
