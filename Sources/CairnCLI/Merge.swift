// cairn merge: several adapters of one base into one, exactly in ΔW space.

import Adapters
import ArgumentParser
import Foundation
import Llama
import ModelFormats
import Training
import Wire

/// One adapter in a lineage tree, named after its file or directory.
func lineageNode(path: String, provenance: AdapterProvenance, hash: String?) -> JSONObject {
    provenance.lineageNode(name: (path as NSString).lastPathComponent, hash: hash)
}

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge adapters trained on the same base into one (exactly, in ΔW space).",
        discussion: """
            Each module's update ΔW = s·B·A is combined whatever the inputs' ranks, alphas (alpha/r or rsLoRA) \
            and target modules; a module an input lacks counts as zero. A and B are never averaged separately \
            (mean(B)·mean(A) is not the mean update).

            Methods:
              cat                exact: factors stacked, rank = the sum of the input ranks
              linear, svd        the weighted sum, brought to --rank (default: the largest input rank) by a \
            truncated SVD; the spectral energy kept is reported (task-arithmetic is the same)
              ties               trim to --density by magnitude, elect signs by mass, average what agrees
              dare-linear, dare-ties
                                 drop entries at random (--seed) keeping --density, rescale; then sum or ties
              magnitude-prune    trim to --density by magnitude, then the weighted sum

            Inputs: PEFT directories, GGUF LoRA files, cairn run directories, in any mix. Adapters for another \
            base are refused (architecture and shapes always; recorded base hashes unless --force).

            --search finds the weights (and, for ties, dare and magnitude-prune, the density) that minimise the \
            loss on held-out data (--data, JSONL as for cairn train), without gradients (Nelder–Mead, from the \
            uniform merge, --budget evaluations). Each candidate's loss is printed; the chosen point is merged and \
            the search (data fingerprint, method, the losses of the uniform merge and of each input alone) is \
            recorded in the lineage.

            Examples:
              cairn merge alice/ bob.gguf carol/ --method ties --density 0.5 --weights 1,1,0.5 --rank 16 -o merged/
              cairn merge a/ b/ c/ d/ --method linear --search --data held-out.jsonl --budget 40 -o searched/
              cairn merge a/ b/ --method cat -o merged/
              cairn merge a/ b/ c/ --method dare-ties --density 0.3 --seed 7 --format gguf -o merged.gguf
            """)

    @Argument(help: "The adapters: PEFT directories, GGUF LoRA files or run directories.")
    var adapters: [String]

    @Option(help: "cat, linear, svd, task-arithmetic, ties, dare-linear, dare-ties or magnitude-prune.")
    var method: String

    @Option(help: "One weight per adapter, comma-separated (default 1 each).")
    var weights: String?

    @Option(help: "Fraction of entries kept by ties, dare and magnitude-prune.")
    var density: Double = 1

    @Option(help: "Seed of dare's random drops.")
    var seed: UInt64 = 0

    @Option(help: "Output rank (default: the largest input rank; cat: the sum).")
    var rank: Int?

    @Option(name: .shortAndLong, help: "The base model the adapters belong to (its architecture and identity).")
    var model = "smollm2-135m"

    @Option(help: "peft (a directory) or gguf (a file).")
    var format = "peft"

    @Flag(help: "Merge even when the recorded base-model hashes differ (shapes are always checked).")
    var force = false

    @Flag(help: "Leave out inputs whose update norm or agreement with the others is an outlier (reported).")
    var dropOutliers = false

    @Option(name: .shortAndLong, help: "Where to write the merged adapter.")
    var output: String

    @Flag(help: "Search the weights (and density) that minimise the loss on --data.")
    var search = false

    @Option(help: "Held-out JSONL to minimise the loss on (with --search).")
    var data: String?

    @Option(help: "Candidates evaluated at most, the uniform merge first (with --search).")
    var budget = 30

    @Option(help: "The largest weight tried; weights are searched in [0, this] (with --search).")
    var maxWeight = 1.5

    @OptionGroup(title: "Searching on a cluster (--search with a coordinator)")
    var cluster: ClientOptions

    /// Candidates are scored by a coordinator's workers (evaluation jobs) when one is named.
    var onCluster: Bool { cluster.state != nil || cluster.credentials != nil }

    @Flag(help: "Print the per-module report as JSON.")
    var json = false

    func validate() throws {
        guard adapters.count >= 1 else { throw ValidationError("give at least one adapter") }
        guard MergeMethod(rawValue: method) != nil else {
            throw ValidationError(
                "--method must be one of \(MergeMethod.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard AdapterFormat(rawValue: format) != nil else { throw ValidationError("--format must be peft or gguf") }
        if search {
            guard data != nil else { throw ValidationError("--search needs held-out data: --data FILE.jsonl") }
            guard weights == nil else { throw ValidationError("--search finds the weights; leave out --weights") }
            guard budget >= 2, budget <= 10_000 else { throw ValidationError("--budget must be between 2 and 10000") }
            guard maxWeight > 0, maxWeight <= 100 else { throw ValidationError("--max-weight must be in (0, 100]") }
            guard adapters.count >= 2 else { throw ValidationError("--search needs at least two adapters") }
        } else if data != nil {
            throw ValidationError("--data is the held-out data of --search; add --search")
        }
    }

    func run() throws {
        var options = MergeOptions(method: MergeMethod(rawValue: method)!)
        if let weights {
            let parsed = weights.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
            guard parsed.allSatisfy({ $0 != nil }) else {
                throw ValidationError("--weights: numbers separated by commas")
            }
            options.weights = parsed.map { $0! }
        }
        options.density = density
        options.seed = seed
        options.rank = rank
        options.force = force
        let source: ModelSource
        let config: LlamaConfig
        let baseHash: String
        do {
            source = try ModelSource.resolve(model)
            config = try source.config()
            baseHash = try FileHash.modelIdentity(path: source.path)
        } catch { throw CLIError(error.description) }
        var inputs: [MergeInput] = []
        var parents: [JSONValue] = []
        var problems: [String] = []
        // On a cluster the inputs are registry names: fetched once into this machine's adapter cache, for the
        // final merge here.
        var paths = adapters
        if search, onCluster {
            paths = try adapters.map { try FetchCommand.cached($0, client: cluster) }
        }
        for (i, path) in paths.enumerated() {
            do {
                let (adapter, provenance) = try LoRAAdapter.load(path: path, model: config)
                if let h = provenance.baseModelHash, h != baseHash, !force {
                    problems.append(
                        "\(path) was trained on base \(h.prefix(12))…, not \(model) (\(baseHash.prefix(12))…); --force merges anyway when the shapes agree"
                    )
                }
                inputs.append(MergeInput(name: path, adapter: adapter, provenance: provenance))
                var parent = lineageNode(path: path, provenance: provenance, hash: adapter.contentHash)
                parent["weight"] = .number(options.weights?[i] ?? 1)
                parents.append(.object(parent))
            } catch {
                problems.append(error.description)
            }
        }
        guard problems.isEmpty else { throw CLIError(MergeError(problems).description) }
        var dropped: [JSONValue] = []
        if dropOutliers {
            let flagged = AdapterMerge.outliers(inputs)
            for o in flagged {
                Terminal.note("leaving out \(inputs[o.index].name): \(o.reason)")
                dropped.append(["name": .string(inputs[o.index].name), "reason": .string(o.reason)])
            }
            let keep = Set(inputs.indices).subtracting(flagged.map(\.index)).sorted()
            guard !keep.isEmpty else { throw CLIError("--drop-outliers would leave nothing to merge") }
            inputs = keep.map { inputs[$0] }
            parents = keep.map { parents[$0] }
            options.weights = options.weights.map { w in keep.map { w[$0] } }
            if flagged.isEmpty { Terminal.note("no outliers among the \(inputs.count) adapters") }
        }
        var searched: JSONObject?
        if search, let data {
            let found = try runSearch(inputs, options: options, data: data, source: source)
            options.weights = found.best.weights
            if let d = found.best.density { options.density = d }
            for i in parents.indices {
                if case .object(var o) = parents[i] {
                    o["weight"] = .number(found.best.weights[i])
                    parents[i] = .object(o)
                }
            }
            searched = found.record
        }
        let merged: LoRAAdapter
        let report: MergeReport
        let progress = ProgressLine("merge", total: nil)
        defer { progress.finish() }
        do {
            (merged, report) = try AdapterMerge.merge(inputs, options: options) { done, total in
                progress.update(done, total: total, unit: "modules")
            }
        } catch {
            throw CLIError(error.description)
        }
        var provenance = AdapterProvenance()
        provenance.baseModelHash = baseHash
        provenance.baseModelName = (source.path as NSString).lastPathComponent
        var lineage: JSONObject = ["method": .string(method), "parents": .array(parents)]
        if !dropped.isEmpty { lineage["dropped"] = .array(dropped) }
        if options.method.isEntrywise { lineage["density"] = .number(options.density) }
        if let searched { lineage["search"] = .object(searched) }
        if options.method == .dareLinear || options.method == .dareTies { lineage["seed"] = .integer(Int64(seed)) }
        if let rank { lineage["rank"] = .integer(Int64(rank)) }
        provenance.lineage = .object(lineage)
        do {
            switch AdapterFormat(rawValue: format)! {
            case .peft: try merged.savePEFT(directory: output, provenance: provenance)
            case .gguf: try merged.saveGGUF(path: output, provenance: provenance, name: "merge")
            }
        } catch { throw CLIError(error.description) }
        if json {
            let modules = JSONValue.array(
                report.modules.map {
                    [
                        "layer": .integer(Int64($0.layer)), "target": .string($0.target.rawValue),
                        "rank": .integer(Int64($0.rank)), "energy_kept": .number($0.energyKept),
                    ]
                })
            Terminal.printJSON(searched.map { ["search": .object($0), "modules": modules] } ?? modules)
        }
        let energies = report.modules.map(\.energyKept)
        let mean = energies.reduce(0, +) / Double(max(1, energies.count))
        Terminal.note(
            String(
                format:
                    "merged %d adapters (%@) into %d modules; spectral energy kept: mean %.2f%%, lowest %.2f%%; wrote %@",
                adapters.count, method, report.modules.count, 100 * mean, 100 * report.minimumEnergyKept, output))
    }
}

extension Merge {
    /// What a search found: the best candidate, and its record for the lineage and --json.
    struct Found {
        var best: MergeCandidate
        var record: JSONObject
    }

    /// Scores the inputs alone and the candidates of a Nelder–Mead search on the held-out data.
    func runSearch(_ inputs: [MergeInput], options: MergeOptions, data: String, source: ModelSource) throws -> Found {
        let lm: LanguageModel
        let scorer: HeldOutScorer
        do {
            lm = try LanguageModel.load(source)
            scorer = try HeldOutScorer(model: lm, path: data)
        } catch { throw CLIError("\(error)") }
        let remote =
            onCluster
            ? try ClusterScorer(client: cluster.connect(), model: model, data: data, length: scorer.plan.length) : nil
        func loss(_ adapter: LoRAAdapter) -> Double { scorer.loss(adapter).mean }
        Terminal.note(
            "search: \(scorer.rows) held-out examples in \(data); \(options.method.rawValue), budget \(budget)"
                + (remote.map { " on the workers of \($0.client.endpoint)" } ?? ""))
        var alone: [JSONValue] = []
        let aloneLosses =
            try remote?.losses(adapters.map { EvaluationCandidate(reference: $0) }) ?? inputs.map { loss($0.adapter) }
        for (input, l) in zip(inputs, aloneLosses) {
            Terminal.note(String(format: "  alone      %@: loss %.4f", input.name, l))
            alone.append(["name": .string(input.name), "loss": .number(l)])
        }
        let started = Date()
        let search = MergeSearchOptions(
            inputs: inputs.count, searchDensity: options.method.isEntrywise, density: options.density, budget: budget,
            maxWeight: maxWeight)
        var index = 0
        let result = try MergeSearch.run(search) { points in
            let losses: [Double]
            if let remote {
                losses = try remote.losses(
                    points.map { p in
                        EvaluationCandidate(
                            method: options.method.rawValue, inputs: Array(zip(adapters, p.weights)),
                            density: p.density,
                            rank: options.rank)
                    })
            } else {
                losses = try points.map { p in
                    var o = options
                    o.weights = p.weights
                    if let density = p.density { o.density = density }
                    do { return loss(try AdapterMerge.merge(inputs, options: o).0) } catch {
                        throw CLIError("\(error)")
                    }
                }
            }
            for (p, l) in zip(points, losses) {
                index += 1
                let point = p.weights.map { String(format: "%.3f", $0) }.joined(separator: ",")
                Terminal.note(
                    String(format: "  candidate %2d: weights %@", index, point)
                        + (p.density.map { String(format: " density %.3f", $0) } ?? "")
                        + String(format: " → loss %.4f", l))
            }
            return losses
        }
        let best = result.best
        Terminal.note(
            String(
                format:
                    "search: best loss %.4f after %d candidates in %.1f s (uniform merge %.4f; best input alone %.4f)",
                best.loss, result.candidates.count, Date().timeIntervalSince(started), result.uniform.loss,
                alone.compactMap { $0.objectValue?["loss"]?.doubleValue }.min() ?? .nan))
        func json(_ c: MergeCandidate) -> JSONValue {
            var o: JSONObject = ["weights": .array(c.weights.map(JSONValue.number)), "loss": .number(c.loss)]
            o["density"] = c.density.map(JSONValue.number)
            return .object(o)
        }
        var record: JSONObject = [
            "method": "nelder-mead", "data": .string((data as NSString).lastPathComponent),
            "data_sha256": .string(scorer.dataHash), "examples": .integer(Int64(scorer.rows)),
            "evaluations": .integer(Int64(result.candidates.count)), "loss": .number(best.loss),
            "uniform_loss": .number(result.uniform.loss), "inputs_alone": .array(alone),
            "candidates": .array(result.candidates.map(json)),
        ]
        if let remote {
            record["coordinator"] = .string(remote.client.endpoint)
            record["jobs"] = .array(remote.jobs.map(JSONValue.string))
        }
        return Found(best: best, record: record)
    }
}

/// Scores candidates on a coordinator's workers: one evaluation job per batch of candidates.
final class ClusterScorer {
    let client: ClusterClient
    let model: String
    let dataName: String
    let data: [UInt8]
    private(set) var jobs: [String] = []

    /// Tokens per row of the jobs (the longest held-out example, within the model's context).
    let length: Int

    init(client: ClusterClient, model: String, data path: String, length: Int) throws {
        self.client = client
        self.model = model
        self.length = length
        dataName = (path as NSString).lastPathComponent
        guard let bytes = FileManager.default.contents(atPath: path) else { throw CLIError("cannot read \(path)") }
        data = Array(bytes)
    }

    /// The held-out loss of each candidate, from one evaluation job.
    func losses(_ candidates: [EvaluationCandidate]) throws -> [Double] {
        func q(_ s: String) -> String { JSONValue.string(s).serialized() }
        var yaml =
            "model: \(q(model))\nmode: evaluate\ndata: \(q(dataName))\nseq_len: \(length)\nbatch_size: 4\nadapters:\n"
        for c in candidates {
            if let reference = c.reference {
                yaml += "  - \(q(reference))\n"
                continue
            }
            let inputs = c.inputs.map { "\(q($0.name)): \($0.weight)" }.joined(separator: ", ")
            yaml += "  - {merge: \(q(c.method ?? "linear")), inputs: {\(inputs)}"
            if let d = c.density { yaml += ", density: \(d)" }
            if let r = c.rank { yaml += ", rank: \(r)" }
            yaml += "}\n"
        }
        let submitted = try client.request(
            JobSubmission(spec: yaml, dataName: dataName, data: data).message, expect: .submitted, timeout: 300)
        let id = try submitted.decodeJobRequest().job
        jobs.append(id)
        let deadline = Date().addingTimeInterval(24 * 3600)
        while Date() < deadline {
            let reply = try client.request(StatusRequest(job: id).message, expect: .statusReply)
            let body: StatusBody
            do { body = try StatusBody(json: reply.metadata["body"] ?? .null) } catch {
                throw CLIError("bad status from the coordinator: \(error)")
            }
            guard let job = body.jobs.first else { throw CLIError("the coordinator lost \(id)") }
            if job.state == "done" {
                let losses = Dictionary((job.evals ?? []).map { ($0.step, $0.loss) }, uniquingKeysWith: { a, _ in a })
                return try (1...candidates.count).map { k in
                    guard let l = losses[k] else { throw CLIError("\(id) finished without a score for adapter \(k)") }
                    return l
                }
            }
            if job.isFinished { throw CLIError("\(id) \(job.state): \(job.error ?? "")") }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw CLIError("\(id) did not finish within a day")
    }
}

struct Diff: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare two adapters of one base, module by module.",
        discussion: """
            For each module: the norm of each update ΔW = s·B·A, their cosine similarity (computed from the factors, \
            exactly), and each update's effective rank (exp of the entropy of its normalised spectrum).

            Example:
              cairn diff alice/ bob.gguf
            """)
    @Argument(help: "The first adapter.")
    var a: String
    @Argument(help: "The second adapter.")
    var b: String
    @Option(name: .shortAndLong, help: "The base model (its architecture).")
    var model = "smollm2-135m"
    @Flag(help: "Print JSON, one object per module.")
    var json = false

    func run() throws {
        let rows: [ModuleComparison]
        do {
            let config = try ModelSource.resolve(model).config()
            rows = compareAdapters(
                try LoRAAdapter.load(path: a, model: config).0, try LoRAAdapter.load(path: b, model: config).0)
        } catch { throw CLIError("\(error)") }
        if json {
            Terminal.printJSON(
                .array(
                    rows.map {
                        [
                            "layer": .integer(Int64($0.layer)), "target": .string($0.target.rawValue),
                            "norm_a": .number($0.normA),
                            "norm_b": .number($0.normB), "cosine": $0.cosine.map(JSONValue.number) ?? .null,
                            "effective_rank_a": .number($0.effectiveRankA),
                            "effective_rank_b": .number($0.effectiveRankB),
                        ]
                    }))
            return
        }
        Terminal.write("layer  module      ‖ΔW_a‖     ‖ΔW_b‖   cosine  eff.rank a  eff.rank b\n")
        for r in rows {
            Terminal.write(
                String(
                    format: "%5d  %@ %9.4f  %9.4f  %7@  %10.2f  %10.2f\n", r.layer,
                    r.target.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0), r.normA, r.normB,
                    r.cosine.map { String(format: "%.3f", $0) } ?? "—", r.effectiveRankA, r.effectiveRankB))
        }
        let cosines = rows.compactMap(\.cosine)
        if !cosines.isEmpty {
            Terminal.note(
                String(format: "%d modules; mean cosine %.3f", rows.count, cosines.reduce(0, +) / Double(cosines.count))
            )
        }
    }
}

