// cairn-bench: throughput against the machine's own ceiling, measured in the same run.
//
//   ceiling   sgemm GFLOP/s on this machine: Cairn's matmul (OpenBLAS panels on every core) on a square
//             2048³ product and on the model's largest projection shape, best of several runs.
//   forward   the real model (default smollm2-135m) on batch × sequence new tokens, logits for every position
//             included: tokens/s, achieved GFLOP/s (the matrix products counted by LlamaModel.forwardFLOPs) and
//             the ratio to the ceiling.
//   train     LoRA training steps (r 8 on all seven projections) on batch × sequence tokens: tokens/s,
//             GFLOP per token counted from the shapes (LlamaModel.trainingFLOPs), the ratio to the ceiling, the
//             mean loss of the timed steps, and the process's peak RSS. Run it in its own process so the RSS is
//             training's alone. --base-precision q keeps the base quantised. Activations are kept for as many
//             layers as fit in --memory-limit (default: 80 % of the memory available), as cairn train does;
//             --recompute always|never overrides. --model synthetic-135m|synthetic-360m|synthetic-1.1b|
//             synthetic-qwen2.5-0.5b|synthetic-llama3.2-1b|synthetic-llama3.1-8b trains random weights of those
//             shapes in --quant's blocks (default q4_1; dequantised to fp32 with --base-precision f32).
//   dequantize  fp32 values per second from each block type's dequantisation (a 4096 × 4096 matrix, every core),
//             beside the sgemm that a panel of such values feeds
//   merge     TIES-merge 8 random rank-16 adapters on all seven projections of the model's shapes to rank 16:
//             seconds and peak RSS (the issue's target: under 5 s and 300 MiB), with the sgemm ceiling for scale;
//             CAIRN_BENCH_PHASES=1 first times each phase on the largest module
// Usage: cairn-bench [forward|train|merge|dequantize] [--model NAME|PATH] [--batch 4] [--sequence 256] [--repeats 3] [--rank 8]
//                    [--threads N] [--base-precision f32|q] [--recompute auto|always|never]
//                    [--memory-limit SIZE] [--quant q4_0|q4_1|q5_0|q5_1|q8_0|q4_k|q5_k|q6_k] [--single] [--json]
//             --single: one step, no warm-up (the peak memory of shapes whose step takes minutes).

import Adapters
import Foundation
import Llama
import ModelFormats
import TensorKernels
import Training

struct Arguments {
    var mode = "forward"
    var rank = 8
    var model = "smollm2-135m"
    var batch = 4
    var sequence = 256
    var repeats = 3
    var threads: Int?
    var json = false
    var precision = BasePrecision.f32
    /// Whether --base-precision was given (synthetic shapes default to q, files to f32).
    var precisionGiven = false
    var recompute = RecomputeMode.auto
    var memoryLimit: Int?
    /// One step without a warm-up (for the peak memory of shapes whose step takes minutes).
    var single = false
    var quant = GGMLType.q4_1

