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
