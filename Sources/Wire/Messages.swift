// Messages: one struct per message type. `Message` is the frame-level form (type, metadata, tensors) that
// `Message.decode` checks against the schema table; `decode(as:)` then produces the typed form, so the code that
// acts on a message reads named, typed fields and never looks a key up by string. `message` turns a struct back
// into frames' form. Field names on the wire are in Docs/PROTOCOL.md; they live here and in the schema table only.
//
// What the schema cannot know (a tensor's length against the job's parameter count, token ids against the
// vocabulary) is checked by the receiver, which knows the job.

import Support

/// A message of one type, in typed form.
public protocol WireMessage: Sendable {
    static var type: MessageType { get }
    /// Reads a message that has passed its type's schema (required fields present, every field in bounds).
    init(validated m: Message)
    /// The frame-level form, for encoding.
    var message: Message { get }
}

extension Message {
    /// This message as `T`, validated against T's schema first (a message made locally has not been decoded).
    ///
    /// - Throws: `WireError` when the type differs or a field is missing or out of bounds.
    public func decode<T: WireMessage>(as _: T.Type = T.self) throws(WireError) -> T {
        guard type == T.type else { throw WireError(.schema, "a \(type) message where \(T.type) was expected") }
        try type.schema.validate(self)
        return T(validated: self)
    }
}

// MARK: Worker → coordinator

/// A worker introduces itself (after every connect).
public struct Hello: WireMessage, Equatable {
    public static let type = MessageType.hello
    public var name: String
    public var cores: Int
    /// Bytes of memory.
    public var memory: Int
    /// Its measured sgemm speed.
    public var gflops: Double
    public var threads: Int
    /// Examples of its own data, when it brings some (federated jobs).
    public var localExamples: Int?
    public var host: String?

    public init(
        name: String, cores: Int, memory: Int, gflops: Double, threads: Int, localExamples: Int? = nil,
        host: String? = nil
    ) {
        self.name = name
        self.cores = cores
        self.memory = memory
        self.gflops = gflops
        self.threads = threads
        self.localExamples = localExamples
        self.host = host
    }

    public init(validated m: Message) {
        self.init(
            name: m.string("name"), cores: m.int("cores"), memory: m.int("memory"), gflops: m.double("gflops"),
            threads: m.int("threads"), localExamples: m.optionalInt("local_examples"), host: m.optionalString("host"))
    }

    public var message: Message {
        var o: JSONObject = [
            "name": .string(name), "cores": .integer(Int64(cores)), "memory": .integer(Int64(memory)),
            "gflops": .number(gflops), "threads": .integer(Int64(threads)),
        ]
        o["local_examples"] = localExamples.map { .integer(Int64($0)) }
        o["host"] = host.map(JSONValue.string)
        return Message(.hello, o)
    }
}

/// A worker has the job's model and data loaded and takes assignments for it.
public struct Ready: WireMessage, Equatable {
    public static let type = MessageType.ready
    public var job: String
    public init(job: String) { self.job = job }
    public init(validated m: Message) { job = m.string("job") }
    public var message: Message { Message(.ready, ["job": .string(job)]) }
}

/// The gradient of a step's rows (summed over their tokens).
public struct StepResult: WireMessage, Equatable {
    public static let type = MessageType.result
    public var job: String
    public var assignment: Int
    public var step: Int
    public var loss: Double
    public var tokens: Int
    public var seconds: Double
    public var gradient: Tensor

    public init(job: String, assignment: Int, step: Int, loss: Double, tokens: Int, seconds: Double, gradient: Tensor) {
        self.job = job
        self.assignment = assignment
        self.step = step
        self.loss = loss
        self.tokens = tokens
        self.seconds = seconds
        self.gradient = gradient
    }

    public init(validated m: Message) {
        self.init(
            job: m.string("job"), assignment: m.int("assignment"), step: m.int("step"), loss: m.double("loss"),
            tokens: m.int("tokens"), seconds: m.double("seconds"), gradient: m.tensor("gradient")!)
    }

    public var message: Message {
        var g = gradient
        g.name = "gradient"
        return Message(
            .result,
            [
                "job": .string(job), "assignment": .integer(Int64(assignment)), "step": .integer(Int64(step)),
                "loss": .number(loss), "tokens": .integer(Int64(tokens)), "seconds": .number(seconds),
            ], tensors: [g])
    }
}

/// A worker's pseudo-gradient after a round of local steps (global − its adapter), possibly compressed.
public struct RoundResult: WireMessage, Equatable {
    public static let type = MessageType.roundResult
    public var job: String
    public var assignment: Int
    public var round: Int
    public var loss: Double
    public var tokens: Int
    public var seconds: Double
    /// `delta`, and `delta.scale` for int8.
    public var delta: [Tensor]

