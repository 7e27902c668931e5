// Store: the coordinator's durable state in SQLite (GRDB, WAL): enrolled keys and join tokens, jobs, the journal
// of completed steps, workers seen, and adapter lineage. Every step is journaled in one transaction (the step's
// row and the job's new checkpoint pointer together) before the coordinator moves on, so a restart resumes
// from exactly the last journaled step. `cairn coordinator token` writes tokens from another process while the
// coordinator runs; WAL makes that safe.

import Foundation
import GRDB
import ModelFormats
import Wire

/// Why the state directory cannot be used.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A job as stored.
public struct JobRecord: Sendable, Equatable {
    public enum State: String, Sendable, CaseIterable {
        case queued, running, done, failed, cancelled
        public var isFinished: Bool { self == .done || self == .failed || self == .cancelled }
    }
    public var id: String
    /// The job file as submitted (YAML).
    public var spec: String
    public var mode: String
    public var state: State
    public var created: Double
    public var modelBlob: String
    public var dataBlob: String
    public var dataName: String
    /// Held-out data sent with the job (validation_data), and its file name.
    public var validationBlob: String?
    public var validationName: String?
    public var totalSteps: Int
    /// Steps journaled.
    public var step: Int
    /// The checkpoint of `step` (nil before the first step).
    public var checkpointBlob: String?
    public var error: String?
    /// Output files when done: name → blob.
    public var outputs: [String: String]
    /// The registry entry the job's adapter starts from (as it was when the job was submitted); nil: a fresh
    /// adapter.
    public var initAdapter: RegistryEntry?
    /// An evaluation job's adapters, as prepared at submit time.
    public var candidates: CandidateSet?
}

/// What one worker did in a step or round.
public struct WorkerShare: Sendable, Equatable {
    /// Rows it computed.
    public var rows: Int
    /// Tokens trained on in them.
    public var tokens: Int
    /// Seconds it spent computing them (as it reports).
    public var seconds: Double
    /// Round modes: its update's norm, the factor the round clipped it by, and why the round left it out.
    public var updateNorm: Double?
    public var clipScale: Double?
    public var leftOut: String?

    public init(rows: Int, tokens: Int = 0, seconds: Double = 0) {
        self.rows = rows
        self.tokens = tokens
        self.seconds = seconds
    }

    /// Adds a result's rows, tokens and seconds.
    public mutating func add(rows: Int, tokens: Int, seconds: Double) {
        self.rows += rows
        self.tokens += tokens
        self.seconds += seconds
    }
}

extension [String: WorkerShare] {
    /// Seconds all the workers spent computing.
    var computeSeconds: Double { values.reduce(0) { $0 + $1.seconds } }
}

/// One journaled step.
public struct StepRecord: Sendable, Equatable {
    public var step: Int
    public var loss: Double
    public var tokens: Int
    public var seconds: Double
    /// Bytes sent and received for the step, all workers together.
    public var bytes: Int
    /// What each worker did: worker id → rows, tokens, compute seconds.
    public var workers: [String: WorkerShare]
    /// Seconds the workers spent computing, summed (the rest of their time in the step they waited).
    public var computeSeconds: Double

    /// Rows computed by each worker: worker id → rows.
    public var shares: [String: Int] { workers.mapValues(\.rows) }

    public init(
        step: Int, loss: Double, tokens: Int, seconds: Double, bytes: Int, workers: [String: WorkerShare],
        computeSeconds: Double = 0
    ) {
        self.step = step
        self.loss = loss
        self.tokens = tokens
        self.seconds = seconds
        self.bytes = bytes
        self.workers = workers
        self.computeSeconds = computeSeconds
    }
}

/// One evaluation on the held-out data, after a step (or round).
public struct EvalRecord: Sendable, Equatable {
    public var step: Int
    /// Mean loss per held-out token.
    public var loss: Double
    public var tokens: Int

    public init(step: Int, loss: Double, tokens: Int) {
        self.step = step
        self.loss = loss
        self.tokens = tokens
    }
}

