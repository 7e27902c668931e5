// TrainingConfig+YAML: job files in YAML, the convention of axolotl, torchtune and mlx-lm. Keys are the
// snake_case names below; an unknown key is an error (a typo must not silently fall back to a default), and
// every error names the file, the line and the key.

import Foundation
import Llama
import ModelFormats
import Yams

extension TrainingConfig {
    /// The keys a job file may use, with what each holds.
    public static let keys: [(key: String, help: String)] = [
        ("model", "base model: GGUF file, HF directory or cached name (default smollm2-135m)"),
        ("data", "training data, JSONL (required)"),
        ("validation_data", "held-out JSONL for evaluation"),
        ("validation_split", "fraction of the data held out when there is no validation_data (default 0)"),
        ("output", "run directory: checkpoint, adapter, metrics (required for cairn train)"),
        ("init_adapter", "start from this adapter (PEFT directory or GGUF LoRA) instead of a fresh one"),
        ("rank", "LoRA rank r (default 8)"), ("alpha", "LoRA alpha (default 16)"),
        ("rslora", "scale by alpha/sqrt(r) instead of alpha/r (default false)"),
        ("dropout", "LoRA dropout (default 0)"),
        ("targets", "projections: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, or all-linear (default)"),
        ("layers", "layers to adapt: a list, or a range \"0-11\" (default all)"),
        ("learning_rate", "peak learning rate (default 2e-4)"),
        ("schedule", "cosine, linear or constant after warmup (default cosine)"),
        ("warmup_steps", "linear warmup from 0 (default 0)"), ("min_lr_ratio", "final lr / peak (default 0)"),
        ("weight_decay", "AdamW decoupled weight decay (default 0)"), ("beta1", "default 0.9"),
        ("beta2", "default 0.999"), ("epsilon", "default 1e-8"),
        ("max_grad_norm", "clip the global gradient norm (default 1; 0 disables)"),
        ("batch_size", "rows per micro-batch (default 4)"), ("grad_accum", "micro-batches per step (default 1)"),
        ("seq_len", "tokens per row (default 256)"), ("steps", "optimizer steps (default: from epochs)"),
        ("epochs", "passes over the data when steps is not set (default 1)"),
        ("batch_mode", "pack (default) or pad"), ("loss_on", "auto (default) or all"),
        ("eval_every", "evaluate every N steps (default 0: at the end)"),
        ("save_every", "checkpoint every N steps (default 50)"), ("seed", "default 0"),
        ("skip_bad_records", "skip and count malformed records (default false)"),
        ("chat_template", "chatml, smollm2, llama3, mistral, gemma or phi3 instead of the model's"),
        (
            "recompute",
            "auto (default: keep as many layers' activations as fit in memory_limit, recompute the rest), always "
                + "or never"
        ),
        (
            "memory_limit",
            "memory a training step may use (on each worker), such as 7GiB (default: the base plus 80 % of what "
                + "is available once it is loaded)"
        ),
        (
            "base_precision",
            "auto (default), f32 or q: dequantise the base to fp32, or keep its matrices in the file's "
                + "quantisation (4-8x less memory; auto picks f32 when it fits)"
        ),
        ("threads", "kernel threads (default all cores)"),
        (
            "mode",
            "cluster jobs (cairn submit): sync (default: each step's batch split across workers), diloco (local "
                + "steps, compressed pseudo-gradients, an outer Nesterov step) or federated (diloco on each worker's "
                + "own --data)"
        ),
        ("inner_steps", "diloco/federated: local AdamW steps per round (default 16); steps counts local steps"),
        ("outer_learning_rate", "diloco/federated: outer Nesterov learning rate (default 1: average the updates)"),
        ("outer_momentum", "diloco/federated: outer Nesterov momentum (default 0; DiLoCo pretraining uses 0.9)"),
        ("compression", "diloco/federated: int8 (default), bf16 or none for what workers send"),
        ("aggregate", "diloco/federated: mean (default), median or trimmed_mean of the participants' updates"),
        ("trim_fraction", "trimmed_mean: fraction of participants dropped at each end of each entry (default 0.2)"),
        ("clip_update_norm", "diloco/federated: clip each participant's update norm to this (default 0: off)"),
        ("score_updates", "diloco/federated: leave out updates that worsen the held-out loss (default false)"),
        ("priority", "cluster jobs: weight in the share of the pool's rows between running jobs (default 1)"),
        ("adapters", "mode: evaluate: adapters to score: registry names, paths, or {merge: METHOD, inputs: {NAME: W}}"),
    ]