    init(_ argv: [String]) throws {
        var i = 1
        if argv.count > 1, ["forward", "train", "shared", "merge", "dequantize"].contains(argv[1]) {
            mode = argv[1]
            i = 2
        }
        func value() throws -> String {
            i += 1
            guard i < argv.count else { throw BenchError("\(argv[i - 1]) needs a value") }
            return argv[i]
        }
        while i < argv.count {
            switch argv[i] {
            case "--model": model = try value()
            case "--batch": batch = Int(try value()) ?? 0
            case "--sequence": sequence = Int(try value()) ?? 0
            case "--repeats": repeats = Int(try value()) ?? 0
            case "--threads": threads = Int(try value())
            case "--rank": rank = Int(try value()) ?? 0
            case "--json": json = true
            case "--single": single = true
            case "--recompute":
                let v = try value()
                guard let r = RecomputeMode(rawValue: v) else {
                    throw BenchError("--recompute is auto, always or never")
                }
                recompute = r
            case "--memory-limit":
                let v = try value()
                guard let bytes = parseByteSize(v), bytes > 0 else {
                    throw BenchError("--memory-limit: not a size: \(v)")
                }
                memoryLimit = bytes
            case "--quant":
                let v = try value()
                guard let t = GGMLType(name: v), LlamaWeights.syntheticTypes.contains(t) else {
                    throw BenchError("--quant is one of \(LlamaWeights.syntheticTypes.map(\.description)), not \(v)")
                }
                quant = t
            case "--base-precision":
                let v = try value()
                guard let p = BasePrecision(rawValue: v) else {
                    throw BenchError("--base-precision is f32 or q, not \(v)")
                }
                precision = p
                precisionGiven = true
            case "--help", "-h":
                print(
                    "usage: cairn-bench [forward|train|shared|merge|dequantize] [--model NAME|PATH|synthetic-135m|synthetic-360m|synthetic-1.1b|synthetic-qwen2.5-0.5b|synthetic-llama3.2-1b|synthetic-llama3.1-8b] [--batch 4] [--sequence 256] [--repeats 3] [--rank 8] [--threads N] [--base-precision f32|q] [--recompute auto|always|never] [--memory-limit SIZE] [--quant TYPE] [--single] [--json]"
                )
                exit(0)
            default: throw BenchError("unknown argument \(argv[i]); see --help")
            }
            i += 1
        }
        guard batch > 0, sequence > 1, repeats > 0 else {
            throw BenchError("--batch, --sequence and --repeats must be positive")
        }
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

let clock = ContinuousClock()

/// Best wall time of `repeats` runs after one warm-up (none with `warmUp` false).
func best(_ repeats: Int, warmUp: Bool = true, _ body: () -> Void) -> Double {
    if warmUp { body() }
    var fastest = Double.infinity
    for _ in 0..<repeats {
        let start = clock.now
        body()
        fastest = min(fastest, (clock.now - start).seconds)
    }
    return fastest
}

func sgemmGFLOPs(M: Int, N: Int, K: Int, repeats: Int) -> Double {
    let a = FloatBuffer(count: M * K)
    let b = FloatBuffer(count: N * K)
    let c = FloatBuffer(count: M * N)
    var rng = SeededGenerator(seed: 1)
    for i in 0..<a.count { a[i] = rng.nextUnitFloat() - 0.5 }
    for i in 0..<b.count { b[i] = rng.nextUnitFloat() - 0.5 }
    let t = best(repeats) { matmul(c.pointer, a.pointer, b.pointer, M: M, N: N, K: K, transB: true) }
    return 2 * Double(M) * Double(N) * Double(K) / t / 1e9
}

/// Peak resident set size of this process, in bytes.
func peakRSS() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Int(usage.ru_maxrss) * 1024
}

func runTrain(_ args: Arguments, ceiling: (square: Double, projection: Double), model: LlamaModel, name: String) {
    let c = model.config
    let adapter = LoRAAdapter(model: c, config: LoRAConfig(rank: args.rank, alpha: Double(2 * args.rank)), seed: 1)
    var settings = TrainingConfig()
    settings.batchSize = args.batch
    settings.sequenceLength = args.sequence
    settings.recompute = args.recompute
    settings.memoryLimit = args.memoryLimit
    let plan = settings.activationPlan(model: c, adapter: adapter, baseBytes: model.weights.residentBytes)
    if !args.json {
        print(
            "activations: \(plan.summary); the step needs about \(plan.stepBytes >> 20) MiB"
                + (plan.limitBytes.map { " of \($0 >> 20) MiB" } ?? ""))
    }
    let session = TrainingSession(
        model: model, adapter: adapter,
        schedule: LearningRateSchedule(peak: 1e-4, warmupSteps: 0, totalSteps: 1000, kind: .constant),
        keptLayers: plan.keptLayers)
    var rng = SeededGenerator(seed: 3)
    let rows = (0..<args.batch).map { _ in (0..<args.sequence).map { _ in Int32(rng.next() % UInt64(c.vocabSize)) } }
    let batch = TrainingBatch(rows: rows)
    var losses: [Double] = []
    let seconds = best(args.single ? 1 : args.repeats, warmUp: !args.single) {
        losses.append(session.step([batch]).loss.mean)
    }
    let tokens = args.batch * args.sequence
    let flops = Double(args.batch) * model.trainingFLOPs(tokens: args.sequence, adapter: adapter)
    let achieved = flops / seconds / 1e9
    let ceilingValue = max(ceiling.square, ceiling.projection)
    let rss = peakRSS()
    if args.json {
        let report: JSONValue = [
            "mode": "train", "threads": .integer(Int64(Parallel.threadCount)), "ceiling_gflops": .number(ceilingValue),
            "model": .string(name), "batch": .integer(Int64(args.batch)),
            "sequence": .integer(Int64(args.sequence)), "parameters": .integer(Int64(c.parameterCount)),
            "base_precision": .string(model.weights.precision.rawValue),
            "base_bytes": .integer(Int64(model.weights.residentBytes)), "recompute": .bool(plan.recomputes),
            "kept_layers": .integer(Int64(plan.keptLayers)), "layers": .integer(Int64(c.layers)),
            "estimated_step_bytes": .integer(Int64(plan.stepBytes)),
            "losses": .array(losses.map { .number($0) }),
            "rank": .integer(Int64(args.rank)), "trainable_parameters": .integer(Int64(adapter.parameterCount)),
            "step_seconds": .number(seconds), "tokens_per_second": .number(Double(tokens) / seconds),
            "gflop_per_token": .number(flops / Double(tokens) / 1e9), "gflops": .number(achieved),
            "ratio_to_ceiling": .number(achieved / ceilingValue), "peak_rss_bytes": .integer(Int64(rss)),
        ]
        print(report.serialized())
        return
    }
    print(
        String(
            format:
                "train: %@ (%dM parameters), LoRA r=%d on all seven projections (%d parameters), %d×%d tokens per step",
            name, c.parameterCount / 1_000_000, args.rank, adapter.parameterCount, args.batch, args.sequence))
    print(
        "base: \(model.weights.precision == .q ? "kept quantised" : "fp32"), \(model.weights.residentBytes >> 20) MiB; activations \(plan.summary)"
    )
    print("losses: " + losses.map { String(format: "%.6f", $0) }.joined(separator: " "))
    print(
        String(
            format:
                "train step: %.3f s · %.0f tokens/s · %.3f GFLOP/token (forward + activation gradients + LoRA, from the shapes) · %.1f GFLOP/s",
            seconds, Double(tokens) / seconds, flops / Double(tokens) / 1e9, achieved))
    print(
        String(
            format: "train / ceiling: %.1f%% · peak RSS %.2f GiB", 100 * achieved / ceilingValue,
            Double(rss) / Double(1 << 30)))
}

/// Two adapters' training steps on one base (rank r and 2r, `--batch` rows each): one after the other, then in
/// one shared pass (SharedPass), alternating, best of `--repeats` each; the ratio is the shared pass's gain.
func runShared(_ args: Arguments, ceiling: Double, model: LlamaModel, name: String) {
    let c = model.config
    let kept = args.recompute == .always ? 0 : Int.max
    func sessions() -> [TrainingSession] {
        [args.rank, 2 * args.rank].enumerated().map { k, rank in
            TrainingSession(
                model: model,
                adapter: LoRAAdapter(
                    model: c, config: LoRAConfig(rank: rank, alpha: Double(2 * rank)), seed: UInt64(k)),
                schedule: LearningRateSchedule(peak: 1e-4, warmupSteps: 0, totalSteps: 1000, kind: .constant),
                keptLayers: kept)
        }
    }
    var rng = SeededGenerator(seed: 3)
    let batches = (0..<2).map { _ in
        TrainingBatch(
            rows: (0..<args.batch).map { _ in (0..<args.sequence).map { _ in Int32(rng.next() % UInt64(c.vocabSize)) } }
        )
    }
    let alone = sessions()
    let shared = SharedPass(sessions())
    var (sequential, together) = (Double.infinity, Double.infinity)
    for round in 0...args.repeats {
        let s = best(1, warmUp: false) { for k in 0..<2 { alone[k].step([batches[k]]) } }
        let t = best(1, warmUp: false) { shared.step(batches) }
        if round > 0 {  // the first round warms up
            sequential = min(sequential, s)
            together = min(together, t)
        }
    }
    let flops = alone.reduce(0.0) {
        $0 + Double(args.batch) * model.trainingFLOPs(tokens: args.sequence, adapter: $1.adapter)
    }
    let tokens = 2 * args.batch * args.sequence
    if args.json {
        let report: JSONValue = [
            "mode": "shared", "threads": .integer(Int64(Parallel.threadCount)), "ceiling_gflops": .number(ceiling),
            "model": .string(name), "batch": .integer(Int64(args.batch)), "sequence": .integer(Int64(args.sequence)),
            "ranks": .array([.integer(Int64(args.rank)), .integer(Int64(2 * args.rank))]),
            "base_precision": .string(model.weights.precision.rawValue),
            "base_bytes": .integer(Int64(model.weights.residentBytes)),
            "sequential_seconds": .number(sequential), "shared_seconds": .number(together),
            "speedup": .number(sequential / together),
            "shared_ratio_to_ceiling": .number(flops / together / 1e9 / ceiling),
            "peak_rss_bytes": .integer(Int64(peakRSS())),
        ]
        print(report.serialized())
        return
    }
    print(
        "shared: \(name), two adapters (r=\(args.rank) and r=\(2 * args.rank), all seven projections), \(args.batch)×\(args.sequence) tokens each; base \(model.weights.precision == .q ? "kept quantised" : "fp32"), \(model.weights.residentBytes >> 20) MiB, held once"
    )
    print(
        String(
            format: "one after the other: %.3f s (%.0f tokens/s, %.1f%% of the ceiling)", sequential,
            Double(tokens) / sequential, 100 * flops / sequential / 1e9 / ceiling))
    print(
        String(
            format: "one shared pass:     %.3f s (%.0f tokens/s, %.1f%% of the ceiling): %.2f× the throughput",
            together, Double(tokens) / together, 100 * flops / together / 1e9 / ceiling, sequential / together))
}

/// TIES-merges 8 random rank-16 adapters (all seven projections) to rank 16, reading only the model's shapes.
func runMerge(_ args: Arguments, ceiling: Double) throws {
    let config = try ModelSource.resolve(args.model).config()
    let lora = LoRAConfig(rank: 16, alpha: 32)
    let inputs = (0..<8).map { i -> MergeInput in
        let a = LoRAAdapter(model: config, config: lora, seed: UInt64(i))
        var rng = SeededGenerator(seed: 100 + UInt64(i))
        for m in a.modules {
            for j in 0..<m.outFeatures * m.rank {
                a.parameters.pointer[m.bOffset + j] = 0.01 * (2 * rng.nextUnitFloat() - 1)
            }
        }
        return MergeInput(name: "adapter-\(i)", adapter: a, provenance: AdapterProvenance())
    }
    var options = MergeOptions(method: .ties)
    options.density = 0.5
    options.rank = 16
    if ProcessInfo.processInfo.environment["CAIRN_BENCH_PHASES"] != nil {
        // Phases on the largest module shape (1536 × 576), for finding where the time goes.
        let clock = ContinuousClock()
        func time(_ label: String, _ body: () -> Void) {
            let t = clock.measure(body)
            print(label, t)
        }
        let m = inputs[0].adapter.modules.first { $0.target == .up }!
        let factors = inputs.map {
            (LowRankDelta(module: m, parameters: UnsafeBufferPointer($0.adapter.parameters.buffer)), 1.0)
        }
        time("dense") { _ = factors[0].0.dense() }
        time("dare-linear (drop ×8, sum)") {
            _ = AdapterMerge.entrywise(factors, method: .dareLinear, density: 0.5, seed: 1)
        }
        time("magnitude-prune (trim ×8, sum)") {
            _ = AdapterMerge.entrywise(factors, method: .magnitudePrune, density: 0.5, seed: 1)
        }
        var merged: [Float] = []
        time("ties") { merged = AdapterMerge.entrywise(factors, method: .ties, density: 0.5, seed: 1) }
        time("randomizedSVD") { _ = randomizedSVD(merged, rows: m.outFeatures, columns: m.inFeatures, rank: 16) }
    }
    let rssBefore = peakRSS()
    let clock = ContinuousClock()
    let started = clock.now
    let (merged, report) = try AdapterMerge.merge(inputs, options: options)
    let d = clock.now - started
    let seconds = Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
    let rss = peakRSS()
    let entries = merged.modules.reduce(0) { $0 + $1.inFeatures * $1.outFeatures }
    if args.json {
        let report: JSONValue = [
            "mode": "merge", "threads": .integer(Int64(Parallel.threadCount)), "ceiling_gflops": .number(ceiling),
            "adapters": 8, "modules": .integer(Int64(merged.modules.count)), "seconds": .number(seconds),
            "peak_rss_bytes": .integer(Int64(rss)), "inputs_rss_bytes": .integer(Int64(rssBefore)),
            "min_energy_kept": .number(report.minimumEnergyKept),
        ]
        print(report.serialized())
    } else {
        print(String(format: "machine: %d threads, sgemm ceiling %.1f GFLOP/s", Parallel.threadCount, ceiling))
        print(
            String(
                format:
                    "merge: TIES of 8 rank-16 adapters → rank 16, %d modules (%.0f M ΔW entries each): %.2f s, peak RSS %.0f MiB (inputs %.0f MiB); target < 5 s, < 300 MiB",
                merged.modules.count, Double(entries) / 1e6, seconds, Double(rss) / Double(1 << 20),
                Double(rssBefore) / Double(1 << 20)))
    }
}

/// Dequantisation throughput per block type: 16M values (a 4096 × 4096 matrix) into fp32 on every core, and the
/// same values multiplied (1024 × 4096 · 4096 × 4096, the product a panel feeds) for scale.
func runDequantize(_ args: Arguments) {
    let (rows, columns) = (4096, 4096)
    let out = FloatBuffer(count: rows * columns)
    let x = FloatBuffer(count: 1024 * columns)
    let y = FloatBuffer(count: 1024 * rows)
    let product = best(args.repeats) {
        matmul(y.pointer, x.pointer, out.pointer, M: 1024, N: rows, K: columns, transB: true)
    }
    print(
        String(
            format: "sgemm 1024×4096×4096: %.1f ms (%.1f GFLOP/s), %d threads", 1000 * product,
            2 * 1024 * Double(rows * columns) / product / 1e9, Parallel.threadCount))
    for type in LlamaWeights.syntheticTypes {
        let config = LlamaConfig(
            dim: columns, layers: 1, heads: 32, kvHeads: 32, ffnDim: columns, vocabSize: rows, contextLength: 64,
            tiedEmbeddings: true)
        let weights = LlamaWeights.synthetic(config: config, type: type)
        let matrix = weights.embedding
        guard case .blocks(let t, let bytes) = matrix.storage else { continue }
        let seconds = best(args.repeats) { dequantize(t, from: bytes, to: out.pointer, count: rows * columns) }
        print(
            String(
                format: "%@: %.2f ms for 16M values, %.2f Gvalues/s, %.1f GB/s of blocks read; %.1f %% of that product",
                t.description, 1000 * seconds, Double(rows * columns) / seconds / 1e9,
                Double(matrix.byteCount) / seconds / 1e9, 100 * seconds / product))
    }
}

func run() throws {
    let args = try Arguments(CommandLine.arguments)
    if let threads = args.threads { Parallel.threadCount = threads }
    let threads = Parallel.threadCount

    if args.mode == "dequantize" {
        runDequantize(args)
        return
    }
    let square = sgemmGFLOPs(M: 2048, N: 2048, K: 2048, repeats: max(3, args.repeats))
    if args.mode == "merge" {
        try runMerge(args, ceiling: square)
        return
    }
    let model: LlamaModel
    let name: String
    if let shape = LlamaWeights.syntheticShapes[args.model] {
        guard args.mode == "train" || args.mode == "shared" else {
            throw BenchError("\(args.model) is for train and shared only")
        }
        let weights = LlamaWeights.synthetic(config: shape, type: args.quant)
        let f32 = args.precisionGiven && args.precision == .f32
        model = LlamaModel(weights: f32 ? weights.dequantizedToF32() : weights)
        name = args.model
    } else {
        let lm = try LanguageModel.load(args.model, precision: args.precision)
        model = lm.model
        name = lm.source.path
    }
    let c = model.config
    let rows = args.batch * args.sequence
    let projection = sgemmGFLOPs(M: rows, N: c.ffnDim, K: c.dim, repeats: max(3, args.repeats))
    let ceiling = max(square, projection)
    if args.mode == "shared" {
        runShared(args, ceiling: ceiling, model: model, name: name)
        return
    }
    if args.mode == "train" {
        if !args.json {
            print("machine: \(threads) threads")
            print(
                String(
                    format: "ceiling: sgemm %.1f GFLOP/s (2048³), %.1f GFLOP/s (%d×%d×%d)", square, projection, rows,
                    c.ffnDim, c.dim))
        }
        runTrain(args, ceiling: (square, projection), model: model, name: name)
        return
    }

    let state = InferenceState(config: c, batch: args.batch, capacity: args.sequence, maxChunk: args.sequence)
    let logits = FloatBuffer(count: rows * c.vocabSize)
    var rng = SeededGenerator(seed: 2)
    let tokens = (0..<rows).map { _ in Int32(rng.next() % UInt64(c.vocabSize)) }
    let seconds = best(args.repeats) {
        state.reset()
        let hidden = tokens.withUnsafeBufferPointer {
            model.forward(tokens: $0.baseAddress!, count: args.sequence, state: state)
        }
        model.logits(hidden: hidden, rows: rows, into: logits.pointer)
    }
    let flops = Double(args.batch) * model.forwardFLOPs(tokens: args.sequence, logitRows: args.sequence)
    let achieved = flops / seconds / 1e9
    let tokensPerSecond = Double(rows) / seconds

    if args.json {
        let report: JSONValue = [
            "threads": .integer(Int64(threads)), "sgemm_gflops_square_2048": .number(square),
            "sgemm_gflops_projection": .number(projection), "ceiling_gflops": .number(ceiling),
            "model": .string(name), "batch": .integer(Int64(args.batch)),
            "sequence": .integer(Int64(args.sequence)),
            "forward_seconds": .number(seconds), "forward_tokens_per_second": .number(tokensPerSecond),
            "forward_gflop_per_token": .number(flops / Double(rows) / 1e9), "forward_gflops": .number(achieved),
            "forward_ratio_to_ceiling": .number(achieved / ceiling),
        ]
        print(report.serialized())
        return
    }
    print("machine: \(threads) threads")
    print(
        String(
            format: "ceiling: sgemm %.1f GFLOP/s (2048³), %.1f GFLOP/s (%d×%d×%d, the model's largest projection)",
            square, projection, rows, c.ffnDim, c.dim))
    print(
        "model: \(name) (\(c.layers) layers, dim \(c.dim), \(c.parameterCount / 1_000_000)M parameters, \(model.weights.precision == .q ? "quantised" : "fp32") weights)"
    )
    print(
        String(
            format: "forward %d×%d tokens with all logits: %.3f s · %.0f tokens/s · %.3f GFLOP/token · %.1f GFLOP/s",
            args.batch, args.sequence, seconds, tokensPerSecond, flops / Double(rows) / 1e9, achieved))
    print(String(format: "forward / ceiling: %.1f%%", 100 * achieved / ceiling))
}

do {
    try run()
} catch {
    FileHandle.standardError.write(Data("cairn-bench: \(error)\n".utf8))
    exit(1)
}
