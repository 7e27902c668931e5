// `cairn merge`, `diff` and `lineage` on the tiny model's PEFT fixtures.

import Foundation
import Llama
import TensorKernels
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

    /// `merge --search`: the uniform merge first, every candidate's loss printed, the chosen point no worse than
    /// the uniform merge, the search recorded in the lineage, and the written adapter scoring (by `cairn eval`,
    /// merged into the weights) what the search measured (applied as LoRA).
    @Test func searchedMergesBeatOrMatchTheUniformOneAndRecordTheSearch() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let held = dir.appendingPathComponent("held.jsonl").path
        try Data(
            ["the mat sat on the cat", "one two three four", "red green blue"].map {
                JSONValue.object(["text": .string($0)]).serialized() + "\n"
            }.joined().utf8
        ).write(to: URL(fileURLWithPath: held))
        let inputs = ["peft/final", "peft/mixed", "peft/init"].map { Fixtures.path($0) }
        let out = dir.appendingPathComponent("searched").path
        let r = try cairn(
            ["merge"] + inputs + [
                "--method", "ties", "--search", "--data", held, "--budget", "14", "--model", tinyModel, "-o", out,
                "--json",
            ])
        #expect(r.status == 0, "\(r.stderr)")
        let candidates = r.stderr.split(separator: "\n").filter { $0.contains("candidate") && $0.contains("→ loss") }
        #expect(candidates.count >= 5 && candidates.count <= 14, "\(r.stderr)")
        let search = try #require((try JSONValue.parse(r.stdout)).objectValue?["search"]?.objectValue, "\(r.stdout)")
        let best = try #require(search["loss"]?.doubleValue)
        let uniform = try #require(search["uniform_loss"]?.doubleValue)
        #expect(best <= uniform && search["evaluations"]?.intValue == candidates.count)
        #expect(search["data_sha256"]?.stringValue == (try FileHash.sha256(file: held)))
        #expect(search["inputs_alone"]?.arrayValue?.count == 3)
        // The lineage carries the search and the chosen weights.
        let lineage = try cairn("lineage", out, "--model", tinyModel, "--json")
        let tree = try JSONValue.parse(lineage.stdout).objectValue?["lineage"]?.objectValue
        #expect(tree?["search"]?.objectValue?["method"] == "nelder-mead")
        let chosen = (search["candidates"]?.arrayValue ?? []).compactMap(\.objectValue).min {
            ($0["loss"]?.doubleValue ?? 0) < ($1["loss"]?.doubleValue ?? 0)
        }
        let weights = (tree?["parents"]?.arrayValue ?? []).compactMap { $0.objectValue?["weight"]?.doubleValue }
        #expect(weights == (chosen?["weights"]?.arrayValue ?? []).compactMap(\.doubleValue), "\(weights)")
        // The written adapter scores what the search measured.
        let scored = try cairn("eval", "--model", tinyModel, "--adapter", out, "--data", held, "--json")
        #expect(scored.status == 0, "\(scored.stderr)")
        let evalLoss = try #require((try JSONValue.parse(scored.stdout)).objectValue?["loss"]?.doubleValue)
        #expect(abs(evalLoss - best) < 1e-3 * best, "eval \(evalLoss) vs search \(best)")
        // --search needs --data, and finds the weights itself.
        let noData = try cairn(["merge"] + inputs + ["--method", "linear", "--search", "-o", out])
        #expect(noData.status != 0 && noData.stderr.contains("--data"), "\(noData.stderr)")
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

