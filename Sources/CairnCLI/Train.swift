// cairn train: LoRA fine-tuning on one machine, from flags or a YAML job file.

import ArgumentParser
import Dispatch
import Foundation
import Llama
import ModelFormats
import Synchronization
import TensorKernels
import Training

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune a LoRA adapter on JSONL data.",
        discussion: """
            Data: one JSON object per line: {"text"}, {"prompt","completion"}, {"messages":[{"role","content"}]} \
            (rendered with the model's chat template), or {"instruction","input","output"}. The loss is taken on \
            completions and assistant turns (--loss-on all: everything).

            Settings come from --config job.yaml (keys: cairn train --list-keys) and flags, flags winning. The run \
            directory (--output) receives job.yaml, checkpoints, metrics.jsonl and the adapter in PEFT format, \
            usable at once: cairn generate --adapter DIR. Ctrl-C or SIGTERM stops after the current step with a \
            checkpoint; cairn train --resume DIR continues exactly where it stopped.

            Example:
              cairn train --data chats.jsonl --output runs/capitals --rank 8 --alpha 16 --lr 2e-4 --steps 300
            """)

    @Option(help: "A YAML job file; flags override its values.") var config: String?
    @Option(help: "Continue the run in this directory from its last checkpoint.") var resume: String?
    @Flag(help: "List the job file keys and exit.") var listKeys = false

    @Option(name: .shortAndLong, help: "Base model: GGUF file, HF directory or cached name (default smollm2-135m).")
    var model: String?
    @Option(help: "Training data, JSONL.") var data: String?
    @Option(help: "Held-out JSONL for evaluation.") var validationData: String?
    @Option(help: "Fraction of the data held out for evaluation.") var validationSplit: Double?
    @Option(name: .shortAndLong, help: "The run directory.") var output: String?
    @Option(
        help: ArgumentHelp(
            "Start from this adapter: a PEFT directory, a GGUF LoRA file, or a name in a coordinator's registry.",
            discussion:
                "A name (NAME or NAME@VERSION) is fetched once into $CAIRN_HOME/adapters from the coordinator that "
                + "--state or --credentials reach (default: this user's client credentials)."))
    var initAdapter: String?

    @Option(help: "LoRA rank (default 8).") var rank: Int?
    @Option(help: "LoRA alpha (default 16).") var alpha: Double?
    @Flag(help: "Scale by alpha/sqrt(rank) (rsLoRA).") var rslora = false
    @Option(help: "LoRA dropout (default 0).") var dropout: Double?
    @Option(help: "Comma-separated targets: q_proj,...,down_proj, all-linear (default), attention, mlp.") var targets:
        String?
    @Option(help: "Layers to adapt, e.g. 0-11,20 (default all).") var layers: String?

    @Option(help: "Peak learning rate (default 2e-4).") var lr: Double?
    @Option(help: "cosine (default), linear or constant.") var schedule: String?
    @Option(help: "Warmup steps (default 0).") var warmup: Int?
    @Option(help: "AdamW weight decay (default 0).") var weightDecay: Double?
    @Option(help: "Clip the global gradient norm (default 1; 0 disables).") var maxGradNorm: Double?
    @Option(help: "Rows per micro-batch (default 4).") var batch: Int?
    @Option(help: "Micro-batches per optimizer step (default 1).") var gradAccum: Int?
    @Option(help: "Tokens per row (default 256).") var seqLen: Int?
    @Option(help: "Optimizer steps (default: one epoch).") var steps: Int?
    @Option(help: "Epochs when --steps is not given (default 1).") var epochs: Double?
    @Option(help: "pack (default: examples share rows, never attending across) or pad.") var batchMode: String?
    @Option(help: "auto (default) or all.") var lossOn: String?
    @Option(help: "Evaluate every N steps (default: at the end).") var evalEvery: Int?
    @Option(help: "Checkpoint every N steps (default 50).") var saveEvery: Int?
    @Option(help: "Seed for initialisation, shuffling and dropout (default 0).") var seed: UInt64?
    @Flag(help: "Skip and count malformed records instead of stopping at the first.") var skipBadRecords = false
    @Option(help: "chatml, smollm2, llama3, mistral, gemma or phi3 instead of the model's template.")
    var chatTemplate: String?
    @Option(
        help: ArgumentHelp(
            "auto (default), always or never: recompute activations in the backward to save memory.",
            discussion:
                "auto keeps as many layers' activations as fit in --memory-limit and recomputes the others, layer by "
                + "layer; the plan is printed when training starts."))
    var recompute: String?
    @Option(
        help: ArgumentHelp(
            "Memory the training step may use, such as 7GiB or 512MiB.",
            discussion:
                "Counts the base's weights, the adapter's state and the activations. Default: the base plus 80 % of "
                + "the memory available once it is loaded."))
    var memoryLimit: String?

    @Option(
        help: ArgumentHelp(
            "auto (default), f32 or q: dequantise the base to fp32, or keep its matrices in the GGUF file's own quantisation.",
            discussion:
                "q holds Q4_K/Q6_K/Q8_0/… matrices as stored and dequantises them tile by tile inside each product: "
                + "4-8x less memory for the base and products a few percent slower. auto picks f32 when the fp32 "
                + "weights and every layer's activations fit in --memory-limit (or 80 % of the available memory)."))
    var basePrecision: String?
    @Option(help: "Kernel threads (default all cores).") var threads: Int?
    @Flag(help: "Report progress as JSON lines on stdout.") var json = false
    @OptionGroup(title: "Registry (for --init-adapter NAME)") var registry: ClientOptions

    func run() throws {
        if listKeys {
            let width = TrainingConfig.keys.map(\.key.count).max() ?? 0
            for (key, help) in TrainingConfig.keys {
                Terminal.write("\(key.padding(toLength: width, withPad: " ", startingAt: 0))  \(help)\n")
            }
            return
        }
        let trainer: Trainer
        if let resume {
            guard config == nil, data == nil, output == nil, model == nil else {
                throw ValidationError("--resume takes its settings from the run's job.yaml; give no other settings")
            }
            do { trainer = try Trainer(resuming: resume) } catch { throw CLIError(error.description) }
        } else {
            var config = try settings()
            if let reference = config.initAdapter, !FileManager.default.fileExists(atPath: reference) {
                config.initAdapter = try FetchCommand.cached(reference, client: registry)
            }
            trainer = Trainer(config: config)
        }
        let stop = StopSignal()
        let display = TrainingDisplay(json: json)
        let summary: TrainingSummary
        do {
            summary = try trainer.run { event in
                display.show(event)
                if stop.requested {
                    display.note("stopping: writing a checkpoint (Ctrl-C again to quit at once)")
                    return .stop
                }
                return .proceed
            }
        } catch {
            display.finish()
            throw CLIError(error.description)
        }
        display.finish()
        display.summary(summary, config: trainer.config)
    }

    /// Job file, then flags.
    func settings() throws -> TrainingConfig {
        var c = TrainingConfig()
        if let config {
            do { try c.apply(yamlFile: config) } catch { throw CLIError(error.description) }
        }
        func choice<T: RawRepresentable & CaseIterable>(_ value: String?, _ flag: String) throws -> T?
        where T.RawValue == String {
            guard let value else { return nil }
            guard let v = T(rawValue: value) else {
                throw ValidationError("--\(flag) must be one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return v
        }
        if let model { c.model = model }
        if let data { c.data = data }
        if let validationData { c.validationData = validationData }
        if let validationSplit { c.validationSplit = validationSplit }
        if let output { c.output = output }
        if let initAdapter { c.initAdapter = initAdapter }
        if let rank { c.lora.rank = rank }
        if let alpha { c.lora.alpha = alpha }
        if rslora { c.lora.useRSLoRA = true }
        if let dropout { c.lora.dropout = dropout }
        if let targets {
            switch LoRATarget.parse(targets.split(separator: ",").map(String.init)) {
            case .success(let t): c.lora.targets = t
            case .failure(let e): throw ValidationError("--targets: \(e)")
            }
        }
        if let layers {
            guard let l = TrainingConfig.parseLayers(layers) else {
                throw ValidationError("--layers: expected numbers and ranges such as 0-11,20")
            }
            c.lora.layers = l
        }
        if let lr { c.learningRate = lr }
        if let s: ScheduleKind = try choice(schedule, "schedule") { c.schedule = s }
        if let warmup { c.warmupSteps = warmup }
        if let weightDecay { c.weightDecay = weightDecay }
        if let maxGradNorm { c.maxGradNorm = maxGradNorm }
        if let batch { c.batchSize = batch }
        if let gradAccum { c.gradientAccumulation = gradAccum }
        if let seqLen { c.sequenceLength = seqLen }
        if let steps { c.steps = steps }
        if let epochs { c.epochs = epochs }
        if let m: BatchMode = try choice(batchMode, "batch-mode") { c.batchMode = m }
        if let l: LossOn = try choice(lossOn, "loss-on") { c.lossOn = l }
        if let evalEvery { c.evalEvery = evalEvery }
        if let saveEvery { c.saveEvery = saveEvery }
        if let seed { c.seed = seed }
        if skipBadRecords { c.skipBadRecords = true }
        if let chatTemplate { c.chatTemplate = chatTemplate }
        if let r: RecomputeMode = try choice(recompute, "recompute") { c.recompute = r }
        if let memoryLimit {
            guard let bytes = parseByteSize(memoryLimit), bytes > 0 else {
                throw ValidationError("--memory-limit: expected a size such as 7GiB, 512MiB or a number of bytes")
            }
            c.memoryLimit = bytes
        }
        if let p: BasePrecisionChoice = try choice(basePrecision, "base-precision") { c.basePrecision = p }
        if let threads { c.threads = threads }
        let problems = c.problems() + (c.output.isEmpty ? ["output: required (--output DIR)"] : [])
        guard problems.isEmpty else { throw ValidationError(problems.joined(separator: "; ")) }
        return c
    }
}

/// SIGINT/SIGTERM: the first asks for a clean stop, the second quits at once.
///
/// The handler is installed with sigaction(2) before `init` returns, so a signal that comes at any moment after
/// is seen (a dispatch signal source arms itself later, on another thread, and a signal in between was lost: a
/// coordinator told to stop right after it started ran on). The handler does only async-signal-safe work: it
/// counts, and wakes a thread through a pipe; that thread calls `onFirst`. One per process.
final class StopSignal {
    /// - Parameter onFirst: called (on a thread of its own) when the first signal arrives.
    init(onFirst: (@Sendable () -> Void)? = nil) {
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) == 0 {
            // Not inherited by the processes `cluster up` starts; the handler's write never blocks.
            for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
            stopSignalPipe = fds[1]
            let readEnd = fds[0]
            let waiter = Thread {
                var byte: UInt8 = 0
                while read(readEnd, &byte, 1) < 0, errno == EINTR {}
                onFirst?()
            }
            waiter.start()
        }
        _ = stopSignalCount.load(ordering: .relaxed)  // initialised here, not first in the handler
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in
            if stopSignalCount.add(1, ordering: .relaxed).newValue >= 2 { _exit(130) }
            var byte: UInt8 = 1
            _ = write(stopSignalPipe, &byte, 1)
        }
        sigemptyset(&action.sa_mask)
        action.sa_flags = SA_RESTART
        sigaction(SIGINT, &action, nil)
        sigaction(SIGTERM, &action, nil)
        // A parent may have started us with them blocked (the mask is inherited across exec): accept them here.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    var requested: Bool { stopSignalCount.load(ordering: .relaxed) > 0 }
}

