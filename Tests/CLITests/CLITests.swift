// Drives the `cairn` binary as a user would: output formats, exit codes, and one-line errors for bad input.

import Foundation
import Testing
import ModelFormats
import TestSupport

func cairn(_ arguments: String..., input: String? = nil, home: String? = nil) throws -> CommandResult {
    try cairn(arguments, input: input, home: home)
}

func cairn(_ arguments: [String], input: String? = nil, home: String? = nil) throws -> CommandResult {
    try runCommand(cairnExecutable, arguments, input: input, environment: home.map { ["CAIRN_HOME": $0] } ?? [:])
}

let tinyModel = Fixtures.path("tiny-llama/a.gguf")

@Suite struct CLITests {
    @Test func helpTeachesTheCommands() throws {
        let r = try cairn("--help")
        #expect(r.status == 0)
        for command in ["generate", "eval", "tokenize", "inspect"] { #expect(r.stdout.contains(command)) }
        let g = try cairn("generate", "--help")
        #expect(g.stdout.contains("--raw") && g.stdout.contains("--chat-template") && g.stdout.contains("Example"))
        #expect(try cairn("--version").stdout.hasPrefix("0."))
    }

    @Test func tokenizeJSONAndPlain() throws {
        let r = try cairn("tokenize", "--model", tinyModel, "--text", "hi 42", "--json")
        #expect(r.status == 0, "\(r.stderr)")
        let ids = try #require(try JSONValue.parse(r.stdout).objectValue?["ids"]?.arrayValue).map { $0.intValue! }
        // h i Ġ 4 2 in the tiny vocabulary (specials, Ġ, Ċ, a–z, 0–9, ...).
        #expect(ids == [11, 12, 2, 34, 32])
        #expect(try cairn("tokenize", "--model", tinyModel, "--text", "<|im_start|>hi").stdout == "0 11 12\n")
        #expect(try cairn("tokenize", "--model", tinyModel, "--text-file", "-", input: "ab").stdout == "4 5\n")
    }

    /// A vocabulary-only GGUF file (no weights, as llama.cpp's tokenizer tests ship them) with a SentencePiece
    /// vocabulary: a dummy-prefix space, merges by score, byte fallback for characters without a token.
    @Test func tokenizesWithAVocabularyOnlySentencePieceFile() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let bytes = (0..<256).map { String(format: "<0x%02X>", $0) }
        let pieces = ["<unk>", "<s>", "</s>"] + bytes + ["\u{2581}", "h", "i", "\u{2581}h", "\u{2581}hi"]
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("tokenizer.ggml.model", .string("llama"))
        w.set("tokenizer.ggml.tokens", .array(.string, pieces.map(GGUFValue.string)))
        w.set("tokenizer.ggml.scores", .array(.float32, pieces.indices.map { .float32(-Float($0)) }))
        w.set(
            "tokenizer.ggml.token_type",
            .array(.int32, pieces.indices.map { .int32($0 == 0 ? 2 : $0 < 3 ? 3 : $0 < 259 ? 6 : 1) }))
        let path = dir.appendingPathComponent("vocab.gguf").path
        try w.write(to: path)
        // "hi h!": ▁hi ▁h, then "!" (0x21) through its byte token.
        let r = try cairn("tokenize", "--model", path, "--text", "hi h!", "--add-bos")
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "1 263 262 36\n")
    }

    @Test func generateStreamsAndReportsJSON() throws {
        let json = try cairn("generate", "--model", tinyModel, "--prompt", "hello", "--max-tokens", "5", "--json")
        #expect(json.status == 0, "\(json.stderr)")
        let o = try #require(try JSONValue.parse(json.stdout).objectValue)
        #expect(o["tokens"]?.arrayValue?.count == 5 && o["stop_reason"] == "length")
        let streamed = try cairn("generate", "--model", tinyModel, "--prompt", "hello", "--max-tokens", "5")
        #expect(streamed.stdout == o["text"]!.stringValue! + "\n")
        let raw = try cairn(
            "generate", "--model", tinyModel, "--prompt", "hello", "--max-tokens", "5", "--raw", "--json")
        #expect(try JSONValue.parse(raw.stdout).objectValue?["prompt_tokens"] == 5)
    }

    @Test func evalPrintsLossTokensAndPerplexity() throws {
        let r = try cairn("eval", "--model", tinyModel, "--text", "the cat sat on the mat", "--json")
        #expect(r.status == 0, "\(r.stderr)")
        let o = try #require(try JSONValue.parse(r.stdout).objectValue)
        let loss = try #require(o["loss"]?.doubleValue)
        #expect(o["tokens"] == 19, "22 characters, two 'th' merges, the first token unpredicted")
        #expect(abs(try #require(o["perplexity"]?.doubleValue) - exp(loss)) < 1e-9 * exp(loss))
    }

    @Test func inspectDescribesEveryFormat() throws {
        let gguf = try JSONValue.parse(try cairn("inspect", tinyModel, "--json").stdout).objectValue!
        #expect(gguf["format"]?.stringValue?.hasPrefix("GGUF v3") == true)
        #expect(gguf["tensors"]?.arrayValue?.count == 1 + 2 * 9 + 1)
        #expect(gguf["summary"]?.objectValue?["layers"] == 2)
        let hf = try cairn("inspect", Fixtures.path("tiny-llama/b-hf"))
        #expect(
            hf.status == 0 && hf.stdout.contains("Hugging Face model directory") && hf.stdout.contains("lm_head.weight")
        )
        let st = try cairn("inspect", Fixtures.path("safetensors/reference.safetensors"))
        #expect(
            st.stdout.contains("q_proj.lora_A") && st.stdout.contains("format: pt") == false
                && st.stdout.contains("\"pt\""))
    }

    /// Adapters: a PEFT directory and a GGUF LoRA file (as llama.cpp's converter writes them).
    @Test func inspectDescribesAdapters() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let peft = dir.appendingPathComponent("peft")
        try FileManager.default.createDirectory(at: peft, withIntermediateDirectories: true)
        let config: JSONValue = [
            "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
            "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        ]
        try Data(config.serialized(pretty: true).utf8).write(to: peft.appendingPathComponent("adapter_config.json"))
        var st = SafetensorsWriter()
        st.metadata = ["format": "pt"]
        st.add(
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", shape: [4, 32],
            floats: [Float](repeating: 0.5, count: 128))
        st.add(
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", shape: [32, 4],
            floats: [Float](repeating: 0, count: 128))
        try st.write(to: peft.appendingPathComponent("adapter_model.safetensors").path)
        let p = try cairn("inspect", peft.path)
        #expect(p.status == 0, "\(p.stderr)")
        #expect(
            p.stdout.contains("PEFT adapter directory") && p.stdout.contains("r: 4")
                && p.stdout.contains("lora_alpha: 8"))
        #expect(p.stdout.contains("q_proj.lora_A.weight"))

        var gguf = GGUFWriter()
        gguf.set("general.architecture", .string("llama"))
        gguf.set("general.type", .string("adapter"))
        gguf.set("adapter.type", .string("lora"))
        gguf.set("adapter.lora.alpha", .float32(16))
        gguf.addTensor(name: "blk.0.attn_q.weight.lora_a", ne: [32, 8], floats: [Float](repeating: 0, count: 256))
        gguf.addTensor(name: "blk.0.attn_q.weight.lora_b", ne: [8, 32], floats: [Float](repeating: 0, count: 256))
        let lora = dir.appendingPathComponent("lora.gguf").path
        try gguf.write(to: lora)
        let g = try JSONValue.parse(try cairn("inspect", lora, "--json").stdout).objectValue!["summary"]!.objectValue!
        #expect(g["adapter"] == "lora" && g["lora alpha"] == .number(16) && g["ranks"] == [8])
    }

    @Test func badInputIsOneClearLineAndAFailingStatus() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let corrupt = dir.appendingPathComponent("broken.gguf").path
        var bytes = try Data(contentsOf: URL(fileURLWithPath: tinyModel))
        bytes = bytes.prefix(bytes.count / 2)
        try bytes.write(to: URL(fileURLWithPath: corrupt))
        for args in [["inspect", corrupt], ["generate", "--model", corrupt, "--prompt", "x"]] {
            let r = try runCommand(cairnExecutable, args)
            #expect(r.status == 1)
            #expect(r.stderr.contains(corrupt) && r.stderr.contains("truncated"), "\(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1, "one line: \(r.stderr)")
        }
        let missing = try cairn("generate", "--model", "no-such-model", "--prompt", "x", home: dir.path)
        #expect(missing.status == 1 && missing.stderr.contains("no model of that name"))
        let noTokenizer = try cairn("eval", "--model", Fixtures.path("tiny-llama/b.gguf"), "--text", "x")
        #expect(noTokenizer.status == 1 && noTokenizer.stderr.contains("tokenizer.ggml.model"))
        let usage = try cairn("generate", "--model", tinyModel, "--prompt", "x", "--threads", "0")
        #expect(usage.status == 64 && usage.stderr.contains("--threads"))
        let template = try cairn("generate", "--model", tinyModel, "--prompt", "x", "--chat-template", "nope")
        #expect(template.status == 64 && template.stderr.contains("chatml"))
    }
}

/// The README's main job on the real model; runs in release from Scripts/test.
@Suite(
    .enabled(
        if: ProcessInfo.processInfo.environment["CAIRN_REAL_MODEL"] != nil, "set CAIRN_REAL_MODEL (Scripts/test does)"))
struct RealModelCLITests {
    @Test func answersTheFranceQuestion() throws {
        let r = try cairn("generate", "--prompt", "What is the capital of France?")
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "The capital of France is Paris.\n")
    }

    @Test func tokenizesAndEvaluates() throws {
        #expect(try cairn("tokenize", "--text", "Hello world", "--json").stdout == "{\"ids\":[19556,905]}\n")
        let r = try cairn("eval", "--text-file", Fixtures.path("smollm2/eval-text.txt"), "--json")
        let reference = try HFModelDirectory.readJSON(Fixtures.path("smollm2/reference.json")).objectValue!["eval"]!
            .objectValue!
        let loss = try #require(try JSONValue.parse(r.stdout).objectValue?["loss"]?.doubleValue)
        #expect(abs(loss - reference["loss"]!.doubleValue!) <= 1e-4 * loss)
    }

    // Training the real model, its answers after, the held-out loss and the fused model: the README's tutorial
    // (RealModelReadmeTests) runs that as written and measures it.
}
