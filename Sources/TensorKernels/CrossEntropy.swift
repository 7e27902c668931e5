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
            let lse = m + Foundation.log(expSum(row, V, shift: m))
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
            // dRow = scale · exp(row − lse)
            if dRow != UnsafeMutablePointer(mutating: row) { dRow.update(from: row, count: V) }
            _ = expShiftedInPlace(dRow, V, shift: lse)
            scaleInPlace(dRow, V, by: scale)
            dRow[t] -= scale
        }
    }
}

/// Forward and backward at once, for a training step: `losses` as `crossEntropyForward` computes them, and the
/// logits replaced in place by their gradient `dLoss · (softmax − onehot(target))` (zero on masked rows). One
/// exponential per logit instead of the two the separate kernels take, and one pass fewer over the row.
///
/// - Parameters:
///   - losses: (N) the loss of each row, 0 where masked.
///   - logits: (N, V) in: logits; out: their gradients.
///   - targets: (N) ids, negative to mask.
///   - dLoss: The gradient of the objective with respect to each row's loss.
public func crossEntropyForwardBackward(
    losses: UnsafeMutablePointer<Float>, logits: UnsafeMutablePointer<Float>, targets: UnsafePointer<Int32>,
    dLoss: Float, rows N: Int, vocabSize V: Int
) {
    Parallel.forRanges(N, grain: 4) { range in
        for n in range {
            let row = logits + n * V
            let t = Int(targets[n])
            precondition(t < V, "crossEntropyForwardBackward: target \(t) outside 0..<\(V)")
            guard t >= 0 else {
                losses[n] = 0
                row.update(repeating: 0, count: V)
                continue
            }
            let m = maxValue(row, V)
            let targetLogit = row[t]
            let sum = expShiftedInPlace(row, V, shift: m)
            losses[n] = m + Foundation.log(sum) - targetLogit
            scaleInPlace(row, V, by: dLoss / sum)
            row[t] -= dLoss
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