    public init(
        job: String, assignment: Int, round: Int, loss: Double, tokens: Int, seconds: Double, delta: [Tensor]
    ) {
        self.job = job
        self.assignment = assignment
        self.round = round
        self.loss = loss
        self.tokens = tokens
        self.seconds = seconds
        self.delta = delta
    }

    public init(validated m: Message) {
        self.init(
            job: m.string("job"), assignment: m.int("assignment"), round: m.int("round"), loss: m.double("loss"),
            tokens: m.int("tokens"), seconds: m.double("seconds"), delta: m.tensors)
    }

    public var message: Message {
        Message(
            .roundResult,
            [
                "job": .string(job), "assignment": .integer(Int64(assignment)), "round": .integer(Int64(round)),
                "loss": .number(loss), "tokens": .integer(Int64(tokens)), "seconds": .number(seconds),
            ], tensors: delta)
    }
}

/// The held-out loss summed over an evaluation assignment's rows.
public struct EvalResult: WireMessage, Equatable {
    public static let type = MessageType.evalResult
    public var job: String
    public var assignment: Int
    public var step: Int
    public var loss: Double
    public var tokens: Int
    public var seconds: Double

    public init(job: String, assignment: Int, step: Int, loss: Double, tokens: Int, seconds: Double) {
        self.job = job
        self.assignment = assignment
        self.step = step
        self.loss = loss
        self.tokens = tokens
        self.seconds = seconds
    }

    public init(validated m: Message) {
        self.init(
            job: m.string("job"), assignment: m.int("assignment"), step: m.int("step"), loss: m.double("loss"),
            tokens: m.int("tokens"), seconds: m.double("seconds"))
    }

    public var message: Message {
        Message(
            .evalResult,
            [
                "job": .string(job), "assignment": .integer(Int64(assignment)), "step": .integer(Int64(step)),
                "loss": .number(loss), "tokens": .integer(Int64(tokens)), "seconds": .number(seconds),
            ])
    }
}

/// A request for part of a blob (a model for a worker, an adapter for a client).
public struct Fetch: WireMessage, Equatable {
    public static let type = MessageType.fetch
    public var blob: String
    public var offset: Int
    public var length: Int
    public init(blob: String, offset: Int, length: Int) {
        self.blob = blob
        self.offset = offset
        self.length = length
    }
    public init(validated m: Message) {
        self.init(blob: m.string("blob"), offset: m.int("offset"), length: m.int("length"))
    }
    public var message: Message {
        Message(
            .fetch, ["blob": .string(blob), "offset": .integer(Int64(offset)), "length": .integer(Int64(length))])
    }
}

/// A worker leaves.
public struct Bye: WireMessage, Equatable {
    public static let type = MessageType.bye
    public var reason: String
    public init(reason: String) { self.reason = reason }
    public init(validated m: Message) { reason = m.string("reason") }
    public var message: Message { Message(.bye, ["reason": .string(reason)]) }
}

/// Something went wrong: a refused request (to a client or worker), or a job a worker cannot take part in.
public struct ErrorReport: WireMessage, Equatable {
    public static let type = MessageType.error
    /// A word a program can act on (`hello_first`, `no_job`, `load`, `version`, …).
    public var code: String
    /// What happened, for a person (the `message` field).
    public var text: String
    /// The job it concerns, when it concerns one.
    public var job: String?
    public init(code: String, text: String, job: String? = nil) {
        self.code = code
        self.text = text
        self.job = job
    }
    public init(validated m: Message) {
        self.init(code: m.string("code"), text: m.string("message"), job: m.optionalString("job"))
    }
    public var message: Message {
        // At most 4000 bytes of text (the schema allows 4096), cut on a byte boundary.
        var o: JSONObject = [
            "code": .string(code), "message": .string(String(decoding: text.utf8.prefix(4000), as: UTF8.self)),
        ]
        o["job"] = job.map(JSONValue.string)
        return Message(.error, o)
    }
}

// MARK: Coordinator → worker

/// The coordinator's answer to `hello`: the worker's id and the liveness rules.
public struct Welcome: WireMessage, Equatable {
    public static let type = MessageType.welcome
    public var worker: String
    public var heartbeatMilliseconds: Int
    public var liveness: Int
    public init(worker: String, heartbeatMilliseconds: Int, liveness: Int) {
        self.worker = worker
        self.heartbeatMilliseconds = heartbeatMilliseconds
        self.liveness = liveness
    }
    public init(validated m: Message) {
        self.init(worker: m.string("worker"), heartbeatMilliseconds: m.int("heartbeat_ms"), liveness: m.int("liveness"))
    }
    public var message: Message {
        Message(
            .welcome,
            [
                "worker": .string(worker), "heartbeat_ms": .integer(Int64(heartbeatMilliseconds)),
                "liveness": .integer(Int64(liveness)),
            ])
    }
}

