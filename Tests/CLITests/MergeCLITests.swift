// `cairn merge`, `diff` and `lineage` on the tiny model's PEFT fixtures.

import Foundation
import ModelFormats
import TestSupport
import Testing

@Suite struct MergeCLITests {
    @Test func mergesRecordLineageThatPrintsAsATree() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let a = Fixtures.path("peft/final")
        let b = Fixtures.path("peft/mixed")
        let first = dir.appendingPathComponent("first").path
        let r1 = try cairn(
            "merge", a, b, "--method", "ties", "--density", "0.5", "--weights", "1,0.5", "--model", tinyModel, "-o",
            first)
        #expect(r1.status == 0, "\(r1.stderr)")
        #expect(r1.stderr.contains("spectral energy kept"))
        let second = dir.appendingPathComponent("second.gguf").path
        let r2 = try cairn("merge", first, a, "--method", "cat", "--model", tinyModel, "--format", "gguf", "-o", second)
        #expect(r2.status == 0, "\(r2.stderr)")
        let tree = try cairn("lineage", second, "--model", tinyModel)
        #expect(tree.status == 0, "\(tree.stderr)")
        let lines = tree.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("second.gguf [cat]") == true, "\(tree.stdout)")
        #expect(lines.contains { $0.contains("├── first [ties, density 0.5]") }, "\(tree.stdout)")
        #expect(lines.contains { $0.contains("│   └── mixed") && $0.contains("× 0.5") }, "\(tree.stdout)")
        // The merged adapter generates (it loads like any other).
        let run = try cairn(
            "generate", "--model", tinyModel, "--adapter", second, "--raw", "--prompt", "th", "--max-tokens", "4")
        #expect(run.status == 0, "\(run.stderr)")
    }

    @Test func diffComparesModulesAndAnAdapterWithItselfHasCosineOne() throws {
        let a = Fixtures.path("peft/final")
        let r = try cairn("diff", a, a, "--model", tinyModel, "--json")
        #expect(r.status == 0, "\(r.stderr)")
        let rows = (try JSONValue.parse(r.stdout)).arrayValue ?? []
        #expect(!rows.isEmpty)
        for row in rows.compactMap(\.objectValue) {
            let c = row["cosine"]?.doubleValue ?? 0
            #expect(abs(c - 1) < 1e-4, "\(row)")
            #expect(row["norm_a"] == row["norm_b"])
        }
    }

    @Test func badInputsAreNamed() throws {
        let missing = try cairn(
            "merge", "/nonexistent/adapter", "--method", "linear", "--model", tinyModel, "-o", "/tmp/x")
        #expect(missing.status != 0 && missing.stderr.contains("/nonexistent/adapter"), "\(missing.stderr)")
        let method = try cairn("merge", Fixtures.path("peft/final"), "--method", "average", "-o", "/tmp/x")
        #expect(method.status != 0 && method.stderr.contains("--method must be one of"), "\(method.stderr)")
        // An adapter that records its base (cairn train does) is refused for another base unless forced.
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let data = try TrainData.write(dir)
        let run = dir.appendingPathComponent("run").path
        let train = try cairn(
            "train", "--model", tinyModel, "--data", data, "--output", run, "--steps", "1", "--seq-len", "24", "--rank",
            "4")
        #expect(train.status == 0, "\(train.stderr)")
        let otherBase = Fixtures.path("tiny-llama/b.gguf")
        let out = dir.appendingPathComponent("m").path
        let refused = try cairn("merge", run, "--method", "linear", "--model", otherBase, "-o", out)
        #expect(refused.status != 0 && refused.stderr.contains("--force"), "\(refused.stderr)")
        let forced = try cairn("merge", run, "--method", "linear", "--model", otherBase, "--force", "-o", out)
        #expect(forced.status == 0, "\(forced.stderr)")
    }
}