struct Lineage: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print an adapter's lineage: how it was made, from which parents, on which base and data.",
        discussion: """
            Adapters cairn writes record their base model's SHA-256, their training recipe, data fingerprint and \
            steps, and for merges the method and every parent (with its own lineage), in the safetensors \
            __metadata__ or the GGUF key-values.

            Example:
              cairn lineage merged/
            """)
    @Argument(help: "A PEFT directory, GGUF LoRA file or run directory.")
    var adapter: String
    @Option(name: .shortAndLong, help: "The base model (its architecture).")
    var model = "smollm2-135m"
    @Flag(help: "Print the lineage as JSON.")
    var json = false

    func run() throws {
        let provenance: AdapterProvenance
        do {
            let config = try ModelSource.resolve(model).config()
            provenance = try LoRAAdapter.load(path: adapter, model: config).1
        } catch { throw CLIError("\(error)") }
        let root = lineageNode(path: adapter, provenance: provenance, hash: provenance.adapterHash)
        if json {
            Terminal.printJSON(.object(root), pretty: true)
            return
        }
        Terminal.write(Self.render(.object(root), prefix: "", last: true, top: true))
    }

    /// One line per adapter, its parents indented beneath it.
    static func render(_ node: JSONValue, prefix: String, last: Bool, top: Bool = false) -> String {
        let o = node.objectValue ?? JSONObject()
        var line = o["name"]?.stringValue ?? "?"
        let lineage = o["lineage"]?.objectValue
        if let method = lineage?["method"]?.stringValue {
            var how = [method]
            if let d = lineage?["density"]?.doubleValue { how.append("density \(d)") }
            if let s = lineage?["seed"]?.intValue { how.append("seed \(s)") }
            if let r = lineage?["rank"]?.intValue { how.append("rank \(r)") }
            line += " [" + how.joined(separator: ", ") + "]"
        } else if let steps = o["steps"]?.intValue {
            line += " [trained \(steps) steps]"
        }
        if let w = o["weight"]?.doubleValue, !top { line += " × \(w)" }
        if let b = o["base_model_sha256"]?.stringValue { line += " base \(b.prefix(12))…" }
        if let d = o["data_sha256"]?.stringValue { line += " data \(d.prefix(12))…" }
        if let h = o["sha256"]?.stringValue { line += " sha256 \(h.prefix(12))…" }
        var out = top ? line + "\n" : prefix + (last ? "└── " : "├── ") + line + "\n"
        let parents = lineage?["parents"]?.arrayValue ?? []
        let childPrefix = top ? "" : prefix + (last ? "    " : "│   ")
        for (i, p) in parents.enumerated() {
            out += render(p, prefix: childPrefix, last: i == parents.count - 1)
        }
        return out
    }
}

