// Cluster commands: coordinator, worker, client enrolment, submit/status/workers/cancel/pull, cluster up.

import ArgumentParser
import Coordinator
import Foundation
import Llama
import ModelFormats
import Training
import Transport
import Wire
import Worker

/// Parses "90s", "30m", "24h", "7d" (or plain seconds).
func parseDuration(_ text: String) -> Double? {
    let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
    if let last = text.last, let unit = units[last], let n = Double(text.dropLast()), n > 0 { return n * unit }
    if let n = Double(text), n > 0 { return n }
    return nil
}

struct CoordinatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Run the coordinator that splits LoRA jobs across workers, or issue join tokens.",
        discussion: """
            The coordinator keeps everything in its state directory (--state, default $CAIRN_STATE or \
            ~/.local/state/cairn): the SQLite journal of jobs and steps, content-addressed blobs (models, data, \
            checkpoints, adapters), its CURVE key pair, and client.json, the credentials the local `cairn submit/\
            status/pull` use. Restarted on the same state directory it resumes every job from its last journaled \
            step; workers reconnect by themselves.

            Every connection is encrypted (CURVE) and only enrolled keys get in. To add a machine:
              cairn coordinator token                    # on the coordinator: prints a one-time token
              cairn worker join tcp://HOST:7070 --token TOKEN     # on the new machine

            The dashboard (jobs, loss curves, workers, lineage), the JSON API and Prometheus metrics are served             on http://127.0.0.1:7071/ (--http). Bound beyond loopback (--http 0.0.0.0:7071) they need the bearer             token kept in STATE/http-token: open http://HOST:7071/#token=TOKEN, or scrape /metrics with             `Authorization: Bearer TOKEN`.

            Examples:
              cairn coordinator --listen tcp://0.0.0.0:7070
              cairn coordinator --http 0.0.0.0:7071     # the dashboard for other machines too (with the token)
              cairn coordinator token --ttl 1h
              cairn coordinator token --role client      # for `cairn client join` on a laptop
              cairn coordinator export job-3 -o job-3-adapter   # the last journaled step's adapter, even unfinished
            """,
        subcommands: [Serve.self, Token.self, RevokeToken.self, RevokeKey.self, Export.self],
        defaultSubcommand: Serve.self)

    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "serve", abstract: "Run the coordinator (the default).")

        @Option(help: "State directory (default $CAIRN_STATE or ~/.local/state/cairn).")
        var state: String?
        @Option(help: "ZeroMQ endpoint to listen on.")
        var listen = "tcp://0.0.0.0:7070"
        @Flag(help: "No encryption and no keys. Only for demos on loopback (tcp://127.0.0.1:PORT).")
        var insecure = false
        @OptionGroup var dashboard: DashboardOptions
        @Option(
            help: ArgumentHelp(
                "Jobs that run at once, sharing the workers by rows (a job file's `priority` weighs its share); "
                    + "the rest wait in the queue.", valueName: "N"))
        var maxJobs = 4
        @Option(help: .hidden)
        var heartbeatMs: Int?

        /// For the crash tests: `CAIRN_CRASH_AT=POINT:STEP` (POINT: checkpoint, transaction or cleanup) kills this
        /// process with SIGKILL at that point of journaling that step, as a power cut would.
        static func crashProbe() -> (@Sendable (String, Int) -> Void)? {
            guard let spec = ProcessInfo.processInfo.environment["CAIRN_CRASH_AT"] else { return nil }
            let parts = spec.split(separator: ":")
            guard parts.count == 2, let step = Int(parts[1]) else { return nil }
            let point = String(parts[0])
            return { p, s in if p == point, s == step { kill(getpid(), SIGKILL) } }
        }

        func run() throws {
            let dir = state ?? CredentialPaths.defaultState
            var options = CoordinatorOptions(stateDirectory: dir, listen: listen)
            dashboard.apply(to: &options)
            options.insecure = insecure
            guard (1...64).contains(maxJobs) else { throw CLIError("--max-jobs: must be between 1 and 64") }
            options.maxRunningJobs = maxJobs
            if let h = heartbeatMs { options.heartbeatMilliseconds = max(10, h) }
            options.journalProbe = Self.crashProbe()
            if insecure {
                Terminal.note(
                    "WARNING: --insecure: traffic is not encrypted and ANY local process can submit jobs and read adapters. "
                        + "Use it only for demos on this machine.")
            }
            let coordinator: Coordinator
            do { coordinator = try Coordinator(options: options, logger: lineLogger("cairn.coordinator")) } catch {
                throw CLIError("\(error)")
            }
            let signals = StopSignal(onFirst: { coordinator.stop() })
            Terminal.note("state: \(dir) · clients on this machine use \(StateFiles.client(dir))")
            do { try coordinator.run() } catch { throw CLIError("\(error)") }
            _ = signals
        }
    }

    struct Token: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a one-time join token for a worker (or a client).",
            discussion: """
                The token carries the coordinator's public key and a one-time secret. It is used once and expires. \
                A client may submit, watch and pull jobs, and list and fetch published adapters; a publisher is a \
                client that may also publish adapters (`cairn publish`). Workers may list and fetch adapters too.
                """)

        @Option(help: "State directory of the coordinator.")
        var state: String?
        @Option(help: "worker, client or publisher.")
        var role = "worker"
        @Option(help: "How long the token stays valid: 90s, 30m, 24h, 7d.")
        var ttl = "24h"

        func run() throws {
            guard ["worker", "client", "publisher"].contains(role) else {
                throw ValidationError("--role must be worker, client or publisher")
            }
            guard let seconds = parseDuration(ttl) else { throw ValidationError("--ttl: expected e.g. 30m, 24h or 7d") }
            let token: JoinToken
            do {
                token = try StateFiles.issueToken(
                    stateDirectory: state ?? CredentialPaths.defaultState, role: role, validFor: seconds)
            } catch { throw CLIError("\(error)") }
            Terminal.write("\(token)\n")
            Terminal.note(
                "token \(token.id) for one \(role), valid \(ttl); revoke with `cairn coordinator revoke-token \(token.id)`"
            )
        }
    }

    struct RevokeToken: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "revoke-token", abstract: "Revoke an unused join token.")
        @Option(help: "State directory of the coordinator.")
        var state: String?
        @Argument(help: "The token id that `cairn coordinator token` printed.")
        var id: String

        func run() throws {
            let store = try Store(directory: state ?? CredentialPaths.defaultState)
            guard try store.revokeToken(id: id) else { throw CLIError("no token \(id)") }
            Terminal.note("token \(id) revoked")
        }
    }
}

