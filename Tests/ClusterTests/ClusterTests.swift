// The cluster with real processes and real sockets on loopback: sync equivalence with one machine, a worker
// killed mid-job, a worker joining mid-job, the coordinator killed and restarted, and the security perimeter.
// Serialized: each test runs a coordinator and workers that share this machine's cores.

import Coordinator
import Foundation
import ModelFormats
import TestSupport
import Testing
import Transport
import Wire

@Suite(.serialized) struct ClusterTests {
    /// sync: 2 workers × 2 rows ≡ `cairn train` with batch 4 (the same global batch): the loss curves agree to
    /// floating-point reordering, and some step's rows came from both workers.
    @Test func syncWithTwoWorkersReproducesSingleMachineTraining() throws {
        let c = ClusterHarness("sync")
        try c.startCluster(workers: ["w1", "w2"])
        let held = try c.writeHeldOut(lines: ["the mat sat on the cat", "a park in the dog", "three two one"])
        let job = try c.writeJob(steps: 10, extra: "validation_data: \(held)\neval_every: 4")
        let id = try c.submit(job)
        let final = c.waitForJob(id)
        #expect(final?["state"] == "done", "\(c.logs)")
        let curve = ClusterHarness.losses(final)
        #expect(curve.map(\.step) == Array(1...10), "every step journaled once, in order")
        let reference = try c.reference(job)
        let diff = maxRelativeDifference(curve.map(\.loss), reference.steps)
        #expect(diff != nil && diff! < 1e-4, "cluster \(curve.map(\.loss)) vs one machine \(reference.steps)")
        // The held-out loss, split across the workers like a step, after the same steps as on one machine.
        let evals = ClusterHarness.evals(final)
        #expect(evals.map(\.step) == [4, 8, 10] && reference.evals.map(\.step) == [4, 8, 10])
        let evalDiff = maxRelativeDifference(evals.map(\.loss), reference.evals.map(\.loss))
        #expect(evalDiff != nil && evalDiff! < 1e-4, "cluster \(evals) vs one machine \(reference.evals)")
        // The split follows the workers' measured speeds (2 + 2, 3 + 1, …, with the load on this machine); what
        // must hold is that some step's rows came from both.
        let shared = (final?["steps"]?.arrayValue ?? []).compactMap { $0.objectValue?["shares"]?.objectValue }
            .filter { shares in
                shares.count == 2 && shares.members.allSatisfy { ($0.value.intValue ?? 0) > 0 }
                    && shares.members.reduce(0) { $0 + ($1.value.intValue ?? 0) } == 4
            }
        #expect(!shared.isEmpty, "some step was split across both workers: \(c.logs)")
        // The adapter comes back in both formats.
        let peft = c.dir.appendingPathComponent("pulled").path
        #expect(try c.cairn("pull", id, "-o", peft).status == 0)
        #expect(FileManager.default.fileExists(atPath: peft + "/adapter_model.safetensors"))
        let gguf = c.dir.appendingPathComponent("pulled.gguf").path
        #expect(try c.cairn("pull", id, "--format", "gguf", "-o", gguf).status == 0)
        let inspected = try runCommand(cairnExecutable, ["inspect", gguf])
        #expect(inspected.status == 0 && inspected.stdout.contains("lora"), "\(inspected.stdout)")
    }

    /// `base_precision: q` travels with the job: both workers keep the Q8_0 base quantised and the curve is
    /// one machine's (cairn train on the same job file, also quantised).
    @Test func workersKeepAQuantisedBaseWhenTheJobAsks() throws {
        let c = ClusterHarness("quantised")
        try c.startCluster(workers: ["w1", "w2"])
        let job = try c.writeJob(
            data: "data", job: "job", lines: ["the cat sat on the mat", "a dog ran in the park", "one two three"],
            steps: 4, batch: 4, seqLen: 24, learningRate: 0.01, model: Fixtures.path("tiny-llama/a-q8_0.gguf"),
            extra: "base_precision: q")
        let id = try c.submit(job)
        let final = c.waitForJob(id)
        #expect(final?["state"] == "done", "\(c.logs)")
        #expect(c.logs.components(separatedBy: "base kept quantised").count - 1 >= 2, "both workers: \(c.logs)")
        let curve = ClusterHarness.losses(final).map(\.loss)
        let reference = try c.reference(job).steps
        let diff = maxRelativeDifference(curve, reference)
        #expect(diff != nil && diff! < 1e-4, "cluster \(curve) vs one machine \(reference)")
    }

    /// A family other than llama (a tiny Qwen3: q/k norms, a head size apart from width/heads, untied output) in
    /// sync mode across two workers trains exactly as one machine does.
    @Test func syncOnAQwen3ModelReproducesSingleMachineTraining() throws {
        let c = ClusterHarness("qwen3")
        try c.startCluster(workers: ["w1", "w2"])
        let job = try c.writeJob(
            data: "data", job: "job", lines: ["the cat sat on the mat", "a dog ran in the park", "one two three"],
            steps: 4, batch: 4, seqLen: 24, learningRate: 0.01, model: Fixtures.path("families/qwen3/model.gguf"))
        let id = try c.submit(job)
        let final = c.waitForJob(id)
        #expect(final?["state"] == "done", "\(c.logs)")
        let curve = ClusterHarness.losses(final).map(\.loss)
        let reference = try c.reference(job).steps
        let diff = maxRelativeDifference(curve, reference)
        #expect(curve.count == 4 && diff != nil && diff! < 1e-4, "cluster \(curve) vs one machine \(reference)")
    }