/// The running job: its settings (the job file's YAML), its model blob and its length.
public struct JobAnnouncement: WireMessage, Equatable {
    public static let type = MessageType.job
    public var job: String
    public var spec: String
    public var modelBlob: String
    public var modelBytes: Int
    public var mode: String
    /// Optimizer steps of the whole job (absent from coordinators before it was added: the spec's `steps`).
    public var totalSteps: Int?
    /// The spec's version (absent: 1). A worker that cannot read it says so with an `error`.
    public var specVersion: Int

    public init(
        job: String, spec: String, modelBlob: String, modelBytes: Int, mode: String, totalSteps: Int?,
        specVersion: Int = Wire.jobSpecVersion
    ) {
        self.job = job
        self.spec = spec
        self.modelBlob = modelBlob
        self.modelBytes = modelBytes
        self.mode = mode
        self.totalSteps = totalSteps
        self.specVersion = specVersion
    }

    public init(validated m: Message) {
        self.init(
            job: m.string("job"), spec: m.string("spec"), modelBlob: m.string("model_blob"),
            modelBytes: m.int("model_bytes"), mode: m.string("mode"), totalSteps: m.optionalInt("total_steps"),
            specVersion: m.optionalInt("spec_version") ?? 1)
    }

    public var message: Message {
        var o: JSONObject = [
            "job": .string(job), "spec": .string(spec), "model_blob": .string(modelBlob),
            "model_bytes": .integer(Int64(modelBytes)), "mode": .string(mode),
            "spec_version": .integer(Int64(specVersion)),
        ]
        o["total_steps"] = totalSteps.map { .integer(Int64($0)) }
        return Message(.job, o)
    }
}

/// The token rows of an assignment: ids, next-token targets, positions and document starts, `count × length` each.
public struct RowTensors: Sendable, Equatable {
    public var tokens: Tensor
    public var targets: Tensor
    public var positions: Tensor
    public var starts: Tensor

    public init(tokens: [Int32], targets: [Int32], positions: [Int32], starts: [Int32]) {
        self.tokens = Tensor(name: "tokens", ints: tokens)
        self.targets = Tensor(name: "targets", ints: targets)
        self.positions = Tensor(name: "positions", ints: positions)
        self.starts = Tensor(name: "starts", ints: starts)
    }

    init?(_ m: Message) {
        guard let t = m.tensor("tokens"), let g = m.tensor("targets"), let p = m.tensor("positions"),
            let s = m.tensor("starts")
        else { return nil }
        tokens = t
        targets = g
        positions = p
        starts = s
    }

    var tensors: [Tensor] { [tokens, targets, positions, starts] }

    /// The four as Int32 arrays when each is i32 with `elements` values; nil otherwise.
    public func ints(elements: Int) -> (tokens: [Int32], targets: [Int32], positions: [Int32], starts: [Int32])? {
        for t in tensors where t.dtype != .i32 || t.count != elements { return nil }
        return (tokens.ints(), targets.ints(), positions.ints(), starts.ints())
    }
}

/// Rows of a sync step to compute a gradient on (`assign`), or of an evaluation to score (`evaluate`), with the
/// current parameters.
public struct StepAssignment: WireMessage, Equatable {
    public static let type = MessageType.assign
    /// `evaluate` rather than `assign`.
    public var evaluation: Bool
    public var job: String
    public var assignment: Int
    public var step: Int
    public var rows: Int
    public var parameters: Tensor
    public var rowTensors: RowTensors

    public init(
        evaluation: Bool, job: String, assignment: Int, step: Int, rows: Int, parameters: Tensor,
        rowTensors: RowTensors
    ) {
        self.evaluation = evaluation
        self.job = job
        self.assignment = assignment
        self.step = step
        self.rows = rows
        self.parameters = parameters
        self.rowTensors = rowTensors
    }

    public init(validated m: Message) {
        self.init(
            evaluation: m.type == .evaluate, job: m.string("job"), assignment: m.int("assignment"),
            step: m.int("step"), rows: m.int("rows"), parameters: m.tensor("parameters")!, rowTensors: RowTensors(m)!)
    }