extension CoordinatorCommand {
    struct RevokeKey: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "revoke-key",
            abstract:
                "Revoke an enrolled worker's or client's key (by its name or public key); it is refused from its next connection.",
            usage: "cairn coordinator revoke-key [--state <state>] <key>"
        )
        @Option(help: "State directory of the coordinator.")
        var state: String?
        // A public key is Z85 text, which may begin with "-": taken as it is, not as an option.
        @Argument(
            parsing: .allUnrecognized,
            help: "The name it enrolled with (see `cairn workers`), or its public key (it may begin with a dash).")
        var key: [String] = []

        /// The one key given ("--" before it is allowed, and dropped).
        private var given: String? {
            let words = key.filter { $0 != "--" }
            return words.count == 1 ? words[0] : nil
        }

        func validate() throws {
            guard given != nil else {
                throw ValidationError(
                    "give one key: the name it enrolled with (see `cairn workers`), or its public key")
            }
        }

        func run() throws {
            let key = given!
            let store = try Store(directory: state ?? CredentialPaths.defaultState)
            let n = try store.revokeKey(key)
            guard n > 0 else { throw CLIError("no enrolled key named \(key)") }
            Terminal.note("revoked \(n) key\(n == 1 ? "" : "s"); connections with it are refused from now on")
        }
    }
}