@Suite struct FuseCLITests {
    /// Fusing an adapter into the tiny model gives the same model: bit-identical loss in f32, within rounding in
    /// f16 and q8_0, and the same greedy text.
    @Test func fusedModelsMatchTheAdapterAppliedAtLoad() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let adapter = Fixtures.path("peft/final")
        let text = dir.appendingPathComponent("t.txt").path
        try Data("the cat sat on the mat, and a dog ran in the park".utf8).write(to: URL(fileURLWithPath: text))
        func loss(_ args: [String]) throws -> Double {
            let r = try cairn(["eval", "--text-file", text, "--json"] + args)
            return try #require((try? JSONValue.parse(r.stdout))?.objectValue?["loss"]?.doubleValue, "\(r.stderr)")
        }
        let reference = try loss(["--model", tinyModel, "--adapter", adapter])
        for (type, tolerance) in [("f32", 1e-7), ("f16", 1e-3), ("q8_0", 1e-2)] {
            let out = dir.appendingPathComponent("fused-\(type).gguf").path
            let r = try cairn(["fuse", "--model", tinyModel, "--adapter", adapter, "--type", type, "-o", out])
            #expect(r.status == 0, "\(r.stderr)")
            let fused = try loss(["--model", out])
            #expect(abs(fused - reference) <= tolerance * reference, "\(type): \(fused) vs \(reference)")
        }
        let a = try cairn([
            "generate", "--model", tinyModel, "--adapter", adapter, "--raw", "--prompt", "th", "--max-tokens", "6",
        ])
        let b = try cairn([
            "generate", "--model", dir.appendingPathComponent("fused-f32.gguf").path, "--raw", "--prompt", "th",
            "--max-tokens", "6",
        ])
        #expect(a.stdout == b.stdout && a.status == 0)
        let inspected = try cairn(["inspect", dir.appendingPathComponent("fused-q8_0.gguf").path, "--no-tensors"])
        #expect(inspected.stdout.contains("cairn.fused"), "\(inspected.stdout)")
    }

    /// A Hugging Face directory written by fuse loads back as exactly the weights the adapter gives at load time
    /// (names, Q/K row order, config.json), from a GGUF base and from a Hugging Face base, whose side files are
    /// copied.
    @Test func fusedDirectoriesLoadAsTheAdaptedModel() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let adapter = Fixtures.path("peft/final")
        let expected = try LanguageModel.load(.gguf(tinyModel), adapters: [adapter]).model.weights
        func weights(_ path: String) throws -> [Float] {
            let w = try LanguageModel.load(.huggingFace(path)).model.weights
            return withExtendedLifetime(w) { Array(w.storage.buffer) }
        }
        // A Hugging Face base with a generation config beside it.
        let hfBase = dir.appendingPathComponent("base-hf").path
        try FileManager.default.copyItem(atPath: Fixtures.path("tiny-llama/a-hf"), toPath: hfBase)
        let generation = Data(#"{"bos_token_id": 1, "eos_token_id": 2}"#.utf8)
        try generation.write(to: URL(fileURLWithPath: hfBase + "/generation_config.json"))
        for (base, name) in [(tinyModel, "from-gguf"), (hfBase, "from-hf")] {
            let out = dir.appendingPathComponent(name).path
            let r = try cairn(["fuse", "--model", base, "--adapter", adapter, "--type", "f32", "-o", out])
            #expect(r.status == 0, "\(r.stderr)")
            #expect(try weights(out) == Array(expected.storage.buffer), "\(name)")
            let bf16 = out + "-bf16"
            #expect(try cairn(["fuse", "--model", base, "--adapter", adapter, "-o", bf16]).status == 0)
            #expect(relativeL2(try weights(bf16), Array(expected.storage.buffer)) < 1e-2, "\(name) bf16")
            let metadata = try SafetensorsFile(path: out + "/model.safetensors").metadata
            #expect(metadata["cairn.fused"]?.contains("sha256") == true, "\(metadata)")
        }
        let copied = try Data(contentsOf: dir.appendingPathComponent("from-hf/generation_config.json"))
        #expect(copied == generation)
        // What cannot be written says why.
        let gguf = try cairn(["fuse", "--model", hfBase, "--adapter", adapter, "-o", dir.path + "/x.gguf"])
        #expect(gguf.status != 0 && gguf.stderr.contains("GGUF output takes its tokenizer"), "\(gguf.stderr)")
        let q8 = try cairn([
            "fuse", "--model", tinyModel, "--adapter", adapter, "--type", "q8_0", "-o", dir.path + "/y",
        ])
        #expect(q8.status != 0 && q8.stderr.contains("q8_0 is a GGUF type"), "\(q8.stderr)")
    }
}

