// The message table: every type, who sends it, its required metadata fields and tensor frames. Decoding checks
// a message against its schema, so handlers read fields without re-checking kinds or bounds.

import Support

/// Message types of protocol version 1. Raw values are the header's fourth byte; never reuse one.
public enum MessageType: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    // Worker ↔ coordinator
    case hello = 1
    case welcome = 2
    case heartbeat = 3
    case job = 4
    case assign = 5
    case result = 6
    case revoke = 7
    case fetch = 8
    case chunk = 9
    case bye = 10
    case error = 11
    case ready = 12
    case roundAssign = 13
    case roundResult = 14
    case evaluate = 15
    case evalResult = 16
    // Enrolment (workers and clients)
    case enrol = 20
    case enrolled = 21
    // Clients
    case submit = 30
    case submitted = 31
    case status = 32
    case statusReply = 33
    case workers = 34
    case workersReply = 35
    case cancel = 36
    case cancelled = 37
    case pull = 38
    case pullReply = 39
    // The adapter registry
    case publish = 40
    case published = 41
    case adapters = 42
    case adaptersReply = 43
    case resolve = 44
    case resolved = 45

    public var description: String { name }

    /// The name used in logs and in Docs/PROTOCOL.md.
    public var name: String {
        switch self {
        case .hello: "hello"
        case .welcome: "welcome"
        case .heartbeat: "heartbeat"
        case .job: "job"
        case .assign: "assign"
        case .result: "result"
        case .revoke: "revoke"
        case .fetch: "fetch"
        case .chunk: "chunk"
        case .bye: "bye"
        case .error: "error"
        case .ready: "ready"
        case .roundAssign: "round_assign"
        case .roundResult: "round_result"
        case .evaluate: "evaluate"
        case .evalResult: "eval_result"
        case .enrol: "enrol"
        case .enrolled: "enrolled"
        case .submit: "submit"
        case .submitted: "submitted"
        case .status: "status"
        case .statusReply: "status_reply"
        case .workers: "workers"
        case .workersReply: "workers_reply"
        case .cancel: "cancel"
        case .cancelled: "cancelled"
        case .pull: "pull"
        case .pullReply: "pull_reply"
        case .publish: "publish"
        case .published: "published"
        case .adapters: "adapters"
        case .adaptersReply: "adapters_reply"
        case .resolve: "resolve"
        case .resolved: "resolved"
        }
    }

    /// What a message of this type must carry.
    public var schema: Schema {
        let id = Field.string(maxBytes: 128)
        let count = Field.int(0, 1 << 53)
        switch self {
        case .hello:
            return Schema(
                [
                    "name": .string(maxBytes: 256), "cores": .int(1, 1 << 16), "memory": count,
                    "gflops": .double(0, 1e9),
                    "threads": .int(1, 1 << 16),
                ], optional: ["local_examples": count, "host": .string(maxBytes: 256)])
        case .welcome:
            return Schema(["worker": id, "heartbeat_ms": .int(10, 600_000), "liveness": .int(1, 1000)])
        case .heartbeat, .workers:
            return Schema([:])
        case .job:
            return Schema(
                [
                    "job": id, "spec": .string(maxBytes: 64 << 10), "model_blob": id, "model_bytes": count,
                    "mode": .string(maxBytes: 32),
                ], optional: ["total_steps": .int(1, 1 << 30), "spec_version": .int(1, 1 << 20)])
        case .assign:
            return Schema(
                ["job": id, "assignment": count, "step": count, "rows": .int(1, 1 << 20)],
                tensors: ["parameters", "tokens", "targets", "positions", "starts"])
        case .result:
            return Schema(
                [
                    "job": id, "assignment": count, "step": count, "loss": .double(0, 1e30), "tokens": count,
                    "seconds": .double(0, 1e9),
                ], tensors: ["gradient"])
        case .roundAssign:
            return Schema(
                [
                    "job": id, "assignment": count, "round": count, "first_step": count, "steps": .int(1, 100_000),
                    "rows_per_step": .int(1, 1 << 20),
                ],
                tensorChoices: [["parameters", "tokens", "targets", "positions", "starts"], ["parameters"]])
        case .roundResult:
            return Schema(
                [
                    "job": id, "assignment": count, "round": count, "loss": .double(0, 1e30), "tokens": count,
                    "seconds": .double(0, 1e9),
                ], tensorChoices: [["delta"], ["delta", "delta.scale"]])
        case .evaluate:
            return Schema(
                ["job": id, "assignment": count, "step": count, "rows": .int(1, 1 << 20)],
                tensors: ["parameters", "tokens", "targets", "positions", "starts"])
        case .evalResult:
            return Schema([
                "job": id, "assignment": count, "step": count, "loss": .double(0, 1e30), "tokens": count,
                "seconds": .double(0, 1e9),
            ])
        case .revoke:
            return Schema(["job": id, "assignment": count])
        case .fetch:
            return Schema(["blob": id, "offset": count, "length": .int(1, Wire.chunkBytes)])
        case .chunk:
            return Schema(["blob": id, "offset": count, "total": count], tensors: ["data"])
        case .bye:
            return Schema(["reason": .string(maxBytes: 1024)])
        case .error:
            return Schema(["code": .string(maxBytes: 64), "message": .string(maxBytes: 4096)], optional: ["job": id])
        case .enrol:
            return Schema([
                "public_key": .string(maxBytes: 64), "role": .string(maxBytes: 16), "name": .string(maxBytes: 256),
            ])
        case .enrolled:
            return Schema(["id": id])
        case .submit:
            return Schema(
                ["spec": .string(maxBytes: 64 << 10), "data_name": .string(maxBytes: 1024)],
                optional: ["validation_name": .string(maxBytes: 1024)],
                tensorChoices: [
                    ["data"], ["data", "validation"], ["data", "adapters"], ["data", "validation", "adapters"],
                ])
        case .submitted, .cancel, .cancelled, .pull, .ready:
            return Schema(["job": id])
        case .status:
            return Schema([:], optional: ["job": id, "after": count])
        case .statusReply:
            return Schema(["body": .object])
        case .workersReply:
            return Schema(["body": .array])
        case .pullReply:
            return Schema(["job": id, "files": .array])
        case .publish:
            return Schema(
                ["name": .string(maxBytes: RegistryName.maxBytes), "description": .string(maxBytes: 4096)],
                optional: ["base": .string(maxBytes: 4096), "job": id],
                tensorChoices: [[], Publish.peftFiles, [Publish.ggufFile]])
        case .published:
            return Schema(
                ["name": .string(maxBytes: RegistryName.maxBytes), "version": .int(1, 1 << 30), "sha256": id],
                optional: ["created": .bool])
        case .adapters:
            return Schema([:], optional: ["base": .string(maxBytes: 4096), "name": .string(maxBytes: 128)])
        case .adaptersReply:
            return Schema(["body": .array], optional: ["omitted": count])
        case .resolve:
            return Schema(["name": .string(maxBytes: 128)])
        case .resolved:
            return Schema(["body": .object])
        }
    }
}