struct Fuse: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bake adapters into the base model and write a GGUF file or a Hugging Face directory.",
        discussion: """
            The adapters' updates are added to the base weights (W + s·B·A, in order). The output needs no adapter \
            to run: llama.cpp, cairn or transformers load it as a plain model.

            -o NAME.gguf writes GGUF: the base's tokenizer and metadata (the base must be a GGUF), matrices as \
            f32, f16, bf16 or q8_0 (ggml's reference rounding), norms as f32; the adapters it contains are \
            recorded under cairn.fused.
            -o DIR writes a Hugging Face directory: model.safetensors (f32, f16 or bf16) and config.json. From a \
            Hugging Face base, its tokenizer and generation files are copied; from a GGUF base the directory has \
            no tokenizer files, so pair it with the base model's tokenizer.

            Examples:
              cairn fuse --model smollm2-135m --adapter merged/ -o smollm2-merged.gguf
              cairn fuse --model smollm2-135m --adapter a/ --adapter b.gguf --type q8_0 -o fused-q8.gguf
              cairn fuse --model ./SmolLM2-135M-Instruct --adapter merged/ -o smollm2-merged/
            """)
    @Option(name: .shortAndLong, help: "The base model: a GGUF file, a Hugging Face directory or a cached name.")
    var model = "smollm2-135m"
    @Option(help: "An adapter to bake in (repeatable, applied in order).")
    var adapter: [String] = []
    @Option(help: "gguf or safetensors (default: gguf when --output ends in .gguf).")
    var format: String?
    @Option(help: "f32, f16, bf16 or q8_0 (GGUF only) for the matrices (default: f16 for GGUF, bf16 for safetensors).")
    var type: String?
    @Option(name: .shortAndLong, help: "The GGUF file or the directory to write.")
    var output: String

    var isGGUF: Bool { (format ?? (output.hasSuffix(".gguf") ? "gguf" : "safetensors")) == "gguf" }

    func validate() throws {
        guard !adapter.isEmpty else { throw ValidationError("give at least one --adapter") }
        if let format, !["gguf", "safetensors"].contains(format) {
            throw ValidationError("--format must be gguf or safetensors")
        }
        if let type {
            guard let t = FusedType(rawValue: type) else {
                throw ValidationError("--type must be f32, f16, bf16 or q8_0")
            }
            if t == .q8_0, !isGGUF {
                throw ValidationError("q8_0 is a GGUF type; for safetensors choose f32, f16 or bf16")
            }
        }
    }

    func run() throws {
        do {
            let source = try ModelSource.resolve(model)
            let type = FusedType(rawValue: self.type ?? (isGGUF ? "f16" : "bf16"))!
            let lm = try LanguageModel.load(source, adapters: adapter)
            for w in lm.adapterWarnings { Terminal.note("warning: \(w)") }
            let fused: JSONValue = .array(
                try adapter.map { a -> JSONValue in
                    [
                        "name": .string((a as NSString).lastPathComponent),
                        "sha256": .string(try FileHash.modelIdentity(path: a)),
                    ]
                })
            let baseHash = try FileHash.modelIdentity(path: source.path)
            if isGGUF {
                guard case .gguf(let path) = source else {
                    throw CLIError(
                        "GGUF output takes its tokenizer and metadata from a GGUF base; \(model) is a Hugging Face "
                            + "directory. Write a directory instead (-o DIR), or fuse into the GGUF of the same model")
                }
                let file = try GGUFFile(path: path)
                var writer = lm.model.weights.gguf(metadata: file.metadata, type: type)
                writer.set("cairn.fused", .string(fused.serialized()))
                writer.set("cairn.base_model_sha256", .string(baseHash))
                try writer.write(to: output)
            } else {
                try writeDirectory(lm: lm, source: source, type: type, fused: fused, baseHash: baseHash)
            }
            Terminal.note(
                "wrote \(output) (\(type) matrices, \(adapter.count) adapter\(adapter.count == 1 ? "" : "s") baked in)")
        } catch let e as CLIError {
            throw e
        } catch { throw CLIError("\(error)") }
    }

    /// A Hugging Face directory: model.safetensors, config.json and, from a Hugging Face base, its side files.
    func writeDirectory(lm: LanguageModel, source: ModelSource, type: FusedType, fused: JSONValue, baseHash: String)
        throws
    {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: output, isDirectory: &isDirectory), !isDirectory.boolValue {
            throw CLIError("\(output) is a file; safetensors output is a directory (or end the name in .gguf)")
        }
        try fm.createDirectory(atPath: output, withIntermediateDirectories: true)
        func file(_ name: String) -> String { (output as NSString).appendingPathComponent(name) }
        let dtype = ["f32": "float32", "f16": "float16", "bf16": "bfloat16"][type.rawValue]!
        var config: JSONValue
        switch source {
        case .huggingFace(let path):
            let original = (path as NSString).appendingPathComponent("config.json")
            guard var object = try HFModelDirectory.readJSON(original).objectValue else {
                throw CLIError("\(original) must be a JSON object")
            }
            object["torch_dtype"] = .string(dtype)
            if object["dtype"] != nil { object["dtype"] = .string(dtype) }
            config = .object(object)
            for name in [
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                "chat_template.jinja",
            ] {
                let from = (path as NSString).appendingPathComponent(name)
                guard fm.fileExists(atPath: from) else { continue }
                try writeFileAtomically(file(name), Array(try Data(contentsOf: URL(fileURLWithPath: from))))
            }
        case .gguf:
            let tokenizer = try? lm.requireTokenizer()
            config = lm.model.config.huggingFaceConfig(
                dtype: dtype, bos: (tokenizer?.bosId).map(Int.init), eos: (tokenizer?.eosId).map(Int.init))
        }
        let metadata = ["cairn.fused": fused.serialized(), "cairn.base_model_sha256": baseHash]
        try lm.model.weights.safetensors(type: type, metadata: metadata).write(to: file("model.safetensors"))
        try writeFileAtomically(
            file("config.json"), Array((config.serialized(pretty: true, sortedKeys: true) + "\n").utf8))
    }
}