/// SIGINT and SIGTERM received so far (StopSignal's handler).
private let stopSignalCount = Atomic<Int>(0)
/// The write end of StopSignal's pipe (-1: none).
nonisolated(unsafe) private var stopSignalPipe: Int32 = -1

/// Turns training events into a progress line (or JSON lines).
final class TrainingDisplay {
    let json: Bool
    var progress: ProgressLine?
    var recentTokens = 0.0
    var recentSeconds = 0.0
    var lastLoss: Double?

    init(json: Bool) { self.json = json }

    func note(_ text: String) {
        progress?.finish()
        Terminal.note(text)
    }

    func show(_ event: TrainingEvent) {
        switch event {
        case .planned(let p):
            if json {
                Terminal.printJSON([
                    "event": "planned", "examples": .integer(Int64(p.examples)),
                    "total_steps": .integer(Int64(p.totalSteps)),
                    "start_step": .integer(Int64(p.startStep)),
                    "trainable_parameters": .integer(Int64(p.trainableParameters)),
                    "recompute": .bool(p.activations.recomputes),
                    "kept_layers": .integer(Int64(p.activations.keptLayers)),
                    "recomputed_layers": .integer(Int64(p.activations.recomputedLayers)),
                    "step_bytes": .integer(Int64(p.activations.stepBytes)),
                    "gflop_per_step": .number(p.flopsPerStep / 1e9),
                    "base_precision": .string(p.basePrecision.rawValue), "base_bytes": .integer(Int64(p.baseBytes)),
                ])
                return
            }
            var text = "training: \(p.examples) examples"
            if p.skippedRecords > 0 { text += " (\(p.skippedRecords) bad records skipped)" }
            if p.truncatedExamples > 0 { text += ", \(p.truncatedExamples) truncated to --seq-len" }
            if p.emptyExamples > 0 { text += ", \(p.emptyExamples) without trained tokens left out" }
            if p.validationExamples > 0 { text += ", \(p.validationExamples) held out" }
            text += "; \(p.rowsPerEpoch) rows per epoch, \(p.totalSteps) steps of \(p.tokensPerStep) tokens"
            text +=
                "; \(p.trainableParameters) trainable parameters; base \(p.basePrecision == .q ? "kept quantised" : "in fp32") (\(formatBytes(p.baseBytes))); activations \(p.activations.summary) (\(formatBytes(p.activations.workspaceBytes)); the step needs about \(formatBytes(p.activations.stepBytes))\(p.activations.limitBytes.map { " of \(formatBytes($0))" } ?? ""))"
            if let limit = p.activations.limitBytes, p.activations.stepBytes > limit {
                text +=
                    "; that is more than the limit even with every layer recomputed: a smaller --batch, --seq-len "
                    + "or --rank, or --base-precision q, brings it down"
            }
            if p.startStep > 0 { text += "; resuming at step \(p.startStep)" }
            Terminal.note(text)
            progress = ProgressLine("training", total: p.totalSteps)
        case .step(let r, let total, let tokens, let seconds):
            // Throughput over the last steps, smoothed.
            recentTokens = recentTokens * 0.8 + Double(tokens)
            recentSeconds = recentSeconds * 0.8 + seconds
            lastLoss = r.loss.mean
            if json {
                Terminal.printJSON([
                    "event": "step", "step": .integer(Int64(r.step)), "loss": .number(r.loss.mean),
                    "lr": .number(r.learningRate),
                    "grad_norm": .number(r.gradientNorm), "tokens_per_second": .number(Double(tokens) / seconds),
                ])
                return
            }
            let rate = recentSeconds > 0 ? recentTokens / recentSeconds : 0
            let eta = rate > 0 ? Double(total - r.step) * Double(tokens) / rate : .nan
            progress?.show(
                String(
                    format: "step %d/%d · loss %.4f · %.0f tok/s · lr %.2e · eta %@", r.step, total, r.loss.mean, rate,
                    r.learningRate, formatDuration(eta)),
                final: r.step == total)
        case .evaluation(let step, let loss):
            if json {
                Terminal.printJSON([
                    "event": "evaluation", "step": .integer(Int64(step)), "eval_loss": .number(loss.mean),
                ])
                return
            }
            note(String(format: "eval at step %d: loss %.4f over %d tokens", step, loss.mean, loss.tokens))
        case .checkpoint(let step, let directory):
            if json {
                Terminal.printJSON([
                    "event": "checkpoint", "step": .integer(Int64(step)), "directory": .string(directory),
                ])
            }
        }
    }

    func finish() { progress?.finish() }

    func summary(_ s: TrainingSummary, config: TrainingConfig) {
        if json {
            Terminal.printJSON([
                "event": "finished", "steps": .integer(Int64(s.steps)), "stopped": .bool(s.stopped),
                "loss": s.lastLoss.map(JSONValue.number) ?? nil,
                "eval_loss": s.lastEvalLoss.map(JSONValue.number) ?? nil,
                "directory": .string(s.directory),
            ])
            return
        }
        var text =
            s.stopped
            ? "stopped at step \(s.steps); continue with: cairn train --resume \(s.directory)"
            : "done: \(s.steps) steps"
        if let l = s.lastLoss { text += String(format: ", last loss %.4f", l) }
        if let e = s.lastEvalLoss { text += String(format: ", eval loss %.4f", e) }
        Terminal.note(text)
        Terminal.note(
            "adapter (PEFT) in \(s.directory); try: cairn generate --model \(config.model) --adapter \(s.directory) --prompt \"...\""
        )
    }
}