    /// A worker SIGKILLed mid-job: its rows go to the other worker, no step is lost or counted twice, and since
    /// sync arithmetic does not depend on who computed which rows, the curve still matches one machine's.
    @Test func aWorkerKilledMidJobLosesNothing() throws {
        let c = ClusterHarness("kill-worker")
        try c.startCluster(workers: ["w1", "w2"])
        let steps = 40
        let job = try c.writeJob(steps: steps, batch: 8, seqLen: 48, learningRate: 0.005)
        let id = try c.submit(job)
        #expect(c.waitUntil(120) { (c.status(id)?["step"]?.intValue ?? 0) >= 5 }, "\(c.logs)")
        c.killWorker("w2")
        let killedAt = c.status(id)?["step"]?.intValue ?? 0
        let final = c.waitForJob(id)
        #expect(final?["state"] == "done", "\(c.logs)")
        #expect(killedAt < steps, "the worker died before the job ended (at step \(killedAt))")
        let curve = ClusterHarness.losses(final)
        #expect(curve.map(\.step) == Array(1...steps), "exactly one journaled step per step")
        let reference = try c.referenceLosses(job)
        let diff = maxRelativeDifference(curve.map(\.loss), reference)
        #expect(diff != nil && diff! < 1e-4, "max relative difference \(String(describing: diff))")
        let departure = c.worker("w2")?["departure"]?.stringValue
        #expect(
            ["unreachable", "silent"].contains(departure),
            "the coordinator noticed the loss: \(String(describing: departure))")
        let lastShares = (final?["steps"]?.arrayValue?.last?.objectValue?["shares"]?.objectValue?.keys) ?? []
        #expect(lastShares.count == 1, "the last steps ran on the surviving worker alone: \(lastShares)")
    }

    /// SIGTERM: the worker finishes the assignment in hand, returns it and says bye; the coordinator hears the
    /// bye (no silence timeout) and the job goes on.
    @Test func aWorkerStoppedWithSIGTERMHandsBackAndLeaves() throws {
        let c = ClusterHarness("sigterm")
        try c.startCluster(workers: ["w1", "w2"])
        let job = try c.writeJob(steps: 40, batch: 8, seqLen: 48, learningRate: 0.005)
        let id = try c.submit(job)
        #expect(c.waitUntil(120) { (c.status(id)?["step"]?.intValue ?? 0) >= 5 }, "\(c.logs)")
        c.killWorker("w2", signal: SIGTERM)
        #expect(c.workers["w2"]?.terminationStatus == 0, "w2 exited cleanly")
        // It said bye: the coordinator knew at once, without waiting out its silence.
        #expect(c.worker("w2")?["departure"] == "left", "\(c.logs)")
        #expect(c.coordinatorHealth()?["workers_declared_silent"] == 0)
        let final = c.waitForJob(id)
        #expect(final?["state"] == "done")
        #expect(ClusterHarness.losses(final).map(\.step) == Array(1...40))
    }

    /// A worker that joins mid-job with an empty cache receives the model (verified) and takes a share.
    @Test func aWorkerJoiningMidJobReceivesTheModelAndTakesAShare() throws {
        let c = ClusterHarness("join")
        try c.startCluster(workers: ["w1"])
        let job = try c.writeJob(steps: 120)
        let id = try c.submit(job)
        #expect(c.waitUntil(120) { (c.status(id)?["step"]?.intValue ?? 0) >= 3 }, "\(c.logs)")
        try c.startWorker("late")
        let final = c.waitForJob(id)
        #expect(final?["state"] == "done", "\(c.logs)")
        // The model arrived and was verified into the late worker's cache (the blob store keeps only verified blobs).
        let model = try FileHash.sha256(file: tinyModel)
        #expect(
            FileManager.default.fileExists(
                atPath: c.dir.appendingPathComponent("cache-late/blobs/sha256/\(model)").path),
            "\(c.logs)")
        let lateWorkerSteps = (final?["steps"]?.arrayValue ?? []).filter {
            ($0.objectValue?["shares"]?.objectValue?.count ?? 0) == 2
        }
        #expect(!lateWorkerSteps.isEmpty, "the late worker computed rows of later steps: \(c.logs)")
        #expect(ClusterHarness.losses(final).map(\.step) == Array(1...120))
    }

    /// Two workers on one machine sharing a cache fetch the model once: one fetches, the other waits for it or
    /// finds it there.
    @Test func workersSharingACacheFetchTheModelOnce() throws {
        let c = ClusterHarness("shared-cache")
        try c.startCluster(workers: ["w1", "w2"], cache: "shared")
        let id = try c.submit(try c.writeJob(steps: 4))
        #expect(c.waitForJob(id)?["state"] == "done", "\(c.logs)")
        // The coordinator served the model once, not once per worker (the count includes the chunk messages'
        // headers). Whether the other worker waited for it or found it already there depends on timing; both are
        // right.
        let size = try FileManager.default.attributesOfItem(atPath: tinyModel)[.size] as? Int ?? 0
        let served = c.coordinatorHealth()?["blob_bytes_sent"]?.intValue ?? -1
        #expect(
            size > 0 && served >= size && served < 2 * size, "served \(served) bytes of a \(size)-byte model: \(c.logs)"
        )
    }

    /// The coordinator SIGKILLed mid-job and restarted on the same state directory: the job resumes from its last
    /// journaled step, the workers come back by themselves, and the result equals an uninterrupted run. A second job
    /// runs on the pool at the same time (on the same base, so the workers compute both in shared passes); it too
    /// resumes and ends as its uninterrupted run does.
    @Test func aCoordinatorKilledAndRestartedResumesAndFinishesTheSame() throws {
        let c = ClusterHarness("restart")
        try c.startCluster(workers: ["w1", "w2"])
        let steps = 40
        let job = try c.writeJob(steps: steps, batch: 8, seqLen: 48, learningRate: 0.005)
        let other = try c.writeJob(
            data: "other", job: "other", lines: ["a quiet harbour", "boats at dawn", "gulls over the pier", "nets"],
            steps: 24, batch: 4, seqLen: 24, learningRate: 0.01, extra: "priority: 2")
        let id = try c.submit(job)
        let otherId = try c.submit(other)
        #expect(c.waitUntil(120) { (c.status(id)?["step"]?.intValue ?? 0) >= 5 }, "\(c.logs)")
        #expect((c.status(otherId)?["step"]?.intValue ?? 0) >= 1, "both jobs run at once: \(c.logs)")
        c.killCoordinator()
        try c.startCoordinator()
        // Before any new step, the restarted coordinator reports the journaled progress: it resumed, not restarted.
        #expect((c.status(id)?["step"]?.intValue ?? 0) >= 5, "it resumed from the journal")
        let otherFinal = c.waitForJob(otherId)
        #expect(otherFinal?["state"] == "done", "\(c.logs)")
        let otherCurve = ClusterHarness.losses(otherFinal)
        #expect(otherCurve.map(\.step) == Array(1...24))
        let otherDiff = maxRelativeDifference(otherCurve.map(\.loss), try c.referenceLosses(other))
        #expect(otherDiff != nil && otherDiff! < 1e-4, "the second job: \(String(describing: otherDiff))")
        let final = c.waitForJob(id)
        #expect(final?["state"] == "done", "\(c.logs)")
        let curve = ClusterHarness.losses(final)
        #expect(curve.map(\.step) == Array(1...steps))
        let reference = try c.referenceLosses(job)
        let diff = maxRelativeDifference(curve.map(\.loss), reference)
        #expect(diff != nil && diff! < 1e-4, "max relative difference \(String(describing: diff))")
        // The final adapter equals the single-machine run's.
        let pulled = c.dir.appendingPathComponent("pulled").path
        #expect(try c.cairn("pull", id, "-o", pulled).status == 0)
        let a = try SafetensorsFile(path: pulled + "/adapter_model.safetensors")
        let b = try SafetensorsFile(path: c.dir.appendingPathComponent("reference-run/adapter_model.safetensors").path)
        #expect(a.tensors.map(\.name).sorted() == b.tensors.map(\.name).sorted())
        var clusterParameters: [Float] = []
        var referenceParameters: [Float] = []
        for t in a.tensors {
            guard let x = a.storedTensor(named: t.name)?.floats(), let y = b.storedTensor(named: t.name)?.floats()
            else {
                Issue.record("tensor \(t.name) missing")
                continue
            }
            clusterParameters += x
            referenceParameters += y
        }
        let relative = relativeL2(clusterParameters, referenceParameters)
        #expect(relative < 1e-4, "‖cluster − one machine‖ / ‖one machine‖ = \(relative)")
    }

    /// `cairn coordinator export` writes a job's adapter from the state directory alone: for a cancelled job the
    /// adapter of its last journaled step (the lineage says how many steps), with the coordinator stopped; for a
    /// finished job the very adapter `cairn pull` gives. Wrong job ids and directories are named.
    @Test func exportWritesTheLastJournaledStepsAdapterFromTheStateDirectory() throws {
        let c = ClusterHarness("export")
        try c.startCluster(workers: ["w1"])
        let long = try c.writeJob(
            data: "long", job: "long", lines: ["stone on stone", "a cairn of pebbles"],
            steps: 400, batch: 2, seqLen: 16, learningRate: 0.01)
        let cancelled = try c.submit(long)
        #expect(c.waitUntil(120) { (c.status(cancelled)?["step"]?.intValue ?? 0) >= 3 }, "\(c.logs)")
        #expect(try c.cairn("cancel", cancelled).status == 0)
        let short = try c.writeJob(
            data: "short", job: "short", lines: ["the river runs", "north south east west"],
            steps: 4, batch: 2, seqLen: 16, learningRate: 0.01)
        let done = try c.submit(short)
        #expect(c.waitForJob(done)?["state"] == "done", "\(c.logs)")
        let pulled = c.dir.appendingPathComponent("pulled").path
        #expect(try c.cairn("pull", done, "-o", pulled).status == 0)
        let journaled = c.status(cancelled)?["step"]?.intValue ?? -1
        c.killCoordinator()

        func export(_ arguments: String...) throws -> CommandResult {
            try runCommand(cairnExecutable, ["coordinator", "export", "--state", c.state] + arguments)
        }
        func lineageSteps(_ adapter: String) throws -> Int? {
            let r = try runCommand(cairnExecutable, ["lineage", adapter, "--model", tinyModel, "--json"])
            return (try? JSONValue.parse(r.stdout))?.objectValue?["steps"]?.intValue
        }
        let partial = c.dir.appendingPathComponent("partial").path
        let r = try export(cancelled, "-o", partial)
        #expect(r.status == 0 && r.stderr.contains("step \(journaled) of 400"), "\(r.stderr)")
        #expect(journaled >= 3 && journaled < 400)
        #expect(try lineageSteps(partial) == journaled, "the lineage records the journaled step")
        let gguf = c.dir.appendingPathComponent("partial.gguf").path
        #expect(try export(cancelled, "--format", "gguf", "-o", gguf).status == 0)
        #expect(try lineageSteps(gguf) == journaled)

        // A finished job: the same bytes as the coordinator's own adapter.
        let exported = c.dir.appendingPathComponent("exported").path
        #expect(try export(done, "-o", exported).status == 0)
        let a = try Data(contentsOf: URL(fileURLWithPath: exported + "/adapter_model.safetensors"))
        let b = try Data(contentsOf: URL(fileURLWithPath: pulled + "/adapter_model.safetensors"))
        #expect(a == b, "export and pull of a finished job give the same adapter")
        // Again over the same output: replaced whole.
        #expect(try export(done, "-o", exported).status == 0)
        #expect(try Data(contentsOf: URL(fileURLWithPath: exported + "/adapter_model.safetensors")) == b)

        let noJob = try export("job-99", "-o", c.dir.appendingPathComponent("x").path)
        #expect(noJob.status != 0 && noJob.stderr.contains("no job job-99"), "\(noJob.stderr)")
        let empty = c.dir.appendingPathComponent("not-a-state").path
        let notState = try runCommand(
            cairnExecutable, ["coordinator", "export", "--state", empty, done, "-o", empty + "/out"])
        #expect(notState.status != 0 && notState.stderr.contains("not a coordinator's state"), "\(notState.stderr)")
        #expect(!FileManager.default.fileExists(atPath: empty), "a wrong --state creates nothing")
    }

    /// A coordinator that dies right after journaling a step, before evaluating after it, evaluates after the restart:
    /// every evaluation is journaled once, as on one machine.
    @Test func anEvaluationCutShortByACrashRunsAfterTheRestart() throws {
        let c = ClusterHarness("eval-crash")
        try c.startCoordinator(environment: ["CAIRN_CRASH_AT": "cleanup:6"])
        try c.startWorker("w1")
        let held = try c.writeHeldOut(lines: ["the mat sat on the cat", "three two one"])
        let job = try c.writeJob(steps: 12, extra: "validation_data: \(held)\neval_every: 6")
        let id = try c.submit(job)
        #expect(c.waitUntil(120) { c.coordinator?.isRunning == false }, "the probe killed it: \(c.logs)")
        try c.startCoordinator()
        let final = c.waitForJob(id)
        #expect(final?["state"] == "done", "\(c.logs)")
        let evals = ClusterHarness.evals(final)
        let reference = try c.reference(job)
        #expect(evals.map(\.step) == [6, 12], "\(evals)")
        let diff = maxRelativeDifference(evals.map(\.loss), reference.evals.map(\.loss))
        #expect(diff != nil && diff! < 1e-4, "cluster \(evals) vs one machine \(reference.evals)")
    }

    /// Only enrolled keys get in; a used token cannot be used again; garbage and oversize frames from an
    /// enrolled peer are dropped while the coordinator keeps serving.
    @Test func unenrolledKeysAreRefusedAndBadFramesAreDropped() throws {
        let c = ClusterHarness("security")
        try c.startCoordinator()
        let local = try Credentials.load(from: c.state + "/client.json")
        // A client with a key of its own that was never enrolled.
        let stranger = Credentials(endpoint: c.endpoint, serverKey: local.serverKey, keys: try CurveKeyPair.generate())
        let strangerPath = c.dir.appendingPathComponent("stranger.json").path
        try stranger.save(to: strangerPath)
        let refused = try runCommand(cairnExecutable, ["status", "--credentials", strangerPath])
        #expect(refused.status != 0 && refused.stderr.contains("refused this key"), "\(refused.stderr)")
        let submit = try runCommand(
            cairnExecutable, ["submit", "--credentials", strangerPath, try c.writeJob(steps: 1)])
        #expect(submit.status != 0)
        #expect(try c.cairn("status", "--json").stdout.contains("\"jobs\":[]"), "nothing was submitted")
        // A worker with that key cannot join either.
        let worker = try runCommand(
            cairnExecutable,
            ["worker", "join", c.endpoint, "--credentials", strangerPath, "--cache", c.dir.path + "/x"])
        #expect(worker.status != 0 && worker.stderr.contains("refused"), "\(worker.stderr)")
        // A token enrols once.
        let token = try c.token()
        let first = try runCommand(
            cairnExecutable,
            ["client", "join", c.endpoint, "--token", token, "--credentials", c.dir.path + "/ok.json"])
        #expect(first.status == 0, "\(first.stderr)")
        let again = try runCommand(
            cairnExecutable,
            ["client", "join", c.endpoint, "--token", token, "--credentials", c.dir.path + "/again.json"])
        #expect(again.status != 0, "a used token is refused")

        // An enrolled peer sending garbage: every bad message is dropped and logged, nothing crashes.
        let context = Context()
        let s = try Socket(context, .dealer)
        try s.makeCurveClient(local.keys!, serverKey: local.serverKey!)
        try s.connect(c.endpoint)
        try s.send([[1, 2, 3]])
        try s.send([[0x43, 0x52, 9, 1], Array("{}".utf8)])
        try s.send([[0x43, 0x52, Wire.version, 250], Array("{}".utf8)])
        try s.send([
            [0x43, 0x52, Wire.version, MessageType.status.rawValue],
            [UInt8](repeating: 32, count: Wire.maxMetadataBytes + 10),
        ])
        try s.send(
            Message(
                .submit, ["spec": "x", "data_name": "d"],
                tensors: [Tensor(name: "data", dtype: .u8, shape: [4], bytes: [1])]
            )
            .encode().map { $0 })
        var bogus = Message(
            .submit, ["spec": "x", "data_name": "d"],
            tensors: [Tensor(name: "data", dtype: .u8, shape: [1], bytes: [1])]
        ).encode()
        bogus[2] = [1, 2, 3, 4, 5]
        try s.send(bogus)
        try s.send(Message(.hello, ["name": "sneaky", "cores": 1, "memory": 1, "gflops": 1, "threads": 1]).encode())
        #expect(
            c.waitUntil(20) { (c.coordinatorHealth()?["messages_rejected"]?.intValue ?? 0) >= 7 },
            "\(c.log("coordinator.log"))")
        // Raw bytes that are not ZMTP at all, straight to the TCP port.
        sendRawBytes(to: c.endpoint, [UInt8](repeating: 0xFF, count: 4096))
        let status = try c.cairn("status", "--json")
        #expect(status.status == 0, "the coordinator still serves: \(status.stderr)")
        #expect(c.coordinator?.isRunning == true)
        #expect(c.connectedWorkers().isEmpty, "a client key cannot register as a worker")
        s.close()
    }
}

