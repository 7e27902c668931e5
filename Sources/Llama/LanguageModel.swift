// LanguageModel: what `--model` names, resolved and loaded: the network, its tokenizer and chat template.
//
// `--model` takes a GGUF file, a Hugging Face model directory (config.json + safetensors, sharded or not),
// or the short name of a model in the cache: `$CAIRN_HOME/models/<name>.gguf` or `<name>/`, with
// CAIRN_HOME defaulting to ~/.cache/cairn. Scripts/setup fills the cache (smollm2-135m).

import Foundation
import ModelFormats
import Tokenizer

/// Where a model's files are.
public enum ModelSource: Sendable, Equatable, CustomStringConvertible {
    /// A GGUF file.
    case gguf(String)
    /// A Hugging Face model directory.
    case huggingFace(String)

    /// The file or directory.
    public var path: String {
        switch self {
        case .gguf(let p), .huggingFace(let p): p
        }
    }

    public var description: String { path }

    /// Cairn's data directory: `$CAIRN_HOME`, else `~/.cache/cairn`.
    public static var home: String {
        if let h = ProcessInfo.processInfo.environment["CAIRN_HOME"], !h.isEmpty { return h }
        return (UserHome.path as NSString).appendingPathComponent(".cache/cairn")
    }

    /// The model cache directory.
    public static var cacheDirectory: String { (home as NSString).appendingPathComponent("models") }

    /// Names of the models in the cache.
    public static func cachedNames() -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: cacheDirectory)) ?? []
        return entries.compactMap { e in
            if e.hasSuffix(".gguf") { return String(e.dropLast(5)) }
            var isDirectory: ObjCBool = false
            let p = (cacheDirectory as NSString).appendingPathComponent(e)
            return FileManager.default.fileExists(atPath: p, isDirectory: &isDirectory) && isDirectory.boolValue
                ? e : nil
        }.sorted()
    }

    /// Resolves a `--model` argument.
    ///
    /// - Throws: `FormatError` `.notFound` saying what was looked for and what the cache holds.
    public static func resolve(_ spec: String) throws(FormatError) -> ModelSource {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: spec, isDirectory: &isDirectory) {
            if isDirectory.boolValue {
                guard fm.fileExists(atPath: (spec as NSString).appendingPathComponent("config.json")) else {
                    throw FormatError(
                        .missing, path: spec,
                        "is a directory without config.json; expected a Hugging Face model directory")
                }
                return .huggingFace(spec)
            }
            if spec.hasSuffix(".safetensors") {
                throw FormatError(
                    .unsupported, path: spec, "pass the model's directory (with config.json), not one safetensors file")
            }
            return .gguf(spec)
        }
        if !spec.contains("/") {
            let base = (cacheDirectory as NSString).appendingPathComponent(spec)
            if fm.fileExists(atPath: base + ".gguf") { return .gguf(base + ".gguf") }
            if fm.fileExists(atPath: (base as NSString).appendingPathComponent("config.json")) {
                return .huggingFace(base)
            }
        }
        let cached = cachedNames()
        throw FormatError(
            .notFound, path: spec,
            "no such file or directory, and no model of that name in \(cacheDirectory) "
                + (cached.isEmpty
                    ? "(the cache is empty; Scripts/setup fetches smollm2-135m)"
                    : "(cached: \(cached.joined(separator: ", ")))"))
    }
}

/// A model ready to run: network, tokenizer, chat template.
public final class LanguageModel: @unchecked Sendable {
    /// Where it was loaded from.
    public let source: ModelSource
    /// The network.
    public let model: LlamaModel
    /// The tokenizer, when the model has one.
    public let tokenizer: BPETokenizer?
    /// Why the tokenizer could not be loaded, when it could not.
    public let tokenizerProblem: FormatError?
    /// The model's Jinja chat template, if it ships one.
    public let chatTemplateSource: String?
    /// Notes about the adapters applied (a different base model, say), for the CLI to show.
    public internal(set) var adapterWarnings: [String] = []