/// `cairn fuse` of a PEFT adapter into each family's GGUF base, written as GGUF and as a Hugging Face directory
/// (whose config.json Cairn writes for the family): both load again and give the logits of base + adapter.
@Suite struct FamilyFuseTests {
    @Test(arguments: ["llama3", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3"])
    func fusedModelsReloadWithTheAdaptersLogits(family: String) throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let base = Fixtures.path("families/\(family)/model.gguf")
        let adapter = Fixtures.path("families/\(family)/peft")
        let tokens: [Int32] = [1, 5, 9, 33, 2, 7, 63, 0, 14, 14, 40, 3]
        func logits(_ path: String, adapters: [String] = []) throws -> [Float] {
            let model = try LanguageModel.load(path, adapters: adapters).model
            let state = InferenceState(config: model.config, batch: 1, capacity: 12, maxChunk: 12)
            let hidden = tokens.withUnsafeBufferPointer {
                model.forward(tokens: $0.baseAddress!, count: 12, state: state)
            }
            let out = FloatBuffer(count: 12 * model.config.vocabSize)
            model.logits(hidden: hidden, rows: 12, into: out.pointer)
            return out.array
        }
        let expected = try logits(base, adapters: [adapter])
        for (output, type) in [("fused.gguf", "f32"), ("fused-hf", "f32")] {
            let path = dir.appendingPathComponent(output).path
            let r = try cairn("fuse", "--model", base, "--adapter", adapter, "--type", type, "-o", path)
            #expect(r.status == 0, "\(r.stderr)")
            expectClose(try logits(path), expected, tolerance: Tolerance.reordered, "\(family) \(output)")
        }
    }
}

/// Cairn's exports of each family's PEFT adapter, as the tools people load them with saw them
/// (Scripts/fixtures/family_exports.py): today's exports are byte for byte those files; PEFT's loss on Cairn's
/// PEFT export is Cairn's; llama.cpp's logits with Cairn's GGUF LoRA are Cairn's; and the GGUF LoRA llama.cpp's
/// own converter makes from the PEFT adapter loads in Cairn with PEFT's loss.
@Suite struct FamilyExportTests {
    static func loss(_ model: LlamaModel, _ tokens: [Int32]) -> Double {
        let batch = TrainingBatch(rows: [Array(tokens[0..<12]), Array(tokens[12..<24])])
        let ws = TrainingWorkspace(
            model: model.config, adapter: LoRAAdapter(model: model.config, modules: []), batch: 2, length: 12,
            recompute: false)
        return model.trainingStep(
            batch: batch, adapter: LoRAAdapter(model: model.config, modules: []), gradients: nil, workspace: ws
        ).mean
    }

    @Test(arguments: ["llama3", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3"])
    func exportsLoadInPEFTAndLlamaCpp(family: String) throws {
        let directory = Fixtures.path("families/\(family)")
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let model = directory + "/model.gguf"
        let peft = dir.appendingPathComponent("peft").path
        let gguf = dir.appendingPathComponent("lora.gguf").path
        #expect(try cairn("export", directory + "/peft", "--model", model, "--format", "peft", "-o", peft).status == 0)
        #expect(try cairn("export", directory + "/peft", "--model", model, "--format", "gguf", "-o", gguf).status == 0)
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            #expect(
                try Data(contentsOf: URL(fileURLWithPath: peft + "/" + file))
                    == Data(contentsOf: URL(fileURLWithPath: directory + "/cairn-export/" + file)), "\(family) \(file)")
        }
        #expect(
            try Data(contentsOf: URL(fileURLWithPath: gguf))
                == Data(contentsOf: URL(fileURLWithPath: directory + "/cairn-export.gguf")), "\(family) GGUF LoRA")
        let exports = try SafetensorsFile(path: directory + "/exports.safetensors")
        let reference = try SafetensorsFile(path: directory + "/reference.safetensors")
        let raw = reference.data(for: try #require(reference.tensor(named: "tokens")))
        let tokens = (0..<raw.count / 4).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self) }
        // PEFT on Cairn's PEFT export.
        let peftLoss = try #require(Double(exports.metadata["peft_loss"] ?? ""))
        let withExport = try LanguageModel.load(directory + "/hf", adapters: [directory + "/cairn-export"]).model
        #expect(abs(Self.loss(withExport, tokens) - peftLoss) < 1e-4, "\(family): PEFT \(peftLoss)")
        // llama.cpp with Cairn's GGUF LoRA, first row.
        let tuned = try LanguageModel.load(model, adapters: [directory + "/cairn-export.gguf"]).model
        let first = Array(tokens[0..<12])
        let state = InferenceState(config: tuned.config, batch: 1, capacity: 12, maxChunk: 12)
        let hidden = first.withUnsafeBufferPointer { tuned.forward(tokens: $0.baseAddress!, count: 12, state: state) }
        let logits = FloatBuffer(count: 12 * tuned.config.vocabSize)
        tuned.logits(hidden: hidden, rows: 12, into: logits.pointer)
        let llamaCpp = try #require(exports.storedTensor(named: "lora")).floats()
        // ggml's CPU GELU reads an fp16 table (GGML_GELU_FP16), so Gemma's logits in llama.cpp sit about 6e-4
        // (relative) from transformers' and Cairn's, which agree within 1e-4 (FamilyTests).
        let tolerance: Float = family.hasPrefix("gemma") ? 1e-3 : Tolerance.reference
        expectClose(
            logits.array, llamaCpp, tolerance: tolerance, "\(family): llama.cpp's logits with Cairn's GGUF LoRA")
        // llama.cpp's converter's GGUF LoRA, in Cairn.
        let loraLoss = try #require(Double(reference.metadata["lora_loss"] ?? ""))
        let converted = try LanguageModel.load(model, adapters: [directory + "/llamacpp-lora.gguf"]).model
        #expect(abs(Self.loss(converted, tokens) - loraLoss) < 1e-4, "\(family): llama.cpp's converter's LoRA")
    }
}