    public var message: Message {
        var p = parameters
        p.name = "parameters"
        return Message(
            evaluation ? .evaluate : .assign,
            [
                "job": .string(job), "assignment": .integer(Int64(assignment)), "step": .integer(Int64(step)),
                "rows": .integer(Int64(rows)),
            ], tensors: [p] + rowTensors.tensors)
    }
}

extension Message {
    /// An `assign` or `evaluate` message in typed form (one struct serves both types).
    public func decodeStepAssignment() throws(WireError) -> StepAssignment {
        guard type == .assign || type == .evaluate else {
            throw WireError(.schema, "a \(type) message where assign or evaluate was expected")
        }
        try type.schema.validate(self)
        return StepAssignment(validated: self)
    }
}

/// A round of local steps (diloco, federated): the global parameters, and for diloco the rows of every step.
public struct RoundAssignment: WireMessage, Equatable {
    public static let type = MessageType.roundAssign
    public var job: String
    public var assignment: Int
    public var round: Int
    /// The job's step at which the round starts (for the learning-rate schedule).
    public var firstStep: Int
    public var steps: Int
    public var rowsPerStep: Int
    /// f32, or bf16 when the job compresses.
    public var parameters: Tensor
    /// nil for federated jobs (workers use their own data).
    public var rowTensors: RowTensors?

    public init(
        job: String, assignment: Int, round: Int, firstStep: Int, steps: Int, rowsPerStep: Int, parameters: Tensor,
        rowTensors: RowTensors?
    ) {
        self.job = job
        self.assignment = assignment
        self.round = round
        self.firstStep = firstStep
        self.steps = steps
        self.rowsPerStep = rowsPerStep
        self.parameters = parameters
        self.rowTensors = rowTensors
    }

    public init(validated m: Message) {
        self.init(
            job: m.string("job"), assignment: m.int("assignment"), round: m.int("round"),
            firstStep: m.int("first_step"), steps: m.int("steps"), rowsPerStep: m.int("rows_per_step"),
            parameters: m.tensor("parameters")!, rowTensors: RowTensors(m))
    }

    public var message: Message {
        var p = parameters
        p.name = "parameters"
        return Message(
            .roundAssign,
            [
                "job": .string(job), "assignment": .integer(Int64(assignment)), "round": .integer(Int64(round)),
                "first_step": .integer(Int64(firstStep)), "steps": .integer(Int64(steps)),
                "rows_per_step": .integer(Int64(rowsPerStep)),
            ], tensors: [p] + (rowTensors?.tensors ?? []))
    }
}

/// An assignment given up on (its deadline passed), or with assignment 0 every assignment of the job (cancelled).
public struct Revoke: WireMessage, Equatable {
    public static let type = MessageType.revoke
    public var job: String
    public var assignment: Int
    public init(job: String, assignment: Int) {
        self.job = job
        self.assignment = assignment
    }
    public init(validated m: Message) { self.init(job: m.string("job"), assignment: m.int("assignment")) }
    public var message: Message {
        Message(.revoke, ["job": .string(job), "assignment": .integer(Int64(assignment))])
    }
}

/// Part of a blob.
public struct Chunk: WireMessage, Equatable {
    public static let type = MessageType.chunk
    public var blob: String
    public var offset: Int
    public var total: Int
    public var data: [UInt8]
    public init(blob: String, offset: Int, total: Int, data: [UInt8]) {
        self.blob = blob
        self.offset = offset
        self.total = total
        self.data = data
    }
    public init(validated m: Message) {
        self.init(blob: m.string("blob"), offset: m.int("offset"), total: m.int("total"), data: m.tensor("data")!.bytes)
    }
    public var message: Message {
        Message(
            .chunk, ["blob": .string(blob), "offset": .integer(Int64(offset)), "total": .integer(Int64(total))],
            tensors: [Tensor(name: "data", dtype: .u8, shape: [data.count], bytes: data)])
    }
}

// MARK: Enrolment

/// A new key, sent over a join token's one-time enrolment key.
public struct Enrol: WireMessage, Equatable {
    public static let type = MessageType.enrol
    public var publicKey: String
    public var role: String
    public var name: String
    public init(publicKey: String, role: String, name: String) {
        self.publicKey = publicKey
        self.role = role
        self.name = name
    }
    public init(validated m: Message) {
        self.init(publicKey: m.string("public_key"), role: m.string("role"), name: m.string("name"))
    }
    public var message: Message {
        Message(.enrol, ["public_key": .string(publicKey), "role": .string(role), "name": .string(name)])
    }
}

