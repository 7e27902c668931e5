// The typed form of every message: each struct goes to frames and back unchanged through the schema check, a message
// of another type or with a field out of bounds does not decode, and the status bodies read back what they wrote.

import Support
import Testing
import Wire

@Suite struct TypedMessageTests {
    static let rows = RowTensors(tokens: [1, 2], targets: [2, -1], positions: [0, 1], starts: [0, 0])
    static let parameters = Tensor(name: "parameters", floats: [0.5, -1])

    /// Encodes, decodes from frames, and reads the typed form back.
    static func roundTrip<T: WireMessage & Equatable>(_ value: T) throws -> T {
        try Message.decode(value.message.encode()).decode(as: T.self)
    }

    /// A publish carries a PEFT pair, one GGUF file or nothing (a job's adapter); other files do not decode.
    @Test func publishCarriesOnlyAdapterFiles() throws {
        let odd = Publish(name: "x", description: "", files: [("notes.txt", [1])])
        #expect(throws: WireError.self) { try Message.decode(odd.message.encode()) }
        let named = Publish(name: String(repeating: "a", count: 101), description: "")
        #expect(throws: WireError.self) { try Message.decode(named.message.encode()) }
        let entry = RegistryEntry(
            name: "x", version: 2, sha256: "ab", baseHash: "cd", baseName: "m.gguf", description: "d", publisher: "p",
            created: 1, format: "peft", files: [.init(name: "adapter_config.json", blob: "ef", bytes: 3)])
        #expect(try RegistryEntry(json: entry.json) == entry)
    }

    @Test func everyMessageRoundTripsThroughFrames() throws {
        let hello = Hello(
            name: "w1", cores: 8, memory: 1 << 34, gflops: 120.5, threads: 8, localExamples: 40, host: "h")
        #expect(try Self.roundTrip(hello) == hello)
        let bare = Hello(name: "w2", cores: 1, memory: 0, gflops: 0, threads: 1)
        #expect(try Self.roundTrip(bare) == bare)
        let values: [any WireMessage] = [
            Ready(job: "job-1"),
            StepResult(
                job: "job-1", assignment: 7, step: 3, loss: 2.5, tokens: 30, seconds: 0.25,
                gradient: Tensor(name: "gradient", floats: [1, 2])),
            RoundResult(
                job: "job-1", assignment: 8, round: 2, loss: 1, tokens: 4, seconds: 3,
                delta: [Tensor(name: "delta", floats: [0.5])]),
            EvalResult(job: "job-1", assignment: 9, step: 4, loss: 7, tokens: 12, seconds: 1),
            Fetch(blob: "ab", offset: 4096, length: 100), Bye(reason: "stopped"),
            ErrorReport(code: "load", text: "no memory", job: "job-2"), ErrorReport(code: "no_job", text: "no job"),
            Welcome(worker: "abc", heartbeatMilliseconds: 1000, liveness: 5),
            JobAnnouncement(
                job: "job-1", spec: "steps: 3\n", modelBlob: "ff", modelBytes: 10, mode: "sync", totalSteps: 3),
            RoundAssignment(
                job: "job-1", assignment: 3, round: 1, firstStep: 0, steps: 1, rowsPerStep: 1,
                parameters: Self.parameters, rowTensors: Self.rows),
            RoundAssignment(
                job: "job-1", assignment: 3, round: 1, firstStep: 0, steps: 1, rowsPerStep: 1,
                parameters: Self.parameters, rowTensors: nil),
            Revoke(job: "job-1", assignment: 0), Chunk(blob: "ab", offset: 0, total: 3, data: [1, 2, 3]),
            Enrol(publicKey: "k", role: "worker", name: "w"), Enrolled(id: "k"),
            JobSubmission(spec: "steps: 1\n", dataName: "d.jsonl", data: [1], validationName: "v", validation: [2]),
            JobSubmission(spec: "steps: 1\n", dataName: "d.jsonl", data: [1]),
            JobSubmission(spec: "mode: evaluate\n", dataName: "d.jsonl", data: [1], adapters: [4, 5]),
            StatusRequest(job: "job-1", after: 5), StatusRequest(),
            PullReply(job: "job-1", files: [.init(name: "adapter.gguf", blob: "ab", bytes: 9)]),
            Publish(
                name: "alice/capitals", description: "d", base: "smollm2-135m",
                files: [("adapter_config.json", [1]), ("adapter_model.safetensors", [2, 3])]),
            Publish(name: "x", description: "", job: "job-2"),
            Publish(name: "x", description: "", files: [("adapter.gguf", [9])]),
            Published(name: "x", version: 3, sha256: "ab", created: false), AdapterListRequest(base: "ab12cd34"),
            AdapterListRequest(), Resolve("x@2"),
        ]
        for value in values {
            let back = try Message.decode(value.message.encode())
            #expect(back.type == type(of: value).type)
            #expect(back == value.message, "\(type(of: value)) changed on the way")
        }
        for evaluation in [false, true] {
            let a = StepAssignment(
                evaluation: evaluation, job: "job-1", assignment: 5, step: 2, rows: 1, parameters: Self.parameters,
                rowTensors: Self.rows)
            #expect(try Message.decode(a.message.encode()).decodeStepAssignment() == a)
        }
        for type in [MessageType.cancel, .pull, .submitted, .cancelled] {
            let r = JobRequest(type, job: "job-4")
            #expect(try Message.decode(r.message.encode()).decodeJobRequest() == r)
        }
    }

