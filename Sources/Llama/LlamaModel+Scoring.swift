// LlamaModel+Scoring: the loss of a model on a token sequence, as `transformers` computes it with
// `labels = input_ids`: mean cross-entropy of predicting token i+1 from tokens 0...i. Long texts are cut into
// non-overlapping windows; the first token of each window is predicted by nobody (it has no context).

import Foundation
import TensorKernels

/// Summed loss over predicted tokens.
public struct LossTotal: Sendable, Equatable {
    /// Σ −log p(token) over predicted tokens, in nats.
    public var sum: Double = 0
    /// Tokens predicted.
    public var count = 0
    /// Mean loss per predicted token.
    public var mean: Double { count > 0 ? sum / Double(count) : .nan }
    /// exp(mean).
    public var perplexity: Double { Foundation.exp(mean) }

    /// An empty total.
    public init() {}
}

extension LlamaModel {
    /// The loss of the model on `tokens`.
    ///
    /// - Parameters:
    ///   - tokens: The text as ids.
    ///   - window: Positions per window (at most the context length).
    ///   - chunk: New positions per forward call (bounds the logits buffer to chunk × vocabulary floats).
    ///   - progress: Called after each chunk with the tokens done so far.
    /// - Returns: Summed loss and count of predicted tokens.
    public func loss(tokens: [Int32], window: Int, chunk: Int = 256, progress: ((Int) -> Void)? = nil) -> LossTotal {
        let window = max(2, min(window, maxPositions))
        let state = InferenceState(config: config, batch: 1, capacity: window, maxChunk: chunk)
        let logits = FloatBuffer(count: state.maxChunk * config.vocabSize)
        let losses = FloatBuffer(count: state.maxChunk)
        var targets = [Int32](repeating: -1, count: state.maxChunk)
        var total = LossTotal()
        var windowStart = 0
        while windowStart + 1 < tokens.count {
            let windowEnd = min(tokens.count, windowStart + window)
            state.reset()
            var position = windowStart
            while position < windowEnd {
                let n = min(state.maxChunk, windowEnd - position)
                let hidden = tokens.withUnsafeBufferPointer {
                    forward(tokens: $0.baseAddress! + position, count: n, state: state)
                }
                for i in 0..<n { targets[i] = position + i + 1 < windowEnd ? tokens[position + i + 1] : -1 }
                self.logits(hidden: hidden, rows: n, into: logits.pointer)
                crossEntropyForward(
                    losses: losses.pointer, logSumExp: nil, logits: logits.pointer, targets: targets, rows: n,
                    vocabSize: config.vocabSize)
                for i in 0..<n where targets[i] >= 0 {
                    total.sum += Double(losses[i])
                    total.count += 1
                }
                position += n
                progress?(position)
            }
            windowStart = windowEnd
        }
        return total
    }
}