/// The key is enrolled.
public struct Enrolled: WireMessage, Equatable {
    public static let type = MessageType.enrolled
    public var id: String
    public init(id: String) { self.id = id }
    public init(validated m: Message) { id = m.string("id") }
    public var message: Message { Message(.enrolled, ["id": .string(id)]) }
}

// MARK: Clients

/// A job: its file (YAML), its training data, and optionally held-out data.
public struct JobSubmission: WireMessage, Equatable {
    public static let type = MessageType.submit
    public var spec: String
    public var dataName: String
    public var data: [UInt8]
    public var validationName: String?
    public var validation: [UInt8]?
    /// An evaluation job's adapters given as paths on the client: their files, as a safetensors file of u8 tensors
    /// named `N/FILE`, whose metadata `uploads` maps each path as the job file names it to N.
    public var adapters: [UInt8]?

    public init(
        spec: String, dataName: String, data: [UInt8], validationName: String? = nil, validation: [UInt8]? = nil,
        adapters: [UInt8]? = nil
    ) {
        self.spec = spec
        self.dataName = dataName
        self.data = data
        self.validationName = validationName
        self.validation = validation
        self.adapters = adapters
    }

    public init(validated m: Message) {
        self.init(
            spec: m.string("spec"), dataName: m.string("data_name"), data: m.tensor("data")!.bytes,
            validationName: m.optionalString("validation_name"), validation: m.tensor("validation")?.bytes,
            adapters: m.tensor("adapters")?.bytes)
    }

    public var message: Message {
        var o: JSONObject = ["spec": .string(spec), "data_name": .string(dataName)]
        o["validation_name"] = validationName.map(JSONValue.string)
        var tensors = [Tensor(name: "data", dtype: .u8, shape: [data.count], bytes: data)]
        if let validation {
            tensors.append(Tensor(name: "validation", dtype: .u8, shape: [validation.count], bytes: validation))
        }
        if let adapters {
            tensors.append(Tensor(name: "adapters", dtype: .u8, shape: [adapters.count], bytes: adapters))
        }
        return Message(.submit, o, tensors: tensors)
    }
}

/// A request naming one job: `cancel`, `pull`, and the replies `submitted` and `cancelled`.
public struct JobRequest: Sendable, Equatable {
    public var type: MessageType
    public var job: String
    public init(_ type: MessageType, job: String) {
        self.type = type
        self.job = job
    }
    public var message: Message { Message(type, ["job": .string(job)]) }
}

extension Message {
    /// A `cancel`, `pull`, `submitted` or `cancelled` message in typed form.
    public func decodeJobRequest() throws(WireError) -> JobRequest {
        guard [.cancel, .pull, .submitted, .cancelled].contains(type) else {
            throw WireError(.schema, "a \(type) message where a job request was expected")
        }
        try type.schema.validate(self)
        return JobRequest(type, job: string("job"))
    }
}

/// Every job, or one job's detail (its steps after `after`, or the latest).
public struct StatusRequest: WireMessage, Equatable {
    public static let type = MessageType.status
    public var job: String?
    public var after: Int?
    public init(job: String? = nil, after: Int? = nil) {
        self.job = job
        self.after = after
    }
    public init(validated m: Message) { self.init(job: m.optionalString("job"), after: m.optionalInt("after")) }
    public var message: Message {
        var o = JSONObject()
        o["job"] = job.map(JSONValue.string)
        o["after"] = after.map { .integer(Int64($0)) }
        return Message(.status, o)
    }
}

/// A finished job's files, as blobs to fetch.
public struct PullReply: WireMessage, Equatable {
    public static let type = MessageType.pullReply

    public struct File: Sendable, Equatable {
        public var name: String
        public var blob: String
        public var bytes: Int
        public init(name: String, blob: String, bytes: Int) {
            self.name = name
            self.blob = blob
            self.bytes = bytes
        }
    }

    public var job: String
    /// Files with a name, a hash and a size; entries lacking one are left out.
    public var files: [File]

    public init(job: String, files: [File]) {
        self.job = job
        self.files = files
    }

    public init(validated m: Message) {
        job = m.string("job")
        files = (m.metadata["files"]?.arrayValue ?? []).compactMap { v in
            guard let o = v.objectValue, let name = o["name"]?.stringValue, let blob = o["blob"]?.stringValue,
                let bytes = o["bytes"]?.intValue
            else { return nil }
            return File(name: name, blob: blob, bytes: bytes)
        }
    }

    public var message: Message {
        Message(
            .pullReply,
            [
                "job": .string(job),
                "files": .array(
                    files.map {
                        ["name": .string($0.name), "blob": .string($0.blob), "bytes": .integer(Int64($0.bytes))]
                    }),
            ])
    }
}
