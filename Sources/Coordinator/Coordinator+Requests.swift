// Coordinator+Requests: what the store and the blob store answer: enrolment, blob chunks, submitted jobs, status,
// cancel and pull. The core has checked the sender's role and decoded the request before it comes here.

import Foundation
import Llama
import ModelFormats
import Training
import Transport
import Wire

extension Coordinator {
    func serve(_ c: CoordinatorCore.Connection, _ request: CoordinatorCore.Request) {
        switch request {
        case .enrol(let token, let e): enrol(c, token: token, e)
        case .submit(let s): submit(c, s)
        case .status(let s): status(c, s)
        case .workers: send(c, Message(.workersReply, ["body": .array(workerStatuses().map(\.json))]))
        case .cancel(let id): cancel(c, id)
        case .pull(let id): pull(c, id)
        case .fetch(let f, let worker): fetch(c, f, worker: worker)
        case .publish(let p, let key): publish(c, p, key: key)
        case .adapters(let request): listAdapters(c, request)
        case .resolve(let r): resolve(c, r)
        }
    }

    // MARK: The registry

    func publish(_ c: CoordinatorCore.Connection, _ p: Publish, key: String?) {
        let publisher =
            key.map { k in "\((try? store.keyName(k)).flatMap { $0 } ?? "key") (\(k.prefix(8))…)" }
            ?? "local (insecure)"
        do {
            let published = try registry.publish(p, publisher: publisher, now: Self.now)
            log(
                published.created
                    ? "published \(published.name)@\(published.version) (adapter \(published.sha256.prefix(12))…) by \(publisher)"
                    : "\(published.name)@\(published.version) published again unchanged by \(publisher)")
            send(c, published.message)
        } catch {
            log(.warning, "refused to publish \(p.name): \(error.message)")
            fail(c, error.code, error.message)
        }
    }

    func listAdapters(_ c: CoordinatorCore.Connection, _ request: AdapterListRequest) {
        do {
            let (entries, omitted) = try registry.list(request)
            var o: JSONObject = ["body": .array(entries.map(\.json))]
            if omitted > 0 { o["omitted"] = .integer(Int64(omitted)) }
            send(c, Message(.adaptersReply, o))
        } catch { fail(c, error.code, error.message) }
    }

    func resolve(_ c: CoordinatorCore.Connection, _ r: Resolve) {
        do { send(c, Message(.resolved, ["body": try registry.resolve(r.reference).json])) } catch {
            if error.code == "corrupt" { log(.error, error.message) }
            fail(c, error.code, error.message)
        }
    }

    func enrol(_ c: CoordinatorCore.Connection, token: String, _ e: Enrol) {
        guard CurveKeyPair.isValidKey(e.publicKey) else {
            fail(c, "bad_key", "public_key is not a Z85 CURVE key")
            return
        }
        do {
            guard try store.redeemToken(id: token, publicKey: e.publicKey, name: e.name) else {
                fail(c, "token_used", "the token was used, revoked or expired; ask for a new one")
                return
            }
        } catch {
            fail(c, "internal", "\(error)")
            return
        }
        log("enrolled \(e.name) (key \(e.publicKey.prefix(8))…) with token \(token)")
        send(c, Enrolled(id: String(e.publicKey.prefix(8))).message)
    }

    func fetch(_ c: CoordinatorCore.Connection, _ f: Fetch, worker: String?) {
        guard BlobStore.isHash(f.blob), let size = blobs.size(f.blob) else {
            fail(c, "no_blob", "no blob \(f.blob.prefix(16))")
            return
        }
        guard f.offset < size else {
            fail(c, "bad_offset", "offset \(f.offset) is past the blob's end")
            return
        }
        do {
            let bytes = try blobs.read(f.blob, offset: f.offset, length: min(f.length, size - f.offset))
            if let worker {
                metrics.transfer(worker: worker, blob: f.blob, through: f.offset + bytes.count, of: size)
            }
            send(c, Chunk(blob: f.blob, offset: f.offset, total: size, data: bytes).message)
        } catch {
            fail(c, "internal", "\(error)")
        }
    }