extension CoordinatorCommand {
    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the adapter of a job's last journaled step, from the state directory alone.",
            discussion: """
                Works whether the job finished or not (running, cancelled, stopped with the coordinator) and whether \
                the coordinator runs or not: for keeping what an interrupted job learnt. The adapter's lineage \
                records how many steps it had. A finished job's adapter is the same as `cairn pull` gives.

                Examples:
                  cairn coordinator export --state /var/lib/cairn/coordinator job-3 -o job-3-adapter
                  cairn coordinator export job-3 --format gguf -o job-3.gguf
                """)
        @Option(help: "State directory of the coordinator (default $CAIRN_STATE or ~/.local/state/cairn).")
        var state: String?
        @Argument(help: "The job id (see `cairn status`).")
        var jobId: String
        @Option(help: "peft (a directory) or gguf (a GGUF LoRA file for llama.cpp --lora).")
        var format = "peft"
        @Option(
            name: .shortAndLong, help: "Output directory (peft) or file (gguf); replaced once the new one is whole.")
        var output: String

        func run() throws {
            guard let f = AdapterFileFormat(rawValue: format) else {
                throw ValidationError("--format must be peft or gguf")
            }
            let written: JournaledAdapter
            do {
                written = try Coordinator.exportJournaledAdapter(
                    stateDirectory: state ?? CredentialPaths.defaultState, job: jobId, format: f, to: output)
            } catch { throw CLIError("\(error)") }
            let note = written.totalSteps == written.step ? "" : " (the job is \(written.state))"
            Terminal.note(
                "\(jobId): \(format) adapter of \(written.unit) \(written.step) of \(written.totalSteps)\(note) "
                    + "written to \(output)")
        }
    }
}

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker", abstract: "Lend this machine to a coordinator.", subcommands: [Join.self])

    struct Join: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Join a coordinator and work on its jobs until stopped (SIGINT/SIGTERM: finish, hand back, leave).",
            discussion: """
                The first time, pass the token from `cairn coordinator token`: the worker enrols a key pair of its own \
                and keeps it (--credentials, default ~/.config/cairn/worker.json, mode 0600), so later joins need no \
                token; a --token for the coordinator it is already enrolled with is not used again (so a service \
                can pass the same token on every start). The coordinator ships the base model into the cache \
                (--cache) the first time.

                Examples:
                  cairn worker join tcp://coord:7070 --token cairn1…
                  cairn worker join tcp://coord:7070 --threads 4
                  cairn worker join tcp://coord:7070 --data my-private.jsonl     # federated jobs train on it here
                """)

        @Argument(help: "The coordinator's endpoint, e.g. tcp://coord-host:7070.")
        var endpoint: String
        @Option(help: "Join token from `cairn coordinator token` (needed the first time).")
        var token: String?
        @Option(help: "Kernel threads (default: all cores).")
        var threads: Int?
        @Option(help: "Name shown by `cairn workers` (default: host name).")
        var name: String?
        @Option(help: "Where the worker's key pair is kept.")
        var credentials: String?
        @Option(help: "Blob cache (default $CAIRN_HOME/worker or ~/.cache/cairn/worker).")
        var cache: String?
        @Option(help: "This machine's own JSONL data for federated jobs; it never leaves this machine.")
        var data: String?
        @Flag(help: "Connect without encryption (a coordinator started with --insecure on this machine).")
        var insecure = false

        func run() throws {
            if let threads, threads < 1 || threads > 1024 {
                throw ValidationError("--threads must be between 1 and 1024")
            }
            let name = name ?? ProcessInfo.processInfo.hostName
            let credPath = credentials ?? CredentialPaths.userWorker
            var creds: Credentials
            if insecure {
                guard StateFiles.isLoopback(endpoint) else {
                    throw ValidationError("--insecure only works on loopback endpoints (tcp://127.0.0.1:PORT)")
                }
                creds = Credentials(endpoint: endpoint, serverKey: nil, keys: nil)
            } else if let token {
                guard let t = JoinToken(parsing: token) else {
                    throw ValidationError("--token is not a Cairn join token (it starts with cairn1)")
                }
                if let saved = try? Credentials.load(from: credPath), saved.serverKey == t.serverKey, saved.keys != nil
                {
                    // Already enrolled with this coordinator: a service or batch script that passes the same
                    // token on every start must not fail once the token is spent.
                    creds = saved
                    creds.endpoint = endpoint
                    Terminal.note(
                        "already enrolled with this coordinator (\(credPath)); the token was not used. "
                            + "Delete that file to enrol again.")
                } else {
                    creds = try ClusterClient.enrol(endpoint: endpoint, token: t, role: "worker", name: name)
                    try creds.save(to: credPath)
                    Terminal.note("enrolled; key pair saved to \(credPath)")
                }
            } else if FileManager.default.fileExists(atPath: credPath) {
                creds = try Credentials.load(from: credPath)
                creds.endpoint = endpoint
            } else {
                throw ValidationError(
                    "this machine has no key yet (\(credPath)); pass --token from `cairn coordinator token` on the coordinator"
                )
            }
            var options = WorkerOptions(
                credentials: creds, name: name,
                cacheDirectory: cache ?? ((ModelSource.home as NSString).appendingPathComponent("worker")))
            options.threads = threads
            options.localData = data
            let agent = try WorkerAgent(options: options, logger: lineLogger("cairn.worker", who: name))
            let signals = StopSignal(onFirst: { agent.stop() })
            do { try agent.run() } catch { throw CLIError("\(error)") }
            _ = signals
        }
    }
}