/// Writes bytes to a TCP endpoint tcp://HOST:PORT and closes.
func sendRawBytes(to endpoint: String, _ bytes: [UInt8]) {
    let parts = endpoint.dropFirst("tcp://".count).split(separator: ":")
    guard parts.count == 2, let port = UInt16(parts[1]) else { return }
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = inet_addr(String(parts[0]))
    let ok = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard ok == 0 else { return }
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

@Suite(.serialized) struct RoundModeTests {
    /// diloco: rounds of local steps from the global adapter; every round journaled once, the loss falls, and
    /// what crosses the wire per local step is a fraction of sync's.
    @Test func dilocoTrainsInRoundsAndSendsLessThanSync() throws {
        let c = ClusterHarness("diloco")
        try c.startCluster(workers: ["w1", "w2"])
        let dilocoJob = try c.writeJob(
            steps: 32, batch: 2, extra: "mode: diloco\ninner_steps: 8\nvalidation_split: 0.2\neval_every: 16")
        let id = try c.submit(dilocoJob)
        let final = c.waitForJob(id)
        #expect(final?["state"] == "done", "\(c.logs)")
        let rounds = (final?["steps"]?.arrayValue ?? []).compactMap(\.objectValue)
        #expect(rounds.compactMap { $0["step"]?.intValue } == [1, 2, 3, 4], "four rounds of eight local steps")
        let losses = rounds.compactMap { $0["loss"]?.doubleValue }
        #expect(losses.count == 4 && losses.last! < losses.first!, "the loss fell over the rounds: \(losses)")
        #expect(rounds.contains { ($0["shares"]?.objectValue?.count ?? 0) == 2 }, "both workers took part")
        // Held out every 16 local steps: evaluated after rounds 2 and 4 (the tiny model memorises its eight lines, so
        // the held-out loss need not fall; the sync tests compare it with one machine's).
        let evals = ClusterHarness.evals(final)
        #expect(evals.map(\.step) == [2, 4] && evals.allSatisfy { $0.loss.isFinite && $0.loss > 0 }, "\(evals)")
        // The same data and total batch in sync mode, for the bytes per local step.
        let syncJob = try c.writeJob(steps: 8, batch: 4)
        let syncId = try c.submit(syncJob)
        let sync = c.waitForJob(syncId)
        #expect(sync?["state"] == "done")
        let syncBytes = (sync?["steps"]?.arrayValue ?? []).compactMap { $0.objectValue?["bytes"]?.intValue }
        let dilocoBytes = rounds.compactMap { $0["bytes"]?.intValue }
        let perSyncStep = Double(syncBytes.reduce(0, +)) / Double(max(1, syncBytes.count))
        let perDilocoStep = Double(dilocoBytes.reduce(0, +)) / Double(max(1, dilocoBytes.count * 8))
        #expect(perDilocoStep * 4 < perSyncStep, "diloco \(perDilocoStep) B vs sync \(perSyncStep) B per step")
        // The adapter is a normal adapter.
        let out = c.dir.appendingPathComponent("diloco.gguf").path
        #expect(try c.cairn("pull", id, "--format", "gguf", "-o", out).status == 0)
    }

    /// A robust diloco job (median, every update clipped, updates scored on held-out data): `cairn status JOB`
    /// names each round's clipped (and any left-out) participant, and the report carries the same facts.
    @Test func clippedAndLeftOutParticipantsAreShownByStatusAndTheReport() throws {
        let c = ClusterHarness("robust")
        try c.startCluster(workers: ["w1", "w2"])
        let held = try c.writeHeldOut(lines: ["the mat sat on the cat", "three two one"])
        let job = try c.writeJob(
            steps: 8, batch: 2,
            extra: "mode: diloco\ninner_steps: 4\nvalidation_data: \(held)\naggregate: median\n"
                + "clip_update_norm: 0.000001\nscore_updates: true")
        let id = try c.submit(job)
        let final = c.waitForJob(id)
        #expect(final?["state"] == "done", "\(c.logs)")
        let status = try c.cairn("status", id)
        #expect(status.status == 0, "\(status.stderr)")
        let lines = status.stdout.split(separator: "\n").filter { $0.contains("update clipped by") }
        let participants = (final?["steps"]?.arrayValue ?? []).map {
            $0.objectValue?["workers"]?.objectValue?.members.count ?? 0
        }
        #expect(lines.count == participants.reduce(0, +) && !lines.isEmpty, "\(status.stdout)")
        #expect(lines.allSatisfy { $0.contains("round 1: w") || $0.contains("round 2: w") }, "\(status.stdout)")
        // A sync job refuses the round-only settings, saying why.
        let sync = try c.writeJob(
            data: "sync", job: "sync", lines: ["one two three"], steps: 1, batch: 1, seqLen: 8, learningRate: 0.01,
            extra: "aggregate: median")
        let refused = try c.cairn("submit", sync)
        #expect(refused.status != 0 && refused.stderr.contains("diloco and federated"), "\(refused.stderr)")
        let report = c.dir.appendingPathComponent("robust.html").path
        #expect(try c.cairn("report", id, "-o", report).status == 0)
        let html = (try? String(contentsOfFile: report, encoding: .utf8)) ?? ""
        #expect(html.contains("\"clipped_by\"") && html.contains("participantNotes"))
    }

    /// federated: each worker trains on its own file, which never reaches the coordinator.
    @Test func federatedWorkersKeepTheirDataAndBothContribute() throws {
        let c = ClusterHarness("federated")
        try c.startCoordinator()
        var files: [String] = []
        for (name, lines) in [("a", ["alpha beta gamma", "one two three"]), ("b", ["red green blue", "north south"])] {
            let path = c.dir.appendingPathComponent("private-\(name).jsonl").path
            try Data(lines.map { JSONValue.object(["text": .string($0)]).serialized() + "\n" }.joined().utf8).write(
                to: URL(fileURLWithPath: path))
            files.append(path)
        }
        for (i, f) in files.enumerated() { try c.startWorker("w\(i + 1)", data: f) }
        #expect(c.waitUntil(60) { c.connectedWorkers().count == 2 })
        let job = c.dir.appendingPathComponent("fed.yaml").path
        try Data(
            "model: \(tinyModel)\nmode: federated\nrank: 4\nsteps: 8\ninner_steps: 4\nseq_len: 24\nbatch_size: 2\nlearning_rate: 0.01\n"
                .utf8
        ).write(to: URL(fileURLWithPath: job))
        let id = try c.submit(job)
        let final = c.waitForJob(id)
        #expect(final?["state"] == "done", "\(c.logs)")
        let shares = (final?["steps"]?.arrayValue ?? []).compactMap { $0.objectValue?["shares"]?.objectValue?.count }
        #expect(shares == [2, 2], "both workers contributed to both rounds")
        // No blob on the coordinator holds either worker's data.
        let blobDir = c.state + "/blobs/sha256"
        let stored = Set(try FileManager.default.contentsOfDirectory(atPath: blobDir))
        for f in files { #expect(!stored.contains(try FileHash.sha256(file: f)), "\(f) stayed on its worker") }
        let bytes = try stored.map { try Data(contentsOf: URL(fileURLWithPath: blobDir + "/" + $0)) }
        #expect(!bytes.contains { $0.range(of: Data("alpha beta gamma".utf8)) != nil })
    }
}

/// `cairn cluster up`: a coordinator and N worker processes from one command, stopped cleanly by SIGTERM.
func runClusterUp(
    job: String, state: String, workers: Int = 2, timeout: Double = 300, check: (String) throws -> Void
) throws {
    let log = state + ".log"
    _ = FileManager.default.createFile(atPath: log, contents: nil)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: cairnExecutable)
    p.arguments = ["cluster", "up", "--workers", "\(workers)", "--state", state, "--listen", "tcp://127.0.0.1:*"]
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    p.standardError = handle
    p.standardOutput = handle
    try p.run()
    defer {
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
    }
    func waitUntil(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return false
    }
    func workersUp() -> Bool {
        guard let r = try? runCommand(cairnExecutable, ["workers", "--state", state, "--json"]), r.status == 0 else {
            return false
        }
        return ((try? JSONValue.parse(r.stdout))?.arrayValue ?? []).filter {
            $0.objectValue?["connected"] == .bool(true)
        }
        .count == workers
    }
    #expect(
        waitUntil(60, workersUp),
        "cluster up started its workers: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
    let submitted = try runCommand(cairnExecutable, ["submit", "--state", state, job])
    #expect(submitted.status == 0, "\(submitted.stderr)")
    let id = submitted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    let watched = try runCommand(cairnExecutable, ["status", "--state", state, id, "--watch"])
    #expect(watched.status == 0 && watched.stdout.contains("\(id)  done"), "\(watched.stdout)")
    try check(id)
    kill(p.processIdentifier, SIGTERM)
    #expect(waitUntil(30) { !p.isRunning }, "cluster up stopped on SIGTERM")
    let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
    #expect(text.components(separatedBy: "left the cluster").count - 1 == workers, "every worker left cleanly: \(text)")
}

@Suite(.serialized) struct ClusterUpTests {
    @Test func clusterUpRunsAJobAcrossLocalWorkersAndStopsCleanly() throws {
        let c = ClusterHarness("up")
        let job = try c.writeJob(steps: 6)
        try runClusterUp(job: job, state: c.dir.appendingPathComponent("up-state").path) { id in
            let out = c.dir.appendingPathComponent("adapter").path
            let pull = try runCommand(cairnExecutable, ["pull", "--state", c.dir.path + "/up-state", id, "-o", out])
            #expect(pull.status == 0, "\(pull.stderr)")
        }
    }
}

@Suite struct ClusterCommandLineTests {
    /// A service passes the same token on every start (systemd's Restart=, an env file): once the worker is
    /// enrolled, the spent token is not used again and the worker joins with the key pair it kept.
    @Test func aWorkerRestartedWithItsSpentTokenRejoinsWithItsKey() throws {
        let c = ClusterHarness("rejoin")
        try c.startCluster(workers: [])
        let token = try c.token()
        var logs: [String] = []
        for start in 1...2 {
            try c.startWorker("w1", token: token)
            #expect(c.waitUntil(60) { c.connectedWorkers().count == 1 }, "start \(start): \(c.logs)")
            c.killWorker("w1", signal: SIGTERM)
            #expect(c.waitUntil(30) { c.connectedWorkers().isEmpty }, "start \(start): \(c.logs)")
            logs.append(c.log("w1.log"))  // each start writes the log anew
        }
        #expect(logs[0].contains("enrolled; key pair saved"), "\(logs[0])")
        #expect(
            logs[1].contains("already enrolled with this coordinator") && !logs[1].contains("key pair saved"),
            "\(logs[1])")
        let workers = try c.cairn("workers", "--json")
        #expect(
            (try? JSONValue.parse(workers.stdout))?.arrayValue?.count == 1, "one worker, one key: \(workers.stdout)")
    }

    @Test func insecureIsOnlyForLoopbackAndBadTokensAreNamed() throws {
        let dir = Fixtures.temporaryDirectory("cairn-cli-cluster")
        defer { try? FileManager.default.removeItem(at: dir) }
        let insecure = try runCommand(
            cairnExecutable, ["coordinator", "--state", dir.path, "--listen", "tcp://0.0.0.0:7999", "--insecure"])
        #expect(insecure.status != 0 && insecure.stderr.contains("only on loopback"), "\(insecure.stderr)")
        let badToken = try runCommand(cairnExecutable, ["worker", "join", "tcp://127.0.0.1:1", "--token", "hello"])
        #expect(badToken.status != 0 && badToken.stderr.contains("not a Cairn join token"), "\(badToken.stderr)")
        let noKeys = try runCommand(
            cairnExecutable, ["worker", "join", "tcp://127.0.0.1:1", "--credentials", dir.path + "/none.json"])
        #expect(noKeys.status != 0 && noKeys.stderr.contains("--token"), "\(noKeys.stderr)")
        // A token may be issued before the coordinator's first start: the key pair is made then, once, and kept.
        let early = try runCommand(cairnExecutable, ["coordinator", "token", "--state", dir.path + "/fresh"])
        #expect(early.status == 0, "\(early.stderr)")
        let made = try Credentials.load(from: dir.path + "/fresh/server.json").keys?.publicKey
        let token = JoinToken(parsing: early.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(made != nil && token?.serverKey == made, "the token carries the key pair made for the coordinator")
        let again = try runCommand(cairnExecutable, ["coordinator", "token", "--state", dir.path + "/fresh"])
        #expect(JoinToken(parsing: again.stdout.trimmingCharacters(in: .whitespacesAndNewlines))?.serverKey == made)
        let help = try runCommand(cairnExecutable, ["coordinator", "--help"])
        #expect(help.stdout.contains("cairn worker join"), "--help teaches the join flow")
    }
}

