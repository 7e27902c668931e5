// ZeroMQ: facts about the linked libzmq. The cluster (coordinator ROUTER, worker DEALER sockets, CURVE
// encryption with a ZAP allow-list) is built on it; Cairn refuses to start a cluster on a libzmq without
// CURVE, since every connection is encrypted by default.

import CZeroMQ

/// The linked libzmq library.
public enum ZeroMQ {
    /// The library version, e.g. (4, 3, 4).
    public static var version: (major: Int, minor: Int, patch: Int) {
        var major: Int32 = 0
        var minor: Int32 = 0
        var patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return (Int(major), Int(minor), Int(patch))
    }

    /// Whether the library supports a capability (`curve`, `ipc`, `draft`, ...).
    public static func has(_ capability: String) -> Bool { zmq_has(capability) != 0 }

    /// The oldest libzmq Cairn supports (4.3: CURVE with ZAP, heartbeating socket options).
    public static let minimumVersion = (major: 4, minor: 3)

    /// Whether the linked library is new enough and supports CURVE.
    public static var isUsable: Bool {
        let v = version
        return (v.major, v.minor) >= minimumVersion && has("curve")
    }
}