struct ClientCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client", abstract: "Enrol this machine as a client of a coordinator.", subcommands: [Join.self])

    struct Join: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Enrol with a token from `cairn coordinator token --role client` (or `--role publisher`); then "
                + "submit/status/pull (and publish) work here.")
        @Argument(help: "The coordinator's endpoint.")
        var endpoint: String
        @Option(help: "Join token.")
        var token: String
        @Option(help: "Where to keep the credentials (default ~/.config/cairn/client.json).")
        var credentials: String?

        func run() throws {
            guard let t = JoinToken(parsing: token) else { throw ValidationError("--token is not a Cairn join token") }
            let creds = try ClusterClient.enrol(
                endpoint: endpoint, token: t, role: "client", name: ProcessInfo.processInfo.hostName)
            let path = credentials ?? CredentialPaths.userClient
            try creds.save(to: path)
            Terminal.note("enrolled; credentials saved to \(path)")
        }
    }
}

/// Where the coordinator serves its dashboard.
struct DashboardOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Serve the dashboard, JSON API and /metrics on HOST:PORT (off: not at all).",
            discussion:
                "Default 127.0.0.1:7071, this machine only; if that port is taken the coordinator runs without it. "
                + "Beyond loopback every data route needs the bearer token in STATE/http-token."))
    var http: String?

    func apply(to options: inout CoordinatorOptions) {
        switch http {
        case nil:
            options.http = "127.0.0.1:7071"
            options.httpRequired = false
        case "off"?: options.http = nil
        case let address?: options.http = address
        }
    }
}

/// Options of every client command.
struct ClientOptions: ParsableArguments {
    @Option(help: "The coordinator's state directory, when on its machine (uses DIR/client.json).")
    var state: String?
    @Option(help: "A credentials file from `cairn client join`.")
    var credentials: String?

    func connect() throws -> ClusterClient {
        try ClusterClient(CredentialPaths.clientCredentials(explicit: credentials, state: state))
    }
}

