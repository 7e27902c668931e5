import Foundation
import Testing
import ModelFormats
import TestSupport
import Tokenizer

/// llama.cpp's own tokenizer test suite: vocabulary-only GGUF files with inputs (`.inp`, cases separated by
/// `\n__ggml_vocab_test__\n`) and the ids Hugging Face's tokenizers give (`.out`, one line per case), as
/// llama.cpp's test-tokenizer-0 runs them: no BOS, special tokens not parsed. The files come with
/// llama-cpp-python's source distribution, which Scripts/setup --test unpacks; CAIRN_LLAMACPP names that
/// llama.cpp directory.
private let llamaCppDirectory = ProcessInfo.processInfo.environment["CAIRN_LLAMACPP"].flatMap { $0.isEmpty ? nil : $0 }

@Suite(.enabled(if: llamaCppDirectory != nil, "set CAIRN_LLAMACPP to llama.cpp's source directory (Scripts/test does)"))
struct LlamaCppVocabTests {
    static let directory = llamaCppDirectory

    /// The vocabularies of the families Cairn runs, and the other pre-tokenizers llama.cpp tests.
    static let vocabularies = [
        "llama-spm", "phi-3", "llama-bpe", "qwen2", "deepseek-llm", "deepseek-coder", "falcon", "gpt-2", "mpt",
        "starcoder", "refact", "command-r",
    ]

    @Test(arguments: vocabularies)
    func matchesTheExpectedIds(vocabulary: String) throws {
        let base = (Self.directory! as NSString).appendingPathComponent("models/ggml-vocab-\(vocabulary).gguf")
        let tokenizer = try BPETokenizer(gguf: GGUFFile(path: base).metadata)
        let inputs = try String(contentsOfFile: base + ".inp", encoding: .utf8)
            .components(separatedBy: "\n__ggml_vocab_test__\n")
        let outputs = try String(contentsOfFile: base + ".out", encoding: .utf8)
            .split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var passed = 0
        var failures: [String] = []
        for (i, text) in inputs.enumerated() where i < outputs.count {
            let expected = outputs[i].split(separator: " ").compactMap { Int32($0) }
            let ours = tokenizer.encode(text, parseSpecial: false, addSpecialTokens: false)
            if ours == expected {
                passed += 1
            } else {
                failures.append("\(text.debugDescription): \(ours) expected \(expected)")
            }
        }
        print("llama.cpp vocabulary \(vocabulary): \(passed) of \(inputs.count) cases pass")
        #expect(inputs.count >= 30, "\(vocabulary): \(inputs.count) cases")
        #expect(failures.isEmpty, "\(vocabulary): \(failures.count) failures, first: \(failures.prefix(3))")
    }
}