    /// Reads a YAML job file over the current values.
    ///
    /// - Throws: `InputError` with the file, line and key.
    public mutating func apply(yamlFile path: String) throws(InputError) {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw InputError(path: path, "cannot read: \(error.localizedDescription)")
        }
        try apply(yaml: text, source: path)
    }

    /// Reads YAML text over the current values (the directory of `source` anchors relative paths).
    public mutating func apply(yaml text: String, source: String) throws(InputError) {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw InputError(path: source, "invalid YAML: \(error)")
        } catch {
            throw InputError(path: source, "invalid YAML: \(error)")
        }
        guard let root else { return }
        guard let mapping = root.mapping else {
            throw InputError(path: source, line: root.mark.map { $0.line }, "a job file is a mapping of key: value")
        }
        let known = Set(Self.keys.map(\.key))
        let base = (source as NSString).deletingLastPathComponent
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else {
                throw InputError(path: source, line: keyNode.mark.map { $0.line }, "keys must be strings")
            }
            let line = keyNode.mark.map { $0.line }
            func fail(_ message: String) -> InputError { InputError(path: source, line: line, field: key, message) }
            guard known.contains(key) else {
                let close = known.filter { $0.hasPrefix(String(key.prefix(3))) }.sorted()
                throw fail("unknown key" + (close.isEmpty ? "" : "; did you mean \(close.joined(separator: " or "))?"))
            }
            func string() throws(InputError) -> String {
                guard let s = value.string, value.scalar != nil else { throw fail("expected a string") }
                return s
            }
            func path() throws(InputError) -> String {
                let s = try string()
                return s.hasPrefix("/") || base.isEmpty ? s : (base as NSString).appendingPathComponent(s)
            }
            func int() throws(InputError) -> Int {
                guard let s = value.scalar?.string, let i = Int(s) else {
                    throw fail("expected an integer, found \(value.string ?? "a collection")")
                }
                return i
            }
            func double() throws(InputError) -> Double {
                guard let s = value.scalar?.string, let d = Double(s) else {
                    throw fail("expected a number, found \(value.string ?? "a collection")")
                }
                return d
            }
            func bool() throws(InputError) -> Bool {
                switch value.scalar?.string.lowercased() {
                case "true", "yes", "on": return true
                case "false", "no", "off": return false
                default: throw fail("expected true or false")
                }
            }
            func choice<T: RawRepresentable & CaseIterable>(_: T.Type) throws(InputError) -> T
            where T.RawValue == String {
                let s = try string()
                guard let v = T(rawValue: s) else {
                    throw fail("\"\(s)\" is not one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                return v
            }
            func list() throws(InputError) -> [String] {
                if let items = value.sequence { return items.compactMap { $0.string } }
                return try string().split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init)
            }
            switch key {
            case "model":
                let s = try string()
                model = s.contains("/") ? try path() : s
            case "data": data = try path()
            case "validation_data": validationData = try path()
            case "validation_split": validationSplit = try double()
            case "output": output = try path()
            case "init_adapter":
                // A path beside the job file, or else a name in a coordinator's registry (kept as written).
                let raw = try string()
                let resolved = try path()
                initAdapter = FileManager.default.fileExists(atPath: resolved) ? resolved : raw
            case "rank": lora.rank = try int()
            case "alpha": lora.alpha = try double()
            case "rslora": lora.useRSLoRA = try bool()
            case "dropout": lora.dropout = try double()
            case "targets":
                switch LoRATarget.parse(try list()) {
                case .success(let t): lora.targets = t
                case .failure(let e): throw fail(e.description)
                }
            case "layers":
                switch Self.parseLayers(value.sequence != nil ? (try list()).joined(separator: ",") : try string()) {
                case .some(let l): lora.layers = l
                case .none: throw fail("expected a list of layer numbers or a range such as 0-11")
                }
            case "learning_rate": learningRate = try double()
            case "schedule": schedule = try choice(ScheduleKind.self)
            case "warmup_steps": warmupSteps = try int()
            case "min_lr_ratio": minLearningRateRatio = try double()
            case "weight_decay": weightDecay = try double()
            case "beta1": beta1 = try double()
            case "beta2": beta2 = try double()
            case "epsilon": epsilon = try double()
            case "max_grad_norm": maxGradNorm = try double()
            case "batch_size": batchSize = try int()
            case "grad_accum": gradientAccumulation = try int()
            case "seq_len": sequenceLength = try int()
            case "steps": steps = try int()
            case "epochs": epochs = try double()
            case "batch_mode": batchMode = try choice(BatchMode.self)
            case "loss_on": lossOn = try choice(LossOn.self)
            case "eval_every": evalEvery = try int()
            case "save_every": saveEvery = try int()
            case "seed":
                guard let s = value.scalar?.string, let v = UInt64(s) else {
                    throw fail("expected a non-negative integer")
                }
                seed = v
            case "skip_bad_records": skipBadRecords = try bool()
            case "chat_template": chatTemplate = try string()
            case "recompute": recompute = try choice(RecomputeMode.self)
            case "base_precision": basePrecision = try choice(BasePrecisionChoice.self)
            case "memory_limit":
                guard let text = value.scalar?.string, let bytes = parseByteSize(text), bytes > 0 else {
                    throw fail("expected a size such as 7GiB, 512MiB or a number of bytes")
                }
                memoryLimit = bytes
            case "threads": threads = try int()
            case "mode": mode = try choice(DistributionMode.self)
            case "inner_steps": innerSteps = try int()
            case "outer_learning_rate": outerLearningRate = try double()
            case "outer_momentum": outerMomentum = try double()
            case "compression": compression = try choice(RoundCompression.self)
            case "aggregate": aggregate = try choice(RoundAggregation.self)
            case "trim_fraction": trimFraction = try double()
            case "clip_update_norm": clipUpdateNorm = try double()
            case "score_updates": scoreUpdates = try bool()
            case "priority": priority = try double()
            case "adapters":
                guard let items = value.sequence else { throw fail("expected a list of adapters") }
                candidates = try items.map { item throws(InputError) in
                    try Self.candidate(
                        item, fail: { InputError(path: source, line: item.mark.map { $0.line }, field: key, $0) })
                }
            default: throw fail("unknown key")
            }
        }
    }

    /// One entry of `adapters`: a name, or a mapping `merge: METHOD, inputs: {NAME: WEIGHT, …}` with optional
    /// `density` and `rank`.
    static func candidate(_ node: Node, fail: (String) -> InputError) throws(InputError) -> EvaluationCandidate {
        if let name = node.scalar?.string, node.mapping == nil { return EvaluationCandidate(reference: name) }
        guard let m = node.mapping else { throw fail("an adapter is a registry name or a {merge: …} mapping") }
        var method: String?
        var inputs: [(name: String, weight: Double)] = []
        var density: Double?
        var rank: Int?
        for (k, v) in m {
            switch k.string {
            case "merge": method = v.string
            case "density":
                guard let d = v.string.flatMap(Double.init), d > 0, d <= 1 else {
                    throw fail("density: a number in (0, 1]")
                }
                density = d
            case "rank":
                guard let r = v.string.flatMap(Int.init), r >= 1, r <= 4096 else { throw fail("rank: 1 to 4096") }
                rank = r
            case "inputs":
                guard let pairs = v.mapping else { throw fail("inputs: a mapping of adapter name to weight") }
                for (name, weight) in pairs {
                    guard let n = name.string, let w = weight.string.flatMap(Double.init), w.isFinite else {
                        throw fail("inputs: each entry is NAME: WEIGHT")
                    }
                    inputs.append((n, w))
                }
            default: throw fail("unknown key \(k.string ?? "?") in a merge (merge, inputs, density, rank)")
            }
        }
        guard let method else { throw fail("a merge needs merge: METHOD (linear, cat, ties, …)") }
        guard !inputs.isEmpty else { throw fail("a merge needs inputs: {NAME: WEIGHT, …}") }
        return EvaluationCandidate(method: method, inputs: inputs, density: density, rank: rank)
    }

    /// "0-3,8,10-11" → [0, 1, 2, 3, 8, 10, 11], or nil when malformed.
    public static func parseLayers(_ text: String) -> [Int]? {
        var layers: [Int] = []
        for part in text.split(whereSeparator: { $0 == "," || $0 == " " }) {
            let bounds = part.split(separator: "-", maxSplits: 1)
            guard let lo = Int(bounds[0]), lo >= 0 else { return nil }
            let hi = bounds.count == 2 ? Int(bounds[1]) : lo
            guard let hi, hi >= lo, hi - lo < 100_000 else { return nil }
            layers += Array(lo...hi)
        }
        return layers.isEmpty ? nil : Array(Set(layers)).sorted()
    }

    /// The same settings with file paths made absolute (from the current directory), so a job file written into
    /// the run directory means the same files wherever it is read from (`--resume` from elsewhere).
    public func withAbsolutePaths() -> TrainingConfig {
        func absolute(_ p: String) -> String {
            p.hasPrefix("/") ? p : (FileManager.default.currentDirectoryPath as NSString).appendingPathComponent(p)
        }
        var c = self
        if c.model.contains("/") { c.model = absolute(c.model) }
        c.data = absolute(c.data)
        c.validationData = c.validationData.map(absolute)
        c.initAdapter = c.initAdapter.map(absolute)
        if !c.output.isEmpty { c.output = absolute(c.output) }
        return c
    }

    /// The settings in job-file order as (key, value) pairs, values as the job file spells them (strings
    /// unquoted): what the dashboard and `cairn report` show.
    public func settings() -> [(key: String, value: String)] {
        yaml().split(separator: "\n").compactMap { line in
            guard let colon = line.range(of: ": ") else { return nil }
            var value = String(line[colon.upperBound...])
            if value.hasPrefix("\""), let s = try? JSONValue.parse(Array(value.utf8)).stringValue { value = s }
            return (String(line[..<colon.lowerBound]), value)
        }
    }

    /// The settings as a YAML job file (what `cairn train` writes into the run directory).
    public func yaml() -> String {
        func q(_ s: String) -> String { JSONValue.string(s).serialized() }
        var lines = [
            "model: \(q(model))", "data: \(q(data))",
        ]
        if let v = validationData { lines.append("validation_data: \(q(v))") }
        if validationSplit > 0 { lines.append("validation_split: \(validationSplit)") }
        if !output.isEmpty { lines.append("output: \(q(output))") }
        if let a = initAdapter { lines.append("init_adapter: \(q(a))") }
        lines += [
            "rank: \(lora.rank)", "alpha: \(lora.alpha)", "rslora: \(lora.useRSLoRA)", "dropout: \(lora.dropout)",
            "targets: [\(lora.targets.map(\.rawValue).joined(separator: ", "))]",
        ]
        if let layers = lora.layers { lines.append("layers: [\(layers.map(String.init).joined(separator: ", "))]") }
        lines += [
            "learning_rate: \(learningRate)", "schedule: \(schedule.rawValue)", "warmup_steps: \(warmupSteps)",
            "min_lr_ratio: \(minLearningRateRatio)", "weight_decay: \(weightDecay)", "beta1: \(beta1)",
            "beta2: \(beta2)", "epsilon: \(epsilon)", "max_grad_norm: \(maxGradNorm)", "batch_size: \(batchSize)",
            "grad_accum: \(gradientAccumulation)", "seq_len: \(sequenceLength)", "steps: \(steps)", "epochs: \(epochs)",
            "batch_mode: \(batchMode.rawValue)", "loss_on: \(lossOn.rawValue)", "eval_every: \(evalEvery)",
            "save_every: \(saveEvery)", "seed: \(seed)", "skip_bad_records: \(skipBadRecords)",
            "recompute: \(recompute.rawValue)", "base_precision: \(basePrecision.rawValue)",
        ]
        if let m = memoryLimit { lines.append("memory_limit: \(m)") }
        if let t = chatTemplate { lines.append("chat_template: \(q(t))") }
        if let t = threads { lines.append("threads: \(t)") }
        lines.append("mode: \(mode.rawValue)")
        // Only when set: the coordinator applies it, and workers of earlier releases need not know it.
        if priority != 1 { lines.append("priority: \(priority)") }
        if mode != .sync {
            lines += [
                "inner_steps: \(innerSteps)", "outer_learning_rate: \(outerLearningRate)",
                "outer_momentum: \(outerMomentum)", "compression: \(compression.rawValue)",
            ]
            // Only when set: the coordinator applies them, and workers of earlier releases need not know them.
            if aggregate != .mean { lines.append("aggregate: \(aggregate.rawValue)") }
            if aggregate == .trimmedMean { lines.append("trim_fraction: \(trimFraction)") }
            if clipUpdateNorm > 0 { lines.append("clip_update_norm: \(clipUpdateNorm)") }
            if scoreUpdates { lines.append("score_updates: true") }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
