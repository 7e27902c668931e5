// The adapter registry with real processes: publish (by job id and as files), list, fetch byte for byte, the
// publisher role, a cluster job that trains a published adapter further, and all of it across a SIGKILL of the
// coordinator.

import Foundation
import ModelFormats
import TestSupport
import Testing
import Wire

@Suite(.serialized) struct RegistryClusterTests {
    static let lines = [
        "the cat sat on the mat", "a dog ran in the park", "bread and butter", "one two three", "hello world",
        "pebbles in a pile", "north south east west", "red green blue", "stones on stones", "the river runs",
    ]

    /// `cairn adapters --json` (with extra arguments) as entries.
    func adapters(_ c: ClusterHarness, _ extra: String...) throws -> [RegistryEntry] {
        let r = try c.client(["adapters", "--json"] + extra)
        #expect(r.status == 0, "\(r.stderr)")
        let list = (try? JSONValue.parse(r.stdout))?.objectValue?["adapters"]?.arrayValue ?? []
        return try list.map { try RegistryEntry(json: $0) }
    }

    /// An evaluation job: registry adapters and an inline merge scored on held-out rows split across two workers;
    /// each score equals `cairn eval` of the same adapter on one machine, is journaled, and shows in `cairn adapters`.
    @Test func anEvaluationJobScoresRegistryAdaptersAndMergesAcrossWorkers() throws {
        let c = ClusterHarness("evaluate")
        try c.startCluster(workers: ["w1", "w2"])
        let first = try c.submit(try c.writeJob(steps: 3))
        #expect(c.waitForJob(first)?["state"] == "done", "\(c.logs)")
        #expect(try c.cairn("publish", first, "--name", "one").status == 0)
        let more = try c.writeJob(
            data: "more", job: "more", lines: Array(Self.lines.reversed()), steps: 3, batch: 4, seqLen: 24,
            learningRate: 0.02)
        let second = try c.submit(more)
        #expect(c.waitForJob(second)?["state"] == "done", "\(c.logs)")
        #expect(try c.cairn("publish", second, "--name", "two").status == 0)

        // An adapter on this machine, named by its path beside the job file, is sent with the job.
        #expect(try c.cairn("pull", first, "-o", c.dir.appendingPathComponent("pulled-one").path).status == 0)
        let heldLines = ["the mat sat on the cat", "three two one", "green blue red", "a park in the dog"]
        let job = try c.writeJob(
            data: "scored", job: "evaluate", lines: heldLines, steps: 1, batch: 2, seqLen: 24, learningRate: 0.01,
            extra: """
                mode: evaluate
                adapters:
                  - one
                  - two@1
                  - merge: linear
                    inputs: {one: 0.5, two: 0.5}
                  - pulled-one
                """)
        let id = try c.submit(job)
        let final = c.waitForJob(id)
        #expect(final?["state"] == "done", "\(c.logs)")
        let evals = ClusterHarness.evals(final)
        #expect(evals.map(\.step) == [1, 2, 3, 4], "\(String(describing: final))")
        let labels = (final?["adapters"]?.arrayValue ?? []).compactMap { $0.objectValue?["label"]?.stringValue }
        #expect(labels.count == 4 && labels[0] == "one" && labels[1] == "two@1" && labels[2].hasPrefix("linear("))
        // The copy sent from this machine is the same adapter as `one`: the same score.
        #expect(labels.last == "pulled-one" && abs(evals[3].loss - evals[0].loss) < 1e-6 * evals[0].loss)
        // Each registry adapter's score is what one machine measures (cairn eval scores the data the same way).
        for (k, name) in ["one", "two"].enumerated() {
            let dir = c.dir.appendingPathComponent("fetched-\(name)").path
            #expect(try c.cairn("fetch", name, "-o", dir).status == 0)
            let local = try runCommand(
                cairnExecutable,
                [
                    "eval", "--model", tinyModel, "--adapter", dir, "--data",
                    c.dir.appendingPathComponent("scored.jsonl").path, "--json",
                ])
            let loss = (try? JSONValue.parse(local.stdout))?.objectValue?["loss"]?.doubleValue
            #expect(
                loss != nil && abs(loss! - evals[k].loss) < 1e-3 * loss!,
                "\(name): \(String(describing: loss)) vs \(evals[k].loss)")
        }
        // The scores are the adapters' in the registry.
        let one = try #require(try adapters(c, "--name", "one").first)
        #expect(one.scores.contains { $0.dataName == "scored.jsonl" && abs($0.loss - evals[0].loss) < 1e-12 })
        let status = try c.cairn("status", id)
        #expect(status.stdout.contains("two@1") && status.stdout.contains("linear("), "\(status.stdout)")
        // A merge search whose candidates the workers score (evaluation jobs); the written merge scores on one
        // machine what the cluster measured.
        let searched = c.dir.appendingPathComponent("searched").path
        let search = try runCommand(
            cairnExecutable,
            [
                "merge", "one", "two", "--method", "linear", "--search", "--data",
                c.dir.appendingPathComponent("scored.jsonl").path, "--budget", "6", "--model", tinyModel, "-o",
                searched, "--json", "--state", c.state,
            ], environment: ["CAIRN_HOME": c.dir.appendingPathComponent("home").path])
        #expect(search.status == 0, "\(search.stderr)\n\(c.logs)")
        let record = (try? JSONValue.parse(search.stdout))?.objectValue?["search"]?.objectValue
        let jobs = record?["jobs"]?.arrayValue ?? []
        #expect(jobs.count >= 2 && record?["evaluations"]?.intValue == 6, "\(search.stdout)")
        let best = record?["loss"]?.doubleValue ?? .nan
        #expect(best <= (record?["uniform_loss"]?.doubleValue ?? .nan))
        let rescored = try runCommand(
            cairnExecutable,
            [
                "eval", "--model", tinyModel, "--adapter", searched, "--data",
                c.dir.appendingPathComponent("scored.jsonl").path, "--json",
            ])
        let local = (try? JSONValue.parse(rescored.stdout))?.objectValue?["loss"]?.doubleValue ?? .nan
        #expect(abs(local - best) < 2e-3 * best, "one machine \(local) vs the cluster's \(best)")