struct Submit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Submit a job file to the coordinator; prints the job id.",
        discussion: """
            The job file has the keys of `cairn train --list-keys`, plus `mode` (sync). The data file it names is \
            sent with the job; the model is resolved on the coordinator (a cached name such as smollm2-135m, or a \
            path there). init_adapter names an adapter in the coordinator's registry (`cairn adapters`): the job \
            trains it further, with its rank and projections, and its lineage records it as the parent. See \
            Cluster/examples/.
            """)
    @OptionGroup var client: ClientOptions
    @Argument(help: "The job file (YAML).")
    var job: String

    func run() throws {
        var config = TrainingConfig()
        do { try config.apply(yamlFile: job) } catch { throw CLIError(error.description) }
        if let path = config.initAdapter, FileManager.default.fileExists(atPath: path) {
            throw CLIError(
                "\(job): init_adapter: \(path) is on this machine; a cluster job starts from a published adapter: "
                    + "`cairn publish \(path) --name NAME`, then init_adapter: NAME")
        }
        var data = Data()
        if config.mode == .federated {
            guard config.data.isEmpty else {
                throw CLIError(
                    "\(job): data: federated jobs train on each worker's own data (worker join --data); remove data")
            }
        } else {
            guard !config.data.isEmpty else { throw CLIError("\(job): data: required (a JSONL file)") }
            guard let d = FileManager.default.contents(atPath: config.data) else {
                throw CLIError("\(job): data: cannot read \(config.data)")
            }
            data = d
        }
        guard data.count <= Wire.maxTensorBytes else {
            throw CLIError(
                "\(config.data) is \(data.count >> 20) MiB; cluster jobs take at most \(Wire.maxTensorBytes >> 20) MiB of data"
            )
        }
        var submit = JobSubmission(
            spec: try String(contentsOfFile: job, encoding: .utf8),
            dataName: config.data.isEmpty ? "(workers' own)" : (config.data as NSString).lastPathComponent,
            data: Array(data))
        if let path = config.validationData {
            guard let v = FileManager.default.contents(atPath: path) else {
                throw CLIError("\(job): validation_data: cannot read \(path)")
            }
            guard v.count <= Wire.maxTensorBytes else {
                throw CLIError(
                    "\(path) is \(v.count >> 20) MiB; at most \(Wire.maxTensorBytes >> 20) MiB of held-out data")
            }
            submit.validation = Array(v)
            submit.validationName = (path as NSString).lastPathComponent
        }
        if config.mode == .evaluate { submit.adapters = try Self.localAdapters(config, job: job) }
        let c = try client.connect()
        let reply = try c.request(submit.message, expect: .submitted, timeout: 300)
        Terminal.write(try reply.decodeJobRequest().job + "\n")
    }
}

extension Submit {
    /// The files of an evaluation job's adapters that are paths here (beside the job file, or absolute), bundled for
    /// the coordinator; nil when every adapter is a registry name.
    static func localAdapters(_ config: TrainingConfig, job: String) throws -> [UInt8]? {
        let base = (job as NSString).deletingLastPathComponent
        var names: [String] = []
        for c in config.candidates {
            for n in c.reference.map({ [$0] }) ?? c.inputs.map(\.name) where !names.contains(n) { names.append(n) }
        }
        var writer = SafetensorsWriter()
        var uploads = JSONObject()
        var index = 0
        var total = 0
        for name in names {
            let path = name.hasPrefix("/") ? name : (base as NSString).appendingPathComponent(name)
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { continue }
            let files = isDirectory.boolValue ? Publish.peftFiles : [Publish.ggufFile]
            for f in files {
                let file = isDirectory.boolValue ? (path as NSString).appendingPathComponent(f) : path
                guard let data = FileManager.default.contents(atPath: file) else {
                    throw CLIError("\(job): adapters: cannot read \(file)")
                }
                total += data.count
                writer.add("\(index)/\(f)", dtype: .U8, shape: [data.count], bytes: Array(data))
            }
            uploads[name] = .integer(Int64(index))
            index += 1
        }
        guard index > 0 else { return nil }
        guard index <= CandidateSet.maxUploads, total < Wire.maxTensorBytes - (1 << 20) else {
            throw CLIError(
                "\(job): adapters: at most \(CandidateSet.maxUploads) adapters and \(Wire.maxTensorBytes >> 20) MiB may be "
                    + "sent with a job; publish them (cairn publish) and name them instead")
        }
        writer.metadata["uploads"] = JSONValue.object(uploads).serialized()
        return writer.serialized()
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show jobs (steps, loss, tokens/s) and workers.",
        discussion: """
            With a job id, --json includes the job's journaled steps (loss, tokens, seconds, bytes, each worker's \
            rows, tokens and compute seconds; the most recent 800, or with --after N those after step N), its \
            evaluations, settings and lineage: the shapes of the dashboard's /api/jobs/ID.

            With a job id, --watch returns when the job is finished, with exit status 0 if it is done and 1 if it \
            failed or was cancelled: `cairn status JOB --watch && cairn pull JOB -o adapter` in scripts.
            """)
    @OptionGroup var client: ClientOptions
    @Argument(help: "A job id (default: all jobs).")
    var jobId: String?
    @Flag(help: "Print the coordinator's answer as JSON.")
    var json = false
    @Flag(help: "Refresh every 2 seconds until the job (or every job) is finished.")
    var watch = false
    @Option(help: "With a job id: list the steps after this one (oldest first, up to 800) instead of the latest.")
    var after: Int?

