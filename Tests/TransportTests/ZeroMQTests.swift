import Foundation
import Support
import Testing
import Transport

@Suite struct ZeroMQTests {
    /// The cluster needs libzmq ≥ 4.3 built with CURVE (Debian's libzmq5 is built with libsodium).
    @Test func linkedLibraryIsRecentAndSupportsCurve() {
        let v = ZeroMQ.version
        #expect((v.major, v.minor) >= (4, 3), "libzmq \(v)")
        #expect(ZeroMQ.has("curve"))
        #expect(!ZeroMQ.has("no-such-capability"))
        #expect(ZeroMQ.isUsable)
    }
}

@Suite struct CurveTests {
    /// Polls `body` until it returns a value or `seconds` pass (the sockets work on libzmq's I/O threads).
    func eventually<T>(_ seconds: Double = 10, _ body: () throws -> T?) rethrows -> T? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let v = try body() { return v }
            Thread.sleep(forTimeInterval: 0.01)
        }
        return nil
    }

    @Test func onlyKeysTheHandlerAdmitsGetThroughAndTheirMessagesCarryTheUserId() throws {
        let context = Context()
        let server = try CurveKeyPair.generate()
        let good = try CurveKeyPair.generate()
        let bad = try CurveKeyPair.generate()
        let zap = try ZAPHandler(context)
        let router = try Socket(context, .router)
        try router.makeCurveServer(server)
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = router.lastEndpoint

        func client(_ keys: CurveKeyPair) throws -> (Socket, HandshakeMonitor) {
            let s = try Socket(context, .dealer)
            try s.makeCurveClient(keys, serverKey: server.publicKey)
            let m = try HandshakeMonitor(context, watching: s)
            try s.connect(endpoint)
            return (s, m)
        }
        let (goodSocket, goodMonitor) = try client(good)
        let (badSocket, badMonitor) = try client(bad)
        try goodSocket.send([Array("hi".utf8)])
        try badSocket.send([Array("let me in".utf8)])
        var asked: [String] = []
        let received = try eventually {
            try zap.serve { key in
                asked.append(key)
                return key == good.publicKey ? "worker \(key)" : nil
            }
            return try router.receive(timeoutMilliseconds: 10)
        }
        #expect(received?.frames.last == Array("hi".utf8))
        #expect(received?.userId == "worker \(good.publicKey)")
        #expect(Set(asked).isSuperset(of: [good.publicKey]))
        let refused = eventually {
            _ = try? zap.serve { $0 == good.publicKey ? "worker \($0)" : nil }
            return badMonitor.events().contains(.refused) ? true : nil
        }
        #expect(refused == true, "the unenrolled client learns it was refused")
        #expect(goodMonitor.events().allSatisfy { $0 != .refused })
        // Nothing from the refused client ever arrives.
        try zap.serve { $0 == good.publicKey ? "w" : nil }
        #expect(try router.receive(timeoutMilliseconds: 200) == nil)
        badMonitor.close()
        goodMonitor.close()
    }

    @Test func enrolmentKeysDeriveFromTheSecretAlone() throws {
        let a = try CurveKeyPair.derived(fromSecret: [1, 2, 3])
        #expect(a == (try CurveKeyPair.derived(fromSecret: [1, 2, 3])))
        #expect(a.publicKey != (try CurveKeyPair.derived(fromSecret: [1, 2, 4])).publicKey)
        #expect(CurveKeyPair.isValidKey(a.publicKey) && CurveKeyPair.isValidKey(a.secretKey))
        #expect(!CurveKeyPair.isValidKey("short") && !CurveKeyPair.isValidKey(String(repeating: "~", count: 40)))
    }

    @Test func tokensRoundTripAndRejectGarbage() throws {
        let server = try CurveKeyPair.generate()
        let t = JoinToken.generate(serverKey: server.publicKey)
        let text = t.description
        #expect(text.hasPrefix("cairn1") && text.count == 102)
        #expect(JoinToken(parsing: text + "\n") == t)
        #expect(JoinToken(parsing: "cairn1abc") == nil)
        #expect(JoinToken(parsing: String(text.dropLast()) + "z") == nil)
        #expect(JoinToken(parsing: "x" + text.dropFirst()) == nil)
        #expect(t.id != JoinToken.generate(serverKey: server.publicKey).id)
    }

    @Test func credentialsAreSavedPrivatelyAndValidatedOnLoad() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cairn-cred-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let keys = try CurveKeyPair.generate()
        let c = Credentials(endpoint: "tcp://127.0.0.1:7070", serverKey: keys.publicKey, keys: keys)
        let path = dir + "/sub/worker.json"
        try c.save(to: path)
        #expect(try Credentials.load(from: path) == c)
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        try Data(#"{"endpoint":"tcp://x:1","server_key":"nope","public_key":"a","secret_key":"b"}"#.utf8).write(
            to: URL(fileURLWithPath: path))
        #expect {
            try Credentials.load(from: path)
        } throws: { ($0 as? FormatError)?.field == "server_key" }
    }
}
