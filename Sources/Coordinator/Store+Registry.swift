// Store+Registry: published adapters and their scores, in the coordinator's database. An entry is written in one
// transaction that also picks its version, so two publishes of one name at once get two versions, and an entry is
// either wholly there after a crash or not at all. Entries are never changed; scores are added beside them, keyed
// by the adapter's content hash (one adapter under two names shares its scores).

import Foundation
import GRDB
import Support
import Wire

extension Store {
    /// Adds `entry` as the next version of its name, or, when the name's latest version is the same adapter (the
    /// same content hash and base), returns that version unchanged.
    ///
    /// - Returns: the version, and whether it is new.
    public func publish(_ entry: RegistryEntry) throws(StoreError) -> (version: Int, created: Bool) {
        let files = JSONValue.array(
            entry.files.map {
                ["name": .string($0.name), "blob": .string($0.blob), "bytes": .integer(Int64($0.bytes))]
            }
        )
        return try write { db in
            if let latest = try Row.fetchOne(
                db,
                sql: "SELECT version, sha256, base_sha256 FROM registry WHERE name = ? ORDER BY version DESC LIMIT 1",
                arguments: [entry.name]),
                latest["sha256"] == entry.sha256, latest["base_sha256"] == entry.baseHash
            {
                return (latest["version"], false)
            }
            let version =
                (try Int.fetchOne(db, sql: "SELECT MAX(version) FROM registry WHERE name = ?", arguments: [entry.name])
                    ?? 0) + 1
            try db.execute(
                sql: """
                    INSERT INTO registry (name, version, sha256, base_sha256, base_name, description, publisher, created,
                        format, files, data_sha256, steps, lineage, job)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    entry.name, version, entry.sha256, entry.baseHash, entry.baseName, entry.description,
                    entry.publisher, entry.created, entry.format, files.serialized(), entry.dataHash, entry.steps,
                    entry.lineage?.serialized(), entry.job,
                ])
            return (version, true)
        }
    }

    /// Entries, oldest first: all, those of one name, or those whose base is `baseHash`.
    public func registryEntries(name: String? = nil, baseHash: String? = nil) throws(StoreError) -> [RegistryEntry] {
        try read { db in
            var sql = "SELECT * FROM registry"
            var conditions: [String] = []
            var arguments: [any DatabaseValueConvertible] = []
            if let name {
                conditions.append("name = ?")
                arguments.append(name)
            }
            if let baseHash {
                conditions.append("base_sha256 = ?")
                arguments.append(baseHash)
            }
            if !conditions.isEmpty { sql += " WHERE " + conditions.joined(separator: " AND ") }
            sql += " ORDER BY created, name, version"
            let rows = try Row.fetchAll(db, sql: sql, arguments: StatementArguments(arguments))
            return try rows.map { try Self.entry($0, db) }
        }
    }

    /// A name's version, or its latest when `version` is nil.
    public func registryEntry(name: String, version: Int? = nil) throws(StoreError) -> RegistryEntry? {
        try read { db in
            let row =
                if let version {
                    try Row.fetchOne(
                        db, sql: "SELECT * FROM registry WHERE name = ? AND version = ?", arguments: [name, version])
                } else {
                    try Row.fetchOne(
                        db, sql: "SELECT * FROM registry WHERE name = ? ORDER BY version DESC LIMIT 1",
                        arguments: [name])
                }
            return try row.map { try Self.entry($0, db) }
        }
    }

    /// Every published name, sorted.
    public func registryNames() throws(StoreError) -> [String] {
        try read { db in try String.fetchAll(db, sql: "SELECT DISTINCT name FROM registry ORDER BY name") }
    }

    /// Records a score of the adapter with content hash `sha256` (replacing an earlier one on the same data).
    public func addScore(sha256: String, _ score: AdapterScore) throws(StoreError) {
        try write { db in
            try db.execute(
                sql: """
                    INSERT OR REPLACE INTO scores (sha256, data_sha256, data_name, loss, tokens, job, created)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    sha256, score.dataHash, score.dataName, score.loss, score.tokens, score.job, score.created,
                ])
        }
    }

    private static func entry(_ row: Row, _ db: Database) throws -> RegistryEntry {
        var files: [PullReply.File] = []
        for v in (try? JSONValue.parse(row["files"] as String))?.arrayValue ?? [] {
            guard let o = v.objectValue, let name = o["name"]?.stringValue, let blob = o["blob"]?.stringValue,
                let bytes = o["bytes"]?.intValue
            else { continue }
            files.append(PullReply.File(name: name, blob: blob, bytes: bytes))
        }
        var e = RegistryEntry(
            name: row["name"], version: row["version"], sha256: row["sha256"], baseHash: row["base_sha256"],
            baseName: row["base_name"], description: row["description"], publisher: row["publisher"],
            created: row["created"], format: row["format"], files: files)
        e.dataHash = row["data_sha256"]
        e.steps = row["steps"]
        e.job = row["job"]
        if let text = row["lineage"] as String? { e.lineage = try? JSONValue.parse(text) }
        let nodes = e.lineage?.objectValue?["parents"]?.arrayValue ?? []
        e.parents = try nodes.map { node in
            let o = node.objectValue
            if let hash = o?["sha256"]?.stringValue,
                let published = try Row.fetchOne(
                    db, sql: "SELECT name, version FROM registry WHERE sha256 = ? ORDER BY created LIMIT 1",
                    arguments: [hash])
            {
                return "\(published["name"] as String)@\(published["version"] as Int)"
            }
            return o?["name"]?.stringValue ?? "?"
        }
        e.scores = try Row.fetchAll(
            db, sql: "SELECT * FROM scores WHERE sha256 = ? ORDER BY created", arguments: [e.sha256]
        ).map {
            AdapterScore(
                dataHash: $0["data_sha256"], dataName: $0["data_name"], loss: $0["loss"], tokens: $0["tokens"],
                job: $0["job"], created: $0["created"])
        }
        return e
    }
}

extension Store {
    /// The name an enrolled key was given (`local` for the coordinator's own client key).
    public func keyName(_ publicKey: String) throws(StoreError) -> String? {
        try read { db in
            try String.fetchOne(db, sql: "SELECT name FROM keys WHERE public_key = ?", arguments: [publicKey])
        }
    }
}