/// A metadata field's kind and bounds.
public enum Field: Sendable {
    case string(maxBytes: Int)
    case int(Int, Int)
    case double(Double, Double)
    case bool
    case object
    case array

    func check(_ v: JSONValue) -> String? {
        switch self {
        case .string(let max):
            guard let s = v.stringValue else { return "must be a string" }
            return s.utf8.count <= max ? nil : "is longer than \(max) bytes"
        case .int(let lo, let hi):
            guard let n = v.intValue else { return "must be an integer" }
            return n >= lo && n <= hi ? nil : "must be in [\(lo), \(hi)]"
        case .double(let lo, let hi):
            guard let x = v.doubleValue, x.isFinite else { return "must be a finite number" }
            return x >= lo && x <= hi ? nil : "must be in [\(lo), \(hi)]"
        case .bool: return v.boolValue == nil ? "must be true or false" : nil
        case .object: return v.objectValue == nil ? "must be an object" : nil
        case .array: return v.arrayValue == nil ? "must be an array" : nil
        }
    }
}

/// Required and optional fields, and the tensor frames by name in order.
public struct Schema: Sendable {
    public var required: [(String, Field)]
    public var optional: [(String, Field)]
    /// Allowed lists of tensor names (one list for most types).
    public var tensors: [[String]]

    init(
        _ required: KeyValuePairs<String, Field>, optional: KeyValuePairs<String, Field> = [:], tensors: [String] = [],
        tensorChoices: [[String]]? = nil
    ) {
        self.required = required.map { ($0.key, $0.value) }
        self.optional = optional.map { ($0.key, $0.value) }
        self.tensors = tensorChoices ?? [tensors]
    }

    func validate(_ m: Message) throws(WireError) {
        for (key, field) in required {
            guard let v = m.metadata[key] else {
                throw WireError(.schema, "\(m.type.name): field \"\(key)\" is missing")
            }
            if let why = field.check(v) { throw WireError(.schema, "\(m.type.name): field \"\(key)\" \(why)") }
        }
        for (key, field) in optional {
            if let v = m.metadata[key], !v.isNull, let why = field.check(v) {
                throw WireError(.schema, "\(m.type.name): field \"\(key)\" \(why)")
            }
        }
        guard tensors.contains(m.tensors.map(\.name)) else {
            throw WireError(
                .schema,
                "\(m.type.name): tensors \(m.tensors.map(\.name)) sent, "
                    + tensors.map { "\($0)" }.joined(separator: " or ") + " expected")
        }
    }
}