/// A worker that has connected at some time.
public struct WorkerRecord: Sendable, Equatable {
    public var id: String
    public var name: String
    public var cores: Int
    public var memory: Int
    public var gflops: Double
    public var lastSeen: Double
    public var rows: Int

    public init(id: String, name: String, cores: Int, memory: Int, gflops: Double, lastSeen: Double, rows: Int) {
        self.id = id
        self.name = name
        self.cores = cores
        self.memory = memory
        self.gflops = gflops
        self.lastSeen = lastSeen
        self.rows = rows
    }
}

/// The coordinator's SQLite database.
public final class Store: @unchecked Sendable {
    let db: DatabasePool

    /// Opens (creating and migrating) `cairn.sqlite` in a state directory.
    public init(directory: String) throws(StoreError) {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            // Processes that open a new state directory at once (a coordinator starting while a script issues
            // tokens) would race to switch it to WAL and would each see the migrations unapplied and run them
            // twice: they open it one at a time, under a lock.
            let lock = try StateDirectoryLock(directory: directory)
            defer { lock.release() }
            var config = Configuration()
            config.busyMode = .timeout(10)
            db = try DatabasePool(
                path: (directory as NSString).appendingPathComponent("cairn.sqlite"), configuration: config)
            var migrator = DatabaseMigrator()
            migrator.registerMigration("v1") { db in
                try db.execute(
                    sql: """
                        CREATE TABLE keys (public_key TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL,
                            created REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
                        CREATE TABLE tokens (id TEXT PRIMARY KEY, enrol_key TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
                            created REAL NOT NULL, expires REAL NOT NULL, used REAL, revoked INTEGER NOT NULL DEFAULT 0);
                        CREATE TABLE jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, spec TEXT NOT NULL,
                            mode TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL, model_blob TEXT NOT NULL,
                            data_blob TEXT NOT NULL, data_name TEXT NOT NULL, total_steps INTEGER NOT NULL,
                            step INTEGER NOT NULL DEFAULT 0, checkpoint_blob TEXT, error TEXT,
                            outputs TEXT NOT NULL DEFAULT '{}');
                        CREATE TABLE steps (job TEXT NOT NULL, step INTEGER NOT NULL, loss REAL NOT NULL,
                            tokens INTEGER NOT NULL, seconds REAL NOT NULL, bytes INTEGER NOT NULL, shares TEXT NOT NULL,
                            PRIMARY KEY (job, step));
                        CREATE TABLE workers (id TEXT PRIMARY KEY, name TEXT NOT NULL, cores INTEGER NOT NULL,
                            memory INTEGER NOT NULL, gflops REAL NOT NULL, last_seen REAL NOT NULL,
                            rows INTEGER NOT NULL DEFAULT 0);
                        CREATE TABLE lineage (adapter_blob TEXT PRIMARY KEY, job TEXT NOT NULL, base_blob TEXT NOT NULL,
                            data_blob TEXT NOT NULL, method TEXT NOT NULL, parents TEXT NOT NULL, steps INTEGER NOT NULL,
                            created REAL NOT NULL);
                        """)
            }
            migrator.registerMigration("v2: compute seconds") { db in
                try db.execute(sql: "ALTER TABLE steps ADD COLUMN compute REAL NOT NULL DEFAULT 0")
            }
            migrator.registerMigration("v3: per-worker shares, evaluations, held-out data") { db in
                try db.execute(
                    sql: """
                        ALTER TABLE steps ADD COLUMN workers TEXT NOT NULL DEFAULT '{}';
                        CREATE TABLE evals (job TEXT NOT NULL, step INTEGER NOT NULL, loss REAL NOT NULL,
                            tokens INTEGER NOT NULL, PRIMARY KEY (job, step));
                        ALTER TABLE jobs ADD COLUMN validation_blob TEXT;
                        ALTER TABLE jobs ADD COLUMN validation_name TEXT;
                        """)
            }
            migrator.registerMigration("v4: adapter registry, scores, init adapters") { db in
                try db.execute(
                    sql: """
                        CREATE TABLE registry (name TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL,
                            base_sha256 TEXT NOT NULL, base_name TEXT NOT NULL, description TEXT NOT NULL,
                            publisher TEXT NOT NULL, created REAL NOT NULL, format TEXT NOT NULL, files TEXT NOT NULL,
                            data_sha256 TEXT, steps INTEGER, lineage TEXT, job TEXT, PRIMARY KEY (name, version));
                        CREATE INDEX registry_sha256 ON registry (sha256);
                        CREATE TABLE scores (sha256 TEXT NOT NULL, data_sha256 TEXT NOT NULL, data_name TEXT NOT NULL,
                            loss REAL NOT NULL, tokens INTEGER NOT NULL, job TEXT, created REAL NOT NULL,
                            PRIMARY KEY (sha256, data_sha256));
                        ALTER TABLE jobs ADD COLUMN init_adapter TEXT;
                        ALTER TABLE jobs ADD COLUMN candidates TEXT;
                        """)
            }
            try migrator.migrate(db)
        } catch let e as StoreError {
            throw e
        } catch {
            throw StoreError("cannot open the state database in \(directory): \(error)")
        }
    }

    func write<T>(_ body: (Database) throws -> T) throws(StoreError) -> T {
        do { return try db.write(body) } catch { throw StoreError("state database: \(error)") }
    }

    func read<T>(_ body: (Database) throws -> T) throws(StoreError) -> T {
        do { return try db.read(body) } catch { throw StoreError("state database: \(error)") }
    }

    static var now: Double { Date().timeIntervalSince1970 }

    // MARK: Keys and tokens

    /// Enrols a public key with a role ("worker" or "client").
    public func addKey(_ publicKey: String, role: String, name: String) throws(StoreError) {
        try write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO keys (public_key, role, name, created) VALUES (?, ?, ?, ?)",
                arguments: [publicKey, role, name, Self.now])
        }
    }

    /// The role of an enrolled, unrevoked key.
    public func role(ofKey publicKey: String) throws(StoreError) -> String? {
        try read { db in
            try String.fetchOne(
                db, sql: "SELECT role FROM keys WHERE public_key = ? AND revoked = 0", arguments: [publicKey])
        }
    }

    /// Revokes every key whose public key or name matches.
    @discardableResult
    public func revokeKey(_ keyOrName: String) throws(StoreError) -> Int {
        try write { db in
            try db.execute(
                sql: "UPDATE keys SET revoked = 1 WHERE public_key = ? OR name = ?", arguments: [keyOrName, keyOrName])
            return db.changesCount
        }
    }

    /// Records a join token by the public key its secret derives.
    public func addToken(id: String, enrolKey: String, role: String, expires: Double) throws(StoreError) {
        try write { db in
            try db.execute(
                sql: "INSERT INTO tokens (id, enrol_key, role, created, expires) VALUES (?, ?, ?, ?, ?)",
                arguments: [id, enrolKey, role, Self.now, expires])
        }
    }

    /// The token (id, role) an enrolment key belongs to, when it is unused, unexpired and unrevoked.
    public func usableToken(enrolKey: String) throws(StoreError) -> (id: String, role: String)? {
        try read { db in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql:
                        "SELECT id, role FROM tokens WHERE enrol_key = ? AND used IS NULL AND revoked = 0 AND expires > ?",
                    arguments: [enrolKey, Self.now])
            else { return nil }
            return (row["id"], row["role"])
        }
    }

    /// Marks a token used and enrols the key it admitted, together; false when the token was no longer usable.
    public func redeemToken(id: String, publicKey: String, name: String) throws(StoreError) -> Bool {
        try write { db in
            guard
                let role = try String.fetchOne(
                    db, sql: "SELECT role FROM tokens WHERE id = ? AND used IS NULL AND revoked = 0 AND expires > ?",
                    arguments: [id, Self.now])
            else { return false }
            try db.execute(sql: "UPDATE tokens SET used = ? WHERE id = ?", arguments: [Self.now, id])
            try db.execute(
                sql: "INSERT OR REPLACE INTO keys (public_key, role, name, created) VALUES (?, ?, ?, ?)",
                arguments: [publicKey, role, name, Self.now])
            return true
        }
    }

    /// Revokes a token; false when there is none with that id.
    public func revokeToken(id: String) throws(StoreError) -> Bool {
        try write { db in
            try db.execute(sql: "UPDATE tokens SET revoked = 1 WHERE id = ?", arguments: [id])
            return db.changesCount > 0
        }
    }

    // MARK: Jobs

    /// Adds a queued job and returns its id (job-1, job-2, …).
    public func addJob(
        spec: String, mode: String, modelBlob: String, dataBlob: String, dataName: String,
        validation: (blob: String, name: String)? = nil, initAdapter: RegistryEntry? = nil,
        candidates: CandidateSet? = nil, totalSteps: Int
    ) throws(StoreError) -> String {
        try write { db in
            let seq = (try Int.fetchOne(db, sql: "SELECT MAX(seq) FROM jobs") ?? 0) + 1
            let id = "job-\(seq)"
            try db.execute(
                sql: """
                    INSERT INTO jobs (id, seq, spec, mode, state, created, model_blob, data_blob, data_name,
                        validation_blob, validation_name, total_steps, init_adapter, candidates)
                    VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    id, seq, spec, mode, Self.now, modelBlob, dataBlob, dataName, validation?.blob, validation?.name,
                    totalSteps, initAdapter?.json.serialized(), candidates?.json.serialized(),
                ])
            return id
        }
    }

    private static func job(_ row: Row) -> JobRecord {
        let outputs = (try? JSONValue.parse(row["outputs"] as String))?.objectValue
        var files: [String: String] = [:]
        for (k, v) in outputs?.members ?? [] { files[k] = v.stringValue }
        return JobRecord(
            id: row["id"], spec: row["spec"], mode: row["mode"],
            state: JobRecord.State(rawValue: row["state"]) ?? .failed, created: row["created"],
            modelBlob: row["model_blob"], dataBlob: row["data_blob"], dataName: row["data_name"],
            validationBlob: row["validation_blob"], validationName: row["validation_name"],
            totalSteps: row["total_steps"], step: row["step"], checkpointBlob: row["checkpoint_blob"],
            error: row["error"], outputs: files,
            initAdapter: (row["init_adapter"] as String?).flatMap { try? JSONValue.parse($0) }.flatMap {
                try? RegistryEntry(json: $0)
            },
            candidates: (row["candidates"] as String?).flatMap { try? JSONValue.parse($0) }.flatMap(CandidateSet.init))
    }

    /// All jobs, oldest first.
    public func jobs() throws(StoreError) -> [JobRecord] {
        try read { db in try Row.fetchAll(db, sql: "SELECT * FROM jobs ORDER BY seq").map(Self.job) }
    }

    public func job(_ id: String) throws(StoreError) -> JobRecord? {
        try read { db in try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id]).map(Self.job) }
    }

    /// Sets a job's state (and error message).
    public func setState(_ id: String, _ state: JobRecord.State, error: String? = nil) throws(StoreError) {
        try write { db in
            try db.execute(
                sql: "UPDATE jobs SET state = ?, error = ? WHERE id = ?", arguments: [state.rawValue, error, id])
        }
    }

    /// Journals a completed step: its row and the job's checkpoint pointer, in one transaction (`midway` runs
    /// between the two, for crash tests).
    public func journal(job: String, step: StepRecord, checkpointBlob: String, midway: () -> Void = {})
        throws(StoreError)
    {
        try journal(job: job, steps: [step], checkpointBlob: checkpointBlob, midway: midway)
    }

    /// Journals completed steps, in order, and the checkpoint after the last: their rows and the job's pointer, in
    /// one transaction (`midway` runs between the rows and the pointer, for crash tests).
    public func journal(job: String, steps: [StepRecord], checkpointBlob: String, midway: () -> Void = {})
        throws(StoreError)
    {
        guard let last = steps.last else { return }
        try write { db in
            for step in steps {
                let shares = JSONValue.object(
                    JSONObject(step.shares.sorted { $0.key < $1.key }.map { ($0.key, .integer(Int64($0.value))) }))
                let workers = JSONValue.object(
                    JSONObject(
                        step.workers.sorted { $0.key < $1.key }.map { id, w in
                            var o: JSONObject = [
                                "rows": .integer(Int64(w.rows)), "tokens": .integer(Int64(w.tokens)),
                                "seconds": .number(w.seconds),
                            ]
                            o["update_norm"] = w.updateNorm.map(JSONValue.number)
                            o["clipped_by"] = w.clipScale.map(JSONValue.number)
                            o["left_out"] = w.leftOut.map(JSONValue.string)
                            return (id, JSONValue.object(o))
                        }))
                try db.execute(
                    sql: """
                        INSERT OR REPLACE INTO steps (job, step, loss, tokens, seconds, bytes, shares, compute, workers)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        job, step.step, step.loss, step.tokens, step.seconds, step.bytes, shares.serialized(),
                        step.computeSeconds, workers.serialized(),
                    ])
                for (worker, rows) in step.shares {
                    try db.execute(sql: "UPDATE workers SET rows = rows + ? WHERE id = ?", arguments: [rows, worker])
                }
            }
            midway()
            try db.execute(
                sql: "UPDATE jobs SET step = ?, checkpoint_blob = ?, state = 'running' WHERE id = ?",
                arguments: [last.step, checkpointBlob, job])
        }
    }

    /// Marks a job done with its output files, and records the adapter's lineage.
    public func finish(
        job: String, outputs: [String: String], adapterBlob: String, baseBlob: String, dataBlob: String, steps: Int,
        parents: [String] = []
    ) throws(StoreError) {
        let parentList = JSONValue.array(parents.map(JSONValue.string)).serialized()
        let files = JSONValue.object(JSONObject(outputs.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }))
        try write { db in
            try db.execute(
                sql: "UPDATE jobs SET state = 'done', outputs = ? WHERE id = ?", arguments: [files.serialized(), job])
            try db.execute(
                sql: """
                    INSERT OR REPLACE INTO lineage (adapter_blob, job, base_blob, data_blob, method, parents, steps, created)
                    VALUES (?, ?, ?, ?, 'train', ?, ?, ?)
                    """,
                arguments: [adapterBlob, job, baseBlob, dataBlob, parentList, steps, Self.now])
        }
    }

    /// The journaled steps of a job, in order; with `last`, only the most recent ones; with `after`, at most
    /// `limit` steps after that one.
    public func steps(job: String, last: Int? = nil, after: Int? = nil, limit: Int = Int(Int32.max)) throws(StoreError)
        -> [StepRecord]
    {
        try read { db in
            let rows =
                if let last {
                    Array(
                        try Row.fetchAll(
                            db, sql: "SELECT * FROM steps WHERE job = ? ORDER BY step DESC LIMIT ?",
                            arguments: [job, last]
                        ).reversed())
                } else {
                    try Row.fetchAll(
                        db, sql: "SELECT * FROM steps WHERE job = ? AND step > ? ORDER BY step LIMIT ?",
                        arguments: [job, after ?? Int.min, limit])
                }
            return rows.map(Self.step)
        }
    }

    private static func step(_ row: Row) -> StepRecord {
        var workers: [String: WorkerShare] = [:]
        for (id, v) in (try? JSONValue.parse(row["workers"] as String))?.objectValue?.members ?? [] {
            let o = v.objectValue
            var share = WorkerShare(
                rows: o?["rows"]?.intValue ?? 0, tokens: o?["tokens"]?.intValue ?? 0,
                seconds: o?["seconds"]?.doubleValue ?? 0)
            share.updateNorm = o?["update_norm"]?.doubleValue
            share.clipScale = o?["clipped_by"]?.doubleValue
            share.leftOut = o?["left_out"]?.stringValue
            workers[id] = share
        }
        // Steps journaled before per-worker figures were kept have rows only.
        if workers.isEmpty {
            for (id, v) in (try? JSONValue.parse(row["shares"] as String))?.objectValue?.members ?? [] {
                workers[id] = WorkerShare(rows: v.intValue ?? 0)
            }
        }
        return StepRecord(
            step: row["step"], loss: row["loss"], tokens: row["tokens"], seconds: row["seconds"],
            bytes: row["bytes"], workers: workers, computeSeconds: row["compute"])
    }

    /// Steps journaled and tokens trained, per job.
    public func totals() throws(StoreError) -> [String: (steps: Int, tokens: Int)] {
        try read { db in
            var out: [String: (steps: Int, tokens: Int)] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT job, COUNT(*) AS n, SUM(tokens) AS t FROM steps GROUP BY job")
            {
                out[row["job"]] = (row["n"], row["t"] ?? 0)
            }
            return out
        }
    }

    /// Records the evaluation of an evaluation job's adapter `k` (and the job's progress, k adapters scored) in one
    /// transaction, with the adapter's score.
    public func journalCandidate(job: String, _ eval: EvalRecord, score: (sha256: String, AdapterScore)?)
        throws(StoreError)
    {
        try write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO evals (job, step, loss, tokens) VALUES (?, ?, ?, ?)",
                arguments: [job, eval.step, eval.loss, eval.tokens])
            try db.execute(
                sql: "UPDATE jobs SET step = ?, state = 'running' WHERE id = ?", arguments: [eval.step, job])
            if let (sha, s) = score {
                try db.execute(
                    sql: """
                        INSERT OR REPLACE INTO scores (sha256, data_sha256, data_name, loss, tokens, job, created)
                        VALUES (?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [sha, s.dataHash, s.dataName, s.loss, s.tokens, s.job, s.created])
            }
        }
    }

    /// Records an evaluation of a job's adapter after a step.
    public func journalEval(job: String, _ eval: EvalRecord) throws(StoreError) {
        try write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO evals (job, step, loss, tokens) VALUES (?, ?, ?, ?)",
                arguments: [job, eval.step, eval.loss, eval.tokens])
        }
    }

    /// A job's latest evaluation.
    public func lastEval(job: String) throws(StoreError) -> EvalRecord? {
        try read { db in
            try Row.fetchOne(
                db, sql: "SELECT * FROM evals WHERE job = ? ORDER BY step DESC LIMIT 1", arguments: [job]
            ).map { EvalRecord(step: $0["step"], loss: $0["loss"], tokens: $0["tokens"]) }
        }
    }

    /// A job's evaluations, in order.
    public func evals(job: String) throws(StoreError) -> [EvalRecord] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM evals WHERE job = ? ORDER BY step", arguments: [job]).map {
                EvalRecord(step: $0["step"], loss: $0["loss"], tokens: $0["tokens"])
            }
        }
    }

    // MARK: Workers

    /// Records a worker's registration or latest sighting.
    public func saw(worker: WorkerRecord) throws(StoreError) {
        try write { db in
            try db.execute(
                sql: """
                    INSERT INTO workers (id, name, cores, memory, gflops, last_seen) VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT(id) DO UPDATE SET name = excluded.name, cores = excluded.cores,
                        memory = excluded.memory, gflops = excluded.gflops, last_seen = excluded.last_seen
                    """,
                arguments: [worker.id, worker.name, worker.cores, worker.memory, worker.gflops, worker.lastSeen])
        }
    }

    public func workers() throws(StoreError) -> [WorkerRecord] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM workers ORDER BY name").map { row in
                WorkerRecord(
                    id: row["id"], name: row["name"], cores: row["cores"], memory: row["memory"], gflops: row["gflops"],
                    lastSeen: row["last_seen"], rows: row["rows"])
            }
        }
    }
}

/// An exclusive flock(2) on STATE/cairn.sqlite.lock, held while the database is opened and its schema migrated.
private struct StateDirectoryLock {
    let fd: Int32

    init(directory: String) throws(StoreError) {
        let path = (directory as NSString).appendingPathComponent("cairn.sqlite.lock")
        fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw StoreError(
                "cannot open \(path): \(String(cString: strerror(errno))); is the state directory writable?")
        }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else {
                let message = String(cString: strerror(errno))
                close(fd)
                throw StoreError("cannot lock \(path): \(message)")
            }
        }
    }

    func release() {
        flock(fd, LOCK_UN)
        close(fd)
    }
}