/// Tokens and keys after the fact: an expired or revoked token enrols nothing, a revoked key is refused from its
/// next connection, and a worker's key cannot act as a client.
@Suite struct CredentialLifecycleTests {
    @Test func expiredAndRevokedTokensAndRevokedKeysAreRefused() throws {
        let c = ClusterHarness("credentials")
        try c.startCoordinator()
        func issue(_ extra: [String]) throws -> (token: String, id: String) {
            let r = try runCommand(cairnExecutable, ["coordinator", "token", "--state", c.state] + extra)
            #expect(r.status == 0, "\(r.stderr)")
            let id = r.stderr.split(separator: " ").dropFirst().first.map(String.init) ?? ""
            return (r.stdout.trimmingCharacters(in: .whitespacesAndNewlines), id)
        }
        func join(_ token: String, _ name: String) throws -> CommandResult {
            try runCommand(
                cairnExecutable,
                [
                    "client", "join", c.endpoint, "--token", token, "--credentials",
                    c.dir.appendingPathComponent("\(name).json").path,
                ])
        }
        // Expired: a one-second token, used once its second has passed (a wait for the clock, not for a process).
        let issued = Date()
        let short = try issue(["--ttl", "1s", "--role", "client"])
        _ = c.waitUntil(2) { Date().timeIntervalSince(issued) > 1.5 }
        let expired = try join(short.token, "expired")
        #expect(expired.status != 0 && expired.stderr.contains("refused this token"), "\(expired.stderr)")
        // Revoked before use.
        let revokedToken = try issue(["--role", "client"])
        let revoke = try runCommand(
            cairnExecutable, ["coordinator", "revoke-token", revokedToken.id, "--state", c.state])
        #expect(revoke.status == 0, "\(revoke.stderr)")
        let late = try join(revokedToken.token, "late")
        #expect(late.status != 0 && late.stderr.contains("refused this token"), "\(late.stderr)")
        // A client key works until it is revoked, then is refused.
        let good = try issue(["--role", "client"])
        #expect(try join(good.token, "laptop").status == 0)
        let laptop = c.dir.appendingPathComponent("laptop.json").path
        #expect(try runCommand(cairnExecutable, ["status", "--credentials", laptop]).status == 0)
        let name =
            (try? JSONValue.parse(Array(try Data(contentsOf: URL(fileURLWithPath: laptop)))))?.objectValue?[
                "public_key"]?.stringValue ?? ""
        let revokeKey = try runCommand(cairnExecutable, ["coordinator", "revoke-key", name, "--state", c.state])
        #expect(revokeKey.status == 0, "\(revokeKey.stderr)")
        let after = try runCommand(cairnExecutable, ["status", "--credentials", laptop])
        #expect(after.status != 0 && after.stderr.contains("refused this key"), "\(after.stderr)")
        // A worker's key asking for a client's answers.
        try c.startWorker("w1")
        #expect(c.waitUntil(60) { c.connectedWorkers().count == 1 }, "\(c.logs)")
        let asClient = try runCommand(
            cairnExecutable, ["status", "--credentials", c.dir.appendingPathComponent("w1.json").path])
        #expect(asClient.status != 0 && asClient.stderr.contains("not allowed"), "\(asClient.stderr)")
    }