    init(
        source: ModelSource, model: LlamaModel, tokenizer: Result<BPETokenizer, FormatError>,
        chatTemplateSource: String?
    ) {
        self.source = source
        self.model = model
        var tokenizer = tokenizer
        if case .success(let t) = tokenizer, t.vocabularySize > model.config.vocabSize {
            // Ids past the embedding table would index outside it: refuse the pair rather than run it.
            tokenizer = .failure(
                FormatError(
                    .invalidValue, path: source.path, field: "tokenizer",
                    "has \(t.vocabularySize) tokens but the model's embedding has \(model.config.vocabSize) rows; "
                        + "the tokenizer belongs to another model"))
        }
        switch tokenizer {
        case .success(let t):
            self.tokenizer = t
            tokenizerProblem = nil
        case .failure(let e):
            self.tokenizer = nil
            tokenizerProblem = e
        }
        self.chatTemplateSource = chatTemplateSource
    }

    /// Resolves and loads `--model`, with adapters merged into its weights.
    ///
    /// - Parameters:
    ///   - adapters: PEFT directories or GGUF LoRA files, applied in order.
    ///   - precision: How the base's matrices are held (`BasePrecision`).
    /// - Throws: `FormatError` for a missing, invalid or unsupported model or adapter.
    public static func load(
        _ spec: String, adapters: [String] = [], precision: BasePrecision = .f32
    ) throws(FormatError) -> LanguageModel {
        try load(ModelSource.resolve(spec), adapters: adapters, precision: precision)
    }

    /// Loads a model from its files, with adapters merged into its weights.
    public static func load(
        _ source: ModelSource, adapters: [String] = [], precision: BasePrecision = .f32
    ) throws(FormatError) -> LanguageModel {
        if precision == .q, let first = adapters.first {
            throw FormatError(
                .unsupported, path: first,
                "adapters are merged into fp32 weights; load the base with precision f32 to apply them")
        }
        let base = try loadBase(source, precision: precision)
        var warnings: [String] = []
        var identity: String?
        for path in adapters {
            let (adapter, provenance) = try LoRAAdapter.load(path: path, model: base.weights.config)
            if let expected = provenance.baseModelHash {
                if identity == nil { identity = try FileHash.modelIdentity(path: source.path) }
                if expected != identity {
                    warnings.append(
                        "\(path) was trained on another base (\(provenance.baseModelName ?? "sha256 " + expected.prefix(12))); "
                            + "its shapes fit, so it is applied anyway")
                }
            }
            adapter.merge(into: base.weights)
        }
        let lm = LanguageModel(
            source: source, model: LlamaModel(weights: base.weights), tokenizer: base.tokenizer,
            chatTemplateSource: base.template)
        lm.adapterWarnings = warnings
        return lm
    }

    /// The weights, tokenizer and chat template of a model's files.
    static func loadBase(_ source: ModelSource, precision: BasePrecision) throws(FormatError) -> (
        weights: LlamaWeights, tokenizer: Result<BPETokenizer, FormatError>, template: String?
    ) {
        switch source {
        case .gguf(let path):
            let file = try GGUFFile(path: path)
            let config = try LlamaConfig(gguf: file)
            let permuted = LlamaConfig.permutedArchitectures.contains(config.architecture)
            let weights = try LlamaWeights.load(
                from: file, config: config, naming: .gguf(permutedQK: permuted), precision: precision)
            let (tokenizer, template) = try Self.tokenizer(gguf: file)
            return (weights, tokenizer, template)
        case .huggingFace(let path):
            let directory = try HFModelDirectory(path: path)
            let config = try LlamaConfig(
                huggingFace: directory.config, path: (path as NSString).appendingPathComponent("config.json"))
            let weights = try LlamaWeights.load(
                from: directory, config: config, naming: .huggingFace, precision: precision)
            let (tokenizer, template) = Self.tokenizer(huggingFace: directory)
            return (weights, tokenizer, template)
        }
    }

    /// The tokenizer of a GGUF file's metadata (or why it has none) and its chat template.
    static func tokenizer(gguf file: GGUFFile) throws(FormatError) -> (Result<BPETokenizer, FormatError>, String?) {
        let tokenizer: Result<BPETokenizer, FormatError>
        do throws(FormatError) {
            tokenizer = .success(try BPETokenizer(gguf: file.metadata))
        } catch {
            tokenizer = .failure(error)
        }
        return (tokenizer, try file.metadata.string("tokenizer.chat_template"))
    }