    /// A message of another type, or one built by hand with a field out of bounds, is refused by `decode(as:)`.
    @Test func decodingChecksTheTypeAndTheSchema() throws {
        #expect(throws: WireError.self) { try Ready(job: "job-1").message.decode(as: Bye.self) }
        let negative = Message(.fetch, ["blob": "ab", "offset": -1, "length": 10])
        #expect(throws: WireError.self) { try negative.decode(as: Fetch.self) }
        let missing = Message(.welcome, ["worker": "abc"])
        #expect(throws: WireError.self) { try missing.decode(as: Welcome.self) }
        #expect(throws: WireError.self) { try Message(.status).decodeJobRequest() }
        // An error's text is cut to what the schema allows, on a byte boundary, so a long one still arrives.
        let long = ErrorReport(code: "load", text: String(repeating: "é", count: 3000), job: "job-1")
        #expect(try Message.decode(long.message.encode()).decode(as: ErrorReport.self).text.utf8.count <= 4096)
        // A row tensor of the wrong type or length is caught by the receiver's check.
        #expect(Self.rows.ints(elements: 2) != nil && Self.rows.ints(elements: 3) == nil)
    }

    /// A job announcement from a coordinator before `total_steps` and `spec_version` reads as version 1 without a
    /// step count.
    @Test func anOlderAnnouncementReadsWithDefaults() throws {
        let old = Message(
            .job, ["job": "job-1", "spec": "steps: 2\n", "model_blob": "ff", "model_bytes": 1, "mode": "sync"])
        let a = try old.decode(as: JobAnnouncement.self)
        #expect(a.totalSteps == nil && a.specVersion == 1)
    }

    /// The status body reads back what it wrote, settings in their order, and tolerates what an older coordinator
    /// leaves out.
    @Test func statusBodiesReadBackWhatTheyWrite() throws {
        var job = JobStatus(id: "job-1", state: "running", mode: "sync", step: 3, totalSteps: 10, data: "d.jsonl")
        job.loss = 2.5
        job.etaSeconds = 30
        job.steps = [
            StepStatus(
                step: 3, loss: 2.5, tokens: 40, seconds: 1.5, bytes: 1000, computeSeconds: 1, shares: ["a": 2, "b": 2],
                workers: ["a": .init(tokens: 20, seconds: 1), "b": .init(tokens: 20, seconds: 0.9)])
        ]
        job.evals = [EvalStatus(step: 2, loss: 3, tokens: 9)]
        job.settings = [("steps", "10"), ("lora_r", "8")]
        job.lineage = ["name": "job-1"]
        job.workerNames = ["a": "w1", "b": "w2"]
        var worker = WorkerStatus(
            id: "a", name: "w1", cores: 2, memory: 1 << 30, gflops: 50, rowsDone: 8, connected: true,
            state: "computing")
        worker.transfer = .init(blob: "ff", received: 10, total: 20)
        worker.rowsPerSecond = 4
        var health = CoordinatorHealth(heartbeatMilliseconds: 1000)
        health.gapP99 = 1200
        health.messagesRejected = 3
        let body = StatusBody(jobs: [job], workers: [worker], coordinator: health)
        let back = try StatusBody(json: try JSONValue.parse(body.json.serialized()))
        #expect(back == body)
        #expect(back.jobs[0].settings?.map(\.key) == ["steps", "lora_r"])
        let sparse = try StatusBody(json: ["jobs": [["id": "job-2", "state": "done"]]])
        #expect(sparse.jobs[0].isFinished && sparse.workers.isEmpty && sparse.coordinator == nil)
        #expect(throws: StatusError.self) { try StatusBody(json: ["jobs": [["state": "done"]]]) }
    }
}
