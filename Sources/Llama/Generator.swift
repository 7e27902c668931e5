// Generator: autoregressive decoding with a KV cache: the prompt is processed in chunks, then one token
// at a time is sampled and fed back until an end-of-generation token, the token limit or the context end.
// Each new token is handed to a callback that may stop generation (progress as values; no printing).

import Foundation
import TensorKernels

/// How the next token is chosen.
public struct SamplingSettings: Sendable, Equatable {
    /// 0 picks the most likely token (greedy); otherwise logits are divided by it before sampling.
    public var temperature: Float = 0
    /// Keep only the k most likely tokens (0: all).
    public var topK: Int = 0
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    public var topP: Float = 1
    /// Seed of the sampling stream.
    public var seed: UInt64 = 0

    /// Greedy decoding.
    public init() {}

    /// Sampling settings.
    public init(temperature: Float, topK: Int = 0, topP: Float = 1, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
    }
}

/// Picks tokens from logits.
public struct Sampler: Sendable {
    /// The settings.
    public let settings: SamplingSettings
    private var rng: SeededGenerator

    /// A sampler seeded from the settings.
    public init(_ settings: SamplingSettings) {
        self.settings = settings
        rng = SeededGenerator(seed: settings.seed)
    }

    /// Chooses a token: greedy at temperature 0 (ties to the lowest id), else temperature, top-k, top-p, in
    /// the order Hugging Face applies them.
    public mutating func sample(_ logits: UnsafeBufferPointer<Float>) -> Int32 {
        if settings.temperature <= 0 {
            var best = 0
            for i in 1..<logits.count where logits[i] > logits[best] { best = i }
            return Int32(best)
        }
        var candidates = (0..<logits.count).map { (id: Int32($0), logit: logits[$0] / settings.temperature) }
        candidates.sort { $0.logit != $1.logit ? $0.logit > $1.logit : $0.id < $1.id }
        if settings.topK > 0, settings.topK < candidates.count {
            candidates.removeLast(candidates.count - settings.topK)
        }
        let m = candidates[0].logit
        var probabilities = candidates.map { Double(Foundation.exp($0.logit - m)) }
        let z = probabilities.reduce(0, +)
        for i in probabilities.indices { probabilities[i] /= z }
        if settings.topP < 1 {
            var cumulative = 0.0
            var keep = probabilities.count
            for (i, p) in probabilities.enumerated() {
                cumulative += p
                if cumulative >= Double(settings.topP) {
                    keep = i + 1
                    break
                }
            }
            probabilities.removeLast(probabilities.count - keep)
            candidates.removeLast(candidates.count - keep)
        }
        let total = probabilities.reduce(0, +)
        var u = rng.nextUnitDouble() * total
        for (i, p) in probabilities.enumerated() {
            u -= p
            if u < 0 { return candidates[i].id }
        }
        return candidates[probabilities.count - 1].id
    }
}

/// Why generation ended.
public enum StopReason: String, Sendable {
    /// The model produced an end-of-generation token.
    case endOfGeneration = "eos"
    /// `maxTokens` were generated.
    case maxTokens = "length"
    /// The context is full.
    case contextFull = "context"
    /// The callback asked to stop.
    case stopped = "stopped"
}

/// What a generation produced and how long it took.
public struct GenerationResult: Sendable {
    /// Generated token ids (without the end-of-generation token).
    public var tokens: [Int32] = []
    /// Why it ended.
    public var stopReason: StopReason = .maxTokens
    /// Prompt tokens processed.
    public var promptTokens = 0
    /// Seconds spent on the prompt.
    public var promptSeconds = 0.0
    /// Seconds spent generating.
    public var generationSeconds = 0.0
}

extension LlamaModel {
    /// Generates a continuation of `prompt`.
    ///
    /// - Parameters:
    ///   - prompt: Token ids, at least one, fewer than the context length.
    ///   - maxTokens: Most tokens to generate.
    ///   - stopIds: Tokens that end generation (not returned).
    ///   - sampling: Greedy or sampled.
    ///   - onToken: Called with each new token; return false to stop.
    /// - Returns: The tokens and timings.
    public func generate(
        prompt: [Int32], maxTokens: Int, stopIds: Set<Int32>, sampling: SamplingSettings = SamplingSettings(),
        onToken: (Int32) -> Bool = { _ in true }
    ) -> GenerationResult {
        precondition(!prompt.isEmpty, "generate: empty prompt")
        var result = GenerationResult()
        let capacity = min(maxPositions, prompt.count + max(1, maxTokens))
        guard prompt.count < maxPositions else {
            result.stopReason = .contextFull
            return result
        }
        let state = InferenceState(config: config, batch: 1, capacity: capacity, maxChunk: 256)
        let logits = FloatBuffer(count: config.vocabSize)
        var sampler = Sampler(sampling)
        let clock = ContinuousClock()
        var started = clock.now
        var hidden: UnsafePointer<Float>!
        var last = 0
        var position = 0
        while position < prompt.count {
            let n = min(state.maxChunk, prompt.count - position)
            hidden = prompt.withUnsafeBufferPointer {
                forward(tokens: $0.baseAddress! + position, count: n, state: state)
            }
            last = n - 1
            position += n
        }
        result.promptTokens = prompt.count
        result.promptSeconds = (clock.now - started).seconds
        started = clock.now
        func finish(_ reason: StopReason) -> GenerationResult {
            result.stopReason = reason
            result.generationSeconds = (clock.now - started).seconds
            return result
        }
        while true {
            self.logits(hidden: hidden + last * config.dim, rows: 1, into: logits.pointer)
            let next = sampler.sample(UnsafeBufferPointer(logits.buffer))
            if stopIds.contains(next) { return finish(.endOfGeneration) }
            result.tokens.append(next)
            if !onToken(next) { return finish(.stopped) }
            if result.tokens.count >= maxTokens { return finish(.maxTokens) }
            if state.length >= state.capacity { return finish(.contextFull) }
            var token = next
            hidden = forward(tokens: &token, count: 1, state: state)
            last = 0
        }
    }
}

extension Duration {
    /// The duration in seconds.
    public var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) * 1e-18
    }
}