    func validate() throws {
        if after != nil, jobId == nil { throw ValidationError("--after needs a job id") }
        if let after, after < 0 { throw ValidationError("--after must be a step number (0 or more)") }
    }

    func run() throws {
        let c = try client.connect()
        var shown = ""
        while true {
            let reply = try c.request(StatusRequest(job: jobId, after: after).message, expect: .statusReply)
            let json = reply.metadata["body"] ?? .null
            let body: StatusBody
            do { body = try StatusBody(json: json) } catch {
                throw CLIError("bad status from the coordinator: \(error)")
            }
            // Watching: print only when something changed.
            let text = self.json ? json.serialized() + "\n" : Self.render(body)
            if text != shown { Terminal.write(text) }
            shown = text
            if !watch || body.jobs.allSatisfy(\.isFinished) {
                if watch, let jobId, let job = body.jobs.first, job.state != "done" {
                    throw CLIError("\(jobId) \(job.state)\(job.error.map { ": \($0)" } ?? "")")
                }
                break
            }
            Thread.sleep(forTimeInterval: 2)
        }
    }

    static func render(_ body: StatusBody) -> String {
        var out = ""
        if body.jobs.isEmpty { out += "no jobs\n" }
        for j in body.jobs {
            var facts = [j.id, j.state, j.mode, "\(j.mode == "sync" ? "step" : "round") \(j.step)/\(j.totalSteps)"]
            if let v = j.loss { facts.append(String(format: "loss %.4f", v)) }
            if let v = j.evalLoss { facts.append(String(format: "eval %.4f", v)) }
            if let v = j.tokensPerSecond { facts.append(String(format: "%.0f trained tok/s", v)) }
            if let v = j.etaSeconds { facts.append("eta \(formatDuration(v))") }
            out += facts.joined(separator: "  ") + "\n"
            if let e = j.error { out += "  error: \(e)\n" }
            // An evaluation job: each adapter's held-out loss, best first.
            if let adapters = j.adapters {
                let losses = Dictionary((j.evals ?? []).map { ($0.step, $0.loss) }, uniquingKeysWith: { a, _ in a })
                let order = adapters.indices.sorted { (losses[$0 + 1] ?? .infinity) < (losses[$1 + 1] ?? .infinity) }
                for i in order {
                    let loss = losses[i + 1].map { String(format: "%.4f", $0) } ?? "pending"
                    out += "  \(loss)  \(adapters[i].label)  (adapter \(adapters[i].sha256.prefix(12))…)\n"
                }
            }
            // Rounds in which a participant's update was left out or clipped.
            for step in j.steps ?? [] {
                for (id, w) in step.workers.sorted(by: { $0.key < $1.key }) {
                    let name = j.workerNames?[id] ?? id
                    if let why = w.leftOut { out += "  round \(step.step): \(name) left out: \(why)\n" }
                    if let by = w.clipScale {
                        out += "  round \(step.step): \(name)'s update clipped by \(String(format: "%.3f", by))"
                        out += w.updateNorm.map { String(format: " (norm %.4g)", $0) } ?? ""
                        out += "\n"
                    }
                }
            }
        }
        out += Workers.render(body.workers)
        return out
    }
}

