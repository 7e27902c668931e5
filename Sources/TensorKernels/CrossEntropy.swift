// CrossEntropy: softmax cross-entropy of logits against target ids, with a loss mask.
//
// Dims: N = rows (predicted positions), V = vocabulary size. A row whose target is negative is masked:
// its loss is 0 and its gradient 0 (the loss mask; PyTorch's ignore_index). The caller averages.
//   loss_n = logsumexp(logits_n) − logits_n[target_n]
//   dlogits_n = dLoss_n · (softmax(logits_n) − onehot(target_n))
// The backward overwrites dLogits and may run in place over the logits (a (N, V) buffer over a 49k
// vocabulary is the largest activation of the model); it is the one backward that does not accumulate.

import Foundation

/// Cross-entropy forward.
///
/// - Parameters:
///   - losses: (N) receives each row's loss (0 for masked rows).
///   - logSumExp: (N) receives logsumexp of each row for the backward, or nil.
///   - logits: (N, V).
///   - targets: (N) target ids in `0..<V`, or negative to mask the row.
public func crossEntropyForward(
    losses: UnsafeMutablePointer<Float>, logSumExp: UnsafeMutablePointer<Float>?, logits: UnsafePointer<Float>,
    targets: UnsafePointer<Int32>, rows N: Int, vocabSize V: Int
) {
    Parallel.forRanges(N, grain: 4) { range in
        for n in range {
            let row = logits + n * V
            let m = maxValue(row, V)
            var sum: Float = 0
            for i in 0..<V { sum += Foundation.exp(row[i] - m) }
            let lse = m + Foundation.log(sum)
            logSumExp?[n] = lse
            let t = Int(targets[n])
            precondition(t < V, "crossEntropyForward: target \(t) outside 0..<\(V)")
            losses[n] = t < 0 ? 0 : lse - row[t]
        }
    }
}

/// Cross-entropy backward: `dLogits = dLoss · (softmax(logits) − onehot(target))`, overwritten.
///
/// - Parameters:
///   - dLogits: (N, V), overwritten; may be the same memory as `logits`.
///   - logits: (N, V).
///   - logSumExp: (N), from the forward.
///   - targets: (N), negative for masked rows (their gradient is 0).
///   - dLosses: (N) the gradient of each row's loss (1/count for a mean), or nil for all ones.
public func crossEntropyBackward(
    dLogits: UnsafeMutablePointer<Float>, logits: UnsafePointer<Float>, logSumExp: UnsafePointer<Float>,
    targets: UnsafePointer<Int32>, dLosses: UnsafePointer<Float>?, rows N: Int, vocabSize V: Int
) {
    Parallel.forRanges(N, grain: 4) { range in
        for n in range {
            let row = logits + n * V
            let dRow = dLogits + n * V
            let t = Int(targets[n])
            if t < 0 {
                dRow.update(repeating: 0, count: V)
                continue
            }
            let scale = dLosses?[n] ?? 1
            let lse = logSumExp[n]
            for i in 0..<V { dRow[i] = scale * Foundation.exp(row[i] - lse) }
            dRow[t] -= scale
        }
    }
}

/// The reference for `crossEntropyForward`: per row in Double. Same arguments.
public func crossEntropyForwardNaive(
    losses: UnsafeMutablePointer<Float>, logSumExp: UnsafeMutablePointer<Float>?, logits: UnsafePointer<Float>,
    targets: UnsafePointer<Int32>, rows N: Int, vocabSize V: Int
) {
    for n in 0..<N {
        var m = -Double.infinity
        for i in 0..<V { m = max(m, Double(logits[n * V + i])) }
        var sum = 0.0
        for i in 0..<V { sum += Foundation.exp(Double(logits[n * V + i]) - m) }
        let lse = m + Foundation.log(sum)
        logSumExp?[n] = Float(lse)
        let t = Int(targets[n])
        losses[n] = t < 0 ? 0 : Float(lse - Double(logits[n * V + t]))
    }
}
