// Evaluation: one pass of a job's adapter over its held-out rows, split across workers like a sync step (the
// JobSchedule hands them out with the same StepWork bookkeeping: shares by speed, deadlines, a lost worker's rows
// back to the others, results accepted once), but forward only: each worker returns the summed loss and the token
// count of its rows. The held-out loss is the
// sum over all rows divided by their tokens, as `cairn train` computes it on one machine.
//
// When: after the steps (or rounds) where `cairn train` would evaluate (every eval_every optimizer steps, and after
// the last), before the job moves on. Journaled in the store's evals table; a coordinator restarted between a
// journaled step and its evaluation runs the evaluation again.

import Llama
import Training

/// An evaluation in progress: its rows and the losses summed so far.
final class Evaluation {
    /// The step or round of the job it evaluates (the unit the job journals).
    let step: Int
    private let rows: [TrainingBatch]
    private let length: Int
    private(set) var lossSum = 0.0
    private(set) var tokens = 0

    init(step: Int, plan: RowPlan, length: Int) {
        self.step = step
        self.length = length
        rows = (0..<plan.rowCount(epoch: 0)).map { plan.row(at: $0).row }
    }

    /// The rows of an assignment as one batch.
    func batch(rows indices: [Int]) -> TrainingBatch {
        TrainingBatch(concatenating: indices.map { rows[$0] }, length: length)
    }

    /// Adds an accepted result.
    func add(loss: Double, tokens n: Int) {
        lossSum += loss
        tokens += n
    }

    /// The record to journal.
    var record: EvalRecord { EvalRecord(step: step, loss: tokens > 0 ? lossSum / Double(tokens) : 0, tokens: tokens) }
}