struct Workers: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List workers: connected or not, speed, rows done.",
        discussion: """
            --wait N returns once N workers are connected (the coordinator may still be starting): for scripts that \
            start machines and then submit.

            Examples:
              cairn workers
              cairn workers --wait 3 --timeout 5m && cairn submit job.yaml
            """)
    @OptionGroup var client: ClientOptions
    @Flag(help: "Print JSON.")
    var json = false
    @Option(help: "Wait until at least this many workers are connected, then list them.")
    var wait: Int?
    @Option(help: "How long --wait waits: 90s, 30m, 1h.")
    var timeout = "10m"

    func validate() throws {
        if let wait, wait < 1 { throw ValidationError("--wait must be 1 or more") }
        if parseDuration(timeout) == nil { throw ValidationError("--timeout: expected e.g. 90s, 30m or 1h") }
    }

    func run() throws {
        let json =
            try wait.map(waitFor) ?? client.connect().request(Message(.workers), expect: .workersReply).metadata["body"]
            ?? .array([])
        if self.json {
            Terminal.printJSON(json)
        } else {
            do { Terminal.write(Self.render(try WorkerStatus.list(json: json))) } catch {
                throw CLIError("bad workers list from the coordinator: \(error)")
            }
        }
    }

    /// Polls until `count` workers are connected; the coordinator (and its client credentials) may not be up yet.
    func waitFor(_ count: Int) throws -> JSONValue {
        let deadline = Date().addingTimeInterval(parseDuration(timeout)!)
        let progress = ProgressLine("waiting for \(count) workers", total: nil)
        defer { progress.finish() }
        var connected = 0
        var problem = "the coordinator has not answered yet"
        var c: ClusterClient?
        while Date() < deadline {
            do {
                if c == nil { c = try client.connect() }
                let body =
                    try c!.request(Message(.workers), expect: .workersReply, timeout: 5).metadata["body"]
                    ?? .array([])
                connected = ((try? WorkerStatus.list(json: body)) ?? []).filter(\.connected).count
                if connected >= count { return body }
                problem = "\(connected) of \(count) connected"
            } catch {
                c = nil
                problem = "\(error)"
            }
            progress.show("waiting for workers: \(problem)")
            Thread.sleep(forTimeInterval: 0.5)
        }
        throw CLIError(
            "\(connected) of \(count) workers connected after \(timeout) (\(problem)); see `cairn workers` and the workers' logs"
        )
    }

    static func render(_ workers: [WorkerStatus]) -> String {
        if workers.isEmpty { return "no workers\n" }
        var out = ""
        for w in workers {
            let speed = w.rowsPerSecond.map { String(format: "%.2f rows/s", $0) } ?? ""
            out +=
                "worker \(w.name) [\(w.id)]  \(w.state)  \(w.cores) cores  \(String(format: "%.1f", w.gflops)) GFLOP/s  "
            out += "\(speed)  rows done \(w.rowsDone)\n"
            if let error = w.error { out += "  \(error)\n" }
        }
        return out
    }
}

struct Cancel: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cancel a queued or running job.")
    @OptionGroup var client: ClientOptions
    @Argument var jobId: String

    func run() throws {
        _ = try client.connect().request(JobRequest(.cancel, job: jobId).message, expect: .cancelled)
        Terminal.note("\(jobId) cancelled")
    }
}