    /// A public key is Z85 text, and one in 85 begins with "-": `revoke-key` takes it as the key, not as an
    /// option (it was refused as an unknown option, so the key stayed enrolled; the test above failed that way).
    @Test func aKeyBeginningWithADashCanBeRevoked() throws {
        let dir = Fixtures.temporaryDirectory("cairn-dash-key")
        defer { try? FileManager.default.removeItem(at: dir) }
        let state = dir.appendingPathComponent("state").path
        let store = try Store(directory: state)
        let keys = ["-h" + String(repeating: "a", count: 38), "-" + String(repeating: "b", count: 39)]
        for (i, key) in keys.enumerated() { try store.addKey(key, role: "client", name: "laptop-\(i)") }
        let first = try runCommand(cairnExecutable, ["coordinator", "revoke-key", keys[0], "--state", state])
        #expect(first.status == 0, "\(first.stderr)")
        let second = try runCommand(cairnExecutable, ["coordinator", "revoke-key", "--state", state, "--", keys[1]])
        #expect(second.status == 0, "\(second.stderr)")
        for key in keys { #expect(try store.role(ofKey: key) == nil, "\(key) is revoked") }
        let none = try runCommand(cairnExecutable, ["coordinator", "revoke-key", "--state", state])
        #expect(none.status != 0 && none.stderr.contains("give one key"), "\(none.stderr)")
    }
}

/// A peer that floods the coordinator is rate-limited, and a job and other clients are still served.
@Suite struct FloodTests {
    @Test func aFloodingClientIsRateLimitedWithoutStarvingOthers() throws {
        let c = ClusterHarness("flood")
        try c.startCluster(workers: ["w1"])
        let token = try runCommand(cairnExecutable, ["coordinator", "token", "--state", c.state, "--role", "client"])
        let credentials = c.dir.appendingPathComponent("flooder.json").path
        let joined = try runCommand(
            cairnExecutable,
            [
                "client", "join", c.endpoint, "--token", token.stdout.trimmingCharacters(in: .whitespacesAndNewlines),
                "--credentials", credentials,
            ])
        #expect(joined.status == 0, "\(joined.stderr)")
        let job = try c.writeJob(steps: 20)
        let id = try c.submit(job)
        // 30 000 messages as fast as the socket takes them: heartbeats, the cheapest to send and to receive, so the
        // flood outruns the limit (500 a second) instead of being slowed by the coordinator's own work.
        let context = Context()
        let flooder = try ZMQDealer(context: context, credentials: try Credentials.load(from: credentials))
        let request = Message(.heartbeat).encode()
        // (When the socket's queue is full a send fails at once; the loop tries again, for at most 60 s.)
        var sent = 0
        let until = Date().addingTimeInterval(60)
        while sent < 30_000, Date() < until { if (try? flooder.send(request)) != nil { sent += 1 } }
        #expect(sent == 30_000)
        // Meanwhile the job runs to its end and another client is answered.
        let final = c.waitForJob(id, seconds: 120)
        #expect(final?["state"] == "done", "\(c.logs)")
        #expect(try c.cairn("workers", "--json").status == 0)
        #expect((c.coordinatorHealth()?["messages_rate_limited"]?.intValue ?? 0) > 0, "the flood was noticed")
        flooder.close()
    }
}