        // A name that is not in the registry is refused at submit, with the near match.
        let wrong = try c.writeJob(
            data: "scored", job: "wrong", lines: heldLines, steps: 1, batch: 2, seqLen: 24, learningRate: 0.01,
            extra: "mode: evaluate\nadapters: [onw]")
        let refused = try c.cairn("submit", wrong)
        #expect(refused.status != 0 && refused.stderr.contains("did you mean one"), "\(refused.stderr)")
    }

    @Test func publishFindFetchAndTrainFurtherAcrossACoordinatorKill() throws {
        let c = ClusterHarness("registry")
        try c.startCluster(workers: ["w1"])
        let held = try c.writeHeldOut(lines: ["the mat sat on the cat", "three two one"])
        let id = try c.submit(try c.writeJob(steps: 3, extra: "validation_data: \(held)"))
        let first = c.waitForJob(id)
        #expect(first?["state"] == "done", "\(c.logs)")

        // A finished job's adapter by its id (the coordinator's own key publishes), then the same adapter pulled
        // and published as files: one content hash.
        let published = try c.cairn("publish", id, "--name", "tiny/first", "--description", "three steps")
        #expect(published.status == 0 && published.stdout == "tiny/first@1\n", "\(published.stderr)\n\(c.logs)")
        let pulled = c.dir.appendingPathComponent("pulled").path
        #expect(try c.cairn("pull", id, "-o", pulled).status == 0)
        #expect(try c.cairn("publish", pulled, "--name", "copy").stdout == "copy@1\n")
        let listed = try adapters(c)
        #expect(listed.map(\.reference) == ["copy@1", "tiny/first@1"])
        let entry = try #require(listed.last)
        #expect(listed.first?.sha256 == entry.sha256)
        #expect(entry.steps == 3 && entry.baseName == "a.gguf" && entry.job == id && entry.description == "three steps")
        // The job's held-out evaluation is the adapter's score.
        let evalLoss = ClusterHarness.evals(first).last?.loss
        #expect(entry.scores.count == 1 && entry.scores.first?.dataName == "held.jsonl")
        #expect(evalLoss != nil && abs((entry.scores.first?.loss ?? 0) - evalLoss!) < 1e-9)
        // Listing by base: the model on the coordinator, or a prefix of its hash.
        #expect(try adapters(c, "--base", tinyModel).count == 2)
        #expect(try adapters(c, "--base", String(entry.baseHash.prefix(8))).count == 2)
        #expect(try adapters(c, "--base", "00000000").isEmpty)

        // Fetched byte for byte; a misspelt name gets a suggestion.
        let fetched = c.dir.appendingPathComponent("fetched").path
        let fetch = try c.cairn("fetch", "tiny/first", "-o", fetched)
        #expect(fetch.status == 0, "\(fetch.stderr)")
        for name in Publish.peftFiles {
            #expect(
                FileManager.default.contents(atPath: "\(fetched)/\(name)")
                    == FileManager.default.contents(atPath: "\(pulled)/\(name)"), "\(name)")
        }
        let misspelt = try c.cairn("fetch", "tiny/frist", "-o", fetched + "2")
        #expect(misspelt.status != 0 && misspelt.stderr.contains("did you mean tiny/first"), "\(misspelt.stderr)")

        // A client key lists and fetches but may not publish; a publisher key may.
        func enrol(_ role: String, _ name: String) throws -> String {
            let token = try runCommand(cairnExecutable, ["coordinator", "token", "--state", c.state, "--role", role])
            let path = c.dir.appendingPathComponent("\(name).json").path
            let join = try runCommand(
                cairnExecutable,
                [
                    "client", "join", c.endpoint, "--token",
                    token.stdout.trimmingCharacters(in: .whitespacesAndNewlines),
                    "--credentials", path,
                ])
            #expect(join.status == 0, "\(join.stderr)")
            return path
        }
        let laptop = try enrol("client", "laptop")
        let refused = try runCommand(
            cairnExecutable, ["publish", pulled, "--name", "mine", "--credentials", laptop])
        #expect(refused.status != 0 && refused.stderr.contains("not allowed"), "\(refused.stderr)")
        let asClient = try runCommand(cairnExecutable, ["adapters", "--credentials", laptop])
        #expect(asClient.status == 0 && asClient.stdout.contains("tiny/first@1"), "\(asClient.stderr)")
        let author = try enrol("publisher", "author")
        let byAuthor = try runCommand(
            cairnExecutable, ["publish", pulled, "--name", "authored", "--credentials", author])
        #expect(byAuthor.status == 0, "\(byAuthor.stderr)")

        // A job that starts from a published adapter: it trains it further and names it as its parent.
        let next = try c.writeJob(
            data: "data2", job: "next", lines: Self.lines, steps: 2, batch: 4, seqLen: 24, learningRate: 0.01,
            extra: "init_adapter: tiny/first")
        let id2 = try c.submit(next)
        let second = c.waitForJob(id2)
        #expect(second?["state"] == "done", "\(c.logs)")
        let firstLosses = ClusterHarness.losses(first).map(\.loss)
        let secondLosses = ClusterHarness.losses(second).map(\.loss)
        #expect(
            secondLosses.first != nil && firstLosses.first != nil && secondLosses.first! < firstLosses.first!,
            "trained further: \(secondLosses) starts below \(firstLosses)")
        #expect(try c.cairn("publish", id2, "--name", "tiny/second").status == 0)
        let grown = try #require(try adapters(c, "--name", "tiny/second").first)
        #expect(grown.parents == ["tiny/first@1"], "\(grown.json)")
        // `cairn train --init-adapter NAME` on this machine: fetched once into the adapter cache, trained further,
        // its lineage naming the published parent by content hash.
        let home = c.dir.appendingPathComponent("home").path
        let run = c.dir.appendingPathComponent("local-run").path
        let local = try runCommand(
            cairnExecutable,
            [
                "train", "--config", next, "--init-adapter", "tiny/first", "--state", c.state, "--output", run,
                "--steps", "1",
            ], environment: ["CAIRN_HOME": home])
        #expect(local.status == 0, "\(local.stderr)")
        #expect(FileManager.default.fileExists(atPath: "\(home)/adapters/tiny/first@1/adapter_model.safetensors"))
        let lineage = try runCommand(cairnExecutable, ["lineage", run, "--model", tinyModel, "--json"])
        let parent = (try? JSONValue.parse(lineage.stdout))?.objectValue?["lineage"]?.objectValue?["parents"]?
            .arrayValue?.first?.objectValue
        #expect(parent?["sha256"]?.stringValue == entry.sha256, "\(lineage.stdout) \(lineage.stderr)")
        #expect(parent?["name"]?.stringValue == "first@1")

        // An adapter of another base, or a name that is not there, is refused at submit.
        let missing = try c.writeJob(
            data: "data3", job: "missing", lines: Self.lines, steps: 1, batch: 4, seqLen: 24, learningRate: 0.01,
            extra: "init_adapter: tiny/none")
        let refusedJob = try c.cairn("submit", missing)
        #expect(
            refusedJob.status != 0 && refusedJob.stderr.contains("no adapter named tiny/none"), "\(refusedJob.stderr)")

        // Everything survives a SIGKILL of the coordinator.
        c.killCoordinator()
        try c.startCoordinator()
        #expect(try adapters(c).map(\.reference).sorted() == ["authored@1", "copy@1", "tiny/first@1", "tiny/second@1"])
        let again = c.dir.appendingPathComponent("again").path
        #expect(try c.cairn("fetch", "tiny/first@1", "-o", again).status == 0)
        #expect(
            FileManager.default.contents(atPath: "\(again)/adapter_model.safetensors")
                == FileManager.default.contents(atPath: "\(pulled)/adapter_model.safetensors"))
    }
}