    /// The tokenizer of a Hugging Face directory (or why it has none) and its chat template.
    static func tokenizer(huggingFace directory: HFModelDirectory) -> (Result<BPETokenizer, FormatError>, String?) {
        let path = directory.path
        let tokenizer: Result<BPETokenizer, FormatError>
        if let json = directory.sideFile("tokenizer.json") {
            do throws(FormatError) {
                tokenizer = .success(
                    try BPETokenizer(
                        tokenizerJSON: json, tokenizerConfig: directory.tokenizerConfig,
                        generationConfig: directory.generationConfig))
            } catch {
                tokenizer = .failure(error)
            }
        } else {
            tokenizer = .failure(
                FormatError(
                    .missing, path: path, "has no tokenizer.json; text commands need one (token ids still work)"))
        }
        // A string, or (newer tokenizer_config.json) a list of {name, template} with a "default" entry.
        var template: String?
        switch directory.tokenizerConfig?["chat_template"] {
        case .string(let text): template = text
        case .array(let items):
            template =
                items.compactMap(\.objectValue).first { $0["name"]?.stringValue == "default" }?["template"]?
                .stringValue
        default: template = nil
        }
        if template == nil, let file = directory.sideFile("chat_template.jinja") {
            template = try? String(contentsOfFile: file, encoding: .utf8)
        }
        return (tokenizer, template)
    }

    /// The tokenizer, or the reason there is none.
    public func requireTokenizer() throws(FormatError) -> BPETokenizer {
        if let tokenizer { return tokenizer }
        throw tokenizerProblem ?? FormatError(.missing, path: source.path, "has no tokenizer")
    }

    /// The chat template: `override` when given (a name from `ChatTemplate.names`), else the model's own.
    ///
    /// - Throws: `ChatTemplateError` when there is none or it is not recognised.
    public func chatTemplate(override: String? = nil) throws(ChatTemplateError) -> ChatTemplate {
        try Self.chatTemplate(override: override, source: chatTemplateSource)
    }

    /// The chat template named by `override`, else the one recognised in a model's Jinja `source`.
    public static func chatTemplate(override: String?, source chatTemplateSource: String?) throws(ChatTemplateError)
        -> ChatTemplate
    {
        if let override {
            guard let t = ChatTemplate(name: override) else {
                throw .unrecognised("\"\(override)\" (not a template name)")
            }
            return t
        }
        guard let source = chatTemplateSource else { throw .unrecognised("missing (the model ships no chat template)") }
        return try ChatTemplate(jinja: source)
    }
}

extension ModelSource {
    /// The tokenizer and chat template (Jinja source, if any), without loading the weights. A GGUF file may hold
    /// a vocabulary only (as llama.cpp's tokenizer tests ship them).
    public func tokenizer() throws(FormatError) -> (tokenizer: BPETokenizer, chatTemplate: String?) {
        switch self {
        case .gguf(let path):
            let file = try GGUFFile(path: path)
            let (result, template) = try LanguageModel.tokenizer(gguf: file)
            let tokenizer = try result.get()
            if !file.tensors.isEmpty {
                guard tokenizer.vocabularySize <= (try LlamaConfig(gguf: file)).vocabSize else {
                    throw FormatError(
                        .invalidValue, path: path, field: "tokenizer", "has more tokens than the model's embedding")
                }
            }
            return (tokenizer, template)
        case .huggingFace(let path):
            let (result, template) = LanguageModel.tokenizer(huggingFace: try HFModelDirectory(path: path))
            return (try result.get(), template)
        }
    }

    /// The model's architecture, read from its metadata or config.json without loading the weights.
    public func config() throws(FormatError) -> LlamaConfig {
        switch self {
        case .gguf(let path): return try LlamaConfig(gguf: GGUFFile(path: path))
        case .huggingFace(let path):
            let configPath = (path as NSString).appendingPathComponent("config.json")
            guard let object = try HFModelDirectory.readJSON(configPath).objectValue else {
                throw FormatError(.invalidValue, path: configPath, "must be a JSON object")
            }
            return try LlamaConfig(huggingFace: object, path: configPath)
        }
    }
}