struct Pull: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Download a finished job's adapter.",
        discussion: """
            --format peft writes a PEFT directory (adapter_config.json + adapter_model.safetensors); gguf writes a \
            GGUF LoRA file that llama.cpp loads with --lora; checkpoint writes the final training state.
            """)
    @OptionGroup var client: ClientOptions
    @Argument var jobId: String
    @Option(help: "peft, gguf or checkpoint.")
    var format = "peft"
    @Option(name: .shortAndLong, help: "Output directory (peft) or file (gguf, checkpoint).")
    var output: String

    func run() throws {
        let wanted: [String]
        switch format {
        case "peft": wanted = ["adapter_config.json", "adapter_model.safetensors"]
        case "gguf": wanted = ["adapter.gguf"]
        case "checkpoint": wanted = ["checkpoint.safetensors"]
        default: throw ValidationError("--format must be peft, gguf or checkpoint")
        }
        let c = try client.connect()
        let reply = try c.request(JobRequest(.pull, job: jobId).message, expect: .pullReply).decode(as: PullReply.self)
        var files: [String: (blob: String, bytes: Int)] = [:]
        for f in reply.files where BlobStore.isHash(f.blob) { files[f.name] = (f.blob, f.bytes) }
        if format == "peft" {
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        }
        for name in wanted {
            guard let f = files[name] else { throw CLIError("the coordinator has no \(name) for \(jobId)") }
            let path = format == "peft" ? (output as NSString).appendingPathComponent(name) : output
            let progress = ProgressLine("pull \(name)", total: f.bytes)
            try c.download(blob: f.blob, bytes: f.bytes, to: path) { progress.update($0, unit: "bytes") }
            progress.finish()
        }
        Terminal.note("\(jobId): \(format) adapter written to \(output)")
    }
}

struct ClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster", abstract: "Run a whole cluster on this machine.", subcommands: [Up.self])

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a coordinator and N local workers (each its own process) until stopped.",
            discussion: """
                Workers enrol with tokens like remote ones would; the cores are shared out among them. In another \
                terminal: `cairn submit --state DIR job.yaml`, `cairn status --state DIR --watch`, `cairn pull …`.

                Example:
                  cairn cluster up --workers 2 --state /tmp/cairn-demo
                """)
        @Option(help: "Local workers to start.")
        var workers = 2
        @Option(help: "State directory.")
        var state: String?
        @Option(help: "Endpoint to listen on.")
        var listen = "tcp://127.0.0.1:7070"
        @Option(help: "Kernel threads per worker (default: cores / workers).")
        var threads: Int?
        @OptionGroup var dashboard: DashboardOptions

        func run() throws {
            guard workers >= 0, workers <= 64 else { throw ValidationError("--workers must be between 0 and 64") }
            let dir = state ?? CredentialPaths.defaultState
            let coordinator: Coordinator
            do {
                var options = CoordinatorOptions(stateDirectory: dir, listen: listen)
                dashboard.apply(to: &options)
                coordinator = try Coordinator(
                    options: options, logger: lineLogger("cairn.coordinator", who: "coordinator"))
            } catch { throw CLIError("\(error)") }
            let endpoint = coordinator.endpoint.replacingOccurrences(of: "0.0.0.0", with: "127.0.0.1")
            let perWorker = threads ?? max(1, ProcessInfo.processInfo.activeProcessorCount / max(1, workers))
            var children: [Process] = []
            let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path
            for i in 0..<workers {
                let token = try StateFiles.issueToken(stateDirectory: dir, role: "worker", validFor: 600)
                let p = Process()
                p.executableURL = URL(fileURLWithPath: exe)
                p.arguments = [
                    "worker", "join", endpoint, "--token", token.description, "--name", "local-\(i + 1)",
                    "--threads", "\(perWorker)", "--credentials",
                    (dir as NSString).appendingPathComponent("local-worker-\(i + 1).json"),
                ]
                children.append(p)
            }
            let started = children
            let signals = StopSignal(onFirst: {
                for p in started where p.isRunning { kill(p.processIdentifier, SIGTERM) }
                coordinator.stop()
            })
            let runner = Thread { try? coordinator.run() }
            runner.start()
            for p in children { try p.run() }
            Terminal.note(
                "cluster up: coordinator on \(endpoint), \(workers) workers × \(perWorker) threads. "
                    + "Submit with: cairn submit --state \(dir) JOB.yaml")
            while !runner.isFinished && !signals.requested { Thread.sleep(forTimeInterval: 0.2) }
            for p in children { p.waitUntilExit() }
            while !runner.isFinished { Thread.sleep(forTimeInterval: 0.05) }
        }
    }
}