    func submit(_ c: CoordinatorCore.Connection, _ s: JobSubmission) {
        var config = TrainingConfig()
        do { try config.apply(yaml: s.spec, source: "job file") } catch {
            fail(c, "bad_job", error.description)
            return
        }
        let modelSource: ModelSource
        do { modelSource = try ModelSource.resolve(config.model) } catch {
            fail(c, "bad_model", "model \(config.model) on the coordinator: \(error)")
            return
        }
        guard case .gguf(let modelPath) = modelSource else {
            fail(c, "bad_model", "cluster jobs need a GGUF model file for now; \(config.model) is a directory")
            return
        }
        do {
            let dataBlob = try blobs.add(s.data)
            let modelBlob = try blobs.add(file: modelPath)
            var validation: (blob: String, name: String)?
            if let v = s.validation { validation = (try blobs.add(v), s.validationName ?? "validation_data") }
            var initial: RegistryEntry?
            if let reference = config.initAdapter {
                do { initial = try registry.resolve(reference) } catch {
                    fail(c, "bad_job", "job file: init_adapter: \(error.message)")
                    return
                }
                if let e = initial, e.baseHash != modelBlob {
                    fail(
                        c, "bad_job",
                        "job file: init_adapter: \(e.reference) is an adapter of base \(e.baseName) "
                            + "(sha256 \(e.baseHash.prefix(12))…), not of the job's model \(config.model) "
                            + "(sha256 \(modelBlob.prefix(12))…)")
                    return
                }
            }
            var candidates: CandidateSet?
            if config.mode == .evaluate {
                // The adapters to score, resolved and merged here (merges take a moment on large bases).
                let uploads = try s.adapters.map { b throws(JobError) in try CandidateSet.uploads(b, blobs: blobs) }
                candidates = try CandidateSet.prepare(
                    config.candidates, model: try ModelSource.gguf(blobs.path(modelBlob)).config(),
                    modelBlob: modelBlob, registry: registry, blobs: blobs, uploads: uploads ?? [:])
            }
            let prepared = try PreparedJob.prepare(
                spec: s.spec, source: "job file", modelPath: blobs.path(modelBlob), dataPath: blobs.path(dataBlob),
                dataName: s.dataName, validation: validation.map { (blobs.path($0.blob), $0.name) },
                initial: initial.map { ($0, blobs) },
                evaluation: candidates.map { ($0.lora, $0.candidates.count) })
            let id = try store.addJob(
                spec: s.spec, mode: prepared.config.mode.rawValue, modelBlob: modelBlob, dataBlob: dataBlob,
                dataName: s.dataName, validation: validation, initAdapter: initial, candidates: candidates,
                totalSteps: prepared.units)
            let job = prepared.config
            if let e = initial { log("\(id) starts from \(e.reference) (adapter \(e.sha256.prefix(12))…)") }
            if let candidates {
                log(
                    "\(id) submitted: evaluate \(candidates.candidates.count) adapters on "
                        + "\(prepared.validationPlan?.rowCount(epoch: 0) ?? 0) held-out rows")
            } else {
                log(
                    job.mode == .sync
                        ? "\(id) submitted: sync, \(prepared.totalSteps) steps of \(prepared.rowsPerStep) rows × \(job.sequenceLength) tokens"
                        : "\(id) submitted: \(job.mode.rawValue), \(prepared.units) rounds of \(job.innerSteps) local steps × "
                            + "\(prepared.rowsPerStep) rows × \(job.sequenceLength) tokens, compression \(job.compression.rawValue)"
                )
            }
            send(c, JobRequest(.submitted, job: id).message)
            nextActivation = 0
        } catch let e as JobError {
            fail(c, "bad_job", e.message)
        } catch {
            fail(c, "internal", "\(error)")
        }
    }

    func cancel(_ c: CoordinatorCore.Connection, _ id: String) {
        guard let record = try? store.job(id) else {
            fail(c, "no_job", "no job \(id)")
            return
        }
        guard !record.state.isFinished else {
            fail(c, "finished", "\(id) already \(record.state.rawValue)")
            return
        }
        // Its writes in flight land first: a job that finished meanwhile stays done.
        stopJob(id)
        if let now = try? store.job(id), now.state.isFinished {
            fail(c, "finished", "\(id) already \(now.state.rawValue)")
            return
        }
        try? store.setState(id, .cancelled)
        log("\(id) cancelled")
        send(c, JobRequest(.cancelled, job: id).message)
    }

    func pull(_ c: CoordinatorCore.Connection, _ id: String) {
        guard let record = try? store.job(id) else {
            fail(c, "no_job", "no job \(id)")
            return
        }
        guard record.state == .done else {
            fail(
                c, "not_done",
                "\(id) is \(record.state.rawValue) (\(record.step) of \(record.totalSteps) steps); pull it when it is done"
            )
            return
        }
        let files = record.outputs.sorted { $0.key < $1.key }.map { name, blob in
            PullReply.File(name: name, blob: blob, bytes: blobs.size(blob) ?? 0)
        }
        send(c, PullReply(job: id, files: files).message)
    }

    func status(_ c: CoordinatorCore.Connection, _ s: StatusRequest) {
        guard let only = s.job else {
            send(c, Message(.statusReply, ["body": statusBody().json]))
            return
        }
        guard
            let detail = jobDetail(only, after: s.after, limit: Self.maxStepsInStatus, byteBudget: Self.statusStepBytes)
        else {
            fail(c, "no_job", "no job \(only)")
            return
        }
        let body = StatusBody(jobs: [detail], workers: workerStatuses(), coordinator: coordinatorHealth())
        send(c, Message(.statusReply, ["body": body.json]))
    }

}
